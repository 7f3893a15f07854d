/// \file
/// Linear attention (Katharopoulos et al. 2020, arXiv 2006.16236; Performer, Choromanski et al.
/// 2021, arXiv 2009.14794): out_i = sum_j (phi(q_i) . phi(k_j)) v_j / (sum_j phi(q_i) . phi(k_j)
/// + eps), factored through the key-value state S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j):
/// O(N m Dv) time. Causal runs in chunks (engines/linear.hpp). spec/linear.md.
#pragma once

#include <cmath>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "feature_maps.hpp"

namespace attnkit {

template <class FeatureMap = elu_plus_one>
struct linear {
  FeatureMap feature_map{};  ///< elu_plus_one, relu or favor_plus
  bool causal = false;       ///< query i sums keys j <= i + Nk - Nq (bottom-right aligned)
  float eps = 1e-6f;         ///< added to every denominator
  index_t chunk = 0;         ///< causal chunk length; 0: the engine picks
};

namespace detail {

template <class FeatureMap>
void validate(const linear<FeatureMap>& p, index_t, index_t, index_t, index_t) {
  static_assert(is_feature_map_v<FeatureMap>, "attnkit::linear: FeatureMap must be elu_plus_one, relu or favor_plus");
  validate_feature_map("linear", p.feature_map);
  if constexpr (std::is_same_v<FeatureMap, favor_plus>) validate_favor_scale("linear: feature_map.scale", p.feature_map.scale);
  require(std::isfinite(p.eps) && p.eps >= 0, "linear: eps = ", p.eps, ", expected a finite value >= 0");
  require(p.chunk >= 0 && p.chunk <= max_sequence, "linear: chunk = ", p.chunk, ", expected 0 (engine picks) or in [1, 2^31 - 1]");
}

}  // namespace detail
}  // namespace attnkit
