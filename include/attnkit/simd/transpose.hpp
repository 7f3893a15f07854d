/// \file
/// 16 x 16 float transposes in AVX-512 registers: packing rows into lanes (queries, keys) and
/// back (outputs), at about a quarter of a cycle per element against one or more for a
/// scalar loop over strided elements.
#pragma once

#if defined(__AVX512F__)

#include <immintrin.h>

#include <algorithm>

#include "../core/config.hpp"
#include "../core/types.hpp"

namespace attnkit::detail::simd {

/// In-register transpose of a 16 x 16 block: t[k] becomes column k.
ATTNKIT_ALWAYS_INLINE void transpose16(__m512 t[16]) {
  __m512 r[16];
  for (int i = 0; i < 8; ++i) r[2 * i] = _mm512_unpacklo_ps(t[2 * i], t[2 * i + 1]), r[2 * i + 1] = _mm512_unpackhi_ps(t[2 * i], t[2 * i + 1]);
  const auto lo = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  const auto hi = [](__m512 a, __m512 b) { return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))); };
  for (int i = 0; i < 4; ++i) {
    t[4 * i + 0] = lo(r[4 * i + 0], r[4 * i + 2]);
    t[4 * i + 1] = hi(r[4 * i + 0], r[4 * i + 2]);
    t[4 * i + 2] = lo(r[4 * i + 1], r[4 * i + 3]);
    t[4 * i + 3] = hi(r[4 * i + 1], r[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      r[8 * i + j] = _mm512_shuffle_f32x4(t[8 * i + j], t[8 * i + 4 + j], 0x88);
      r[8 * i + 4 + j] = _mm512_shuffle_f32x4(t[8 * i + j], t[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; ++j) t[j] = _mm512_shuffle_f32x4(r[j], r[8 + j], 0x88), t[8 + j] = _mm512_shuffle_f32x4(r[j], r[8 + j], 0xdd);
}

/// dst[c * dst_stride + i] = scale * rows[i][c] for i < 16, c < depth; rows[i] == nullptr
/// gives zeros.
inline void rows_to_lanes(const float* const* rows, index_t depth, float scale, float* dst, index_t dst_stride) {
  const __m512 factor = _mm512_set1_ps(scale);
  for (index_t c0 = 0; c0 < depth; c0 += 16) {
    const int width = static_cast<int>(std::min<index_t>(16, depth - c0));
    const __mmask16 valid = static_cast<__mmask16>((1u << width) - 1);
    __m512 t[16];
    for (int i = 0; i < 16; ++i) t[i] = rows[i] ? _mm512_maskz_loadu_ps(valid, rows[i] + c0) : _mm512_setzero_ps();
    transpose16(t);
    for (int k = 0; k < width; ++k) _mm512_storeu_ps(dst + (c0 + k) * dst_stride, _mm512_mul_ps(factor, t[k]));
  }
}

/// rows[i][c] = scale[i] * src[c * src_stride + i] for i < 16, c < depth, skipping rows[i] ==
/// nullptr: the inverse of rows_to_lanes, with a factor per row.
inline void lanes_to_rows(const float* src, index_t src_stride, index_t depth, const float* scale, float* const* rows) {
  for (index_t c0 = 0; c0 < depth; c0 += 16) {
    const int width = static_cast<int>(std::min<index_t>(16, depth - c0));
    const __mmask16 valid = static_cast<__mmask16>((1u << width) - 1);
    __m512 t[16];
    for (int k = 0; k < 16; ++k) t[k] = k < width ? _mm512_loadu_ps(src + (c0 + k) * src_stride) : _mm512_setzero_ps();
    transpose16(t);
    for (int i = 0; i < 16; ++i)
      if (rows[i]) _mm512_mask_storeu_ps(rows[i] + c0, valid, _mm512_mul_ps(_mm512_set1_ps(scale[i]), t[i]));
  }
}

}  // namespace attnkit::detail::simd

#endif  // __AVX512F__
