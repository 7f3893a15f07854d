// Softmax attention: the float64 reference pinned by hand, then attnkit::attention (flash
// engine) against the reference on fresh random inputs, the spec's properties, edge cases
// and input validation. Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::f16;
using attnkit::index_t;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

/// Rows of `r` for which `keep(b, h, i)` holds are zeros with lse -inf.
template <class O, class F>
void check_empty_rows(const result<O>& r, F&& is_empty) {
  const auto& e = r.out.ext;
  index_t wrong = 0;
  std::string first;
  for (index_t b = 0; b < e[0]; ++b)
    for (index_t h = 0; h < e[1]; ++h)
      for (index_t i = 0; i < e[2]; ++i) {
        if (!is_empty(b, h, i)) continue;
        bool ok = r.lse((b * e[1] + h) * e[2] + i) == -inf;
        for (index_t d = 0; d < e[3]; ++d) ok = ok && r.out.get(b, h, i, d) == 0.f;
        if (!ok && wrong++ == 0)
          first = "b=" + std::to_string(b) + " h=" + std::to_string(h) + " i=" + std::to_string(i);
      }
  INFO("rows expected empty but not (zeros, lse -inf): " << wrong << ", first " << first);
  CHECK(wrong == 0);
}

template <class O>
bool no_nan(const result<O>& r) {
  bool ok = true;
  r.out.for_each([&](index_t b, index_t h, index_t s, index_t d) { ok = ok && !std::isnan(r.out.get(b, h, s, d)); });
  const index_t rows = r.out.ext[0] * r.out.ext[1] * r.out.ext[2];
  for (index_t i = 0; i < rows; ++i) ok = ok && !std::isnan(r.lse(i));
  return ok;
}

/// Runs the reference on plain float arrays (contiguous bhsd) and returns out and lse.
struct small_result {
  std::vector<float> out, lse;
};
small_result ref_small(const attnkit::softmax& p, const problem& s, const std::vector<float>& q,
                       const std::vector<float>& k, const std::vector<float>& v, bool fast = false) {
  small_result r{std::vector<float>(static_cast<std::size_t>(s.B * s.Hq * s.Nq * s.Dv), -1.f),
                 std::vector<float>(static_cast<std::size_t>(s.rows()), -1.f)};
  attnkit::options o;
  o.lse = r.lse.data();
  auto Q = attnkit::view_bhsd(q.data(), s.B, s.Hq, s.Nq, s.D);
  auto K = attnkit::view_bhsd(k.data(), s.B, s.Hkv, s.Nk, s.D);
  auto V = attnkit::view_bhsd(v.data(), s.B, s.Hkv, s.Nk, s.Dv);
  auto O = attnkit::view_bhsd(r.out.data(), s.B, s.Hq, s.Nq, s.Dv);
  if (fast)
    attnkit::attention(p, Q, K, V, O, o);
  else
    attnkit::reference::attention(p, Q, K, V, O, o);
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The reference, pinned by hand.
// ---------------------------------------------------------------------------------------------

TEST_CASE("reference: hand-computed two-key cases", "[softmax][reference]") {
  // D = 1, scale = 1: q = (1, 1), k = (0, ln 3), v = (1, 5). Logits 0 and ln 3: weights 1/4, 3/4.
  const float ln3 = static_cast<float>(std::log(3.0));
  const std::vector<float> q{1.f, 1.f}, k{0.f, ln3}, v{1.f, 5.f};
  problem s;
  s.Nq = 2, s.Nk = 2, s.D = 1, s.Dv = 1;
  const double ln4 = std::log(4.0);
  const bool fast = GENERATE(false, true);  // the same numbers must come out of the fast path
  CAPTURE(fast);
  auto near = [](double got, double want) { return std::abs(got - want) <= 1e-6 * (1 + std::abs(want)); };

  attnkit::softmax p;
  p.scale = 1;
  SECTION("non-causal") {
    auto r = ref_small(p, s, q, k, v, fast);
    CHECK(near(r.out[0], 4.0));
    CHECK(near(r.out[1], 4.0));
    CHECK(near(r.lse[0], ln4));
    CHECK(near(r.lse[1], ln4));
  }
  SECTION("causal: row 0 sees key 0 only") {
    p.causal = true;
    auto r = ref_small(p, s, q, k, v, fast);
    CHECK(near(r.out[0], 1.0));
    CHECK(near(r.lse[0], 0.0));
    CHECK(near(r.out[1], 4.0));
    CHECK(near(r.lse[1], ln4));
  }
  SECTION("window_right = 0 is causal; window_left = 0 keeps the diagonal") {
    p.window_right = 0;
    auto r = ref_small(p, s, q, k, v, fast);
    CHECK(near(r.out[0], 1.0));
    CHECK(near(r.out[1], 4.0));
    attnkit::softmax w;
    w.scale = 1;
    w.window_left = 0;
    r = ref_small(w, s, q, k, v, fast);
    CHECK(near(r.out[0], 4.0));  // row 0 sees keys >= 0
    CHECK(near(r.out[1], 5.0));  // row 1 sees keys >= 1
    CHECK(near(r.lse[1], std::log(3.0)));
  }
  SECTION("soft-cap 1: logits 0 and tanh(ln 3) = 0.8") {
    p.softcap = 1;
    auto r = ref_small(p, s, q, k, v, fast);
    const double e = std::exp(0.8);
    CHECK(near(r.out[0], (1 + 5 * e) / (1 + e)));
    CHECK(near(r.lse[0], std::log(1 + e)));
  }
  SECTION("ALiBi slope 0.5: bias -0.5 |p - j|") {
    const float slope = 0.5f;
    p.alibi_slopes = &slope;
    auto r = ref_small(p, s, q, k, v, fast);
    const double a = 3 * std::exp(-0.5);  // row 0: logits 0, ln 3 - 0.5
    CHECK(near(r.out[0], (1 + 5 * a) / (1 + a)));
    CHECK(near(r.lse[0], std::log(1 + a)));
    const double c = std::exp(-0.5);  // row 1: logits -0.5, ln 3
    CHECK(near(r.out[1], (c + 15) / (c + 3)));
    CHECK(near(r.lse[1], std::log(c + 3)));
  }
  SECTION("Nq = 1, Nk = 2 causal: bottom-right, the query sees both keys") {
    p.causal = true;
    problem s1 = s;
    s1.Nq = 1;
    auto r = ref_small(p, s1, {1.f}, k, v, fast);
    CHECK(near(r.out[0], 4.0));
  }
  SECTION("Nq = 3, Nk = 2 causal: row 0 sees nothing") {
    p.causal = true;
    problem s3 = s;
    s3.Nq = 3;
    auto r = ref_small(p, s3, {1.f, 1.f, 1.f}, k, v, fast);
    CHECK(r.out[0] == 0.f);
    CHECK(r.lse[0] == -inf);
    CHECK(near(r.out[1], 1.0));
    CHECK(near(r.lse[1], 0.0));
    CHECK(near(r.out[2], 4.0));
  }
  SECTION("key_lens = 1: only key 0; causal offset follows the lengths") {
    const std::int32_t kl = 1;
    p.key_lens = &kl;
    auto r = ref_small(p, s, q, k, v, fast);
    CHECK(near(r.out[0], 1.0));
    CHECK(near(r.out[1], 1.0));
    CHECK(near(r.lse[1], 0.0));
    p.causal = true;  // off = 1 - 2 = -1: row 0 at position -1 sees nothing
    r = ref_small(p, s, q, k, v, fast);
    CHECK(r.out[0] == 0.f);
    CHECK(r.lse[0] == -inf);
    CHECK(near(r.out[1], 1.0));
  }
  SECTION("query_lens = 1: row 1 is padding; row 0 sits at position 1") {
    const std::int32_t ql = 1;
    p.query_lens = &ql;
    p.causal = true;
    auto r = ref_small(p, s, q, k, v, fast);
    CHECK(near(r.out[0], 4.0));
    CHECK(r.out[1] == 0.f);
    CHECK(r.lse[1] == -inf);
  }
  SECTION("default scale 1/sqrt(D), D = 4, Dv = 2") {
    problem s4;
    s4.Nq = 1, s4.Nk = 2, s4.D = 4, s4.Dv = 2;
    attnkit::softmax d;  // scale 0 -> 1/2
    const float h = ln3 / 2;
    auto r = ref_small(d, s4, {1.f, 1.f, 1.f, 1.f}, {0.f, 0.f, 0.f, 0.f, h, h, h, h}, {1.f, -1.f, 5.f, 3.f}, fast);
    CHECK(near(r.out[0], 4.0));
    CHECK(near(r.out[1], 2.0));
    CHECK(near(r.lse[0], ln4));
  }
  SECTION("GQA: query heads 0, 1 read kv head 0; heads 2, 3 read kv head 1") {
    problem g;
    g.Hq = 4, g.Hkv = 2, g.Nq = 1, g.Nk = 2, g.D = 1, g.Dv = 1;
    // kv head 0: keys (0, ln3), values (1, 5) -> 4; kv head 1: keys (0, 0), values (2, 4) -> 3
    auto r = ref_small(p, g, {1.f, 1.f, 1.f, 1.f}, {0.f, ln3, 0.f, 0.f}, {1.f, 5.f, 2.f, 4.f}, fast);
    CHECK(near(r.out[0], 4.0));
    CHECK(near(r.out[1], 4.0));
    CHECK(near(r.out[2], 3.0));
    CHECK(near(r.out[3], 3.0));
    CHECK(near(r.lse[2], std::log(2.0)));
  }
}

TEST_CASE("reference: visibility agrees with dense_mask and the FA2 window formula", "[softmax][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<int> n(0, 12), w(-1, 6), coin(0, 1);
  for (int trial = 0; trial < 300; ++trial) {
    attnkit::softmax p;
    p.causal = coin(gen);
    p.window_left = w(gen);
    p.window_right = w(gen);
    const index_t nq = n(gen), nk = n(gen);
    INFO(describe(p) << " nq=" << nq << " nk=" << nk);
    const auto mask = attnkit::dense_mask(p, nq, nk);
    REQUIRE(mask.size() == static_cast<std::size_t>(nq * nk));
    for (index_t i = 0; i < nq; ++i)
      for (index_t j = 0; j < nk; ++j) {
        // FA2: keys in [i + Nk - Nq - left, i + Nk - Nq + right]; causal is right = 0
        const index_t pos = i + nk - nq;
        const index_t right = p.causal ? 0 : p.window_right;
        const bool fa2 = (p.window_left < 0 || j >= pos - p.window_left) && (right < 0 || j <= pos + right);
        const bool ref = attnkit::reference::detail::softmax_visible(p, i, j, nq, nk);
        REQUIRE(ref == fa2);
        REQUIRE(bool(mask[static_cast<std::size_t>(i * nk + j)]) == ref);
      }
  }
}

TEST_CASE("alibi_slopes follows Press et al. (spec formula)", "[softmax][alibi]") {
  // Closed form, written independently: n = 2^floor(log2 H); slope h < n is 2^(-8 (h+1) / n);
  // the e-th extra slope (e = 0, 1, ...) is slope 2e of 2n heads: 2^(-8 (2e+1) / (2n)).
  for (index_t H = 1; H <= 80; ++H) {
    CAPTURE(H);
    const auto s = attnkit::alibi_slopes(H);
    REQUIRE(static_cast<index_t>(s.size()) == H);
    index_t n = 1;
    while (2 * n <= H) n *= 2;
    for (index_t h = 0; h < H; ++h) {
      const double want = h < n ? std::pow(2.0, -8.0 * double(h + 1) / double(n))
                                : std::pow(2.0, -8.0 * double(2 * (h - n) + 1) / double(2 * n));
      CAPTURE(h);
      REQUIRE(s[static_cast<std::size_t>(h)] == Approx(want).epsilon(1e-6));
    }
  }
  // literal values
  const auto s8 = attnkit::alibi_slopes(8);
  for (int h = 0; h < 8; ++h) CHECK(s8[h] == std::ldexp(1.0f, -(h + 1)));
  const auto s12 = attnkit::alibi_slopes(12);
  const double sq = std::sqrt(0.5);
  const double want12[12] = {0.5,    0.25,        0.125,       0.0625,      1.0 / 32,   1.0 / 64,
                             1.0 / 128, 1.0 / 256, sq,          sq / 2,      sq / 4,     sq / 8};
  for (int h = 0; h < 12; ++h) CHECK(s12[h] == Approx(want12[h]).epsilon(1e-6));
  const auto s1 = attnkit::alibi_slopes(1);
  CHECK(s1[0] == std::ldexp(1.0f, -8));
  const auto s3 = attnkit::alibi_slopes(3);
  CHECK(s3[0] == std::ldexp(1.0f, -4));
  CHECK(s3[1] == std::ldexp(1.0f, -8));
  CHECK(s3[2] == std::ldexp(1.0f, -2));
  CHECK_THROWS_AS(attnkit::alibi_slopes(0), attnkit::error);
}

// ---------------------------------------------------------------------------------------------
// Fast path vs reference.
// ---------------------------------------------------------------------------------------------

TEST_CASE("matches reference: sizes not divisible by any block, all head dims", "[softmax][sizes]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t D = GENERATE(1, 3, 16, 63, 64, 80, 128, 200, 256);
  const index_t sizes[] = {1, 7, 33, 97, 130, 257};
  int n = 0;
  for (index_t N : sizes) {
    problem s;
    s.Hq = 2, s.Hkv = 1, s.Nq = N, s.Nk = N, s.D = D, s.Dv = D;
    attnkit::softmax p;
    p.causal = (n++ % 2) == 1;
    check_vs_reference<float>(p, s, gen);
  }
  // and a causal / non-causal pair at one mid size, so both modes see every D
  problem s;
  s.Nq = 45, s.Nk = 45, s.D = D, s.Dv = D;
  attnkit::softmax p;
  check_vs_reference<float>(p, s, gen);
  p.causal = true;
  check_vs_reference<float>(p, s, gen);
}

TEST_CASE("matches reference: Dv != D", "[softmax][sizes]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto dims = GENERATE(std::make_pair(16, 64), std::make_pair(64, 16), std::make_pair(3, 200),
                             std::make_pair(128, 80), std::make_pair(200, 3), std::make_pair(1, 256),
                             std::make_pair(256, 1), std::make_pair(80, 128));
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = 37, s.Nk = 70, s.D = dims.first, s.Dv = dims.second;
  attnkit::softmax p;
  check_vs_reference<float>(p, s, gen);
  p.causal = true;
  check_vs_reference<float>(p, s, gen);
}

