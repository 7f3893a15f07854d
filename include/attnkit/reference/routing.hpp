/// \file
/// Float64 reference of routing attention, written from spec/routing.md ("Routing", "Output",
/// "Reference algorithm"): normalise, route to the centroids by sorting, then softmax
/// attention inside each of a query's clusters and the mean over them. It shares no code with
/// the fast path in variants/routing.hpp or with the flash engine, so tests can compare them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/routing.hpp"
#include "masked.hpp"

namespace attnkit::reference::detail {

/// The routing vector of token t of x[b, head] in double: layer norm (zero mean, unit
/// population variance, eps 1e-6, no gain or bias) or l2 (x / max(||x||, 1e-12), PyTorch's
/// F.normalize).
template <class T>
std::vector<double> routing_normalised(const attnkit::routing& p, tensor_view<const T> x, index_t b, index_t head,
                                       index_t t) {
  using attnkit::detail::to_float;
  const index_t dim = x.dim();
  std::vector<double> y(static_cast<std::size_t>(dim));
  for (index_t d = 0; d < dim; ++d) y[static_cast<std::size_t>(d)] = static_cast<double>(to_float(x(b, head, t, d)));
  if (p.routing_norm == attnkit::routing::routing_norm_kind::layer_norm) {
    double mean = 0;
    for (const double e : y) mean += e;
    mean /= static_cast<double>(dim);
    double var = 0;
    for (const double e : y) var += (e - mean) * (e - mean);
    var /= static_cast<double>(dim);
    const double inv_std = 1.0 / std::sqrt(var + 1e-6);
    for (double& e : y) e = (e - mean) * inv_std;
  } else {
    double sum_sq = 0;
    for (const double e : y) sum_sq += e * e;
    const double inv_norm = 1.0 / std::max(std::sqrt(sum_sq), 1e-12);
    for (double& e : y) e *= inv_norm;
  }
  return y;
}

/// Affinities <norm(x_t), mu_c> for the tokens t of x[b, head] and the centroids of query head
/// h, as an N x C row-major array.
template <class T>
std::vector<double> routing_affinities(const attnkit::routing& p, tensor_view<const T> x, index_t b, index_t head,
                                       index_t h) {
  const index_t n = x.seq(), dim = x.dim(), clusters = p.num_clusters;
  std::vector<double> affinity(static_cast<std::size_t>(n * clusters));
  for (index_t t = 0; t < n; ++t) {
    const std::vector<double> y = detail::routing_normalised(p, x, b, head, t);
    for (index_t c = 0; c < clusters; ++c) {
      const float* mu = p.centroids + (h * clusters + c) * dim;
      double dot = 0;
      for (index_t d = 0; d < dim; ++d) dot += y[static_cast<std::size_t>(d)] * static_cast<double>(mu[d]);
      affinity[static_cast<std::size_t>(t * clusters + c)] = dot;
    }
  }
  return affinity;
}

/// An affinity as a sort key: NaN (from NaN inputs) ranks lowest so the ordering stays strict.
inline double routing_rank(double affinity) {
  return std::isnan(affinity) ? -std::numeric_limits<double>::infinity() : affinity;
}

/// Members of each cluster, ascending, for n tokens with affinities `affinity` (n x C).
/// balanced: the min(w, n) tokens of largest affinity per centroid (w = window, or ceil(n / C)
/// when 0; ties: smaller token); argmax: each token joins its largest-affinity centroid (ties:
/// smaller c).
inline std::vector<std::vector<index_t>> routing_assign(const attnkit::routing& p, const std::vector<double>& affinity,
                                                        index_t n, index_t window) {
  const index_t clusters = p.num_clusters;
  const auto at = [&](index_t t, index_t c) { return routing_rank(affinity[static_cast<std::size_t>(t * clusters + c)]); };
  std::vector<std::vector<index_t>> members(static_cast<std::size_t>(clusters));
  if (p.assignment == attnkit::routing::assignment_kind::argmax) {
    for (index_t t = 0; t < n; ++t) {
      index_t best = 0;
      for (index_t c = 1; c < clusters; ++c)
        if (at(t, c) > at(t, best)) best = c;
      members[static_cast<std::size_t>(best)].push_back(t);
    }
    return members;
  }
  const index_t w = window != 0 ? window : n / clusters + (n % clusters != 0 ? 1 : 0);
  const index_t size = std::min(w, n);
  std::vector<index_t> order(static_cast<std::size_t>(n));
  for (index_t c = 0; c < clusters; ++c) {
    for (index_t t = 0; t < n; ++t) order[static_cast<std::size_t>(t)] = t;
    std::sort(order.begin(), order.end(), [&](index_t x, index_t y) {
      if (at(x, c) != at(y, c)) return at(x, c) > at(y, c);
      return x < y;
    });
    std::vector<index_t>& cluster = members[static_cast<std::size_t>(c)];
    cluster.assign(order.begin(), order.begin() + size);
    std::sort(cluster.begin(), cluster.end());
  }
  return members;
}

}  // namespace attnkit::reference::detail

