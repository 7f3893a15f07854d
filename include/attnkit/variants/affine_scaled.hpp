/// \file
/// Affine-scaled attention (Bae et al., NAVER Cloud, arXiv 2602.23057): softmax weights moved
/// by a per-query affine map, W_ij = alpha_i P_ij + beta_i over the visible keys, so that
/// out_i = alpha_i (P V)_i + beta_i sum_{visible j} v_j: the sum-to-one constraint relaxed
/// while values are still aggregated. alpha and beta come from the model. spec/extra_variants.md,
/// section 2.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/options.hpp"
#include "../core/error.hpp"
#include "../core/arena.hpp"
#include "../core/executor.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../engines/flash.hpp"
#include "softmax.hpp"

namespace attnkit {

struct affine_scaled {
  enum class beta_mode_kind {
    given,       ///< beta_i from the beta array
    complement,  ///< beta_i = (1 - alpha_i) / n_i: weights still sum to 1
    zero,        ///< beta_i = 0
  };
  const float* alpha = nullptr;  ///< [B, Hq, Nq] multipliers of the softmax weights; null: 1
  const float* beta = nullptr;   ///< [B, Hq, Nq] offsets of the weights (beta_mode given)
  beta_mode_kind beta_mode = beta_mode_kind::zero;
  float scale = 0;                          ///< multiplier of q.k; 0 means 1/sqrt(D)
  bool causal = false;                      ///< bottom-right aligned causal mask
  index_t window_left = -1;                 ///< keys j >= p - window_left; -1 unbounded
  index_t window_right = -1;                ///< keys j <= p + window_right; -1 unbounded
  float softcap = 0;                        ///< s = softcap * tanh(s / softcap); 0 off
  const float* alibi_slopes = nullptr;      ///< one per query head: s -= slope * |p - j|
  const std::int32_t* key_lens = nullptr;   ///< per batch entry: valid keys (null: all)
  const std::int32_t* query_lens = nullptr; ///< per batch entry: valid queries (null: all)
};

namespace detail {

/// The softmax fields of an affine-scaled policy (its P is softmax's).
inline softmax softmax_fields(const affine_scaled& p) {
  softmax s;
  s.scale = p.scale, s.causal = p.causal, s.window_left = p.window_left, s.window_right = p.window_right;
  s.softcap = p.softcap, s.alibi_slopes = p.alibi_slopes, s.key_lens = p.key_lens, s.query_lens = p.query_lens;
  return s;
}

/// Largest magnitude of alpha and beta: beta times a sum of 2^31 values of up to 2^64 each
/// stays inside float (the weights of a row are then finite multiples of its values).
inline constexpr float max_affine_coefficient = 0x1p32f;

inline void validate(const affine_scaled& p, index_t batch, index_t q_heads, index_t nq, index_t nk) {
  using mode = affine_scaled::beta_mode_kind;
  validate_softmax_fields("affine_scaled", softmax_fields(p), batch, q_heads, nq, nk);
  require(p.beta_mode == mode::given || p.beta_mode == mode::complement || p.beta_mode == mode::zero,
          "affine_scaled: beta_mode = ", static_cast<int>(p.beta_mode), ", expected given, complement or zero");
  require(p.beta_mode != mode::given || p.beta != nullptr,
          "affine_scaled: beta_mode is given but beta is null, expected [batch, Hq, Nq] floats");
  require(p.beta_mode == mode::given || p.beta == nullptr,
          "affine_scaled: beta is set but beta_mode is ", p.beta_mode == mode::zero ? "zero" : "complement",
          ", which ignores it; set beta_mode = given");
  const index_t rows = checked_mul(checked_mul(batch, q_heads, "affine_scaled: batch * Hq"), nq,
                                   "affine_scaled: the size of alpha and beta, batch * Hq * Nq");
  const auto check = [&](const float* a, const char* name) {
    if (!a) return;
    for (index_t e = 0; e < rows; ++e)
      require(std::isfinite(a[e]) && std::fabs(a[e]) <= max_affine_coefficient, "affine_scaled: ", name, "[", e,
              "] = ", a[e], ", expected a finite value of magnitude at most 2^32");
  };
  check(p.alpha, "alpha");
  check(p.beta, "beta");
}

/// Sums of values over key ranges for affine_pass, per KV head, in float64: prefix sums every
/// value_sum_block keys, and sums of each block and of each group of value_sum_group blocks.
/// A row with keys [0, hi] takes a prefix sum plus fewer than value_sum_block rows (at 64 the
/// rows summed per query took a quarter of a causal call's time at N 16K). A row whose keys
/// start later (windows) adds groups, blocks and rows of its own range only: a difference of
/// prefix sums would let values it cannot see (1e30, inf, NaN) reach it.
inline constexpr index_t value_sum_block = 16, value_sum_group = 16;

struct value_sums {
  index_t blocks = 0, groups = 0, dv = 0;
  std::vector<double> prefix, block, group;  // [head][blocks + 1][dv], [head][blocks][dv], [head][groups][dv]

