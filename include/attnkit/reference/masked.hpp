/// \file
/// Float64 masked-softmax attention: the loop every static-pattern reference shares. A variant
/// says which keys a query row attends to (either as a predicate keep(b, h, i, j) tested on
/// every key, or by listing the row's keys directly) and, optionally, how each scaled score
/// is transformed; this file does the rest exactly like reference/softmax.hpp. It shares no
/// code with the flash engine or with any variant's plan.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/config.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"

namespace attnkit::reference::detail {

/// The softmax scale of a policy: `scale`, or 1/sqrt(D) when it is 0.
inline double resolve_scale(float scale, index_t head_dim) {
  return scale != 0 ? static_cast<double>(scale) : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

/// "No score transform": the scaled score is used as it is.
struct keep_score {
  double operator()(double s, index_t, index_t, index_t, index_t) const { return s; }
};

/// out[b, h, i, :] = sum_{j in keys} softmax_j(s_ij) v[b, h / (Hq / Hkv), j, :] in float64, where
/// `keys_of(b, h, i, keys)` appends the keys of row i (query head h) to `keys` (each at most
/// once, any order) and s_ij = score(scale * q.k, b, h, i, j). Rows with no key (or whose every
/// logit is -inf) get zeros and lse = -inf; a NaN in q, k or v propagates. lse is the natural
/// log, stored at o.lse[(b * Hq + h) * Nq + i]. Shapes are assumed checked.
template <class KeysOf, class Score, class Q, class K, class V, class O>
void run_rows(float policy_scale, KeysOf&& keys_of, Score&& score, tensor_view<const Q> q, tensor_view<const K> k,
              tensor_view<const V> v, tensor_view<O> out, const options& o) {
  using attnkit::detail::from_float;
  using attnkit::detail::to_float;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  const index_t group = Hq / Hkv;
  const double scale = resolve_scale(policy_scale, D);

  std::vector<index_t> keys;    // keys of the current row
  std::vector<double> logits;   // their final logits
  std::vector<double> acc(static_cast<std::size_t>(Dv));

  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < Nq; ++i) {
        keys.clear();
        keys_of(b, h, i, keys);
        logits.clear();
        double m = neg_inf;
        for (const index_t j : keys) {
          double dot = 0;
          for (index_t d = 0; d < D; ++d)
            dot += static_cast<double>(to_float(q(b, h, i, d))) * static_cast<double>(to_float(k(b, hk, j, d)));
          const double s = static_cast<double>(score(scale * dot, b, h, i, j));
          logits.push_back(s);
          if (s > m) m = s;
        }

        double lse = neg_inf;
        std::fill(acc.begin(), acc.end(), 0.0);
        if (!keys.empty()) {
          // m stays -inf only if every logit is -inf (or NaN): never compute -inf - (-inf).
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
          } else {       // a NaN in q, k or v propagates (it is not masked)
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

/// run_rows over the keys j in 0..Nk-1 for which keep(b, h, i, j) holds (the O(Nq * Nk) form).
template <class Keep, class Score, class Q, class K, class V, class O>
void run_masked(float policy_scale, Keep&& keep, Score&& score, tensor_view<const Q> q, tensor_view<const K> k,
                tensor_view<const V> v, tensor_view<O> out, const options& o) {
  const index_t Nk = k.seq();
  run_rows(
      policy_scale,
      [&](index_t b, index_t h, index_t i, std::vector<index_t>& keys) {
        for (index_t j = 0; j < Nk; ++j)
          if (keep(b, h, i, j)) keys.push_back(j);
      },
      score, q, k, v, out, o);
}

}  // namespace attnkit::reference::detail
