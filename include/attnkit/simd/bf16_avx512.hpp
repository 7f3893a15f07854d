/// \file
/// The two products of a flash tile on AVX512_BF16 dot-product instructions (vdpbf16ps:
/// two bf16 products per float lane and instruction, twice the FP32 FMA rate), float
/// accumulation. Operands are bf16 pairs along the reduction axis packed in 32 bits:
///   scores:  s[j][r]  = sum_c2 dot(kpair[j][c2], qtpair[c2][r])    (pairs along the head dim)
///   output:  ot[c][r] += sum_j2 dot(vpair[j2][c], ppair[j2][r])    (pairs along the keys)
#pragma once

#if defined(__AVX512BF16__)

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../core/config.hpp"
#include "microkernels.hpp"

namespace attnkit::detail::simd::bf16dot {

/// How bf16 q, k, v multiply: -1 by CPU (preferred()), 0 widened to float, 1 on the dot
/// product. Tests set it to cover both ways on any host.
inline int& choice() {
  static int c = -1;
  return c;
}

/// Does the dot product beat widening bf16 to float and running the float kernels? Not on
/// Intel cores, where vdpbf16ps delivers about half the multiply-adds per cycle that FP32
/// FMAs do: on an Emerald Rapids host bf16 attention ran at 76 GFLOP/s on it against 120
/// widened (float inputs: 130; N 2048, D 128, one thread). On Zen 5 it runs 1.6-1.7x float.
/// Fixed per machine: the two ways round differently (p.v's probabilities are bf16 on the dot
/// product), and a call must not change its results from run to run.
inline bool preferred() {
  static const bool by_cpu = !__builtin_cpu_is("intel");
  return choice() < 0 ? by_cpu : choice() == 1;
}

ATTNKIT_ALWAYS_INLINE __m512i broadcast_pair(const void* p) {
  std::int32_t x;
  std::memcpy(&x, p, sizeof x);
  return _mm512_set1_epi32(x);
}

ATTNKIT_ALWAYS_INLINE __m512 dot(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(a), reinterpret_cast<__m512bh&>(b));
}

/// qt: pairs x Br packed q pairs; k: bf16 key rows (row stride ks elements, 2 * pairs wide).
template <class G, int M>
ATTNKIT_ALWAYS_INLINE void qk_block(const std::uint32_t* ATTNKIT_RESTRICT qt, const std::uint16_t* ATTNKIT_RESTRICT k,
                                    index_t ks, index_t pairs, float* ATTNKIT_RESTRICT s) {
  __m512 acc[M][G::NR];
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = _mm512_setzero_ps();
  for (index_t c = 0; c < pairs; ++c) {
    __m512i qv[G::NR];
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) qv[n] = _mm512_load_si512(qt + c * G::Br + n * 16);
    ATTNKIT_UNROLL for (int m = 0; m < M; ++m) {
      const __m512i kb = broadcast_pair(k + m * ks + 2 * c);
      ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = dot(acc[m][n], qv[n], kb);
    }
  }
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) _mm512_store_ps(s + m * G::Br + n * 16, acc[m][n]);
}

template <class G>
inline void qk_tile(const std::uint32_t* qt, const std::uint16_t* k, index_t ks, index_t pairs, int nkeys, float* s) {
  int j = 0;
  for (; j + G::MR <= nkeys; j += G::MR) qk_block<G, G::MR>(qt, k + j * ks, ks, pairs, s + j * G::Br);
  with_count<G::MR - 1>(nkeys - j, [&](auto m) { qk_block<G, decltype(m)::value>(qt, k + j * ks, ks, pairs, s + j * G::Br); });
}

/// pp[j2][r] = (p[2 j2][r], p[2 j2 + 1][r]) rounded to bf16 (the odd tail pairs with 0).
template <class G>
inline void pack_probabilities(const float* p, int nkeys, std::uint32_t* pp) {
  alignas(64) static constexpr std::uint16_t interleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                               21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                               11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(interleave);
  for (int j = 0; j < nkeys; j += 2)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) {
      const __m512 a = _mm512_load_ps(p + j * G::Br + n * 16);
      const __m512 b = j + 1 < nkeys ? _mm512_load_ps(p + (j + 1) * G::Br + n * 16) : _mm512_setzero_ps();
      const __m512bh packed = _mm512_cvtne2ps_pbh(b, a);  // a in the low half, b in the high half
      _mm512_store_si512(pp + (j / 2) * G::Br + n * 16,
                         _mm512_permutexvar_epi16(idx, reinterpret_cast<const __m512i&>(packed)));
    }
}

template <class G, int M>
ATTNKIT_ALWAYS_INLINE void pv_block(const std::uint32_t* ATTNKIT_RESTRICT pp, int pairs,
                                    const std::uint32_t* ATTNKIT_RESTRICT vp, index_t vs, float* ATTNKIT_RESTRICT ot) {
  __m512 acc[M][G::NR];
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = _mm512_load_ps(ot + m * G::Br + n * 16);
  for (int j = 0; j < pairs; ++j) {
    __m512i pv[G::NR];
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) pv[n] = _mm512_load_si512(pp + j * G::Br + n * 16);
    ATTNKIT_UNROLL for (int m = 0; m < M; ++m) {
      const __m512i vb = _mm512_set1_epi32(static_cast<std::int32_t>(vp[j * vs + m]));
      ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = dot(acc[m][n], pv[n], vb);
    }
  }
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) _mm512_store_ps(ot + m * G::Br + n * 16, acc[m][n]);
}

/// ot[c][0..Br) += sum over key pairs; vp holds pairs x width value pairs (row stride width).
template <class G>
inline void pv_tile(const std::uint32_t* pp, int pairs, const std::uint32_t* vp, index_t width, float* ot) {
  index_t c = 0;
  for (; c + G::MR <= width; c += G::MR) pv_block<G, G::MR>(pp, pairs, vp + c, width, ot + c * G::Br);
  with_count<G::MR - 1>(static_cast<int>(width - c),
                        [&](auto m) { pv_block<G, decltype(m)::value>(pp, pairs, vp + c, width, ot + c * G::Br); });
}

}  // namespace attnkit::detail::simd::bf16dot

#endif  // __AVX512BF16__
