/// \file
/// The toeplitz-fft engine on the CPU: kernelized attention with relative-position weights
/// c_r = exp(b_r) in O(m Dv L log L) per (batch, head), L = smooth size >= Nq + Nk - 1
/// (spec/kernelized_rpe_fft.md "Fast algorithm"; Luo et al. 2021, Algorithm 1).
///
/// Every sum over keys is a Toeplitz product y_t = sum_j g[(t - j) mod L] x_j over a column x
/// of Nk values: the columns phi(k)_l v_e (the numerators' D1) and phi(k)_l (the
/// denominators' D2). The FFT (simd/fft.hpp) convolves one sequence per vector lane, and each
/// complex lane carries two real columns (real and imaginary parts: g is real, so they never
/// mix), so one transform does 2W columns: for the numerators, one feature l and 2W value
/// columns; for the denominators, 2W features. A column block's forward transform is shared by
/// the query heads of a GQA group (their biases differ, so each multiplies by its own
/// spectrum and transforms back), and each query's row of the result is read out at once into
/// sum_l phi(q)_l D1[l][e] (a vector of 2W value columns) or sum_l phi(q)_l D2[l].
///
/// Stabilisers (spec "Numerical-stability notes"): the bias maximum of each head, the FAVOR+
/// key shift (maximum exponent over the (batch, kv head) slice) and each query's row maximum
/// are common factors of num and den, carried as one log offset per query; eps is scaled by
/// it, so the result is the unshifted formula's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/arena.hpp"
#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/arch.hpp"
#include "../simd/convert.hpp"
#include "../simd/fft.hpp"
#include "../simd/transpose.hpp"
#include "../variants/kernelized_rpe.hpp"
#include "features.hpp"

namespace attnkit::detail::toeplitz_fft {

using arch = simd::wide_arch;
using V = simd::vec<arch>;
inline constexpr index_t W = static_cast<index_t>(V::size);
/// Real columns per transform: W in the real parts, W in the imaginary parts.
inline constexpr index_t columns = 2 * W;
inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// The relative-position weights of one query head: g[u mod L] = exp(b_{-u} - top) for u in
/// [-(Nq - 1), Nk - 1] (0 for u < 0 when causal), and top, the largest bias used (-inf when
/// every weight is 0).
struct toeplitz_kernel {
  std::vector<float> g;
  float top = neg_inf;
};

/// bias(r) gives b_r for r = j - (i + Nk - Nq) in [-(Nk - 1), Nq - 1].
template <class Bias>
toeplitz_kernel make_kernel(index_t nq, index_t nk, bool causal, index_t length, Bias&& bias) {
  toeplitz_kernel kernel;
  kernel.g.assign(static_cast<std::size_t>(length), 0.f);
  const index_t r_last = causal ? 0 : nq - 1;
  for (index_t r = -(nk - 1); r <= r_last; ++r) kernel.top = std::max(kernel.top, bias(r));
  if (kernel.top == neg_inf) return kernel;
  for (index_t r = -(nk - 1); r <= r_last; ++r) {
    const index_t u = -r;  // g[u] weighs x_j into y_t for t - j = u
    kernel.g[static_cast<std::size_t>(u < 0 ? u + length : u)] = std::exp(bias(r) - kernel.top);
  }
  return kernel;
}

/// A transform of 2W real columns and its buffers, in the calling worker's scratch.
struct column_block {
  const simd::lane_fft<arch>* fft;
  float *x, *y, *work;

  /// Floats of scratch: x, the FFT's work, and y when the transform must be kept (with_y).
  static index_t floats(const simd::lane_fft<arch>& fft, bool with_y) {
    return (with_y ? 4 : 2) * fft.size() * W + static_cast<index_t>((fft.work_floats() + 15) / 16 * 16);
  }
  column_block(const simd::lane_fft<arch>& f, float* base, bool with_y)
      : fft(&f), x(base), y(with_y ? base + 2 * f.size() * W : nullptr),
        work(base + (with_y ? 4 : 2) * f.size() * W) {}

