/// \file
/// Softplus attention with length scaling (LSSA) and re-weighting (LSSAR) (Gao, Spratling,
/// Gionfrida, arXiv 2501.13428): softmax's exp replaced by softplus of the scores scaled by
/// alpha log(n_i) (n_i: the row's visible keys), l1-normalised; LSSAR then sharpens the weights
/// to max(0, n_i A_ij - threshold)^power, renormalised. spec/extra_variants.md, section 1.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../core/checks.hpp"
#include "../core/options.hpp"
#include "../core/error.hpp"
#include "../core/arena.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash.hpp"
#include "softmax.hpp"

namespace attnkit {

struct softplus {
  float scale = 0;            ///< multiplier of q.k; 0 means 1/sqrt(D)
  bool length_scale = true;   ///< multiply scores by alpha * log(max(n_i, min_len)) (true) or 1
  float alpha = 1;            ///< constant of the length factor
  index_t min_len = 2;        ///< n_i is at least this inside the log
  float power = 1;            ///< re-weighting exponent p; 1: off
  float threshold = 0;        ///< re-weighting threshold tau, in units of the uniform weight 1/n_i
  bool causal = false;                      ///< bottom-right aligned causal mask
  index_t window_left = -1;                 ///< keys j >= p - window_left; -1 unbounded
  index_t window_right = -1;                ///< keys j <= p + window_right; -1 unbounded
  const std::int32_t* key_lens = nullptr;   ///< per batch entry: valid keys (null: all)
  const std::int32_t* query_lens = nullptr; ///< per batch entry: valid queries (null: all)
};

namespace detail {

/// The softmax fields of a softplus policy: its masks.
inline softmax softmax_fields(const softplus& p) {
  softmax s;
  s.scale = p.scale, s.causal = p.causal, s.window_left = p.window_left, s.window_right = p.window_right;
  s.key_lens = p.key_lens, s.query_lens = p.query_lens;
  return s;
}

inline void validate(const softplus& p, index_t batch, index_t q_heads, index_t nq, index_t nk) {
  validate_softmax_fields("softplus", softmax_fields(p), batch, q_heads, nq, nk);
  require(std::isfinite(p.alpha) && p.alpha > 0 && p.alpha <= 0x1p64f, "softplus: alpha = ", p.alpha,
          ", expected a value in (0, 2^64]");
  require(p.min_len >= 1 && p.min_len <= max_sequence, "softplus: min_len = ", p.min_len,
          ", expected a value in [1, 2^31 - 1]");
  require(std::isfinite(p.power) && p.power >= 0x1p-20f && p.power <= 1024, "softplus: power = ", p.power,
          ", expected a value in [2^-20, 1024]");
  require(std::isfinite(p.threshold) && p.threshold >= 0 && p.threshold <= 0x1p31f, "softplus: threshold = ",
          p.threshold, ", expected a value in [0, 2^31]");
}

/// One flash pass of softplus attention. Without log_z: weights softplus(lambda_i s)^power
/// (LSSA, or LSSAR with threshold 0: an online softmax over power * log softplus). With log_z
/// (log Z_i = log sum_j a_ij from a first pass with power 1): LSSAR's re-weighting,
/// weights max(0, n_i a_ij / Z_i - threshold)^power.
struct softplus_pass {
  const softplus* policy;
  float scale;           // the flash engine reads the policy's scale
  float power;
  const float* log_z;    // [B, Hq, Nq], natural log; null: no re-weighting
  bool first_pass;       // LSSAR's first pass: log Z_i (the lse) alone, outputs left zero
};

/// log softplus(y) = log log(1 + e^y) in double, without cancellation or overflow.
inline double log_softplus(double y) {
  if (y >= 0) return std::log(y + std::log1p(std::exp(-y)));
  if (y < -700) return y;  // log1p(e^y) = e^y to double precision, and e^y underflows below
  return std::log(std::log1p(std::exp(y)));
}

}  // namespace detail

namespace detail::flash {

/// log2(softplus(y)) of natural-unit scores y: log1p on e^-|y| in [0, 1], then log2; below
/// y = -30, softplus(y) = e^y to float precision and the result is y log2(e).
template <class Arch>
ATTNKIT_ALWAYS_INLINE simd::vec<Arch> log2_softplus(simd::vec<Arch> y) {
  using V = simd::vec<Arch>;
  const V u = simd::exp2<Arch>(-xsimd::abs(y) * V(log2e));
  const V a = xsimd::max(y, V(0.f)) + simd::log1p_unit<Arch>(u);
  return xsimd::select(y < V(-30.f), y * V(log2e), simd::log2<Arch>(a));
}

/// Softplus attention on softmax's plan: its masks, and per row (param) the length factor
/// lambda_i ln 2 that turns a base-2 score into the natural-unit argument of softplus, and,
/// when re-weighting, log2(n_i) - log2(Z_i).
template <>
struct flash_plan<softplus_pass> : softmax_rows_plan {
  static constexpr bool has_score = true, score_steps = true;
  static softmax fields(const softplus_pass& p) { return softmax_fields(*p.policy); }
  const softplus_pass& pass;

