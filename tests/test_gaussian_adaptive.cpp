// Gaussian adaptive attention, GAAM (Ioannides, Chadha, Elkins 2024, arXiv 2401.11143;
// spec/probabilistic.md part B): the feature-gaussian engine against the float64 reference
// (reference/gaussian_adaptive.hpp, the literal product of Gaussians) on odd sizes, both axes,
// several chunks and Gaussians, layouts and 16-bit types; then the spec's properties (weights
// positive summing to one, the identity case, translation and scale invariance, constant
// slices, chunking), the slices the float passes hand to double (values near FLT_MAX,
// subnormal spreads, sharp Gaussians, far offsets, a vertex between clusters), thread-count
// invariance, lse left alone, empty tensors and validation.
// Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::f16;
using attnkit::index_t;
using axis_kind = attnkit::gaussian_adaptive::axis_kind;

namespace {

/// Float outputs: |got - want| <= atol + rtol |want| (values of v are O(1)).
constexpr double float_atol = 1e-7, float_rtol = 1e-5;
/// 16-bit outputs: one rounding to 8 (bf16) or 11 (f16) bits.
constexpr double half_atol = 1e-4, half_rtol = 8e-3;

/// chunks x gaussians offsets and scales.
struct gaam_params {
  std::vector<float> offsets, scales;
};

/// Offsets uniform in [-offset_amp, offset_amp]; scales exp(N(0, log_sd)) (the code's
/// initialisation is exp(N(0, 1))).
gaam_params random_params(index_t chunks, index_t gaussians, std::mt19937& gen, float offset_amp = 0.5f,
                          float log_sd = 0.5f) {
  std::uniform_real_distribution<float> u(-offset_amp, offset_amp);
  std::normal_distribution<float> n(0.f, log_sd);
  gaam_params prm;
  for (index_t i = 0; i < chunks * gaussians; ++i) prm.offsets.push_back(u(gen)), prm.scales.push_back(std::exp(n(gen)));
  return prm;
}

attnkit::gaussian_adaptive make(axis_kind axis, index_t chunks = 1, index_t gaussians = 1, const gaam_params* prm = nullptr,
                                bool unbiased = true, bool residual = false, float eps = 1e-8f) {
  attnkit::gaussian_adaptive p;
  p.axis = axis, p.chunks = chunks, p.gaussians = gaussians;
  if (prm) p.mean_offsets = prm->offsets.data(), p.var_scales = prm->scales.data();
  p.unbiased = unbiased, p.residual = residual, p.eps = eps;
  return p;
}

std::string describe(const attnkit::gaussian_adaptive& p) {
  std::ostringstream o;
  o << "gaussian_adaptive{axis=" << (p.axis == axis_kind::dim ? "dim" : "seq") << " chunks=" << p.chunks
    << " gaussians=" << p.gaussians << " params=" << (p.mean_offsets ? "yes" : "no") << " eps=" << p.eps
    << " unbiased=" << p.unbiased << " residual=" << p.residual << "}";
  return o.str();
}

std::string describe(const std::array<index_t, 4>& e) {
  std::ostringstream o;
  o << "[B=" << e[0] << " H=" << e[1] << " N=" << e[2] << " D=" << e[3] << "]";
  return o.str();
}

/// Every lse slot (and its guards) still holds the sentinel run_fast / run_ref put there.
template <class O>
bool lse_untouched(const result<O>& r) {
  return std::all_of(r.lse_mem.begin(), r.lse_mem.end(), [](float x) { return x == -777.f; });
}

/// CHECKs out against the reference, the guards, and that lse was not written.
template <class O>
void check_against(const result<O>& fast, const result<float>& ref, double atol, double rtol) {
  const auto [ok, msg] = compare_out(fast.out, ref.out, atol, rtol);
  INFO(msg);
  CHECK(ok);
  CHECK(guards_intact(fast.out));
  CHECK(all_finite(fast.out));
  CHECK(lse_untouched(fast));
  CHECK(lse_untouched(ref));
}

/// GAAM of a random v (type In, layout lin) into out (type Out, layout lout), fast against the
/// reference.
template <class In, class Out = float>
void check_case(const attnkit::gaussian_adaptive& p, const std::array<index_t, 4>& ext, std::mt19937& gen,
                layout lin = layout::bhsd, layout lout = layout::bhsd, int threads = 0) {
  INFO(describe(p) << " v=" << describe(ext) << " in=" << type_name<In>() << "/" << name(lin)
                   << " out=" << type_name<Out>() << "/" << name(lout) << " threads=" << threads);
  const tensor<In> v = random_tensor<In>(ext, lin, gen);
  const result<Out> fast = run_fast<Out>(p, v, v, v, lout, threads);
  const result<float> ref = run_ref<float>(p, v, v, v);
  constexpr bool half = !std::is_same_v<Out, float>;
  check_against(fast, ref, half ? half_atol : float_atol, half ? half_rtol : float_rtol);
}

/// GAAM of a float bhsd tensor (fast path unless `reference`).
result<float> gaam(const attnkit::gaussian_adaptive& p, const tensor<float>& v, int threads = 0, bool reference = false) {
  return reference ? run_ref<float>(p, v, v, v) : run_fast<float>(p, v, v, v, layout::bhsd, threads);
}

/// The coordinates of every chunk of every slice of a tensor of extents `ext`, in order.
std::vector<std::vector<std::array<index_t, 4>>> chunks_of(const attnkit::gaussian_adaptive& p,
                                                          const std::array<index_t, 4>& ext) {
  const bool along_dim = p.axis == axis_kind::dim;
  const index_t n = along_dim ? ext[3] : ext[2], across = along_dim ? ext[2] : ext[3], size = n / p.chunks;
  std::vector<std::vector<std::array<index_t, 4>>> all;
  for (index_t b = 0; b < ext[0]; ++b)
    for (index_t h = 0; h < ext[1]; ++h)
      for (index_t j = 0; j < across; ++j)
        for (index_t c = 0; c < p.chunks; ++c) {
          std::vector<std::array<index_t, 4>> one;
          for (index_t i = c * size; i < (c + 1 == p.chunks ? n : (c + 1) * size); ++i)
            one.push_back(along_dim ? std::array<index_t, 4>{b, h, j, i} : std::array<index_t, 4>{b, h, i, j});
          all.push_back(std::move(one));
        }
  return all;
}

/// The weights out / v (no residual; v has no zero).
std::vector<double> weights_of(const result<float>& r, const tensor<float>& v) {
  std::vector<double> w;
  v.for_each([&](index_t b, index_t h, index_t s, index_t d) { w.push_back(double(r.out.get(b, h, s, d)) / v.get(b, h, s, d)); });
  return w;
}

/// v with elements of magnitude in [1/4, 1], random signs, on a grid of 2^-12 (so that adding
/// 8 or multiplying by 8 is exact).
tensor<float> grid_tensor(const std::array<index_t, 4>& ext, std::mt19937& gen) {
  tensor<float> v(ext, layout::bhsd, nan_of<float>());
  std::uniform_int_distribution<int> mag(1024, 4096), sign(0, 1);
  v.for_each([&](index_t b, index_t h, index_t s, index_t d) {
    v.set(b, h, s, d, (sign(gen) ? 1.f : -1.f) * std::ldexp(float(mag(gen)), -12));
  });
  return v;
}

/// Relative difference of two weight vectors, the largest.
double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return worst;
}

}  // namespace

