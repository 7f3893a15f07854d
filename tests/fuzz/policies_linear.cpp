/// \file
/// Fuzz decoders of linear attention (attnkit::linear) and kernelized attention with relative
/// positions (attnkit::kernelized_rpe), each with its three feature maps, extreme and invalid
/// fields (tests/fuzz/harness.hpp).
///
/// Both compute ratios of feature sums, compared with the float64 reference only where the
/// features are well conditioned (lf.feature_input_max): FAVOR+ exponents |x'|^2 = scale |x|^2
/// kept small; for the FFT path, whose round-off is relative to the largest values of a
/// transform, normalised rows or inputs of magnitude <= 1 and biases in [-2, 2]. Everywhere
/// else: finite inputs give no NaN, and one thread gives the same bits.
#include "harness.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace attnkit_fuzz {

namespace {

/// The FAVOR+ fields (decisions favor_*).
attnkit::favor_plus decode_favor(fuzz_case& c) {
  reader& r = c.r;
  attnkit::favor_plus f;
  f.features = pick_field(c, "favor_features", {16, 1, 2, 7, 64, 0, -1, 65537}, 5);
  f.orthogonal = r.flag("favor_orthogonal", true);
  f.norm_scaling = static_cast<int>(pick_field(c, "favor_norm_scaling", {0, 1, 2, -1}, 2));
  f.seed = r.take("favor_seed", 0, 3);
  f.hyperbolic = r.flag("favor_hyperbolic");
  if (f.hyperbolic && f.features > 0 && f.features % 2 != 0) c.fault("hyperbolic with an odd feature count");
  return f;
}

template <class FeatureMap>
index_t feature_count(const FeatureMap& f) {
  if constexpr (std::is_same_v<FeatureMap, attnkit::favor_plus>) return f.features;
  else return 0;
}

std::string describe_map(const attnkit::elu_plus_one&) { return "elu_plus_one"; }
std::string describe_map(const attnkit::relu& f) { return "relu{feature_eps=" + fmt(double(f.feature_eps)) + "}"; }
std::string describe_map(const attnkit::favor_plus& f) {
  return "favor_plus{features=" + fmt(f.features) + ", orthogonal=" + std::to_string(f.orthogonal) +
         ", norm_scaling=" + std::to_string(f.norm_scaling) + ", scale=" + fmt(double(f.scale)) +
         ", seed=" + std::to_string(f.seed) + ", hyperbolic=" + std::to_string(f.hyperbolic) + "}";
}

/// eps (decision eps): 1e-6, 0, 1 valid; negative, NaN, inf faults.
float decode_eps(fuzz_case& c) {
  const int i = static_cast<int>(c.r.take("eps", 6, 0));
  const float values[6] = {1e-6f, 0.f, 1.f, -1e-6f, f_nan, f_inf};
  if (i >= 3) c.fault("eps = " + fmt(double(values[i])));
  return values[i];
}

/// A FAVOR+ scale (decision favor_scale): 0 (1/sqrt(D)), 0.1, 1, 2 valid; -1, NaN, inf faults.
float decode_favor_scale(fuzz_case& c, const char* what) {
  const int i = static_cast<int>(c.r.take("favor_scale", 7, 0));
  const float values[7] = {0.f, 0.1f, 1.f, 2.f, -1.f, f_nan, f_inf};
  if (i >= 4) c.fault(std::string(what) + " = " + fmt(double(values[i])));
  return values[i];
}

/// FAVOR+ projections drawing more than 2^24 normals for this head dimension are rejected.
void check_favor_size(fuzz_case& c, const attnkit::favor_plus& f, const problem& pb) {
  const index_t d = pb.ext[0][3];
  if (f.features >= 1 && f.features <= attnkit::detail::max_features && d >= 1 && d <= attnkit::detail::max_head_dim &&
      attnkit::detail::favor_normals(f, d) > attnkit::detail::max_favor_normals)
    c.fault("the FAVOR+ projection draws " + fmt(attnkit::detail::favor_normals(f, d)) + " normals at D = " + fmt(d));
}

/// The work of feature attention with m features (lf.work_per_pair, lf.work_per_token): the
/// reference's dot product and value sums per pair; per token the features (FAVOR+'s
/// projections) and the state or the FFT columns, with room for the FFT's log factor.
void set_feature_work(fuzz_case& c, const problem& pb, index_t m) {
  const double d = std::max(0.0, double(pb.ext[0][3])), dv = std::max(0.0, double(pb.ext[2][3]));
  const double features = std::max(0.0, double(m));
  c.lf.work_per_pair = features + dv + 1;
  c.lf.work_per_token = features * (d + 16 * dv + 16);
}

/// |x| bound for FAVOR+ exponents |x'|^2 = scale |x|^2 <= limit over D values.
double favor_input_max(float scale, index_t d, double limit) {
  const double s = scale != 0 ? double(scale) : 1.0 / std::sqrt(double(std::max<index_t>(d, 1)));
  return std::sqrt(limit / (s * double(std::max<index_t>(d, 1))));
}

template <class FeatureMap>
void run_linear(fuzz_case& c, const FeatureMap& f) {
  attnkit::linear<FeatureMap> p;
  p.feature_map = f;
  p.causal = c.r.flag("linear_causal");
  p.eps = decode_eps(c);
  p.chunk = pick_field(c, "chunk", {0, 1, 3, 32, 64, 100000, -1, i64_max}, 6);
  const problem pb = decode_problem(c, {});
  set_feature_work(c, pb, std::is_same_v<FeatureMap, attnkit::favor_plus> ? feature_count(f) : pb.ext[0][3]);
  c.lf.feature_sums = true;
  c.lf.feature_tol = 1e-4;
  if constexpr (std::is_same_v<FeatureMap, attnkit::favor_plus>) {
    check_favor_size(c, f, pb);
    c.lf.feature_input_max = favor_input_max(f.scale, pb.ext[0][3], 16);
  } else
    c.lf.feature_input_max = 10;
  c.policy = "linear{" + describe_map(f) + ", causal=" + std::to_string(p.causal) + ", eps=" + fmt(double(p.eps)) +
             ", chunk=" + fmt(p.chunk) + "}";
  run_types(c, p, pb, type_set::float_bf16);
}

template <class FeatureMap>
void run_kernelized(fuzz_case& c, const FeatureMap& f, float scale) {
  reader& r = c.r;
  attnkit::kernelized_rpe<FeatureMap> p;
  p.feature_map = f;
  p.scale = scale;
  p.causal = r.flag("rpe_causal");
  p.normalize_qk = r.flag("normalize_qk", true);
  p.eps = decode_eps(c);
  const int bias_mode = static_cast<int>(r.take("bias", 10, 1));
  std::uint64_t seed = r.take("bias_seed", 0, 5);
  const problem pb = decode_problem(c, {});
  // Hq x (Nq + Nk - 1) biases when those are sizes at all.
  const index_t hq = pb.ext[0][1], offsets = pb.ext[0][2] + pb.ext[1][2] - 1;
  const bool sized = hq > 0 && offsets > 0 && offsets <= (1 << 20) / hq;
  std::vector<float> bias;
  if (sized) {
    bias.resize(static_cast<std::size_t>(hq * offsets));
    const double spread = bias_mode == 2 ? 50 : 2;
    for (float& b : bias) b = static_cast<float>(uniform_random(seed, -spread, spread));
    if (bias_mode == 3)
      for (std::size_t i = 0; i < bias.size(); i += 3) bias[i] = -f_inf;
    if (bias_mode == 4) std::fill(bias.begin(), bias.end(), -f_inf);
    if (bias_mode == 5) bias.back() = f_nan;
    if (bias_mode == 6) bias.front() = f_inf;
  }
  const bool uses_bias = bias_mode >= 1 && bias_mode <= 6, uses_fn = bias_mode >= 7;
  if (uses_bias) p.bias = sized ? bias.data() : nullptr;
  if (uses_fn) {
    const bool nan = bias_mode == 8;
    p.bias_fn = [nan](index_t h, index_t rr) {
      return nan && rr == 0 ? f_nan : static_cast<float>(((h * 7 + rr * 3) % 9 - 4) * 0.5);
    };
  }
  if (bias_mode == 9) p.bias = sized ? bias.data() : nullptr;
  const bool visible_keys = pb.ext[0][2] > 0 && pb.ext[1][2] > 0;
  if (uses_bias && !sized) c.maybe("no bias for this problem's shapes");
  if ((bias_mode == 5 || bias_mode == 6) && sized && visible_keys) c.fault(bias_mode == 5 ? "a bias is NaN" : "a bias is +inf");
  if (bias_mode == 8 && visible_keys && pb.ext[0][0] > 0) c.fault("bias_fn(h, 0) is NaN");  // sampled only with work to do
  if (bias_mode == 9 && sized) c.fault("bias and bias_fn both set");
  set_feature_work(c, pb, std::is_same_v<FeatureMap, attnkit::favor_plus> ? feature_count(f) : pb.ext[0][3]);
  c.lf.feature_sums = true;
  c.lf.feature_tol = 2e-3;
  if constexpr (std::is_same_v<FeatureMap, attnkit::favor_plus>) check_favor_size(c, f, pb);
  const bool calm_bias = bias_mode == 0 || bias_mode == 1 || bias_mode == 3 || bias_mode == 7;
  if (calm_bias && !std::is_same_v<FeatureMap, attnkit::relu>) {
    if constexpr (std::is_same_v<FeatureMap, attnkit::favor_plus>) {
      const float s = scale != 0 ? scale : p.normalize_qk ? 1.f : 0.f;
      c.lf.feature_input_max = p.normalize_qk ? (s <= 2 ? 10 : 0) : favor_input_max(s, pb.ext[0][3], 4);
    } else {
      c.lf.feature_input_max = p.normalize_qk ? 10 : 1;
    }
  }
  const char* bias_names[10] = {"null", "uniform [-2, 2]", "uniform [-50, 50]", "every third -inf", "all -inf",
                                "one NaN", "one +inf", "bias_fn", "bias_fn NaN at r = 0", "bias and bias_fn"};
  c.policy = "kernelized_rpe{" + describe_map(f) + ", bias " + bias_names[bias_mode] + ", causal=" +
             std::to_string(p.causal) + ", normalize_qk=" + std::to_string(p.normalize_qk) + ", scale=" +
             fmt(double(p.scale)) + ", eps=" + fmt(double(p.eps)) + "}";
  run_types(c, p, pb, type_set::float_bf16);
}

}  // namespace

void decode_linear(fuzz_case& c) {
  switch (c.r.take("feature_map", 3, 0)) {
    case 1: {
      attnkit::relu f;
      const int i = static_cast<int>(c.r.take("feature_eps", 5, 0));
      const float values[5] = {0.f, 1e-3f, 1.f, -1e-3f, f_nan};
      f.feature_eps = values[i];
      if (i >= 3) c.fault("feature_eps = " + fmt(double(values[i])));
      return run_linear(c, f);
    }
    case 2: {
      attnkit::favor_plus f = decode_favor(c);
      f.scale = decode_favor_scale(c, "feature_map.scale");
      return run_linear(c, f);
    }
    default: return run_linear(c, attnkit::elu_plus_one{});
  }
}

void decode_kernelized_rpe(fuzz_case& c) {
  switch (c.r.take("feature_map", 3, 0)) {
    case 1: return run_kernelized(c, attnkit::relu{}, decode_scale(c));
    case 2: {
      const attnkit::favor_plus f = decode_favor(c);
      return run_kernelized(c, f, decode_favor_scale(c, "scale"));
    }
    default: return run_kernelized(c, attnkit::elu_plus_one{}, decode_scale(c));
  }
}

}  // namespace attnkit_fuzz