  /// x <- columns: column c < 2W of row t is value(t, c) for t < rows, 0 after; then its
  /// forward transform.
  template <class Row>
  void load_and_transform(index_t rows, Row&& row) {
    for (index_t t = 0; t < rows; ++t) row(t, x + 2 * t * W);
    std::fill(x + 2 * rows * W, x + 2 * fft->size() * W, 0.f);
    fft->forward_scrambled(x, work);
  }
  /// The Toeplitz product of the loaded columns with a kernel spectrum, rows in natural order
  /// (row t's 2W columns at result + 2 t W): in y, or over the transform in x when no other
  /// spectrum will need it (half the memory the transforms stream through).
  const float* convolve(const float* spectrum, bool keep_transform) {
    float* result = keep_transform ? y : x;
    fft->multiply_inverse(x, spectrum, result, work);
    return result;
  }
};

/// The spectrum of a toeplitz_kernel for multiply_inverse.
inline std::vector<float> spectrum_of(const simd::lane_fft<arch>& fft, const toeplitz_kernel& kernel) {
  std::vector<float> spectrum(static_cast<std::size_t>(2 * fft.size()));
  scratch_lease lease;
  float* work = static_cast<float*>(lease.reserve(sizeof(float) * fft.work_floats()));
  fft.kernel_spectrum(kernel.g.data(), nullptr, spectrum.data(), work);
  return spectrum;
}

/// Sizes of one call.
struct dims {
  index_t batch, q_heads, kv_heads, group, nq, nk, d, dv, m, value_blocks, feature_blocks;
};

/// Kernelized attention with relative positions on the CPU (arguments validated).
template <class FeatureMap, class Q, class K, class Vt, class O>
void run(const kernelized_rpe<FeatureMap>& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
         const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  dims dm{};
  dm.batch = q.batch(), dm.q_heads = q.heads(), dm.kv_heads = k.heads(), dm.group = dm.q_heads / dm.kv_heads;
  dm.nq = q.seq(), dm.nk = k.seq(), dm.d = q.dim(), dm.dv = v.dim();
  if (dm.batch == 0 || dm.nq == 0) return;
  if (dm.nk == 0) {  // no key: zeros, lse -inf
    for (index_t b = 0; b < dm.batch; ++b)
      for (index_t h = 0; h < dm.q_heads; ++h)
        for (index_t i = 0; i < dm.nq; ++i) {
          for (index_t e = 0; e < dm.dv; ++e) out(b, h, i, e) = from_float<O>(0.f);
          if (o.lse) o.lse[(b * dm.q_heads + h) * dm.nq + i] = neg_inf;
        }
    return;
  }
  const float scale = p.scale != 0 ? p.scale : p.normalize_qk ? 1.f : 1.f / std::sqrt(static_cast<float>(dm.d));
  const features::binding<FeatureMap> map(p.feature_map, scale, dm.d, p.normalize_qk);
  dm.m = map.features();
  dm.value_blocks = (dm.dv + columns - 1) / columns;
  dm.feature_blocks = (dm.m + columns - 1) / columns;
  const index_t length = simd::smooth_size(dm.nq + dm.nk - 1);
  const simd::lane_fft<arch> fft(length);

  // The weights of every query head, sampled once (bias_fn is a user callable, checked here
  // before anything is written).
  std::vector<toeplitz_kernel> kernels;
  std::vector<std::vector<float>> spectra;
  for (index_t h = 0; h < dm.q_heads; ++h) {
    const index_t offsets = dm.nq + dm.nk - 1;
    const auto bias = [&](index_t r) -> float {
      if (p.bias) return p.bias[h * offsets + r + dm.nk - 1];
      if (!p.bias_fn) return 0.f;
      const float b = p.bias_fn(h, r);
      require(!std::isnan(b) && b != std::numeric_limits<float>::infinity(), "kernelized_rpe: bias_fn(", h, ", ", r,
              ") = ", b, ", expected a finite value or -inf");
      return b;
    };
    kernels.push_back(make_kernel(dm.nq, dm.nk, p.causal, length, bias));
    spectra.push_back(spectrum_of(fft, kernels.back()));
  }

  const index_t m = dm.m, nq = dm.nq, nk = dm.nk, group = dm.group, value_pad = dm.value_blocks * columns;
  const index_t feature_pad = dm.feature_blocks * columns;
  std::vector<float> kf(static_cast<std::size_t>(nk * feature_pad)), kft(static_cast<std::size_t>(m * nk)),
      values(static_cast<std::size_t>(nk * value_pad)), qf(static_cast<std::size_t>(group * nq * feature_pad)),
      qft(static_cast<std::size_t>(group * m * nq)), qoff(static_cast<std::size_t>(group * nq)),
      num(static_cast<std::size_t>(group * nq * value_pad)),
      den_part(static_cast<std::size_t>(dm.feature_blocks * group * nq));
  constexpr index_t rows_per_item = 256;
  const index_t key_items = (nk + rows_per_item - 1) / rows_per_item, query_items = (nq + rows_per_item - 1) / rows_per_item;
  const index_t feature_scratch = std::max<index_t>(1, features::binding<FeatureMap>::scratch_floats(rows_per_item, dm.d));
  const index_t block_floats = column_block::floats(fft, group > 1);
  std::vector<float> key_max(static_cast<std::size_t>(key_items));

  const std::vector<int> value_exps = features::value_exponents(v, o.threads);
  for (index_t b = 0; b < dm.batch; ++b)
    for (index_t hk = 0; hk < dm.kv_heads; ++hk) {
      const int value_exp = value_exps[static_cast<std::size_t>(b * dm.kv_heads + hk)];
      // Key features (rows of feature_pad, zero past m) with one shift for the whole slice,
      // their transpose, and the values as float rows of value_pad.
      parallel_for(key_items, o.threads, [&](index_t item) {
        scratch_lease lease;
        float* scratch = static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(feature_scratch)));
        const index_t t0 = item * rows_per_item, n = std::min(rows_per_item, nk - t0);
        map.keys(k, b, hk, t0, n, kf.data() + t0 * feature_pad, feature_pad, key_max[static_cast<std::size_t>(item)], scratch);
        for (index_t t = t0; t < t0 + n; ++t) {
          std::fill(kf.data() + t * feature_pad + m, kf.data() + (t + 1) * feature_pad, 0.f);
          float* row = values.data() + t * value_pad;
          simd::to_float_row(v.row(b, hk, t), v.stride(dim_axis), dm.dv, row);
          if (value_exp != 0)
            for (index_t c = 0; c < dm.dv; ++c) row[c] = std::ldexp(row[c], -value_exp);
          std::fill(row + dm.dv, row + value_pad, 0.f);
        }
      });
      float key_shift = neg_inf;
      for (const float x : key_max) key_shift = std::max(key_shift, x);
      parallel_for(key_items, o.threads, [&](index_t item) {
        const index_t t0 = item * rows_per_item, n = std::min(rows_per_item, nk - t0);
        map.finish_keys(kf.data() + t0 * feature_pad, n, feature_pad, key_shift);
        for (index_t l = 0; l < m; ++l)
          for (index_t t = t0; t < t0 + n; ++t) kft[static_cast<std::size_t>(l * nk + t)] = kf[static_cast<std::size_t>(t * feature_pad + l)];
      });
      // Query features of the group's heads, as rows and transposed.
      parallel_for(group * query_items, o.threads, [&](index_t item) {
        scratch_lease lease;
        float* scratch = static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(feature_scratch)));
        const index_t g = item / query_items, i0 = item % query_items * rows_per_item, n = std::min(rows_per_item, nq - i0);
        float* rows = qf.data() + (g * nq + i0) * feature_pad;
        map.queries(q, b, hk * group + g, i0, n, rows, feature_pad, qoff.data() + g * nq + i0, scratch);
        for (index_t i = 0; i < n; ++i) std::fill(rows + i * feature_pad + m, rows + (i + 1) * feature_pad, 0.f);
        for (index_t l = 0; l < m; ++l)
          for (index_t i = 0; i < n; ++i) qft[static_cast<std::size_t>((g * m + l) * nq + i0 + i)] = rows[i * feature_pad + l];
      });

      // The Toeplitz products: value blocks (one feature at a time, 2W value columns, read out
      // into num) first, the costly ones; then feature blocks (2W features, into den).
      // Query i reads row i + Nk - Nq (mod L: the rows before 0 wrap around, spec "Wrap-around").
      const auto row_of = [&](index_t i) { return i + nk - nq < 0 ? i + nk - nq + length : i + nk - nq; };
      parallel_for(dm.value_blocks + dm.feature_blocks, o.threads, [&](index_t item) {
        scratch_lease lease;
        column_block cb(fft, static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(block_floats))), group > 1);
        if (item < dm.value_blocks) {
          const index_t e0 = item * columns;
          std::fill_n(num.data() + item * group * nq * columns, group * nq * columns, 0.f);
          for (index_t l = 0; l < m; ++l) {
            const float* kl = kft.data() + l * nk;
            cb.load_and_transform(nk, [&](index_t t, float* dst) {
              const V w(kl[t]);
              for (index_t c = 0; c < columns; c += W) (w * V::load_unaligned(values.data() + t * value_pad + e0 + c)).store_aligned(dst + c);
            });
            for (index_t g = 0; g < group; ++g) {
              const float* result = cb.convolve(spectra[static_cast<std::size_t>(hk * group + g)].data(), g + 1 < group);
              const float* ql = qft.data() + (g * m + l) * nq;
              float* block_acc = num.data() + (item * group + g) * nq * columns;
              for (index_t i = 0; i < nq; ++i) {
                const V w(ql[i]);
                float* acc = block_acc + i * columns;
                const float* y = result + 2 * row_of(i) * W;
                for (index_t c = 0; c < columns; c += W)
                  xsimd::fma(w, V::load_aligned(y + c), V::load_unaligned(acc + c)).store_unaligned(acc + c);
              }
            }
          }
          return;
        }
        const index_t f = item - dm.value_blocks, l0 = f * columns;
        cb.load_and_transform(nk, [&](index_t t, float* dst) {
          for (index_t c = 0; c < columns; c += W) V::load_unaligned(kf.data() + t * feature_pad + l0 + c).store_aligned(dst + c);
        });
        for (index_t g = 0; g < group; ++g) {
          const float* result = cb.convolve(spectra[static_cast<std::size_t>(hk * group + g)].data(), g + 1 < group);
          float* den = den_part.data() + (f * group + g) * nq;
          for (index_t i = 0; i < nq; ++i) {
            const float* y = result + 2 * row_of(i) * W;
            const float* qrow = qf.data() + (g * nq + i) * feature_pad + l0;
            V acc(0.f);
            for (index_t c = 0; c < columns; c += W) acc = xsimd::fma(V::load_unaligned(qrow + c), V::load_aligned(y + c), acc);
            den[i] = xsimd::hadd(acc);
          }
        }
      });

      // out = num / (den + eps), den summed over feature blocks in order; the offsets (bias
      // top, key shift, query row shift) come back into eps and the lse.
      parallel_for(group * query_items, o.threads, [&](index_t item) {
        const index_t g = item / query_items, hq = hk * group + g, i0 = item % query_items * rows_per_item,
                      n = std::min(rows_per_item, nq - i0);
        const float top = kernels[static_cast<std::size_t>(hq)].top;
        const features::power_of_two unit(value_exp);
        for (index_t i = i0; i < i0 + n; ++i) {
          float den = 0;
          for (index_t f = 0; f < dm.feature_blocks; ++f) den += den_part[static_cast<std::size_t>((f * group + g) * nq + i)];
          den = std::max(den, 0.f);  // FFT round-off can take a tiny sum below 0
          const float offset = qoff[static_cast<std::size_t>(g * nq + i)] + key_shift + top;
          // Causal rows before the first key see none; round-off must not make one up.
          const bool empty = den == 0 || top == neg_inf || key_shift == neg_inf || (p.causal && i + nk - nq < 0);
          const float total = den + p.eps * std::exp(-offset);
          const float inv = !empty && total > 0 ? 1.f / total : 0.f;
          O* row = out.row(b, hq, i);
          for (index_t e = 0; e < dm.dv; ++e) {
            const float acc = num[static_cast<std::size_t>(((e / columns * group + g) * nq + i) * columns + e % columns)];
            // a subnormal total: divide (its reciprocal is inf)
            row[e * out.stride(dim_axis)] = from_float<O>(empty ? 0.f : unit(std::isfinite(inv) ? acc * inv : acc / total));
          }
          if (o.lse) o.lse[(b * dm.q_heads + hq) * nq + i] = empty ? neg_inf : std::log(den) + offset;
        }
      });
    }
}

}  // namespace attnkit::detail::toeplitz_fft

