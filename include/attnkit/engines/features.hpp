/// \file
/// Feature maps applied to tiles of rows on the CPU (variants/feature_maps.hpp): the first step
/// of the linear and toeplitz-fft engines. Rows arrive as float (converted and, for kernelized
/// attention, normalised by the caller); features leave as rows of m floats.
///
/// FAVOR+ features are exponentials, so they come in two steps: `exponents` writes
/// u_r = w_r . x' - |x'|^2 / 2 (the projections are a small matrix product on the flash
/// engine's q.k micro-kernel, projection rows in lanes) and the largest u of each row;
/// `exponentiate` then writes m^(-1/2) exp(u_r - shift). The shift (Performer's stabiliser: a
/// row's own maximum for queries, a running maximum over keys) is a common factor of numerator
/// and denominator that the engines carry as a log offset. elu+1 and relu need no shift.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/config.hpp"
#include "../core/executor.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/convert.hpp"
#include "../simd/arch.hpp"
#include "../simd/exp.hpp"
#include "../simd/microkernels.hpp"
#include "../variants/feature_maps.hpp"
#include "flash.hpp"

namespace attnkit::detail::features {

using arch = simd::wide_arch;
using V = simd::vec<arch>;
inline constexpr index_t W = static_cast<index_t>(V::size);
inline constexpr float log2e = 1.4426950408889634f;

/// Index ranges of a tile: [0, body) in whole vectors, [body, n) element by element.
inline index_t vector_body(index_t n) { return n / W * W; }

/// elu(x) + 1 (x + 1 above 0, exp(x) below) or max(x, 0) + feature_eps, in place over n floats.
inline void apply_pointwise(const elu_plus_one&, float* x, index_t n) {
  const index_t body = vector_body(n);
  for (index_t i = 0; i < body; i += W) {
    const V v = V::load_unaligned(x + i);
    xsimd::select(v > V(0.f), v + V(1.f), simd::exp2<arch>(xsimd::min(v, V(0.f)) * V(log2e))).store_unaligned(x + i);
  }
  for (index_t i = body; i < n; ++i) x[i] = x[i] > 0 ? x[i] + 1.f : std::exp(x[i]);
}
inline void apply_pointwise(const relu& f, float* x, index_t n) {
  const index_t body = vector_body(n);
  for (index_t i = 0; i < body; i += W) (xsimd::max(V::load_unaligned(x + i), V(0.f)) + V(f.feature_eps)).store_unaligned(x + i);
  for (index_t i = body; i < n; ++i) x[i] = std::max(x[i], 0.f) + f.feature_eps;
}

/// The FAVOR+ map of one call: projection rows scaled by sqrt(scale), packed transposed in
/// panels of Br rows ([panel][d][Br], zero lanes past the last row) for the q.k micro-kernel.
class favor_map {
 public:
  using G = flash::geometry<arch, 2>;

  favor_map(const favor_plus& f, float scale, index_t d)
      : d_(d), m_(f.features), directions_(f.hyperbolic ? f.features / 2 : f.features), hyperbolic_(f.hyperbolic),
        half_scale_(0.5f * scale), norm_(static_cast<float>(1.0 / std::sqrt(static_cast<double>(f.features)))) {
    const std::vector<double> w = favor_projection(f, d);
    const double root = std::sqrt(static_cast<double>(scale));
    panels_ = (directions_ + G::Br - 1) / G::Br;
    packed_.assign(static_cast<std::size_t>(panels_ * d * G::Br + 16), 0.f);  // + room to align to 64 bytes
    // 64-byte aligned start inside the vector
    offset_ = (64 - reinterpret_cast<std::uintptr_t>(packed_.data()) % 64) % 64 / sizeof(float);
    for (index_t r = 0; r < directions_; ++r)
      for (index_t c = 0; c < d; ++c)
        panel(r / G::Br)[c * G::Br + r % G::Br] = static_cast<float>(root * w[static_cast<std::size_t>(r * d + c)]);
  }

