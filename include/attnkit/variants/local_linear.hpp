/// \file
/// Local linear attention (Zuo et al., arXiv 2510.01450): softmax attention is Nadaraya-Watson
/// (local constant) regression of values on keys at the query; LLA fits a local *linear* model
/// with the same kernel weights pi_ij and returns its value at the query:
/// out_i = nu_i + C_i S_i^{-1} (q_i - mu_i), with mu, nu the weighted means of keys and values,
/// S the weighted key covariance plus ridge * I, C the weighted value-key covariance.
/// Theta(Nq Nk D (D + Dv)) work by nature. spec/extra_variants.md, section 3.
#pragma once

#include <cmath>
#include <cstdint>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "softmax.hpp"

namespace attnkit {

struct local_linear {
  float scale = 0;                          ///< kernel exp(scale q.k); 0 means 1/sqrt(D)
  float ridge = 1e-2f;                      ///< lambda added to the weighted key covariance
  bool causal = false;                      ///< bottom-right aligned causal mask
  index_t window_left = -1;                 ///< keys j >= p - window_left; -1 unbounded
  index_t window_right = -1;                ///< keys j <= p + window_right; -1 unbounded
  const std::int32_t* key_lens = nullptr;   ///< per batch entry: valid keys (null: all)
  const std::int32_t* query_lens = nullptr; ///< per batch entry: valid queries (null: all)
};

namespace detail {

/// Part of the definition for singular S (ridge 0): eigenvalues of S at most this times
/// trace(S) count as zero, so out = nu + C S^+ (q - mu) with that pseudo-inverse.
inline constexpr double local_linear_rank_tolerance = 1e-10;

/// The softmax fields of a local linear policy: its kernel's scale and its masks.
inline softmax softmax_fields(const local_linear& p) {
  softmax s;
  s.scale = p.scale, s.causal = p.causal, s.window_left = p.window_left, s.window_right = p.window_right;
  s.key_lens = p.key_lens, s.query_lens = p.query_lens;
  return s;
}

inline void validate(const local_linear& p, index_t batch, index_t q_heads, index_t nq, index_t nk) {
  validate_softmax_fields("local_linear", softmax_fields(p), batch, q_heads, nq, nk);
  require(std::isfinite(p.ridge) && p.ridge >= 0, "local_linear: ridge = ", p.ridge, ", expected a finite value >= 0");
}

}  // namespace detail
}  // namespace attnkit
