/// \file
/// HiP attention (Lee et al., ICLR 2025, arXiv 2406.09827): per query block, a hierarchical
/// top-k search over key blocks (halving rounds scored by each branch's centre block), then
/// attention over the selected blocks plus sink and sliding window. spec/hip.md.
///
/// Two steps, each threaded over (batch, query head, query block):
/// - hip_select: the search. Each round scores up to 2K representative blocks: the block's
///   sampled keys against the block's sampled queries, max-reduced. Many sampled queries run in
///   vector lanes (broadcast-FMA over key rows read in place); few (decode) run along the head
///   dimension with the next keys prefetched, since they are scattered rows read once.
/// - attention over a selection: the block's keys (sink and selected blocks, then the window's
///   other keys) are gathered into contiguous scratch and the flash engine's tile kernels run
///   on it; causality and the window are per-row spans of the two runs, both position-sorted.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/arena.hpp"
#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash.hpp"

namespace attnkit {

struct hip {
  index_t top_k = 512;   ///< k: tokens selected per query block
  index_t block_q = 32;  ///< b_q: queries per block
  index_t stride_q = 1;  ///< b_sq: query sampling stride inside a block, for scoring
  index_t block_k = 2;   ///< b_k: key block size (selection granularity)
  index_t stride_k = 1;  ///< b_sk: key sampling stride inside a representative block
  index_t sink = 0;      ///< leading keys always attended
  index_t window = 0;    ///< trailing keys always attended (sliding window)
  bool causal = true;    ///< bottom-right aligned causal
  float scale = 0;       ///< multiplier of q.k; 0 means 1/sqrt(D)
};

/// Which key blocks each query block of each head keeps: the result of hip_select, reusable
/// for later calls (the paper refreshes it every few decode steps). Block (b, h, query block)
/// keeps the key ranges [range_first, range_end) listed in increasing order; sink and window
/// keys are added at attention time, from the shapes of that call.
struct hip_selection {
  hip policy;
  index_t batch = 0, q_heads = 0, nq = 0, nk = 0;  ///< the shapes it was computed for
  index_t query_blocks = 0;                       ///< ceil(nq / block_q)
  index_t max_ranges = 0;                         ///< K = ceil(top_k / block_k)
  std::vector<std::int32_t> range_first, range_end;  ///< [batch][q_heads][query_blocks][max_ranges]
  std::vector<std::int32_t> ranges;               ///< how many are used, per (b, h, query block)

  index_t slot(index_t b, index_t h, index_t qb) const { return (b * q_heads + h) * query_blocks + qb; }
  /// The kept key ranges of query block qb of head h of batch entry b, as [first, end) pairs.
  std::vector<std::pair<index_t, index_t>> kept(index_t b, index_t h, index_t qb) const {
    std::vector<std::pair<index_t, index_t>> out;
    const index_t s = slot(b, h, qb);
    for (index_t r = 0; r < ranges[static_cast<std::size_t>(s)]; ++r)
      out.emplace_back(range_first[static_cast<std::size_t>(s * max_ranges + r)],
                       range_end[static_cast<std::size_t>(s * max_ranges + r)]);
    return out;
  }
};

namespace detail {

inline void validate(const hip& p, index_t, index_t, index_t, index_t) {
  validate_scale("hip", p.scale);
  require(p.top_k >= 1, "hip: top_k = ", p.top_k, ", expected >= 1");
  require(p.block_q >= 1, "hip: block_q = ", p.block_q, ", expected >= 1");
  require(p.block_k >= 1, "hip: block_k = ", p.block_k, ", expected >= 1");
  require(p.block_q <= max_sequence, "hip: block_q = ", p.block_q, ", expected at most 2^31 - 1");
  require(p.block_k <= max_sequence, "hip: block_k = ", p.block_k, ", expected at most 2^31 - 1");
  require(p.stride_q >= 1 && p.stride_q <= p.block_q, "hip: stride_q = ", p.stride_q, ", expected in [1, block_q = ",
          p.block_q, "]");
  require(p.stride_k >= 1 && p.stride_k <= p.block_k, "hip: stride_k = ", p.stride_k, ", expected in [1, block_k = ",
          p.block_k, "]");
  require(p.sink >= 0, "hip: sink = ", p.sink, ", expected >= 0");
  require(p.window >= 0, "hip: window = ", p.window, ", expected >= 0");
}

/// The search region of one query block (spec "Search region of a query block"): rows
/// [first, end); T keys visible to its last row; region [s0, s1) cut into n blocks of
/// block_k; K nodes.
struct hip_block {
  index_t first, end, T, s0, s1, n, K;

