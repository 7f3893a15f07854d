/// \file
/// Routing attention (Roy et al. 2021, "Efficient Content-Based Sparse Attention with Routing
/// Transformers", arXiv 2003.05997): queries and keys are normalised and routed to C centroids;
/// attention runs only inside each cluster. Executed as gather by cluster, dense flash per
/// cluster, scatter (mean over a token's clusters): no Nq x Nk work. spec/routing.md.
///
/// Per (batch, query head): (1) the routing vectors, normalised, are packed into tiles of
/// tokens in lanes; (2) their affinities to the centroids come from the flash engine's q.k
/// micro-kernel (centroids as keys), streamed into a running top-w per centroid (balanced) or a
/// running argmax per token, never stored as a C x N matrix; (3) each cluster's rows are
/// gathered one after another and the flash engine runs them as one block-diagonal problem
/// (causality is a prefix of a cluster's position-sorted keys); (4) each token averages its
/// clusters' results.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../core/arena.hpp"
#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/random.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash.hpp"

namespace attnkit {

struct routing {
  enum class assignment_kind { balanced, argmax };
  enum class routing_norm_kind { layer_norm, l2 };
  const float* centroids = nullptr;  ///< [Hq, C, D] floats, contiguous, one set per query head
  index_t num_clusters = 0;          ///< C
  index_t window_q = 0;              ///< queries per cluster (balanced); 0 means ceil(Nq / C)
  index_t window_k = 0;              ///< keys per cluster (balanced); 0 means ceil(Nk / C)
  assignment_kind assignment = assignment_kind::balanced;  ///< top-w per centroid, or nearest centroid
  routing_norm_kind routing_norm = routing_norm_kind::layer_norm;  ///< of the routing vectors
  bool causal = false;               ///< key position <= query position (bottom-right aligned)
  float scale = 0;                   ///< multiplier of q.k; 0 means 1/sqrt(D)
};

/// The clusters of one (batch entry, query head): per centroid, its query and key token
/// indices in increasing order.
struct routing_clusters {
  std::vector<std::vector<index_t>> queries, keys;
};

namespace detail {

inline void validate(const routing& p, index_t, index_t, index_t, index_t) {
  validate_scale("routing", p.scale);
  require(p.num_clusters >= 1, "routing: num_clusters = ", p.num_clusters, ", expected >= 1");
  require(p.num_clusters <= max_sequence, "routing: num_clusters = ", p.num_clusters, ", expected at most 2^31 - 1");
  require(p.centroids != nullptr, "routing: centroids is null, expected [Hq, num_clusters, D] floats");
  require(p.window_q >= 0, "routing: window_q = ", p.window_q, ", expected >= 0 (0: ceil(Nq / num_clusters))");
  require(p.window_k >= 0, "routing: window_k = ", p.window_k, ", expected >= 0 (0: ceil(Nk / num_clusters))");
  require(p.assignment == routing::assignment_kind::balanced || p.assignment == routing::assignment_kind::argmax,
          "routing: assignment = ", static_cast<int>(p.assignment), ", expected balanced or argmax");
  require(p.routing_norm == routing::routing_norm_kind::layer_norm || p.routing_norm == routing::routing_norm_kind::l2,
          "routing: routing_norm = ", static_cast<int>(p.routing_norm), ", expected layer_norm or l2");
}

/// The centroids of every query head are finite (a NaN centroid would make membership
/// meaningless); their count Hq * C * D is checked before it is read.
inline void validate_centroids(const routing& p, index_t q_heads, index_t d) {
  const index_t n = checked_mul(checked_mul(q_heads, p.num_clusters, "routing: Hq * num_clusters"), d,
                                "routing: Hq * num_clusters * D");
  for (index_t i = 0; i < n; ++i)
    require(std::isfinite(p.centroids[i]), "routing: centroids[", i, "] = ", p.centroids[i], ", expected finite");
}

/// Balanced cluster sizes: the window, ceil(n / C) when 0, at most n.
inline index_t cluster_window(index_t window, index_t n, index_t clusters) {
  return std::min(window > 0 ? window : ceil_div(n, clusters), n);
}

/// Writes the routing vector of `row` (n values, `stride` apart): layer_norm (zero mean, unit
/// variance, eps 1e-6 inside the root, as the official code) or l2 (x / max(|x|, 1e-12), as
/// torch.nn.functional.normalize). `out` holds the row as float first; sums run in vectors.
template <class T>
void routing_vector(routing::routing_norm_kind norm, const T* row, index_t stride, index_t n, float* out) {
  using V = simd::vec<simd::wide_arch>;
  constexpr index_t W = V::size;
  simd::to_float_row(row, stride, n, out);
  const index_t body = n / W * W;
  const auto sum_of = [&](auto&& term) {
    V acc(0.f);
    for (index_t c = 0; c < body; c += W) acc += term(V::load_unaligned(out + c));
    float total = xsimd::hadd(acc);
    for (index_t c = body; c < n; ++c) total += term(out[c]);
    return total;
  };
  const bool layer_norm = norm == routing::routing_norm_kind::layer_norm;
  const float mean = layer_norm ? sum_of([](auto x) { return x; }) / static_cast<float>(n) : 0.f;
  const float sq = sum_of([&](auto x) { return (x - mean) * (x - mean); });
  if (std::isfinite(sq)) {
    const float inv = layer_norm ? 1.f / std::sqrt(sq / static_cast<float>(n) + 1e-6f) : 1.f / std::max(std::sqrt(sq), 1e-12f);
    for (index_t c = 0; c < body; c += W) ((V::load_unaligned(out + c) - mean) * inv).store_unaligned(out + c);
    for (index_t c = body; c < n; ++c) out[c] = (out[c] - mean) * inv;
    return;
  }
  // Squares past float's range (|x| above about 1e19): the same in double, where they fit.
  double dmean = 0, dsq = 0;
  for (index_t c = 0; c < n; ++c) dmean += out[c];
  dmean = layer_norm ? dmean / static_cast<double>(n) : 0.0;
  for (index_t c = 0; c < n; ++c) dsq += (out[c] - dmean) * (out[c] - dmean);
  const double inv = layer_norm ? 1.0 / std::sqrt(dsq / static_cast<double>(n) + 1e-6) : 1.0 / std::max(std::sqrt(dsq), 1e-12);
  for (index_t c = 0; c < n; ++c) out[c] = static_cast<float>((out[c] - dmean) * inv);
}

/// Routing vectors of one head's tokens packed for the affinity kernel: tiles of G::Br tokens
/// in lanes, [tile][dim][lane], padding lanes zero.
template <class G>
struct routing_tiles {
  float* data = nullptr;
  index_t tokens = 0, dim = 0;
  index_t tiles() const { return ceil_div(tokens, G::Br); }
  const float* tile(index_t t) const { return data + t * dim * G::Br; }
  static index_t floats(index_t tokens, index_t dim) { return ceil_div(tokens, G::Br) * dim * G::Br; }