TEST_CASE("gaussian_adaptive: matches the float64 reference on odd sizes, both axes", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  // D up to 256 runs 16 tokens packed into lanes, longer rows one by one (D = 300); token
  // counts that are not multiples of 16 leave padding lanes.
  const std::array<index_t, 4> shapes[] = {{2, 3, 37, 45}, {1, 2, 53, 19}, {1, 1, 9, 130}, {3, 1, 70, 16}, {1, 1, 21, 300}};
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq})
    for (const auto& ext : shapes)
      for (const index_t chunks : {1, 2, 3})
        for (const index_t gaussians : {1, 3}) {
          const gaam_params prm = random_params(chunks, gaussians, gen);
          for (const bool unbiased : {true, false})
            for (const bool residual : {false, true})
              check_case<float>(make(axis, chunks, gaussians, &prm, unbiased, residual), ext, gen);
        }
  // Defaults (no parameter arrays), and chunks that leave one element to spare or none.
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    check_case<float>(make(axis), {1, 2, 33, 64}, gen);
    const gaam_params prm = random_params(7, 2, gen);
    check_case<float>(make(axis, 7, 2, &prm), {1, 1, 15, 15}, gen);
    check_case<float>(make(axis, 5, 2, &prm, false), {1, 2, 5, 5}, gen);  // chunks of 1 element, biased
  }
}