TEST_CASE("matches reference: Nq != Nk both ways, bottom-right causal", "[softmax][causal]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(5, 2), std::make_pair(2, 5), std::make_pair(1, 130),
                          std::make_pair(130, 1), std::make_pair(33, 97), std::make_pair(97, 33),
                          std::make_pair(7, 257), std::make_pair(257, 7), std::make_pair(64, 65),
                          std::make_pair(65, 64));
  problem s;
  s.B = 2, s.Hq = 2, s.Hkv = 1, s.Nq = n.first, s.Nk = n.second, s.D = 32, s.Dv = 32;
  attnkit::softmax p;
  check_vs_reference<float>(p, s, gen);
  p.causal = true;
  auto [fast, ref] = check_vs_reference<float>(p, s, gen);
  // rows i with i + Nk - Nq < 0 see nothing
  check_empty_rows(fast, [&](index_t, index_t, index_t i) { return i + s.Nk - s.Nq < 0; });
  check_empty_rows(ref, [&](index_t, index_t, index_t i) { return i + s.Nk - s.Nq < 0; });
  CHECK(no_nan(fast));
  p.window_left = 3;
  check_vs_reference<float>(p, s, gen);
}

TEST_CASE("Nq = 5, Nk = 2 causal: the first three rows are zero with lse -inf", "[softmax][causal]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.Nq = 5, s.Nk = 2, s.D = 8, s.Dv = 8;
  attnkit::softmax p;
  p.causal = true;
  auto [fast, ref] = check_vs_reference<float>(p, s, gen);
  for (index_t i = 0; i < 5; ++i) {
    CAPTURE(i);
    if (i < 3) {
      CHECK(fast.lse(i) == -inf);
      for (index_t d = 0; d < 8; ++d) CHECK(fast.out.get(0, 0, i, d) == 0.f);
    } else {
      CHECK(std::isfinite(fast.lse(i)));
    }
  }
  // Nq = 2, Nk = 5: rows keep keys 0..3 and 0..4 (spec example): row 0 differs from a row
  // that sees all keys, row 1 equals non-causal.
  s.Nq = 2, s.Nk = 5;
  auto in = random_qkv<float>(s, gen);
  auto rc = run_fast(p, in.q, in.k, in.v);
  auto rn = run_fast(attnkit::softmax{}, in.q, in.k, in.v);
  for (index_t d = 0; d < 8; ++d) CHECK(rc.out.get(0, 0, 1, d) == Approx(rn.out.get(0, 0, 1, d)).margin(1e-6));
  CHECK(rc.lse(0) < rn.lse(0));
}