  /// Packs tile t from row(token, buffer), which returns the token's routing vector.
  template <class Row>
  void pack(index_t t, float* row_buf, Row&& row) const {
    float* dst = data + t * dim * G::Br;
    for (int r = 0; r < G::Br; ++r) {
      const index_t token = t * G::Br + r;
      const float* x = token < tokens ? row(token, row_buf) : nullptr;
      for (index_t c = 0; c < dim; ++c) dst[c * G::Br + r] = x ? x[c] : 0.f;
    }
  }
};

/// Centroids per affinity kernel call: one key chunk of the flash engine's tiles.
template <class G>
inline constexpr int centroids_per_call = G::Bc;

/// Affinities of tile t's tokens to centroids [c0, c0 + count): s[c - c0][lane].
template <class G>
void affinities(const routing_tiles<G>& x, index_t t, const float* centroids, index_t c0, int count, float* s) {
  simd::qk_tile<G>(x.tile(t), centroids + c0 * x.dim, x.dim, x.dim, count, s);
}

/// A token's place in a centroid's top-w: larger affinity first, then smaller index. NaN
/// affinities rank as -inf, so the order stays total.
struct ranked {
  float affinity;
  std::int32_t token;
};
inline bool ranks_above(const ranked& a, const ranked& b) {
  return a.affinity > b.affinity || (a.affinity == b.affinity && a.token < b.token);
}

/// The running top-w of one centroid: candidates collect in a buffer of 2w; when it fills, the
/// best w stay and the lowest of them becomes the threshold a newcomer must beat (amortised
/// O(1) per token, where a heap took a sift of log w branches per replacement).
struct top_w {
  ranked* buffer;  // 2 * capacity entries
  index_t size = 0, capacity;
  float threshold = -std::numeric_limits<float>::infinity();
  bool compacted = false;  // before the first compaction every token is taken