  hip_block(const hip& p, index_t nq, index_t nk, index_t qb) {
    first = qb * p.block_q;
    end = std::min(nq, first + p.block_q);
    const index_t last_pos = end - 1 + nk - nq;
    T = p.causal ? std::max<index_t>(0, std::min(nk, last_pos + 1)) : nk;
    s0 = std::min(p.sink, T);
    s1 = p.causal ? std::max(s0, T - std::min(p.window, T)) : T;
    n = ceil_div(s1 - s0, p.block_k);
    K = ceil_div(p.top_k, p.block_k);
  }
  index_t block_first(const hip& p, index_t m) const { return s0 + m * p.block_k; }
  index_t block_end(const hip& p, index_t m) const { return std::min(s1, s0 + (m + 1) * p.block_k); }
};

/// A node or candidate of the search: key blocks [a, e) and the score of its representative
/// (known once scored: a single block carried to the next round keeps its score).
struct hip_node {
  std::int32_t a, e;
  float score;
  bool known;
};
/// The spec's order: larger score first, ties by smaller start; NaN scores rank as -inf.
inline bool hip_ranks_above(const hip_node& x, const hip_node& y) {
  return x.score > y.score || (x.score == y.score && x.a < y.a);
}

template <class Arch>
using hip_lanes = flash::geometry<Arch, 2>;

/// max over lanes of v.
template <class V>
float max_of_lanes(const V& v) {
  alignas(64) float x[V::size];
  v.store_aligned(x);
  float m = x[0];
  for (std::size_t i = 1; i < V::size; ++i) m = std::max(m, x[i]);
  return m;
}

/// Scores of keys against sampled queries in lanes (G::Br per group, padding lanes repeat a
/// real query so they never change a max): score[j] = max over lanes with key_pos[j] <=
/// limit[lane] of <q, k_j>, -inf if none. Keys are row pointers (the representatives lie apart).
template <class G, int M>
ATTNKIT_ALWAYS_INLINE void score_keys_in_lanes(const float* ATTNKIT_RESTRICT qt, const std::int32_t* limit,
                                               const float* const* keys, const std::int32_t* key_pos, index_t depth,
                                               bool masked, float* score) {
  using V = typename G::V;
  using IV = simd::ivec<typename G::arch>;
  V acc[M][G::NR];
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = V(0.f);
  for (index_t c = 0; c < depth; ++c) {
    V qv[G::NR];
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) qv[n] = simd::in_register(V::load_aligned(qt + c * G::Br + n * G::W));
    ATTNKIT_UNROLL for (int m = 0; m < M; ++m) {
      const V kb(keys[m][c]);
      ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = xsimd::fma(kb, qv[n], acc[m][n]);
    }
  }
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m) {
    V best(-std::numeric_limits<float>::infinity());
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) {
      V x = acc[m][n];
      if (masked) {
        const auto visible = IV(key_pos[m]) <= IV::load_aligned(limit + n * G::W);
        x = xsimd::select(xsimd::bool_cast(visible), x, V(-std::numeric_limits<float>::infinity()));
      }
      best = xsimd::max(best, x);
    }
    score[m] = std::max(score[m], max_of_lanes(best));
  }
}

/// The sampled queries of one block, and how keys are scored against them.
struct hip_queries {
  const float* data;              // lanes: [group][depth][Br]; rows: [row][depth]
  const std::int32_t* limit;      // lanes: [group][Br]; rows: [row]: last visible key position
  index_t groups, rows, depth;
  std::int32_t min_limit;         // keys at or before it are visible to every sampled query
};

/// The few-rows form of score_keys: the R (padded) sampled queries run along the head
/// dimension, W / R keys per transposing reduction (simd::transpose_sum), and the keys, rows
/// scattered in memory, are requested `ahead` keys before they are read.
template <class Arch, int R>
void score_keys_in_rows(const hip_queries& qs, const float* const* keys, const std::int32_t* key_pos, index_t count,
                        float* score) {
  using V = simd::vec<Arch>;
  constexpr int W = static_cast<int>(V::size), KB = W / R, ahead = 32;
  constexpr int A = R <= 2 && simd::registers<Arch> == 32 ? 2 : 1;  // accumulator chains per row
  const index_t depth = qs.depth, body = depth / (A * W) * (A * W);
  const float* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = qs.data + std::min<index_t>(r, qs.rows - 1) * depth;
  for (index_t j = 0; j < count; j += KB) {
    const int in_group = static_cast<int>(std::min<index_t>(KB, count - j));
    V dots[W];
    ATTNKIT_UNROLL for (int kb = 0; kb < KB; ++kb) {
      const index_t key = j + std::min(kb, in_group - 1);  // past the end: repeat the last key
      if (key + ahead < count)
        for (index_t c = 0; c < depth; c += 64 / sizeof(float)) __builtin_prefetch(keys[key + ahead] + c, 0, 2);
      const float* kr = keys[key];
      V acc[A][R];
      ATTNKIT_UNROLL for (int a = 0; a < A; ++a)
        ATTNKIT_UNROLL for (int r = 0; r < R; ++r) acc[a][r] = V(0.f);
      for (index_t c = 0; c < body; c += A * W)
        ATTNKIT_UNROLL for (int a = 0; a < A; ++a) {
          const V kv = simd::in_register(V::load_unaligned(kr + c + a * W));
          ATTNKIT_UNROLL for (int r = 0; r < R; ++r)
            acc[a][r] = xsimd::fma(kv, V::load_unaligned(rows[r] + c + a * W), acc[a][r]);
        }
      ATTNKIT_UNROLL for (int r = 0; r < R; ++r) {
        dots[kb * R + r] = acc[0][r];
        ATTNKIT_UNROLL for (int a = 1; a < A; ++a) dots[kb * R + r] += acc[a][r];
      }
    }
    alignas(64) float sums[W];
    simd::transpose_sum<Arch>(dots).store_aligned(sums);
    for (int kb = 0; kb < in_group; ++kb) {
      const float* kr = keys[j + kb];
      for (int r = 0; r < qs.rows; ++r) {
        if (key_pos[j + kb] > qs.limit[r]) continue;
        float dot = sums[kb * R + r];
        for (index_t c = body; c < depth; ++c) dot += kr[c] * rows[r][c];
        score[j + kb] = std::max(score[j + kb], dot);
      }
    }
  }
}

