/// \file
/// The feature-gaussian engine: Gaussian adaptive attention, GAAM (Ioannides, Chadha, Elkins
/// 2024, arXiv 2401.11143; spec/probabilistic.md part B "Fast algorithm") on the CPU.
///
/// Folding. sum_g (z - delta_g)^2 / c_g^2 = A (z - centre)^2 + const with A = sum_g 1/c_g^2 and
/// centre = sum_g (delta_g / c_g^2) / A, so a chunk's weights are those of one Gaussian:
/// w_i = softmax_i(-kappa (x_i - t)^2), kappa = A / (2 var), t = mu + centre. Each chunk's A
/// and centre are computed once per call; the cost per element does not depend on G.
///
/// Per slice (a chunk of one token's features, or of one feature's tokens), in float SIMD:
///   pass 1  sum, min, max;
///   pass 2  the variance about the float-sum mean, in units scaled by a power of two so that
///           every value lies in [-1, 1] (no overflow near FLT_MAX, no underflow of squares);
///           then the exact mean and t, and the anchor a = t clamped to [min, max];
///   pass 3  log2 weights relative to the anchor, the exact differences of the quadratic
///             -kappa ((x - t)^2 - (a - t)^2) log2(e) = u (q - p u),  u = (x - a) * scale,
///           which do not exceed 0 beyond rounding (a is the vertex, or the end of the data
///           nearest to it), so exp2 cannot overflow (below 2^-125 it gives 0); the weights go
///           to scratch, their sum to a double;
///   pass 4  out = x * w (+ x).
/// Sums run in float vectors and join a double total every `flush` terms. Constant slices get
/// uniform weights (their variance is eps, or 0 with eps = 0). Slices the float passes cannot
/// hold run in double (exact_slice): values or spreads beyond 2^+-126, coefficients beyond
/// 2^60 (sharp Gaussians, offsets far outside the data), and a vertex inside the data's range
/// but far from every element, where log weights would be large enough for float rounding
/// to show. So finite input never gives NaN.
///
/// Axis seq (seq_block): lanes are 16 features (a 64-byte line); pass 1 walks the tokens of a
/// chunk and packs them into per-thread scratch, 128 bytes a token of the chunk with the
/// weights (tokens of 16-bit or strided features are converted one at a time); the other
/// passes read the packed copy from L1/L2/L3.
/// Axis dim, up to 256 features: 16 tokens are transposed into lanes (16 x 16 register
/// transposes) and run through the same seq_block, features taking the place of tokens, so
/// no pass reduces across lanes and the scalars of 16 slices are computed together; the
/// outputs are transposed back. Longer rows run one at a time (dim_chunk), in L1, with
/// horizontal sums. Large float outputs (stream_bytes()) are written with non-temporal
/// stores on x86; inputs are read in place where they are float at unit stride.
///
/// Threads: parallel_for over groups of tokens (dim) or over (batch, head, chunk, block of
/// 16 features) (seq). Every slice is computed by the same code whatever the thread count,
/// so results are bitwise identical for every options::threads.
///
/// options::lse is not written (GAAM has no keys to merge over; see variants/gaussian_adaptive.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/arena.hpp"
#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../simd/arch.hpp"
#include "../simd/convert.hpp"
#include "../simd/exp.hpp"
#include "../simd/transpose.hpp"
#include "../variants/gaussian_adaptive.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace attnkit::detail::feature_gaussian {

inline constexpr double log2e = 1.4426950408889634;
/// Float terms a vector accumulates before they join a double total: the float error stays
/// that of 64 additions however long the slice.
inline constexpr index_t flush = 64;
/// Largest p and |q| the float passes take: |u| < 1, so every log2 weight is below 2^61.
inline constexpr double max_coefficient = 0x1p60;
/// Smallest sum of weights relative to the vertex t the float passes accept: below it the
/// data are far from a vertex inside their range (between clusters), log2 weights are
/// large, and their float rounding (2^-23 relative) would show; such slices run in double.
inline constexpr double min_total = 0x1p-32;
/// Features per block on the seq axis: one 64-byte line of floats.
inline constexpr index_t block_lanes = 16;

/// A chunk's Gaussians folded into one: A = sum_g 1/c_g^2, centre = sum_g (delta_g/c_g^2) / A.
/// In double both stay finite for every finite delta and c > 0 (1/c^2 <= 2^298); the centre
/// is a weighted mean of the offsets, no larger than they are. With the chunk's length and
/// the reciprocals the passes multiply by.
struct folded {
  double precision, centre;
  index_t len;
  double inv_len, inv_dof;  // 1 / len, 1 / (len - 1) or 1 / len
};

inline std::vector<folded> fold(const gaussian_adaptive& p, index_t n) {
  std::vector<folded> f(static_cast<std::size_t>(p.chunks));
  const index_t size = n / p.chunks;
  for (index_t c = 0; c < p.chunks; ++c) {
    double a = 0, b = 0;
    if (p.var_scales == nullptr && p.mean_offsets == nullptr) {
      a = static_cast<double>(p.gaussians);  // G unit Gaussians at the mean: no loop over G
    } else {
      for (index_t g = 0; g < p.gaussians; ++g) {
        const double scale = p.var_scales ? static_cast<double>(p.var_scales[c * p.gaussians + g]) : 1.0;
        const double offset = p.mean_offsets ? static_cast<double>(p.mean_offsets[c * p.gaussians + g]) : 0.0;
        const double inv = 1.0 / (scale * scale);
        a += inv;
        b += offset * inv;
      }
    }
    const index_t len = c + 1 == p.chunks ? n - c * size : size;
    const double dof = static_cast<double>(p.unbiased ? len - 1 : len);
    f[static_cast<std::size_t>(c)] = {a, b / a, len, 1.0 / static_cast<double>(len), 1.0 / dof};
  }
  return f;
}

