/// \file
/// Vectorised 2^x, log2, log1p and tanh for the softmax inner loop and the score transforms
/// (not std::exp: ~14 instructions a vector).
#pragma once

#include <cstdint>
#include <limits>

#include "../core/config.hpp"
#include "arch.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace attnkit::detail::simd {

/// Taylor series of 2^f = e^(f ln 2) to degree 6, highest power first: error below 1.2e-7
/// relative on [-0.5, 0.5].
inline constexpr float exp2_taylor[7] = {1.5403530393381608e-4f, 1.3333558146428443e-3f, 9.6181291076284772e-3f,
                                         5.5504108664821580e-2f, 2.4022650695910071e-1f, 6.9314718055994531e-1f, 1.f};

/// 2^x to ~1 ulp. Exactly 0 for x < -125 and for -inf (so masked scores vanish); NaN stays
/// NaN. Arguments above 127 are clamped (softmax only evaluates x <= 0).
template <class Arch>
ATTNKIT_ALWAYS_INLINE vec<Arch> exp2(vec<Arch> x) {
  using V = vec<Arch>;
#if defined(__AVX512F__)
  if constexpr (V::size == 16) {
    // AVX-512 scales by 2^n in one instruction (vscalefps) and zeroes the lanes below -125 in
    // the same one, 11 instructions where the generic code below takes 15 (the exponentials
    // are 10-15% of a softmax tile). min(127, x) keeps NaN (the second operand wins); -inf
    // gives NaN in p, but its lane is zeroed.
    const __m512 clamped = _mm512_min_ps(_mm512_set1_ps(127.f), x.data);
    const __m512 n = _mm512_roundscale_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(clamped, n);
    __m512 p = _mm512_set1_ps(exp2_taylor[0]);
    ATTNKIT_UNROLL for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2_taylor[i]));
    const __mmask16 kept = _mm512_cmp_ps_mask(x.data, _mm512_set1_ps(-125.f), _CMP_NLT_UQ);  // NaN kept
    return V(_mm512_maskz_scalef_ps(kept, p, n));
  }
#endif
  const V clamped = xsimd::select(x > V(127.f), V(127.f), x);  // NaN passes through
  const V n = xsimd::nearbyint(clamped);
  const V f = clamped - n;  // in [-0.5, 0.5]
  V p = V(exp2_taylor[0]);
  ATTNKIT_UNROLL for (int i = 1; i < 7; ++i) p = xsimd::fma(p, f, V(exp2_taylor[i]));
  // Scale by 2^n by adding n to the exponent field.
  const ivec<Arch> bits = xsimd::bitwise_cast<ivec<Arch>>(p) + (xsimd::to_int(n) << 23);
  const V r = xsimd::bitwise_cast<V>(bits);
  return xsimd::select(x < V(-125.f), V(0.f), r);
}

/// tanh to a few ulp relative: an odd Taylor polynomial below |x| = 1/8 (soft-capping with a
/// large cap lives there, and 1 - 2/(e^2x + 1) would cancel), that formula above.
template <class Arch>
ATTNKIT_ALWAYS_INLINE vec<Arch> tanh(vec<Arch> x) {
  using V = vec<Arch>;
  const V a = xsimd::abs(x);
  const V e = exp2(a * V(2.8853900817779268f));  // e^(2|x|)
  const V large = V(1.f) - V(2.f) / (e + V(1.f));
  const V x2 = x * x;
  V p = V(62.f / 2835.f);
  p = xsimd::fma(p, x2, V(-17.f / 315.f));
  p = xsimd::fma(p, x2, V(2.f / 15.f));
  p = xsimd::fma(p, x2, V(-1.f / 3.f));
  const V small = xsimd::fma(p * x2, a, a);
  return xsimd::copysign(xsimd::select(a < V(0.125f), small, large), x);
}

/// log2(1 + f) / f on [sqrt(1/2) - 1, sqrt(2) - 1], highest power first (least-squares
/// Chebyshev fit, 1.2e-8 relative).
inline constexpr float log2_1p_over_x[10] = {-1.0877750229e-01f, 1.8392634538e-01f, -1.9042121390e-01f,
                                             2.0490012813e-01f,  -2.3972571092e-01f, 2.8855568711e-01f,
                                             -3.6069207733e-01f, 4.8089838104e-01f,  -7.2134739733e-01f,
                                             1.4426950405e+00f};

/// log2(x) to a few ulp for x > 0 (subnormals too); -inf for 0, +inf for +inf, NaN for x < 0
/// and NaN. The exponent is split off and the mantissa taken to [sqrt(1/2), sqrt(2)).
template <class Arch>
ATTNKIT_ALWAYS_INLINE vec<Arch> log2(vec<Arch> x) {
  using V = vec<Arch>;
  using IV = ivec<Arch>;
  const auto subnormal = x < V(0x1p-126f);
  const V xs = xsimd::select(subnormal, x * V(0x1p24f), x);
  const IV bits = xsimd::bitwise_cast<IV>(xs);
  // mantissa in [1, 2) scaled to [sqrt(1/2), sqrt(2)): 0x3f3504f3 is sqrt(1/2)'s bit pattern
  const IV shifted = bits - IV(0x3f3504f3);
  const IV exponent = shifted >> 23;  // arithmetic: the unbiased exponent of the scaled mantissa
  const V m = xsimd::bitwise_cast<V>((shifted & IV(0x007fffff)) + IV(0x3f3504f3));
  const V f = m - V(1.f);
  V p = V(log2_1p_over_x[0]);
  ATTNKIT_UNROLL for (int i = 1; i < 10; ++i) p = xsimd::fma(p, f, V(log2_1p_over_x[i]));
  const V e = xsimd::to_float(exponent) - xsimd::select(subnormal, V(24.f), V(0.f));
  V r = xsimd::fma(p, f, e);
  r = xsimd::select(x == V(0.f), V(-std::numeric_limits<float>::infinity()), r);
  r = xsimd::select(x == V(std::numeric_limits<float>::infinity()), x, r);
  return xsimd::select((x < V(0.f)) | xsimd::isnan(x), V(std::numeric_limits<float>::quiet_NaN()), r);
}

/// log(1 + u) / u on [0, 1], highest power first (least-squares Chebyshev fit, 8e-8 relative).
inline constexpr float log1p_over_x[9] = {5.1860526466e-03f, -2.9210533634e-02f, 7.7540948460e-02f,
                                          -1.3584004380e-01f, 1.9055994239e-01f, -2.4825662031e-01f,
                                          3.3316013173e-01f,  -4.9999256113e-01f, 9.9999992093e-01f};

/// log(1 + u) for u in [0, 1], to a few ulp relative (u * polynomial: exact for tiny u, where
/// log(1 + u) would round 1 + u to 1).
template <class Arch>
ATTNKIT_ALWAYS_INLINE vec<Arch> log1p_unit(vec<Arch> u) {
  using V = vec<Arch>;
  V p = V(log1p_over_x[0]);
  ATTNKIT_UNROLL for (int i = 1; i < 9; ++i) p = xsimd::fma(p, u, V(log1p_over_x[i]));
  return p * u;
}

}  // namespace attnkit::detail::simd
