/// \file
/// Probabilistic attention with existence probabilities (Zonkey; Rozental 2026, arXiv
/// 2601.21768, code ARozental/Zonkey `ProbabilisticAttention`): every position carries the
/// probability p that it exists, a soft mask over an open-ended sequence. Softmax attention
/// with, for query i and key j, the bias log p_j - log p_i on keys after the query
/// (`zonkey_ratio`: P(key exists | query exists)) or log p_j on every key (`key_logprob`);
/// p_j = 0 removes a key exactly, p_i = 0 zeroes the query's row. spec/probabilistic.md, part A.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash.hpp"
#include "softmax.hpp"

namespace attnkit {

struct probabilistic {
  enum class mode_kind {
    zonkey_ratio,  ///< bias log p_j - log p_i for keys j > i (Zonkey's code), none for j <= i
    key_logprob,   ///< bias log p_j for every key (weights multiplied by p_j)
  };
  const float* key_prob = nullptr;    ///< [B, Nk] existence probabilities of the keys, in [0, 1] (required)
  const float* query_prob = nullptr;  ///< [B, Nq] of the queries; null: key_prob (self-attention, Nq = Nk)
  bool log_space = false;             ///< the arrays hold log p (<= 0, -inf allowed)
  mode_kind mode = mode_kind::zonkey_ratio;
  float scale = 0;                          ///< multiplier of q.k; 0 means 1/sqrt(D)
  bool causal = false;                      ///< bottom-right aligned causal mask
  index_t window_left = -1;                 ///< keys j >= p - window_left; -1 unbounded
  index_t window_right = -1;                ///< keys j <= p + window_right; -1 unbounded
  float softcap = 0;                        ///< s = softcap * tanh(s / softcap); 0 off
  const float* alibi_slopes = nullptr;      ///< one per query head: s -= slope * |p - j|
  const std::int32_t* key_lens = nullptr;   ///< per batch entry: valid keys (null: all)
  const std::int32_t* query_lens = nullptr; ///< per batch entry: valid queries (null: all)
};

/// Existence probabilities from continue decisions (Zonkey's bos_probs_to_inferred_real_position):
/// with b[t] the probability that a new segment begins at position t, p[t] = prod_{1 <= s <= t}
/// (1 - b[s]), so p[0] = 1 whatever b[0]; computed as a float64 sum of log1p(-b). With `clamp`
/// (the code's default), b is raised to at least 1e-7 and p clamped to [1e-7, 1 - 1e-7].
/// b and p are [batch, n], row-major; b values must lie in [0, 1].
inline std::vector<float> existence_from_continue(const float* b, index_t batch, index_t n, bool clamp = true) {
  detail::require(batch >= 0 && n >= 0, "existence_from_continue: batch = ", batch, ", n = ", n, ", expected >= 0");
  const index_t size = detail::checked_mul(batch, n, "existence_from_continue: batch * n = ", batch, " * ", n);
  detail::require(size == 0 || b != nullptr, "existence_from_continue: b is null with batch * n = ", size);
  for (index_t e = 0; e < size; ++e)
    detail::require(b[e] >= 0.f && b[e] <= 1.f, "existence_from_continue: b[", e, "] = ", b[e],
                    ", expected a probability in [0, 1]");
  std::vector<float> p(static_cast<std::size_t>(size));
  for (index_t r = 0; r < batch; ++r) {
    double log_p = 0;
    for (index_t t = 0; t < n; ++t) {
      const double bt = clamp ? std::max(double(b[r * n + t]), 1e-7) : double(b[r * n + t]);
      if (t > 0) log_p += std::log1p(-bt);  // b[0] cancels in the code's division by the first entry
      double pt = std::exp(log_p);          // 0 once some b is 1
      if (clamp) pt = std::min(std::max(pt, 1e-7), 1 - 1e-7);
      p[static_cast<std::size_t>(r * n + t)] = static_cast<float>(pt);
    }
  }
  return p;
}

namespace detail {

/// The softmax fields of a probabilistic policy (its masks and score steps are softmax's).
inline softmax softmax_fields(const probabilistic& p) {
  softmax s;
  s.scale = p.scale, s.causal = p.causal, s.window_left = p.window_left, s.window_right = p.window_right;
  s.softcap = p.softcap, s.alibi_slopes = p.alibi_slopes, s.key_lens = p.key_lens, s.query_lens = p.query_lens;
  return s;
}

/// Checks one probability array of `count` entries: p in [0, 1], or log p in [-inf, 0].
inline void validate_probabilities(const float* a, index_t count, bool log_space, const char* name) {
  require(count == 0 || a != nullptr, "probabilistic: ", name, " is null, expected ", count, " probabilities");
  for (index_t e = 0; e < count; ++e) {
    const float x = a[e];
    if (log_space)
      require(x <= 0.f, "probabilistic: ", name, "[", e, "] = ", x, ", expected a log-probability in [-inf, 0] (log_space)");
    else
      require(x >= 0.f && x <= 1.f, "probabilistic: ", name, "[", e, "] = ", x, ", expected a probability in [0, 1]");
  }
}

inline void validate(const probabilistic& p, index_t batch, index_t q_heads, index_t nq, index_t nk) {
  validate_softmax_fields("probabilistic", softmax_fields(p), batch, q_heads, nq, nk);
  require(p.mode == probabilistic::mode_kind::zonkey_ratio || p.mode == probabilistic::mode_kind::key_logprob,
          "probabilistic: mode = ", static_cast<int>(p.mode), ", expected zonkey_ratio or key_logprob");
  require(p.key_prob != nullptr || batch == 0 || nk == 0, "probabilistic: key_prob is null, expected [batch, Nk] = [",
          batch, ", ", nk, "] probabilities");
  require(p.query_prob != nullptr || nq == nk, "probabilistic: query_prob is null (self-attention: the queries' "
          "probabilities are key_prob's) but Nq = ", nq, " != Nk = ", nk, "; pass query_prob [batch, Nq]");
  validate_probabilities(p.key_prob, checked_mul(batch, nk, "probabilistic: key_prob's size batch * Nk"), p.log_space,
                         "key_prob");
  if (p.query_prob)
    validate_probabilities(p.query_prob, checked_mul(batch, nq, "probabilistic: query_prob's size batch * Nq"),
                           p.log_space, "query_prob");
}

/// Smallest probability whose log is taken (Zonkey's code: log(max(p, 1e-20))); 0 stays 0.
inline constexpr double min_existence = 1e-20;

/// log p of entry e of a probability array (either input form), clamped as the code does;
/// -inf for p = 0.
inline double existence_log(const float* a, index_t e, bool log_space) {
  const double x = a[e];
  if (log_space) return x == -std::numeric_limits<double>::infinity() ? x : std::max(x, std::log(min_existence));
  return x == 0 ? -std::numeric_limits<double>::infinity() : std::log(std::max(x, min_existence));
}

}  // namespace detail

namespace detail::flash {

/// Probabilistic attention is softmax's plan with a bias on each score. Per call: log2 p of
/// every key and query, and how many zero-probability keys precede each key. Per chunk the
/// step is picked by where the chunk lies against the tile's queries (zonkey_ratio): keys all
/// at or before every query need no bias (only removal of zero-probability keys, when the
/// chunk has any), keys all after every query a rank-one bias log p_j - log p_i, and only
/// chunks across the diagonal compare j > i per element. key_logprob adds log p_j everywhere.
/// Rows: param[0] = log2 p_i, aux[2] = i; a query with p_i = 0 is not live (zeros, lse -inf).
template <>
struct flash_plan<probabilistic> : softmax_rows_plan {
  static constexpr bool has_score = true, score_steps = true;
  static softmax fields(const probabilistic& p) { return softmax_fields(p); }
  const probabilistic& pol;
  std::vector<float> key_log2, key_gone, query_log2;  // [B, Nk] log2 p (-inf: p = 0), 0 / -inf; [B, Nq]
  std::vector<std::int32_t> zeros_before;              // [B, Nk + 1] zero-probability keys before each key