  index_t features() const { return m_; }
  /// Floats of scratch `exponents` needs for `rows` rows: the micro-kernel's output, then a
  /// double and an int per row.
  static index_t scratch_floats(index_t rows) { return rows * G::Br + (3 * rows + 15) / 16 * 16; }

  /// u[i][r] for rows x[i] (row stride d) into dst (row stride ds), and row_max[i] = max_r u[i][r].
  /// Rows are scaled by powers of two to below 1 first (in place, exact) and u is put together
  /// in double, so inputs near FLT_MAX give finite exponents (at worst -FLT_MAX), never inf - inf.
  void exponents(float* x, index_t rows, float* dst, index_t ds, float* row_max, float* scratch) const {
    double* diag = reinterpret_cast<double*>(scratch + rows * G::Br);  // -|x'|^2 / 2
    int* row_exp = reinterpret_cast<int*>(diag + rows);
    for (index_t i = 0; i < rows; ++i) {
      float* xi = x + i * d_;
      double sq = 0;
      float top = 0;
      for (index_t c = 0; c < d_; ++c) sq += double(xi[c]) * xi[c], top = std::max(top, std::fabs(xi[c]));
      diag[i] = -double(half_scale_) * sq;
      row_exp[i] = 0;
      if (top >= 1) std::frexp(top, &row_exp[i]);
      if (row_exp[i] != 0)
        for (index_t c = 0; c < d_; ++c) xi[c] = std::ldexp(xi[c], -row_exp[i]);
    }
    const auto to_float = [](double u) { return static_cast<float>(std::max(u, -double(std::numeric_limits<float>::max()))); };
    for (index_t pnl = 0; pnl < panels_; ++pnl) {
      const index_t r0 = pnl * G::Br, count = std::min<index_t>(G::Br, directions_ - r0);
      for (index_t i0 = 0; i0 < rows; i0 += 256) {
        const int n = static_cast<int>(std::min<index_t>(256, rows - i0));
        simd::qk_tile<G>(panel(pnl), x + i0 * d_, d_, d_, n, scratch + i0 * G::Br);
      }
      for (index_t i = 0; i < rows; ++i) {
        float* out = dst + i * ds + r0;
        const float* p = scratch + i * G::Br;
        const double unit = std::ldexp(1.0, row_exp[i]);
        for (index_t r = 0; r < count; ++r) out[r] = to_float(double(p[r]) * unit + diag[i]);
        if (hyperbolic_)
          for (index_t r = 0; r < count; ++r) out[directions_ + r] = to_float(diag[i] - double(p[r]) * unit);
      }
    }
    for (index_t i = 0; i < rows; ++i) {
      float top = -std::numeric_limits<float>::infinity();
      for (index_t r = 0; r < m_; ++r) top = std::max(top, dst[i * ds + r]);
      row_max[i] = top;
    }
  }

  /// u <- m^(-1/2) exp(u - shift) over n floats (shift >= max u: no overflow).
  void exponentiate(float* u, index_t n, float shift) const {
    const index_t body = vector_body(n);
    const V s(shift), l(log2e), norm(norm_);
    for (index_t i = 0; i < body; i += W)
      (norm * simd::exp2<arch>((V::load_unaligned(u + i) - s) * l)).store_unaligned(u + i);
    for (index_t i = body; i < n; ++i) u[i] = norm_ * std::exp(u[i] - shift);
  }

 private:
  float* panel(index_t p) { return packed_.data() + offset_ + p * d_ * G::Br; }
  const float* panel(index_t p) const { return packed_.data() + offset_ + p * d_ * G::Br; }

  index_t d_, m_, directions_, panels_ = 0;
  bool hyperbolic_;
  float half_scale_, norm_;
  std::vector<float> packed_;
  std::size_t offset_ = 0;
};

}  // namespace attnkit::detail::features

