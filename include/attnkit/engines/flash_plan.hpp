/// \file
/// What the flash engine asks of a variant: its plan. The engine runs query tiles (up to Br
/// query rows) over key runs; a variant's plan, `flash_plan<Policy>` (in the variant's own
/// header), says which rows make up each tile and which key runs the tile visits, and for
/// each run which keys every row keeps (an interval of run positions). A chunk of a run that
/// every row keeps entirely is *full* and runs the dense micro-kernels unmasked; any other
/// chunk is *partial* and masked per token. A plan provides:
///
///   flash_plan(const Policy&, const problem&, int br)   built once per call
///   static constexpr bool packs_gqa                  rows of one tile may mix the heads of a GQA group
///   static constexpr bool token_callables            keep() is evaluated per token in runs marked
///                                                    token_mask (custom)
///   static constexpr bool has_score                  score() transforms every score (custom)
///   index_t tiles() const                            query tiles per (batch, KV head)
///   void describe(b, hkv, tile, tile_rows<Br>&) const      the tile's rows
///   void for_each_run(b, tile_rows<Br>&, f) const    for each run: writes the rows' spans into
///                                                    lo/hi, then calls f(const key_run&)
/// and optionally (detected, see flash.hpp):
///   static constexpr bool softmax_scores             scores take softmax's soft-cap and ALiBi steps;
///                                                    static softmax fields(const Policy&) gives them
///   static constexpr bool score_steps                with_step<G>(t, b, chunk, f) calls f(step) with
///                                                    the chunk's score step (bias, normaliser)
///   static constexpr bool finishes_rows              finish(b, h, i, row) changes each normalised
///                                                    output row before it is stored
///   bool lse_only() const                            true: the call wants the log-sum-exp alone
///                                                    (the outputs are then zeros), p.v is skipped
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../core/tensor_view.hpp"

namespace attnkit::detail::flash {

inline constexpr float log2e = 1.4426950408889634f;
inline constexpr float ln2 = 0.6931471805599453f;
inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// The plan of a policy on the flash engine; specialised in each variant's header.
template <class Policy>
struct flash_plan;

/// Everything about one call the tiles need, with scores in base-2 units (exp2 is cheaper).
struct problem {
  index_t batch, q_heads, kv_heads, group, nq, nk, d, dv;
  index_t rows_per_group;   // group * nq: the rows that share one KV head
  float scale, scale2;      // the softmax scale, and scale * log2(e)
  float softcap, cap2;      // softcap, and softcap * log2(e); 0: off
  const float* slopes;      // ALiBi slope per query head, or null
};

/// Keys first, first + step, ..., `count` of them, visited in this order. `token_mask`: the
/// plan's keep() decides per token (custom policies); otherwise the rows' spans do.
struct key_run {
  index_t first = 0, count = 0, step = 1;
  bool token_mask = false;
};

/// The query rows of one tile and, for the run being visited, the keys each keeps.
template <int Br>
struct tile_rows {
  alignas(64) std::int32_t lo[Br];  // run positions [lo, hi] kept by the row (empty: lo > hi)
  alignas(64) std::int32_t hi[Br];
  alignas(64) float pos[Br];        // softmax: key-space position of the query (ALiBi distance)
  alignas(64) float slope2[Br];     // softmax: ALiBi slope * log2(e)
  alignas(64) float param[3][Br];   // plan-defined per-row numbers (score steps' per-row terms)
  std::int32_t aux[6][Br];          // plan-defined per-row data (its spans, its windows)
  index_t head[Br], query[Br];
  bool live[Br];                    // attends to some key (a dead row is written as zeros)
  int rows = 0;                     // valid rows; lanes beyond are padding

  /// Makes row r a row of query `query` of head `head`; rows beyond stay padding.
  void set_row(int r, index_t h, index_t query_index) {
    head[r] = h, query[r] = query_index, live[r] = true, pos[r] = 0, slope2[r] = 0;
    rows = r + 1;
  }
  void clear() {
    rows = 0;
    for (int r = 0; r < Br; ++r) {
      lo[r] = 0, hi[r] = -1, pos[r] = 0, slope2[r] = 0, head[r] = 0, query[r] = 0, live[r] = false;
      param[0][r] = param[1][r] = param[2][r] = 0;
    }
  }
};

}  // namespace attnkit::detail::flash

namespace attnkit::detail::flash {

/// Query tiles of one head: runs of at most br consecutive queries, a new one starting wherever
/// starts_segment(i) says (block or frame boundaries, so that a tile's rows share a pattern);
/// every query head of a GQA group has the same tiles.
struct segmented_tiles {
  std::vector<std::pair<index_t, index_t>> per_head;  // (first query, count)

  template <class StartsSegment>
  segmented_tiles(index_t nq, int br, StartsSegment&& starts_segment) {
    for (index_t i = 0; i < nq; ++i) {
      if (per_head.empty() || per_head.back().second == br || starts_segment(i)) per_head.emplace_back(i, 0);
      ++per_head.back().second;
    }
  }

  index_t tiles(const problem& pb) const { return pb.group * static_cast<index_t>(per_head.size()); }

  /// Makes t the rows of tile `tile` of KV head hkv, calling row(r, query) for each row.
  template <int Br, class Row>
  void describe(const problem& pb, index_t hkv, index_t tile, tile_rows<Br>& t, Row&& row) const {
    t.clear();
    const index_t n = static_cast<index_t>(per_head.size());
    const auto [first, count] = per_head[static_cast<std::size_t>(tile % n)];
    for (int r = 0; r < count; ++r) {
      t.set_row(r, hkv * pb.group + tile / n, first + r);
      row(r, first + r);
    }
  }
};

/// Restricts row r's span in a run starting at key `first` (step 1) to keys <= aux[5][r], the
/// row's last visible key (causal patterns; a large value otherwise).
template <int Br>
void clip_to_last_key(tile_rows<Br>& t, int r, index_t first) {
  const index_t last = t.aux[5][r] - first;
  if (last < t.hi[r]) t.hi[r] = static_cast<std::int32_t>(std::max<index_t>(last, -1));
}

/// Runs over whole key blocks: block bk holds keys [bk * block, min((bk + 1) * block, limit))
/// and is visited by the rows in the bit mask rows_of(bk); consecutive blocks with equal
/// masks form one run. Rows in the mask keep the whole run up to their last visible key.
template <int Br, class RowsOf, class F>
void block_runs(tile_rows<Br>& t, index_t block, index_t nblocks, index_t limit, RowsOf&& rows_of, F&& f) {
  static_assert(Br <= 64, "row masks are 64-bit");
  index_t first_block = 0;
  std::uint64_t mask = 0;
  const auto emit = [&](index_t end_block) {
    if (mask == 0) return;
    const index_t first = first_block * block, count = std::min(end_block * block, limit) - first;
    for (int r = 0; r < t.rows; ++r) {
      t.lo[r] = 0;
      t.hi[r] = (mask >> r & 1) ? static_cast<std::int32_t>(count - 1) : -1;
      if (mask >> r & 1) clip_to_last_key(t, r, first);
    }
    f(key_run{first, count, 1, false});
  };
  for (index_t bk = 0; bk < nblocks; ++bk) {
    const std::uint64_t m = rows_of(bk);
    if (m == mask) continue;
    emit(bk);
    first_block = bk, mask = m;
  }
  emit(nblocks);
}

}  // namespace attnkit::detail::flash
