/// \file
/// Float64 reference of HiP attention, written from spec/hip.md ("Search region of a query
/// block", "Block score", "Hierarchical selection", "Key set and output"): the selection runs
/// literally, one query block at a time, then each row's key set S(i) goes through the shared
/// masked-softmax loop. It shares no code with the fast path in variants/hip.hpp or with the
/// flash engine, so tests can compare them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../core/checked.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/hip.hpp"
#include "masked.hpp"

namespace attnkit::reference::detail {

/// The outcome of the search for one query block: its queries, its search region [s0, s1) and
/// the selected key blocks m (block m = tokens [s0 + m*b_k, min(s0 + (m+1)*b_k, s1))), ascending.
struct hip_block_selection {
  index_t first_query = 0, end_query = 0;
  index_t s0 = 0, s1 = 0;
  std::vector<index_t> blocks;
};

/// ceil(a / b) for a >= 0, b > 0.
inline index_t hip_ceil_div(index_t a, index_t b) { return a / b + (a % b != 0 ? 1 : 0); }

/// The spec's selection for query block `beta` of batch entry b, query head h.
template <class Q, class K>
hip_block_selection hip_select_block(const attnkit::hip& p, tensor_view<const Q> q, tensor_view<const K> k,
                                     index_t b, index_t h, index_t beta) {
  using attnkit::detail::to_float;
  const index_t nq = q.seq(), nk = k.seq(), dim = q.dim();
  const index_t kv_head = h / (q.heads() / k.heads());
  const index_t shift = nk - nq;  // bottom-right alignment: p_i = i + shift

  hip_block_selection sel;
  sel.first_query = beta * p.block_q;
  sel.end_query = std::min(sel.first_query + p.block_q, nq);

  // Search region; T = min(Nk, max_i p_i + 1) when causal, with max_i p_i = p of the block's last
  // query. T is clamped at 0: with causal and Nq > Nk a whole block can precede every key, and
  // then s0 = s1 = 0 (no region, no sink) instead of negative bounds.
  const index_t t = p.causal ? std::max<index_t>(0, std::min(nk, sel.end_query + shift)) : nk;
  sel.s0 = std::min(p.sink, t);
  sel.s1 = p.causal ? std::max(sel.s0, t - p.window) : t;
  const index_t n = hip_ceil_div(sel.s1 - sel.s0, p.block_k);
  const index_t kept = hip_ceil_div(p.top_k, p.block_k);  // K of the spec

  if (n <= kept) {
    for (index_t m = 0; m < n; ++m) sel.blocks.push_back(m);
    return sel;
  }

  // score(m), computed on first use: representatives repeat across rounds.
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> score(static_cast<std::size_t>(n), neg_inf);
  std::vector<bool> scored(static_cast<std::size_t>(n), false);
  const auto block_score = [&](index_t m) {
    if (scored[static_cast<std::size_t>(m)]) return score[static_cast<std::size_t>(m)];
    const index_t key_begin = sel.s0 + m * p.block_k;
    const index_t key_end = std::min(key_begin + p.block_k, sel.s1);
    double best = neg_inf;  // stays -inf when no sampled pair is causally valid
    for (index_t i = sel.first_query; i < sel.end_query; i += p.stride_q)
      for (index_t j = key_begin; j < key_end; j += p.stride_k) {
        if (p.causal && j > i + shift) continue;
        double dot = 0;
        for (index_t d = 0; d < dim; ++d)
          dot += static_cast<double>(to_float(q(b, h, i, d))) * static_cast<double>(to_float(k(b, kv_head, j, d)));
        if (dot > best) best = dot;  // a NaN product never wins, so scores are never NaN
      }
    scored[static_cast<std::size_t>(m)] = true;
    score[static_cast<std::size_t>(m)] = best;
    return best;
  };

  struct node {
    index_t start, end;  // [start, end) in key blocks
  };
  std::vector<node> nodes;
  for (index_t s = 0; s < kept; ++s) nodes.push_back({s * n / kept, (s + 1) * n / kept});

  const auto is_split = [](const node& x) { return x.end - x.start > 1; };
  std::vector<node> candidates;
  std::vector<double> candidate_key;
  std::vector<std::size_t> order;
  while (std::any_of(nodes.begin(), nodes.end(), is_split)) {
    candidates.clear();
    for (const node& x : nodes) {
      if (!is_split(x)) {
        candidates.push_back(x);
      } else {
        const index_t mid = x.start + (x.end - x.start) / 2;
        candidates.push_back({x.start, mid});
        candidates.push_back({mid, x.end});
      }
    }
    candidate_key.clear();
    for (const node& x : candidates) candidate_key.push_back(block_score(x.start + (x.end - x.start) / 2));

    // the K candidates with the largest key; ties: smaller start first
    order.resize(candidates.size());
    for (std::size_t c = 0; c < order.size(); ++c) order[c] = c;
    std::sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
      if (candidate_key[x] != candidate_key[y]) return candidate_key[x] > candidate_key[y];
      return candidates[x].start < candidates[y].start;
    });
    std::vector<node> next;
    for (index_t c = 0; c < kept; ++c) next.push_back(candidates[order[static_cast<std::size_t>(c)]]);
    nodes.swap(next);
  }

  for (const node& x : nodes) sel.blocks.push_back(x.start);
  std::sort(sel.blocks.begin(), sel.blocks.end());
  return sel;
}