/// Fills score[j] for every listed key (row pointer, position): the lanes kernel when the
/// sampled queries fill vectors, else the rows kernel (at most 4 sampled queries).
template <class G>
void score_keys(const hip_queries& qs, bool lanes, const float* const* keys, const std::int32_t* key_pos, index_t count,
                float* score) {
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  std::fill(score, score + count, minus_inf);
  if (lanes) {
    for (index_t g = 0; g < qs.groups; ++g) {
      const float* qt = qs.data + g * qs.depth * G::Br;
      const std::int32_t* limit = qs.limit + g * G::Br;
      index_t j = 0;
      const auto block = [&](auto m) {
        constexpr int M = decltype(m)::value;
        // Representatives lie apart: request the keys two blocks ahead (long sequences read
        // them from DRAM, past what the hardware prefetchers predict).
        for (index_t a = j + 2 * G::MR; a < std::min(count, j + 2 * G::MR + M); ++a)
          simd::rows_ahead{reinterpret_cast<std::uintptr_t>(keys[a]), 0, qs.depth * index_t(sizeof(float))}.rows_to_l2(0, 1);
        bool masked = false;
        for (int i = 0; i < M; ++i) masked = masked || key_pos[j + i] > qs.min_limit;
        score_keys_in_lanes<G, M>(qt, limit, keys + j, key_pos + j, qs.depth, masked, score + j);
      };
      for (; j + G::MR <= count; j += G::MR) block(std::integral_constant<int, G::MR>{});
      simd::with_count<G::MR - 1>(static_cast<int>(count - j), block);
    }
    return;
  }
  switch (qs.rows) {  // rows padded to a divisor of the vector width (padding repeats the last row)
    case 1: return score_keys_in_rows<typename G::arch, 1>(qs, keys, key_pos, count, score);
    case 2: return score_keys_in_rows<typename G::arch, 2>(qs, keys, key_pos, count, score);
    default: return score_keys_in_rows<typename G::arch, 4>(qs, keys, key_pos, count, score);
  }
}

/// Per-thread scratch of one query block's search.
struct hip_search_scratch {
  scratch_lease lease;
  float *queries, *score, *rows;  // packed sampled queries; key scores; converted key rows
  std::int32_t *limit, *key_pos;
  const float** keys;
  hip_node *nodes, *cand;
  std::int32_t* cand_key0;        // candidate c's keys are [cand_key0[c], cand_key0[c + 1])

  hip_search_scratch(index_t query_floats, index_t limits, index_t K, index_t keys_per_rep, index_t converted_floats) {
    const auto bytes = [](index_t n, std::size_t size) { return (static_cast<std::size_t>(n) * size + 63) & ~std::size_t(63); };
    const index_t max_keys = 2 * K * keys_per_rep;
    const std::size_t sizes[] = {bytes(query_floats, 4), bytes(max_keys, 4), bytes(converted_floats, 4),
                                 bytes(limits, 4),       bytes(max_keys, 4), bytes(max_keys, sizeof(float*)),
                                 bytes(K, sizeof(hip_node)), bytes(2 * K, sizeof(hip_node)), bytes(2 * K + 1, 4)};
    std::size_t total = 0;
    for (const std::size_t s : sizes) total += s;
    auto* base = static_cast<char*>(lease.reserve(total));
    const auto take = [&](std::size_t n) {
      char* at = base;
      base += n;
      return at;
    };
    queries = reinterpret_cast<float*>(take(sizes[0]));
    score = reinterpret_cast<float*>(take(sizes[1]));
    rows = reinterpret_cast<float*>(take(sizes[2]));
    limit = reinterpret_cast<std::int32_t*>(take(sizes[3]));
    key_pos = reinterpret_cast<std::int32_t*>(take(sizes[4]));
    keys = reinterpret_cast<const float**>(take(sizes[5]));
    nodes = reinterpret_cast<hip_node*>(take(sizes[6]));
    cand = reinterpret_cast<hip_node*>(take(sizes[7]));
    cand_key0 = reinterpret_cast<std::int32_t*>(take(sizes[8]));
  }
};

/// Whether k's rows are read in place as floats (else each scored key is converted first).
template <class K>
bool keys_in_place(const tensor_view<const K>& k) {
  return std::is_same_v<K, float> && k.stride(dim_axis) == 1;
}

