// Linear attention (elu+1, relu, FAVOR+): the fast engine against the float64 reference
// (reference/linear.hpp) on odd sizes, the spec's properties (causal equals non-causal at the
// last query, no future key matters, chunked equals recurrent, weights sum to one, FAVOR+
// unbiased and converging to softmax as m grows, ORF no worse than iid), the projection
// matrix, determinism, thread-count invariance, validation and edge cases.
// Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::elu_plus_one;
using attnkit::favor_plus;
using attnkit::index_t;
using attnkit::relu;

namespace {

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

std::string describe(const elu_plus_one&) { return "elu_plus_one"; }
std::string describe(const relu& f) { return "relu{feature_eps=" + std::to_string(f.feature_eps) + "}"; }
std::string describe(const favor_plus& f) {
  std::ostringstream o;
  o << "favor_plus{m=" << f.features << " orthogonal=" << f.orthogonal << " norm_scaling=" << f.norm_scaling
    << " scale=" << f.scale << " seed=" << f.seed << " hyperbolic=" << f.hyperbolic << "}";
  return o.str();
}
template <class F>
std::string describe(const attnkit::linear<F>& p) {
  std::ostringstream o;
  o << "linear{" << describe(p.feature_map) << " causal=" << p.causal << " eps=" << p.eps << " chunk=" << p.chunk << "}";
  return o.str();
}

favor_plus favor(index_t m, std::uint64_t seed = 0, bool orthogonal = true, bool hyperbolic = false) {
  favor_plus f;
  f.features = m, f.seed = seed, f.orthogonal = orthogonal, f.hyperbolic = hyperbolic;
  return f;
}

template <class F>
attnkit::linear<F> make_linear(F f, bool causal, index_t chunk = 0, float eps = 1e-6f) {
  attnkit::linear<F> p;
  p.feature_map = f, p.causal = causal, p.chunk = chunk, p.eps = eps;
  return p;
}

/// Fast against reference on random inputs of type In (amplitude amp for q and k).
template <class In = float, class P>
void check_case(const P& p, const problem& s, std::mt19937& gen, float amp = 1.f, int threads = 0) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " threads=" << threads);
  qkv<In> in = random_qkv<In>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, amp);
  const result<float> fast = run_fast<float>(p, in.q, in.k, in.v, layout::bhsd, threads);
  const result<float> ref = run_ref<float>(p, in.q, in.k, in.v);
  check_matches(fast, ref, tol_for<In>());
}

}  // namespace

TEST_CASE("linear: elu+1 and relu match the reference on odd sizes, causal or not", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const bool causal : {false, true})
    for (const index_t chunk : {0, 1, 7, 33, 100}) {
      check_case(make_linear(elu_plus_one{}, causal, chunk), make_problem(2, 4, 2, 77, 93, 24, 40), gen);
      check_case(make_linear(elu_plus_one{}, causal, chunk), make_problem(1, 3, 1, 93, 77, 17, 9), gen);
      check_case(make_linear(relu{0.01f}, causal, chunk), make_problem(1, 2, 2, 50, 61, 33, 70), gen);
    }
  check_case(make_linear(relu{}, true), make_problem(1, 2, 1, 129, 129, 64, 64), gen);
}

TEST_CASE("linear: FAVOR+ matches the reference (orthogonal, iid, hyperbolic, both norm scalings)", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const bool causal : {false, true}) {
    check_case(make_linear(favor(64, 5), causal), make_problem(1, 4, 2, 45, 70, 16, 24), gen);
    check_case(make_linear(favor(40, 9, false), causal, 13), make_problem(2, 2, 1, 70, 45, 24, 12), gen);
    check_case(make_linear(favor(50, 1, true, true), causal, 32), make_problem(1, 2, 2, 66, 66, 20, 33), gen);
    favor_plus fixed = favor(256, 3);
    fixed.norm_scaling = 1, fixed.scale = 0.05f;
    check_case(make_linear(fixed, causal), make_problem(1, 1, 1, 130, 150, 64, 64), gen);
  }
}

TEST_CASE("linear: decode and long sequences (key pieces, causal segments)", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const bool causal : {false, true}) {
    check_case(make_linear(elu_plus_one{}, causal), make_problem(1, 8, 2, 1, 9000, 32, 32), gen, 0.5f);
    check_case(make_linear(favor(32, 2), causal), make_problem(1, 2, 2, 3, 5000, 16, 16), gen, 0.5f);
    check_case(make_linear(elu_plus_one{}, causal), make_problem(1, 1, 1, 4500, 4600, 16, 24), gen, 0.5f);
  }
}