  /// Tokens arrive in increasing index, so once compacted a newcomer needs a larger affinity.
  bool wants(float affinity) const { return capacity > 0 && (!compacted || affinity > threshold); }
  void offer(float affinity, std::int32_t token) {
    if (!wants(affinity)) return;
    buffer[size++] = {std::isnan(affinity) ? -std::numeric_limits<float>::infinity() : affinity, token};
    if (size == 2 * capacity) keep_best();
  }
  void keep_best() {
    if (size <= capacity) return;
    std::nth_element(buffer, buffer + capacity - 1, buffer + size, ranks_above);
    size = capacity;
    compacted = true;
    threshold = buffer[capacity - 1].affinity;  // the lowest of those kept
  }
};

/// The members of each cluster in CSR form: tokens of cluster c are [first[c], first[c + 1]).
struct cluster_lists {
  std::vector<index_t> first;
  std::vector<std::int32_t> tokens;
};

/// Balanced membership of one side: each centroid's top-w tokens by affinity, in token order.
/// Work items are chunks of centroids, each streaming every token tile (nothing C x N stored).
template <class G>
void balanced_members(const routing_tiles<G>& x, const float* centroids, index_t clusters, index_t w, int threads,
                      cluster_lists& out) {
  constexpr int per_call = centroids_per_call<G>;
  const index_t members = checked_mul(clusters, w, "routing: num_clusters * window");
  out.first.resize(static_cast<std::size_t>(clusters + 1));
  for (index_t c = 0; c <= clusters; ++c) out.first[static_cast<std::size_t>(c)] = c * w;
  std::vector<ranked> buffers(static_cast<std::size_t>(checked_mul(members, 2, "routing: num_clusters * window * 2")));
  out.tokens.resize(static_cast<std::size_t>(members));
  using V = typename G::V;
  parallel_for(ceil_div(clusters, per_call), threads, [&](index_t item) {
    const index_t c0 = item * per_call;
    const int count = static_cast<int>(std::min<index_t>(per_call, clusters - c0));
    top_w tops[per_call];
    for (int j = 0; j < count; ++j) tops[j] = top_w{buffers.data() + 2 * (c0 + j) * w, 0, w};
    scratch_lease lease;
    float* s = static_cast<float*>(lease.reserve(sizeof(float) * per_call * G::Br));
    for (index_t t = 0; t < x.tiles(); ++t) {
      affinities(x, t, centroids, c0, count, s);
      const int lanes = static_cast<int>(std::min<index_t>(G::Br, x.tokens - t * G::Br));
      for (int j = 0; j < count; ++j) {
        const float* sj = s + j * G::Br;
        top_w& top = tops[j];
        if (lanes == G::Br && top.compacted) {  // most tiles: nothing beats the threshold
          const V thr(top.threshold);
          bool any = false;
          ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) any = any || xsimd::any(V::load_aligned(sj + n * G::W) > thr);
          if (!any) continue;
        }
        for (int r = 0; r < lanes; ++r) top.offer(sj[r], static_cast<std::int32_t>(t * G::Br + r));
      }
    }
    for (int j = 0; j < count; ++j) {
      top_w& top = tops[j];
      top.keep_best();
      std::int32_t* dst = out.tokens.data() + (c0 + j) * w;
      for (index_t e = 0; e < top.size; ++e) dst[e] = top.buffer[e].token;
      std::sort(dst, dst + top.size);
    }
  });
}

/// Each token's nearest centroid (largest affinity; ties: the smaller index).
template <class G>
std::vector<std::int32_t> nearest_centroids(const routing_tiles<G>& x, const float* centroids, index_t clusters,
                                            int threads) {
  constexpr int per_call = centroids_per_call<G>;
  std::vector<std::int32_t> nearest(static_cast<std::size_t>(x.tiles() * G::Br));
  using V = typename G::V;
  using IV = simd::ivec<typename G::arch>;
  parallel_for(x.tiles(), threads, [&](index_t t) {
    scratch_lease lease;
    float* s = static_cast<float*>(lease.reserve(sizeof(float) * per_call * G::Br));
    // The index rides in float lanes (its bits): xsimd 8.1's avx512bw select on int batches
    // does not compile without optimisation.
    V best[G::NR], which[G::NR];
    for (int n = 0; n < G::NR; ++n) best[n] = V(std::numeric_limits<float>::quiet_NaN()), which[n] = xsimd::bitwise_cast<V>(IV(0));
    for (index_t c0 = 0; c0 < clusters; c0 += per_call) {
      const int count = static_cast<int>(std::min<index_t>(per_call, clusters - c0));
      affinities(x, t, centroids, c0, count, s);
      for (int j = 0; j < count; ++j)
        ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) {
          const V a = V::load_aligned(s + j * G::Br + n * G::W);
          // Strictly greater keeps the smaller index on ties; the first centroid replaces NaN.
          const auto better = (a > best[n]) | xsimd::isnan(best[n]);
          best[n] = xsimd::select(better, a, best[n]);
          which[n] = xsimd::select(better, xsimd::bitwise_cast<V>(IV(static_cast<std::int32_t>(c0 + j))), which[n]);
        }
    }
    for (int n = 0; n < G::NR; ++n) xsimd::bitwise_cast<IV>(which[n]).store_unaligned(nearest.data() + t * G::Br + n * G::W);
  });
  nearest.resize(static_cast<std::size_t>(x.tokens));
  return nearest;
}