  template <class Vt>
  value_sums(const tensor_view<const Vt>& v, int threads)
      : blocks(v.seq() / value_sum_block), groups(blocks / value_sum_group), dv(v.dim()) {
    const index_t heads = v.batch() * v.heads();
    prefix.resize(static_cast<std::size_t>(heads * (blocks + 1) * dv));
    block.resize(static_cast<std::size_t>(heads * blocks * dv));
    group.assign(static_cast<std::size_t>(heads * groups * dv), 0.0);
    parallel_for(heads, threads, [&](index_t head) {
      const index_t b = head / v.heads(), h = head % v.heads();
      double* pre = prefix.data() + head * (blocks + 1) * dv;
      std::fill(pre, pre + dv, 0.0);
      for (index_t k = 0; k < blocks; ++k) {
        double* sum = block.data() + (head * blocks + k) * dv;
        std::fill(sum, sum + dv, 0.0);
        for (index_t j = k * value_sum_block; j < (k + 1) * value_sum_block; ++j)
          for (index_t c = 0; c < dv; ++c) sum[c] += double(to_float(v(b, h, j, c)));
        for (index_t c = 0; c < dv; ++c) pre[(k + 1) * dv + c] = pre[k * dv + c] + sum[c];
        if (k / value_sum_group < groups)
          for (index_t c = 0; c < dv; ++c) group[static_cast<std::size_t>((head * groups + k / value_sum_group) * dv + c)] += sum[c];
      }
    });
  }
};

/// The flash pass of affine-scaled attention: softmax, then each row finished as
/// alpha_i out_i + beta_i sum_{visible j} v_j.
template <class Vt>
struct affine_pass {
  const affine_scaled* policy;
  float scale;  // the flash engine reads the policy's scale
  tensor_view<const Vt> v;
  const value_sums* sums;  // null: beta is 0
};

}  // namespace detail

namespace detail::flash {

template <class Vt>
struct flash_plan<affine_pass<Vt>> : softmax_rows_plan {
  static constexpr bool finishes_rows = true;
  static softmax fields(const affine_pass<Vt>& p) { return softmax_fields(*p.policy); }
  const affine_pass<Vt>& pass;

  flash_plan(const affine_pass<Vt>& policy, const problem& problem_, int br_)
      : softmax_rows_plan(softmax_fields(*policy.policy), problem_, br_), pass(policy) {}

  static void add(const double* x, index_t n, double* sum) {
    for (index_t c = 0; c < n; ++c) sum[c] += x[c];
  }
  /// sum += the values of keys [first, end) of KV head (b, hkv), row by row.
  void add_rows(index_t b, index_t hkv, index_t first, index_t end, double* sum) const {
    const index_t stride = pass.v.stride(dim_axis);
    for (index_t j = first; j < end; ++j) {
      const Vt* row = pass.v.row(b, hkv, j);
      if (stride == 1)
        for (index_t c = 0; c < pb.dv; ++c) sum[c] += double(to_float(row[c]));
      else
        for (index_t c = 0; c < pb.dv; ++c) sum[c] += double(to_float(row[c * stride]));
    }
  }

