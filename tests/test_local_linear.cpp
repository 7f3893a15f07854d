// Local linear attention (Zuo et al., arXiv 2510.01450; spec/extra_variants.md section 3): the
// engine against the float64 reference (reference/local_linear.hpp) on odd sizes, masks,
// lengths, layouts and 16-bit types; then the spec's properties: one visible key returns its
// value, two visible keys with ridge 0 interpolate along their segment whatever the weights,
// large ridge approaches softmax like 1/ridge, affine values are reproduced exactly with ridge
// 0, the kernel weights sum to one (and the output is linear in the values), ridge 0 on a
// singular S is the limit ridge -> 0+; lse, thread-count invariance, empty rows, extreme
// magnitudes and validation. Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::f16;
using attnkit::index_t;

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

attnkit::local_linear make_lla(float ridge, bool causal = false, index_t window_left = -1, index_t window_right = -1,
                               float scale = 0) {
  attnkit::local_linear p;
  p.ridge = ridge, p.causal = causal, p.window_left = window_left, p.window_right = window_right, p.scale = scale;
  return p;
}

std::string describe(const attnkit::local_linear& p) {
  std::ostringstream o;
  o << "local_linear{ridge=" << p.ridge << " scale=" << p.scale << " causal=" << p.causal << " window=("
    << p.window_left << "," << p.window_right << ") key_lens=" << (p.key_lens ? "yes" : "no")
    << " query_lens=" << (p.query_lens ? "yes" : "no") << "}";
  return o.str();
}

/// Engine against reference on random inputs of type In (q, k amplitude amp), out of type Out.
template <class In = float, class Out = float>
void check_case(const attnkit::local_linear& p, const problem& s, std::mt19937& gen, float amp = 1.f,
                layout lq = layout::bhsd, layout lk = layout::bhsd, layout lv = layout::bhsd,
                layout lo = layout::bhsd) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>() << " layouts q="
                   << name(lq) << " k=" << name(lk) << " v=" << name(lv) << " out=" << name(lo));
  const qkv<In> in = random_qkv<In>(s, gen, lq, lk, lv, amp);
  const result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, lo);
  const result<float> ref = run_ref<float>(p, in.q, in.k, in.v);
  check_matches(fast, ref, tol_for<In, Out>());
  CHECK(all_finite(fast.out));
}

/// Root-mean-square difference of two outputs.
template <class A, class B>
double rms_difference(const tensor<A>& a, const tensor<B>& b) {
  double sum = 0, count = 0;
  a.for_each([&](index_t bb, index_t h, index_t i, index_t d) {
    sum += std::pow(double(a.get(bb, h, i, d)) - b.get(bb, h, i, d), 2), ++count;
  });
  return std::sqrt(sum / count);
}

}  // namespace

TEST_CASE("local_linear: matches the reference on odd sizes, GQA, D != Dv, causal with Nq != Nk", "[local_linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const float ridge : {1e-2f, 0.5f, 0.f})
    for (const bool causal : {false, true}) {
      check_case(make_lla(ridge, causal), make_problem(2, 4, 2, 23, 37, 13, 7), gen);
      check_case(make_lla(ridge, causal), make_problem(1, 3, 1, 41, 19, 9, 17), gen);  // Nq > Nk
      check_case(make_lla(ridge, causal), make_problem(1, 2, 2, 1, 70, 20, 5), gen);   // decode
    }
  // More keys than one tile and a head dimension over a few vectors, with a scale of its own.
  check_case(make_lla(1e-2f, true, -1, -1, 0.3f), make_problem(1, 2, 1, 30, 150, 33, 40), gen);
  check_case(make_lla(0.f, false), make_problem(1, 1, 1, 20, 140, 17, 3), gen);
  // A ridge below the rank tolerance: the eigen-decomposition path with the ridge inside S.
  check_case(make_lla(1e-12f, true, 6), make_problem(1, 2, 1, 30, 30, 9, 5), gen);
}