/// Argmax membership of one side: tokens bucketed by nearest centroid, in token order.
template <class G>
void argmax_members(const routing_tiles<G>& x, const float* centroids, index_t clusters, int threads, cluster_lists& out) {
  const std::vector<std::int32_t> nearest = nearest_centroids(x, centroids, clusters, threads);
  out.first.assign(static_cast<std::size_t>(clusters + 1), 0);
  for (const std::int32_t c : nearest) ++out.first[static_cast<std::size_t>(c + 1)];
  for (index_t c = 0; c < clusters; ++c) out.first[static_cast<std::size_t>(c + 1)] += out.first[static_cast<std::size_t>(c)];
  out.tokens.resize(nearest.size());
  std::vector<index_t> fill(out.first.begin(), out.first.end() - 1);
  for (std::size_t i = 0; i < nearest.size(); ++i)
    out.tokens[static_cast<std::size_t>(fill[static_cast<std::size_t>(nearest[i])]++)] = static_cast<std::int32_t>(i);
}

/// Routing's clusters laid end to end (gathered rows): the problem the flash engine runs.
/// Cluster c's query rows are [query_first[c], query_first[c + 1]) and its key rows
/// [key_first[c], key_first[c + 1]); a query row sees its cluster's keys up to position
/// last_key[row] (-1: none), a prefix because the keys are in token order.
struct cluster_blocks {
  float scale = 0;
  index_t clusters = 0;
  const index_t* query_first = nullptr;
  const index_t* key_first = nullptr;
  const std::int32_t* last_key = nullptr;
};

template <class Arch>
using routing_geometry = flash::geometry<Arch, 3>;

/// Floats on 64-byte boundaries: the affinity kernel loads packed tiles aligned.
using aligned_floats = std::vector<float, xsimd::aligned_allocator<float, 64>>;

/// The routing vectors of one side of one head, its members, and the memory behind them.
template <class G, class T>
void route_side(const routing& p, const tensor_view<const T>& x, index_t b, index_t h, const float* centroids,
                index_t w, float* tiles, const options& o, cluster_lists& members) {
  const routing_tiles<G> rt{tiles, x.seq(), x.dim()};
  parallel_for(rt.tiles(), o.threads, [&](index_t t) {
    scratch_lease lease;
    float* row = static_cast<float*>(lease.reserve(sizeof(float) * static_cast<std::size_t>(x.dim())));
    rt.pack(t, row, [&](index_t token, float* buf) {
      routing_vector(p.routing_norm, x.row(b, h, token), x.stride(dim_axis), x.dim(), buf);
      return static_cast<const float*>(buf);
    });
  });
  if (p.assignment == routing::assignment_kind::balanced)
    balanced_members(rt, centroids, p.num_clusters, w, o.threads, members);
  else
    argmax_members(rt, centroids, p.num_clusters, o.threads, members);
}

