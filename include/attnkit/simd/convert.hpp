/// \file
/// Rows of float, bf16 or f16 elements to float: the per-tile conversion of 16-bit inputs.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "../core/config.hpp"
#include "../core/types.hpp"

namespace attnkit::detail::simd {

/// dst[i] = float(src[i * stride]) for i < n.
template <class T>
inline void to_float_row(const T* ATTNKIT_RESTRICT src, index_t stride, index_t n, float* ATTNKIT_RESTRICT dst) {
  using U = std::remove_const_t<T>;
  if (stride != 1) {
    for (index_t i = 0; i < n; ++i) dst[i] = to_float(src[i * stride]);
  } else if constexpr (std::is_same_v<U, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else if constexpr (std::is_same_v<U, bf16>) {
    for (index_t i = 0; i < n; ++i) {  // vectorises: a widening shift
      const std::uint32_t bits = static_cast<std::uint32_t>(src[i].bits) << 16;
      std::memcpy(dst + i, &bits, sizeof bits);
    }
  } else {
    index_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
    for (; i < n; ++i) dst[i] = to_float(src[i]);
  }
}

}  // namespace attnkit::detail::simd