TEST_CASE("local_linear: matches the reference with windows, key_lens and query_lens", "[local_linear]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const float ridge : {1e-2f, 0.f}) {
    check_case(make_lla(ridge, false, 5, 3), make_problem(1, 2, 1, 40, 40, 8, 6), gen);
    check_case(make_lla(ridge, true, 11, -1), make_problem(2, 2, 2, 30, 45, 10, 12), gen);
    check_case(make_lla(ridge, false, 0, 70), make_problem(1, 1, 1, 50, 90, 6, 6), gen);
    const std::vector<std::int32_t> key_lens{0, 29, 40}, query_lens{25, 0, 17};
    for (const bool causal : {false, true}) {
      attnkit::local_linear p = make_lla(ridge, causal);
      p.key_lens = key_lens.data(), p.query_lens = query_lens.data();
      check_case(p, make_problem(3, 2, 1, 25, 40, 11, 9), gen);
      p.window_left = 6;
      check_case(p, make_problem(3, 2, 1, 25, 40, 11, 9), gen);
    }
  }
}

TEST_CASE("local_linear: layouts and 16-bit inputs and outputs", "[local_linear][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 2, 1, 29, 35, 12, 10);
  for (const bool causal : {false, true}) {
    check_case<float>(make_lla(1e-2f, causal), s, gen, 1.f, layout::bshd, layout::strided, layout::bshd,
                      layout::strided);
    check_case<float>(make_lla(0.f, causal), s, gen, 1.f, layout::strided, layout::bshd, layout::strided, layout::bshd);
    check_case<bf16>(make_lla(1e-2f, causal), s, gen, 1.f, layout::bhsd, layout::bshd, layout::strided);
    check_case<f16>(make_lla(1e-2f, causal), s, gen);
    check_case<float, bf16>(make_lla(1e-2f, causal), s, gen, 1.f, layout::bhsd, layout::bhsd, layout::bhsd,
                            layout::strided);
    check_case<bf16, f16>(make_lla(0.1f, causal), s, gen);
  }
}

TEST_CASE("local_linear: lse is the softmax lse of the kernel logits", "[local_linear][lse]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 2, 1, 30, 26, 8, 8);
  const std::vector<std::int32_t> key_lens{26, 0};
  for (const bool causal : {false, true}) {
    attnkit::local_linear p = make_lla(1e-2f, causal, 9, -1, 0.7f);
    p.key_lens = key_lens.data();
    attnkit::softmax sm;
    sm.scale = p.scale, sm.causal = p.causal, sm.window_left = p.window_left, sm.key_lens = p.key_lens;
    const qkv<float> in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 2.f);
    const result<float> fast = run_fast(p, in.q, in.k, in.v);
    const result<float> want = run_ref(sm, in.q, in.k, in.v);
    const auto [ok, msg] = compare_lse(fast.lse_mem, want.lse_mem, s.rows(), float_tol.lse_atol, float_tol.lse_rtol);
    INFO(msg);
    CHECK(ok);
    // lse is optional and does not change out.
    result<float> without = make_result<float>(s, layout::bhsd);
    attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), without.out.view);
    CHECK(same_bits(without.out, fast.out));
  }
}

TEST_CASE("local_linear: threads = 1, 2, 3, 0 give bitwise identical out and lse", "[local_linear][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 4, 2, 70, 90, 12, 10);
  const qkv<float> in = random_qkv<float>(s, gen);
  for (const float ridge : {1e-2f, 0.f})
    for (const bool causal : {false, true}) {
      const attnkit::local_linear p = make_lla(ridge, causal);
      const result<float> one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
      for (const int threads : {2, 3, 0}) {
        INFO("threads = " << threads << " ridge = " << ridge << " causal = " << causal);
        const result<float> many = run_fast(p, in.q, in.k, in.v, layout::bhsd, threads);
        CHECK(same_bits(one.out, many.out));
        CHECK(same_bits(one.lse_mem, many.lse_mem));
      }
    }
}

