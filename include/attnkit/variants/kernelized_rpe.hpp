/// \file
/// Kernelized attention with relative positional encoding (Luo et al., NeurIPS 2021, arXiv
/// 2106.12566): out_i = sum_j c_{j-i} (phi(q_i) . phi(k_j)) v_j / (sum_j c_{j-i} phi(q_i) .
/// phi(k_j) + eps) with c_r = exp(b_r). The weights c_{j-i} form a Toeplitz matrix, so every
/// sum over keys is a Toeplitz product, computed by the FFT in O(N log N)
/// (engines/toeplitz_fft.hpp). spec/kernelized_rpe_fft.md.
#pragma once

#include <cmath>
#include <functional>
#include <limits>

#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "feature_maps.hpp"

namespace attnkit {

template <class FeatureMap = favor_plus>
struct kernelized_rpe {
  FeatureMap feature_map{};      ///< favor_plus (the paper's), elu_plus_one or relu
  const float* bias = nullptr;   ///< Hq x (Nq + Nk - 1) floats: [h][r + Nk - 1] = b_r; null: all 0
  std::function<float(index_t, index_t)> bias_fn;  ///< alternative to bias: (h, r) -> b_r, sampled once per call
  bool causal = false;           ///< keys with r = j - (i + Nk - Nq) > 0 excluded
  bool normalize_qk = true;      ///< L2-normalise q and k rows before the feature map
  float scale = 0;               ///< FAVOR+ estimates exp(scale q.k); 0: 1 with normalize_qk, else 1/sqrt(D)
  float eps = 1e-6f;             ///< added to every denominator
};

namespace detail {

template <class FeatureMap>
void validate(const kernelized_rpe<FeatureMap>& p, index_t, index_t q_heads, index_t nq, index_t nk) {
  static_assert(is_feature_map_v<FeatureMap>,
                "attnkit::kernelized_rpe: FeatureMap must be favor_plus, elu_plus_one or relu");
  validate_feature_map("kernelized_rpe", p.feature_map);
  validate_scale("kernelized_rpe", p.scale);
  if constexpr (std::is_same_v<FeatureMap, favor_plus>) validate_favor_scale("kernelized_rpe: scale", p.scale);
  require(std::isfinite(p.eps) && p.eps >= 0, "kernelized_rpe: eps = ", p.eps, ", expected a finite value >= 0");
  require(p.bias == nullptr || !p.bias_fn, "kernelized_rpe: bias and bias_fn are both set, expected at most one");
  if (p.bias == nullptr || nq == 0 || nk == 0) return;
  const index_t offsets = nq + nk - 1;  // both at most 2^31 - 1
  const index_t count = checked_mul(q_heads, offsets, "kernelized_rpe: bias size Hq * (Nq + Nk - 1) = ", q_heads, " * ", offsets);
  for (index_t t = 0; t < count; ++t)
    require(!std::isnan(p.bias[t]) && p.bias[t] != std::numeric_limits<float>::infinity(), "kernelized_rpe: bias[",
            t / offsets, "][", t % offsets, "] = ", p.bias[t], ", expected a finite value or -inf");
}

}  // namespace detail
}  // namespace attnkit
