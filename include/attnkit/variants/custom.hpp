/// \file
/// Custom attention: FlexAttention's flexibility (Dong et al. 2024, arXiv 2412.05496) in C++.
/// A policy built from user callables runs on the block-sparse flash engine:
///   keep(b, h, qi, kj) -> bool          token mask (required)
///   score(s, b, h, qi, kj) -> float     transform of the scaled score s (optional)
///   block(b, h, q_first, q_last, k_first, k_last) -> block_kind   (optional)
/// The block predicate classifies a tile of queries [q_first, q_last] x keys [k_first, k_last]
/// of one query head: skip (no kept pair), full (every pair kept: keep is not called) or
/// partial (keep is called per pair). Without it, every tile is partial.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash_plan.hpp"

namespace attnkit {

enum class block_kind { skip, partial, full };

/// "No score transform": the score is used as it is.
struct identity_score {
  float operator()(float s, index_t, index_t, index_t, index_t) const { return s; }
};
/// "No block predicate": every tile is partial.
struct no_block_predicate {
  block_kind operator()(index_t, index_t, index_t, index_t, index_t, index_t) const { return block_kind::partial; }
};

template <class Keep, class Score = identity_score, class Block = no_block_predicate>
struct custom {
  Keep keep;
  Score score{};
  Block block{};
  float scale = 0;  ///< multiplier of q.k; 0 means 1/sqrt(D)

  static constexpr bool has_score = !std::is_same_v<Score, identity_score>;
  static constexpr bool has_block = !std::is_same_v<Block, no_block_predicate>;
};

/// custom{keep, score, block} without spelling the callables' types (C++17 has no aggregate CTAD).
template <class Keep>
custom<Keep> make_custom(Keep keep, float scale = 0) {
  return {std::move(keep), {}, {}, scale};
}
template <class Keep, class Score>
custom<Keep, Score> make_custom(Keep keep, Score score, float scale = 0) {
  return {std::move(keep), std::move(score), {}, scale};
}
template <class Keep, class Score, class Block>
custom<Keep, Score, Block> make_custom(Keep keep, Score score, Block block, float scale = 0) {
  return {std::move(keep), std::move(score), std::move(block), scale};
}

namespace detail {

template <class T>
struct is_custom : std::false_type {};
template <class Keep, class Score, class Block>
struct is_custom<custom<Keep, Score, Block>> : std::true_type {};

template <class Keep, class Score, class Block>
void validate(const custom<Keep, Score, Block>& p, index_t, index_t, index_t, index_t) {
  validate_scale("custom", p.scale);
}

}  // namespace detail

namespace detail::flash {

/// A custom policy's plan: tiles of Br queries of one head, key runs of 64 keys. The block
/// predicate drops a run or marks it full; every other run is masked by keep() per token.
template <class Keep, class Score, class Block>
struct flash_plan<custom<Keep, Score, Block>> {
  using policy = custom<Keep, Score, Block>;
  static constexpr bool packs_gqa = false, token_callables = true, has_score = policy::has_score;
  static constexpr index_t run_keys = 64;
  const policy& p;
  const problem& pb;
  const segmented_tiles query_tiles;

  flash_plan(const policy& pol, const problem& problem_, int br)
      : p(pol), pb(problem_), query_tiles(pb.nq, br, [](index_t) { return false; }) {}

  index_t tiles() const { return query_tiles.tiles(pb); }

  template <int Br>
  void describe(index_t, index_t hkv, index_t tile, tile_rows<Br>& t) const {
    query_tiles.describe(pb, hkv, tile, t, [](int, index_t) {});
  }

  template <int Br, class F>
  void for_each_run(index_t b, tile_rows<Br>& t, F&& f) const {
    if (t.rows == 0) return;
    for (int r = 0; r < t.rows; ++r) t.lo[r] = 0;
    for (index_t k0 = 0; k0 < pb.nk; k0 += run_keys) {
      const index_t count = std::min(run_keys, pb.nk - k0);
      const block_kind kind = p.block(b, t.head[0], t.query[0], t.query[t.rows - 1], k0, k0 + count - 1);
      if (kind == block_kind::skip) continue;
      for (int r = 0; r < t.rows; ++r) t.hi[r] = static_cast<std::int32_t>(count - 1);
      f(key_run{k0, count, 1, kind != block_kind::full});
    }
  }

  bool keep(index_t b, index_t h, index_t i, index_t j) const { return p.keep(b, h, i, j); }
  /// The score transform, in float on the fast path and in double on its exact path (a
  /// callable that takes its score as a template parameter or a double then sees the
  /// reference's double score, beyond float's range too).
  template <class S>
  S score(S s, index_t b, index_t h, index_t i, index_t j) const {
    return static_cast<S>(p.score(s, b, h, i, j));
  }
};

}  // namespace detail::flash

/// Which keys each query attends to, for batch entry 0 and query head 0 (row-major nq x nk bytes).
template <class Keep, class Score, class Block>
std::vector<std::uint8_t> dense_mask(const custom<Keep, Score, Block>& p, index_t nq, index_t nk) {
  std::vector<std::uint8_t> mask(detail::mask_elements(nq, nk), 0);
  for (index_t i = 0; i < nq; ++i)
    for (index_t j = 0; j < nk; ++j) mask[static_cast<std::size_t>(i * nk + j)] = p.keep(index_t(0), index_t(0), i, j) ? 1 : 0;
  return mask;
}

}  // namespace attnkit