/// Routing attention on the CPU (arguments validated).
template <class Q, class K, class Vt, class O>
void run_routing(const routing& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
                 const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  using G = routing_geometry<simd::wide_arch>;
  const index_t B = q.batch(), Hq = q.heads(), nq = q.seq(), nk = k.seq(), D = q.dim(), Dv = v.dim(),
                C = p.num_clusters, group = Hq / k.heads();
  if (B == 0 || nq == 0) return;
  const index_t wq = cluster_window(p.window_q, nq, C), wk = cluster_window(p.window_k, nk, C);
  const float scale = effective_scale(p.scale, D);

  // Every buffer of the call in one block of the calling thread's arena, sized for the largest
  // clusters and kept between calls: allocated per call, their pages (about 6 N D floats per
  // head) took a tenth of the time at N 32K.
  const bool balanced = p.assignment == routing::assignment_kind::balanced;
  const index_t cap_q = balanced ? checked_mul(C, wq, "routing: num_clusters * window_q") : nq,
                cap_k = balanced ? checked_mul(C, wk, "routing: num_clusters * window_k") : nk;
  const auto slots = [](index_t n) { return (n + 15) & ~index_t(15); };  // 64-byte multiples
  const index_t at_k_tiles = slots(routing_tiles<G>::floats(nq, D)), at_qg = at_k_tiles + slots(routing_tiles<G>::floats(nk, D)),
                at_kg = at_qg + slots(cap_q * D), at_vg = at_kg + slots(cap_k * D), at_og = at_vg + slots(cap_k * Dv),
                at_lse = at_og + slots(cap_q * Dv), at_last = at_lse + slots(cap_q), total = at_last + slots(cap_q);
  scratch_lease lease;
  float* const base = static_cast<float*>(lease.reserve(static_cast<std::size_t>(total) * sizeof(float)));
  float *const q_tiles = base, *const k_tiles = base + at_k_tiles, *const qg = base + at_qg, *const kg = base + at_kg,
               *const vg = base + at_vg, *const og = base + at_og, *const lse_g = base + at_lse;
  std::int32_t* const last_key = reinterpret_cast<std::int32_t*>(base + at_last);
  cluster_lists qm, km;
  std::vector<index_t> rows_of_token_first, rows_of_token;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const float* mu = p.centroids + h * C * D;
      route_side<G>(p, q, b, h, mu, wq, q_tiles, o, qm);
      route_side<G>(p, k, b, h / group, mu, wk, k_tiles, o, km);

      // Gather each cluster's rows, in cluster order, as float.
      const index_t rows_q = static_cast<index_t>(qm.tokens.size()), rows_k = static_cast<index_t>(km.tokens.size());
      parallel_for(C, o.threads, [&](index_t c) {
        const auto cu = static_cast<std::size_t>(c);
        const index_t k0 = km.first[cu], k1 = km.first[cu + 1];
        for (index_t r = k0; r < k1; ++r) {
          const index_t token = km.tokens[static_cast<std::size_t>(r)];
          simd::to_float_row(k.row(b, h / group, token), k.stride(dim_axis), D, kg + r * D);
          simd::to_float_row(v.row(b, h / group, token), v.stride(dim_axis), Dv, vg + r * Dv);
        }
        index_t seen = k0;  // keys at or before the query's position: a prefix (both in token order)
        for (index_t r = qm.first[cu]; r < qm.first[cu + 1]; ++r) {
          const index_t token = qm.tokens[static_cast<std::size_t>(r)];
          simd::to_float_row(q.row(b, h, token), q.stride(dim_axis), D, qg + r * D);
          const index_t pos = token + nk - nq;
          while (seen < k1 && km.tokens[static_cast<std::size_t>(seen)] <= pos) ++seen;
          last_key[r] = static_cast<std::int32_t>(p.causal ? seen - k0 - 1 : k1 - k0 - 1);
        }
      });

      const cluster_blocks blocks{scale, C, qm.first.data(), km.first.data(), last_key};
      options inner;
      inner.lse = lse_g;
      inner.threads = o.threads;
      flash::run(blocks, view_bhsd(static_cast<const float*>(qg), 1, 1, rows_q, D),
                 view_bhsd(static_cast<const float*>(kg), 1, 1, rows_k, D),
                 view_bhsd(static_cast<const float*>(vg), 1, 1, rows_k, Dv),
                 view_bhsd(og, 1, 1, rows_q, Dv), inner);

      // Scatter: each token's gathered rows (in cluster order), then the mean over those that
      // see a key (last_key >= 0: an lse of -inf may also be a finite one below float's
      // range); the lse of the mean is log(mean(exp(lse))), taken about the largest.
      rows_of_token_first.assign(static_cast<std::size_t>(nq + 1), 0);
      for (const std::int32_t token : qm.tokens) ++rows_of_token_first[static_cast<std::size_t>(token + 1)];
      for (index_t i = 0; i < nq; ++i)
        rows_of_token_first[static_cast<std::size_t>(i + 1)] += rows_of_token_first[static_cast<std::size_t>(i)];
      rows_of_token.resize(static_cast<std::size_t>(rows_q));
      {
        std::vector<index_t> fill(rows_of_token_first.begin(), rows_of_token_first.end() - 1);
        for (index_t r = 0; r < rows_q; ++r)
          rows_of_token[static_cast<std::size_t>(fill[static_cast<std::size_t>(qm.tokens[static_cast<std::size_t>(r)])]++)] = r;
      }
      constexpr index_t tokens_per_item = 64;
      parallel_for(ceil_div(nq, tokens_per_item), o.threads, [&](index_t item) {
        scratch_lease lease;
        double* acc = static_cast<double*>(lease.reserve(sizeof(double) * static_cast<std::size_t>(Dv)));
        for (index_t i = item * tokens_per_item; i < std::min(nq, (item + 1) * tokens_per_item); ++i) {
          const index_t r0 = rows_of_token_first[static_cast<std::size_t>(i)],
                        r1 = rows_of_token_first[static_cast<std::size_t>(i + 1)];
          double top = -std::numeric_limits<double>::infinity();
          index_t m = 0;
          for (index_t e = r0; e < r1; ++e) {
            const index_t r = rows_of_token[static_cast<std::size_t>(e)];
            if (last_key[r] >= 0) ++m, top = std::max(top, double(lse_g[r]));
          }
          std::fill(acc, acc + Dv, 0.0);
          double sum = 0;
          for (index_t e = r0; e < r1 && m > 0; ++e) {
            const index_t r = rows_of_token[static_cast<std::size_t>(e)];
            if (last_key[r] < 0) continue;
            if (!std::isinf(top)) sum += std::exp(double(lse_g[r]) - top);
            for (index_t c = 0; c < Dv; ++c) acc[c] += og[r * Dv + c];
          }
          for (index_t c = 0; c < Dv; ++c) out(b, h, i, c) = from_float<O>(m > 0 ? static_cast<float>(acc[c] / double(m)) : 0.f);
          if (o.lse)  // +-inf: every lse past float's range the same way
            o.lse[(b * Hq + h) * nq + i] =
                m == 0 ? flash::neg_inf : static_cast<float>(std::isinf(top) ? top : top + std::log(sum / double(m)));
        }
      });
    }
}