TEST_CASE("gaussian_adaptive: many Gaussians fold into the literal product", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Wide offsets and scales from 0.2 to 5: the folded quadratic against the per-Gaussian loop.
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq})
    for (const index_t gaussians : {2, 8, 16}) {
      const gaam_params prm = random_params(2, gaussians, gen, 2.f, 0.8f);
      check_case<float>(make(axis, 2, gaussians, &prm), {1, 2, 48, 40}, gen);
      check_case<float>(make(axis, 2, gaussians, &prm, true, true, 1e-3f), {1, 2, 48, 40}, gen);
    }
}

TEST_CASE("gaussian_adaptive: layouts, strides and 16-bit types", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  const gaam_params prm = random_params(2, 2, gen);
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    const auto p = make(axis, 2, 2, &prm, true, true);
    for (const layout lin : {layout::bhsd, layout::bshd, layout::strided})
      for (const layout lout : {layout::bhsd, layout::bshd, layout::strided}) {
        check_case<float>(p, {2, 3, 21, 35}, gen, lin, lout);
        check_case<float>(p, {1, 2, 40, 32}, gen, lin, lout);  // whole 16-feature blocks
      }
    // 16-bit inputs are compared with the reference of the same rounded values: float
    // tolerance for float out; one rounding for 16-bit out.
    for (const layout l : {layout::bhsd, layout::strided}) {
      check_case<bf16, float>(p, {1, 3, 29, 40}, gen, l, l);
      check_case<f16, float>(p, {1, 3, 29, 40}, gen, l, l);
      check_case<bf16, bf16>(p, {1, 3, 29, 40}, gen, l, l);
      check_case<float, f16>(p, {1, 3, 29, 40}, gen, l, l);
    }
  }
}

TEST_CASE("gaussian_adaptive: weights are positive and sum to one over every chunk", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::array<index_t, 4> ext{1, 2, 30, 27};
  const tensor<float> v = grid_tensor(ext, gen);
  // Scales of at least 1: log weights stay above -(n - 1), so none underflows (a float
  // weight below 2^-125 is 0, as exp2 gives it).
  gaam_params prm = random_params(3, 2, gen);
  for (float& c : prm.scales) c = 1.f + std::fabs(c - 1.f);
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    const auto p = make(axis, 3, 2, &prm);
    INFO(describe(p));
    const result<float> r = gaam(p, v);
    index_t not_positive = 0, not_one = 0;
    double worst = 0, smallest = 1;
    for (const auto& chunk : chunks_of(p, ext)) {
      double sum = 0;
      for (const auto& [b, h, s, d] : chunk) {
        const double w = double(r.out.get(b, h, s, d)) / v.get(b, h, s, d);
        not_positive += w > 0 ? 0 : 1;
        smallest = std::min(smallest, w);
        sum += w;
      }
      worst = std::max(worst, std::abs(sum - 1));
      not_one += std::abs(sum - 1) > 1e-5 ? 1 : 0;
    }
    INFO("smallest weight " << smallest << ", largest |sum - 1| " << worst);
    CHECK(not_positive == 0);
    CHECK(not_one == 0);
  }
}

TEST_CASE("gaussian_adaptive: identity case gives v / n, and v (1 + 1/n) with the residual", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  // G = 1, delta = 0, c = 1e6: every weight is 1/n up to 1e-12 relative.
  const std::array<index_t, 4> ext{2, 2, 24, 19};
  const tensor<float> v = random_tensor<float>(ext, layout::bhsd, gen);
  gaam_params flat{std::vector<float>(3, 0.f), std::vector<float>(3, 1e6f)};
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq})
    for (const bool residual : {false, true}) {
      const auto p = make(axis, 3, 1, &flat, true, residual);
      INFO(describe(p));
      const result<float> r = gaam(p, v);
      index_t bad = 0;
      for (const auto& chunk : chunks_of(p, ext)) {
        const double n = static_cast<double>(chunk.size());
        for (const auto& [b, h, s, d] : chunk) {
          const double x = v.get(b, h, s, d), want = residual ? x * (1 + 1 / n) : x / n;
          if (std::abs(r.out.get(b, h, s, d) - want) > 1e-6 * std::abs(want) + 1e-12) ++bad;
        }
      }
      CHECK(bad == 0);
    }
}