  flash_plan(const probabilistic& policy, const problem& problem_, int br_)
      : softmax_rows_plan(softmax_fields(policy), problem_, br_), pol(policy) {
    const index_t nk = pb.nk, nq = pb.nq;
    key_log2.resize(static_cast<std::size_t>(pb.batch * nk));
    key_gone.resize(key_log2.size());
    query_log2.resize(static_cast<std::size_t>(pb.batch * nq));
    zeros_before.resize(static_cast<std::size_t>(pb.batch * (nk + 1)));
    for (index_t b = 0; b < pb.batch; ++b) {
      std::int32_t zeros = 0;
      for (index_t j = 0; j < nk; ++j) {
        const auto e = static_cast<std::size_t>(b * nk + j);
        key_log2[e] = static_cast<float>(existence_log(pol.key_prob, b * nk + j, pol.log_space) * double(log2e));
        key_gone[e] = key_log2[e] == neg_inf ? neg_inf : 0.f;
        zeros_before[static_cast<std::size_t>(b * (nk + 1) + j)] = zeros;
        zeros += key_log2[e] == neg_inf;
      }
      zeros_before[static_cast<std::size_t>(b * (nk + 1) + nk)] = zeros;
      const float* queries = pol.query_prob ? pol.query_prob : pol.key_prob;
      for (index_t i = 0; i < nq; ++i)
        query_log2[static_cast<std::size_t>(b * nq + i)] =
            static_cast<float>(existence_log(queries, b * nq + i, pol.log_space) * double(log2e));
    }
  }