  /// sum = the values of keys [lo, hi] of KV head (b, hkv).
  void range_sum(index_t b, index_t hkv, index_t lo, index_t hi, double* sum) const {
    const value_sums& vs = *pass.sums;
    const index_t head = b * pb.kv_heads + hkv, dv = pb.dv, end = hi + 1;
    std::fill(sum, sum + dv, 0.0);
    if (lo == 0) {  // every key up to hi is visible: a prefix sum
      const index_t k = end / value_sum_block;
      add(vs.prefix.data() + (head * (vs.blocks + 1) + k) * dv, dv, sum);
      return add_rows(b, hkv, k * value_sum_block, end, sum);
    }
    index_t j = lo;
    const index_t group_keys = value_sum_block * value_sum_group;
    while (j < end) {
      if (j % group_keys == 0 && j + group_keys <= end && j / group_keys < vs.groups) {
        add(vs.group.data() + (head * vs.groups + j / group_keys) * dv, dv, sum);
        j += group_keys;
      } else if (j % value_sum_block == 0 && j + value_sum_block <= end) {
        add(vs.block.data() + (head * vs.blocks + j / value_sum_block) * dv, dv, sum);
        j += value_sum_block;
      } else {
        const index_t stop = std::min(end, (j / value_sum_block + 1) * value_sum_block);
        add_rows(b, hkv, j, stop, sum);
        j = stop;
      }
    }
  }

  /// out_i <- alpha_i out_i + beta_i sum of the row's visible values, in double.
  template <class T>
  void finish(index_t b, index_t h, index_t i, T* row) const {
    using mode = affine_scaled::beta_mode_kind;
    const affine_scaled& a = *pass.policy;
    const index_t e = (b * pb.q_heads + h) * pb.nq + i;
    const double alpha = a.alpha ? double(a.alpha[e]) : 1.0;
    const key_span s = softmax_span(p, b, i, pb.nq, pb.nk);
    const index_t n = std::max<index_t>(s.hi - s.lo + 1, 0);
    const double beta = a.beta_mode == mode::given ? double(a.beta[e])
                        : a.beta_mode == mode::complement && n > 0 ? (1.0 - alpha) / double(n)
                                                                  : 0.0;
    if (beta == 0 || n == 0 || !pass.sums) {
      for (index_t c = 0; c < pb.dv; ++c) row[c] = static_cast<T>(alpha * double(row[c]));
      return;
    }
    scratch_lease lease;
    double* sum = static_cast<double*>(lease.reserve(static_cast<std::size_t>(pb.dv) * sizeof(double)));
    range_sum(b, h / pb.group, s.lo, s.hi, sum);
    for (index_t c = 0; c < pb.dv; ++c) row[c] = static_cast<T>(alpha * double(row[c]) + beta * sum[c]);
  }
};

}  // namespace detail::flash

namespace detail {

/// Affine-scaled attention on the CPU (arguments validated): one flash pass whose rows are
/// finished by the affine map; defaults (alpha 1, beta 0) are softmax itself.
template <class Q, class K, class V, class O>
void run_affine_scaled(const affine_scaled& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
                       const tensor_view<const V>& v, const tensor_view<O>& out, const options& o) {
  if (!p.alpha && p.beta_mode == affine_scaled::beta_mode_kind::zero)
    return flash::run(softmax_fields(p), q, k, v, out, o);
  if (p.beta_mode == affine_scaled::beta_mode_kind::zero || q.batch() == 0)
    return flash::run(affine_pass<V>{&p, p.scale, v, nullptr}, q, k, v, out, o);
  const value_sums sums(v, o.threads);
  flash::run(affine_pass<V>{&p, p.scale, v, &sums}, q, k, v, out, o);
}

}  // namespace detail
}  // namespace attnkit
