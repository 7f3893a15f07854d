/// \file
/// Float64 reference of custom attention: the policy's own keep(b, h, i, j) and
/// score(s, b, h, i, j) callables over every (query, key) pair. The block predicate is a
/// performance hint of the fast path only (it must agree with keep), so the reference ignores it.
#pragma once

#include <vector>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../variants/custom.hpp"
#include "masked.hpp"

namespace attnkit::reference::detail {

/// Custom attention in float64 (O(Nq * Nk * D)): keys j with keep(b, h, i, j); logits
/// score(scale * q.k, b, h, i, j) (the score callable receives the double-precision score;
/// scale 0 means 1/sqrt(D)).
template <class Keep, class Score, class Block, class Q, class K, class V, class O>
void run(const attnkit::custom<Keep, Score, Block>& p, tensor_view<const Q> q, tensor_view<const K> k,
         tensor_view<const V> v, tensor_view<O> out, const options& o) {
  auto keep = [&](index_t b, index_t h, index_t i, index_t j) -> bool { return static_cast<bool>(p.keep(b, h, i, j)); };
  if constexpr (attnkit::custom<Keep, Score, Block>::has_score) {
    auto score = [&](double s, index_t b, index_t h, index_t i, index_t j) -> double {
      return static_cast<double>(p.score(s, b, h, i, j));
    };
    run_masked(p.scale, keep, score, q, k, v, out, o);
  } else {
    run_masked(p.scale, keep, keep_score{}, q, k, v, out, o);
  }
}

}  // namespace attnkit::reference::detail
