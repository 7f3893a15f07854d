/// \file
/// 16-bit storage types (bf16, f16), memory-space tags, and element conversions.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"

namespace attnkit {

/// Memory spaces of a tensor_view.
struct host {};
struct cuda {};

namespace detail {
ATTNKIT_HOST_DEVICE std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
ATTNKIT_HOST_DEVICE float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace detail

/// bfloat16 storage: 1 sign, 8 exponent, 7 mantissa bits. Compute happens in float.
struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  /// Round to nearest even; NaN stays a (quiet) NaN.
  ATTNKIT_HOST_DEVICE explicit bf16(float f) {
    std::uint32_t u = detail::float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<std::uint16_t>((u >> 16) | 0x40u);
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<std::uint16_t>(u >> 16);
    }
  }
  ATTNKIT_HOST_DEVICE explicit operator float() const {
    return detail::bits_float(static_cast<std::uint32_t>(bits) << 16);
  }
  static bf16 from_bits(std::uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }
};

/// IEEE binary16 storage: 1 sign, 5 exponent, 10 mantissa bits. Compute happens in float.
struct f16 {
  std::uint16_t bits = 0;

  f16() = default;
  /// Round to nearest even, with subnormals, overflow to infinity and NaN preserved.
  ATTNKIT_HOST_DEVICE explicit f16(float f) {
    const std::uint32_t u = detail::float_bits(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7fffffffu;
    std::uint32_t h;
    if (a > 0x7f800000u) {
      h = 0x7e00u | ((a >> 13) & 0x3ffu);                 // NaN: keep it quiet
    } else if (a >= 0x477ff000u) {
      h = 0x7c00u;                                         // rounds to >= 65520: infinity
    } else if (a >= 0x38800000u) {                         // normal half
      const std::uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
      h = (rounded - 0x38000000u) >> 13;
    } else if (a > 0x33000000u) {                          // subnormal half
      const std::uint32_t shift = 126u - (a >> 23);        // 14..24
      const std::uint32_t mant = (a & 0x7fffffu) | 0x800000u;
      const std::uint32_t kept = mant >> shift;
      const std::uint32_t rest = mant & ((1u << shift) - 1u);
      const std::uint32_t half = 1u << (shift - 1);
      h = kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
    } else {
      h = 0;                                               // below half the smallest subnormal
    }
    bits = static_cast<std::uint16_t>(sign | h);
  }
  ATTNKIT_HOST_DEVICE explicit operator float() const {
    const std::uint32_t sign = (static_cast<std::uint32_t>(bits) & 0x8000u) << 16;
    const std::uint32_t e = (bits >> 10) & 0x1fu;
    const std::uint32_t m = bits & 0x3ffu;
    if (e == 0x1fu) return detail::bits_float(sign | 0x7f800000u | (m << 13));
    if (e != 0) return detail::bits_float(sign | ((e + 112u) << 23) | (m << 13));
    // subnormal or zero: m * 2^-24, exact in float
    const float magnitude = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  static f16 from_bits(std::uint16_t b) {
    f16 r;
    r.bits = b;
    return r;
  }
};

namespace detail {

template <class T>
inline constexpr bool is_element_v = std::is_same_v<std::remove_const_t<T>, float> ||
                                     std::is_same_v<std::remove_const_t<T>, bf16> ||
                                     std::is_same_v<std::remove_const_t<T>, f16>;

template <class T>
ATTNKIT_HOST_DEVICE float to_float(T x) {
  return static_cast<float>(x);
}

template <class T>
ATTNKIT_HOST_DEVICE T from_float(float x) {
  return T(x);
}

}  // namespace detail
}  // namespace attnkit