/// The clusters the fast path forms for batch entry b and query head h (tests, pictures).
template <class Q, class K>
routing_clusters routing_membership(const routing& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
                                    index_t b, index_t h) {
  using G = routing_geometry<simd::wide_arch>;
  options o;
  const index_t q_floats = (routing_tiles<G>::floats(q.seq(), q.dim()) + 15) & ~index_t(15);
  scratch_lease lease;
  float* const q_tiles = static_cast<float*>(lease.reserve(
      static_cast<std::size_t>(q_floats + routing_tiles<G>::floats(k.seq(), k.dim())) * sizeof(float)));
  const index_t C = p.num_clusters, group = q.heads() / k.heads();
  const float* mu = p.centroids + h * C * q.dim();
  cluster_lists qm, km;
  route_side<G>(p, q, b, h, mu, cluster_window(p.window_q, q.seq(), C), q_tiles, o, qm);
  route_side<G>(p, k, b, h / group, mu, cluster_window(p.window_k, k.seq(), C), q_tiles + q_floats, o, km);
  routing_clusters out;
  const auto unpack = [&](const cluster_lists& l, std::vector<std::vector<index_t>>& dst) {
    dst.resize(static_cast<std::size_t>(C));
    for (index_t c = 0; c < C; ++c)
      dst[static_cast<std::size_t>(c)].assign(l.tokens.begin() + l.first[static_cast<std::size_t>(c)],
                                              l.tokens.begin() + l.first[static_cast<std::size_t>(c + 1)]);
  };
  unpack(qm, out.queries);
  unpack(km, out.keys);
  return out;
}

}  // namespace detail

namespace detail::flash {

/// The plan of routing's gathered clusters: tiles of up to Br query rows of one cluster, each
/// visiting one run, its cluster's keys, up to the row's last visible key.
template <>
struct flash_plan<cluster_blocks> {
  static constexpr bool packs_gqa = false, token_callables = false, has_score = false;
  const cluster_blocks& p;
  std::vector<std::pair<index_t, index_t>> tile_rows_;  // (first gathered row, count)
  std::vector<index_t> tile_cluster;

  flash_plan(const cluster_blocks& policy, const problem&, int br) : p(policy) {
    for (index_t c = 0; c < p.clusters; ++c)
      for (index_t r = p.query_first[c]; r < p.query_first[c + 1]; r += br) {
        tile_rows_.emplace_back(r, std::min<index_t>(br, p.query_first[c + 1] - r));
        tile_cluster.push_back(c);
      }
  }

  index_t tiles() const { return static_cast<index_t>(tile_rows_.size()); }

  template <int Br>
  void describe(index_t, index_t, index_t tile, tile_rows<Br>& t) const {
    t.clear();
    const auto [first, count] = tile_rows_[static_cast<std::size_t>(tile)];
    for (int r = 0; r < count; ++r) {
      t.set_row(r, 0, first + r);
      t.aux[5][r] = p.last_key[first + r];
      t.live[r] = p.last_key[first + r] >= 0;
      t.aux[4][r] = static_cast<std::int32_t>(tile_cluster[static_cast<std::size_t>(tile)]);
    }
  }

  template <int Br, class F>
  void for_each_run(index_t, tile_rows<Br>& t, F&& f) const {
    if (t.rows == 0) return;
    const index_t c = t.aux[4][0];
    const index_t first = p.key_first[c], count = p.key_first[c + 1] - first;
    if (count == 0) return;
    for (int r = 0; r < t.rows; ++r) t.lo[r] = 0, t.hi[r] = t.live[r] ? t.aux[5][r] : -1;
    f(key_run{first, count, 1, false});
  }
};

}  // namespace detail::flash

/// The clusters routing forms for batch entry b and query head h: per centroid, its query and
/// key tokens in increasing order (validated like attention()).
template <class Q, class K>
routing_clusters routing_membership(const routing& p, tensor_view<Q> q, tensor_view<K> k, index_t b, index_t h) {
  detail::validate(p, q.batch(), q.heads(), q.seq(), k.seq());
  detail::check_view("routing_membership", "q", q);
  detail::check_view("routing_membership", "k", k);
  detail::require(q.dim() == k.dim(), "routing_membership: k.dim() = ", k.dim(), ", expected q.dim() = ", q.dim());
  detail::require(k.heads() >= 1 && q.heads() % k.heads() == 0 && q.batch() == k.batch(),
                  "routing_membership: q and k heads or batch do not match");
  detail::require(b >= 0 && b < q.batch() && h >= 0 && h < q.heads(), "routing_membership: (b, h) = (", b, ", ", h,
                  ") out of range");
  detail::validate_centroids(p, q.heads(), q.dim());
  return detail::routing_membership(p, tensor_view<const Q>(q), tensor_view<const K>(k), b, h);
}