TEST_CASE("gaussian_adaptive: translation leaves the weights, scaling too without offsets", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::array<index_t, 4> ext{1, 2, 26, 33};
  const tensor<float> v = grid_tensor(ext, gen);
  const gaam_params prm = random_params(2, 3, gen, 1.f);
  const gaam_params centred{std::vector<float>(6, 0.f), prm.scales};
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    // Translation: mu moves with the data, so every offset still applies (exact here: grid values + 8).
    const auto p = make(axis, 2, 3, &prm);
    INFO(describe(p));
    tensor<float> shifted = v;
    shifted.for_each([&](index_t b, index_t h, index_t s, index_t d) { shifted.set(b, h, s, d, v.get(b, h, s, d) + 8.f); });
    const double moved = max_rel_diff(weights_of(gaam(p, shifted), shifted), weights_of(gaam(p, v), v));
    INFO("translation: largest relative change of a weight " << moved);
    CHECK(moved < 2e-5);
    // Scaling: y = (x - mu) / sigma is unchanged when delta = 0 and eps = 0.
    const auto q = make(axis, 2, 3, &centred, true, false, 0.f);
    for (const float a : {8.f, 3.f, 0.01f}) {
      tensor<float> scaled = v;
      scaled.for_each([&](index_t b, index_t h, index_t s, index_t d) { scaled.set(b, h, s, d, a * v.get(b, h, s, d)); });
      const double change = max_rel_diff(weights_of(gaam(q, scaled), scaled), weights_of(gaam(q, v), v));
      INFO("scaling by " << a << ": largest relative change of a weight " << change);
      CHECK(change < 2e-5);
    }
  }
}

TEST_CASE("gaussian_adaptive: constant slices get uniform weights, also with eps = 0", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Rows (dim) or columns (seq) constant; offsets nonzero, two Gaussians; one chunk of a row
  // constant among others that are not (dim axis, chunk 1 of 3).
  const std::array<index_t, 4> ext{1, 2, 18, 21};
  const gaam_params prm = random_params(3, 2, gen, 1.f);
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq})
    for (const float eps : {1e-8f, 0.f}) {
      tensor<float> v = random_tensor<float>(ext, layout::bhsd, gen);
      const auto p = make(axis, 3, 2, &prm, true, false, eps);
      INFO(describe(p));
      v.for_each([&](index_t b, index_t h, index_t s, index_t d) {
        if (axis == axis_kind::dim ? s % 3 == 0 : d % 3 == 0) v.set(b, h, s, d, 0.75f + float(h));
        if (axis == axis_kind::dim && s % 3 == 1 && d >= 7 && d < 14) v.set(b, h, s, d, -1.5f);
      });
      const result<float> r = gaam(p, v), ref = gaam(p, v, 0, true);
      CHECK(all_finite(r.out));
      const auto [ok, msg] = compare_out(r.out, ref.out, float_atol, float_rtol);
      INFO(msg);
      CHECK(ok);
      index_t bad = 0;
      for (const auto& chunk : chunks_of(p, ext)) {
        const auto& [b0, h0, s0, d0] = chunk.front();
        const float x0 = v.get(b0, h0, s0, d0);
        if (!std::all_of(chunk.begin(), chunk.end(), [&](const auto& e) { return v.get(e[0], e[1], e[2], e[3]) == x0; }))
          continue;
        for (const auto& [b, h, s, d] : chunk)
          if (std::abs(r.out.get(b, h, s, d) - x0 / double(chunk.size())) > 1e-7 * std::abs(x0)) ++bad;
      }
      CHECK(bad == 0);
    }
}

