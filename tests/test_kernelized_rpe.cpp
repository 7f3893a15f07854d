// Kernelized attention with relative positions via the FFT: the toeplitz-fft engine against
// the float64 reference (reference/kernelized_rpe.hpp) on odd sizes, the FFT path against the
// direct O(N^2) Toeplitz product, the lane FFT itself, and the spec's properties (zero bias is
// plain kernelized attention, causal sees no future and equals -inf biases, shift
// invariance, convergence to softmax with a relative bias as m grows), determinism,
// thread-count invariance, validation and edge cases.
// Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <complex>
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

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

std::string describe(const elu_plus_one&) { return "elu_plus_one"; }
std::string describe(const relu& f) { return "relu{feature_eps=" + std::to_string(f.feature_eps) + "}"; }
std::string describe(const favor_plus& f) {
  std::ostringstream o;
  o << "favor_plus{m=" << f.features << " orthogonal=" << f.orthogonal << " seed=" << f.seed
    << " hyperbolic=" << f.hyperbolic << "}";
  return o.str();
}
template <class F>
std::string describe(const attnkit::kernelized_rpe<F>& p) {
  std::ostringstream o;
  o << "kernelized_rpe{" << describe(p.feature_map) << " bias=" << (p.bias ? "array" : p.bias_fn ? "fn" : "none")
    << " causal=" << p.causal << " normalize_qk=" << p.normalize_qk << " scale=" << p.scale << " eps=" << p.eps << "}";
  return o.str();
}

favor_plus favor(index_t m, std::uint64_t seed = 0, bool hyperbolic = false) {
  favor_plus f;
  f.features = m, f.seed = seed, f.hyperbolic = hyperbolic;
  return f;
}

/// Hq x (Nq + Nk - 1) biases, uniform in [-amp, amp].
std::vector<float> random_bias(const problem& s, std::mt19937& gen, float amp = 2.f) {
  std::uniform_real_distribution<float> u(-amp, amp);
  std::vector<float> b(static_cast<std::size_t>(s.Hq * (s.Nq + s.Nk - 1)));
  for (float& x : b) x = u(gen);
  return b;
}

template <class F>
attnkit::kernelized_rpe<F> make_rpe(F f, const std::vector<float>* bias, bool causal, bool normalize = true) {
  attnkit::kernelized_rpe<F> p;
  p.feature_map = f, p.bias = bias ? bias->data() : nullptr, p.causal = causal, p.normalize_qk = normalize;
  return p;
}

/// Fast against reference on random inputs of type In. The FFT's round-off is relative to the
/// largest values of a transform, so a row's error grows with how much smaller its
/// denominator is than the largest (causal rows that see few keys): row i is allowed
/// 1e-6 max|v| den_max / den_i on top of the type's tolerance (den from the reference's lse).
template <class In = float, class P>
void check_case(const P& p, const problem& s, std::mt19937& gen, float amp = 1.f) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>());
  qkv<In> in = random_qkv<In>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, amp);
  const result<float> fast = run_fast<float>(p, in.q, in.k, in.v), ref = run_ref<float>(p, in.q, in.k, in.v);
  const tolerance tol = tol_for<In>();
  std::vector<float> lse_max(static_cast<std::size_t>(s.B * s.Hq), neg_inf);
  for (index_t r = 0; r < s.rows(); ++r)
    lse_max[static_cast<std::size_t>(r / s.Nq)] = std::max(lse_max[static_cast<std::size_t>(r / s.Nq)], ref.lse(r));
  index_t bad = 0;
  std::string first;
  ref.out.for_each([&](index_t b, index_t h, index_t i, index_t d) {
    const index_t r = (b * s.Hq + h) * s.Nq + i;
    const double spread = ref.lse(r) == neg_inf ? 1.0 : std::exp(double(lse_max[static_cast<std::size_t>(r / s.Nq)]) - ref.lse(r));
    const double got = fast.out.get(b, h, i, d), want = ref.out.get(b, h, i, d);
    if (!close(got, want, tol.atol + 1e-6 * spread, tol.rtol) && bad++ == 0) {
      std::ostringstream o;
      o << "(b=" << b << ", h=" << h << ", i=" << i << ", d=" << d << "): got " << got << ", want " << want
        << ", den_max / den = " << spread;
      first = o.str();
    }
  });
  INFO(bad << " bad elements; first " << first);
  CHECK(bad == 0);
  const auto [ok_lse, msg_lse] = compare_lse(fast.lse_mem, ref.lse_mem, s.rows(), tol.lse_atol, tol.lse_rtol);
  INFO(msg_lse);
  CHECK(ok_lse);
  CHECK(guards_intact(fast.out));
}