/// The search of one query block (spec "Hierarchical selection"); writes the kept ranges.
template <class G, class Q, class Kt>
void hip_search_block(const hip& p, const tensor_view<const Q>& q, const tensor_view<const Kt>& k, index_t b, index_t h,
                      index_t qb, hip_selection& sel) {
  const index_t nq = q.seq(), nk = k.seq(), D = q.dim(), hk = h / (q.heads() / k.heads());
  const hip_block blk(p, nq, nk, qb);
  const index_t slot = sel.slot(b, h, qb);
  std::int32_t* first_out = sel.range_first.data() + slot * sel.max_ranges;
  std::int32_t* end_out = sel.range_end.data() + slot * sel.max_ranges;
  index_t kept = 0;
  const auto keep_blocks = [&](index_t m0, index_t m1) {  // blocks [m0, m1) as one range each
    for (index_t m = m0; m < m1; ++m, ++kept)
      first_out[kept] = static_cast<std::int32_t>(blk.block_first(p, m)),
      end_out[kept] = static_cast<std::int32_t>(blk.block_end(p, m));
  };
  if (blk.n <= blk.K) {
    keep_blocks(0, blk.n);
    sel.ranges[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(kept);
    return;
  }

  // Sampled queries, and the last key each may see.
  const index_t sampled = ceil_div(blk.end - blk.first, p.stride_q);
  const bool lanes = sampled > 4;
  const index_t groups = ceil_div(sampled, G::Br);
  const index_t keys_per_rep = ceil_div(p.block_k, p.stride_k);
  const index_t K = blk.K;
  hip_search_scratch sc(lanes ? groups * D * G::Br : sampled * D, lanes ? groups * G::Br : sampled, K, keys_per_rep,
                        keys_in_place(k) ? 0 : 2 * K * keys_per_rep * D);
  std::int32_t min_limit = std::numeric_limits<std::int32_t>::max();
  scratch_lease row_lease;
  float* row = static_cast<float*>(row_lease.reserve(static_cast<std::size_t>(D) * sizeof(float)));
  for (index_t a = 0; a < (lanes ? groups * G::Br : sampled); ++a) {
    const index_t i = blk.first + std::min(a, sampled - 1) * p.stride_q;  // padding lanes repeat the last query
    const index_t limit = p.causal ? i + nk - nq : nk;
    sc.limit[a] = static_cast<std::int32_t>(std::min<index_t>(limit, std::numeric_limits<std::int32_t>::max()));
    min_limit = std::min(min_limit, sc.limit[a]);
    simd::to_float_row(q.row(b, h, i), q.stride(dim_axis), D, row);
    if (lanes) {
      float* dst = sc.queries + (a / G::Br) * D * G::Br + a % G::Br;
      for (index_t c = 0; c < D; ++c) dst[c * G::Br] = row[c];
    } else {
      std::copy(row, row + D, sc.queries + a * D);
    }
  }
  const hip_queries qs{sc.queries, sc.limit, groups, sampled, D, min_limit};

  // Scores the listed candidates' representatives (the centre block, its sampled keys).
  const auto score_candidates = [&](hip_node* cand, index_t count) {
    index_t nkeys = 0;
    for (index_t c = 0; c < count; ++c) {
      sc.cand_key0[c] = static_cast<std::int32_t>(nkeys);
      const index_t rep = cand[c].a + (cand[c].e - cand[c].a) / 2;
      for (index_t j = blk.block_first(p, rep); j < blk.block_end(p, rep); j += p.stride_k, ++nkeys) {
        sc.key_pos[nkeys] = static_cast<std::int32_t>(j);
        if (keys_in_place(k)) {
          sc.keys[nkeys] = reinterpret_cast<const float*>(k.row(b, hk, j));
        } else {
          simd::to_float_row(k.row(b, hk, j), k.stride(dim_axis), D, sc.rows + nkeys * D);
          sc.keys[nkeys] = sc.rows + nkeys * D;
        }
      }
    }
    sc.cand_key0[count] = static_cast<std::int32_t>(nkeys);
    score_keys<G>(qs, lanes, sc.keys, sc.key_pos, nkeys, sc.score);
    for (index_t c = 0; c < count; ++c) {
      float s = -std::numeric_limits<float>::infinity();
      for (index_t j = sc.cand_key0[c]; j < sc.cand_key0[c + 1]; ++j) s = std::max(s, sc.score[j]);  // NaN: -inf
      cand[c].score = s, cand[c].known = true;
    }
  };

  for (index_t t = 0; t < K; ++t)
    sc.nodes[t] = {static_cast<std::int32_t>(t * blk.n / K), static_cast<std::int32_t>((t + 1) * blk.n / K), 0.f, false};
  for (;;) {
    // Branches of every node wider than one block; single blocks pass through with their score.
    index_t count = 0, fresh = 0;
    bool split = false;
    for (index_t t = 0; t < K; ++t) split = split || sc.nodes[t].e - sc.nodes[t].a > 1;
    if (!split) break;
    // Candidates to score first (branches, and single blocks not scored yet), then those
    // carried with their score; the selection below does not depend on this order.
    for (index_t t = 0; t < K; ++t) {
      const hip_node nd = sc.nodes[t];
      if (nd.e - nd.a == 1) {
        if (!nd.known) sc.cand[count++] = nd;
        continue;
      }
      const std::int32_t mid = nd.a + (nd.e - nd.a) / 2;
      sc.cand[count++] = {nd.a, mid, 0.f, false};
      sc.cand[count++] = {mid, nd.e, 0.f, false};
    }
    fresh = count;
    for (index_t t = 0; t < K; ++t)
      if (sc.nodes[t].e - sc.nodes[t].a == 1 && sc.nodes[t].known) sc.cand[count++] = sc.nodes[t];
    score_candidates(sc.cand, fresh);
    std::nth_element(sc.cand, sc.cand + K - 1, sc.cand + count, hip_ranks_above);  // the order of nodes is free
    std::copy(sc.cand, sc.cand + K, sc.nodes);
  }
  std::sort(sc.nodes, sc.nodes + K, [](const hip_node& x, const hip_node& y) { return x.a < y.a; });
  for (index_t t = 0; t < K; ++t) keep_blocks(sc.nodes[t].a, sc.nodes[t].a + 1);
  sel.ranges[static_cast<std::size_t>(slot)] = static_cast<std::int32_t>(kept);
}

/// hip_select on validated inputs.
template <class Q, class K>
hip_selection select_hip(const hip& p, const tensor_view<const Q>& q, const tensor_view<const K>& k, int threads) {
  hip_selection sel;
  sel.policy = p;
  sel.batch = q.batch(), sel.q_heads = q.heads(), sel.nq = q.seq(), sel.nk = k.seq();
  sel.query_blocks = ceil_div(q.seq(), p.block_q);
  sel.max_ranges = std::min(ceil_div(p.top_k, p.block_k), std::max<index_t>(1, ceil_div(k.seq(), p.block_k)));
  const index_t slots = checked_mul(sel.batch * sel.q_heads, sel.query_blocks, "hip: batch * heads * query blocks");
  const index_t entries = checked_mul(slots, sel.max_ranges, "hip: selection entries");
  sel.range_first.assign(static_cast<std::size_t>(entries), 0);
  sel.range_end.assign(static_cast<std::size_t>(entries), 0);
  sel.ranges.assign(static_cast<std::size_t>(slots), 0);
  using G = hip_lanes<simd::wide_arch>;
  parallel_for(slots, threads, [&](index_t s) {
    const index_t qb = s % sel.query_blocks, bh = s / sel.query_blocks;
    hip_search_block<G>(p, q, k, bh / sel.q_heads, bh % sel.q_heads, qb, sel);
  });
  return sel;
}

/// The keys one query block attends to, position-sorted, in two runs: A = sink and kept
/// ranges (row i keeps those <= its position: a prefix), B = the window's other keys (row i
/// keeps an interval of them).
struct hip_keys {
  std::int32_t* tokens;  // run A then run B
  index_t in_a = 0, in_b = 0;
};

/// Builds the key runs of query block qb of head (b, h) for a selection, on nk keys.
inline void hip_block_keys(const hip_selection& sel, index_t b, index_t h, index_t qb, index_t nq, index_t nk,
                           hip_keys& keys) {
  const hip& p = sel.policy;
  const hip_block blk(p, nq, nk, qb);
  index_t n = 0;
  for (index_t j = 0; j < blk.s0; ++j) keys.tokens[n++] = static_cast<std::int32_t>(j);
  const index_t slot = sel.slot(b, h, qb);
  for (index_t r = 0; r < sel.ranges[static_cast<std::size_t>(slot)]; ++r) {
    const index_t first = std::max<index_t>(sel.range_first[static_cast<std::size_t>(slot * sel.max_ranges + r)], blk.s0);
    const index_t end = std::min<index_t>(sel.range_end[static_cast<std::size_t>(slot * sel.max_ranges + r)], nk);
    for (index_t j = first; j < end; ++j) keys.tokens[n++] = static_cast<std::int32_t>(j);
  }
  keys.in_a = n;
  if (p.window > 0) {
    // The union of the rows' windows: [first row's start, last row's end], minus run A.
    const index_t first_pos = blk.first + (p.causal ? nk - nq : 0), last_pos = blk.end - 1 + (p.causal ? nk - nq : 0);
    const index_t lo = std::max<index_t>(0, saturating_add(first_pos, 1 - p.window));
    const index_t hi = std::min<index_t>(nk - 1, p.causal ? last_pos : saturating_add(last_pos, p.window - 1));
    index_t a = 0;
    for (index_t j = lo; j <= hi; ++j) {
      while (a < keys.in_a && keys.tokens[a] < j) ++a;
      if (a < keys.in_a && keys.tokens[a] == j) continue;
      keys.tokens[n++] = static_cast<std::int32_t>(j);
    }
  }
  keys.in_b = n - keys.in_a;
}

/// Most keys one query block can attend to under a selection (the scratch it needs).
inline index_t hip_max_keys(const hip_selection& sel, index_t nk) {
  const hip& p = sel.policy;
  const index_t selected = checked_mul(sel.max_ranges, p.block_k, "hip: kept keys");
  const index_t window = saturating_add(saturating_add(p.window, p.window), p.block_q);
  return std::min(nk, saturating_add(saturating_add(std::min(p.sink, nk), selected), window));
}

}  // namespace detail

