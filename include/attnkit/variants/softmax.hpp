/// \file
/// Softmax attention: out_i = sum_j softmax_j(mask(bias(cap(scale * q_i . k_j)))) v_j,
/// FlashAttention-2 conventions (Dao 2023, arXiv 2307.08691): bottom-right causal alignment,
/// sliding windows, soft-capping, ALiBi (Press et al. 2021), GQA, variable lengths.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash_plan.hpp"

namespace attnkit {

struct softmax {
  float scale = 0;                          ///< multiplier of q.k; 0 means 1/sqrt(D)
  bool causal = false;                      ///< bottom-right aligned causal mask
  index_t window_left = -1;                 ///< keys j >= p - window_left; -1 unbounded
  index_t window_right = -1;                ///< keys j <= p + window_right; -1 unbounded
  float softcap = 0;                        ///< s = softcap * tanh(s / softcap); 0 off
  const float* alibi_slopes = nullptr;      ///< one per query head: s -= slope * |p - j|
  const std::int32_t* key_lens = nullptr;   ///< per batch entry: valid keys (null: all)
  const std::int32_t* query_lens = nullptr; ///< per batch entry: valid queries (null: all)
};

/// Standard ALiBi slopes for `heads` heads (Press et al.): 2^(-8(h+1)/H) for H a power of two,
/// otherwise the slopes of the nearest lower power of two followed by every other slope of
/// the next one.
inline std::vector<float> alibi_slopes(index_t heads) {
  detail::require(heads >= 1, "alibi_slopes: heads = ", heads, ", expected >= 1");
  auto power_of_two_slopes = [](index_t n) {
    std::vector<float> s(static_cast<std::size_t>(n));
    for (index_t h = 0; h < n; ++h)
      s[static_cast<std::size_t>(h)] = static_cast<float>(std::exp2(-8.0 * double(h + 1) / double(n)));
    return s;
  };
  index_t n = 1;
  while (n * 2 <= heads) n *= 2;
  std::vector<float> slopes = power_of_two_slopes(n);
  if (n < heads) {
    const std::vector<float> extra = power_of_two_slopes(2 * n);
    for (index_t i = 0; static_cast<index_t>(slopes.size()) < heads; i += 2)
      slopes.push_back(extra[static_cast<std::size_t>(i)]);
  }
  return slopes;
}

namespace detail {

/// Keys visible to one query row form the inclusive interval [lo, hi] (empty when lo > hi).
struct key_span {
  index_t lo, hi;
};

/// Visible key interval of query row i of batch entry b, per the spec's step 4.
inline key_span softmax_span(const softmax& p, index_t b, index_t i, index_t nq, index_t nk) {
  const index_t lq = p.query_lens ? p.query_lens[b] : nq;
  const index_t lk = p.key_lens ? p.key_lens[b] : nk;
  if (i >= lq) return {0, -1};
  const index_t pos = i + lk - lq;
  index_t lo = 0, hi = lk - 1;
  if (p.causal) hi = std::min(hi, pos);
  // Windows wider than any sequence saturate: "unbounded", never an overflow.
  if (p.window_right >= 0) hi = std::min(hi, saturating_add(pos, p.window_right));
  if (p.window_left >= 0) lo = std::max(lo, saturating_add(pos, -p.window_left));
  return {lo, hi};
}

/// The softmax scale actually used: the field, or 1/sqrt(D) when it is 0.
inline float effective_scale(float scale, index_t head_dim) {
  return scale != 0 ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

/// Checks the softmax fields of a policy named `policy` (softmax, and the variants built on
/// its masks and score steps: probabilistic, softplus, affine_scaled, local_linear).
inline void validate_softmax_fields(const char* policy, const softmax& p, index_t batch, index_t q_heads, index_t nq,
                                    index_t nk) {
  validate_scale(policy, p.scale);
  // 0 is off; otherwise softcap and 1/softcap (both used, in base-2 units) stay finite.
  require(p.softcap == 0 || (p.softcap >= 0x1p-126f && p.softcap <= max_multiplier), policy, ": softcap = ",
          p.softcap, ", expected 0 (off) or a value in [2^-126, 2^127]");
  require(p.window_left >= -1, policy, ": window_left = ", p.window_left, ", expected >= -1");
  require(p.window_right >= -1, policy, ": window_right = ", p.window_right, ", expected >= -1");
  if (p.alibi_slopes)
    for (index_t h = 0; h < q_heads; ++h)
      require(std::isfinite(p.alibi_slopes[h]) && std::fabs(p.alibi_slopes[h]) <= max_multiplier, policy,
              ": alibi_slopes[", h, "] = ", p.alibi_slopes[h], ", expected a finite value of magnitude at most 2^127");
  for (index_t b = 0; b < batch; ++b) {
    if (p.key_lens)
      require(p.key_lens[b] >= 0 && p.key_lens[b] <= nk, policy, ": key_lens[", b, "] = ", p.key_lens[b],
              ", expected a value in [0, ", nk, "]");
    if (p.query_lens)
      require(p.query_lens[b] >= 0 && p.query_lens[b] <= nq, policy, ": query_lens[", b, "] = ", p.query_lens[b],
              ", expected a value in [0, ", nq, "]");
  }
}

/// Checks the policy's own fields (shapes are checked by attention()).
inline void validate(const softmax& p, index_t batch, index_t q_heads, index_t nq, index_t nk) {
  validate_softmax_fields("softmax", p, batch, q_heads, nq, nk);
}

}  // namespace detail

namespace detail::flash {

/// Softmax's plan: every row keeps one interval of keys, so a tile visits one run, the union
/// of its rows' intervals. A head with at least Br queries gets tiles of its own (one band of
/// keys each); fewer queries are packed across the heads of the GQA group (decode), which
/// then share every K/V chunk they read. aux[0], aux[1]: the row's key interval. Variants on
/// softmax's masks (probabilistic, softplus, affine_scaled) build their plans on this one.
struct softmax_rows_plan {
  static constexpr bool packs_gqa = true, token_callables = false, has_score = false, softmax_scores = true;
  const softmax p;  // by value: the variants built on it hand over their softmax fields
  const problem& pb;
  int br;