TEST_CASE("matches reference: layouts (bhsd, bshd, strided) in every position", "[softmax][layout]") {
  ATTNKIT_SEEDED_RNG(gen);
  const layout lq = GENERATE(layout::bhsd, layout::bshd, layout::strided);
  const layout lk = GENERATE(layout::bhsd, layout::bshd, layout::strided);
  const layout lv = GENERATE(layout::bhsd, layout::bshd, layout::strided);
  const layout lo = GENERATE(layout::bhsd, layout::bshd, layout::strided);
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = 37, s.Nk = 45, s.D = 24, s.Dv = 20;
  attnkit::softmax p;
  p.causal = lq == lk;
  check_vs_reference<float>(p, s, gen, lq, lk, lv, lo);
}

TEST_CASE("matches reference: strided and bshd views with 16-bit types", "[softmax][layout][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const layout l = GENERATE(layout::bshd, layout::strided);
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 1, s.Nq = 50, s.Nk = 70, s.D = 40, s.Dv = 24;
  attnkit::softmax p;
  p.causal = true;
  check_vs_reference<bf16, float>(p, s, gen, l, l, l, l);
  check_vs_reference<f16, f16>(p, s, gen, l, l, l, l);
  check_vs_reference<bf16, bf16>(p, s, gen, l, layout::bhsd, l, layout::bshd);
}

TEST_CASE("matches reference: GQA and MQA", "[softmax][gqa]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto heads = GENERATE(std::make_pair(8, 2), std::make_pair(8, 1), std::make_pair(6, 3),
                              std::make_pair(32, 8), std::make_pair(5, 5), std::make_pair(12, 4));
  const auto n = GENERATE(std::make_pair(1, 64), std::make_pair(13, 29), std::make_pair(70, 70),
                          std::make_pair(100, 35));
  problem s;
  s.B = 2, s.Hq = heads.first, s.Hkv = heads.second, s.Nq = n.first, s.Nk = n.second, s.D = 16, s.Dv = 24;
  attnkit::softmax p;
  check_vs_reference<float>(p, s, gen);
  p.causal = true;
  check_vs_reference<float>(p, s, gen);
  p.window_left = 9;
  check_vs_reference<float>(p, s, gen);
}

TEST_CASE("matches reference: sliding windows", "[softmax][window]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto win = GENERATE(std::make_pair(0, -1), std::make_pair(1, -1), std::make_pair(5, -1),
                            std::make_pair(40, -1), std::make_pair(-1, 0), std::make_pair(-1, 3),
                            std::make_pair(-1, 50), std::make_pair(3, 3), std::make_pair(0, 0),
                            std::make_pair(64, 64), std::make_pair(17, 100), std::make_pair(1000, 1000));
  const bool causal = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(130, 130), std::make_pair(40, 150), std::make_pair(150, 40));
  problem s;
  s.B = 1, s.Hq = 2, s.Hkv = 1, s.Nq = n.first, s.Nk = n.second, s.D = 16, s.Dv = 16;
  attnkit::softmax p;
  p.causal = causal;
  p.window_left = win.first;
  p.window_right = win.second;
  auto [fast, ref] = check_vs_reference<float>(p, s, gen);
  CHECK(no_nan(fast));
}

TEST_CASE("window_right = 0 equals causal exactly; windows >= Nk and -1 equal none", "[softmax][window]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(100, 100), std::make_pair(37, 130), std::make_pair(130, 37),
                          std::make_pair(1, 500));
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = n.first, s.Nk = n.second, s.D = 32, s.Dv = 32;
  CAPTURE(describe(s));
  auto in = random_qkv<float>(s, gen);
  for (index_t left : {index_t(-1), index_t(0), index_t(7)}) {
    CAPTURE(left);
    attnkit::softmax causal, right0;
    causal.causal = true;
    causal.window_left = right0.window_left = left;
    right0.window_right = 0;
    const auto a = run_fast(causal, in.q, in.k, in.v);
    const auto b = run_fast(right0, in.q, in.k, in.v);
    CHECK(same_bits(a.out, b.out));
    CHECK(same_bits(a.lse_mem, b.lse_mem));
    // and causal together with window_right = 0 is the same again
    causal.window_right = 0;
    const auto c = run_fast(causal, in.q, in.k, in.v);
    CHECK(same_bits(a.out, c.out));
  }
  attnkit::softmax none, minus1, huge;
  minus1.window_left = minus1.window_right = -1;
  huge.window_left = huge.window_right = s.Nk + s.Nq;
  const auto a = run_fast(none, in.q, in.k, in.v);
  const auto b = run_fast(minus1, in.q, in.k, in.v);
  const auto c = run_fast(huge, in.q, in.k, in.v);
  CHECK(same_bits(a.out, b.out));
  CHECK(same_bits(a.lse_mem, b.lse_mem));
  check_matches(c, run_ref(none, in.q, in.k, in.v), float_tol);
  CHECK(same_bits(a.out, c.out));
}

TEST_CASE("matches reference: soft-cap", "[softmax][softcap]") {
  ATTNKIT_SEEDED_RNG(gen);
  const float cap = GENERATE(0.5f, 5.f, 30.f, 1e4f);
  const bool causal = GENERATE(false, true);
  problem s;
  s.B = 1, s.Hq = 4, s.Hkv = 2, s.Nq = 77, s.Nk = 93, s.D = 32, s.Dv = 32;
  attnkit::softmax p;
  p.softcap = cap;
  p.causal = causal;
  p.scale = 1.0f;  // logits up to ~30: the cap matters
  check_vs_reference<float>(p, s, gen, layout::bhsd, layout::bhsd, layout::bhsd, layout::bhsd, 0, 1.5f);
}

TEST_CASE("huge soft-cap approaches no cap", "[softmax][softcap]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.Hq = 2, s.Nq = 60, s.Nk = 90, s.D = 32, s.Dv = 32;
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax capped, plain;
  capped.softcap = 1e6f;
  const auto a = run_fast(capped, in.q, in.k, in.v);
  const auto b = run_fast(plain, in.q, in.k, in.v);
  const auto [ok, msg] = compare_out(a.out, b.out, 1e-5, 1e-5);
  INFO(msg);
  CHECK(ok);
  const auto [okl, msgl] = compare_lse(a.lse_mem, b.lse_mem, s.rows(), 1e-5, 1e-6);
  INFO(msgl);
  CHECK(okl);
}

TEST_CASE("matches reference: ALiBi", "[softmax][alibi]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto heads = GENERATE(std::make_pair(12, 4), std::make_pair(8, 8), std::make_pair(8, 2), std::make_pair(3, 1));
  const auto n = GENERATE(std::make_pair(90, 90), std::make_pair(30, 120), std::make_pair(120, 30));
  problem s;
  s.B = 2, s.Hq = heads.first, s.Hkv = heads.second, s.Nq = n.first, s.Nk = n.second, s.D = 16, s.Dv = 16;
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  attnkit::softmax p;
  p.alibi_slopes = slopes.data();
  check_vs_reference<float>(p, s, gen);
  p.causal = true;
  check_vs_reference<float>(p, s, gen);
  p.softcap = 2.f;  // cap first, then the bias
  p.window_left = 20;
  check_vs_reference<float>(p, s, gen);
  // arbitrary slopes, negative ones included
  std::vector<float> any(static_cast<std::size_t>(s.Hq));
  std::uniform_real_distribution<float> u(-0.5f, 1.f);
  for (auto& x : any) x = u(gen);
  attnkit::softmax r;
  r.alibi_slopes = any.data();
  check_vs_reference<float>(r, s, gen);
}

