/// \file
/// Float64 references of kernelized attention with relative positional encoding, written
/// from spec/kernelized_rpe_fft.md: the O(Nq Nk m (1 + Dv)) pairwise sum ("Reference
/// algorithm"), and direct_toeplitz, the O(Nq Nk) Toeplitz product that checks the FFT
/// separately from the feature map. They share no code with the fast path (the toeplitz-fft
/// engine, attnkit::favor_projection); the feature maps are those of reference/linear.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/feature_maps.hpp"
#include "../variants/kernelized_rpe.hpp"
#include "linear.hpp"

namespace attnkit::reference {

/// y[i*cols + c] = sum_{j < nk} c_r x[j*cols + c] for i < nq, r = j - (i + nk - nq), where
/// c_r = exp(bias[r + nk - 1]) (bias holds nq + nk - 1 floats; null means all 0) and c_r = 0
/// for r > 0 when causal. O(nq nk cols) in double: the paper's D1/D2 without the FFT.
inline void direct_toeplitz(const float* bias, index_t nq, index_t nk, bool causal, const float* x, index_t cols,
                            double* y) {
  std::fill(y, y + nq * cols, 0.0);
  if (nk == 0) return;
  std::vector<double> c(static_cast<std::size_t>(nq + nk - 1));
  for (index_t t = 0; t < nq + nk - 1; ++t) {
    const bool masked = causal && t > nk - 1;  // r = t - (nk - 1) > 0
    c[static_cast<std::size_t>(t)] = masked ? 0.0 : bias ? std::exp(static_cast<double>(bias[t])) : 1.0;
  }
  for (index_t i = 0; i < nq; ++i) {
    double* yi = y + i * cols;
    for (index_t j = 0; j < nk; ++j) {
      const double cr = c[static_cast<std::size_t>(j - i + nq - 1)];  // r + nk - 1
      if (cr == 0) continue;
      const float* xj = x + j * cols;
      for (index_t e = 0; e < cols; ++e) yi[e] += cr * static_cast<double>(xj[e]);
    }
  }
}

namespace detail {

/// b_r of every query head, [Hq x (nq + nk - 1)] doubles at [h][r + nk - 1]: from p.bias, or
/// from p.bias_fn called once per (h, r) the call can use (r <= 0 when causal; the rest stay
/// 0, never read), or all 0. Throws attnkit::error, before anything is written, when bias_fn
/// returns NaN or +inf (the values p.bias may not hold either).
template <class FeatureMap>
std::vector<double> sample_bias(const attnkit::kernelized_rpe<FeatureMap>& p, index_t heads, index_t nq, index_t nk) {
  const index_t offsets = nq + nk - 1;
  std::vector<double> bias(static_cast<std::size_t>(heads * offsets), 0.0);
  for (index_t h = 0; h < heads; ++h)
    for (index_t r = -(nk - 1); r <= (p.causal ? 0 : nq - 1); ++r) {
      double& b = bias[static_cast<std::size_t>(h * offsets + r + nk - 1)];
      if (p.bias) {
        b = static_cast<double>(p.bias[h * offsets + r + nk - 1]);
      } else if (p.bias_fn) {
        const float value = p.bias_fn(h, r);
        attnkit::detail::require(!std::isnan(value) && value != std::numeric_limits<float>::infinity(),
                                 "kernelized_rpe: bias_fn(", h, ", ", r, ") = ", value,
                                 ", expected a finite value or -inf");
        b = static_cast<double>(value);
      }
    }
  return bias;
}

/// Kernelized RPE attention in float64: weight exp(b_r) phi(q_i) . phi(k_j) over keys j (r <= 0
/// when causal), with q and k rows L2-normalised first when normalize_qk. Each row subtracts
/// the largest bias M it uses before exponentiating, so num and den are the true sums times
/// exp(-M): eps becomes eps exp(-M) and lse gets M back. Shapes are assumed checked.
template <class FeatureMap, class Q, class K, class V, class O>
void run(const attnkit::kernelized_rpe<FeatureMap>& p, tensor_view<const Q> q, tensor_view<const K> k,
         tensor_view<const V> v, tensor_view<O> out, const options& o) {
  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Nk = k.seq(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  const index_t group = Hq / Hkv;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  // The policy's scale replaces the feature map's; only FAVOR+ reads it.
  const double scale = p.scale != 0         ? static_cast<double>(p.scale)
                       : p.normalize_qk ? 1.0
                                        : 1.0 / std::sqrt(static_cast<double>(D));
  const auto phi = make_phi(p.feature_map, D, scale);
  const index_t m = phi.features();
  const double eps = static_cast<double>(p.eps);
  const index_t offsets = Nq + Nk - 1;
  const std::vector<double> bias = Nk > 0 ? sample_bias(p, Hq, Nq, Nk) : std::vector<double>();

  std::vector<double> qf(static_cast<std::size_t>(m)), num(static_cast<std::size_t>(Dv));
  for (index_t b = 0; b < B; ++b)
    for (index_t hk = 0; hk < Hkv; ++hk) {
      const std::vector<double> kf = key_features(phi, rows_f64(k, b, hk, p.normalize_qk), Nk, D);
      const std::vector<double> vx = rows_f64(v, b, hk, false);
      for (index_t h = hk * group; h < (hk + 1) * group; ++h) {
        const std::vector<double> qx = rows_f64(q, b, h, p.normalize_qk);
        for (index_t i = 0; i < Nq; ++i) {
          const index_t keys = std::min(Nk, p.causal ? i + Nk - Nq + 1 : Nk);  // j < keys are visible
          const double* bi = keys > 0 ? bias.data() + h * offsets + Nq - 1 - i : nullptr;  // bi[j] = b_{r(i,j)}
          double top = neg_inf;
          for (index_t j = 0; j < keys; ++j) top = std::max(top, bi[j]);
          std::fill(num.begin(), num.end(), 0.0);
          double den = 0;
          if (top != neg_inf) {  // else no key, or every visible bias is -inf: weight 0
            phi.query(qx.data() + i * D, qf.data());
            for (index_t j = 0; j < keys; ++j) {
              const double c = std::exp(bi[j] - top);
              if (c == 0) continue;
              const double* kj = kf.data() + j * m;
              double a = 0;
              for (index_t r = 0; r < m; ++r) a += qf[static_cast<std::size_t>(r)] * kj[r];
              a *= c;
              const double* vj = vx.data() + j * Dv;
              for (index_t e = 0; e < Dv; ++e) num[static_cast<std::size_t>(e)] += a * vj[e];
              den += a;
            }
          }
          // eps 0 stays 0: exp(-top) may be +inf.
          const double scaled_eps = eps == 0 ? 0.0 : eps * std::exp(-top);
          write_row(out, o, b, h, i, num, den, scaled_eps, top);
        }
      }
    }
}

}  // namespace detail
}  // namespace attnkit::reference