/// Per-call settings.
struct settings {
  double eps;
  bool residual;
};

/// How one slice is computed.
enum class route : std::uint8_t {
  fast,     // the float passes
  uniform,  // every element equal: weights 1/n
  exact,    // exact_slice, in double
};

/// The scalars of one slice, filled in as the passes go.
struct slice_plan {
  route how = route::fast;
  float lo = 0, hi = 0;      // pass 1: min and max
  float mean1 = 0;           // pass 1: float-sum mean, the centre of the variance pass
  float scale = 0;           // pass 1: 2^-k with (hi - lo) * scale in [1/2, 1)
  double t = 0;              // pass 2: mu + centre, exact
  double var_scaled = 0;     // pass 2: (variance + eps) * scale^2
  float anchor = 0;          // pass 2: t clamped to [lo, hi]: weights are taken relative to its
  float anchor_scaled = 0;   // anchor * scale (exact: a power of two)
  float p = 0, q = 0;        // log2 weight relative to the anchor: u (q - p u), u = (x - anchor) * scale
};

/// 2^e for e in [-126, 127], from its bits (no libm call).
inline float power_of_two(int e) { return bits_float(static_cast<std::uint32_t>(e + 127) << 23); }

/// After pass 1 (sum in double, min, max over the chunk).
inline slice_plan plan_slice(double sum, float lo, float hi, const folded& f) {
  slice_plan sp;
  sp.lo = lo, sp.hi = hi;
  if (!std::isfinite(sum) || !std::isfinite(lo) || !std::isfinite(hi)) {
    sp.how = route::exact;  // |x| * len beyond FLT_MAX (or non-finite input)
    return sp;
  }
  const double range = static_cast<double>(hi) - static_cast<double>(lo);
  if (range == 0) {
    sp.how = route::uniform;
    return sp;
  }
  // range = m 2^k with m in [1/2, 1): k from the double's exponent field (range is normal)
  std::uint64_t bits;
  std::memcpy(&bits, &range, sizeof bits);
  const int k = static_cast<int>((bits >> 52) & 0x7ff) - 1022;
  // Differences of elements must be finite floats and the scale a normal float.
  if (k > 126 || k < -125) {
    sp.how = route::exact;
    return sp;
  }
  sp.scale = power_of_two(-k);
  sp.mean1 = static_cast<float>(sum * f.inv_len);
  return sp;
}

/// After pass 2 (s1, s2: sums of v and v^2, v = (x - mean1) * scale): the exact mean and t,
/// the variance in scaled units.
inline void set_moments(slice_plan& sp, double s1, double s2, const folded& f, const settings& st) {
  if (sp.how != route::fast) return;
  const double scale = sp.scale;
  const double mean = static_cast<double>(sp.mean1) + s1 * f.inv_len / scale;
  const double m2 = std::max(0.0, s2 - s1 * s1 * f.inv_len);
  sp.var_scaled = m2 * f.inv_dof + st.eps * scale * scale;
  sp.t = mean + f.centre;
  sp.anchor = static_cast<float>(std::clamp(sp.t, static_cast<double>(sp.lo), static_cast<double>(sp.hi)));
  // Two elements differ by at least half the scaled range, so var_scaled > 0; guard anyway.
  if (!(sp.var_scaled > 0)) sp.how = route::exact;
}

/// The log2 weights relative to the anchor a = t clamped to [lo, hi]:
///   -kappa ((x - t)^2 - (a - t)^2) log2(e) = u (q - p u),  u = (x - a) scale,
///   p = log2(e) A / (2 var_scaled),  q = 2 p (t - a) scale.
/// No element outweighs the anchor (t is the vertex, or beyond the data the nearest end is),
/// and nothing cancels: inside, q is about 0; beyond, u and q have opposite signs. Slices
/// whose coefficients would exceed 2^60 run in double.
inline void set_anchor(slice_plan& sp, const folded& f) {
  if (sp.how != route::fast) return;
  const double scale = sp.scale, d = (sp.t - static_cast<double>(sp.anchor)) * scale;
  const double p = 0.5 * log2e * f.precision / sp.var_scaled, q = 2 * p * d;
  if (!(p <= max_coefficient) || !(std::fabs(q) <= max_coefficient)) {
    sp.how = route::exact;
    return;
  }
  sp.anchor_scaled = sp.anchor * sp.scale;
  sp.p = static_cast<float>(p);
  sp.q = static_cast<float>(q);
}

/// After pass 3: a sum of weights below min_total routes the slice to double.
inline void check_total(slice_plan& sp, double total) {
  if (sp.how == route::fast && !(total >= min_total)) sp.how = route::exact;
}

