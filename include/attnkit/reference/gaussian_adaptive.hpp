/// \file
/// Float64 reference of Gaussian adaptive attention, GAAM (Ioannides, Chadha, Elkins 2024,
/// arXiv 2401.11143), written from spec/probabilistic.md part B ("What the code computes",
/// "Definition"): per chunk of a slice, mu = mean(x), var = variance(x) + eps, and for every
/// element the log of the product of G Gaussians,
///   log w_i = sum_g [ -y_ig^2 / (2 c_g^2) - log(2 pi c_g^2) / 2 ],  y_ig = (x_i - (mu + delta_g)) / sqrt(var),
/// normalised over the chunk in log space (the softmax form), out = x * w (+ x). One loop per
/// Gaussian and element; it shares no code with the fast path (engines/feature_gaussian.hpp),
/// which folds the Gaussians into one quadratic. A chunk of variance 0 (constant, eps = 0)
/// gets uniform weights, as the policy header says; options::lse is not written.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "../core/config.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/gaussian_adaptive.hpp"

namespace attnkit::reference {
namespace detail {

/// The GAAM weights of one chunk x[0, n) into w (float64), for chunk parameters delta[g] and
/// c[g] (g < G; null: zeros and ones).
inline void gaussian_chunk_weights(const std::vector<double>& x, const float* delta, const float* c, index_t G,
                                   double eps, bool unbiased, std::vector<double>& w) {
  const std::size_t n = x.size();
  double mu = 0;
  for (const double xi : x) mu += xi;
  mu /= static_cast<double>(n);
  double m2 = 0;
  for (const double xi : x) m2 += (xi - mu) * (xi - mu);
  const double var = m2 / static_cast<double>(unbiased ? n - 1 : n) + eps;
  w.assign(n, 1.0 / static_cast<double>(n));
  if (var == 0) return;  // constant chunk with eps = 0: every element alike, uniform weights
  const double pi = 3.14159265358979323846;
  const double sd = std::sqrt(var);
  double top = -HUGE_VAL;
  for (std::size_t i = 0; i < n; ++i) {
    double log_product = 0;
    for (index_t g = 0; g < G; ++g) {
      const double offset = delta ? static_cast<double>(delta[g]) : 0.0;
      const double scale = c ? static_cast<double>(c[g]) : 1.0;
      const double y = (x[i] - (mu + offset)) / sd;
      log_product += -y * y / (2 * scale * scale) - 0.5 * std::log(2 * pi * scale * scale);
    }
    w[i] = log_product;
    top = std::max(top, log_product);
  }
  double total = 0;
  for (double& wi : w) total += (wi = std::exp(wi - top));
  for (double& wi : w) wi /= total;
}

/// GAAM of v into out (shapes and fields validated): every (batch, head, token) row of
/// features (axis dim) or (batch, head, feature) column of tokens (axis seq) is cut into
/// chunks of floor(n / chunks), the last taking the rest; q and k are not read.
template <class Q, class K, class V, class O>
void run(const attnkit::gaussian_adaptive& p, const tensor_view<const Q>&, const tensor_view<const K>&,
         const tensor_view<const V>& v, const tensor_view<O>& out, const options&) {
  using value = std::remove_const_t<O>;
  const bool along_dim = p.axis == attnkit::gaussian_adaptive::axis_kind::dim;
  const index_t n = along_dim ? v.dim() : v.seq();
  const index_t across = along_dim ? v.seq() : v.dim();  // slices per (batch, head)
  if (v.empty()) return;
  const index_t size = n / p.chunks;
  std::vector<double> x, w;
  for (index_t b = 0; b < v.batch(); ++b)
    for (index_t h = 0; h < v.heads(); ++h)
      for (index_t s = 0; s < across; ++s)
        for (index_t c = 0; c < p.chunks; ++c) {
          const index_t first = c * size, last = c + 1 == p.chunks ? n : first + size;
          // element i of the chunk: v(b, h, s, first + i) along dim, v(b, h, first + i, s) along seq
          const auto at = [&](index_t i) -> auto& {
            return along_dim ? v(b, h, s, first + i) : v(b, h, first + i, s);
          };
          const auto out_at = [&](index_t i) -> auto& {
            return along_dim ? out(b, h, s, first + i) : out(b, h, first + i, s);
          };
          x.resize(static_cast<std::size_t>(last - first));
          for (index_t i = 0; i < last - first; ++i)
            x[static_cast<std::size_t>(i)] = static_cast<double>(attnkit::detail::to_float(at(i)));
          const index_t params = c * p.gaussians;
          gaussian_chunk_weights(x, p.mean_offsets ? p.mean_offsets + params : nullptr,
                                 p.var_scales ? p.var_scales + params : nullptr, p.gaussians,
                                 static_cast<double>(p.eps), p.unbiased, w);
          for (index_t i = 0; i < last - first; ++i) {
            const double xi = x[static_cast<std::size_t>(i)];
            const double y = xi * w[static_cast<std::size_t>(i)] + (p.residual ? xi : 0.0);
            out_at(i) = attnkit::detail::from_float<value>(static_cast<float>(y));
          }
        }
}

}  // namespace detail
}  // namespace attnkit::reference
