/// \file
/// Float64 reference of softplus attention with length scaling (LSSA) and re-weighting
/// (LSSAR), written line by line from spec/extra_variants.md section 1 (Gao, Spratling,
/// Gionfrida, "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large
/// Language Models", arXiv 2501.13428). It takes the spec's two-pass form for every threshold
/// (normaliser Z first, then the re-weighting), in log space, and shares no code with the
/// flash engine or with the policy's helpers in variants/softplus.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/checked.hpp"
#include "../core/config.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/softplus.hpp"

namespace attnkit::reference::detail {

/// softmax.md step 4 for a softplus policy, written out on its own: is key j visible to query
/// row i? `lq`, `lk` are the batch entry's valid query/key counts.
inline bool softplus_visible(const attnkit::softplus& p, index_t i, index_t j, index_t lq, index_t lk) {
  if (i >= lq || j >= lk) return false;  // padding
  const index_t pos = i + (lk - lq);     // bottom-right aligned position of row i
  if (p.causal && j > pos) return false;
  if (p.window_left >= 0 && j < attnkit::detail::saturating_add(pos, -p.window_left)) return false;
  if (p.window_right >= 0 && j > attnkit::detail::saturating_add(pos, p.window_right)) return false;
  return true;
}

/// log(softplus(x)) = log(log(1 + e^x)) without forming softplus(x) where it underflows:
/// x + log1p(e^-x) for x >= 0; log1p(e^x) for x < 0; and x itself below -40, where
/// log1p(e^x) = e^x (1 - e^x / 2 + ...) and the correction e^x / 2 < 1e-17 is below double
/// precision relative to |x|.
inline double log_softplus(double x) {
  if (x >= 0) return std::log(x + std::log1p(std::exp(-x)));
  if (x >= -40) return std::log(std::log1p(std::exp(x)));
  return x;
}

/// For each row, over its visible keys j (n_i of them):
///   lambda_i = length_scale ? alpha log(max(n_i, min_len)) : 1
///   a_ij = softplus(lambda_i s_ij),  s_ij = scale q.k        (kept as log a_ij)
///   A_ij = a_ij / Z_i,  Z_i = sum_j a_ij                      (pass 1: log Z_i)
///   R_ij = max(0, n_i A_ij - threshold)^power                 (pass 2, kept as log R_ij)
///   out_i = sum_j R_ij v_j / sum_j R_ij;  a row whose sum of R is 0 (or with no key) is 0.
/// lse: threshold 0 reports the log-sum-exp of t_ij = power * log a_ij (= log sum_j a_ij^power,
/// the one-pass online softmax of the spec's fast algorithm); threshold > 0 reports
/// log sum_j R_ij (-inf when every R_ij is 0). Shapes and fields are assumed checked.
template <class Q, class K, class V, class O>
void run(const attnkit::softplus& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  using attnkit::detail::from_float;
  using attnkit::detail::to_float;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Nk = k.seq(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  const index_t group = Hq / Hkv;
  const double scale = p.scale != 0 ? static_cast<double>(p.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  const double power = static_cast<double>(p.power), tau = static_cast<double>(p.threshold);

  std::vector<index_t> keys;  // visible keys of the current row
  std::vector<double> log_a;  // log a_ij of those keys
  std::vector<double> log_r;  // log R_ij of those keys (-inf where R_ij = 0)
  std::vector<double> acc(static_cast<std::size_t>(Dv));

  for (index_t b = 0; b < B; ++b) {
    const index_t lq = p.query_lens ? static_cast<index_t>(p.query_lens[b]) : Nq;
    const index_t lk = p.key_lens ? static_cast<index_t>(p.key_lens[b]) : Nk;
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < Nq; ++i) {
        keys.clear();
        for (index_t j = 0; j < Nk; ++j)
          if (softplus_visible(p, i, j, lq, lk)) keys.push_back(j);
        const index_t n = static_cast<index_t>(keys.size());
        const double lambda =
            p.length_scale ? static_cast<double>(p.alpha) * std::log(static_cast<double>(std::max(n, p.min_len))) : 1.0;

        // Pass 1: log a_ij and log Z_i (log-sum-exp over the row's keys).
        log_a.clear();
        double m = neg_inf;
        for (const index_t j : keys) {
          double dot = 0;
          for (index_t d = 0; d < D; ++d)
            dot += static_cast<double>(to_float(q(b, h, i, d))) * static_cast<double>(to_float(k(b, hk, j, d)));
          log_a.push_back(log_softplus(lambda * (scale * dot)));
          if (!(log_a.back() <= m)) m = log_a.back();  // a NaN (from q or k) becomes m and propagates
        }
        double z = 0;
        for (const double la : log_a) z += std::exp(la - m);
        const double log_z = m + std::log(z);

        // Pass 2: log R_ij = power * log(n_i A_ij - threshold) where that is positive.
        log_r.clear();
        double mr = neg_inf;
        for (const double la : log_a) {
          const double log_nA = std::log(static_cast<double>(n)) + (la - log_z);
          double lr = neg_inf;
          if (tau == 0) {
            lr = power * log_nA;
          } else {
            const double r = std::exp(log_nA) - tau;
            if (!(r <= 0)) lr = power * std::log(r);  // NaN stays NaN
          }
          log_r.push_back(lr);
          if (!(lr <= mr)) mr = lr;
        }

        double lse = neg_inf;
        std::fill(acc.begin(), acc.end(), 0.0);
        if (mr != neg_inf) {  // some R_ij > 0; otherwise the row (or the key set) is empty
          double l = 0;
          for (std::size_t t = 0; t < keys.size(); ++t) {
            const double w = std::exp(log_r[t] - mr);
            l += w;
            for (index_t d = 0; d < Dv; ++d)
              acc[static_cast<std::size_t>(d)] += w * static_cast<double>(to_float(v(b, hk, keys[t], d)));
          }
          for (double& x : acc) x /= l;
          if (tau == 0) {  // log sum_j exp(power * log a_ij)
            const double mt = power * m;
            double lt = 0;
            for (const double la : log_a) lt += std::exp(power * la - mt);
            lse = mt + std::log(lt);
          } else {
            lse = mr + std::log(l);
          }
        }
        for (index_t d = 0; d < Dv; ++d)
          out(b, h, i, d) = from_float<std::remove_const_t<O>>(static_cast<float>(acc[static_cast<std::size_t>(d)]));
        if (o.lse) o.lse[(b * Hq + h) * Nq + i] = static_cast<float>(lse);
      }
    }
  }
}

}  // namespace attnkit::reference::detail