/// The routing vectors of query head h, normalised as p.routing_norm says: its queries over
/// the batch, then its KV head's keys over the batch, (B * Nq + B * Nk) rows of D floats (the
/// x of kmeans_init).
template <class Q, class K>
std::vector<float> routing_vectors(const routing& p, tensor_view<Q> q, tensor_view<K> k, index_t h) {
  detail::check_view("routing_vectors", "q", q);
  detail::check_view("routing_vectors", "k", k);
  detail::require(q.dim() == k.dim() && q.batch() == k.batch() && k.heads() >= 1 && q.heads() % k.heads() == 0,
                  "routing_vectors: q [B, Hq, Nq, D] and k [B, Hkv, Nk, D] do not match");
  detail::require(h >= 0 && h < q.heads(), "routing_vectors: h = ", h, ", expected in [0, ", q.heads(), ")");
  // The views are checked, so each product fits; their sum is checked.
  const index_t D = q.dim(), rows = detail::checked_add(q.batch() * q.seq(), k.batch() * k.seq(), "routing_vectors: rows");
  std::vector<float> x(static_cast<std::size_t>(detail::checked_mul(rows, D, "routing_vectors: rows * D")));
  index_t r = 0;
  for (index_t b = 0; b < q.batch(); ++b)
    for (index_t i = 0; i < q.seq(); ++i, ++r)
      detail::routing_vector(p.routing_norm, q.row(b, h, i), q.stride(dim_axis), D, x.data() + r * D);
  const index_t g = h / (q.heads() / k.heads());
  for (index_t b = 0; b < k.batch(); ++b)
    for (index_t j = 0; j < k.seq(); ++j, ++r)
      detail::routing_vector(p.routing_norm, k.row(b, g, j), k.stride(dim_axis), D, x.data() + r * D);
  return x;
}

namespace detail {

/// Each of the n rows of x (d floats) assigned to its nearest of the C centroids mu.
inline std::vector<std::int32_t> nearest_rows(const float* x, index_t n, index_t d, const float* mu, index_t clusters,
                                              int threads) {
  using G = routing_geometry<simd::wide_arch>;
  aligned_floats tiles(static_cast<std::size_t>(routing_tiles<G>::floats(n, d)));
  const routing_tiles<G> rt{tiles.data(), n, d};
  parallel_for(rt.tiles(), threads, [&](index_t t) {
    rt.pack(t, nullptr, [&](index_t token, float*) { return x + token * d; });
  });
  return nearest_centroids(rt, mu, clusters, threads);
}

/// Member counts and member sums (double, in row order) of each centroid.
inline void member_sums(const float* x, index_t n, index_t d, const std::vector<std::int32_t>& nearest, index_t clusters,
                        std::vector<double>& count, std::vector<double>& sum) {
  count.assign(static_cast<std::size_t>(clusters), 0.0);
  sum.assign(static_cast<std::size_t>(clusters * d), 0.0);
  for (index_t i = 0; i < n; ++i) {
    const auto c = static_cast<std::size_t>(nearest[static_cast<std::size_t>(i)]);
    count[c] += 1;
    for (index_t e = 0; e < d; ++e) sum[c * static_cast<std::size_t>(d) + static_cast<std::size_t>(e)] += x[i * d + e];
  }
}

}  // namespace detail

/// Initial centroids by k-means (spec/routing.md "Centroid helpers"): C rows of x (n rows of d
/// floats, normalised routing vectors) drawn with SplitMix64 from `seed`, then `iters` Lloyd
/// steps (nearest by dot product, ties to the smaller index; a centroid without members stays).
/// Writes C x d floats to `centroids`; the same seed and x give bit-identical centroids.
inline void kmeans_init(float* centroids, const float* x, index_t n, index_t d, index_t num_clusters, std::uint64_t seed,
                        int iters = 10, int threads = 0) {
  detail::require(n >= 1 && x != nullptr, "kmeans_init: n = ", n, " rows at x, expected at least one");
  detail::require(d >= 1 && d <= detail::max_head_dim, "kmeans_init: d = ", d, ", expected in [1, ", detail::max_head_dim, "]");
  detail::require(num_clusters >= 1 && num_clusters <= detail::max_sequence && centroids != nullptr,
                  "kmeans_init: num_clusters = ", num_clusters, ", expected >= 1 with non-null centroids");
  detail::require(n <= detail::max_sequence, "kmeans_init: n = ", n, ", expected at most 2^31 - 1");
  detail::require(iters >= 0, "kmeans_init: iters = ", iters, ", expected >= 0");
  detail::require(threads >= 0, "kmeans_init: threads = ", threads, ", expected >= 0");
  detail::checked_mul(num_clusters, d, "kmeans_init: num_clusters * d");
  splitmix64 rng{seed};
  const auto row_to = [&](index_t t, index_t row) { std::copy(x + row * d, x + (row + 1) * d, centroids + t * d); };
  if (n >= num_clusters) {  // a partial Fisher-Yates shuffle: C distinct rows
    std::vector<index_t> idx(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) idx[static_cast<std::size_t>(i)] = i;
    for (index_t t = 0; t < num_clusters; ++t) {
      const auto u = static_cast<index_t>(rng.next() % static_cast<std::uint64_t>(n - t));
      std::swap(idx[static_cast<std::size_t>(t)], idx[static_cast<std::size_t>(t + u)]);
      row_to(t, idx[static_cast<std::size_t>(t)]);
    }
  } else {
    for (index_t t = 0; t < num_clusters; ++t) row_to(t, static_cast<index_t>(rng.next() % static_cast<std::uint64_t>(n)));
  }
  std::vector<double> count, sum;
  for (int it = 0; it < iters; ++it) {
    detail::member_sums(x, n, d, detail::nearest_rows(x, n, d, centroids, num_clusters, threads), num_clusters, count, sum);
    for (index_t c = 0; c < num_clusters; ++c)
      if (count[static_cast<std::size_t>(c)] > 0)
        for (index_t e = 0; e < d; ++e)
          centroids[c * d + e] = static_cast<float>(sum[static_cast<std::size_t>(c * d + e)] / count[static_cast<std::size_t>(c)]);
  }
}