namespace detail::flash {

/// The plan of one query block over its gathered keys (rows of one head, runs A and B of
/// hip_keys at positions [0, in_a) and [in_a, in_a + in_b) of the scratch).
struct hip_tile {
  const hip* p;
  const hip_keys* keys;
  index_t first_row, rows, head, shift;  // shift: key position of query i is i + shift
};

template <>
struct flash_plan<hip_tile> {
  static constexpr bool packs_gqa = false, token_callables = false, has_score = false;
  const hip_tile& tile;

  flash_plan(const hip_tile& t, const problem&, int) : tile(t) {}
  index_t tiles() const { return 1; }

  template <int Br>
  void describe(index_t, index_t, index_t, tile_rows<Br>& t) const {
    t.clear();
    for (int r = 0; r < tile.rows; ++r) t.set_row(r, tile.head, tile.first_row + r);
  }

  template <int Br, class F>
  void for_each_run(index_t, tile_rows<Br>& t, F&& f) const {
    const hip& p = *tile.p;
    const std::int32_t* a = tile.keys->tokens;
    const std::int32_t* b = a + tile.keys->in_a;
    const index_t in_a = tile.keys->in_a, in_b = tile.keys->in_b;
    const auto position = [&](int r) { return t.query[r] + tile.shift; };
    if (in_a > 0) {
      for (int r = 0; r < t.rows; ++r) {
        t.lo[r] = 0;
        t.hi[r] = p.causal ? static_cast<std::int32_t>(std::upper_bound(a, a + in_a, position(r)) - a - 1)
                           : static_cast<std::int32_t>(in_a - 1);
      }
      f(key_run{0, in_a, 1, false});
    }
    if (in_b > 0) {
      for (int r = 0; r < t.rows; ++r) {
        const index_t pos = position(r);
        const index_t lo = saturating_add(pos, 1 - p.window), hi = p.causal ? pos : saturating_add(pos, p.window - 1);
        t.lo[r] = static_cast<std::int32_t>(std::lower_bound(b, b + in_b, lo) - b);
        t.hi[r] = static_cast<std::int32_t>(std::upper_bound(b, b + in_b, hi) - b - 1);
      }
      f(key_run{in_a, in_b, 1, false});
    }
  }
};

/// Attention of one query block over its gathered keys, rows in tiles of G::Br.
template <class G, class Q, class K, class Vt, class O>
void hip_attend_block(const hip_selection& sel, const problem& pb, const tensor_view<const Q>& q,
                      const tensor_view<const K>& k, const tensor_view<const Vt>& v, const tensor_view<O>& out,
                      const options& o, index_t b, index_t h, index_t qb) {
  const hip& p = sel.policy;
  const index_t hk = h / pb.group, max_keys = hip_max_keys(sel, pb.nk);
  scratch_lease lease;
  const auto aligned = [](index_t n) { return static_cast<std::size_t>((n + 15) & ~index_t(15)); };
  float* base = static_cast<float*>(lease.reserve(sizeof(float) * (aligned(max_keys) + aligned(max_keys * pb.d) +
                                                                   aligned(max_keys * pb.dv))));
  hip_keys keys{reinterpret_cast<std::int32_t*>(base)};
  hip_block_keys(sel, b, h, qb, pb.nq, pb.nk, keys);
  float* kg = base + aligned(max_keys);
  float* vg = kg + aligned(max_keys * pb.d);
  const index_t total = keys.in_a + keys.in_b;
  constexpr index_t ahead = 16;  // rows requested before they are copied: kept blocks lie apart
  for (index_t j = 0; j < total; ++j) {
    if (j + ahead < total) {
      simd::rows_ahead{reinterpret_cast<std::uintptr_t>(k.row(b, hk, keys.tokens[j + ahead])), 0,
                       pb.d * static_cast<index_t>(sizeof(K))}.rows_to_l2(0, 1);
      simd::rows_ahead{reinterpret_cast<std::uintptr_t>(v.row(b, hk, keys.tokens[j + ahead])), 0,
                       pb.dv * static_cast<index_t>(sizeof(Vt))}.rows_to_l2(0, 1);
    }
    simd::to_float_row(k.row(b, hk, keys.tokens[j]), k.stride(dim_axis), pb.d, kg + j * pb.d);
    simd::to_float_row(v.row(b, hk, keys.tokens[j]), v.stride(dim_axis), pb.dv, vg + j * pb.dv);
  }
  // One batch entry, one KV head: the gathered keys; q, out and lse are sliced at batch b.
  const auto slice = [&](const auto& t) {
    using T = typename std::remove_reference_t<decltype(t)>::element_type;
    return tensor_view<T>(t.row(b, 0, 0), {1, t.heads(), t.seq(), t.dim()},
                          {t.stride(0), t.stride(1), t.stride(2), t.stride(3)});
  };
  const auto kv = view_bhsd(static_cast<const float*>(kg), 1, 1, std::max<index_t>(total, 1), pb.d);
  const auto vv = view_bhsd(static_cast<const float*>(vg), 1, 1, std::max<index_t>(total, 1), pb.dv);
  options ob = o;
  if (o.lse) ob.lse = o.lse + b * pb.q_heads * pb.nq;
  problem one = pb;
  one.batch = 1, one.kv_heads = 1, one.group = pb.q_heads;
  const hip_block blk(p, pb.nq, pb.nk, qb);
  for (index_t r0 = blk.first; r0 < blk.end; r0 += G::Br) {
    const hip_tile tile{&p, &keys, r0, std::min<index_t>(G::Br, blk.end - r0), h, p.causal ? pb.nk - pb.nq : 0};
    const flash_plan<hip_tile> plan(tile, one, G::Br);
    typename G::rows t;
    plan.describe(0, 0, 0, t);
    const scratch<G> sc(one);
    running<G> st;
    process_tile<G, false, false>(plan, one, t, slice(q), kv, vv, 0, 0, 0, total, sc, st);
    write_tile<G>(plan, one, t, slice(q), kv, vv, 0, 0, 0, total, sc, st, slice(out), ob);
  }
}

}  // namespace detail::flash

