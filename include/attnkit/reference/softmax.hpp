/// \file
/// Float64 reference of softmax attention, written line by line from spec/softmax.md
/// ("Reference algorithm"). It shares no code with the flash engine or with the policy's
/// own visibility helper, so that a mistake in either shows up as a disagreement in tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/config.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/softmax.hpp"

namespace attnkit::reference::detail {

/// Spec step 4, written out on its own: is key j visible to query row i of batch entry b?
/// `lq`, `lk` are the valid query/key counts of that batch entry.
inline bool softmax_visible(const attnkit::softmax& p, index_t i, index_t j, index_t lq, index_t lk) {
  if (i >= lq || j >= lk) return false;         // padding
  const index_t pos = i + (lk - lq);             // bottom-right aligned position of row i
  if (p.causal && j > pos) return false;
  // pos +- window saturates: a window wider than any sequence is unbounded.
  if (p.window_left >= 0 && j < attnkit::detail::saturating_add(pos, -p.window_left)) return false;
  if (p.window_right >= 0 && j > attnkit::detail::saturating_add(pos, p.window_right)) return false;
  return true;
}

/// out[b, h, i, :] = sum_j softmax_j(s_ij) v[b, h / (Hq / Hkv), j, :] in float64, with
/// s_ij = scale * q.k, then soft-cap, then ALiBi (-slope[h] * |p - j|), over visible keys only.
/// Rows with no visible key get zeros and lse = -inf. Shapes are assumed checked.
template <class Q, class K, class V, class O>
void run(const attnkit::softmax& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  using attnkit::detail::from_float;
  using attnkit::detail::to_float;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Nk = k.seq(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  const index_t group = Hq / Hkv;
  const double scale = p.scale != 0 ? static_cast<double>(p.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  const double cap = static_cast<double>(p.softcap);

  std::vector<index_t> keys;    // visible keys of the current row
  std::vector<double> logits;   // their final logits
  std::vector<double> acc(static_cast<std::size_t>(Dv));

  for (index_t b = 0; b < B; ++b) {
    const index_t lq = p.query_lens ? static_cast<index_t>(p.query_lens[b]) : Nq;
    const index_t lk = p.key_lens ? static_cast<index_t>(p.key_lens[b]) : Nk;
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      const double slope = p.alibi_slopes ? static_cast<double>(p.alibi_slopes[h]) : 0.0;
      for (index_t i = 0; i < Nq; ++i) {
        const index_t pos = i + lk - lq;
        keys.clear();
        logits.clear();
        double m = neg_inf;
        for (index_t j = 0; j < Nk; ++j) {
          if (!softmax_visible(p, i, j, lq, lk)) continue;
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
        std::fill(acc.begin(), acc.end(), 0.0);
        if (!keys.empty()) {
          // m can stay -inf only if every logit is -inf (not reachable with finite inputs);
          // mirror the spec's guard so that -inf - (-inf) never happens.
          const double m_use = (m == neg_inf) ? 0.0 : m;
          double l = 0;
          for (std::size_t t = 0; t < keys.size(); ++t) {
            const double w = std::exp(logits[t] - m_use);
            l += w;
            for (index_t d = 0; d < Dv; ++d)
              acc[static_cast<std::size_t>(d)] += w * static_cast<double>(to_float(v(b, hk, keys[t], d)));
          }
          if (l == 0) {  // every logit was -inf: nothing to attend to
            std::fill(acc.begin(), acc.end(), 0.0);
          } else {       // a NaN in q, k or v propagates (spec: NaN is not masked)
            for (double& a : acc) a /= l;
            lse = m_use + std::log(l);
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
