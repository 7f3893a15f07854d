/// \file
/// Kernel feature maps phi of linear and kernelized attention (spec/linear.md "Feature maps"):
/// phi(q) . phi(k) replaces exp(q . k). elu_plus_one and relu are applied to the raw rows
/// (m = D); favor_plus is Performer's positive random features (Choromanski et al. 2021,
/// arXiv 2009.14794), an unbiased estimate of exp(scale q . k) from m random projections.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/random.hpp"

namespace attnkit {

/// phi(x) = elu(x) + 1: x + 1 for x > 0, exp(x) otherwise (Katharopoulos et al. 2020).
struct elu_plus_one {};

/// phi(x) = max(x, 0) + feature_eps.
struct relu {
  float feature_eps = 0;  ///< added to every feature (Performer's generalized attention: 1e-3)
};

/// Positive random features: phi(x)_r = m^(-1/2) exp(w_r . x' - |x'|^2 / 2), x' = sqrt(scale) x.
struct favor_plus {
  index_t features = 256;    ///< m
  bool orthogonal = true;    ///< orthogonal random features (blocks of D orthonormal rows)
  int norm_scaling = 0;      ///< 0: row norms of N(0, I_D) draws; 1: every row norm sqrt(D)
  float scale = 0;           ///< the kernel estimates exp(scale q . k); 0 means 1/sqrt(D)
  std::uint64_t seed = 0;    ///< seed of the projection matrix (SplitMix64)
  bool hyperbolic = false;   ///< [exp(+w.x'), exp(-w.x')] pairs: m/2 directions
};

namespace detail {

template <class FeatureMap>
inline constexpr bool is_feature_map_v = std::is_same_v<FeatureMap, elu_plus_one> ||
                                         std::is_same_v<FeatureMap, relu> || std::is_same_v<FeatureMap, favor_plus>;

/// m, the number of features of a row of d values.
inline index_t feature_count(const elu_plus_one&, index_t d) { return d; }
inline index_t feature_count(const relu&, index_t d) { return d; }
inline index_t feature_count(const favor_plus& f, index_t) { return f.features; }

/// Largest m: features of a tile of rows live in each worker's scratch.
inline constexpr index_t max_features = 65536;

inline void validate_feature_map(const char* policy, const elu_plus_one&) { (void)policy; }
inline void validate_feature_map(const char* policy, const relu& f) {
  require(std::isfinite(f.feature_eps) && f.feature_eps >= 0, policy, ": feature_map.feature_eps = ", f.feature_eps,
          ", expected a finite value >= 0");
}
inline void validate_feature_map(const char* policy, const favor_plus& f) {
  require(f.features >= 1 && f.features <= max_features, policy, ": feature_map.features = ", f.features,
          ", expected in [1, ", max_features, "]");
  require(!f.hyperbolic || f.features % 2 == 0, policy, ": feature_map.features = ", f.features,
          ", expected an even count with hyperbolic = true");
  require(f.norm_scaling == 0 || f.norm_scaling == 1, policy, ": feature_map.norm_scaling = ", f.norm_scaling,
          ", expected 0 (chi_D row norms) or 1 (sqrt(D))");
}

/// FAVOR+ estimates exp(scale q.k) with x' = sqrt(scale) x: scale 0 (the default) or positive.
inline void validate_favor_scale(const char* what, float scale) {
  require(scale == 0 || (std::isfinite(scale) && scale >= 0x1p-126f && scale <= 0x1p127f), what, " = ", scale,
          ", expected 0 (the default) or a positive value in [2^-126, 2^127] for favor_plus");
}

/// Most standard normals a FAVOR+ projection may draw: orthogonal features draw whole d x d
/// blocks (the spec's stream), so m = 1 at d = 65536 would be 2^32 draws.
inline constexpr index_t max_favor_normals = index_t(1) << 24;

/// The normals favor_projection draws for rows of d values (saturating).
inline index_t favor_normals(const favor_plus& f, index_t d) {
  const index_t rows = f.hyperbolic ? f.features / 2 : f.features;
  const index_t blocks = f.orthogonal ? saturating_mul(ceil_div(rows, d), saturating_mul(d, d)) : saturating_mul(rows, d);
  return saturating_add(blocks, f.norm_scaling == 0 && f.orthogonal ? saturating_mul(rows, d) : 0);
}

/// The projection of features `f` over rows of d values draws at most max_favor_normals.
inline void validate_favor_size(const char* policy, const favor_plus& f, index_t d) {
  require(favor_normals(f, d) <= max_favor_normals, policy, ": feature_map.features = ", f.features, " (orthogonal = ",
          f.orthogonal, ") with head dimension ", d, " draws ", favor_normals(f, d),
          " normals for the projection, expected at most 2^24 (fewer features, or orthogonal = false)");
}

}  // namespace detail

/// The FAVOR+ projection matrix W for rows of d values, row-major float64: m rows (m / 2 with
/// hyperbolic), deterministic from f.seed (spec/linear.md): SplitMix64 normals by Box-Muller,
/// one stream filling every matrix row-major in order; iid rows, or ceil(rows / d) blocks of d
/// normal rows orthonormalised in order (modified Gram-Schmidt) and scaled by the norms of the
/// rows of a further normal matrix (norm_scaling 0) or by sqrt(d) (norm_scaling 1).
inline std::vector<double> favor_projection(const favor_plus& f, index_t d) {
  detail::validate_feature_map("favor_projection", f);
  detail::require(d >= 1 && d <= detail::max_head_dim, "favor_projection: d = ", d, ", expected in [1, ",
                  detail::max_head_dim, "]");
  detail::validate_favor_size("favor_projection", f, d);
  const index_t rows = f.hyperbolic ? f.features / 2 : f.features;
  const auto at = [d](index_t r, index_t c) { return static_cast<std::size_t>(r * d + c); };
  std::vector<double> w(static_cast<std::size_t>(rows * d));
  detail::normal_stream normal(f.seed);
  if (!f.orthogonal) {
    for (double& x : w) x = normal.next();
    return w;
  }
  // Each block draws d x d normals; only its first `kept` rows are orthonormalised and kept
  // (row i depends on rows < i only), the rest of the draws are discarded.
  std::vector<double> block(static_cast<std::size_t>(std::min(rows, d) * d));
  for (index_t r0 = 0; r0 < rows; r0 += d) {
    const index_t kept = std::min(d, rows - r0);
    for (index_t t = 0; t < d * d; ++t) {
      const double x = normal.next();
      if (t < kept * d) block[static_cast<std::size_t>(t)] = x;
    }
    for (index_t i = 0; i < kept; ++i) {
      double* gi = block.data() + i * d;
      for (index_t j = 0; j < i; ++j) {  // remove the components along the rows before
        const double* gj = block.data() + j * d;
        double dot = 0;
        for (index_t c = 0; c < d; ++c) dot += gi[c] * gj[c];
        for (index_t c = 0; c < d; ++c) gi[c] -= dot * gj[c];
      }
      double norm = 0;
      for (index_t c = 0; c < d; ++c) norm += gi[c] * gi[c];
      norm = std::sqrt(norm);
      for (index_t c = 0; c < d; ++c) gi[c] /= norm;
    }
    for (index_t i = 0; i < kept; ++i)
      for (index_t c = 0; c < d; ++c) w[at(r0 + i, c)] = block[static_cast<std::size_t>(i * d + c)];
  }
  for (index_t r = 0; r < rows; ++r) {
    double norm = 0;
    if (f.norm_scaling == 0) {
      for (index_t c = 0; c < d; ++c) {
        const double g = normal.next();
        norm += g * g;
      }
      norm = std::sqrt(norm);
    } else {
      norm = std::sqrt(static_cast<double>(d));
    }
    for (index_t c = 0; c < d; ++c) w[at(r, c)] *= norm;
  }
  return w;
}

}  // namespace attnkit