namespace attnkit::reference {

/// The clusters of batch entry b, query head h: queries[c] = Q_c, keys[c] = K_c, each ascending.
struct routing_clusters {
  std::vector<std::vector<index_t>> queries, keys;
};

/// Q_c and K_c of batch entry b, query head h (keys of KV head h / (Hq / Hkv), routed with the
/// centroids of h).
template <class Q, class K>
routing_clusters routing_membership(const attnkit::routing& p, tensor_view<const Q> q, tensor_view<const K> k,
                                    index_t b, index_t h) {
  const index_t kv_head = h / (q.heads() / k.heads());
  routing_clusters clusters;
  clusters.queries = detail::routing_assign(p, detail::routing_affinities(p, q, b, h, h), q.seq(), p.window_q);
  clusters.keys = detail::routing_assign(p, detail::routing_affinities(p, k, b, kv_head, h), k.seq(), p.window_k);
  return clusters;
}

}  // namespace attnkit::reference

namespace attnkit::reference::detail {

/// Routing attention in float64 (spec "Reference algorithm"): for each query, softmax attention
/// over S_c(i) (the causally visible keys of K_c) for every cluster c holding it, then
/// out = mean of the o_c and lse = log(mean of exp(l_c)) over the non-empty S_c(i). A query
/// with none gets zeros and lse = -inf. Shapes are assumed checked.
template <class Q, class K, class V, class O>
void run(const attnkit::routing& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  using attnkit::detail::from_float;
  using attnkit::detail::to_float;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Nk = k.seq(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  const index_t group = Hq / Hkv;
  const double scale = resolve_scale(p.scale, D);

  std::vector<index_t> keys;           // S_c(i)
  std::vector<double> logits;          // their scaled scores
  std::vector<double> cluster_out(static_cast<std::size_t>(Dv));  // o_c(i)
  std::vector<double> sum_out(static_cast<std::size_t>(Dv));      // sum of o_c(i) over M'(i)
  std::vector<double> cluster_lse;     // l_c(i) over M'(i)

  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const index_t g = h / group;
      // qualified: variants/routing.hpp has an attnkit::routing_membership that ADL would also find
      const attnkit::reference::routing_clusters clusters = attnkit::reference::routing_membership(p, q, k, b, h);
      std::vector<std::vector<index_t>> memberships(static_cast<std::size_t>(Nq));  // M(i), ascending c
      for (index_t c = 0; c < p.num_clusters; ++c)
        for (const index_t i : clusters.queries[static_cast<std::size_t>(c)])
          memberships[static_cast<std::size_t>(i)].push_back(c);

      for (index_t i = 0; i < Nq; ++i) {
        const index_t pos = i + Nk - Nq;
        std::fill(sum_out.begin(), sum_out.end(), 0.0);
        cluster_lse.clear();
        for (const index_t c : memberships[static_cast<std::size_t>(i)]) {
          keys.clear();
          for (const index_t j : clusters.keys[static_cast<std::size_t>(c)])
            if (!p.causal || j <= pos) keys.push_back(j);
          if (keys.empty()) continue;  // not in M'(i)

          logits.clear();
          double max_logit = neg_inf;
          for (const index_t j : keys) {
            double dot = 0;
            for (index_t d = 0; d < D; ++d)
              dot += static_cast<double>(to_float(q(b, h, i, d))) * static_cast<double>(to_float(k(b, g, j, d)));
            logits.push_back(scale * dot);
            max_logit = std::max(max_logit, scale * dot);
          }
          // every logit -inf (infinite inputs): never compute -inf - (-inf)
          const double shift = max_logit == neg_inf ? 0.0 : max_logit;
          double denom = 0;
          std::fill(cluster_out.begin(), cluster_out.end(), 0.0);
          for (std::size_t t = 0; t < keys.size(); ++t) {
            const double weight = std::exp(logits[t] - shift);
            denom += weight;
            for (index_t d = 0; d < Dv; ++d)
              cluster_out[static_cast<std::size_t>(d)] += weight * static_cast<double>(to_float(v(b, g, keys[t], d)));
          }
          if (denom == 0) {  // like run_rows: a cluster whose logits are all -inf contributes 0 and -inf
            std::fill(cluster_out.begin(), cluster_out.end(), 0.0);
            cluster_lse.push_back(neg_inf);
          } else {
            for (double& e : cluster_out) e /= denom;
            cluster_lse.push_back(shift + std::log(denom));
          }
          for (index_t d = 0; d < Dv; ++d) sum_out[static_cast<std::size_t>(d)] += cluster_out[static_cast<std::size_t>(d)];
        }

        const double m = static_cast<double>(cluster_lse.size());
        double lse = neg_inf;
        if (!cluster_lse.empty()) {
          for (double& e : sum_out) e /= m;
          const double max_lse = *std::max_element(cluster_lse.begin(), cluster_lse.end());
          if (max_lse != neg_inf) {
            double sum_exp = 0;
            for (const double l : cluster_lse) sum_exp += std::exp(l - max_lse);
            lse = max_lse + std::log(sum_exp / m);
          }
        }
        for (index_t d = 0; d < Dv; ++d)
          out(b, h, i, d) = from_float<std::remove_const_t<O>>(static_cast<float>(sum_out[static_cast<std::size_t>(d)]));
        if (o.lse) o.lse[(b * Hq + h) * Nq + i] = static_cast<float>(lse);
      }
    }
}

}  // namespace attnkit::reference::detail