TEST_CASE("local_linear: one visible key returns its value exactly", "[local_linear][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 20, 20, 7, 5);
  const qkv<float> in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 3.f);
  for (const float ridge : {0.f, 1e-2f, 100.f}) {
    const attnkit::local_linear own_key = make_lla(ridge, false, 0, 0);  // row i sees key i only
    const result<float> fast = run_fast(own_key, in.q, in.k, in.v), ref = run_ref(own_key, in.q, in.k, in.v);
    fast.out.for_each([&](index_t b, index_t h, index_t i, index_t d) {
      INFO("ridge " << ridge << " h " << h << " i " << i << " d " << d);
      CHECK(fast.out.get(b, h, i, d) == in.v.get(b, 0, i, d));
      CHECK(ref.out.get(b, h, i, d) == in.v.get(b, 0, i, d));
    });
    // Causal: row 0 sees key 0 only.
    const result<float> causal = run_fast(make_lla(ridge, true), in.q, in.k, in.v);
    for (index_t d = 0; d < s.Dv; ++d) CHECK(causal.out.get(0, 1, 0, d) == in.v.get(0, 0, 0, d));
  }
}

TEST_CASE("local_linear: two visible keys with ridge 0 interpolate along their segment, whatever the weights",
          "[local_linear][property][singular]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Row i >= 1 sees keys i - 1 and i. S has rank 1 in D = 6 dimensions; the pseudo-inverse fit
  // is v1 + t (v2 - v1) with t = (k2 - k1) . (q - k1) / |k2 - k1|^2 (the weights cancel).
  // Amplitude 8 with scale 1 puts the weights' ratio near e^-30: still exact.
  const problem s = make_problem(1, 1, 1, 40, 40, 6, 5);
  for (const float amp : {1.f, 8.f}) {
    const qkv<float> in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, amp);
    const attnkit::local_linear p = make_lla(0.f, true, 1, -1, 1.f);
    const result<float> fast = run_fast(p, in.q, in.k, in.v), ref = run_ref(p, in.q, in.k, in.v);
    for (index_t i = 1; i < s.Nq; ++i) {
      double num = 0, den = 0;
      for (index_t d = 0; d < s.D; ++d) {
        const double delta = double(in.k.get(0, 0, i, d)) - in.k.get(0, 0, i - 1, d);
        num += delta * (double(in.q.get(0, 0, i, d)) - in.k.get(0, 0, i - 1, d));
        den += delta * delta;
      }
      const double t = num / den;
      for (index_t c = 0; c < s.Dv; ++c) {
        const double v1 = in.v.get(0, 0, i - 1, c), v2 = in.v.get(0, 0, i, c);
        const double want = v1 + t * (v2 - v1), margin = 2e-6 * (1 + std::fabs(t));
        INFO("amp " << amp << " row " << i << " c " << c << " t " << t);
        CHECK(fast.out.get(0, 0, i, c) == Approx(want).epsilon(1e-5).margin(margin));
        CHECK(ref.out.get(0, 0, i, c) == Approx(want).epsilon(1e-5).margin(margin));
      }
    }
  }
}

TEST_CASE("local_linear: ridge 0 on a singular S is the limit of small ridges", "[local_linear][property][singular]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Windows of 2 to 6 keys in D = 8: every covariance is singular and q - mu leaves the keys'
  // span. The pseudo-inverse answer must be where ridge -> 0+ converges.
  const problem s = make_problem(1, 2, 1, 30, 30, 8, 4);
  const qkv<float> in = random_qkv<float>(s, gen);
  for (const index_t window : {1, 3, 5}) {
    INFO("window_left " << window);
    const result<float> at_zero = run_fast(make_lla(0.f, true, window), in.q, in.k, in.v);
    const result<float> tiny = run_ref(make_lla(1e-8f, true, window), in.q, in.k, in.v);
    const result<float> small = run_ref(make_lla(1e-4f, true, window), in.q, in.k, in.v);
    const auto [ok, msg] = compare_out(at_zero.out, tiny.out, 1e-4, 1e-4);
    INFO(msg);
    CHECK(ok);
    CHECK(rms_difference(at_zero.out, small.out) > 10 * rms_difference(at_zero.out, tiny.out));
    check_matches(at_zero, run_ref(make_lla(0.f, true, window), in.q, in.k, in.v), float_tol);
  }
}