TEST_CASE("matches reference: key_lens and query_lens", "[softmax][varlen]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(false, true);
  const index_t window = GENERATE(-1, 6);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(40, 100), std::make_pair(100, 40));
  problem s;
  s.B = 5, s.Hq = 4, s.Hkv = 2, s.Nq = n.first, s.Nk = n.second, s.D = 16, s.Dv = 8;
  // lengths: full, empty, and random ones
  std::vector<std::int32_t> kl(5), ql(5);
  std::uniform_int_distribution<int> rk(0, static_cast<int>(s.Nk)), rq(0, static_cast<int>(s.Nq));
  for (int b = 0; b < 5; ++b) kl[b] = rk(gen), ql[b] = rq(gen);
  kl[0] = static_cast<std::int32_t>(s.Nk), ql[0] = static_cast<std::int32_t>(s.Nq);
  kl[1] = 0;
  ql[2] = 0;
  kl[3] = 1, ql[3] = static_cast<std::int32_t>(s.Nq);
  INFO("key_lens " << kl[0] << " " << kl[1] << " " << kl[2] << " " << kl[3] << " " << kl[4] << "; query_lens "
                   << ql[0] << " " << ql[1] << " " << ql[2] << " " << ql[3] << " " << ql[4]);
  for (int which = 0; which < 3; ++which) {
    CAPTURE(which);
    attnkit::softmax p;
    p.causal = causal;
    p.window_left = window;
    p.key_lens = which != 1 ? kl.data() : nullptr;
    p.query_lens = which != 0 ? ql.data() : nullptr;
    auto [fast, ref] = check_vs_reference<float>(p, s, gen);
    auto empty = [&](index_t b, index_t, index_t i) {
      const index_t lq = p.query_lens ? p.query_lens[b] : s.Nq, lk = p.key_lens ? p.key_lens[b] : s.Nk;
      return i >= lq || lk == 0;
    };
    check_empty_rows(fast, empty);
    check_empty_rows(ref, empty);
    CHECK(no_nan(fast));
  }
}

TEST_CASE("lse is optional and does not change out", "[softmax][lse]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = 50, s.Nk = 80, s.D = 32, s.Dv = 32;
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax p;
  p.causal = true;
  const auto with = run_fast(p, in.q, in.k, in.v);
  auto without = output_tensor<float>(s.o_ext(), layout::bhsd);
  attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), without.view);
  CHECK(same_bits(with.out, without));
  auto ref_without = output_tensor<float>(s.o_ext(), layout::bhsd);
  attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), ref_without.view);
  CHECK(compare_out(without, ref_without, 2e-5, 1e-5).first);
  // lse_size = -1 (trusted) works too
  std::vector<float> lse(static_cast<std::size_t>(s.rows()));
  attnkit::options o;
  o.lse = lse.data();
  auto out2 = output_tensor<float>(s.o_ext(), layout::bhsd);
  attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out2.view, o);
  CHECK(same_bits(with.out, out2));
  CHECK(std::memcmp(lse.data(), with.lse_mem.data() + guard, lse.size() * sizeof(float)) == 0);
}

TEMPLATE_TEST_CASE("matches reference: 16-bit inputs and outputs", "[softmax][half]", (std::pair<bf16, float>),
                   (std::pair<f16, float>), (std::pair<bf16, bf16>), (std::pair<f16, f16>), (std::pair<float, bf16>),
                   (std::pair<float, f16>), (std::pair<bf16, f16>)) {
  using In = typename TestType::first_type;
  using Out = typename TestType::second_type;
  ATTNKIT_SEEDED_RNG(gen);
  const auto shape = GENERATE(std::make_tuple(1, 1, 97, 97, 64, 64), std::make_tuple(2, 8, 33, 130, 80, 80),
                              std::make_tuple(1, 32, 1, 700, 128, 128), std::make_tuple(1, 2, 257, 31, 3, 200),
                              std::make_tuple(2, 4, 64, 64, 256, 256));
  problem s;
  s.B = std::get<0>(shape), s.Hq = std::get<1>(shape), s.Hkv = std::max<index_t>(1, s.Hq / 4);
  s.Nq = std::get<2>(shape), s.Nk = std::get<3>(shape), s.D = std::get<4>(shape), s.Dv = std::get<5>(shape);
  attnkit::softmax p;
  check_vs_reference<In, Out>(p, s, gen);
  p.causal = true;
  check_vs_reference<In, Out>(p, s, gen);
  p.softcap = 3.f;
  p.window_left = 10;
  check_vs_reference<In, Out>(p, s, gen);
}

#if defined(__AVX512BF16__)
TEST_CASE("matches reference: bf16 q, k, v both on the dot product and widened to float", "[softmax][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 1, s.Hq = 4, s.Hkv = 2, s.Nq = 130, s.Nk = 200, s.D = 64, s.Dv = 48;
  const qkv<bf16> in = random_qkv<bf16>(s, gen);
  attnkit::softmax p;
  p.causal = GENERATE(false, true);
  const result<float> ref = run_ref(p, in.q, in.k, in.v);
  std::vector<result<float>> fast;
  for_each_bf16_way([&] {
    fast.push_back(run_fast<float>(p, in.q, in.k, in.v));
    check_matches(fast.back(), ref, half_tol);
  });
  REQUIRE(fast.size() == 2);
  CHECK_FALSE(same_bits(fast[0].out, fast[1].out));  // two ways ran: p.v rounds p to bf16 on the dot product
}
#endif

TEST_CASE("matches reference: q, k, v of different element types", "[softmax][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 1, s.Hq = 4, s.Hkv = 2, s.Nq = 40, s.Nk = 90, s.D = 48, s.Dv = 32;
  auto q = random_tensor<float>(s.q_ext(), layout::bhsd, gen);
  auto k = random_tensor<bf16>(s.k_ext(), layout::bshd, gen);
  auto v = random_tensor<f16>(s.v_ext(), layout::strided, gen);
  attnkit::softmax p;
  p.causal = true;
  const auto fast = run_fast<bf16>(p, q, k, v);
  const auto ref = run_ref(p, q, k, v);
  check_matches(fast, ref, half_tol);
  const auto fast2 = run_fast<float>(p, q, k, v);
  check_matches(fast2, ref, half_tol);
}

// ---------------------------------------------------------------------------------------------
// Edge cases.
// ---------------------------------------------------------------------------------------------

TEST_CASE("fully masked rows: zeros, lse -inf, no NaN anywhere", "[softmax][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 3, s.Hq = 4, s.Hkv = 2, s.Nq = 90, s.Nk = 20, s.D = 16, s.Dv = 16;
  // causal with Nq > Nk: the first 70 rows see nothing; key_lens 0 for batch 1; query_lens 30
  // for batch 2 masks the rest.
  const std::int32_t kl[3] = {20, 0, 20}, ql[3] = {90, 90, 30};
  attnkit::softmax p;
  p.causal = true;
  p.key_lens = kl;
  p.query_lens = ql;
  auto [fast, ref] = check_vs_reference<float>(p, s, gen);
  auto empty = [&](index_t b, index_t, index_t i) { return i >= ql[b] || kl[b] == 0 || i + kl[b] - ql[b] < 0; };
  check_empty_rows(fast, empty);
  CHECK(no_nan(fast));
  CHECK(no_nan(ref));
  // a window that skips every key of some rows: right window ending before key 0
  attnkit::softmax w;
  w.window_left = 2;
  w.window_right = 2;
  problem t = s;
  t.Nq = 10, t.Nk = 40;  // off = 30: rows sit at 30..39, keys 28..41
  auto [f2, r2] = check_vs_reference<float>(w, t, gen);
  CHECK(no_nan(f2));
  // key_lens shorter than the window offset: rows sit past the valid keys
  const std::int32_t kl2[3] = {5, 5, 5}, ql2[3] = {1, 10, 10};
  attnkit::softmax v = w;
  v.key_lens = kl2;
  v.query_lens = ql2;
  v.window_right = 0;
  v.window_left = 0;
  auto [f3, r3] = check_vs_reference<float>(v, t, gen);
  CHECK(no_nan(f3));
}