TEST_CASE("linear: bf16 inputs, GQA and layouts", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const bool causal : {false, true}) {
    check_case<bf16>(make_linear(elu_plus_one{}, causal), make_problem(1, 4, 1, 70, 70, 32, 48), gen);
    check_case<bf16>(make_linear(favor(64), causal), make_problem(1, 2, 1, 40, 50, 32, 16), gen);
  }
  const problem s = make_problem(2, 4, 2, 37, 41, 20, 12);
  const auto p = make_linear(elu_plus_one{}, true, 8);
  qkv<float> in = random_qkv<float>(s, gen, layout::bshd, layout::strided, layout::bshd);
  const result<bf16> fast = run_fast<bf16>(p, in.q, in.k, in.v, layout::strided);
  check_matches(fast, run_ref<float>(p, in.q, in.k, in.v), half_tol);
}

TEST_CASE("linear: non-causal equals causal at the last query; chunked equals recurrent", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 100, 100, 16, 20);
  qkv<float> in = random_qkv<float>(s, gen);
  for (const bool use_favor : {false, true}) {
    const auto run = [&](bool causal, index_t chunk) {
      return use_favor ? run_fast(make_linear(favor(32, 4), causal, chunk), in.q, in.k, in.v)
                       : run_fast(make_linear(elu_plus_one{}, causal, chunk), in.q, in.k, in.v);
    };
    const result<float> full = run(false, 0), causal = run(true, 0), recurrent = run(true, 1);
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t d = 0; d < s.Dv; ++d)
        CHECK(causal.out.get(0, h, s.Nq - 1, d) == Approx(full.out.get(0, h, s.Nq - 1, d)).epsilon(1e-5).margin(1e-6));
    const auto [ok, msg] = compare_out(causal.out, recurrent.out, 1e-6, 1e-5);
    INFO(msg);
    CHECK(ok);
  }
}

TEST_CASE("linear: causal outputs never depend on a future key or value", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 2, 90, 90, 16, 16);
  for (const bool use_favor : {false, true}) {
    qkv<float> in = random_qkv<float>(s, gen);
    const auto run = [&] {
      return use_favor ? run_fast(make_linear(favor(32, 8), true), in.q, in.k, in.v)
                       : run_fast(make_linear(elu_plus_one{}, true), in.q, in.k, in.v);
    };
    const result<float> before = run();
    const index_t j = 61;  // change key and value 61: queries 0..60 must not see it
    for (index_t d = 0; d < s.D; ++d) in.k.view(0, 1, j, d) = 3.f;
    for (index_t d = 0; d < s.Dv; ++d) in.v.view(0, 1, j, d) = -50.f;
    const result<float> after = run();
    for (index_t i = 0; i < s.Nq; ++i)
      for (index_t d = 0; d < s.Dv; ++d) {
        if (i < j)
          CHECK(after.out.get(0, 1, i, d) == Approx(before.out.get(0, 1, i, d)).epsilon(1e-5).margin(1e-6));
        CHECK(after.out.get(0, 0, i, d) == before.out.get(0, 0, i, d));  // the other head
      }
  }
}

TEST_CASE("linear: with eps = 0 the weights sum to one", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 70, 80, 16, 8);
  qkv<float> in = random_qkv<float>(s, gen);
  in.v.for_each([&](index_t b, index_t h, index_t t, index_t d) { in.v.view(b, h, t, d) = 0.25f * float(d + 1); });
  for (const bool causal : {false, true}) {
    const result<float> a = run_fast(make_linear(elu_plus_one{}, causal, 0, 0.f), in.q, in.k, in.v);
    const result<float> b = run_fast(make_linear(favor(64, 1), causal, 0, 0.f), in.q, in.k, in.v);
    a.out.for_each([&](index_t bb, index_t h, index_t i, index_t d) {
      CHECK(a.out.get(bb, h, i, d) == Approx(0.25 * (d + 1)).epsilon(1e-5));
      CHECK(b.out.get(bb, h, i, d) == Approx(0.25 * (d + 1)).epsilon(1e-5));
    });
  }
}