TEST_CASE("local_linear: large ridge approaches softmax attention like 1 / ridge", "[local_linear][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 2, 40, 50, 10, 6);
  const qkv<float> in = random_qkv<float>(s, gen);
  for (const bool causal : {false, true}) {
    attnkit::softmax sm;
    sm.causal = causal;
    const result<float> softmax = run_fast(sm, in.q, in.k, in.v);
    std::vector<double> error;
    for (const float ridge : {10.f, 100.f, 1000.f}) {
      const result<float> lla = run_fast(make_lla(ridge, causal), in.q, in.k, in.v);
      error.push_back(rms_difference(lla.out, softmax.out));
      const auto [ok, msg] = compare_lse(lla.lse_mem, softmax.lse_mem, s.rows(), 1e-4, 1e-6);  // same kernel
      INFO(msg);
      CHECK(ok);
    }
    INFO("causal " << causal << " rms error at ridge 10, 100, 1000: " << error[0] << " " << error[1] << " "
                   << error[2]);
    CHECK(error[0] > 1e-4);  // LLA differs from softmax at all
    CHECK(error[0] / error[1] == Approx(10).epsilon(0.25));
    CHECK(error[1] / error[2] == Approx(10).epsilon(0.25));
  }
}

TEST_CASE("local_linear: affine values are reproduced exactly with ridge 0 (softmax does not)",
          "[local_linear][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 1, 1, 40, 64, 5, 4);
  qkv<float> in = random_qkv<float>(s, gen);
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<double> A(static_cast<std::size_t>(s.Dv * s.D)), c(static_cast<std::size_t>(s.Dv));
  for (double& a : A) a = u(gen);
  for (double& x : c) x = u(gen);
  const auto affine = [&](const tensor<float>& t, index_t i, index_t row) {
    double y = c[static_cast<std::size_t>(row)];
    for (index_t d = 0; d < s.D; ++d) y += A[static_cast<std::size_t>(row * s.D + d)] * t.get(0, 0, i, d);
    return y;
  };
  for (index_t j = 0; j < s.Nk; ++j)
    for (index_t row = 0; row < s.Dv; ++row) in.v.set(0, 0, j, row, static_cast<float>(affine(in.k, j, row)));
  for (const bool causal : {false, true}) {
    const attnkit::local_linear p = make_lla(0.f, causal, -1, -1, 0.5f);
    const result<float> fast = run_fast(p, in.q, in.k, in.v), ref = run_ref(p, in.q, in.k, in.v);
    attnkit::softmax sm;
    sm.causal = causal, sm.scale = 0.5f;
    const result<float> softmax = run_fast(sm, in.q, in.k, in.v);
    double softmax_error = 0;
    // Causal rows with at most 2 D keys are left out: their covariance is singular or barely not.
    for (index_t i = causal ? std::max<index_t>(0, 2 * s.D - (s.Nk - s.Nq)) : 0; i < s.Nq; ++i)
      for (index_t row = 0; row < s.Dv; ++row) {
        const double want = affine(in.q, i, row);
        INFO("causal " << causal << " row " << i << " dim " << row);
        CHECK(fast.out.get(0, 0, i, row) == Approx(want).epsilon(1e-4).margin(2e-5));
        CHECK(ref.out.get(0, 0, i, row) == Approx(want).epsilon(1e-4).margin(2e-5));
        softmax_error = std::max(softmax_error, std::fabs(softmax.out.get(0, 0, i, row) - want));
      }
    CHECK(softmax_error > 1e-2);
  }
}