TEST_CASE("gaussian_adaptive: chunks equal separate single-chunk calls on the sub-slices", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::array<index_t, 4> ext{2, 2, 31, 43};
  const index_t chunks = 3, gaussians = 2;
  const gaam_params prm = random_params(chunks, gaussians, gen);
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq})
    for (const layout l : {layout::bhsd, layout::strided}) {
      const auto p = make(axis, chunks, gaussians, &prm, true, true);
      INFO(describe(p) << " layout " << name(l));
      const tensor<float> v = random_tensor<float>(ext, l, gen);
      const result<float> whole = run_fast<float>(p, v, v, v, l);
      tensor<float> pieces = output_tensor<float>(ext, l);
      const index_t n = axis == axis_kind::dim ? ext[3] : ext[2], size = n / chunks;
      for (index_t c = 0; c < chunks; ++c) {
        const index_t first = c * size, len = c + 1 == chunks ? n - first : size;
        const int a = axis == axis_kind::dim ? attnkit::dim_axis : attnkit::seq_axis;
        const auto sub = [&](auto view) {
          auto extents = view.extents();
          extents[static_cast<std::size_t>(a)] = len;
          using T = typename decltype(view)::element_type;
          return attnkit::tensor_view<T>(view.data() + first * view.stride(a), extents, view.strides());
        };
        attnkit::gaussian_adaptive one = make(axis, 1, gaussians, nullptr, true, true);
        one.mean_offsets = prm.offsets.data() + c * gaussians, one.var_scales = prm.scales.data() + c * gaussians;
        const auto sv = sub(v.cview());
        attnkit::attention(one, sv, sv, sv, sub(pieces.view));
      }
      CHECK(same_bits(whole.out, pieces));
    }
}

TEST_CASE("gaussian_adaptive: slices beyond the float passes' range stay finite and match", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::array<index_t, 4> ext{1, 1, 24, 32};
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  // Each case fills v(b, h, s, d) from a value in [-1, 1] and (s, d); the slices the engine
  // must route to double or re-anchor, on both axes.
  struct extreme {
    const char* what;
    std::function<float(float, index_t, index_t)> value;
    float offset, scale, eps;
  };
  const extreme cases[] = {
      {"values near FLT_MAX (sums overflow)", [](float x, index_t, index_t) { return 3.3e38f * x; }, 0.f, 1.f, 1e-8f},
      {"values near FLT_MAX, all positive", [](float x, index_t, index_t) { return 3e38f + 3e37f * x; }, 0.5f, 0.7f, 1e-8f},
      {"subnormal spread", [](float x, index_t s, index_t d) { return x > 0 ? 1e-45f * float((s + d) % 3) : 0.f; }, 0.f, 1.f, 0.f},
      {"tiny values, eps dominates", [](float x, index_t, index_t) { return 1e-30f * x; }, 1.f, 1.f, 1e-8f},
      {"sharp Gaussian (c = 1e-20)", [](float x, index_t, index_t) { return x; }, 0.f, 1e-20f, 1e-8f},
      {"offset far outside the data (300)", [](float x, index_t, index_t) { return x; }, 300.f, 1.f, 1e-8f},
      {"offset a few sigma outside", [](float x, index_t, index_t) { return x; }, 6.f, 0.5f, 1e-8f},
      {"vertex between two clusters", [](float x, index_t s, index_t d) { return ((s + d) % 2 ? 1.f : -1.f) + 0.01f * x; },
       0.f, 0.05f, 1e-8f},
      {"huge values, tiny spread", [](float x, index_t, index_t) { return 1e20f + 1e14f * x; }, 0.f, 1.f, 0.f},
      {"mean much larger than the spread", [](float x, index_t, index_t) { return 1000.f + x; }, 0.3f, 0.8f, 1e-8f},
  };
  for (const auto& c : cases)
    for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
      const gaam_params prm{{c.offset, 0.f}, {c.scale, 2.f}};
      for (const index_t gaussians : {1, 2}) {
        const auto p = make(axis, 1, gaussians, &prm, true, false, c.eps);
        INFO(c.what << " " << describe(p));
        tensor<float> v(ext, layout::bhsd, nan_of<float>());
        v.for_each([&](index_t b, index_t h, index_t s, index_t d) { v.set(b, h, s, d, c.value(u(gen), s, d)); });
        const result<float> r = gaam(p, v), ref = gaam(p, v, 0, true);
        CHECK(all_finite(r.out));
        const auto [ok, msg] = compare_out(r.out, ref.out, 1e-30, 2e-5);
        INFO(msg);
        CHECK(ok);
      }
    }
}