/// The selections of every query block of batch entry b, query head h.
template <class Q, class K>
std::vector<hip_block_selection> hip_select_all(const attnkit::hip& p, tensor_view<const Q> q,
                                                tensor_view<const K> k, index_t b, index_t h) {
  std::vector<hip_block_selection> all;
  const index_t query_blocks = hip_ceil_div(q.seq(), p.block_q);
  for (index_t beta = 0; beta < query_blocks; ++beta) all.push_back(detail::hip_select_block(p, q, k, b, h, beta));
  return all;
}

/// Appends S(i) of query row i (whose block's selection is `sel`) to `keys`, in increasing order.
inline void hip_row_keys(const attnkit::hip& p, const hip_block_selection& sel, index_t i, index_t nq, index_t nk,
                         std::vector<index_t>& keys) {
  std::vector<bool> in_set(static_cast<std::size_t>(nk), false);  // the union counts each key once
  const auto mark = [&](index_t first, index_t end) {
    for (index_t j = std::max<index_t>(first, 0); j < std::min(end, nk); ++j) in_set[static_cast<std::size_t>(j)] = true;
  };
  const index_t pos = i + nk - nq;
  mark(0, sel.s0);
  for (const index_t m : sel.blocks) {
    const index_t first = sel.s0 + m * p.block_k;
    mark(first, first + std::min(p.block_k, sel.s1 - first));  // b_k may be near 2^63
  }
  // the window may be near 2^63 (unbounded): saturate its ends
  using attnkit::detail::saturating_add;
  if (p.causal)
    mark(saturating_add(pos, 1 - p.window), pos + 1);
  else
    mark(saturating_add(i, 1 - p.window), saturating_add(i, p.window));  // |j - i| < window

  const index_t last = p.causal ? pos : nk - 1;  // pos <= Nk - 1 always
  for (index_t j = 0; j <= last; ++j)
    if (in_set[static_cast<std::size_t>(j)]) keys.push_back(j);
}

}  // namespace attnkit::reference::detail

namespace attnkit::reference {

/// The key sets S(i) of batch entry b, query head h as Nq * Nk bytes, row-major; 1 = attends.
template <class Q, class K>
std::vector<std::uint8_t> hip_mask(const attnkit::hip& p, tensor_view<const Q> q, tensor_view<const K> k, index_t b,
                                   index_t h) {
  const index_t nq = q.seq(), nk = k.seq();
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(nq * nk), 0);
  const std::vector<detail::hip_block_selection> sel = detail::hip_select_all(p, q, k, b, h);
  std::vector<index_t> keys;
  for (index_t i = 0; i < nq; ++i) {
    keys.clear();
    detail::hip_row_keys(p, sel[static_cast<std::size_t>(i / p.block_q)], i, nq, nk, keys);
    for (const index_t j : keys) mask[static_cast<std::size_t>(i * nk + j)] = 1;
  }
  return mask;
}

/// Per query block of batch entry b, query head h: the first token (s0 + m * b_k) of each
/// selected key block, ascending. Sink and window keys are not listed.
template <class Q, class K>
std::vector<std::vector<index_t>> hip_selected_blocks(const attnkit::hip& p, tensor_view<const Q> q,
                                                      tensor_view<const K> k, index_t b, index_t h) {
  std::vector<std::vector<index_t>> starts;
  for (const detail::hip_block_selection& sel : detail::hip_select_all(p, q, k, b, h)) {
    std::vector<index_t> block_starts;
    for (const index_t m : sel.blocks) block_starts.push_back(sel.s0 + m * p.block_k);
    starts.push_back(std::move(block_starts));
  }
  return starts;
}

}  // namespace attnkit::reference

namespace attnkit::reference::detail {

/// HiP attention in float64: the spec's selection per (b, h, query block), then softmax over
/// each row's S(i). Rows with no key get zeros and lse = -inf. Shapes are assumed checked.
template <class Q, class K, class V, class O>
void run(const attnkit::hip& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  const index_t nq = q.seq(), nk = k.seq();
  // run_rows visits (b, h) pairs in order: select once per pair, on its first row.
  index_t selected_b = -1, selected_h = -1;
  std::vector<hip_block_selection> selections;
  run_rows(
      p.scale,
      [&](index_t b, index_t h, index_t i, std::vector<index_t>& keys) {
        if (b != selected_b || h != selected_h) {
          selections = detail::hip_select_all(p, q, k, b, h);
          selected_b = b;
          selected_h = h;
        }
        detail::hip_row_keys(p, selections[static_cast<std::size_t>(i / p.block_q)], i, nq, nk, keys);
      },
      keep_score{}, q, k, v, out, o);
}

}  // namespace attnkit::reference::detail