/// max |got - want| / max |want|, the spec's measure for the FFT path.
double relative_max_error(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, top = 0;
  for (std::size_t i = 0; i < got.size(); ++i) err = std::max(err, std::abs(got[i] - want[i])), top = std::max(top, std::abs(want[i]));
  return top > 0 ? err / top : err;
}

}  // namespace

TEST_CASE("kernelized_rpe: matches the reference on odd sizes (FAVOR+, elu+1, relu)", "[kernelized_rpe]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const bool causal : {false, true}) {
    for (const problem& s : {make_problem(1, 4, 2, 77, 93, 24, 40), make_problem(2, 2, 1, 93, 77, 16, 9),
                             make_problem(1, 1, 1, 1, 300, 32, 32), make_problem(1, 2, 2, 300, 1, 8, 12)}) {
      const std::vector<float> bias = random_bias(s, gen);
      check_case(make_rpe(favor(64, 3), &bias, causal), s, gen);
      check_case(make_rpe(elu_plus_one{}, &bias, causal, false), s, gen);
      check_case(make_rpe(relu{0.01f}, &bias, causal), s, gen);
    }
    const problem s = make_problem(1, 2, 1, 60, 60, 20, 20);
    const std::vector<float> bias = random_bias(s, gen);
    check_case(make_rpe(favor(40, 1, true), &bias, causal, false), s, gen, 0.5f);
    check_case(make_rpe(favor(70, 2), nullptr, causal), s, gen);
  }
}

TEST_CASE("kernelized_rpe: bias_fn equals the bias array; bf16 inputs", "[kernelized_rpe]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 4, 2, 40, 55, 16, 24);
  const std::vector<float> bias = random_bias(s, gen);
  qkv<float> in = random_qkv<float>(s, gen);
  for (const bool causal : {false, true}) {
    auto p = make_rpe(favor(32, 7), &bias, causal);
    const result<float> with_array = run_fast(p, in.q, in.k, in.v);
    p.bias = nullptr;
    p.bias_fn = [&](index_t h, index_t r) { return bias[static_cast<std::size_t>(h * (s.Nq + s.Nk - 1) + r + s.Nk - 1)]; };
    const result<float> with_fn = run_fast(p, in.q, in.k, in.v);
    CHECK(same_bits(with_array.out, with_fn.out));
    check_case<bf16>(make_rpe(favor(32, 7), &bias, causal), s, gen);
    check_case<bf16>(make_rpe(elu_plus_one{}, &bias, causal, false), s, gen);
  }
}

TEST_CASE("kernelized_rpe: zero bias is plain kernelized (linear) attention", "[kernelized_rpe]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 70, 70, 16, 16);
  qkv<float> in = random_qkv<float>(s, gen);
  for (const bool causal : {false, true}) {
    favor_plus f = favor(48, 5);
    f.scale = 0.3f;
    auto rpe = make_rpe(f, nullptr, causal, false);
    rpe.scale = 0.3f;
    attnkit::linear<favor_plus> lin;
    lin.feature_map = f, lin.causal = causal;
    const auto [ok, msg] = compare_out(run_fast(rpe, in.q, in.k, in.v).out, run_fast(lin, in.q, in.k, in.v).out, 1e-5, 1e-5);
    INFO(msg);
    CHECK(ok);
    attnkit::linear<elu_plus_one> lin_elu;
    lin_elu.causal = causal;
    const auto [ok2, msg2] = compare_out(run_fast(make_rpe(elu_plus_one{}, nullptr, causal, false), in.q, in.k, in.v).out,
                                         run_fast(lin_elu, in.q, in.k, in.v).out, 1e-5, 1e-5);
    INFO(msg2);
    CHECK(ok2);
  }
}

TEST_CASE("kernelized_rpe: the FFT path equals the direct Toeplitz product", "[kernelized_rpe][fft]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_real_distribution<float> u(-5.f, 5.f), x01(-1.f, 1.f);
  struct shape {
    index_t nq, nk, cols;
  };
  for (const shape sh : {shape{1, 1, 3}, shape{7, 5, 2}, shape{5, 7, 33}, shape{1000, 1000, 4}, shape{999, 1500, 3},
                         shape{8192, 8192, 2}})
    for (const bool causal : {false, true}) {
      INFO("nq=" << sh.nq << " nk=" << sh.nk << " cols=" << sh.cols << " causal=" << causal);
      std::vector<float> bias(static_cast<std::size_t>(sh.nq + sh.nk - 1)), x(static_cast<std::size_t>(sh.nk * sh.cols));
      for (float& b : bias) b = u(gen);
      for (float& v : x) v = x01(gen);
      std::vector<float> y(static_cast<std::size_t>(sh.nq * sh.cols));
      std::vector<double> want(y.size());
      attnkit::toeplitz_multiply(bias.data(), sh.nq, sh.nk, causal, x.data(), sh.cols, y.data());
      attnkit::reference::direct_toeplitz(bias.data(), sh.nq, sh.nk, causal, x.data(), sh.cols, want.data());
      CHECK(relative_max_error(y, want) < 1e-5);
    }
}

