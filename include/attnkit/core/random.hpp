/// \file
/// The library's random numbers: SplitMix64 (Steele, Lea, Flood 2014) and the standard normals
/// spec/linear.md derives from it. Deterministic from the seed on every platform.
#pragma once

#include <cmath>
#include <cstdint>

namespace attnkit {

/// SplitMix64: routing's kmeans_init and the FAVOR+ projection draw from it.
struct splitmix64 {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

namespace detail {

/// Standard normals in pairs by Box-Muller over SplitMix64 (spec/linear.md step 1): each
/// output u gives U = ((u >> 11) + 1) 2^-53 in (0, 1]; r = sqrt(-2 ln U1), then r cos(2 pi U2)
/// and r sin(2 pi U2), in that order.
class normal_stream {
 public:
  explicit normal_stream(std::uint64_t seed) : rng_{seed} {}
  double next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = uniform(), u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * 3.14159265358979323846 * u2;
    spare_ = r * std::sin(angle);
    has_spare_ = true;
    return r * std::cos(angle);
  }

 private:
  double uniform() { return static_cast<double>((rng_.next() >> 11) + 1) * 0x1p-53; }
  splitmix64 rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace detail
}  // namespace attnkit
