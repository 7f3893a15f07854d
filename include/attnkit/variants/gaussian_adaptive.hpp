/// \file
/// Gaussian adaptive attention, GAAM (Ioannides, Chadha, Elkins 2024, arXiv 2401.11143; code
/// gioannides/Gaussian-Adaptive-Attention, GaussianBlock.py): along one axis, each element x
/// of a chunk is weighted by a product of G Gaussians centred at the chunk's mean plus learnt
/// offsets, with learnt variance scales; the weights are normalised over the chunk and
/// multiply the input. The normalised product is a softmax of a quadratic in x:
///   w = softmax_axis(-sum_g (x - mu - delta_g)^2 / (2 c_g^2 var)),   out = x * w (+ x).
/// attention(gaussian_adaptive, q, k, v, out) transforms v (q and k are only shape-checked:
/// pass v for all three). spec/probabilistic.md, part B.
///
/// A slice whose variance is 0 (a constant slice with eps = 0) gets uniform weights 1/n, the
/// limit of every nearby slice (the code's 0/0 would be NaN). options::lse is not written:
/// GAAM normalises over features or tokens of v, not over keys, so there is no log-sum-exp
/// to merge; memory behind a non-null lse is left as it was.
#pragma once

#include <cmath>
#include <cstddef>

#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"

namespace attnkit {

struct gaussian_adaptive {
  enum class axis_kind {
    dim,  ///< re-weight the Dv features of each token
    seq,  ///< re-weight the tokens of each feature
  };
  axis_kind axis = axis_kind::dim;
  index_t chunks = 1;                  ///< GAAM heads along the axis: chunks of floor(n / chunks), the last takes the rest
  index_t gaussians = 1;               ///< Gaussians per chunk
  const float* mean_offsets = nullptr; ///< chunks x gaussians offsets delta; null: zeros
  const float* var_scales = nullptr;   ///< chunks x gaussians scales c > 0; null: ones
  float eps = 1e-8f;                   ///< added to the variance
  bool unbiased = true;                ///< variance divides by n - 1 (the code) or n
  bool residual = false;               ///< out = GAAM(v) + v
};

namespace detail {

/// The checks that need no tensor: axis, chunk and Gaussian counts, eps.
inline void validate(const gaussian_adaptive& p, index_t, index_t, index_t, index_t) {
  using axis_kind = gaussian_adaptive::axis_kind;
  require(p.axis == axis_kind::dim || p.axis == axis_kind::seq, "gaussian_adaptive: axis = ",
          static_cast<int>(p.axis), ", expected dim or seq");
  // No axis is longer than 2^31 - 1 (max_sequence >= max_head_dim), so neither is a chunk count.
  require(p.chunks >= 1 && p.chunks <= max_sequence, "gaussian_adaptive: chunks = ", p.chunks,
          ", expected in [1, 2^31 - 1]");
  require(p.gaussians >= 1, "gaussian_adaptive: gaussians = ", p.gaussians, ", expected >= 1");
  const index_t params = checked_mul(p.chunks, p.gaussians, "gaussian_adaptive: chunks * gaussians = ", p.chunks,
                                     " * ", p.gaussians);
  require((p.mean_offsets == nullptr && p.var_scales == nullptr) ||
              params <= max_view_bytes / static_cast<index_t>(sizeof(float)),
          "gaussian_adaptive: chunks * gaussians = ", params,
          " floats per parameter array, expected at most 2^54 (no address space holds more)");
  require(std::isfinite(p.eps) && p.eps >= 0, "gaussian_adaptive: eps = ", p.eps, ", expected a finite value >= 0");
}

/// Length of the axis GAAM normalises over: v's features (axis dim) or tokens (axis seq).
template <class V>
index_t gaussian_axis_length(const gaussian_adaptive& p, const tensor_view<V>& v) {
  return p.axis == gaussian_adaptive::axis_kind::dim ? v.dim() : v.seq();
}

/// out = GAAM(v) has v's shape, so q and k must have v's heads and tokens; the chunks must
/// fit the axis (each at least 2 long with the unbiased variance); the parameters must be
/// finite, the scales positive. An axis of length 0 (no tokens) forms no chunk to check.
template <class Q, class K, class V>
void validate_with_views(const gaussian_adaptive& p, const tensor_view<Q>& q, const tensor_view<K>& k,
                         const tensor_view<V>& v) {
  require(q.heads() == k.heads(), "gaussian_adaptive: q.heads() = ", q.heads(), ", expected k.heads() = ", k.heads(),
          " (out = GAAM(v) has v's shape: pass v as q and k)");
  require(q.seq() == k.seq(), "gaussian_adaptive: q.seq() = ", q.seq(), ", expected k.seq() = ", k.seq(),
          " (out = GAAM(v) has v's shape: pass v as q and k)");
  const bool along_dim = p.axis == gaussian_adaptive::axis_kind::dim;
  const char* axis_name = along_dim ? "v.dim()" : "v.seq()";
  const index_t n = gaussian_axis_length(p, v);
  if (n > 0) {
    require(p.chunks <= n, "gaussian_adaptive: chunks = ", p.chunks, ", expected at most the axis length ", axis_name,
            " = ", n, " (chunks of floor(", n, " / ", p.chunks, ") = 0 elements)");
    require(!p.unbiased || n / p.chunks >= 2, "gaussian_adaptive: chunks = ", p.chunks, " along ", axis_name, " = ", n,
            " makes chunks of ", n / p.chunks, " element, expected at least 2 with unbiased = true (the variance divides by "
            "length - 1): chunks <= ", n / 2, " or unbiased = false");
  }
  const index_t params = p.chunks * p.gaussians;  // validate() checked the product
  if (p.mean_offsets != nullptr)
    for (index_t i = 0; i < params; ++i)
      require(std::isfinite(p.mean_offsets[i]), "gaussian_adaptive: mean_offsets[", i, "] = ", p.mean_offsets[i],
              " (chunk ", i / p.gaussians, ", gaussian ", i % p.gaussians, "), expected a finite value");
  if (p.var_scales != nullptr)
    for (index_t i = 0; i < params; ++i)
      require(std::isfinite(p.var_scales[i]) && p.var_scales[i] > 0, "gaussian_adaptive: var_scales[", i, "] = ",
              p.var_scales[i], " (chunk ", i / p.gaussians, ", gaussian ", i % p.gaussians,
              "), expected a finite value > 0");
}

}  // namespace detail
}  // namespace attnkit