TEST_CASE("linear: FAVOR+ estimates exp(scale q.k) without bias", "[linear][favor]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Nq = Nk = 1, eps = 0: exp(lse) = phi(q) . phi(k), the kernel estimate; its mean over
  // seeds tends to exp(scale q.k).
  const problem s = make_problem(1, 1, 1, 1, 1, 16, 1);
  qkv<float> in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 0.5f);
  double qk = 0;
  for (index_t d = 0; d < s.D; ++d) qk += double(in.q.get(0, 0, 0, d)) * in.k.get(0, 0, 0, d);
  const double scale = 0.25, want = std::exp(scale * qk);
  for (const bool orthogonal : {true, false}) {
    constexpr int seeds = 2000;
    double sum = 0, sum2 = 0;
    for (int seed = 0; seed < seeds; ++seed) {
      favor_plus f = favor(64, static_cast<std::uint64_t>(seed) * 7919 + 1, orthogonal);
      f.scale = static_cast<float>(scale);
      const result<float> r = run_fast(make_linear(f, false, 0, 0.f), in.q, in.k, in.v);
      const double estimate = std::exp(double(r.lse(0)));
      sum += estimate, sum2 += estimate * estimate;
    }
    const double mean = sum / seeds, stderr_mean = std::sqrt((sum2 / seeds - mean * mean) / seeds);
    INFO("orthogonal=" << orthogonal << " mean " << mean << " want " << want << " standard error " << stderr_mean);
    CHECK(std::abs(mean - want) < 4.5 * stderr_mean + 1e-6);
  }
}

TEST_CASE("linear: FAVOR+ error against softmax shrinks as m grows; ORF no worse than iid", "[linear][favor]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 1, 1, 64, 64, 64, 16);
  // Rows of norm about 1 (the spec's setting).
  qkv<float> in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 0.2f);
  attnkit::softmax exact;
  exact.scale = 1.f;
  const result<float> want = run_ref(exact, in.q, in.k, in.v);
  const auto error = [&](index_t m, std::uint64_t seed, bool orthogonal) {
    favor_plus f = favor(m, seed, orthogonal);
    f.scale = 1.f;
    const result<float> got = run_fast(make_linear(f, false, 0, 0.f), in.q, in.k, in.v);
    double num = 0, den = 0;
    got.out.for_each([&](index_t b, index_t h, index_t i, index_t d) {
      num += std::pow(got.out.get(b, h, i, d) - want.out.get(b, h, i, d), 2);
      den += std::pow(want.out.get(b, h, i, d), 2);
    });
    return std::sqrt(num / den);
  };
  double previous = HUGE_VAL;
  for (const index_t m : {64, 256, 1024}) {
    double mean = 0;
    for (std::uint64_t seed = 0; seed < 4; ++seed) mean += error(m, seed, true) / 4;
    INFO("m = " << m << ": mean relative error " << mean);
    CHECK(mean < previous);
    previous = mean;
  }
  double orf = 0, iid = 0;
  for (std::uint64_t seed = 0; seed < 16; ++seed) orf += error(64, seed, true), iid += error(64, seed, false);
  INFO("m = 64 over 16 seeds: ORF " << orf / 16 << ", iid " << iid / 16);
  CHECK(orf <= iid);
}

TEST_CASE("linear: the FAVOR+ projection is the reference's and is deterministic", "[linear][favor]") {
  for (const index_t d : {5, 16, 64})
    for (const bool orthogonal : {true, false})
      for (const int norm_scaling : {0, 1}) {
        favor_plus f = favor(3 * d + 2, 42, orthogonal);
        f.norm_scaling = norm_scaling;
        INFO(describe(f) << " d=" << d);
        const std::vector<double> w = attnkit::favor_projection(f, d), again = attnkit::favor_projection(f, d),
                                  ref = attnkit::reference::favor_projection(f, d);
        REQUIRE(w.size() == ref.size());
        CHECK(w == again);
        for (std::size_t i = 0; i < w.size(); ++i) CHECK(w[i] == Approx(ref[i]).epsilon(1e-9).margin(1e-9));
        if (orthogonal && norm_scaling == 1)  // rows of one block: orthogonal, norm sqrt(d)
          for (index_t a = 0; a < d; ++a)
            for (index_t b = 0; b <= a; ++b) {
              double dot = 0;
              for (index_t c = 0; c < d; ++c) dot += w[static_cast<std::size_t>(a * d + c)] * w[static_cast<std::size_t>(b * d + c)];
              CHECK(dot == Approx(a == b ? double(d) : 0.0).margin(1e-9));
            }
      }
  CHECK(attnkit::favor_projection(favor(8, 1), 4) != attnkit::favor_projection(favor(8, 2), 4));
}