TEST_CASE("gaussian_adaptive: an offset of 1e30 puts all weight on the largest element", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  // mu + 1e30 rounds away every x in double, so the literal reference sees equal scores; the
  // exact answer is one-hot at the element nearest to mu + 1e30, the largest.
  const std::array<index_t, 4> ext{1, 2, 20, 35};
  const tensor<float> v = random_tensor<float>(ext, layout::bhsd, gen);
  const gaam_params far{{1e30f}, {1.f}};
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    const auto p = make(axis, 1, 1, &far);
    INFO(describe(p));
    const result<float> r = gaam(p, v);
    index_t bad = 0;
    for (const auto& chunk : chunks_of(p, ext)) {
      const auto top = *std::max_element(chunk.begin(), chunk.end(), [&](const auto& a, const auto& b) {
        return v.get(a[0], a[1], a[2], a[3]) < v.get(b[0], b[1], b[2], b[3]);
      });
      for (const auto& e : chunk) {
        const float got = r.out.get(e[0], e[1], e[2], e[3]), want = e == top ? v.get(e[0], e[1], e[2], e[3]) : 0.f;
        if (!(got == want)) ++bad;
      }
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("gaussian_adaptive: bitwise the same for every thread count", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::array<index_t, 4> ext{2, 3, 300, 40};
  const gaam_params prm = random_params(3, 2, gen);
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    const auto p = make(axis, 3, 2, &prm, true, true);
    INFO(describe(p));
    const tensor<float> v = random_tensor<float>(ext, layout::bshd, gen);
    const result<float> one = run_fast<float>(p, v, v, v, layout::bhsd, 1);
    for (const int threads : {2, 3, 0}) {
      INFO("threads " << threads);
      CHECK(same_bits(one.out, run_fast<float>(p, v, v, v, layout::bhsd, threads).out));
    }
  }
}

#if defined(__SSE2__)
TEST_CASE("gaussian_adaptive: outputs large enough for non-temporal stores are the same", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  // An out of stream_bytes(), 64-byte aligned, is written with streaming stores; each half
  // (one head) with plain stores.
  const index_t elements = static_cast<index_t>(attnkit::detail::feature_gaussian::stream_bytes() / sizeof(float));
  const index_t n = elements / 256, d = 128;
  const tensor<float> v = random_tensor<float>({1, 2, n, d}, layout::bhsd, gen);
  const auto aligned = [](std::vector<float>& buffer) {
    const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
    return buffer.data() + (64 - address % 64) % 64 / sizeof(float);
  };
  std::vector<float> whole_mem(static_cast<std::size_t>(elements + 16)), halves_mem(whole_mem.size());
  float* const whole = aligned(whole_mem);
  float* const halves = aligned(halves_mem);
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    const auto p = make(axis, 2, 1, nullptr, true, true);
    INFO(describe(p) << " n=" << n);
    attnkit::attention(p, v.cview(), v.cview(), v.cview(), attnkit::view_bhsd(whole, 1, 2, n, d));
    for (index_t h = 0; h < 2; ++h) {
      const auto vh = attnkit::tensor_view<const float>(v.cview().data() + h * n * d, {1, 1, n, d}, {2 * n * d, n * d, d, 1});
      attnkit::attention(p, vh, vh, vh, attnkit::view_bhsd(halves + h * n * d, 1, 1, n, d));
    }
    CHECK(std::equal(whole, whole + elements, halves, [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; }));
    CHECK(std::all_of(whole, whole + elements, [](float x) { return std::isfinite(x); }));
  }
}
#endif

TEST_CASE("gaussian_adaptive: options::lse is left as it was; empty tensors write nothing", "[gaussian_adaptive]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
    const auto p = make(axis, 2);
    const tensor<float> v = random_tensor<float>({1, 2, 6, 8}, layout::bhsd, gen);
    CHECK(lse_untouched(run_fast<float>(p, v, v, v)));
    CHECK(lse_untouched(run_ref<float>(p, v, v, v)));
    for (const std::array<index_t, 4> ext : {std::array<index_t, 4>{0, 2, 6, 8}, std::array<index_t, 4>{1, 2, 0, 8}}) {
      INFO(describe(p) << " " << describe(ext));
      const tensor<float> e = random_tensor<float>(ext, layout::bhsd, gen);
      CHECK(guards_intact(run_fast<float>(p, e, e, e).out));
      CHECK(guards_intact(run_ref<float>(p, e, e, e).out));
    }
  }
  // No tokens along seq: no chunk exists, so even more chunks than a token count pass.
  const tensor<float> e = random_tensor<float>({1, 1, 0, 4}, layout::bhsd, gen);
  CHECK(guards_intact(run_fast<float>(make(axis_kind::seq, 1000), e, e, e).out));
}

