/// \file
/// Float transposes in registers (16 x 16 with AVX-512, 8 x 8 with AVX): packing rows into
/// lanes (queries, keys) and back (outputs), at about a quarter of a cycle per element
/// against one or more for a scalar loop over strided elements. rows_to_lanes<Lanes> runs
/// everywhere, on a scalar loop where no transpose of that width exists.
#pragma once

#include <algorithm>

#include "../core/config.hpp"
#include "../core/types.hpp"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace attnkit::detail::simd {

#if defined(__AVX512F__)

/// In-register transpose of a 16 x 16 block: t[k] becomes column k.
ATTNKIT_ALWAYS_INLINE void transpose16(__m512 t[16]) {
  __m512 r[16];
  ATTNKIT_UNROLL for (int i = 0; i < 8; ++i) r[2 * i] = _mm512_unpacklo_ps(t[2 * i], t[2 * i + 1]), r[2 * i + 1] = _mm512_unpackhi_ps(t[2 * i], t[2 * i + 1]);
  const auto lo = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  const auto hi = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  ATTNKIT_UNROLL for (int i = 0; i < 4; ++i) {
    t[4 * i + 0] = lo(r[4 * i + 0], r[4 * i + 2]);
    t[4 * i + 1] = hi(r[4 * i + 0], r[4 * i + 2]);
    t[4 * i + 2] = lo(r[4 * i + 1], r[4 * i + 3]);
    t[4 * i + 3] = hi(r[4 * i + 1], r[4 * i + 3]);
  }
  ATTNKIT_UNROLL for (int i = 0; i < 2; ++i)
    ATTNKIT_UNROLL for (int j = 0; j < 4; ++j) {
      r[8 * i + j] = _mm512_shuffle_f32x4(t[8 * i + j], t[8 * i + 4 + j], 0x88);
      r[8 * i + 4 + j] = _mm512_shuffle_f32x4(t[8 * i + j], t[8 * i + 4 + j], 0xdd);
    }
  ATTNKIT_UNROLL for (int j = 0; j < 8; ++j) t[j] = _mm512_shuffle_f32x4(r[j], r[8 + j], 0x88), t[8 + j] = _mm512_shuffle_f32x4(r[j], r[8 + j], 0xdd);
}

/// dst[c * dst_stride + i] = scale * rows[i][c] for i < 16, c < depth; rows[i] == nullptr
/// gives zeros.
inline void rows_to_lanes16(const float* const* rows, index_t depth, float scale, float* dst, index_t dst_stride) {
  const __m512 factor = _mm512_set1_ps(scale);
  for (index_t c0 = 0; c0 < depth; c0 += 16) {
    const int width = static_cast<int>(std::min<index_t>(16, depth - c0));
    const __mmask16 valid = static_cast<__mmask16>((1u << width) - 1);
    __m512 t[16];
    ATTNKIT_UNROLL for (int i = 0; i < 16; ++i) t[i] = rows[i] ? _mm512_maskz_loadu_ps(valid, rows[i] + c0) : _mm512_setzero_ps();
    transpose16(t);
    for (int k = 0; k < width; ++k) _mm512_storeu_ps(dst + (c0 + k) * dst_stride, _mm512_mul_ps(factor, t[k]));
  }
}

/// rows[i][c] = scale[i] * src[c * src_stride + i] for i < 16, c < depth, skipping rows[i] ==
/// nullptr: the inverse of rows_to_lanes16, with a factor per row.
inline void lanes_to_rows(const float* src, index_t src_stride, index_t depth, const float* scale, float* const* rows) {
  for (index_t c0 = 0; c0 < depth; c0 += 16) {
    const int width = static_cast<int>(std::min<index_t>(16, depth - c0));
    const __mmask16 valid = static_cast<__mmask16>((1u << width) - 1);
    __m512 t[16];
    ATTNKIT_UNROLL for (int k = 0; k < 16; ++k) t[k] = k < width ? _mm512_loadu_ps(src + (c0 + k) * src_stride) : _mm512_setzero_ps();
    transpose16(t);
    ATTNKIT_UNROLL for (int i = 0; i < 16; ++i)
      if (rows[i]) _mm512_mask_storeu_ps(rows[i] + c0, valid, _mm512_mul_ps(_mm512_set1_ps(scale[i]), t[i]));
  }
}

#endif  // __AVX512F__

#if defined(__AVX__)
/// In-register transpose of an 8 x 8 block: t[k] becomes column k.
ATTNKIT_ALWAYS_INLINE void transpose8(__m256 t[8]) {
  __m256 u[8], s[8];
  ATTNKIT_UNROLL for (int i = 0; i < 4; ++i)
    u[2 * i] = _mm256_unpacklo_ps(t[2 * i], t[2 * i + 1]), u[2 * i + 1] = _mm256_unpackhi_ps(t[2 * i], t[2 * i + 1]);
  ATTNKIT_UNROLL for (int i = 0; i < 2; ++i) {
    s[4 * i + 0] = _mm256_shuffle_ps(u[4 * i + 0], u[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 1] = _mm256_shuffle_ps(u[4 * i + 0], u[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[4 * i + 2] = _mm256_shuffle_ps(u[4 * i + 1], u[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[4 * i + 3] = _mm256_shuffle_ps(u[4 * i + 1], u[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  ATTNKIT_UNROLL for (int j = 0; j < 4; ++j)
    t[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20), t[4 + j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
}

/// rows_to_lanes for 8 rows: whole 8-channel blocks transposed, the last channels one by one.
inline void rows_to_lanes8(const float* const* rows, index_t depth, float scale, float* dst, index_t dst_stride) {
  const __m256 factor = _mm256_set1_ps(scale);
  index_t c0 = 0;
  for (; c0 + 8 <= depth; c0 += 8) {
    __m256 t[8];
    ATTNKIT_UNROLL for (int i = 0; i < 8; ++i) t[i] = rows[i] ? _mm256_loadu_ps(rows[i] + c0) : _mm256_setzero_ps();
    transpose8(t);
    ATTNKIT_UNROLL for (int k = 0; k < 8; ++k) _mm256_storeu_ps(dst + (c0 + k) * dst_stride, _mm256_mul_ps(factor, t[k]));
  }
  for (; c0 < depth; ++c0)
    for (int i = 0; i < 8; ++i) dst[c0 * dst_stride + i] = rows[i] ? scale * rows[i][c0] : 0.f;
}
#endif  // __AVX__

/// dst[c * dst_stride + i] = scale * rows[i][c] for i < Lanes, c < depth; rows[i] == nullptr
/// gives zeros.
template <int Lanes>
inline void rows_to_lanes(const float* const* rows, index_t depth, float scale, float* dst, index_t dst_stride) {
#if defined(__AVX512F__)
  if constexpr (Lanes == 16) return rows_to_lanes16(rows, depth, scale, dst, dst_stride);
#endif
#if defined(__AVX__)
  if constexpr (Lanes == 8) return rows_to_lanes8(rows, depth, scale, dst, dst_stride);
#endif
  for (index_t c = 0; c < depth; ++c)
    for (int i = 0; i < Lanes; ++i) dst[c * dst_stride + i] = rows[i] ? scale * rows[i][c] : 0.f;
}

}  // namespace attnkit::detail::simd