TEST_CASE("local_linear: kernel weights sum to one and the output is linear in the values",
          "[local_linear][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 36, 44, 9, 7);
  qkv<float> in = random_qkv<float>(s, gen);
  for (const attnkit::local_linear& p : {make_lla(1e-2f), make_lla(0.f), make_lla(1e-2f, true),
                                         make_lla(0.f, true, 4, 2), make_lla(0.3f, false, 7, 7)}) {
    INFO(describe(p));
    // Constant values (one constant per value dimension): out is that constant.
    qkv<float> flat = in;
    flat.v.for_each(
        [&](index_t b, index_t h, index_t j, index_t d) { flat.v.set(b, h, j, d, 0.5f - 0.25f * float(d)); });
    const result<float> fast = run_fast(p, flat.q, flat.k, flat.v), ref = run_ref(p, flat.q, flat.k, flat.v);
    fast.out.for_each([&](index_t b, index_t h, index_t i, index_t d) {
      if (i + s.Nk - s.Nq < 0) return;
      CHECK(fast.out.get(b, h, i, d) == Approx(0.5 - 0.25 * d).epsilon(1e-6).margin(1e-6));
      CHECK(ref.out.get(b, h, i, d) == Approx(0.5 - 0.25 * d).epsilon(1e-6).margin(1e-6));
    });
    // Linear in v for fixed q, k: out(2 v1 - v2 / 2) = 2 out(v1) - out(v2) / 2 (up to v's rounding).
    qkv<float> second = in, mixed = in;
    second.v = random_tensor<float>(s.v_ext(), layout::bhsd, gen);
    mixed.v.for_each([&](index_t b, index_t h, index_t j, index_t d) {
      mixed.v.set(b, h, j, d, 2.f * in.v.get(b, h, j, d) - 0.5f * second.v.get(b, h, j, d));
    });
    const result<float> o1 = run_fast(p, in.q, in.k, in.v), o2 = run_fast(p, second.q, second.k, second.v),
                        o3 = run_fast(p, mixed.q, mixed.k, mixed.v);
    o3.out.for_each([&](index_t b, index_t h, index_t i, index_t d) {
      const double want = 2.0 * o1.out.get(b, h, i, d) - 0.5 * o2.out.get(b, h, i, d);
      CHECK(o3.out.get(b, h, i, d) == Approx(want).epsilon(1e-4).margin(1e-4));
    });
  }
}

TEST_CASE("local_linear: rows with nothing visible are +0.0 with lse -inf, never NaN", "[local_linear][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Causal with Nq > Nk: the first rows see no key; key_lens 0: a whole batch entry sees none.
  const problem s = make_problem(2, 2, 1, 9, 4, 6, 5);
  const qkv<float> in = random_qkv<float>(s, gen);
  const std::vector<std::int32_t> key_lens{4, 0};
  for (const float ridge : {0.f, 1e-2f}) {
    attnkit::local_linear p = make_lla(ridge, true);
    p.key_lens = key_lens.data();
    const result<float> fast = run_fast(p, in.q, in.k, in.v);
    check_matches(fast, run_ref(p, in.q, in.k, in.v), float_tol);
    for (index_t b = 0; b < s.B; ++b)
      for (index_t h = 0; h < s.Hq; ++h)
        for (index_t i = 0; i < s.Nq; ++i) {
          const bool empty = b == 1 || i < s.Nq - s.Nk;
          if (!empty) continue;
          for (index_t d = 0; d < s.Dv; ++d) {
            const float x = fast.out.get(b, h, i, d);
            CHECK((x == 0.f && !std::signbit(x)));
          }
          CHECK(fast.lse((b * s.Hq + h) * s.Nq + i) == neg_inf);
        }
    CHECK(all_finite(fast.out));
  }
  // Nk = 0: every row empty; Nq = 0: nothing written.
  const problem none = make_problem(1, 2, 1, 5, 0, 8, 3);
  const qkv<float> in0 = random_qkv<float>(none, gen);
  const result<float> r = run_fast(make_lla(0.f), in0.q, in0.k, in0.v);
  r.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { CHECK(r.out.get(b, h, i, d) == 0.f); });
  for (index_t i = 0; i < none.rows(); ++i) CHECK(r.lse(i) == neg_inf);
  const problem no_queries = make_problem(1, 2, 1, 0, 5, 8, 3);
  const qkv<float> in1 = random_qkv<float>(no_queries, gen);
  CHECK(guards_intact(run_fast(make_lla(0.f), in1.q, in1.k, in1.v).out));
}