TEST_CASE("kernelized_rpe: the lane FFT against a direct DFT, at power-of-two and smooth sizes", "[kernelized_rpe][fft]") {
  using arch = attnkit::detail::simd::wide_arch;
  constexpr index_t W = static_cast<index_t>(attnkit::detail::simd::vec<arch>::size);
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const index_t n : {1, 2, 3, 4, 5, 6, 8, 9, 12, 15, 16, 25, 27, 32, 45, 64, 75, 96, 120, 128, 243, 256, 360, 625, 1024, 1080}) {
    INFO("n=" << n);
    CHECK(attnkit::detail::simd::smooth_size(n) == n);
    const attnkit::detail::simd::lane_fft<arch> fft(n);
    std::vector<float> x(static_cast<std::size_t>(2 * n * W + 16)), work(fft.work_floats() + 16);
    float* data = x.data() + (16 - reinterpret_cast<std::uintptr_t>(x.data()) / 4 % 16) % 16;
    float* w = work.data() + (16 - reinterpret_cast<std::uintptr_t>(work.data()) / 4 % 16) % 16;
    for (index_t i = 0; i < 2 * n * W; ++i) data[i] = u(gen);
    std::vector<std::complex<double>> in(static_cast<std::size_t>(n * W));
    for (index_t t = 0; t < n; ++t)
      for (index_t l = 0; l < W; ++l) in[static_cast<std::size_t>(t * W + l)] = {data[2 * t * W + l], data[(2 * t + 1) * W + l]};
    fft.forward(data, w);
    double err = 0, top = 0;
    for (index_t f = 0; f < n; ++f)
      for (index_t l = 0; l < W; ++l) {
        std::complex<double> want = 0;
        for (index_t t = 0; t < n; ++t)
          want += in[static_cast<std::size_t>(t * W + l)] * std::polar(1.0, -2 * M_PI * double((t * f) % n) / double(n));
        const std::complex<double> got(data[2 * f * W + l], data[(2 * f + 1) * W + l]);
        err = std::max(err, std::abs(got - want)), top = std::max(top, std::abs(want));
      }
    CHECK(err / top < 1e-5);
    fft.inverse(data, w);  // unnormalised: n times the input
    double back = 0;
    for (index_t t = 0; t < n; ++t)
      for (index_t l = 0; l < W; ++l)
        back = std::max(back, std::abs(std::complex<double>(data[2 * t * W + l], data[(2 * t + 1) * W + l]) / double(n) -
                                       in[static_cast<std::size_t>(t * W + l)]));
    CHECK(back < 1e-5);
  }
  for (const index_t n : {7, 100, 1000, 4097, 100000}) {
    const index_t s = attnkit::detail::simd::smooth_size(n);
    INFO("n=" << n << " smooth size " << s);
    CHECK(s >= n);
    index_t r = s;
    for (const index_t p : {2, 3, 5})
      while (r % p == 0) r /= p;
    CHECK(r == 1);
    for (index_t t = n; t < s; ++t) {  // nothing smooth in between
      index_t v = t;
      for (const index_t p : {2, 3, 5})
        while (v % p == 0) v /= p;
      CHECK(v != 1);
    }
  }
}

