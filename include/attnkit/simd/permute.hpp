/// \file
/// Lane permutations by runtime indices, fixed for many uses (xsimd 8.1 permutes only by
/// compile-time patterns): the strip engine's border, causal and strided windows pick each
/// lane's key from a row loaded once per window offset. One instruction on AVX-512, AVX2 and
/// NEON; elsewhere (SSE) a round trip through memory.
#pragma once

#include <cstdint>

#include "../core/config.hpp"
#include "arch.hpp"

#if XSIMD_WITH_AVX512F || XSIMD_WITH_AVX2
#include <immintrin.h>
#elif XSIMD_WITH_NEON64
#include <arm_neon.h>
#endif

namespace attnkit::detail::simd {

/// of(x)[r] = x[idx[r]] for idx[r] < W; of(lo, hi)[r] = idx[r] < W ? lo[idx[r]] : hi[idx[r] - W]
/// for idx[r] < 2W. W = the lanes of wide_arch.
class lane_permutation {
 public:
  using V = vec<wide_arch>;
  static constexpr int W = static_cast<int>(V::size);

  /// idx: W indices.
  explicit lane_permutation(const std::int32_t* idx) {
#if XSIMD_WITH_AVX512F
    idx_ = _mm512_loadu_si512(idx);
#elif XSIMD_WITH_AVX2
    idx_ = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
    high_ = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx_, _mm256_set1_epi32(W - 1)));
#elif XSIMD_WITH_NEON64
    std::uint8_t bytes[16];  // byte b of lane r: byte 4 idx[r] + b of the table
    for (int r = 0; r < W; ++r)
      for (int b = 0; b < 4; ++b) bytes[4 * r + b] = static_cast<std::uint8_t>(4 * idx[r] + b);
    bytes_ = vld1q_u8(bytes);
#else
    for (int r = 0; r < W; ++r) idx_[r] = idx[r];
#endif
  }

  ATTNKIT_ALWAYS_INLINE V of(V x) const {
#if XSIMD_WITH_AVX512F
    return _mm512_permutexvar_ps(idx_, x);
#elif XSIMD_WITH_AVX2
    return _mm256_permutevar8x32_ps(x, idx_);
#elif XSIMD_WITH_NEON64
    return vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(x), bytes_));
#else
    alignas(64) float in[W], out[W];
    x.store_aligned(in);
    for (int r = 0; r < W; ++r) out[r] = in[idx_[r]];
    return V::load_aligned(out);
#endif
  }

  ATTNKIT_ALWAYS_INLINE V of(V lo, V hi) const {
#if XSIMD_WITH_AVX512F
    return _mm512_permutex2var_ps(lo, idx_, hi);
#elif XSIMD_WITH_AVX2
    // vpermps reads the low 3 bits of each index: both halves permuted, then the right one.
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx_), _mm256_permutevar8x32_ps(hi, idx_), high_);
#elif XSIMD_WITH_NEON64
    const uint8x16x2_t table = {{vreinterpretq_u8_f32(lo), vreinterpretq_u8_f32(hi)}};
    return vreinterpretq_f32_u8(vqtbl2q_u8(table, bytes_));
#else
    alignas(64) float in[2 * W], out[W];
    lo.store_aligned(in);
    hi.store_aligned(in + W);
    for (int r = 0; r < W; ++r) out[r] = in[idx_[r]];
    return V::load_aligned(out);
#endif
  }

 private:
#if XSIMD_WITH_AVX512F
  __m512i idx_;
#elif XSIMD_WITH_AVX2
  __m256i idx_;
  __m256 high_;  // lanes whose index is past the first vector
#elif XSIMD_WITH_NEON64
  uint8x16_t bytes_;
#else
  std::int32_t idx_[W];
#endif
};

}  // namespace attnkit::detail::simd