namespace attnkit {

/// The Toeplitz product at the heart of kernelized_rpe, by the FFT path of its engine:
/// y[i][c] = sum_j exp(b_r) x[j][c] with r = j - (i + nk - nq) (no term for r > 0 when causal),
/// for i < nq, c < cols. bias: nq + nk - 1 floats, [r + nk - 1] = b_r (null: all 0; -inf
/// allowed); x: nk rows of cols floats; y: nq rows of cols floats.
inline void toeplitz_multiply(const float* bias, index_t nq, index_t nk, bool causal, const float* x, index_t cols,
                              float* y, int threads = 0) {
  using namespace detail;
  using namespace detail::toeplitz_fft;
  require(nq >= 0 && nq <= max_sequence && nk >= 0 && nk <= max_sequence, "toeplitz_multiply: nq = ", nq, ", nk = ", nk,
          ", expected in [0, 2^31 - 1]");
  require(cols >= 0 && cols <= max_head_dim * max_head_dim, "toeplitz_multiply: cols = ", cols, ", expected in [0, 2^32]");
  require(threads >= 0, "toeplitz_multiply: threads = ", threads, ", expected >= 0");
  if (nq == 0 || cols == 0) return;
  checked_mul(nq, cols, "toeplitz_multiply: nq * cols");
  checked_mul(nk, cols, "toeplitz_multiply: nk * cols");
  require(y != nullptr, "toeplitz_multiply: y is null");
  require(nk == 0 || x != nullptr, "toeplitz_multiply: x is null with nk = ", nk);
  if (bias != nullptr)
    for (index_t t = 0; t < nq + nk - 1; ++t)
      require(!std::isnan(bias[t]) && bias[t] != std::numeric_limits<float>::infinity(), "toeplitz_multiply: bias[", t,
              "] = ", bias[t], ", expected a finite value or -inf");
  if (nk == 0) {
    std::fill(y, y + nq * cols, 0.f);
    return;
  }
  const index_t length = simd::smooth_size(nq + nk - 1);
  const simd::lane_fft<arch> fft(length);
  const toeplitz_kernel kernel =
      make_kernel(nq, nk, causal, length, [&](index_t r) { return bias ? bias[r + nk - 1] : 0.f; });
  const std::vector<float> spectrum = spectrum_of(fft, kernel);
  const float factor = kernel.top == neg_inf ? 0.f : std::exp(kernel.top);
  const index_t block_floats = column_block::floats(fft, false);
  parallel_for((cols + columns - 1) / columns, threads, [&](index_t item) {
    scratch_lease lease;
    column_block cb(fft, static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(block_floats))), false);
    const index_t c0 = item * columns, width = std::min(columns, cols - c0);
    cb.load_and_transform(nk, [&](index_t t, float* dst) {
      std::copy(x + t * cols + c0, x + t * cols + c0 + width, dst);
      std::fill(dst + width, dst + columns, 0.f);
    });
    const float* result = cb.convolve(spectrum.data(), false);
    for (index_t i = 0; i < nq; ++i) {
      const index_t row = i + nk - nq < 0 ? i + nk - nq + length : i + nk - nq;
      for (index_t c = 0; c < width; ++c) y[i * cols + c0 + c] = factor * result[2 * row * W + c];
    }
  });
}

}  // namespace attnkit