TEST_CASE("gaussian_adaptive: invalid fields and shapes are rejected before anything is written",
          "[gaussian_adaptive][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::array<index_t, 4> ext{1, 2, 6, 5};
  const tensor<float> v = random_tensor<float>(ext, layout::bhsd, gen);
  const auto rejects = [&](const attnkit::gaussian_adaptive& p, const char* field, const tensor<float>& q,
                           const tensor<float>& k) {
    INFO(describe(p) << " expected an error naming " << field);
    tensor<float> out = output_tensor<float>({q.ext[0], q.ext[1], q.ext[2], v.ext[3]}, layout::bhsd);
    CHECK_THROWS_WITH(attnkit::attention(p, q.cview(), k.cview(), v.cview(), out.view), Catch::Contains(field));
    CHECK_THROWS_WITH(attnkit::reference::attention(p, q.cview(), k.cview(), v.cview(), out.view), Catch::Contains(field));
    CHECK_THROWS_AS(attnkit::attention(p, q.cview(), k.cview(), v.cview(), out.view), attnkit::error);
    CHECK(guards_intact(out));
    out.for_each([&](index_t b, index_t h, index_t s, index_t d) { CHECK(out.get(b, h, s, d) == -12345.f); });
  };
  const auto rejects_policy = [&](const attnkit::gaussian_adaptive& p, const char* field) { rejects(p, field, v, v); };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const gaam_params good{{0.f, 0.f}, {1.f, 1.f}};

  attnkit::gaussian_adaptive p = make(axis_kind::dim);
  p.axis = static_cast<axis_kind>(7);
  rejects_policy(p, "axis");
  for (const index_t chunks : {index_t(0), index_t(-1), index_t(6), attnkit::index_t(1) << 40})
    rejects_policy(make(axis_kind::dim, chunks), "chunks");  // v.dim() = 5
  rejects_policy(make(axis_kind::seq, 7), "chunks");          // v.seq() = 6
  rejects_policy(make(axis_kind::dim, 3), "unbiased");         // floor(5 / 3) = 1
  rejects_policy(make(axis_kind::seq, 4), "unbiased");         // floor(6 / 4) = 1
  rejects_policy(make(axis_kind::dim, 1, 0), "gaussians");
  rejects_policy(make(axis_kind::dim, 1, -2), "gaussians");
  {
    attnkit::gaussian_adaptive big = make(axis_kind::dim, 2, index_t(1) << 62);
    rejects_policy(big, "chunks * gaussians");  // overflows 64 bits
    big = make(axis_kind::dim, 2, index_t(1) << 60, &good);
    rejects_policy(big, "chunks * gaussians");  // more floats than an address space holds
  }
  for (const float bad : {nan, inf, -inf}) {
    gaam_params prm = good;
    prm.offsets[1] = bad;
    rejects_policy(make(axis_kind::dim, 1, 2, &prm), "mean_offsets[1]");
  }
  for (const float bad : {0.f, -1.f, nan, inf}) {
    gaam_params prm = good;
    prm.scales[1] = bad;
    rejects_policy(make(axis_kind::seq, 1, 2, &prm), "var_scales[1]");
  }
  for (const float bad : {-1e-3f, nan, inf}) rejects_policy(make(axis_kind::dim, 1, 1, nullptr, true, false, bad), "eps");
  // out = GAAM(v) has v's shape: q must have v's heads and tokens.
  const tensor<float> more_heads = random_tensor<float>({1, 4, 6, 5}, layout::bhsd, gen);
  rejects(make(axis_kind::dim), "heads", more_heads, v);
  const tensor<float> fewer_tokens = random_tensor<float>({1, 2, 4, 5}, layout::bhsd, gen);
  rejects(make(axis_kind::dim), "seq", fewer_tokens, v);

  // Valid: chunks of one element without the unbiased variance; axis seq with 3 chunks of 2.
  result<float> r = run_fast<float>(make(axis_kind::dim, 5, 1, nullptr, false), v, v, v);
  CHECK(all_finite(r.out));
  r.out.for_each([&](index_t b, index_t h, index_t s, index_t d) { CHECK(r.out.get(b, h, s, d) == v.get(b, h, s, d)); });
  CHECK_NOTHROW(run_fast<float>(make(axis_kind::seq, 3), v, v, v));
}
