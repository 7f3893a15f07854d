/// \file
/// Float64 reference of affine-scaled attention, written line by line from
/// spec/extra_variants.md section 2 (Bae et al., NAVER Cloud, "Affine-Scaled Attention: Towards
/// Flexible and Stable Transformer Attention", arXiv 2602.23057): softmax weights P_ij of
/// softmax.md, moved per query row to W_ij = alpha_i P_ij + beta_i over the visible keys. It
/// shares no code with the flash engine or with the policy's helpers in
/// variants/affine_scaled.hpp.
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
#include "../variants/affine_scaled.hpp"

namespace attnkit::reference::detail {

/// softmax.md step 4 for an affine-scaled policy, written out on its own: is key j visible to
/// query row i? `lq`, `lk` are the batch entry's valid query/key counts.
inline bool affine_scaled_visible(const attnkit::affine_scaled& p, index_t i, index_t j, index_t lq, index_t lk) {
  if (i >= lq || j >= lk) return false;  // padding
  const index_t pos = i + (lk - lq);     // bottom-right aligned position of row i
  if (p.causal && j > pos) return false;
  if (p.window_left >= 0 && j < attnkit::detail::saturating_add(pos, -p.window_left)) return false;
  if (p.window_right >= 0 && j > attnkit::detail::saturating_add(pos, p.window_right)) return false;
  return true;
}

/// out_i = alpha_i (P V)_i + beta_i sum_{visible j} v_j in float64, with P the softmax weights
/// of s_ij = scale * q.k, soft-capped, ALiBi-biased (softmax.md steps 1-5) over the row's n_i
/// visible keys; alpha_i = alpha[(b * Hq + h) * Nq + i] (1 when null); beta_i = beta[...] in mode
/// given, (1 - alpha_i) / n_i in mode complement, 0 in mode zero. lse is the softmax part's
/// (log sum_j exp s_ij). A row with no visible key gets zeros and lse = -inf. Shapes and fields
/// are assumed checked.
template <class Q, class K, class V, class O>
void run(const attnkit::affine_scaled& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  using attnkit::detail::from_float;
  using attnkit::detail::to_float;
  using mode = attnkit::affine_scaled::beta_mode_kind;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Nk = k.seq(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  const index_t group = Hq / Hkv;
  const double scale = p.scale != 0 ? static_cast<double>(p.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  const double cap = static_cast<double>(p.softcap);

  std::vector<index_t> keys;                               // visible keys of the current row
  std::vector<double> logits;                              // their final logits
  std::vector<double> pv(static_cast<std::size_t>(Dv));    // (P V)_i
  std::vector<double> vsum(static_cast<std::size_t>(Dv));  // sum of the visible values

  for (index_t b = 0; b < B; ++b) {
    const index_t lq = p.query_lens ? static_cast<index_t>(p.query_lens[b]) : Nq;
    const index_t lk = p.key_lens ? static_cast<index_t>(p.key_lens[b]) : Nk;
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      const double slope = p.alibi_slopes ? static_cast<double>(p.alibi_slopes[h]) : 0.0;
      for (index_t i = 0; i < Nq; ++i) {
        const index_t row = (b * Hq + h) * Nq + i;
        const index_t pos = i + lk - lq;
        keys.clear();
        logits.clear();
        double m = neg_inf;
        for (index_t j = 0; j < Nk; ++j) {
          if (!affine_scaled_visible(p, i, j, lq, lk)) continue;
          double dot = 0;
          for (index_t d = 0; d < D; ++d)
            dot += static_cast<double>(to_float(q(b, h, i, d))) * static_cast<double>(to_float(k(b, hk, j, d)));
          double s = scale * dot;
          if (cap > 0) s = cap * std::tanh(s / cap);
          if (p.alibi_slopes) s -= slope * static_cast<double>(pos > j ? pos - j : j - pos);
          keys.push_back(j);
          logits.push_back(s);
          if (s > m) m = s;
        }

        double lse = neg_inf;
        std::fill(pv.begin(), pv.end(), 0.0);
        std::fill(vsum.begin(), vsum.end(), 0.0);
        if (!keys.empty()) {
          const double m_use = (m == neg_inf) ? 0.0 : m;  // never -inf - (-inf)
          double l = 0;
          for (std::size_t t = 0; t < keys.size(); ++t) {
            const double w = std::exp(logits[t] - m_use);
            l += w;
            for (index_t d = 0; d < Dv; ++d) {
              const double x = static_cast<double>(to_float(v(b, hk, keys[t], d)));
              pv[static_cast<std::size_t>(d)] += w * x;
              vsum[static_cast<std::size_t>(d)] += x;
            }
          }
          const double n = static_cast<double>(keys.size());
          const double alpha = p.alpha ? static_cast<double>(p.alpha[row]) : 1.0;
          const double beta = p.beta_mode == mode::given        ? static_cast<double>(p.beta[row])
                              : p.beta_mode == mode::complement ? (1.0 - alpha) / n
                                                                : 0.0;
          if (l == 0) {  // every logit was -inf: nothing to attend to
            std::fill(pv.begin(), pv.end(), 0.0);
          } else {
            for (index_t d = 0; d < Dv; ++d) {
              const std::size_t e = static_cast<std::size_t>(d);
              pv[e] = alpha * (pv[e] / l);
              if (p.beta_mode != mode::zero) pv[e] += beta * vsum[e];  // zero: not even 0 * inf
            }
            lse = m_use + std::log(l);
          }
        }
        for (index_t d = 0; d < Dv; ++d)
          out(b, h, i, d) = from_float<std::remove_const_t<O>>(static_cast<float>(pv[static_cast<std::size_t>(d)]));
        if (o.lse) o.lse[row] = static_cast<float>(lse);
      }
    }
  }
}

}  // namespace attnkit::reference::detail
