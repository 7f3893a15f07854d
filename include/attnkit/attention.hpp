/// \file
/// The one call: attention(policy, q, k, v, out, options), its float64 reference, the
/// log-sum-exp merge of partial results, and dense_mask for static patterns.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "core/checks.hpp"
#include "core/error.hpp"
#include "core/options.hpp"
#include "core/tensor_view.hpp"
#include "engines/feature_gaussian.hpp"
#include "engines/flash.hpp"
#include "engines/linear.hpp"
#include "engines/local_linear.hpp"
#include "engines/toeplitz_fft.hpp"
#include "reference/affine_scaled.hpp"
#include "reference/custom.hpp"
#include "reference/gaussian_adaptive.hpp"
#include "reference/hip.hpp"
#include "reference/kernelized_rpe.hpp"
#include "reference/linear.hpp"
#include "reference/local_linear.hpp"
#include "reference/masked.hpp"
#include "reference/neighborhood.hpp"
#include "reference/power.hpp"
#include "reference/probabilistic.hpp"
#include "reference/radial.hpp"
#include "reference/routing.hpp"
#include "reference/softmax.hpp"
#include "reference/softplus.hpp"
#include "variants/affine_scaled.hpp"
#include "variants/custom.hpp"
#include "variants/feature_maps.hpp"
#include "variants/gaussian_adaptive.hpp"
#include "variants/hip.hpp"
#include "variants/kernelized_rpe.hpp"
#include "variants/linear.hpp"
#include "variants/local_linear.hpp"
#include "variants/neighborhood.hpp"
#include "variants/power.hpp"
#include "variants/probabilistic.hpp"
#include "variants/radial.hpp"
#include "variants/routing.hpp"
#include "variants/softmax.hpp"
#include "variants/softplus.hpp"