TEST_CASE("rows with nothing visible are +0.0 and never NaN, whatever the visible keys hold", "[softmax][edge][nan]") {
  // Rows that see no key must not accumulate anything: a NaN or inf in a key that other rows
  // see must not reach them (spec: "zeros in out and -inf in lse, never NaN").
  ATTNKIT_SEEDED_RNG(gen);
  const float bad = GENERATE(std::numeric_limits<float>::quiet_NaN(), inf);
  const auto n = GENERATE(std::make_pair(5, 1), std::make_pair(5, 2), std::make_pair(90, 20), std::make_pair(200, 64));
  problem s;
  s.B = 1, s.Hq = 2, s.Hkv = 1, s.Nq = n.first, s.Nk = n.second, s.D = 8, s.Dv = 8;
  CAPTURE(bad, describe(s));
  auto in = random_qkv<float>(s, gen);
  for (index_t j = 0; j < s.Nk; ++j) in.v.set(0, 0, j, 0, bad);  // dim 0 of every value
  attnkit::softmax p;
  p.causal = true;
  const auto fast = run_fast(p, in.q, in.k, in.v);
  index_t wrong = 0;
  std::string first;
  for (index_t h = 0; h < s.Hq; ++h)
    for (index_t i = 0; i + s.Nk - s.Nq < 0; ++i) {
      bool ok = fast.lse(h * s.Nq + i) == -inf;
      for (index_t d = 0; d < s.Dv; ++d) {
        const float x = fast.out.get(0, h, i, d);
        ok = ok && x == 0.f && !std::signbit(x);
      }
      if (!ok && wrong++ == 0) {
        std::ostringstream o;
        o << "h=" << h << " i=" << i << ": out = (" << fast.out.get(0, h, i, 0) << ", " << fast.out.get(0, h, i, 1)
          << ", ...), lse = " << fast.lse(h * s.Nq + i);
        first = o.str();
      }
    }
  INFO("empty rows that are not (+0.0, lse -inf): " << wrong << "; first " << first);
  CHECK(wrong == 0);
  // the same with padding rows (query_lens) next to rows that see the bad keys
  const std::int32_t ql = static_cast<std::int32_t>(s.Nq / 2);
  attnkit::softmax v;
  v.query_lens = &ql;
  const auto f2 = run_fast(v, in.q, in.k, in.v);
  wrong = 0;
  for (index_t h = 0; h < s.Hq; ++h)
    for (index_t i = ql; i < s.Nq; ++i) {
      bool ok = f2.lse(h * s.Nq + i) == -inf;
      for (index_t d = 0; d < s.Dv; ++d) ok = ok && f2.out.get(0, h, i, d) == 0.f && !std::signbit(f2.out.get(0, h, i, d));
      wrong += !ok;
    }
  INFO("padding rows (i >= query_lens) that are not (+0.0, lse -inf): " << wrong);
  CHECK(wrong == 0);
}

TEST_CASE("logits of magnitude 1e3 and more stay finite and match the reference", "[softmax][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const float scale = GENERATE(1.f, 10.f);
  const bool causal = GENERATE(false, true);
  problem s;
  s.B = 1, s.Hq = 2, s.Hkv = 1, s.Nq = 70, s.Nk = 110, s.D = 16, s.Dv = 16;
  // small integers: dot products are exact in float, logits reach +-1e3 (scale 1) or 1e4
  auto q = random_tensor<float>(s.q_ext(), layout::bhsd, gen);
  auto k = random_tensor<float>(s.k_ext(), layout::bhsd, gen);
  auto v = random_tensor<float>(s.v_ext(), layout::bhsd, gen);
  std::uniform_int_distribution<int> small(-8, 8);
  q.for_each([&](index_t b, index_t h, index_t i, index_t d) { q.set(b, h, i, d, float(small(gen))); });
  k.for_each([&](index_t b, index_t h, index_t i, index_t d) { k.set(b, h, i, d, float(small(gen))); });
  attnkit::softmax p;
  p.scale = scale;
  p.causal = causal;
  const auto fast = run_fast(p, q, k, v);
  const auto ref = run_ref(p, q, k, v);
  CHECK(all_finite(fast.out));
  CHECK(no_nan(fast));
  float max_lse = 0;
  for (index_t r = 0; r < s.rows(); ++r) max_lse = std::max(max_lse, std::abs(fast.lse(r)));
  CAPTURE(max_lse);
  CHECK(max_lse > 100.f);
  // float logits of 1e3..1e4 carry absolute rounding ~1e-4..1e-3 (the kernel works in base 2),
  // so the tolerance scales with them: that is the conditioning of the problem, not slack.
  check_matches(fast, ref, tolerance{1e-4 * scale, 0, 2e-4 * scale, 1e-6});
}

TEST_CASE("Nk = 0: every row is zeros with lse -inf", "[softmax][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = 37, s.Nk = 0, s.D = 16, s.Dv = 8;
  const bool causal = GENERATE(false, true);
  attnkit::softmax p;
  p.causal = causal;
  auto [fast, ref] = check_vs_reference<float>(p, s, gen);
  check_empty_rows(fast, [](index_t, index_t, index_t) { return true; });
  check_empty_rows(ref, [](index_t, index_t, index_t) { return true; });
  // null k / v data with zero keys is valid
  std::vector<float> q(static_cast<std::size_t>(s.B * s.Hq * s.Nq * s.D), 1.f), out(static_cast<std::size_t>(s.B * s.Hq * s.Nq * s.Dv), 5.f);
  std::vector<float> lse(static_cast<std::size_t>(s.rows()), 5.f);
  attnkit::options o;
  o.lse = lse.data();
  attnkit::attention(p, attnkit::view_bhsd(q.data(), s.B, s.Hq, s.Nq, s.D),
                     attnkit::view_bhsd<const float>(nullptr, s.B, s.Hkv, 0, s.D),
                     attnkit::view_bhsd<const float>(nullptr, s.B, s.Hkv, 0, s.Dv),
                     attnkit::view_bhsd(out.data(), s.B, s.Hq, s.Nq, s.Dv), o);
  CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == 0.f; }));
  CHECK(std::all_of(lse.begin(), lse.end(), [](float x) { return x == -inf; }));
}

TEST_CASE("Nq = 0 or B = 0: nothing is written", "[softmax][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto shape = GENERATE(std::make_pair(1, 0), std::make_pair(0, 10), std::make_pair(0, 0));
  const layout lo = GENERATE(layout::bhsd, layout::strided);
  problem s;
  s.B = shape.first, s.Hq = 4, s.Hkv = 2, s.Nq = shape.second, s.Nk = 20, s.D = 16, s.Dv = 8;
  CAPTURE(describe(s), name(lo));
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax p;
  p.causal = true;
  for (int which = 0; which < 2; ++which) {
    auto out = output_tensor<float>(s.o_ext(), lo);
    const auto before = out;
    std::vector<float> lse(8, -777.f);
    attnkit::options o;
    o.lse = lse.data();
    if (which == 0)
      attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view, o);
    else
      attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view, o);
    CHECK(same_bits(before, out));
    CHECK(std::all_of(lse.begin(), lse.end(), [](float x) { return x == -777.f; }));
  }
  // null everything with zero sizes is valid
  attnkit::attention(p, attnkit::view_bhsd<const float>(nullptr, s.B, s.Hq, s.Nq, s.D),
                     attnkit::view_bhsd<const float>(nullptr, s.B, s.Hkv, 0, s.D),
                     attnkit::view_bhsd<const float>(nullptr, s.B, s.Hkv, 0, s.Dv),
                     attnkit::view_bhsd<float>(nullptr, s.B, s.Hq, s.Nq, s.Dv));
}