TEST_CASE("kernelized_rpe: causal sees no future and equals -inf biases for r > 0", "[kernelized_rpe]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 2, 80, 80, 16, 16);
  std::vector<float> bias = random_bias(s, gen);
  qkv<float> in = random_qkv<float>(s, gen);
  const auto causal = make_rpe(favor(32, 4), &bias, true);
  const result<float> before = run_fast(causal, in.q, in.k, in.v);
  std::vector<float> masked = bias;
  for (index_t h = 0; h < s.Hq; ++h)
    for (index_t r = 1; r <= s.Nq - 1; ++r) masked[static_cast<std::size_t>(h * (s.Nq + s.Nk - 1) + r + s.Nk - 1)] = neg_inf;
  const result<float> with_masked_bias = run_fast(make_rpe(favor(32, 4), &masked, false), in.q, in.k, in.v);
  const auto [ok, msg] = compare_out(before.out, with_masked_bias.out, 1e-6, 1e-5);
  INFO(msg);
  CHECK(ok);
  const index_t j = 50;
  for (index_t d = 0; d < s.D; ++d) in.k.view(0, 1, j, d) = 2.f;
  for (index_t d = 0; d < s.Dv; ++d) in.v.view(0, 1, j, d) = 40.f;
  const result<float> after = run_fast(causal, in.q, in.k, in.v);
  // The FFT spreads round-off of the largest values over every row: close, not bitwise.
  for (index_t i = 0; i < j; ++i)
    for (index_t d = 0; d < s.Dv; ++d) CHECK(after.out.get(0, 1, i, d) == Approx(before.out.get(0, 1, i, d)).margin(2e-4));
}

TEST_CASE("kernelized_rpe: adding a constant to every bias changes nothing but the lse", "[kernelized_rpe]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 50, 64, 16, 16);
  std::vector<float> bias = random_bias(s, gen), shifted = bias;
  for (float& b : shifted) b += 3.f;
  qkv<float> in = random_qkv<float>(s, gen);
  for (const bool causal : {false, true}) {
    auto p = make_rpe(elu_plus_one{}, &bias, causal, false);
    p.eps = 0;
    const result<float> a = run_fast(p, in.q, in.k, in.v);
    p.bias = shifted.data();
    const result<float> b = run_fast(p, in.q, in.k, in.v);
    const auto [ok, msg] = compare_out(a.out, b.out, 1e-6, 1e-5);
    INFO(msg);
    CHECK(ok);
    for (index_t r = 0; r < s.rows(); ++r) CHECK(b.lse(r) == Approx(a.lse(r) + 3.f).margin(1e-4));
  }
}

TEST_CASE("kernelized_rpe: FAVOR+ approaches softmax with a relative bias as m grows", "[kernelized_rpe][favor]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 1, 1, 64, 64, 64, 16);
  const std::vector<float> bias = random_bias(s, gen, 1.f);
  qkv<float> in = random_qkv<float>(s, gen);
  // softmax_j(q^.k^ + b_{j-i}) v_j with unit rows q^, k^ (normalize_qk, scale 1), in double.
  std::vector<double> want(static_cast<std::size_t>(s.Nq * s.Dv));
  const auto unit = [&](const tensor<float>& x, index_t t) {
    std::vector<double> r(static_cast<std::size_t>(s.D));
    double n = 0;
    for (index_t d = 0; d < s.D; ++d) r[static_cast<std::size_t>(d)] = x.get(0, 0, t, d), n += r[static_cast<std::size_t>(d)] * r[static_cast<std::size_t>(d)];
    for (double& v : r) v /= std::sqrt(n);
    return r;
  };
  for (index_t i = 0; i < s.Nq; ++i) {
    const std::vector<double> qi = unit(in.q, i);
    std::vector<double> w(static_cast<std::size_t>(s.Nk));
    double top = -HUGE_VAL, sum = 0;
    for (index_t j = 0; j < s.Nk; ++j) {
      const std::vector<double> kj = unit(in.k, j);
      double dot = 0;
      for (index_t d = 0; d < s.D; ++d) dot += qi[static_cast<std::size_t>(d)] * kj[static_cast<std::size_t>(d)];
      w[static_cast<std::size_t>(j)] = dot + bias[static_cast<std::size_t>(j - i + s.Nk - 1)];
      top = std::max(top, w[static_cast<std::size_t>(j)]);
    }
    for (double& x : w) sum += (x = std::exp(x - top));
    for (index_t j = 0; j < s.Nk; ++j)
      for (index_t d = 0; d < s.Dv; ++d) want[static_cast<std::size_t>(i * s.Dv + d)] += w[static_cast<std::size_t>(j)] / sum * in.v.get(0, 0, j, d);
  }
  double previous = HUGE_VAL;
  for (const index_t m : {64, 256, 1024}) {
    double mean = 0;
    for (std::uint64_t seed = 0; seed < 4; ++seed) {
      auto p = make_rpe(favor(m, seed), &bias, false);
      p.eps = 0;
      const result<float> got = run_fast(p, in.q, in.k, in.v);
      double num = 0, den = 0;
      for (index_t i = 0; i < s.Nq; ++i)
        for (index_t d = 0; d < s.Dv; ++d) {
          const double w = want[static_cast<std::size_t>(i * s.Dv + d)];
          num += std::pow(got.out.get(0, 0, i, d) - w, 2), den += w * w;
        }
      mean += std::sqrt(num / den) / 4;
    }
    INFO("m = " << m << ": mean relative error " << mean);
    CHECK(mean < previous);
    previous = mean;
  }
}

