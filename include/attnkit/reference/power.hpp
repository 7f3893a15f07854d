/// \file
/// Float64 reference of PowerAttention, written from spec/power.md (the paper's Algorithm 1
/// plus attnkit's sink_blocks / max_power / non-causal extensions). It shares no code with
/// variants/power.hpp or with the flash engine, so tests can compare them.
#pragma once

#include <vector>

#include "../core/checked.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../variants/power.hpp"
#include "masked.hpp"

namespace attnkit::reference::detail {

/// floor(a / b) for b > 0 and any sign of a.
inline index_t power_floor_div(index_t a, index_t b) {
  const index_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

/// is_pow2_or_zero(x) of the spec: x >= 0 and x & (x - 1) == 0, and x <= 2^max_power when
/// max_power >= 0 (0 counts as a power: the diagonal block).
inline bool power_is_pow2_or_zero(const attnkit::power& p, index_t x) {
  if (x < 0 || (x & (x - 1)) != 0) return false;
  if (p.max_power < 0) return true;
  if (p.max_power >= 62) return true;  // 2^max_power exceeds every index_t distance here
  return x <= (index_t(1) << p.max_power);
}

/// Does query row i (of nq) attend to key j (of nk)? Spec "Definition": absolute position
/// p = i + nk - nq, block distance delta = floor(p / b) - floor(j / b).
inline bool power_visible(const attnkit::power& p, index_t i, index_t j, index_t nq, index_t nk) {
  const index_t pos = i + (nk - nq);
  const index_t bq = power_floor_div(pos, p.block_size);
  const index_t bk = j / p.block_size;
  const bool sink = j < attnkit::detail::saturating_mul(p.sink_blocks, p.block_size);  // S * b may exceed 2^63
  if (p.causal) {
    if (j > pos) return false;
    const index_t delta = bq - bk;  // >= 0 because j <= pos
    return delta < p.window_blocks || power_is_pow2_or_zero(p, delta) || sink;
  }
  const index_t delta = bq >= bk ? bq - bk : bk - bq;
  return delta < p.window_blocks || power_is_pow2_or_zero(p, delta) || sink;
}

/// PowerAttention in float64 (O(Nq * Nk * D)); the pattern is the same for every batch entry
/// and head. Rows with no visible key (causal, Nq > Nk) get zeros and lse = -inf.
template <class Q, class K, class V, class O>
void run(const attnkit::power& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  const index_t nq = q.seq(), nk = k.seq();
  run_masked(
      p.scale, [&](index_t, index_t, index_t i, index_t j) { return power_visible(p, i, j, nq, nk); }, keep_score{},
      q, k, v, out, o);
}

}  // namespace attnkit::reference::detail