TEST_CASE("decode shapes match the reference (split keys)", "[softmax][decode]") {
  ATTNKIT_SEEDED_RNG(gen);
  SECTION("Nq = 1, Nk = 4096, Hq = 32, Hkv = 8, D = 128") {
    problem s;
    s.B = 1, s.Hq = 32, s.Hkv = 8, s.Nq = 1, s.Nk = 4096, s.D = 128, s.Dv = 128;
    attnkit::softmax p;
    check_vs_reference<float>(p, s, gen);
    p.causal = true;  // a no-op for Nq = 1
    check_vs_reference<bf16, bf16>(p, s, gen);
  }
  SECTION("long single-head cache, odd length, with ALiBi and soft-cap") {
    problem s;
    s.B = 1, s.Hq = 1, s.Hkv = 1, s.Nq = 1, s.Nk = 9001, s.D = 64, s.Dv = 64;
    const auto slopes = attnkit::alibi_slopes(1);
    attnkit::softmax p;
    p.alibi_slopes = slopes.data();
    p.softcap = 20.f;
    check_vs_reference<float>(p, s, gen);
  }
  SECTION("batched cache with key_lens and a sliding window") {
    problem s;
    s.B = 3, s.Hq = 8, s.Hkv = 2, s.Nq = 1, s.Nk = 3000, s.D = 64, s.Dv = 64;
    const std::int32_t kl[3] = {3000, 1, 2049};
    attnkit::softmax p;
    p.key_lens = kl;
    check_vs_reference<float>(p, s, gen);
    p.window_left = 1500;
    check_vs_reference<float>(p, s, gen);
  }
  SECTION("a few queries (speculative decode), causal, GQA") {
    problem s;
    s.B = 1, s.Hq = 8, s.Hkv = 1, s.Nq = 4, s.Nk = 5000, s.D = 80, s.Dv = 80;
    attnkit::softmax p;
    p.causal = true;
    check_vs_reference<float>(p, s, gen);
  }
}

// ---------------------------------------------------------------------------------------------
// Threads and concurrency.
// ---------------------------------------------------------------------------------------------

TEST_CASE("threads = 1, 2, 3, 0 give bitwise identical out and lse", "[softmax][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto shape = GENERATE(std::make_tuple(2, 4, 2, 300, 300, 64, true),     // prefill, causal
                              std::make_tuple(1, 32, 8, 1, 4096, 128, false),   // decode, split keys
                              std::make_tuple(1, 1, 1, 1, 20000, 32, false),    // one long row
                              std::make_tuple(3, 6, 3, 97, 130, 80, false),
                              std::make_tuple(1, 8, 8, 7, 2500, 16, true));
  problem s;
  s.B = std::get<0>(shape), s.Hq = std::get<1>(shape), s.Hkv = std::get<2>(shape), s.Nq = std::get<3>(shape),
  s.Nk = std::get<4>(shape), s.D = std::get<5>(shape), s.Dv = std::get<5>(shape);
  CAPTURE(describe(s));
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax p;
  p.causal = std::get<6>(shape);
  const auto base = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
  for (int threads : {2, 3, 0, 1}) {
    CAPTURE(threads);
    const auto r = run_fast(p, in.q, in.k, in.v, layout::bhsd, threads);
    CHECK(same_bits(base.out, r.out));
    CHECK(same_bits(base.lse_mem, r.lse_mem));
  }
  auto hb = random_qkv<bf16>(s, gen);
  const auto hbase = run_fast<bf16>(p, hb.q, hb.k, hb.v, layout::bhsd, 1);
  const auto h2 = run_fast<bf16>(p, hb.q, hb.k, hb.v, layout::bhsd, 2);
  CHECK(same_bits(hbase.out, h2.out));
  CHECK(same_bits(hbase.lse_mem, h2.lse_mem));
}

TEST_CASE("concurrent calls from two user threads are both correct", "[softmax][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s1, s2;
  s1.B = 2, s1.Hq = 4, s1.Hkv = 2, s1.Nq = 120, s1.Nk = 150, s1.D = 64, s1.Dv = 64;
  s2.B = 1, s2.Hq = 8, s2.Hkv = 2, s2.Nq = 1, s2.Nk = 3000, s2.D = 32, s2.Dv = 48;
  auto in1 = random_qkv<float>(s1, gen);
  auto in2 = random_qkv<float>(s2, gen);
  attnkit::softmax p1, p2;
  p1.causal = true;
  p2.window_left = 2000;
  const auto ref1 = run_ref(p1, in1.q, in1.k, in1.v);
  const auto ref2 = run_ref(p2, in2.q, in2.k, in2.v);
  const auto solo1 = run_fast(p1, in1.q, in1.k, in1.v);
  const auto solo2 = run_fast(p2, in2.q, in2.k, in2.v);
  constexpr int rounds = 6;
  std::vector<result<float>> r1(rounds), r2(rounds);
  std::thread t1([&] {
    for (int i = 0; i < rounds; ++i) r1[i] = run_fast(p1, in1.q, in1.k, in1.v, layout::bhsd, i % 3);
  });
  std::thread t2([&] {
    for (int i = 0; i < rounds; ++i) r2[i] = run_fast(p2, in2.q, in2.k, in2.v, layout::bhsd, (i + 1) % 3);
  });
  t1.join();
  t2.join();
  for (int i = 0; i < rounds; ++i) {
    CAPTURE(i);
    check_matches(r1[i], ref1, float_tol);
    check_matches(r2[i], ref2, float_tol);
    CHECK(same_bits(r1[i].out, solo1.out));
    CHECK(same_bits(r2[i].out, solo2.out));
  }
}

// ---------------------------------------------------------------------------------------------
// Properties from the spec.
// ---------------------------------------------------------------------------------------------

TEST_CASE("permuting keys with their values leaves non-causal output unchanged", "[softmax][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = 40, s.Nk = 150, s.D = 32, s.Dv = 24;
  auto in = random_qkv<float>(s, gen);
  std::vector<index_t> perm(static_cast<std::size_t>(s.Nk));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), gen);
  auto k2 = in.k, v2 = in.v;
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hkv; ++h)
      for (index_t j = 0; j < s.Nk; ++j) {
        const index_t src = perm[static_cast<std::size_t>(j)];
        for (index_t d = 0; d < s.D; ++d) k2.view(b, h, j, d) = in.k.view(b, h, src, d);
        for (index_t d = 0; d < s.Dv; ++d) v2.view(b, h, j, d) = in.v.view(b, h, src, d);
      }
  attnkit::softmax p;
  p.softcap = GENERATE(0.f, 4.f);
  const auto a = run_fast(p, in.q, in.k, in.v);
  const auto b = run_fast(p, in.q, k2, v2);
  const auto [ok, msg] = compare_out(b.out, a.out, 1e-5, 1e-5);
  INFO(msg);
  CHECK(ok);
  const auto [okl, msgl] = compare_lse(b.lse_mem, a.lse_mem, s.rows(), 1e-5, 1e-6);
  INFO(msgl);
  CHECK(okl);
}

TEST_CASE("GQA equals explicit repetition of k/v heads", "[softmax][property][gqa]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto heads = GENERATE(std::make_pair(8, 2), std::make_pair(8, 1), std::make_pair(6, 3));
  const bool causal = GENERATE(false, true);
  problem s;
  s.B = 2, s.Hq = heads.first, s.Hkv = heads.second, s.Nq = 45, s.Nk = 77, s.D = 32, s.Dv = 16;
  auto in = random_qkv<float>(s, gen);
  problem r = s;
  r.Hkv = s.Hq;
  auto k2 = output_tensor<float>(r.k_ext(), layout::bhsd), v2 = output_tensor<float>(r.v_ext(), layout::bhsd);
  const index_t g = s.Hq / s.Hkv;
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t j = 0; j < s.Nk; ++j) {
        for (index_t d = 0; d < s.D; ++d) k2.view(b, h, j, d) = in.k.view(b, h / g, j, d);
        for (index_t d = 0; d < s.Dv; ++d) v2.view(b, h, j, d) = in.v.view(b, h / g, j, d);
      }
  attnkit::softmax p;
  p.causal = causal;
  const auto a = run_fast(p, in.q, in.k, in.v);
  const auto b = run_fast(p, in.q, k2, v2);
  const auto [ok, msg] = compare_out(a.out, b.out, 1e-6, 1e-6);
  INFO(msg);
  CHECK(ok);
  CHECK(compare_lse(a.lse_mem, b.lse_mem, s.rows(), 1e-6, 1e-7).first);
  // the reference agrees as well
  check_matches(a, run_ref(p, in.q, k2, v2), float_tol);
}