TEST_CASE("kernelized_rpe: bitwise the same for every thread count and repeated calls", "[kernelized_rpe]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 4, 2, 300, 350, 16, 40);
  const std::vector<float> bias = random_bias(s, gen);
  qkv<float> in = random_qkv<float>(s, gen);
  for (const bool causal : {false, true}) {
    const auto p = make_rpe(favor(48, 12), &bias, causal);
    const result<float> one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
    const result<float> two = run_fast(p, in.q, in.k, in.v, layout::bhsd, 2);
    const result<float> again = run_fast(p, in.q, in.k, in.v, layout::bhsd, 0);
    CHECK(same_bits(one.out, two.out));
    CHECK(same_bits(one.out, again.out));
    CHECK(same_bits(one.lse_mem, again.lse_mem));
  }
}

TEST_CASE("kernelized_rpe: edge cases", "[kernelized_rpe]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const bool causal : {false, true}) {
    // Nk = 0: zeros, lse -inf.
    const problem s = make_problem(1, 2, 1, 5, 0, 8, 8);
    qkv<float> in = random_qkv<float>(s, gen);
    const result<float> r = run_fast(make_rpe(favor(8), nullptr, causal), in.q, in.k, in.v);
    r.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { CHECK(r.out.get(b, h, i, d) == 0.f); });
    for (index_t i = 0; i < s.rows(); ++i) CHECK(r.lse(i) == neg_inf);
    // N = 1, and Nq > Nk (causal: leading rows see nothing).
    for (const problem& t : {make_problem(1, 1, 1, 1, 1, 8, 8), make_problem(1, 1, 1, 40, 10, 8, 8)}) {
      const std::vector<float> bias = random_bias(t, gen);
      check_case(make_rpe(favor(16, 1), &bias, causal), t, gen);
    }
    // Every bias -inf: no key weighs anything.
    const problem t = make_problem(1, 1, 1, 6, 6, 8, 8);
    const std::vector<float> none(static_cast<std::size_t>(11), neg_inf);
    qkv<float> in2 = random_qkv<float>(t, gen);
    const result<float> z = run_fast(make_rpe(elu_plus_one{}, &none, causal), in2.q, in2.k, in2.v);
    z.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { CHECK(z.out.get(b, h, i, d) == 0.f); });
    CHECK(z.lse(0) == neg_inf);
  }
}

TEST_CASE("kernelized_rpe: invalid fields are rejected before anything is written", "[kernelized_rpe][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 4, 5, 8, 8);
  qkv<float> in = random_qkv<float>(s, gen);
  std::vector<float> bias = random_bias(s, gen);
  const auto rejects = [&](const auto& p, const char* what) {
    INFO(what);
    result<float> r = make_result<float>(s, layout::bhsd);
    CHECK_THROWS_AS(attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), r.out.view), attnkit::error);
    CHECK_THROWS_AS(attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), r.out.view), attnkit::error);
    CHECK(guards_intact(r.out));
  };
  auto p = make_rpe(favor(8), &bias, false);
  bias[3] = std::numeric_limits<float>::quiet_NaN();
  rejects(p, "NaN bias");
  bias[3] = std::numeric_limits<float>::infinity();
  rejects(p, "+inf bias");
  bias[3] = 0;
  p.bias_fn = [](index_t, index_t) { return 0.f; };
  rejects(p, "bias and bias_fn");
  p.bias = nullptr;
  p.bias_fn = [](index_t, index_t r) { return r == -2 ? std::numeric_limits<float>::quiet_NaN() : 0.f; };
  rejects(p, "bias_fn returning NaN");
  p.bias_fn = nullptr;
  p.eps = -1;
  rejects(p, "eps < 0");
  p.eps = 1e-6f, p.scale = -2;
  rejects(p, "negative scale with FAVOR+");
  p.scale = 0, p.feature_map.features = 0;
  rejects(p, "features 0");
  std::vector<float> y(4);
  CHECK_THROWS_AS(attnkit::toeplitz_multiply(nullptr, -1, 2, false, y.data(), 1, y.data()), attnkit::error);
  CHECK_THROWS_AS(attnkit::toeplitz_multiply(nullptr, 2, 2, false, nullptr, 1, y.data()), attnkit::error);
}