  flash_plan(const softplus_pass& p, const problem& problem_, int br_)
      : softmax_rows_plan(softmax_fields(*p.policy), problem_, br_), pass(p) {}

  /// lambda_i of a row with n visible keys.
  double length_factor(index_t n) const {
    const softplus& sp = *pass.policy;
    return sp.length_scale ? double(sp.alpha) * std::log(double(std::max(n, sp.min_len))) : 1.0;
  }
  double log_z(index_t b, index_t h, index_t i) const { return pass.log_z[(b * pb.q_heads + h) * pb.nq + i]; }
  /// LSSAR's first pass wants log Z_i alone.
  bool lse_only() const { return pass.first_pass; }

  template <int Br>
  void describe(index_t b, index_t hkv, index_t tile, tile_rows<Br>& t) const {
    softmax_rows_plan::describe(b, hkv, tile, t);
    for (int r = 0; r < t.rows; ++r) {
      if (!t.live[r]) continue;
      const index_t n = t.aux[1][r] - t.aux[0][r] + 1;
      t.param[0][r] = static_cast<float>(length_factor(n) * double(ln2));
      if (pass.log_z) t.param[1][r] = static_cast<float>(std::log2(double(n)) - log_z(b, t.head[r], t.query[r]) * double(log2e));
    }
  }

  /// LSSA (power 1): stores y = lambda s and weighs softplus(y) 2^-m directly, one exponential
  /// and one polynomial a score where the log form takes two logarithms more. The running
  /// log-weight m is log2 softplus of the largest y (softplus is increasing). Rows whose m is
  /// below -40 (every y below about -27, where softplus underflows) take the log form.
  template <class G>
  struct unit_power {
    using V = typename G::V;
    using arch = typename G::arch;
    static constexpr bool transforms = true;
    V lambda[G::NR];
    V transform(V x, int n, int) const { return x * lambda[n]; }
    V log_weight(V chunk_max, int) const { return log2_softplus<arch>(chunk_max); }
    template <class>
    ATTNKIT_ALWAYS_INLINE V weights(float* s, int nkeys, int lane0, V m, int) const {
      V sum(0.f);
      if (xsimd::any(m < V(-40.f))) {
        for (int j = 0; j < nkeys; ++j) {
          float* sj = s + j * G::Br + lane0;
          const V p = simd::exp2<arch>(log2_softplus<arch>(V::load_aligned(sj)) - m);
          p.store_aligned(sj);
          sum += p;
        }
        return sum;
      }
      const V half = simd::exp2<arch>(m * V(-0.5f));  // 2^-m in two factors: m may pass 126
      for (int j = 0; j < nkeys; ++j) {
        float* sj = s + j * G::Br + lane0;
        const V y = V::load_aligned(sj);
        const V a = xsimd::max(y, V(0.f)) + simd::log1p_unit<arch>(simd::exp2<arch>(-xsimd::abs(y) * V(log2e)));
        const V p = a * half * half;
        p.store_aligned(sj);
        sum += p;
      }
      return sum;
    }
  };
  /// LSSAR with threshold 0: base-2 log-weights power * log2 softplus(y).
  template <class G>
  struct any_power : softmax_step {
    using V = typename G::V;
    static constexpr bool transforms = true;
    V lambda[G::NR];
    float power;
    V transform(V x, int n, int) const { return V(power) * log2_softplus<typename G::arch>(x * lambda[n]); }
  };
  /// LSSAR's re-weighting: power * log2 max(0, n_i a_ij / Z_i - threshold).
  template <class G>
  struct reweighted : softmax_step {
    using V = typename G::V;
    using arch = typename G::arch;
    static constexpr bool transforms = true;
    V lambda[G::NR], log2_n_over_z[G::NR];
    float power, threshold;
    V transform(V x, int n, int) const {
      const V r = simd::exp2<arch>(log2_softplus<arch>(x * lambda[n]) + log2_n_over_z[n]) - V(threshold);
      return V(power) * simd::log2<arch>(xsimd::max(r, V(0.f)));
    }
  };