TEST_CASE("causal with Nq = 1 equals non-causal", "[softmax][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t nk = GENERATE(1, 63, 64, 65, 1000, 3000);
  problem s;
  s.B = 2, s.Hq = 8, s.Hkv = 2, s.Nq = 1, s.Nk = nk, s.D = 64, s.Dv = 64;
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax c, n;
  c.causal = true;
  const auto a = run_fast(c, in.q, in.k, in.v);
  const auto b = run_fast(n, in.q, in.k, in.v);
  const auto [ok, msg] = compare_out(a.out, b.out, 1e-6, 1e-6);
  INFO(msg);
  CHECK(ok);
  CHECK(compare_lse(a.lse_mem, b.lse_mem, s.rows(), 1e-6, 1e-7).first);
}

TEST_CASE("changing a future key never changes an earlier row (causal, bitwise)", "[softmax][property][causal]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(200, 200), std::make_pair(100, 200), std::make_pair(150, 70));
  problem s;
  s.B = 1, s.Hq = 4, s.Hkv = 2, s.Nq = n.first, s.Nk = n.second, s.D = 32, s.Dv = 32;
  const index_t off = s.Nk - s.Nq;
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax p;
  p.causal = true;
  const auto a = run_fast(p, in.q, in.k, in.v);
  std::uniform_int_distribution<index_t> pick(std::max<index_t>(0, off + 1), s.Nk - 1);
  for (int trial = 0; trial < 3; ++trial) {
    const index_t j0 = pick(gen);
    CAPTURE(j0);
    auto k2 = in.k, v2 = in.v;
    for (index_t h = 0; h < s.Hkv; ++h) {
      for (index_t d = 0; d < s.D; ++d) k2.set(0, h, j0, d, 3.f * k2.get(0, h, j0, d) + 1.f);
      for (index_t d = 0; d < s.Dv; ++d) v2.set(0, h, j0, d, -v2.get(0, h, j0, d) + 0.5f);
    }
    const auto b = run_fast(p, in.q, k2, v2);
    index_t changed_early = 0, changed_late = 0;
    std::string first;
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        const bool sees = j0 <= i + off;
        bool same = a.lse((h)*s.Nq + i) == b.lse((h)*s.Nq + i);
        // bitwise, except that +0 and -0 count as the same zero (the sign of an empty row's
        // zeros is checked by "rows with nothing visible are +0.0 ...")
        for (index_t d = 0; d < s.Dv; ++d)
          same = same && (std::memcmp(&a.out.view(0, h, i, d), &b.out.view(0, h, i, d), 4) == 0 ||
                          (a.out.view(0, h, i, d) == 0.f && b.out.view(0, h, i, d) == 0.f));
        if (!sees && !same && changed_early++ == 0) first = "h=" + std::to_string(h) + " i=" + std::to_string(i);
        if (sees && !same) ++changed_late;
      }
    INFO(describe(s) << "; first earlier row that changed: " << first);
    CHECK(changed_early == 0);
    CHECK(changed_late > 0);
  }
}

TEST_CASE("NaN in keys no query may see does not reach the output", "[softmax][property][nan]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 1, s.Hq = 2, s.Hkv = 1, s.Nq = 600, s.Nk = 600, s.D = 16, s.Dv = 16;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SECTION("sliding window: NaN key and value at position 0; rows >= 300 never see it") {
    auto in = random_qkv<float>(s, gen);
    for (index_t d = 0; d < s.D; ++d) in.k.set(0, 0, 0, d, nan);
    for (index_t d = 0; d < s.Dv; ++d) in.v.set(0, 0, 0, d, nan);
    attnkit::softmax p;
    p.window_left = 8;
    p.window_right = 8;
    const auto fast = run_fast(p, in.q, in.k, in.v);
    const auto ref = run_ref(p, in.q, in.k, in.v);
    index_t bad = 0;
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 300; i < s.Nq; ++i) {
        bool ok = close(fast.lse(h * s.Nq + i), ref.lse(h * s.Nq + i), 1e-4, 1e-6);
        for (index_t d = 0; d < s.Dv; ++d)
          ok = ok && std::isfinite(fast.out.get(0, h, i, d)) &&
               close(fast.out.get(0, h, i, d), ref.out.get(0, h, i, d), 2e-5, 1e-5);
        bad += !ok;
      }
    CHECK(bad == 0);
    // the rows that do see key 0 propagate the NaN, in both implementations
    CHECK(std::isnan(ref.out.get(0, 0, 0, 0)));
    CHECK(std::isnan(fast.out.get(0, 0, 0, 0)));
  }
  SECTION("causal: NaN in the last key; rows < 300 never see it") {
    auto in = random_qkv<float>(s, gen);
    for (index_t d = 0; d < s.D; ++d) in.k.set(0, 0, s.Nk - 1, d, nan);
    for (index_t d = 0; d < s.Dv; ++d) in.v.set(0, 0, s.Nk - 1, d, nan);
    attnkit::softmax p;
    p.causal = true;
    const auto fast = run_fast(p, in.q, in.k, in.v);
    const auto ref = run_ref(p, in.q, in.k, in.v);
    index_t bad = 0;
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < 300; ++i)
        for (index_t d = 0; d < s.Dv; ++d)
          bad += !(std::isfinite(fast.out.get(0, h, i, d)) &&
                   close(fast.out.get(0, h, i, d), ref.out.get(0, h, i, d), 2e-5, 1e-5));
    CHECK(bad == 0);
  }
  SECTION("NaN beyond key_lens (an uninitialised KV cache) is never read") {
    problem d;
    d.B = 2, d.Hq = 8, d.Hkv = 2, d.Nq = 3, d.Nk = 2000, d.D = 64, d.Dv = 64;
    auto in = random_qkv<float>(d, gen);
    const std::int32_t kl[2] = {1000, 1501};
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < d.Hkv; ++h)
        for (index_t j = kl[b]; j < d.Nk; ++j) {
          for (index_t c = 0; c < d.D; ++c) in.k.set(b, h, j, c, nan);
          for (index_t c = 0; c < d.Dv; ++c) in.v.set(b, h, j, c, nan);
        }
    attnkit::softmax p;
    p.key_lens = kl;
    p.causal = GENERATE(false, true);
    check_matches(run_fast(p, in.q, in.k, in.v), run_ref(p, in.q, in.k, in.v), float_tol);
  }
}

TEST_CASE("NaN in a query or a visible key propagates (it is not masked)", "[softmax][property][nan]") {
  // spec: "NaN in q/k/v propagates (it is not masked)". Values are kept in [-0.5, 0.5] and rows
  // short so that an exp that turned NaN into a huge finite weight could not produce NaN by
  // overflow by accident: the check is deterministic.
  ATTNKIT_SEEDED_RNG(gen);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float cap = GENERATE(0.f, 5.f);
  problem s;
  s.B = 2, s.Hq = 2, s.Hkv = 1, s.Nq = 20, s.Nk = 3, s.D = 16, s.Dv = 16;
  auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 0.5f);
  in.v.for_each([&](index_t b, index_t h, index_t j, index_t d) { in.v.set(b, h, j, d, 0.5f * in.v.get(b, h, j, d)); });
  attnkit::softmax p;
  p.softcap = cap;
  CAPTURE(cap);
  SECTION("NaN in one query element: that row is NaN, batch entry 1 is untouched") {
    in.q.set(0, 1, 5, 3, nan);
    const auto fast = run_fast(p, in.q, in.k, in.v);
    const auto ref = run_ref(p, in.q, in.k, in.v);
    CHECK(std::isnan(ref.out.get(0, 1, 5, 0)));
    index_t not_nan = 0;
    for (index_t d = 0; d < s.Dv; ++d) not_nan += !std::isnan(fast.out.get(0, 1, 5, d));
    INFO("row (b=0, h=1, i=5) elements that are not NaN: " << not_nan << ", e.g. " << fast.out.get(0, 1, 5, 0));
    CHECK(not_nan == 0);
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i)
        for (index_t d = 0; d < s.Dv; ++d) REQUIRE(close(fast.out.get(1, h, i, d), ref.out.get(1, h, i, d), 2e-5, 1e-5));
  }
  SECTION("NaN in key 0 that every row sees: every row of that batch entry is NaN") {
    in.k.set(0, 0, 0, 7, nan);
    const auto fast = run_fast(p, in.q, in.k, in.v);
    const auto ref = run_ref(p, in.q, in.k, in.v);
    index_t not_nan = 0, ref_not_nan = 0;
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        not_nan += !std::isnan(fast.out.get(0, h, i, 0));
        ref_not_nan += !std::isnan(ref.out.get(0, h, i, 0));
      }
    CHECK(ref_not_nan == 0);
    INFO("rows of batch entry 0 whose output is not NaN: " << not_nan << ", e.g. " << fast.out.get(0, 0, 0, 0));
    CHECK(not_nan == 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Validation: attnkit::error before anything is written.
// ---------------------------------------------------------------------------------------------

namespace {

/// Calls fast and reference attention with the given views/policy/options and checks that both
/// throw attnkit::error whose message contains `what`, leaving out and lse untouched.
template <class Q, class K, class V>
void expect_rejected(const attnkit::softmax& p, attnkit::tensor_view<Q> q, attnkit::tensor_view<K> k,
                     attnkit::tensor_view<V> v, tensor<float>& out, attnkit::options o, const std::string& what) {
  INFO("expected an error mentioning '" << what << "'");
  std::vector<float> lse(256, -777.f);
  if (o.lse == nullptr && o.lse_size != 0) o.lse = lse.data();
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);  // 0: attention, 1: reference::attention
    const auto before = out;
    const std::vector<float> lse_before = lse;
    auto call = [&] {
      if (which == 0)
        attnkit::attention(p, q, k, v, out.view, o);
      else
        attnkit::reference::attention(p, q, k, v, out.view, o);
    };
    CHECK_THROWS_AS(call(), attnkit::error);
    CHECK_THROWS_WITH(call(), Catch::Contains(what));
    CHECK_THROWS_AS(call(), std::invalid_argument);
    CHECK(same_bits(before, out));
    CHECK(same_bits(lse_before, lse));
  }
}

}  // namespace