/// A chunk in double, for chunks beyond the float passes' range. x(i) reads element i as
/// float, put(i, y) writes its output. Scores are differences of the quadratic about the
/// element nearest to t, as in the float passes, then shifted by their maximum.
template <class Read, class Write>
void exact_slice(const folded& f, const settings& st, Read&& x, Write&& put) {
  const index_t len = f.len;
  double mean = 0;
  for (index_t i = 0; i < len; ++i) mean += static_cast<double>(x(i));
  mean /= static_cast<double>(len);  // exact for a constant chunk: a sum of floats is exact below 2^29 terms
  double m2 = 0;
  for (index_t i = 0; i < len; ++i) m2 += (x(i) - mean) * (x(i) - mean);
  const double var = m2 * f.inv_dof + st.eps;
  const auto output = [&](index_t i, double w) {
    const double xi = x(i);
    put(i, static_cast<float>(xi * w + (st.residual ? xi : 0.0)));
  };
  if (m2 == 0 || var == 0) {  // m2 == 0 only if every element is equal (squares of float gaps are normal doubles)
    for (index_t i = 0; i < len; ++i) output(i, f.inv_len);
    return;
  }
  const double kappa = f.precision / (2 * var), t = mean + f.centre;
  double xm = x(0);
  for (index_t i = 1; i < len; ++i)
    if (std::fabs(x(i) - t) < std::fabs(xm - t)) xm = x(i);
  // kappa <= 2^700 and both factors below 2^130: the product is finite, never 0 * inf
  const auto score = [&](index_t i) {
    const double xi = x(i);
    return xi == xm ? 0.0 : -kappa * (xi - xm) * ((xi - t) + (xm - t));
  };
  double top = -HUGE_VAL;
  for (index_t i = 0; i < len; ++i) top = std::max(top, score(i));
  double total = 0;
  // score(i) is evaluated again below, and a compiler may contract it into FMAs differently
  // there (-O3): with scores near 1e30, that rounding alone exceeds top by 1e14. Clamping at
  // 0 keeps every weight <= 1 and the total >= 1.
  const auto weight = [&](index_t i) { return std::exp(std::min(0.0, score(i) - top)); };
  for (index_t i = 0; i < len; ++i) total += weight(i);
  for (index_t i = 0; i < len; ++i) output(i, weight(i) / total);
}

/// How prefetch_row asks for lines: to read soon, to read later (into L2), to write.
enum class fetch : std::uint8_t { read, read_later, write };

/// Asks for the cache lines of a row of n elements at `stride` (a hint: no effect on results).
/// Lines that non-temporal stores will write are never asked for: that would read them.
template <class T>
ATTNKIT_ALWAYS_INLINE void prefetch_row(const T* row, index_t stride, index_t n, fetch kind) {
#if defined(__GNUC__) || defined(__clang__)
  const index_t bytes = static_cast<index_t>(sizeof(T)) * std::max<index_t>(1, stride < 0 ? -stride : stride);  // stride 0: one element
  const index_t step = std::max<index_t>(1, 64 / bytes);
  for (index_t i = 0; i < n; i += step) {
    if (kind == fetch::write)
      __builtin_prefetch(row + i * stride, 1, 3);
    else if (kind == fetch::read_later)
      __builtin_prefetch(row + i * stride, 0, 2);
    else
      __builtin_prefetch(row + i * stride, 0, 3);
  }
#else
  (void)row, (void)stride, (void)n, (void)kind;
#endif
}
/// Rows ahead of the one computed whose lines are requested (dim axis), and tokens ahead
/// (seq axis, pass 1).
inline constexpr index_t prefetch_rows = 4, prefetch_tokens = 16;

/// Outputs of at least this many bytes are written with non-temporal stores where the ISA
/// has them: they will not be read from cache soon, and such stores skip reading each line
/// before writing it (x86's write-allocate), a third of a copy's traffic.
inline std::size_t stream_bytes() { return 16 * l2_cache_bytes(); }

/// Stores v at p: non-temporally when `stream` and p is aligned to the vector (x86: SSE2,
/// AVX, AVX-512), else a plain store (every other ISA, NEON included).
template <class Arch>
ATTNKIT_ALWAYS_INLINE void store_out(simd::vec<Arch> v, float* p, bool stream) {
  constexpr std::size_t bytes = sizeof(float) * simd::vec<Arch>::size;
  if (stream && reinterpret_cast<std::uintptr_t>(p) % bytes == 0) {
#if defined(__AVX512F__)
    if constexpr (bytes == 64) return _mm512_stream_ps(p, v);
#endif
#if defined(__AVX__)
    if constexpr (bytes == 32) return _mm256_stream_ps(p, v);
#endif
#if defined(__SSE2__)
    if constexpr (bytes == 16) return _mm_stream_ps(p, v);
#endif
  }
  v.store_unaligned(p);
}

/// Orders this thread's non-temporal stores before whatever it does next (the executor's
/// hand-over of finished work).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

template <class Arch>
struct kernels {
  using V = simd::vec<Arch>;
  using M = xsimd::batch_bool<float, Arch>;
  static constexpr index_t W = static_cast<index_t>(V::size);
  static_assert(W <= block_lanes && block_lanes % W == 0, "a seq block is a whole number of vectors");
  /// Vectors per seq block.
  static constexpr index_t NV = block_lanes / W;