  template <int Br>
  void describe(index_t b, index_t hkv, index_t tile, tile_rows<Br>& t) const {
    softmax_rows_plan::describe(b, hkv, tile, t);
    for (int r = 0; r < t.rows; ++r) {
      const float lq = query_log2[static_cast<std::size_t>(b * pb.nq + t.query[r])];
      t.param[0][r] = lq == neg_inf ? 0.f : lq;  // a dead row's lanes stay finite
      t.aux[2][r] = static_cast<std::int32_t>(t.query[r]);
      if (lq == neg_inf) t.live[r] = false;
    }
  }

  /// x + b_j: key_logprob's bias, or 0 / -inf removing zero-probability keys.
  template <class G>
  struct key_bias : softmax_step {
    static constexpr bool transforms = true;
    const float* bias;  // per key of the chunk
    typename G::V transform(typename G::V x, int, int j) const { return x + typename G::V(bias[j]); }
  };
  /// x + log2 p_j - log2 p_i: keys after every query of the tile.
  template <class G>
  struct ratio_bias : softmax_step {
    static constexpr bool transforms = true;
    const float* key;
    typename G::V minus_query[G::NR];
    typename G::V transform(typename G::V x, int n, int j) const {
      return x + (typename G::V(key[j]) + minus_query[n]);
    }
  };
  /// Across the diagonal: the ratio where j > i, removal of zero-probability keys elsewhere.
  template <class G>
  struct diagonal_bias : softmax_step {
    static constexpr bool transforms = true;
    const float *key, *gone;
    std::int32_t key0;
    typename G::V minus_query[G::NR];
    simd::ivec<typename G::arch> query[G::NR];
    typename G::V transform(typename G::V x, int n, int j) const {
      using V = typename G::V;
      const auto after = simd::ivec<typename G::arch>(key0 + j) > query[n];
      return x + xsimd::select(xsimd::bool_cast(after), V(key[j]) + minus_query[n], V(gone[j]));
    }
  };

  template <class G, class F>
  void with_step(const tile_rows<G::Br>& t, index_t b, const chunk& c, F&& f) const {
    const auto first = static_cast<std::size_t>(b * pb.nk + c.key0);
    if (pol.mode == probabilistic::mode_kind::key_logprob) return f(key_bias<G>{{}, key_log2.data() + first});
    index_t qmin = pb.nq, qmax = -1;
    for (int r = 0; r < t.rows; ++r)
      if (t.live[r]) qmin = std::min(qmin, t.query[r]), qmax = std::max(qmax, t.query[r]);
    const index_t last = c.key0 + (c.nkeys - 1) * c.step;  // the plan's runs have step 1
    if (last <= qmin) {
      const auto* zeros = zeros_before.data() + b * (pb.nk + 1);
      if (zeros[last + 1] == zeros[c.key0]) return f(softmax_step{});
      return f(key_bias<G>{{}, key_gone.data() + first});
    }
    using V = typename G::V;
    if (c.key0 > qmax) {
      ratio_bias<G> step{{}, key_log2.data() + first, {}};
      for (int n = 0; n < G::NR; ++n) step.minus_query[n] = -V::load_aligned(t.param[0] + n * G::W);
      return f(step);
    }
    diagonal_bias<G> step{{}, key_log2.data() + first, key_gone.data() + first, static_cast<std::int32_t>(c.key0), {}, {}};
    for (int n = 0; n < G::NR; ++n) {
      step.minus_query[n] = -V::load_aligned(t.param[0] + n * G::W);
      step.query[n] = simd::ivec<typename G::arch>::load_unaligned(t.aux[2] + n * G::W);
    }
    f(step);
  }

  /// The exact path's score (natural log units, double): the same bias from the probabilities.
  double score(double s, index_t b, index_t, index_t i, index_t j) const {
    const double lk = existence_log(pol.key_prob, b * pb.nk + j, pol.log_space);
    if (lk == -std::numeric_limits<double>::infinity()) return lk;
    if (pol.mode == probabilistic::mode_kind::key_logprob) return s + lk;
    if (j <= i) return s;
    return s + lk - existence_log(pol.query_prob ? pol.query_prob : pol.key_prob, b * pb.nq + i, pol.log_space);
  }
};

}  // namespace detail::flash
}  // namespace attnkit