namespace detail {

/// Checks a selection's own consistency (it is a plain struct a caller may have edited): sizes
/// that match its shapes, and per entry at most max_ranges ranges, increasing, disjoint, each
/// within [0, nk) and at most block_k keys long.
inline void check_selection(const hip_selection& s) {
  validate(s.policy, s.batch, s.q_heads, s.nq, s.nk);
  require(s.batch >= 0 && s.q_heads >= 0 && s.nq >= 0 && s.nk >= 0 && s.nq <= max_sequence && s.nk <= max_sequence &&
              s.max_ranges >= 0,
          "hip_selection: negative or oversized shapes");
  const index_t slots = checked_mul(checked_mul(s.batch, s.q_heads, "hip_selection: batch * q_heads"), s.query_blocks,
                                    "hip_selection: slots");
  require(s.query_blocks == ceil_div(s.nq, s.policy.block_q) && static_cast<index_t>(s.ranges.size()) == slots &&
              static_cast<index_t>(s.range_first.size()) ==
                  checked_mul(slots, s.max_ranges, "hip_selection: slots * max_ranges") &&
              s.range_first.size() == s.range_end.size(),
          "hip_selection: inconsistent sizes");
  for (index_t e = 0; e < slots; ++e) {
    const std::int32_t used = s.ranges[static_cast<std::size_t>(e)];
    require(used >= 0 && used <= s.max_ranges, "hip_selection: ranges[", e, "] = ", used, ", expected in [0, ",
            s.max_ranges, "]");
    std::int32_t previous_end = 0;
    for (index_t r = 0; r < used; ++r) {
      const std::int32_t first = s.range_first[static_cast<std::size_t>(e * s.max_ranges + r)],
                         end = s.range_end[static_cast<std::size_t>(e * s.max_ranges + r)];
      require(first >= previous_end && end > first && end <= s.nk && end - first <= s.policy.block_k,
              "hip_selection: range ", r, " of entry ", e, " is [", first, ", ", end,
              "), expected increasing, disjoint, within [0, ", s.nk, ") and at most block_k = ", s.policy.block_k,
              " keys");
      previous_end = end;
    }
  }
}

/// Checks that a selection fits the call: same batch, heads and queries, and at least as many
/// keys as it was computed for (decode appends keys).
template <class Q, class K>
void check_selection(const hip_selection& s, const tensor_view<Q>& q, const tensor_view<K>& k) {
  require(s.batch == q.batch() && s.q_heads == q.heads(), "hip_selection: made for batch ", s.batch, " and ",
          s.q_heads, " query heads, used with ", q.batch(), " and ", q.heads());
  require(s.nq == q.seq(), "hip_selection: made for ", s.nq, " queries, used with q.seq() = ", q.seq());
  require(k.seq() >= s.nk, "hip_selection: made for ", s.nk, " keys, used with k.seq() = ", k.seq(), " (fewer)");
  check_selection(s);
}

/// HiP attention over a selection, on validated views.
template <class Q, class K, class Vt, class O>
void attend_hip(const hip_selection& sel, const tensor_view<const Q>& q, const tensor_view<const K>& k,
                const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  flash::problem pb{};
  pb.batch = q.batch(), pb.q_heads = q.heads(), pb.kv_heads = k.heads(), pb.group = q.heads() / k.heads();
  pb.nq = q.seq(), pb.nk = k.seq(), pb.d = q.dim(), pb.dv = v.dim();
  pb.rows_per_group = pb.group * pb.nq;
  pb.scale = effective_scale(sel.policy.scale, pb.d);
  pb.scale2 = pb.scale * flash::log2e;
  if (pb.batch == 0 || pb.nq == 0) return;
  using few_rows = flash::geometry<simd::narrow_arch, 1, false>;
  using lanes = hip_lanes<simd::wide_arch>;
  const index_t slots = pb.batch * pb.q_heads * sel.query_blocks;
  const bool few = std::min(sel.policy.block_q, pb.nq) <= few_rows::Br;
  parallel_for(slots, o.threads, [&](index_t s) {
    const index_t qb = s % sel.query_blocks, bh = s / sel.query_blocks;
    if (few)
      flash::hip_attend_block<few_rows>(sel, pb, q, k, v, out, o, bh / pb.q_heads, bh % pb.q_heads, qb);
    else
      flash::hip_attend_block<lanes>(sel, pb, q, k, v, out, o, bh / pb.q_heads, bh % pb.q_heads, qb);
  });
}

template <class Q, class K, class Vt, class O>
void run_hip(const hip& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
             const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  if (q.batch() == 0 || q.seq() == 0) return;
  attend_hip(select_hip(p, q, k, o.threads), q, k, v, out, o);
}

}  // namespace detail

