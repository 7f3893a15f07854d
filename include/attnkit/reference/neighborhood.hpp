/// \file
/// Float64 reference of neighborhood attention (NA, dilated, causal, strided / GNA), written
/// from spec/neighborhood.md ("The per-axis window" and "Reference algorithm"): each query's
/// keys are enumerated as the cartesian product of its per-axis in-group ranges, never by
/// testing every key. It shares no code with variants/neighborhood.hpp (whose dense_mask is
/// the O(N^2) admit test) or with the flash engine, so tests can compare them.
#pragma once

#include <algorithm>
#include <array>
#include <vector>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../variants/neighborhood.hpp"
#include "masked.hpp"

namespace attnkit::reference::detail {

/// One axis of a query's window: the key coordinates group + dilation * v for v in [first, last).
struct na_axis_keys {
  index_t group, dilation, first, last;
};

/// Spec "The per-axis window", steps 1-4, for an axis of length `len`, kernel `w`, dilation
/// `dil`, stride `st`, query coordinate `x`.
inline na_axis_keys na_axis_range(index_t len, index_t w, index_t dil, index_t st, bool causal, index_t x) {
  // 1. dilation group g, in-group position u, group length L_g = ceil((L - g) / d)
  const index_t g = x % dil;
  const index_t u = x / dil;
  const index_t group_len = (len - g) / dil + ((len - g) % dil != 0 ? 1 : 0);
  if (causal) {
    // 4. leader = last member of the stride group (clamped); the window ends at the query itself
    const index_t leader = std::min((u / st) * st + (st - 1), group_len - 1);
    const index_t start = std::max<index_t>(leader - w + 1, 0);
    return {g, dil, start, u + 1};
  }
  // 2. extents: floor(w / 2) on the left, the rest on the right
  const index_t left = w / 2;
  // 3. leader = middle member of the stride group (clamped); window shifted inside the group
  const index_t leader = std::min((u / st) * st + st / 2, group_len - 1);
  const index_t start = std::min(std::max<index_t>(leader - left, 0), group_len - w);
  return {g, dil, start, start + w};
}

/// Appends the keys of query token t (row-major flattened over p.shape) to `keys`, in
/// increasing token order: the cartesian product of the per-axis ranges.
template <int Rank>
void neighborhood_window(const attnkit::neighborhood<Rank>& p, index_t t, std::vector<index_t>& keys) {
  // unflatten t (last axis fastest) and the row-major token strides of each axis
  std::array<index_t, Rank> x{}, token_stride{};
  index_t rest = t, stride = 1;
  for (int a = Rank - 1; a >= 0; --a) {
    x[a] = rest % p.shape[a];
    rest /= p.shape[a];
    token_stride[a] = stride;
    stride *= p.shape[a];
  }
  std::array<na_axis_keys, Rank> ax{};
  for (int a = 0; a < Rank; ++a) {
    ax[a] = na_axis_range(p.shape[a], p.kernel[a], p.dilation[a], p.stride[a], p.causal[a], x[a]);
    if (ax[a].first >= ax[a].last) return;  // an empty axis range: no key (not reachable for valid policies)
  }
  // odometer over the in-group positions v_a in [first_a, last_a), last axis fastest
  std::array<index_t, Rank> v{};
  for (int a = 0; a < Rank; ++a) v[a] = ax[a].first;
  for (;;) {
    index_t key = 0;
    for (int a = 0; a < Rank; ++a) key += (ax[a].group + ax[a].dilation * v[a]) * token_stride[a];
    keys.push_back(key);
    int a = Rank - 1;
    while (a >= 0 && ++v[a] == ax[a].last) {
      v[a] = ax[a].first;
      --a;
    }
    if (a < 0) break;
  }
}

/// Neighborhood attention in float64: softmax over each query's window (spec "Reference
/// algorithm"); the pattern is the same for every batch entry and head. Shapes are assumed
/// checked (Nq == Nk == prod(shape)).
template <int Rank, class Q, class K, class V, class O>
void run(const attnkit::neighborhood<Rank>& p, tensor_view<const Q> q, tensor_view<const K> k,
         tensor_view<const V> v, tensor_view<O> out, const options& o) {
  run_rows(
      p.scale, [&](index_t, index_t, index_t i, std::vector<index_t>& keys) { neighborhood_window(p, i, keys); },
      keep_score{}, q, k, v, out, o);
}

}  // namespace attnkit::reference::detail