namespace attnkit {

namespace detail {
template <class Space>
inline constexpr bool is_runnable_space_v =
#if defined(__CUDACC__)
    std::is_same_v<Space, host> || std::is_same_v<Space, cuda>;
#else
    std::is_same_v<Space, host>;
#endif

/// A policy runs on the flash engine when its variant header defines its plan.
template <class Policy, class = void>
struct is_flash_policy : std::false_type {};
template <class Policy>
struct is_flash_policy<Policy, std::void_t<decltype(sizeof(flash::flash_plan<Policy>))>> : std::true_type {};
template <class Policy>
inline constexpr bool is_flash_policy_v = is_flash_policy<Policy>::value;

/// Policies with a driver of their own: content-based ones select keys from q and k first,
/// then run the flash engine; softplus and affine-scaled attention run the flash engine with
/// passes before or after; linear, kernelized, local linear and Gaussian adaptive attention
/// run engines of their own.
template <class Policy>
struct has_own_driver
    : std::bool_constant<std::is_same_v<Policy, routing> || std::is_same_v<Policy, hip> ||
                         std::is_same_v<Policy, softplus> || std::is_same_v<Policy, affine_scaled> ||
                         std::is_same_v<Policy, local_linear> || std::is_same_v<Policy, gaussian_adaptive>> {};
template <class FeatureMap>
struct has_own_driver<linear<FeatureMap>> : std::true_type {};
template <class FeatureMap>
struct has_own_driver<kernelized_rpe<FeatureMap>> : std::true_type {};
template <class Policy>
inline constexpr bool has_own_driver_v = has_own_driver<Policy>::value;

template <class Policy>
struct is_linear : std::false_type {};
template <class FeatureMap>
struct is_linear<linear<FeatureMap>> : std::true_type {};
template <class Policy>
struct is_kernelized_rpe : std::false_type {};
template <class FeatureMap>
struct is_kernelized_rpe<kernelized_rpe<FeatureMap>> : std::true_type {};

/// The checks of a policy that need the views (routing: its centroids are Hq * C * D floats).
template <class Policy, class Q, class K, class V>
void validate_with_views(const Policy&, const tensor_view<Q>&, const tensor_view<K>&, const tensor_view<V>&) {}
template <class Q, class K, class V>
void validate_with_views(const routing& p, const tensor_view<Q>& q, const tensor_view<K>&, const tensor_view<V>&) {
  validate_centroids(p, q.heads(), q.dim());
}
/// FAVOR+: the projection's size depends on the head dimension.
template <class Q, class K, class V>
void validate_with_views(const linear<favor_plus>& p, const tensor_view<Q>& q, const tensor_view<K>&,
                         const tensor_view<V>&) {
  validate_favor_size("linear", p.feature_map, q.dim());
}
template <class Q, class K, class V>
void validate_with_views(const kernelized_rpe<favor_plus>& p, const tensor_view<Q>& q, const tensor_view<K>&,
                         const tensor_view<V>&) {
  validate_favor_size("kernelized_rpe", p.feature_map, q.dim());
}

template <class Policy, class Q, class K, class V, class O>
void run(const Policy& p, const tensor_view<const Q>& q, const tensor_view<const K>& k, const tensor_view<const V>& v,
         const tensor_view<O>& out, const options& o) {
  if constexpr (std::is_same_v<Policy, routing>)
    run_routing(p, q, k, v, out, o);
  else if constexpr (std::is_same_v<Policy, hip>)
    run_hip(p, q, k, v, out, o);
  else if constexpr (is_linear<Policy>::value)
    linear_engine::run(p, q, k, v, out, o);
  else if constexpr (is_kernelized_rpe<Policy>::value)
    toeplitz_fft::run(p, q, k, v, out, o);
  else if constexpr (std::is_same_v<Policy, softplus>)
    run_softplus(p, q, k, v, out, o);
  else if constexpr (std::is_same_v<Policy, affine_scaled>)
    run_affine_scaled(p, q, k, v, out, o);
  else if constexpr (std::is_same_v<Policy, local_linear>)
    local_linear_engine::run(p, q, k, v, out, o);
  else if constexpr (std::is_same_v<Policy, gaussian_adaptive>)
    feature_gaussian::run(p, q, k, v, out, o);
  else
    flash::run(p, q, k, v, out, o);
}
}  // namespace detail

/// Runs attention variant `p` on q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv] into
/// out [B, Hq, Nq, Dv]. Throws attnkit::error, before writing anything, on invalid input.
template <class Policy, class Q, class K, class V, class O, class Space>
void attention(const Policy& p, tensor_view<Q, Space> q, tensor_view<K, Space> k, tensor_view<V, Space> v,
               tensor_view<O, Space> out, const options& o = {}) {
  static_assert(detail::is_runnable_space_v<Space>,
                "attnkit: CUDA views need a translation unit compiled by nvcc (CUDA specialisations "
                "live in include/attnkit/cuda/); this build is host-only");
  static_assert(std::is_same_v<Space, host>, "attnkit: no CUDA specialisation exists yet for this policy");
  static_assert(detail::is_flash_policy_v<Policy> || detail::has_own_driver_v<Policy>,
                "attnkit: unknown attention policy");
  detail::check_shapes(q, k, v, out, o);
  detail::validate(p, q.batch(), q.heads(), q.seq(), k.seq());
  detail::validate_with_views(p, q, k, v);
  detail::run(p, tensor_view<const Q>(q), tensor_view<const K>(k), tensor_view<const V>(v), out, o);
}

namespace reference {

/// The float64 reference of every variant: same contract as attnkit::attention, O(N^2).
template <class Policy, class Q, class K, class V, class O>
void attention(const Policy& p, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
               const options& o = {}) {
  attnkit::detail::check_shapes(q, k, v, out, o);
  attnkit::detail::validate(p, q.batch(), q.heads(), q.seq(), k.seq());
  attnkit::detail::validate_with_views(p, q, k, v);
  detail::run(p, tensor_view<const Q>(q), tensor_view<const K>(k), tensor_view<const V>(v), out, o);
}

}  // namespace reference

/// Combines two partial results over disjoint key sets: (out_a, lse_a) becomes the result
/// over the union. lse arrays are contiguous [B, H, N]; -inf marks an empty partial result.
/// (out_b's type is not deduced, so a writable view converts to it implicitly.)
template <class T, class Space>
void merge_states(tensor_view<T, Space> out_a, float* lse_a,
                  tensor_view<const std::common_type_t<T>, std::common_type_t<Space>> out_b, const float* lse_b) {
  static_assert(std::is_same_v<Space, host>, "attnkit: merge_states on CUDA views needs nvcc");
  static_assert(detail::is_element_v<T> && !std::is_const_v<T>, "attnkit: merge_states needs float, bf16 or f16");
  detail::check_view("merge_states", "out_a", out_a);
  detail::check_view("merge_states", "out_b", out_b);
  for (int a = 0; a < 4; ++a)
    detail::require(out_a.extent(a) == out_b.extent(a), "merge_states: out_b.extent(", a, ") = ", out_b.extent(a),
                    ", expected out_a.extent(", a, ") = ", out_a.extent(a));
  const index_t rows = out_a.batch() * out_a.heads() * out_a.seq();
  detail::require(rows == 0 || (lse_a != nullptr && lse_b != nullptr), "merge_states: lse_a and lse_b must not be null");
  detail::require(!detail::overlaps_itself(out_a), "merge_states: out_a has elements that share memory");
  detail::require(!detail::share_memory(out_a, out_b), "merge_states: out_b shares memory with out_a");
  if (rows == 0) return;
  const tensor_view<const float, Space> la(lse_a, {1, 1, 1, rows}, {rows, rows, rows, 1}),
      lb(lse_b, {1, 1, 1, rows}, {rows, rows, rows, 1});
  detail::check_view("merge_states", "lse_a", la);
  detail::check_view("merge_states", "lse_b", lb);
  detail::require(!detail::share_memory(la, out_a) && !detail::share_memory(la, out_b),
                  "merge_states: lse_a shares memory with out_a or out_b");
  detail::require(!detail::share_memory(lb, out_a), "merge_states: lse_b shares memory with out_a");
  constexpr float inf = std::numeric_limits<float>::infinity();
  for (index_t r = 0; r < rows; ++r) {
    // -inf marks an empty partial result; +inf and NaN are no log-sum-exp of finite scores.
    detail::require(!std::isnan(lse_a[r]) && lse_a[r] != inf, "merge_states: lse_a[", r, "] = ", lse_a[r],
                    ", expected a finite value or -inf");
    detail::require(!std::isnan(lse_b[r]) && lse_b[r] != inf, "merge_states: lse_b[", r, "] = ", lse_b[r],
                    ", expected a finite value or -inf");
  }
  for (index_t b = 0; b < out_a.batch(); ++b)
    for (index_t h = 0; h < out_a.heads(); ++h)
      for (index_t i = 0; i < out_a.seq(); ++i) {
        const index_t r = (b * out_a.heads() + h) * out_a.seq() + i;
        const float m = std::max(lse_a[r], lse_b[r]);
        if (m == -inf) {
          for (index_t d = 0; d < out_a.dim(); ++d) out_a(b, h, i, d) = detail::from_float<T>(0.f);
          lse_a[r] = -inf;
          continue;
        }
        // Normalised weights, in double: the result is a convex combination, so finite parts
        // never overflow (3e38 + 3e38 would, and so would FLT_MAX * (1 + 1 ulp) in float).
        const double wa = std::exp(double(lse_a[r]) - m), wb = std::exp(double(lse_b[r]) - m), sum = wa + wb;
        const double ca = wa / sum, cb = wb / sum;
        for (index_t d = 0; d < out_a.dim(); ++d) {
          const double merged = ca * detail::to_float(out_a(b, h, i, d)) + cb * detail::to_float(out_b(b, h, i, d));
          out_a(b, h, i, d) = detail::from_float<T>(static_cast<float>(merged));
        }
        lse_a[r] = static_cast<float>(m + std::log(sum));
      }
}

}  // namespace attnkit