TEST_CASE("bad input throws attnkit::error naming the argument, out untouched", "[softmax][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = 10, s.Nk = 12, s.D = 8, s.Dv = 6;
  auto in = random_qkv<float>(s, gen);
  auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
  const auto Q = in.q.cview(), K = in.k.cview(), V = in.v.cview();
  attnkit::softmax ok;
  attnkit::options o;
  o.lse_size = -1;

  SECTION("batch mismatch") {
    auto k2 = random_tensor<float>({3, 2, 12, 8}, layout::bhsd, gen);
    expect_rejected(ok, Q, k2.cview(), V, out, o, "k.batch()");
    auto v2 = random_tensor<float>({1, 2, 12, 6}, layout::bhsd, gen);
    expect_rejected(ok, Q, K, v2.cview(), out, o, "v.batch()");
  }
  SECTION("k.dim != q.dim") {
    auto k2 = random_tensor<float>({2, 2, 12, 9}, layout::bhsd, gen);
    expect_rejected(ok, Q, k2.cview(), V, out, o, "k.dim()");
  }
  SECTION("v.seq != k.seq, v.heads != k.heads") {
    auto v2 = random_tensor<float>({2, 2, 11, 6}, layout::bhsd, gen);
    expect_rejected(ok, Q, K, v2.cview(), out, o, "v.seq()");
    auto v3 = random_tensor<float>({2, 1, 12, 6}, layout::bhsd, gen);
    expect_rejected(ok, Q, K, v3.cview(), out, o, "v.heads()");
  }
  SECTION("out shape wrong on every axis") {
    auto o1 = output_tensor<float>({2, 4, 10, 8}, layout::bhsd);
    expect_rejected(ok, Q, K, V, o1, o, "out.dim()");
    auto o2 = output_tensor<float>({2, 4, 11, 6}, layout::bhsd);
    expect_rejected(ok, Q, K, V, o2, o, "out.seq()");
    auto o3 = output_tensor<float>({2, 2, 10, 6}, layout::bhsd);
    expect_rejected(ok, Q, K, V, o3, o, "out.heads()");
    auto o4 = output_tensor<float>({1, 4, 10, 6}, layout::bhsd);
    expect_rejected(ok, Q, K, V, o4, o, "out.batch()");
  }
  SECTION("Hq % Hkv != 0") {
    auto q3 = random_tensor<float>({2, 3, 10, 8}, layout::bhsd, gen);
    auto o3 = output_tensor<float>({2, 3, 10, 6}, layout::bhsd);
    expect_rejected(ok, q3.cview(), K, V, o3, o, "q.heads()");
  }
  SECTION("null data with a non-zero size") {
    const attnkit::tensor_view<const float> nq(nullptr, Q.extents(), Q.strides());
    expect_rejected(ok, nq, K, V, out, o, "q has null data");
    const attnkit::tensor_view<const float> nk(nullptr, K.extents(), K.strides());
    expect_rejected(ok, Q, nk, V, out, o, "k has null data");
    const attnkit::tensor_view<const float> nv(nullptr, V.extents(), V.strides());
    expect_rejected(ok, Q, K, nv, out, o, "v has null data");
  }
  SECTION("negative extent") {
    const attnkit::tensor_view<const float> bad(Q.data(), {2, 4, -1, 8}, Q.strides());
    expect_rejected(ok, bad, K, V, out, o, "q extent(2)");
  }
  SECTION("window below -1") {
    attnkit::softmax p;
    p.window_left = -2;
    expect_rejected(p, Q, K, V, out, o, "window_left");
    attnkit::softmax r;
    r.window_right = -7;
    expect_rejected(r, Q, K, V, out, o, "window_right");
  }
  SECTION("softcap negative, NaN or infinite") {
    for (float c : {-1.f, std::numeric_limits<float>::quiet_NaN(), inf}) {
      CAPTURE(c);
      attnkit::softmax p;
      p.softcap = c;
      expect_rejected(p, Q, K, V, out, o, "softcap");
    }
  }
  SECTION("scale NaN or infinite") {
    for (float c : {std::numeric_limits<float>::quiet_NaN(), inf, -inf}) {
      CAPTURE(c);
      attnkit::softmax p;
      p.scale = c;
      expect_rejected(p, Q, K, V, out, o, "scale");
    }
  }
  SECTION("key_lens outside [0, Nk]") {
    for (std::int32_t bad : {-1, 13}) {
      CAPTURE(bad);
      const std::int32_t kl[2] = {5, bad};
      attnkit::softmax p;
      p.key_lens = kl;
      expect_rejected(p, Q, K, V, out, o, "key_lens[1]");
    }
  }
  SECTION("query_lens negative or above Nq") {
    for (std::int32_t bad : {-3, 11}) {
      CAPTURE(bad);
      const std::int32_t ql[2] = {bad, 4};
      attnkit::softmax p;
      p.query_lens = ql;
      expect_rejected(p, Q, K, V, out, o, "query_lens[0]");
    }
  }
  SECTION("options::lse_size wrong, lse null with a size") {
    attnkit::options bad;
    bad.lse_size = s.rows() - 1;
    expect_rejected(ok, Q, K, V, out, bad, "lse_size");
    bad.lse_size = s.rows() + 1;
    expect_rejected(ok, Q, K, V, out, bad, "lse_size");
    attnkit::options null_lse;
    null_lse.lse_size = s.rows();
    null_lse.lse = nullptr;
    // expect_rejected fills a null lse with its own buffer only when lse_size != 0; call directly
    auto before = out;
    CHECK_THROWS_WITH(attnkit::attention(ok, Q, K, V, out.view, null_lse), Catch::Contains("lse"));
    CHECK(same_bits(before, out));
  }
  SECTION("options::threads negative") {
    attnkit::options bad;
    bad.threads = -1;
    expect_rejected(ok, Q, K, V, out, bad, "threads");
  }
  SECTION("non-finite ALiBi slope") {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), inf}) {
      CAPTURE(bad);
      std::vector<float> slopes = attnkit::alibi_slopes(s.Hq);
      slopes[3] = bad;
      attnkit::softmax p;
      p.alibi_slopes = slopes.data();
      expect_rejected(p, Q, K, V, out, o, "alibi_slopes[3]");
    }
  }
  SECTION("valid input does not throw") {
    CHECK_NOTHROW(attnkit::attention(ok, Q, K, V, out.view, o));
  }
}
