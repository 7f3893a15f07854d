/// \file
/// Overflow-safe arithmetic on the sizes a caller controls (extents, strides, policy fields):
/// products and sums that do not fit in 64 bits are an attnkit::error naming what overflowed,
/// or saturate where the definition does not care (a window larger than any sequence).
#pragma once

#include <cstdint>
#include <limits>

#include "config.hpp"
#include "error.hpp"

namespace attnkit::detail {

inline constexpr index_t index_max = std::numeric_limits<index_t>::max();
inline constexpr index_t index_min = std::numeric_limits<index_t>::min();

/// a * b into r; true when the exact product does not fit in index_t.
inline bool mul_overflows(index_t a, index_t b, index_t& r) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_mul_overflow(a, b, &r);
#else
  const bool negative = (a < 0) != (b < 0);
  const std::uint64_t ua = a < 0 ? 0 - static_cast<std::uint64_t>(a) : static_cast<std::uint64_t>(a);
  const std::uint64_t ub = b < 0 ? 0 - static_cast<std::uint64_t>(b) : static_cast<std::uint64_t>(b);
  const std::uint64_t limit = static_cast<std::uint64_t>(index_max) + (negative ? 1u : 0u);
  if (ua != 0 && ub > limit / ua) return true;
  const std::uint64_t m = ua * ub;
  r = static_cast<index_t>(negative ? 0 - m : m);
  return false;
#endif
}

/// a + b into r; true when the exact sum does not fit in index_t.
inline bool add_overflows(index_t a, index_t b, index_t& r) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_add_overflow(a, b, &r);
#else
  if ((b > 0 && a > index_max - b) || (b < 0 && a < index_min - b)) return true;
  r = a + b;
  return false;
#endif
}

/// a * b, or attnkit::error with `what...` followed by "overflows 64-bit integers".
template <class... What>
index_t checked_mul(index_t a, index_t b, const What&... what) {
  index_t r;
  if (mul_overflows(a, b, r)) throw error(concat(what..., " overflows 64-bit integers"));
  return r;
}

/// a + b, or attnkit::error with `what...` followed by "overflows 64-bit integers".
template <class... What>
index_t checked_add(index_t a, index_t b, const What&... what) {
  index_t r;
  if (add_overflows(a, b, r)) throw error(concat(what..., " overflows 64-bit integers"));
  return r;
}

/// a + b clamped to [index_min, index_max].
inline index_t saturating_add(index_t a, index_t b) {
  index_t r;
  if (add_overflows(a, b, r)) return b > 0 ? index_max : index_min;
  return r;
}

/// a * b clamped to [index_min, index_max].
inline index_t saturating_mul(index_t a, index_t b) {
  index_t r;
  if (mul_overflows(a, b, r)) return (a < 0) != (b < 0) ? index_min : index_max;
  return r;
}

/// floor(a / b) for b > 0, without the overflow of (a - b + 1) / b when b is huge.
inline index_t floor_div(index_t a, index_t b) { return a / b - (a % b != 0 && a < 0 ? 1 : 0); }

/// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
inline index_t ceil_div(index_t a, index_t b) { return a / b + (a % b != 0 ? 1 : 0); }

}  // namespace attnkit::detail