namespace attnkit::detail::features {

/// Row t of head h of x as float into dst (d floats), L2-normalised when `normalize` (a zero
/// row stays zero).
template <class T>
void load_row(const tensor_view<const T>& x, index_t b, index_t h, index_t t, bool normalize, float* dst) {
  simd::to_float_row(x.row(b, h, t), x.stride(dim_axis), x.dim(), dst);
  if (!normalize) return;
  double sum = 0;
  for (index_t c = 0; c < x.dim(); ++c) sum += double(dst[c]) * dst[c];
  if (sum == 0) return;
  const float inv = static_cast<float>(1.0 / std::sqrt(sum));
  for (index_t c = 0; c < x.dim(); ++c) dst[c] *= inv;
}

/// A feature map bound to one call: `queries` writes the features of rows [t0, t0 + n) of a
/// head with a log offset per row (the stabiliser that cancels in num / den); `keys` writes
/// what `finish_keys` turns into features once the engine has chosen the shift (at least the
/// returned key_max), so that a shift common to many keys can grow as keys arrive. Rows are
/// L2-normalised first when `normalize` (kernelized attention's normalize_qk).
///
/// elu+1 and relu features are scaled by powers of two (exact): each query row to a maximum in
/// [1/2, 1), keys by the power of two of the largest key so far. Without it, finite inputs
/// near FLT_MAX would overflow the state's sums.
template <class FeatureMap>
class binding {
 public:
  binding(const FeatureMap& f, float, index_t d, bool normalize) : f_(f), d_(d), normalize_(normalize) {}
  index_t features() const { return d_; }
  static index_t scratch_floats(index_t, index_t) { return 0; }

  template <class T>
  void queries(const tensor_view<const T>& x, index_t b, index_t h, index_t t0, index_t n, float* dst, index_t ds,
               float* offset, float*) const {
    apply(x, b, h, t0, n, dst, ds);
    for (index_t i = 0; i < n; ++i) {
      const int e = exponent_of(dst + i * ds, d_);
      scale_by_power_of_two(dst + i * ds, d_, -e);
      offset[i] = static_cast<float>(e) * ln2;
    }
  }
  /// Writes the rows' features; key_max is ln 2 times the exponent of the largest.
  template <class T>
  void keys(const tensor_view<const T>& x, index_t b, index_t h, index_t t0, index_t n, float* dst, index_t ds,
            float& key_max, float*) const {
    apply(x, b, h, t0, n, dst, ds);
    int e = 0;
    for (index_t i = 0; i < n; ++i) e = std::max(e, exponent_of(dst + i * ds, d_));
    key_max = static_cast<float>(e) * ln2;
  }
  /// Scales the keys' features by 2^-(shift / ln 2): the shift is a multiple of ln 2.
  void finish_keys(float* dst, index_t rows, index_t ds, float shift) const {
    const int e = static_cast<int>(std::lround(shift / ln2));
    for (index_t i = 0; i < rows; ++i) scale_by_power_of_two(dst + i * ds, d_, -e);
  }

 private:
  static constexpr float ln2 = 0.693147180559945309f;

  template <class T>
  void apply(const tensor_view<const T>& x, index_t b, index_t h, index_t t0, index_t n, float* dst, index_t ds) const {
    for (index_t t = 0; t < n; ++t) {
      load_row(x, b, h, t0 + t, normalize_, dst + t * ds);
      apply_pointwise(f_, dst + t * ds, d_);
    }
  }
  /// e with max(x) in [2^(e-1), 2^e) (features are >= 0); 0 for a row of zeros.
  static int exponent_of(const float* x, index_t n) {
    const float top = *std::max_element(x, x + n);
    int e = 0;
    if (top > 0) std::frexp(top, &e);
    return e;
  }
  static void scale_by_power_of_two(float* x, index_t n, int e) {
    if (e == 0) return;
    // In two steps: 2^e alone may not be a float (e < -126 or e > 127).
    const float half = std::ldexp(1.f, e / 2), rest = std::ldexp(1.f, e - e / 2);
    for (index_t i = 0; i < n; ++i) x[i] = x[i] * half * rest;
  }

  FeatureMap f_;
  index_t d_;
  bool normalize_;
};

template <>
class binding<favor_plus> {
 public:
  binding(const favor_plus& f, float scale, index_t d, bool normalize) : map_(f, scale, d), d_(d), normalize_(normalize) {}
  index_t features() const { return map_.features(); }
  /// Scratch for `rows` rows of d values: the rows as float, the micro-kernel's output, the
  /// row maxima.
  static index_t scratch_floats(index_t rows, index_t d) { return rows_floats(rows, d) + favor_map::scratch_floats(rows) + rows; }