TEST_CASE("linear: results are bitwise the same for every thread count and repeated calls", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 5000, 5000, 16, 16);  // causal segments, key pieces
  qkv<float> in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 0.5f);
  for (const bool causal : {false, true}) {
    const auto p = make_linear(favor(32, 11), causal);
    const result<float> one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
    const result<float> two = run_fast(p, in.q, in.k, in.v, layout::bhsd, 2);
    const result<float> all = run_fast(p, in.q, in.k, in.v, layout::bhsd, 0);
    CHECK(same_bits(one.out, two.out));
    CHECK(same_bits(one.out, all.out));
    CHECK(same_bits(one.lse_mem, all.lse_mem));
  }
}

TEST_CASE("linear: empty sequences, no visible key, relu features that vanish", "[linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Nk = 0: zeros and lse -inf; Nq = 0: nothing written.
  for (const bool causal : {false, true}) {
    const problem s = make_problem(1, 2, 1, 5, 0, 8, 8);
    qkv<float> in = random_qkv<float>(s, gen);
    const result<float> r = run_fast(make_linear(elu_plus_one{}, causal), in.q, in.k, in.v);
    r.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { CHECK(r.out.get(b, h, i, d) == 0.f); });
    for (index_t i = 0; i < s.rows(); ++i) CHECK(r.lse(i) == -std::numeric_limits<float>::infinity());
    const problem e = make_problem(1, 2, 1, 0, 5, 8, 8);
    qkv<float> ine = random_qkv<float>(e, gen);
    CHECK(guards_intact(run_fast(make_linear(elu_plus_one{}, causal), ine.q, ine.k, ine.v).out));
  }
  // Causal with Nq > Nk: the first rows see no key.
  check_case(make_linear(favor(16, 1), true), make_problem(1, 1, 1, 40, 10, 8, 8), gen);
  // relu of negative keys: every weight 0, eps = 0: zeros, never NaN.
  const problem s = make_problem(1, 1, 1, 6, 9, 8, 8);
  qkv<float> in = random_qkv<float>(s, gen);
  in.k.for_each([&](index_t b, index_t h, index_t t, index_t d) { in.k.view(b, h, t, d) = -1.f - float(t); });
  const result<float> r = run_fast(make_linear(relu{}, false, 0, 0.f), in.q, in.k, in.v);
  r.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { CHECK(r.out.get(b, h, i, d) == 0.f); });
  CHECK(r.lse(0) == -std::numeric_limits<float>::infinity());
}

TEST_CASE("linear: invalid fields are rejected before anything is written", "[linear][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 1, 1, 4, 4, 8, 8);
  qkv<float> in = random_qkv<float>(s, gen);
  const auto rejects = [&](const auto& p, const char* what) {
    INFO(what);
    result<float> r = make_result<float>(s, layout::bhsd);
    CHECK_THROWS_AS(attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), r.out.view), attnkit::error);
    CHECK_THROWS_AS(attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), r.out.view), attnkit::error);
    CHECK(guards_intact(r.out));
    r.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { CHECK(std::isnan(r.out.get(b, h, i, d)) == false); });
  };
  rejects(make_linear(elu_plus_one{}, false, 0, -1.f), "eps < 0");
  rejects(make_linear(elu_plus_one{}, false, 0, std::numeric_limits<float>::quiet_NaN()), "eps NaN");
  rejects(make_linear(elu_plus_one{}, false, -3), "chunk < 0");
  rejects(make_linear(relu{-0.5f}, false), "feature_eps < 0");
  rejects(make_linear(favor(0), false), "features 0");
  rejects(make_linear(favor(7, 0, true, true), false), "hyperbolic with odd m");
  favor_plus f = favor(8);
  f.norm_scaling = 2;
  rejects(make_linear(f, false), "norm_scaling 2");
  f = favor(8), f.scale = -1.f;
  rejects(make_linear(f, false), "negative FAVOR+ scale");
  f.scale = std::numeric_limits<float>::infinity();
  rejects(make_linear(f, false), "infinite FAVOR+ scale");
  CHECK_THROWS_AS(attnkit::favor_projection(favor(8), 0), attnkit::error);
  // Orthogonal features draw d x d blocks: 8192^2 normals is over the 2^24 limit.
  CHECK_THROWS_AS(attnkit::favor_projection(favor(1), 8192), attnkit::error);
  CHECK(attnkit::favor_projection(favor(1, 0, false), 8192).size() == 8192);
  const problem wide = make_problem(1, 1, 1, 2, 2, 8192, 4);
  qkv<float> big = random_qkv<float>(wide, gen);
  result<float> r = make_result<float>(wide, layout::bhsd);
  CHECK_THROWS_AS(attnkit::attention(make_linear(favor(1), false), big.q.cview(), big.k.cview(), big.v.cview(), r.out.view),
                  attnkit::error);
  CHECK(guards_intact(r.out));
}