/// HiP's search alone: which key blocks each query block of each head keeps, for q and k
/// (validated like attention(); v is not needed). Run attention with it (attention(selection,
/// q, k, v, out)) as often as it stays valid, e.g. over the next few decode steps.
template <class Q, class K>
hip_selection hip_select(const hip& p, tensor_view<Q> q, tensor_view<K> k, const options& o = {}) {
  detail::validate(p, q.batch(), q.heads(), q.seq(), k.seq());
  detail::check_view("hip_select", "q", q);
  detail::check_view("hip_select", "k", k);
  detail::require(q.batch() == k.batch(), "hip_select: k.batch() = ", k.batch(), ", expected q.batch() = ", q.batch());
  detail::require(q.dim() == k.dim(), "hip_select: k.dim() = ", k.dim(), ", expected q.dim() = ", q.dim());
  detail::require(q.dim() <= detail::max_head_dim, "hip_select: q.dim() = ", q.dim(), ", expected at most ",
                  detail::max_head_dim);
  detail::require(k.heads() >= 1 && q.heads() % k.heads() == 0, "hip_select: q.heads() = ", q.heads(),
                  ", expected a multiple of k.heads() = ", k.heads());
  detail::require(q.seq() <= detail::max_sequence && k.seq() <= detail::max_sequence,
                  "hip_select: sequences longer than 2^31 - 1");
  detail::require(o.threads >= 0, "hip_select: options::threads = ", o.threads, ", expected >= 0");
  return detail::select_hip(p, tensor_view<const Q>(q), tensor_view<const K>(k), o.threads);
}