  template <class T>
  void queries(const tensor_view<const T>& x, index_t b, index_t h, index_t t0, index_t n, float* dst, index_t ds,
               float* offset, float* scratch) const {
    exponents(x, b, h, t0, n, dst, ds, offset, scratch);
    for (index_t i = 0; i < n; ++i) map_.exponentiate(dst + i * ds, map_.features(), offset[i]);
  }
  template <class T>
  void keys(const tensor_view<const T>& x, index_t b, index_t h, index_t t0, index_t n, float* dst, index_t ds,
            float& key_max, float* scratch) const {
    float* row_max = scratch + rows_floats(n, d_) + favor_map::scratch_floats(n);
    exponents(x, b, h, t0, n, dst, ds, row_max, scratch);
    key_max = -std::numeric_limits<float>::infinity();
    for (index_t i = 0; i < n; ++i) key_max = std::max(key_max, row_max[i]);
  }
  void finish_keys(float* dst, index_t rows, index_t ds, float shift) const {
    for (index_t i = 0; i < rows; ++i) map_.exponentiate(dst + i * ds, map_.features(), shift);
  }

 private:
  template <class T>
  void exponents(const tensor_view<const T>& x, index_t b, index_t h, index_t t0, index_t n, float* dst, index_t ds,
                 float* row_max, float* scratch) const {
    for (index_t t = 0; t < n; ++t) load_row(x, b, h, t0 + t, normalize_, scratch + t * d_);
    map_.exponents(scratch, n, dst, ds, row_max, scratch + rows_floats(n, d_));
  }
  /// The rows as float, rounded up to 64 bytes (the micro-kernel's output follows, aligned).
  static index_t rows_floats(index_t rows, index_t d) { return (rows * d + 15) / 16 * 16; }

  favor_map map_;
  index_t d_;
  bool normalize_;
};

/// x -> x 2^e for the outputs of scaled values: in two steps, since 2^e alone may not be a
/// float (2^128), and after the division by the denominator, where x is at most max |v| 2^-e.
struct power_of_two {
  explicit power_of_two(int e) : first(std::ldexp(1.f, e / 2)), second(std::ldexp(1.f, e - e / 2)) {}
  bool exact() const { return first == 1 && second == 1; }
  float operator()(float x) const { return x * first * second; }
  float first, second;
};

/// The exponents of the value scaling per (batch, kv head) (a linear or toeplitz-fft engine
/// scales values by 2^-e on loading and outputs by 2^e): e with
/// max |v| < 2^e when max |v| > 2^64, else 0. Scaling by powers of two is exact.
template <class Vt>
std::vector<int> value_exponents(const tensor_view<const Vt>& v, int threads) {
  std::vector<int> e(static_cast<std::size_t>(v.batch() * v.heads()), 0);
  parallel_for(v.batch() * v.heads(), threads, [&](index_t pair) {
    float top = 0;
    const index_t stride = v.stride(dim_axis);
    for (index_t t = 0; t < v.seq(); ++t) {
      const Vt* row = v.row(pair / v.heads(), pair % v.heads(), t);
      index_t c = 0;
      if constexpr (std::is_same_v<Vt, float>) {
        if (stride == 1) {
          V m(0.f);
          for (; c + W <= v.dim(); c += W) m = xsimd::max(m, xsimd::abs(V::load_unaligned(row + c)));
          alignas(64) float lanes[W];
          m.store_aligned(lanes);
          for (const float x : lanes) top = std::max(top, x);
        }
      }
      if (stride == 1)
        for (; c < v.dim(); ++c) top = std::max(top, std::fabs(to_float(row[c])));
      else
        for (index_t c = 0; c < v.dim(); ++c) top = std::max(top, std::fabs(to_float(row[c * stride])));
    }
    if (top > 0x1p64f) std::frexp(top, &e[static_cast<std::size_t>(pair)]);
  });
  return e;
}

}  // namespace attnkit::detail::features
