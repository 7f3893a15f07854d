/// \file
/// Float64 reference of probabilistic (existence-probability) attention, written line by line
/// from spec/probabilistic.md part A (Rozental, "Zonkey", arXiv 2601.21768; code
/// ARozental/Zonkey `ProbabilisticAttention`). It shares no code with the flash engine or with
/// the policy's helpers in variants/probabilistic.hpp, so that a mistake in either shows up as
/// a disagreement in tests.
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
#include "../variants/probabilistic.hpp"

namespace attnkit::reference::detail {

/// softmax.md step 4 for a probabilistic policy, written out on its own: is key j visible to
/// query row i (before the probabilities)? `lq`, `lk` are the batch entry's valid counts.
inline bool probabilistic_mask_keeps(const attnkit::probabilistic& p, index_t i, index_t j, index_t lq, index_t lk) {
  if (i >= lq || j >= lk) return false;  // padding
  const index_t pos = i + (lk - lq);     // bottom-right aligned position of row i
  if (p.causal && j > pos) return false;
  // pos +- window saturates: a window wider than any sequence is unbounded.
  if (p.window_left >= 0 && j < attnkit::detail::saturating_add(pos, -p.window_left)) return false;
  if (p.window_right >= 0 && j > attnkit::detail::saturating_add(pos, p.window_right)) return false;
  return true;
}

/// log p of one stored entry as the code computes it, log(max(p, 1e-20)); -inf exactly when
/// p == 0. A log_space entry is log p already (-inf = p 0) and gets the same clamp,
/// max(log p, log 1e-20), so that both encodings of one probability agree.
inline double probabilistic_log_prob(float stored, bool log_space) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const double x = static_cast<double>(stored);
  if (log_space) return x == neg_inf ? neg_inf : std::max(x, std::log(1e-20));
  return x == 0 ? neg_inf : std::log(std::max(x, 1e-20));
}

/// out[b, h, i, :] = sum_j softmax_j(s_ij) v[b, h / (Hq / Hkv), j, :] in float64, where
/// s_ij = scale * q.k, soft-capped, ALiBi-biased (softmax.md steps 1-3), plus
///   log p_j - log p_i  for j > i (raw indices)  in mode zonkey_ratio,
///   log p_j            for every key            in mode key_logprob,
/// over the keys visible under the softmax masks whose p_j != 0. A row with p_i == 0, or with
/// no visible key, gets zeros and lse = -inf. Shapes and fields are assumed checked.
template <class Q, class K, class V, class O>
void run(const attnkit::probabilistic& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
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
  const bool ratio = p.mode == attnkit::probabilistic::mode_kind::zonkey_ratio;
  // Self-attention: the queries' probabilities are the keys' (validation ensured Nq == Nk).
  const float* query_prob = p.query_prob ? p.query_prob : p.key_prob;

  std::vector<index_t> keys;   // visible keys of the current row
  std::vector<double> logits;  // their final logits
  std::vector<double> acc(static_cast<std::size_t>(Dv));

  for (index_t b = 0; b < B; ++b) {
    const index_t lq = p.query_lens ? static_cast<index_t>(p.query_lens[b]) : Nq;
    const index_t lk = p.key_lens ? static_cast<index_t>(p.key_lens[b]) : Nk;
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      const double slope = p.alibi_slopes ? static_cast<double>(p.alibi_slopes[h]) : 0.0;
      for (index_t i = 0; i < Nq; ++i) {
        const index_t pos = i + lk - lq;
        const double log_pi = probabilistic_log_prob(query_prob[b * Nq + i], p.log_space);
        keys.clear();
        logits.clear();
        double m = neg_inf;
        // p_i == 0: the query does not exist; its row is zeroed whatever its keys.
        for (index_t j = 0; j < Nk && log_pi != neg_inf; ++j) {
          if (!probabilistic_mask_keeps(p, i, j, lq, lk)) continue;
          const double log_pj = probabilistic_log_prob(p.key_prob[b * Nk + j], p.log_space);
          if (log_pj == neg_inf) continue;  // p_j == 0: the key is removed exactly
          double dot = 0;
          for (index_t d = 0; d < D; ++d)
            dot += static_cast<double>(to_float(q(b, h, i, d))) * static_cast<double>(to_float(k(b, hk, j, d)));
          double s = scale * dot;
          if (cap > 0) s = cap * std::tanh(s / cap);
          if (p.alibi_slopes) s -= slope * static_cast<double>(pos > j ? pos - j : j - pos);
          if (ratio && j > i) s += log_pj - log_pi;  // P(key j exists | query i exists)
          if (!ratio) s += log_pj;
          keys.push_back(j);
          logits.push_back(s);
          if (s > m) m = s;
        }

        double lse = neg_inf;
        std::fill(acc.begin(), acc.end(), 0.0);
        if (!keys.empty()) {
          const double m_use = (m == neg_inf) ? 0.0 : m;  // never -inf - (-inf)
          double l = 0;
          for (std::size_t t = 0; t < keys.size(); ++t) {
            const double w = std::exp(logits[t] - m_use);
            l += w;
            for (index_t d = 0; d < Dv; ++d)
              acc[static_cast<std::size_t>(d)] += w * static_cast<double>(to_float(v(b, hk, keys[t], d)));
          }
          if (l == 0) {
            std::fill(acc.begin(), acc.end(), 0.0);
          } else {  // a NaN in q, k or v propagates
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