TEST_CASE("local_linear: concentrated weights, huge logits and values stay finite and match the reference",
          "[local_linear][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 24, 40, 8, 6);
  for (const bool causal : {false, true}) {
    // Logits in the hundreds: nearly all weight on one key per row.
    check_case(make_lla(1e-2f, causal, -1, -1, 1.f), s, gen, 10.f);
    check_case(make_lla(0.f, causal, -1, -1, 1.f), s, gen, 4.f);
    // Values of 1e30 and keys of 1e15 (their moments near 1e60): double holds them.
    qkv<float> in = random_qkv<float>(s, gen);
    const auto scale_all = [](tensor<float>& t, float f) {
      t.for_each([&](index_t b, index_t h, index_t j, index_t d) { t.set(b, h, j, d, f * t.get(b, h, j, d)); });
    };
    scale_all(in.q, 1e-15f);
    scale_all(in.k, 1e15f);
    scale_all(in.v, 1e30f);
    const attnkit::local_linear p = make_lla(1e-2f, causal, -1, -1, 2.f);
    const result<float> fast = run_fast(p, in.q, in.k, in.v);
    check_matches(fast, run_ref(p, in.q, in.k, in.v), float_tol);
    CHECK(all_finite(fast.out));
  }
}

TEST_CASE("local_linear: NaN reaches exactly the rows that see it", "[local_linear][edge][nan]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Causal, Nq = Nk: key 15 is seen by rows 15 on; query row 3 of head 1 is seen by itself only.
  const problem s = make_problem(1, 2, 1, 20, 20, 6, 4);
  const qkv<float> clean = random_qkv<float>(s, gen);
  qkv<float> dirty = clean;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (index_t d = 0; d < s.D; ++d) dirty.k.set(0, 0, 15, d, nan), dirty.q.set(0, 1, 3, d, nan);
  for (const float ridge : {0.f, 1e-2f}) {
    const attnkit::local_linear p = make_lla(ridge, true);
    const result<float> before = run_fast(p, clean.q, clean.k, clean.v);
    const result<float> after = run_fast(p, dirty.q, dirty.k, dirty.v), ref = run_ref(p, dirty.q, dirty.k, dirty.v);
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        const bool poisoned = i >= 15 || (h == 1 && i == 3);
        INFO("ridge " << ridge << " head " << h << " row " << i);
        for (index_t d = 0; d < s.Dv; ++d) {
          if (poisoned) {
            CHECK(std::isnan(after.out.get(0, h, i, d)));
            CHECK(std::isnan(ref.out.get(0, h, i, d)));
          } else {
            CHECK(after.out.get(0, h, i, d) == before.out.get(0, h, i, d));
          }
        }
        CHECK(std::isnan(after.lse(h * s.Nq + i)) == poisoned);
      }
  }
}

TEST_CASE("local_linear: invalid fields are rejected before anything is written", "[local_linear][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 1, 1, 4, 4, 8, 8);
  const qkv<float> in = random_qkv<float>(s, gen);
  const auto rejects = [&](const attnkit::local_linear& p, const char* what) {
    INFO(what);
    result<float> r = make_result<float>(s, layout::bhsd);
    CHECK_THROWS_AS(attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), r.out.view), attnkit::error);
    CHECK_THROWS_AS(attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), r.out.view),
                    attnkit::error);
    CHECK(guards_intact(r.out));
    r.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { CHECK(r.out.get(b, h, i, d) == -12345.f); });
  };
  rejects(make_lla(-1.f), "ridge < 0");
  rejects(make_lla(std::numeric_limits<float>::quiet_NaN()), "ridge NaN");
  rejects(make_lla(std::numeric_limits<float>::infinity()), "ridge inf");
  rejects(make_lla(1e-2f, false, -2), "window_left -2");
  rejects(make_lla(1e-2f, false, -1, -1, std::numeric_limits<float>::quiet_NaN()), "scale NaN");
  const std::vector<std::int32_t> too_long{5};
  attnkit::local_linear p = make_lla(1e-2f);
  p.key_lens = too_long.data();
  rejects(p, "key_lens[0] > Nk");
  // A head dimension whose per-query D x D moments cannot fit: an error, not an allocation.
  const problem wide = make_problem(1, 1, 1, 1, 1, 40000, 1);
  const qkv<float> big = random_qkv<float>(wide, gen);
  result<float> r = make_result<float>(wide, layout::bhsd);
  CHECK_THROWS_AS(attnkit::attention(make_lla(1e-2f), big.q.cview(), big.k.cview(), big.v.cview(), r.out.view),
                  attnkit::error);
  CHECK(guards_intact(r.out));
  CHECK(r.out.get(0, 0, 0, 0) == -12345.f);
}