/// The online k-means state of routing's centroids (spec "Centroid helpers"): per query head
/// and centroid an EMA count and member sum, and the centroids they give. Point
/// routing::centroids at centroids.data().
struct routing_state {
  index_t heads = 0, clusters = 0, dim = 0;
  std::vector<float> centroids;     ///< [heads][clusters][dim]
  std::vector<double> count, sum;   ///< [heads][clusters], [heads][clusters][dim]

  routing_state() = default;
  /// count = 1, sum = mu ([heads, clusters, dim] floats).
  routing_state(const float* mu, index_t heads_, index_t clusters_, index_t dim_)
      : heads(heads_), clusters(clusters_), dim(dim_) {
    detail::require(heads >= 1 && clusters >= 1 && dim >= 1 && mu != nullptr,
                    "routing_state: heads, clusters and dim must be >= 1 and mu non-null");
    const index_t n = detail::checked_mul(detail::checked_mul(heads, clusters, "routing_state: heads * clusters"), dim,
                                          "routing_state: heads * clusters * dim");
    centroids.assign(mu, mu + n);
    count.assign(static_cast<std::size_t>(heads * clusters), 1.0);
    sum.assign(mu, mu + n);
  }
};

/// One online k-means update (spec): for each query head, its normalised queries and its KV
/// head's keys over the batch are assigned to their nearest centroid; then count = decay *
/// count + (1 - decay) * members, sum likewise, Laplace-smoothed counts
/// count'_c = (count_c + eps) / (n + C eps) * n with n = sum of counts, and centroid =
/// sum / count' (unchanged where count' is 0: decay 0 and no members).
template <class Q, class K>
void update_centroids(routing_state& s, const routing& p, tensor_view<Q> q, tensor_view<K> k, double decay = 0.999,
                      double eps = 1e-5, int threads = 0) {
  detail::require(q.heads() == s.heads && q.dim() == s.dim, "update_centroids: q has ", q.heads(), " heads of dim ",
                  q.dim(), ", the state ", s.heads, " of dim ", s.dim);
  detail::require(decay >= 0 && decay <= 1, "update_centroids: decay = ", decay, ", expected in [0, 1]");
  detail::require(eps >= 0 && std::isfinite(eps), "update_centroids: eps = ", eps, ", expected finite and >= 0");
  const index_t C = s.clusters, D = s.dim;
  std::vector<double> members, member_sum;
  for (index_t h = 0; h < s.heads; ++h) {
    const std::vector<float> x = routing_vectors(p, q, k, h);
    const index_t n = static_cast<index_t>(x.size()) / D;
    float* mu = s.centroids.data() + h * C * D;
    detail::member_sums(x.data(), n, D, detail::nearest_rows(x.data(), n, D, mu, C, threads), C, members, member_sum);
    double total = 0;
    for (index_t c = 0; c < C; ++c) {
      double& cnt = s.count[static_cast<std::size_t>(h * C + c)];
      cnt = decay * cnt + (1 - decay) * members[static_cast<std::size_t>(c)];
      total += cnt;
      for (index_t e = 0; e < D; ++e) {
        double& sm = s.sum[static_cast<std::size_t>((h * C + c) * D + e)];
        sm = decay * sm + (1 - decay) * member_sum[static_cast<std::size_t>(c * D + e)];
      }
    }
    for (index_t c = 0; c < C; ++c) {
      const double smoothed =
          (s.count[static_cast<std::size_t>(h * C + c)] + eps) / (total + static_cast<double>(C) * eps) * total;
      if (!(smoothed > 0)) continue;
      for (index_t e = 0; e < D; ++e)
        mu[c * D + e] = static_cast<float>(s.sum[static_cast<std::size_t>((h * C + c) * D + e)] / smoothed);
    }
  }
}

}  // namespace attnkit