/// HiP attention over a selection made by hip_select (for the same batch, heads and queries,
/// and at most as many keys as now).
template <class Q, class K, class V, class O, class Space>
void attention(const hip_selection& s, tensor_view<Q, Space> q, tensor_view<K, Space> k, tensor_view<V, Space> v,
               tensor_view<O, Space> out, const options& o = {}) {
  static_assert(std::is_same_v<Space, host>, "attnkit: no CUDA specialisation exists yet for HiP");
  detail::check_shapes(q, k, v, out, o);
  detail::check_selection(s, q, k);
  detail::attend_hip(s, tensor_view<const Q>(q), tensor_view<const K>(k), tensor_view<const V>(v), out, o);
}

/// The keys each query of batch entry b, query head h attends to under a selection, on the
/// keys it was made for (row-major nq x nk bytes, 1 = attends): sink, kept blocks and window,
/// causally clipped.
inline std::vector<std::uint8_t> dense_mask(const hip_selection& s, index_t b, index_t h) {
  detail::check_selection(s);
  const index_t nq = s.nq, nk = s.nk;
  std::vector<std::uint8_t> mask(detail::mask_elements(nq, nk), 0);
  detail::require(b >= 0 && b < s.batch && h >= 0 && h < s.q_heads, "dense_mask: (b, h) = (", b, ", ", h,
                  ") out of range");
  detail::scratch_lease lease;
  detail::hip_keys keys{static_cast<std::int32_t*>(
      lease.reserve(sizeof(std::int32_t) * static_cast<std::size_t>(std::max<index_t>(1, detail::hip_max_keys(s, nk)))))};
  const hip& p = s.policy;
  for (index_t qb = 0; qb < s.query_blocks; ++qb) {
    detail::hip_block_keys(s, b, h, qb, nq, nk, keys);
    const detail::hip_block blk(p, nq, nk, qb);
    for (index_t i = blk.first; i < blk.end; ++i) {
      const index_t pos = i + (p.causal ? nk - nq : 0);
      for (index_t e = 0; e < keys.in_a + keys.in_b; ++e) {
        const index_t j = keys.tokens[e];
        const bool in_window =
            e < keys.in_a || (j >= detail::saturating_add(pos, 1 - p.window) &&
                              (p.causal ? j <= pos : j <= detail::saturating_add(pos, p.window - 1)));
        if (in_window && (!p.causal || j <= pos)) mask[static_cast<std::size_t>(i * nk + j)] = 1;
      }
    }
  }
  return mask;
}

/// The keys each query of batch entry b, query head h attends to under HiP for these q and k
/// (row-major nq x nk bytes, 1 = attends): the fast path's own search (tests, pictures).
template <class Q, class K>
std::vector<std::uint8_t> dense_mask(const hip& p, tensor_view<Q> q, tensor_view<K> k, index_t b = 0, index_t h = 0) {
  return dense_mask(hip_select(p, q, k), b, h);
}

}  // namespace attnkit