  template <class G, class F>
  void with_step(const tile_rows<G::Br>& t, index_t, const chunk&, F&& f) const {
    using V = typename G::V;
    if (pass.log_z) {
      reweighted<G> step{};
      for (int n = 0; n < G::NR; ++n)
        step.lambda[n] = V::load_aligned(t.param[0] + n * G::W), step.log2_n_over_z[n] = V::load_aligned(t.param[1] + n * G::W);
      step.power = pass.power, step.threshold = pass.policy->threshold;
      return f(step);
    }
    if (pass.power == 1.f) {
      unit_power<G> step{};
      for (int n = 0; n < G::NR; ++n) step.lambda[n] = V::load_aligned(t.param[0] + n * G::W);
      return f(step);
    }
    any_power<G> step{};
    for (int n = 0; n < G::NR; ++n) step.lambda[n] = V::load_aligned(t.param[0] + n * G::W);
    step.power = pass.power;
    f(step);
  }

  /// The exact path's score (natural units, double): the same transform from the definition.
  double score(double s, index_t b, index_t h, index_t i, index_t) const {
    const key_span span = softmax_span(p, b, i, pb.nq, pb.nk);
    const index_t n = span.hi - span.lo + 1;
    const double log_a = log_softplus(length_factor(n) * s);
    if (!pass.log_z) return double(pass.power) * log_a;
    const double r = double(n) * std::exp(log_a - log_z(b, h, i)) - double(pass.policy->threshold);
    return r > 0 ? double(pass.power) * std::log(r) : -std::numeric_limits<double>::infinity();
  }
};

}  // namespace detail::flash

namespace detail {

/// Softplus attention on the CPU (arguments validated): one flash pass, or with a threshold two
/// (the first computes each row's log Z alone, without the p.v products).
template <class Q, class K, class V, class O>
void run_softplus(const softplus& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
                  const tensor_view<const V>& v, const tensor_view<O>& out, const options& o) {
  if (p.threshold == 0) return flash::run(softplus_pass{&p, p.scale, p.power, nullptr, false}, q, k, v, out, o);
  scratch_lease lease;
  const index_t rows = q.batch() * q.heads() * q.seq();
  float* log_z = static_cast<float*>(lease.reserve(static_cast<std::size_t>(rows) * sizeof(float)));
  options first = o;
  first.lse = log_z, first.lse_size = rows;
  flash::run(softplus_pass{&p, p.scale, 1.f, nullptr, true}, q, k, v, out, first);
  flash::run(softplus_pass{&p, p.scale, p.power, log_z, false}, q, k, v, out, o);
}

}  // namespace detail
}  // namespace attnkit