  softmax_rows_plan(const softmax& policy, const problem& problem_, int br_) : p(policy), pb(problem_), br(br_) {}

  index_t tiles() const {
    if (pb.nq >= br) return pb.group * ((pb.nq + br - 1) / br);
    return (pb.rows_per_group + br - 1) / br;
  }

  template <int Br>
  void describe(index_t b, index_t hkv, index_t tile, tile_rows<Br>& t) const {
    t.clear();
    const bool own_tiles = pb.nq >= Br;
    const index_t tiles_per_head = (pb.nq + Br - 1) / Br;
    const index_t lq = p.query_lens ? p.query_lens[b] : pb.nq, lk = p.key_lens ? p.key_lens[b] : pb.nk;
    for (int r = 0; r < Br; ++r) {
      const index_t rg = own_tiles ? tile / tiles_per_head * pb.nq + tile % tiles_per_head * Br + r : tile * Br + r;
      const bool valid = own_tiles ? tile % tiles_per_head * Br + r < pb.nq : rg < pb.rows_per_group;
      if (!valid) continue;
      const index_t i = rg % pb.nq, hq = hkv * pb.group + rg / pb.nq;
      const key_span s = softmax_span(p, b, i, pb.nq, pb.nk);
      t.set_row(r, hq, i);
      t.live[r] = s.lo <= s.hi;
      t.aux[0][r] = static_cast<std::int32_t>(std::min<index_t>(s.lo, pb.nk));
      t.aux[1][r] = static_cast<std::int32_t>(std::max<index_t>(s.hi, -1));
      t.pos[r] = static_cast<float>(i + lk - lq);
      t.slope2[r] = pb.slopes ? pb.slopes[hq] * log2e : 0.f;
    }
  }

  template <int Br, class F>
  void for_each_run(index_t, tile_rows<Br>& t, F&& f) const {
    index_t kmin = pb.nk, kmax = -1;
    for (int r = 0; r < t.rows; ++r)
      if (t.live[r]) kmin = std::min<index_t>(kmin, t.aux[0][r]), kmax = std::max<index_t>(kmax, t.aux[1][r]);
    if (kmax < kmin) return;
    for (int r = 0; r < t.rows; ++r)
      t.lo[r] = static_cast<std::int32_t>(t.aux[0][r] - kmin), t.hi[r] = static_cast<std::int32_t>(t.aux[1][r] - kmin);
    f(key_run{kmin, kmax + 1 - kmin, 1, false});
  }
};

template <>
struct flash_plan<softmax> : softmax_rows_plan {
  static softmax fields(const softmax& p) { return p; }
  flash_plan(const softmax& policy, const problem& problem_, int br_) : softmax_rows_plan(policy, problem_, br_) {}
};

}  // namespace detail::flash

/// Which keys each query attends to (row-major nq x nk bytes, 1 = attends); per-batch
/// lengths are ignored (a pattern is drawn for full-length sequences).
inline std::vector<std::uint8_t> dense_mask(const softmax& p, index_t nq, index_t nk) {
  softmax full = p;
  full.key_lens = full.query_lens = nullptr;
  std::vector<std::uint8_t> mask(detail::mask_elements(nq, nk), 0);
  for (index_t i = 0; i < nq; ++i) {
    const detail::key_span s = detail::softmax_span(full, 0, i, nq, nk);
    for (index_t j = s.lo; j <= s.hi; ++j) mask[static_cast<std::size_t>(i * nk + j)] = 1;
  }
  return mask;
}

}  // namespace attnkit