  /// Lanes [0, count) true.
  static M first_lanes(index_t count) {
    alignas(64) static constexpr float lane_index[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return V::load_aligned(lane_index) < V(static_cast<float>(count));
  }

  // NaN need not propagate through min and max: the sum routes such slices to double.
  ATTNKIT_ALWAYS_INLINE static V lower(V a, V b) { return xsimd::min(a, b); }
  ATTNKIT_ALWAYS_INLINE static V higher(V a, V b) { return xsimd::max(a, b); }

  /// exp2 of the log2 weight relative to the anchor, u (q - p u) with u = (x - anchor) * scale
  /// (as x * scale - anchor * scale: both products are exact).
  ATTNKIT_ALWAYS_INLINE static V weight(V x, V anchor_scaled, V scale, V p, V q) {
    const V u = xsimd::fms(x, scale, anchor_scaled);
    return simd::exp2<Arch>(u * xsimd::fnma(p, u, q));
  }

  /// f(x vector, offset, count) for every vector of x[0, len): count == W except in the tail,
  /// whose missing lanes repeat its first element (a value of the chunk, neutral for min and
  /// max; sums mask it).
  template <class F>
  ATTNKIT_ALWAYS_INLINE static void sweep(const float* x, index_t len, F&& f) {
    index_t i = 0;
    for (; i + W <= len; i += W) f(V::load_unaligned(x + i), i, W);
    if (i < len) {
      alignas(64) float tail[W];
      const index_t rem = len - i;
      for (index_t l = 0; l < W; ++l) tail[l] = x[i + (l < rem ? l : 0)];
      f(V::load_aligned(tail), i, rem);
    }
  }

  /// Stores the first count lanes of y at dst.
  ATTNKIT_ALWAYS_INLINE static void store_first(V y, index_t count, float* dst) {
    if (count == W) {
      y.store_unaligned(dst);
      return;
    }
    alignas(64) float tmp[W];
    y.store_aligned(tmp);
    for (index_t l = 0; l < count; ++l) dst[l] = tmp[l];
  }

  /// Smallest and largest lane, as a tree (4 steps deep with 16 lanes, not 15).
  template <bool Largest>
  static float reduce(V v) {
    alignas(64) float a[W];
    v.store_aligned(a);
    for (index_t half = W / 2; half >= 1; half /= 2)
      for (index_t l = 0; l < half; ++l) a[l] = Largest ? std::max(a[l], a[l + half]) : std::min(a[l], a[l + half]);
    return a[0];
  }
  /// In-register transpose of W x W floats: t[i] (row i) becomes column i. AVX-512 and AVX
  /// use the 16 x 16 and 8 x 8 transposes of simd/transpose.hpp; 4-lane ISAs (SSE2, NEON)
  /// xsimd's zips, which are whole-register there; anything else a scalar loop.
  ATTNKIT_ALWAYS_INLINE static void transpose(V* t) {
#if defined(__AVX512F__)
    if constexpr (W == 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = t[i];
      simd::transpose16(r);
      for (int i = 0; i < 16; ++i) t[i] = r[i];
      return;
    }
#endif
#if defined(__AVX__)
    if constexpr (W == 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = t[i];
      simd::transpose8(r);
      for (int i = 0; i < 8; ++i) t[i] = r[i];
      return;
    }
#endif
    if constexpr (W == 4 && Arch::alignment() == 16) {
      using D2 = xsimd::batch<double, Arch>;
      const V a = xsimd::zip_lo(t[0], t[1]), b = xsimd::zip_hi(t[0], t[1]);  // a0 b0 a1 b1 | a2 b2 a3 b3
      const V c = xsimd::zip_lo(t[2], t[3]), d = xsimd::zip_hi(t[2], t[3]);
      const auto pairs = [](V x) { return xsimd::bitwise_cast<D2>(x); };
      t[0] = xsimd::bitwise_cast<V>(xsimd::zip_lo(pairs(a), pairs(c)));
      t[1] = xsimd::bitwise_cast<V>(xsimd::zip_hi(pairs(a), pairs(c)));
      t[2] = xsimd::bitwise_cast<V>(xsimd::zip_lo(pairs(b), pairs(d)));
      t[3] = xsimd::bitwise_cast<V>(xsimd::zip_hi(pairs(b), pairs(d)));
    } else {
      alignas(64) float m[W][W];
      for (index_t i = 0; i < W; ++i) t[i].store_aligned(m[i]);
      for (index_t i = 0; i < W; ++i) {
        alignas(64) float col[W];
        for (index_t k = 0; k < W; ++k) col[k] = m[k][i];
        t[i] = V::load_aligned(col);
      }
    }
  }

  /// xp[d * 16 + l] = rows[l][d] for d < n, l < 16 (lanes = rows, as the seq kernel reads).
  static void rows_to_lanes(const float* const* rows, index_t n, float* xp) {
    index_t d0 = 0;
    for (; d0 + W <= n; d0 += W)
      for (index_t g = 0; g < NV; ++g) {
        V t[W];
        for (index_t i = 0; i < W; ++i) t[i] = V::load_unaligned(rows[g * W + i] + d0);
        transpose(t);
        for (index_t k = 0; k < W; ++k) t[k].store_aligned(xp + (d0 + k) * block_lanes + g * W);
      }
    for (; d0 < n; ++d0)
      for (index_t l = 0; l < block_lanes; ++l) xp[d0 * block_lanes + l] = rows[l][d0];
  }

  /// rows[l][d] = yp[d * 16 + l] for d < n, l < count: the inverse of rows_to_lanes.
  static void lanes_to_rows(const float* yp, index_t n, index_t count, float* const* rows, bool stream) {
    index_t d0 = 0;
    for (; d0 + W <= n; d0 += W)
      for (index_t g = 0; g * W < count; ++g) {
        V t[W];
        for (index_t k = 0; k < W; ++k) t[k] = V::load_aligned(yp + (d0 + k) * block_lanes + g * W);
        transpose(t);
        for (index_t i = 0; i < W && g * W + i < count; ++i) store_out<Arch>(t[i], rows[g * W + i] + d0, stream);
      }
    for (; d0 < n; ++d0)
      for (index_t l = 0; l < count; ++l) rows[l][d0] = yp[d0 * block_lanes + l];
  }

  // ---------------------------------------------------------------------------------------
  // Axis dim: one chunk x[0, len) of contiguous floats; y[0, len) receives out (it may be
  // the out row); e is scratch of len floats.

  /// Pass 3: e = the weights over the anchor's; returns their sum.
  static double exp_pass(const float* x, index_t len, const slice_plan& sp, float* e) {
    const V anchor_scaled(sp.anchor_scaled), scale(sp.scale), p(sp.p), q(sp.q);
    V part(0.f);
    double total = 0;
    index_t terms = 0;
    sweep(x, len, [&](V xv, index_t at, index_t count) ATTNKIT_INLINE_LAMBDA {
      V ev = weight(xv, anchor_scaled, scale, p, q);
      if (count != W) ev = xsimd::select(first_lanes(count), ev, V(0.f));
      store_first(ev, count, e + at);
      part += ev;
      if (++terms == flush) total += static_cast<double>(xsimd::hadd(part)), part = V(0.f), terms = 0;
    });
    return total + static_cast<double>(xsimd::hadd(part));
  }

  static void dim_chunk(const float* x, const folded& f, const settings& st, float* e, float* y, bool stream) {
    const index_t len = f.len;
    // Pass 1: sum, min, max.
    V part(0.f), lo(x[0]), hi(x[0]);
    double sum = 0;
    index_t terms = 0;
    sweep(x, len, [&](V xv, index_t, index_t count) ATTNKIT_INLINE_LAMBDA {
      part += count == W ? xv : xsimd::select(first_lanes(count), xv, V(0.f));
      lo = lower(lo, xv);
      hi = higher(hi, xv);
      if (++terms == flush) sum += static_cast<double>(xsimd::hadd(part)), part = V(0.f), terms = 0;
    });
    sum += static_cast<double>(xsimd::hadd(part));
    slice_plan sp = plan_slice(sum, reduce<false>(lo), reduce<true>(hi), f);

    double total = 0;
    if (sp.how == route::fast) {
      // Pass 2: moments about mean1, in scaled units.
      const V mean1(sp.mean1), scale(sp.scale);
      V s1(0.f), s2(0.f);
      double sum1 = 0, sum2 = 0;
      terms = 0;
      sweep(x, len, [&](V xv, index_t, index_t count) ATTNKIT_INLINE_LAMBDA {
        V v = (xv - mean1) * scale;
        if (count != W) v = xsimd::select(first_lanes(count), v, V(0.f));
        s1 += v;
        s2 = xsimd::fma(v, v, s2);
        if (++terms == flush) {
          sum1 += static_cast<double>(xsimd::hadd(s1)), sum2 += static_cast<double>(xsimd::hadd(s2));
          s1 = V(0.f), s2 = V(0.f), terms = 0;
        }
      });
      sum1 += static_cast<double>(xsimd::hadd(s1)), sum2 += static_cast<double>(xsimd::hadd(s2));
      set_moments(sp, sum1, sum2, f, st);
      set_anchor(sp, f);
      // Pass 3: the weights.
      if (sp.how == route::fast) total = exp_pass(x, len, sp, e);
      check_total(sp, total);
    }
    if (sp.how == route::exact) {
      exact_slice(f, st, [&](index_t i) { return x[i]; }, [&](index_t i, float v) { y[i] = v; });
      return;
    }

    // Pass 4: out = x * w (+ x); a uniform chunk has w = 1 / len.
    const bool uniform = sp.how == route::uniform;
    const V inv(static_cast<float>(uniform ? f.inv_len : 1.0 / total));
    index_t i = 0;
    const auto write = [&](V xv, V ev, index_t count) ATTNKIT_INLINE_LAMBDA {
      const V w = uniform ? inv : ev * inv, out = st.residual ? xsimd::fma(xv, w, xv) : xv * w;
      if (count == W)
        store_out<Arch>(out, y + i, stream);
      else
        store_first(out, count, y + i);
    };
    for (; i + W <= len; i += W) write(V::load_unaligned(x + i), uniform ? V(0.f) : V::load_unaligned(e + i), W);
    if (i < len) {
      alignas(64) float xt[W] = {}, et[W] = {};
      for (index_t l = 0; l < len - i; ++l) xt[l] = x[i + l], et[l] = uniform ? 0.f : e[i + l];
      write(V::load_aligned(xt), V::load_aligned(et), len - i);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Axis seq: a block of 16 features over the tokens [0, len) of one chunk. src.token(t, tmp)
  // gives the 16 floats of token t (in place, or converted into tmp); sink.write(t, y) takes
  // 16 outputs of token t, sink.put(t, lane, y) one; lanes at or past `width` are padding.
  // Pass 1 packs the tokens into xp (len * 16 floats): the later passes read contiguous
  // memory, not one line every token stride (a power of two in the usual layouts, which
  // reaches only a fraction of the cache sets). e is scratch of len * 16 floats.

  /// Adds the lanes of part[0][0, NV) + part[1][0, NV) to total[0, 16) and clears both.
  ATTNKIT_ALWAYS_INLINE static void add_lanes(V (*part)[NV], double* total) {
    alignas(64) float lanes[block_lanes];
    for (index_t j = 0; j < NV; ++j) {
      (part[0][j] + part[1][j]).store_aligned(lanes + j * W);
      part[0][j] = part[1][j] = V(0.f);
    }
    for (index_t l = 0; l < block_lanes; ++l) total[l] += static_cast<double>(lanes[l]);
  }

  /// Calls f(t, k) for t in [0, len), k = t % 2 choosing one of two accumulator sets (two
  /// chains of additions, not one: a sum's latency no longer paces the loop), four tokens a
  /// loop turn; done() after every `flush` tokens and at the end.
  template <class F, class Done>
  ATTNKIT_ALWAYS_INLINE static void over_tokens(index_t len, F&& f, Done&& done) {
    static_assert(flush % 4 == 0, "flush blocks are whole loop turns");
    for (index_t t0 = 0; t0 < len; t0 += flush) {
      const index_t t1 = std::min(len, t0 + flush);
      index_t t = t0;
      for (; t + 4 <= t1; t += 4) f(t, 0), f(t + 1, 1), f(t + 2, 0), f(t + 3, 1);
      for (; t < t1; ++t) f(t, t & 1);
      done();
    }
  }

  template <class Source, class Sink>
  static void seq_block(const Source& src, Sink& sink, index_t width, const folded& f, const settings& st, float* xp,
                        float* e) {
    const index_t len = f.len;
    alignas(64) float lane_a[block_lanes], lane_b[block_lanes];
    slice_plan sp[block_lanes];
    const auto at = [&](index_t t, index_t j) ATTNKIT_INLINE_LAMBDA { return V::load_aligned(xp + t * block_lanes + j * W); };

    // Pass 1: pack; sum, min, max per lane.
    V part[2][NV], lo[NV], hi[NV];
    double sum[block_lanes] = {};
    {
      const float* x0 = src.token(0, xp);
      for (index_t j = 0; j < NV; ++j) part[0][j] = part[1][j] = V(0.f), lo[j] = hi[j] = V::load_unaligned(x0 + j * W);
    }
    over_tokens(
        len,
        [&](index_t t, index_t k) ATTNKIT_INLINE_LAMBDA {
          src.prefetch(t + prefetch_tokens);
          const float* xt = src.token(t, xp + t * block_lanes);
          ATTNKIT_UNROLL for (index_t j = 0; j < NV; ++j) {
            const V xv = V::load_unaligned(xt + j * W);
            if (xt != xp + t * block_lanes) xv.store_aligned(xp + t * block_lanes + j * W);
            part[k][j] += xv;
            lo[j] = lower(lo[j], xv);
            hi[j] = higher(hi[j], xv);
          }
        },
        [&] { add_lanes(part, sum); });
    for (index_t j = 0; j < NV; ++j) lo[j].store_aligned(lane_a + j * W), hi[j].store_aligned(lane_b + j * W);
    for (index_t l = 0; l < block_lanes; ++l) sp[l] = plan_slice(sum[l], lane_a[l], lane_b[l], f);

    // Pass 2: moments about mean1 in scaled units, per lane.
    // v = (x - mean1) * scale as x * scale - mean1 * scale: both products are exact.
    alignas(64) float mean1_scaled[block_lanes], scale[block_lanes];
    for (index_t l = 0; l < block_lanes; ++l) mean1_scaled[l] = sp[l].mean1 * sp[l].scale, scale[l] = sp[l].scale;
    double sum1[block_lanes] = {}, sum2[block_lanes] = {};
    V s1[2][NV], s2[2][NV];
    for (index_t j = 0; j < NV; ++j) s1[0][j] = s1[1][j] = s2[0][j] = s2[1][j] = V(0.f);
    over_tokens(
        len,
        [&](index_t t, index_t k) ATTNKIT_INLINE_LAMBDA {
          ATTNKIT_UNROLL for (index_t j = 0; j < NV; ++j) {
            const V v = xsimd::fms(at(t, j), V::load_aligned(scale + j * W), V::load_aligned(mean1_scaled + j * W));
            s1[k][j] += v;
            s2[k][j] = xsimd::fma(v, v, s2[k][j]);
          }
        },
        [&] { add_lanes(s1, sum1), add_lanes(s2, sum2); });
    for (index_t l = 0; l < block_lanes; ++l) {
      set_moments(sp[l], sum1[l], sum2[l], f, st);
      set_anchor(sp[l], f);
    }

    // Pass 3: the weights relative to the anchors, stored in e, and their sums. Uniform and
    // exact lanes run with every coefficient 0 (every weight 1); exact lanes are redone at
    // the end.
    alignas(64) float anchor_scaled[block_lanes], p[block_lanes], q[block_lanes];
    for (index_t l = 0; l < block_lanes; ++l) {
      const bool fast = sp[l].how == route::fast;
      anchor_scaled[l] = fast ? sp[l].anchor_scaled : 0.f, scale[l] = fast ? sp[l].scale : 0.f;
      p[l] = fast ? sp[l].p : 0.f, q[l] = fast ? sp[l].q : 0.f;
    }
    double total[block_lanes] = {};
    over_tokens(
        len,
        [&](index_t t, index_t k) ATTNKIT_INLINE_LAMBDA {
          ATTNKIT_UNROLL for (index_t j = 0; j < NV; ++j) {
            const V ev = weight(at(t, j), V::load_aligned(anchor_scaled + j * W), V::load_aligned(scale + j * W),
                                V::load_aligned(p + j * W), V::load_aligned(q + j * W));
            ev.store_aligned(e + t * block_lanes + j * W);
            part[k][j] += ev;
          }
        },
        [&] { add_lanes(part, total); });
    for (index_t l = 0; l < block_lanes; ++l) check_total(sp[l], total[l]);

    // Pass 4: out = x * w (+ x).
    alignas(64) float inv[block_lanes];
    for (index_t l = 0; l < block_lanes; ++l)
      inv[l] = sp[l].how == route::exact ? 0.f : static_cast<float>(1.0 / total[l]);  // exact lanes: 0 until redone
    for (index_t t = 0; t < len; ++t) {
      sink.prefetch(t + prefetch_tokens, len);
      V y[NV];
      ATTNKIT_UNROLL for (index_t j = 0; j < NV; ++j) {
        const V xv = at(t, j), w = V::load_aligned(e + t * block_lanes + j * W) * V::load_aligned(inv + j * W);
        y[j] = st.residual ? xsimd::fma(xv, w, xv) : xv * w;
      }
      sink.write(t, y);
    }

    for (index_t l = 0; l < width; ++l)
      if (sp[l].how == route::exact)
        exact_slice(
            f, st, [&](index_t t) { return xp[t * block_lanes + l]; }, [&](index_t t, float v) { sink.put(t, l, v); });
  }
};

/// Tokens of a seq block read in place: float features at unit stride, 16 of them.
struct token_in_place {
  const float* base;
  index_t token_stride;
  index_t fetch_len;  // tokens [0, fetch_len) are asked for ahead; 0 when already in cache
  const float* token(index_t t, float*) const { return base + t * token_stride; }
  void prefetch(index_t t) const {
    if (t < fetch_len) prefetch_row(base + t * token_stride, 1, block_lanes, fetch::read);
  }
};

/// Tokens of a seq block converted to float: 16-bit or strided features, or fewer than 16
/// (the rest zero).
template <class T>
struct token_converted {
  const T* base;
  index_t token_stride, dim_stride, width;
  const float* token(index_t t, float* tmp) const {
    simd::to_float_row(base + t * token_stride, dim_stride, width, tmp);
    for (index_t l = width; l < block_lanes; ++l) tmp[l] = 0.f;
    return tmp;
  }
  void prefetch(index_t) const {}
};

/// Outputs of a seq block: in place for float out at unit stride and a full block, else
/// converted lane by lane.
template <class Arch, class O>
struct token_sink {
  using V = simd::vec<Arch>;
  static constexpr index_t W = static_cast<index_t>(V::size);
  O* base;
  index_t token_stride, dim_stride, width;
  bool in_place, stream;

  void write(index_t t, const V* y) const {
    O* row = base + t * token_stride;
    if constexpr (std::is_same_v<O, float>) {
      if (in_place) {
        for (index_t j = 0; j < block_lanes / W; ++j) store_out<Arch>(y[j], row + j * W, stream);
        return;
      }
    }
    alignas(64) float tmp[block_lanes];
    for (index_t j = 0; j < block_lanes / W; ++j) y[j].store_aligned(tmp + j * W);
    for (index_t l = 0; l < width; ++l) row[l * dim_stride] = from_float<O>(tmp[l]);
  }
  void put(index_t t, index_t lane, float v) const { base[t * token_stride + lane * dim_stride] = from_float<O>(v); }
  void prefetch(index_t t, index_t len) const {
    if (t < len && !stream) prefetch_row(base + t * token_stride, dim_stride, width, fetch::write);
  }
};

/// Outputs of the seq kernel run on rows packed into lanes (axis dim): token t of the kernel
/// is feature t, written to yp[t * 16 + lane].
template <class Arch>
struct lane_sink {
  using V = simd::vec<Arch>;
  static constexpr index_t W = static_cast<index_t>(V::size);
  float* yp;
  void write(index_t t, const V* y) const {
    for (index_t j = 0; j < block_lanes / W; ++j) y[j].store_aligned(yp + t * block_lanes + j * W);
  }
  void put(index_t t, index_t lane, float v) const { yp[t * block_lanes + lane] = v; }
  void prefetch(index_t, index_t) const {}
};

/// Tokens per work item on the dim axis: about 16K elements (whole groups of 16 when packed).
inline index_t rows_per_item(index_t dv, bool packed) {
  const index_t rows = std::max<index_t>(1, (index_t(1) << 14) / dv);
  return packed ? (rows + block_lanes - 1) / block_lanes * block_lanes : rows;
}

/// Up to this many features, the dim axis packs 16 tokens into lanes and runs the seq kernel
/// on them (no horizontal reductions, the per-slice scalars of 16 slices at once); longer
/// rows run one by one (dim_chunk), where those costs are small against the row.
inline constexpr index_t max_packed_dim = 256;

/// GAAM on the CPU (arguments validated): out = GAAM(v) (+ v); q and k are not read.
template <class Q, class K, class Vt, class O>
void run(const gaussian_adaptive& p, const tensor_view<const Q>&, const tensor_view<const K>&,
         const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  using in_t = std::remove_const_t<Vt>;
  using K_ = kernels<simd::wide_arch>;
  if (v.empty()) return;
  const index_t B = v.batch(), H = v.heads(), N = v.seq(), D = v.dim();
  const bool along_dim = p.axis == gaussian_adaptive::axis_kind::dim;
  const index_t n = along_dim ? D : N, size = n / p.chunks;
  const std::vector<folded> chunk = fold(p, n);
  const settings st{static_cast<double>(p.eps), p.residual};
  const bool in_place = std::is_same_v<in_t, float> && v.stride(dim_axis) == 1;
  const bool out_in_place = std::is_same_v<O, float> && out.stride(dim_axis) == 1;
  const bool stream = out_in_place && static_cast<std::size_t>(v.size()) * sizeof(O) >= stream_bytes();

  if (along_dim && D <= max_packed_dim) {
    const index_t rows = B * H * N, per_item = rows_per_item(D, true);
    parallel_for((rows + per_item - 1) / per_item, o.threads, [&](index_t item) {
      scratch_lease lease;
      const index_t plane = D * block_lanes;  // floats of 16 rows
      float* const xp = static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(5 * plane)));
      float* const e = xp + plane;
      float* const yp = e + plane;
      float* const in_rows = yp + plane;   // converted input rows (16-bit or strided)
      float* const out_rows = in_rows + plane;  // outputs before conversion (16-bit or strided)
      const Vt* in[block_lanes];
      O* dst[block_lanes];
      const float* x[block_lanes];
      float* y[block_lanes];
      const index_t first_row = item * per_item, last = std::min(rows, first_row + per_item);
      // The (batch, head, token) of a row, stepped one row at a time (no divisions per row).
      struct position {
        index_t b, h, s;
      };
      const auto step = [&](position& at) {
        if (++at.s < N) return;
        at.s = 0;
        if (++at.h == H) at.h = 0, ++at.b;
      };
      position at{first_row / N / H, first_row / N % H, first_row % N};
      for (index_t r0 = first_row; r0 < last; r0 += block_lanes) {
        const index_t count = std::min(block_lanes, last - r0);
        for (index_t l = 0; l < count; ++l, step(at)) in[l] = v.row(at.b, at.h, at.s), dst[l] = out.row(at.b, at.h, at.s);
        for (index_t l = count; l < block_lanes; ++l) in[l] = in[count - 1], dst[l] = dst[count - 1];  // padding lanes
        // The next group's rows, asked for once this group's are in registers: rows read in
        // transposed order (16 rows a tile) are no stream the hardware prefetcher follows.
        const Vt* next[block_lanes];
        const index_t next_count = std::min(block_lanes, last - r0 - count);
        position ahead = at;
        for (index_t l = 0; l < next_count; ++l, step(ahead)) next[l] = v.row(ahead.b, ahead.h, ahead.s);
        for (index_t l = 0; l < block_lanes; ++l) {
          if constexpr (std::is_same_v<in_t, float>) {
            if (in_place) x[l] = in[l];
          }
          if (!in_place) {
            simd::to_float_row(in[l], v.stride(dim_axis), D, in_rows + l * D);
            x[l] = in_rows + l * D;
          }
          y[l] = out_rows + l * D;
          if constexpr (std::is_same_v<O, float>) {
            if (out_in_place) y[l] = dst[l];
          }
        }
        K_::rows_to_lanes(x, D, xp);
        for (index_t l = 0; l < next_count; ++l) prefetch_row(next[l], v.stride(dim_axis), D, fetch::read_later);
        for (index_t c = 0; c < p.chunks; ++c) {
          const folded& f = chunk[static_cast<std::size_t>(c)];
          const index_t first = c * size * block_lanes;
          lane_sink<simd::wide_arch> part{yp + first};
          K_::seq_block(token_in_place{xp + first, block_lanes, 0}, part, count, f, st, xp + first, e);
        }
        K_::lanes_to_rows(yp, D, count, y, stream);
        if (!out_in_place)
          for (index_t l = 0; l < count; ++l)
            for (index_t d = 0; d < D; ++d) dst[l][d * out.stride(dim_axis)] = from_float<O>(y[l][d]);
      }
      if (stream) stream_fence();
    });
    return;
  }

  if (along_dim) {
    const index_t rows = B * H * N, per_item = rows_per_item(D, false);
    parallel_for((rows + per_item - 1) / per_item, o.threads, [&](index_t item) {
      scratch_lease lease;
      const index_t stride = (D + 15) / 16 * 16;
      float* const xrow = static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(3 * stride)));
      float* const e = xrow + stride;
      float* const yrow = e + stride;
      for (index_t r = item * per_item; r < std::min(rows, (item + 1) * per_item); ++r) {
        const index_t s = r % N, h = r / N % H, b = r / N / H;
        if (r + prefetch_rows < rows) {
          const index_t ahead = r + prefetch_rows, sa = ahead % N, ha = ahead / N % H, ba = ahead / N / H;
          prefetch_row(v.row(ba, ha, sa), v.stride(dim_axis), D, fetch::read);
          if (!stream) prefetch_row(out.row(ba, ha, sa), out.stride(dim_axis), D, fetch::write);
        }
        const float* x = xrow;
        if constexpr (std::is_same_v<in_t, float>) {
          if (in_place) x = v.row(b, h, s);
        }
        if (!in_place) simd::to_float_row(v.row(b, h, s), v.stride(dim_axis), D, xrow);
        float* y = yrow;
        if constexpr (std::is_same_v<O, float>) {
          if (out_in_place) y = out.row(b, h, s);
        }
        for (index_t c = 0; c < p.chunks; ++c)
          K_::dim_chunk(x + c * size, chunk[static_cast<std::size_t>(c)], st, e + c * size, y + c * size,
                        stream && y != yrow);
        if (!out_in_place)
          for (index_t d = 0; d < D; ++d) out(b, h, s, d) = from_float<O>(yrow[d]);
      }
      if (stream) stream_fence();
    });
    return;
  }

  const index_t blocks = (D + block_lanes - 1) / block_lanes;
  parallel_for(B * H * p.chunks * blocks, o.threads, [&](index_t item) {
    const index_t fb = item % blocks, c = item / blocks % p.chunks, h = item / blocks / p.chunks % H,
                  b = item / blocks / p.chunks / H;
    const index_t f0 = fb * block_lanes, width = std::min(block_lanes, D - f0), first = c * size;
    const folded& f = chunk[static_cast<std::size_t>(c)];
    scratch_lease lease;
    float* const xp = static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(2 * f.len * block_lanes)));
    float* const e = xp + f.len * block_lanes;
    token_sink<simd::wide_arch, O> sink{out.row(b, h, first) + f0 * out.stride(dim_axis), out.stride(seq_axis),
                                        out.stride(dim_axis), width, out_in_place && width == block_lanes, stream};
    if constexpr (std::is_same_v<in_t, float>) {
      if (in_place && width == block_lanes) {
        K_::seq_block(token_in_place{v.row(b, h, first) + f0, v.stride(seq_axis), f.len}, sink, width, f, st, xp, e);
        if (stream) stream_fence();
        return;
      }
    }
    K_::seq_block(token_converted<Vt>{v.row(b, h, first) + f0 * v.stride(dim_axis), v.stride(seq_axis),
                                      v.stride(dim_axis), width},
                  sink, width, f, st, xp, e);
    if (stream) stream_fence();
  });
}

}  // namespace attnkit::detail::feature_gaussian
