/// \file
/// Fuzz decoders of the content-based policies attnkit::hip and attnkit::routing, with
/// extreme and invalid fields (tests/fuzz/harness.hpp).
#include "harness.hpp"

namespace attnkit_fuzz {

void decode_hip(fuzz_case& c) {
  attnkit::hip p;
  p.top_k = pick_field(c, "top_k", {8, 1, 2, 3, 16, 64, 512, pow2_62, i64_max, 0, -1}, 9);
  p.block_q = pick_field(c, "block_q", {4, 1, 2, 3, 8, 32, 64, pow2_62, 0, -1}, 7);
  const std::size_t sq = static_cast<std::size_t>(c.r.take("hip_stride_q", 5, 0));
  p.stride_q = sq == 0 ? 1 : sq == 1 ? 2 : sq == 2 ? p.block_q : sq == 3 ? p.block_q + 1 : 0;
  if (sq >= 3 || (sq == 1 && p.block_q < 2)) c.fault("stride_q = " + fmt(p.stride_q) + " with block_q " + fmt(p.block_q));
  p.block_k = pick_field(c, "block_k", {2, 1, 3, 4, 8, 64, pow2_32, 0, -1}, 6);
  const std::size_t sk = static_cast<std::size_t>(c.r.take("hip_stride_k", 5, 0));
  p.stride_k = sk == 0 ? 1 : sk == 1 ? 2 : sk == 2 ? p.block_k : sk == 3 ? p.block_k + 1 : 0;
  if (sk >= 3 || (sk == 1 && p.block_k < 2)) c.fault("stride_k = " + fmt(p.stride_k) + " with block_k " + fmt(p.block_k));
  p.sink = pick_field(c, "sink", {0, 1, 2, 5, 64, pow2_62, i64_max, -1}, 7);
  p.window = pick_field(c, "window", {0, 1, 3, 16, 256, pow2_62, i64_max, -1}, 7);
  p.causal = c.r.flag("hip_causal", true);
  p.scale = decode_scale(c);
  const problem pb = decode_problem(c, {});
  c.lf.scale = p.scale;
  c.policy = "hip{top_k=" + fmt(p.top_k) + ", block_q=" + fmt(p.block_q) + ", stride_q=" + fmt(p.stride_q) +
             ", block_k=" + fmt(p.block_k) + ", stride_k=" + fmt(p.stride_k) + ", sink=" + fmt(p.sink) +
             ", window=" + fmt(p.window) + ", causal=" + std::to_string(p.causal) + ", scale=" + fmt(double(p.scale)) + "}";
  run_types(c, p, pb, type_set::softmax);
}

void decode_routing(fuzz_case& c) {
  reader& r = c.r;
  attnkit::routing p;
  p.num_clusters = pick_field(c, "num_clusters", {3, 1, 2, 4, 7, 16, 64, pow2_32, 0, -1}, 7);
  p.window_q = pick_field(c, "window_q", {0, 1, 5, 64, i64_max, -1}, 5);
  p.window_k = pick_field(c, "window_k", {0, 1, 5, 64, i64_max, -1}, 5);
  const int assignment = static_cast<int>(r.take("assignment", 3, 0));
  p.assignment = assignment == 2 ? static_cast<attnkit::routing::assignment_kind>(7)
                                 : static_cast<attnkit::routing::assignment_kind>(assignment);
  if (assignment == 2) c.fault("assignment = 7 (no such assignment_kind)");
  const int norm = static_cast<int>(r.take("routing_norm", 3, 0));
  p.routing_norm = norm == 2 ? static_cast<attnkit::routing::routing_norm_kind>(-1)
                             : static_cast<attnkit::routing::routing_norm_kind>(norm);
  if (norm == 2) c.fault("routing_norm = -1 (no such routing_norm_kind)");
  p.causal = r.flag("routing_causal");
  p.scale = decode_scale(c);
  const int centroid_values = static_cast<int>(r.take("centroids", 4, 0));
  const problem pb = decode_problem(c, {});
  // Centroids for the problem's query heads and head dimension (when those are sizes at all).
  std::vector<float> mu;
  const index_t hq = pb.ext[0][1], d = pb.ext[0][3];
  const bool sized = hq > 0 && d > 0 && p.num_clusters > 0 && p.num_clusters <= 64 && hq * d <= (1 << 16);
  if (sized) {
    std::uint64_t seed = r.take("centroid_seed", 0, 5);
    mu.resize(static_cast<std::size_t>(hq * p.num_clusters * d));
    for (float& x : mu) x = static_cast<float>(uniform_random(seed, -1, 1));
    if (centroid_values == 2) mu.back() = f_nan, c.fault("a centroid is NaN");
    if (centroid_values == 3) mu.front() = f_inf, c.fault("a centroid is inf");
  }
  p.centroids = mu.empty() ? nullptr : mu.data();
  if (centroid_values == 1) p.centroids = nullptr, c.fault("centroids = nullptr");
  else if (!sized) c.maybe("no centroids for this problem's shapes");
  c.lf.scale = p.scale;
  c.policy = "routing{num_clusters=" + fmt(p.num_clusters) + ", window_q=" + fmt(p.window_q) +
             ", window_k=" + fmt(p.window_k) + ", assignment=" + std::to_string(assignment) +
             ", routing_norm=" + std::to_string(norm) + ", causal=" + std::to_string(p.causal) +
             ", scale=" + fmt(double(p.scale)) + ", centroids " +
             (centroid_values == 1 ? "null" : centroid_values == 2 ? "with a NaN" : centroid_values == 3 ? "with an inf" : "uniform in [-1, 1)") + "}";
  run_types(c, p, pb, type_set::softmax);
}

}  // namespace attnkit_fuzz
