// PowerAttention: the spec's worked examples and properties on the float64 reference
// (reference/power.hpp) and on dense_mask (the variant's rule), the reference's rule against
// dense_mask and against the spec's block-plan description, validation, and ("fast: " cases)
// attnkit::attention against the reference on fresh random inputs.
// Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "sparse_helpers.hpp"
#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::index_t;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

std::string describe(const attnkit::power& p) {
  std::ostringstream o;
  o << "power{block_size=" << p.block_size << " window_blocks=" << p.window_blocks << " sink_blocks=" << p.sink_blocks
    << " max_power=" << p.max_power << " causal=" << p.causal << " scale=" << p.scale << "}";
  return o.str();
}

attnkit::power make_power(index_t b, index_t W, index_t S, index_t max_power = -1, bool causal = true) {
  attnkit::power p;
  p.block_size = b, p.window_blocks = W, p.sink_blocks = S, p.max_power = max_power, p.causal = causal;
  return p;
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

bool ref_keeps(const attnkit::power& p, index_t i, index_t j, index_t nq, index_t nk) {
  return attnkit::reference::detail::power_visible(p, i, j, nq, nk);
}

std::vector<index_t> ref_row(const attnkit::power& p, index_t i, index_t nq, index_t nk) {
  std::vector<index_t> keys;
  for (index_t j = 0; j < nk; ++j)
    if (ref_keeps(p, i, j, nq, nk)) keys.push_back(j);
  return keys;
}

/// Fresh random q, k, v (type In, layout l); attention (out type Out) vs the reference.
template <class In, class Out = float, class P>
std::pair<result<Out>, result<float>> fast_vs_reference(const P& p, const problem& s, std::mt19937& gen,
                                                         layout l = layout::bhsd) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>()
                   << " layout=" << name(l));
  const qkv<In> in = random_qkv<In>(s, gen, l, l, l);
  result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, l);
  result<float> ref = run_ref(p, in.q, in.k, in.v);
  check_matches(fast, ref, tol_for<In, Out>());
  return {std::move(fast), std::move(ref)};
}

/// The causal mask, bottom-right aligned (or all ones when !causal).
std::vector<std::uint8_t> causal_mask(index_t nq, index_t nk, bool causal) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(nq * nk));
  for (index_t i = 0; i < nq; ++i)
    for (index_t j = 0; j < nk; ++j) m[static_cast<std::size_t>(i * nk + j)] = !causal || j <= i + nk - nq;
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The pattern.
// ---------------------------------------------------------------------------------------------

TEST_CASE("worked example: block 1, W = 1, S = 0, causal: query 10 sees {10, 9, 8, 6, 2}", "[power][pattern]") {
  const attnkit::power p = make_power(1, 1, 0);
  const std::vector<index_t> want = {2, 6, 8, 9, 10};
  CHECK(ref_row(p, 10, 11, 11) == want);
  CHECK(mask_row(attnkit::dense_mask(p, 11, 11), 11, 10) == want);
  // the same row as a decode step (Nq = 1, bottom-right aligned), and with W = 0 (0 is a power)
  CHECK(ref_row(p, 0, 1, 11) == want);
  CHECK(mask_row(attnkit::dense_mask(p, 1, 11), 11, 0) == want);
  const attnkit::power w0 = make_power(1, 0, 0);
  CHECK(ref_row(w0, 10, 11, 11) == want);
  CHECK(mask_row(attnkit::dense_mask(w0, 11, 11), 11, 10) == want);
  // max_power caps the distances: 2 -> {0, 1, 2, 4}; 0 -> {0, 1}
  CHECK(ref_row(make_power(1, 1, 0, 2), 20, 21, 21) == std::vector<index_t>{16, 18, 19, 20});
  CHECK(mask_row(attnkit::dense_mask(make_power(1, 1, 0, 2), 21, 21), 21, 20) == std::vector<index_t>{16, 18, 19, 20});
  CHECK(ref_row(make_power(1, 1, 0, 0), 20, 21, 21) == std::vector<index_t>{19, 20});
  CHECK(mask_row(attnkit::dense_mask(make_power(1, 1, 0, 0), 21, 21), 21, 20) == std::vector<index_t>{19, 20});
  // a sink block of 1 token adds key 0
  CHECK(ref_row(make_power(1, 1, 1), 10, 11, 11) == std::vector<index_t>{0, 2, 6, 8, 9, 10});
}

TEST_CASE("property 3: block 1, W = 1, S = 0: query p sees {p} and p - 2^e, 2 + floor(log2 p) keys", "[power][pattern]") {
  const attnkit::power p = make_power(1, 1, 0);
  const index_t N = 130;
  const auto mask = attnkit::dense_mask(p, N, N);
  for (index_t pos = 0; pos < N; ++pos) {
    CAPTURE(pos);
    std::vector<index_t> want{pos};
    for (index_t e = 1; e <= pos; e *= 2) want.push_back(pos - e);
    std::sort(want.begin(), want.end());
    CHECK(ref_row(p, pos, N, N) == want);
    CHECK(mask_row(mask, N, pos) == want);
    if (pos >= 1) CHECK(static_cast<index_t>(want.size()) == 2 + static_cast<index_t>(std::floor(std::log2(pos))));
  }
}

TEST_CASE("paper settings (b = 256, W = 5, S = 1) at 32K: 5 window + 1 sink + 4 power blocks", "[power][pattern]") {
  const attnkit::power p = make_power(256, 5, 1);
  const index_t nk = 32768;
  const auto mask = attnkit::dense_mask(p, 1, nk);  // the last query, block 127
  std::set<index_t> blocks, ref_blocks;
  index_t partial = 0;
  for (index_t bk = 0; bk < 128; ++bk) {
    index_t kept = 0, ref_kept = 0;
    for (index_t j = bk * 256; j < bk * 256 + 256; ++j) {
      kept += mask[static_cast<std::size_t>(j)];
      ref_kept += ref_keeps(p, 0, j, 1, nk);
    }
    if (kept) blocks.insert(bk);
    if (ref_kept) ref_blocks.insert(bk);
    partial += (kept != 0 && kept != 256) + (ref_kept != 0 && ref_kept != 256);
  }
  const std::set<index_t> want = {0, 63, 95, 111, 119, 123, 124, 125, 126, 127};
  CHECK(blocks == want);
  CHECK(ref_blocks == want);
  CHECK(partial == 0);  // the last query is the last token: its diagonal block is whole
  // the budget W + S + floor(log2(n_blocks)) + 1 holds for every query block
  for (index_t bq = 0; bq < 128; ++bq) {
    index_t n = 0;
    for (index_t bk = 0; bk <= bq; ++bk) n += ref_keeps(p, bq * 256 + 255, bk * 256, nk, nk);
    CAPTURE(bq, n);
    CHECK(n <= 5 + 1 + 7 + 1);
  }
}

TEST_CASE("reference rule == dense_mask on random configurations, Nq != Nk both ways", "[power][pattern]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<index_t> bs(1, 9), w(0, 4), sk(0, 3), mp(-1, 4), n(0, 70);
  std::uniform_int_distribution<int> coin(0, 1);
  for (int trial = 0; trial < 400; ++trial) {
    const attnkit::power p = make_power(bs(gen), w(gen), sk(gen), mp(gen), coin(gen) == 1);
    const index_t nq = n(gen), nk = n(gen);
    INFO(describe(p) << " nq=" << nq << " nk=" << nk);
    const auto mask = attnkit::dense_mask(p, nq, nk);
    REQUIRE(mask.size() == static_cast<std::size_t>(nq * nk));
    for (index_t i = 0; i < nq; ++i)
      for (index_t j = 0; j < nk; ++j) {
        CAPTURE(i, j);
        REQUIRE(bool(mask[static_cast<std::size_t>(i * nk + j)]) == ref_keeps(p, i, j, nq, nk));
      }
  }
}

TEST_CASE("the mask is the spec's block plan: sink, window and power blocks, full except the causal diagonal",
          "[power][pattern]") {
  // Spec "Fast algorithm": query block bq keeps key blocks {0..S-1} u {bq-W+1..bq} u {bq - 2^e}
  // (|.| distances when non-causal); every kept block is full except the causal diagonal,
  // which is lower-triangular (property 6).
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<index_t> bs(1, 8), w(0, 4), sk(0, 2), mp(-1, 3), n(1, 90);
  for (int trial = 0; trial < 200; ++trial) {
    const bool causal = trial % 2 == 0;
    const attnkit::power p = make_power(bs(gen), w(gen), sk(gen), mp(gen), causal);
    const index_t N = n(gen), b = p.block_size;
    INFO(describe(p) << " N=" << N);
    const auto mask = attnkit::dense_mask(p, N, N);
    auto block_kept = [&](index_t bq, index_t bk) {
      if (bk < p.sink_blocks) return true;
      const index_t delta = bq > bk ? bq - bk : bk - bq;
      if (causal && bk > bq) return false;
      if (delta < p.window_blocks) return true;
      if (delta == 0) return true;
      for (index_t e = 0; (index_t(1) << e) <= delta; ++e)
        if ((index_t(1) << e) == delta) return p.max_power < 0 || e <= p.max_power;
      return false;
    };
    for (index_t i = 0; i < N; ++i)
      for (index_t j = 0; j < N; ++j) {
        const bool want = block_kept(i / b, j / b) && (!causal || j <= i);
        CAPTURE(i, j);
        REQUIRE(bool(mask[static_cast<std::size_t>(i * N + j)]) == want);
      }
  }
}

TEST_CASE("property 4: composing the token mask ceil(log2 N) times reaches every earlier token", "[power][pattern]") {
  for (index_t N : {64, 100}) {
    CAPTURE(N);
    const attnkit::power p = make_power(1, 1, 0);
    const auto m = attnkit::dense_mask(p, N, N);
    index_t steps = 0;
    while ((index_t(1) << steps) < N) ++steps;  // ceil(log2 N)
    auto compose = [&](const std::vector<std::uint8_t>& r) {
      std::vector<std::uint8_t> out(static_cast<std::size_t>(N * N), 0);
      for (index_t i = 0; i < N; ++i)
        for (index_t k = 0; k < N; ++k)
          if (r[static_cast<std::size_t>(i * N + k)])
            for (index_t j = 0; j < N; ++j) out[static_cast<std::size_t>(i * N + j)] |= m[static_cast<std::size_t>(k * N + j)];
      return out;
    };
    std::vector<std::uint8_t> reach = m;  // one layer
    std::vector<std::uint8_t> before_last;
    for (index_t s = 1; s < steps; ++s) {
      before_last = reach;
      reach = compose(reach);
    }
    index_t missing = 0, future = 0;
    for (index_t i = 0; i < N; ++i)
      for (index_t j = 0; j < N; ++j) {
        const bool r = reach[static_cast<std::size_t>(i * N + j)];
        missing += j <= i && !r;
        future += j > i && r;
      }
    CHECK(missing == 0);
    CHECK(future == 0);
    // and the bound is tight at N = 64: distance 63 (six set bits) needs all six layers
    if (N == 64) CHECK(before_last[static_cast<std::size_t>(63 * N + 0)] == 0);
  }
}

TEST_CASE("property 5: causal never uses j > p; decode rows equal prefill rows", "[power][pattern][decode]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::power p = make_power(8, 2, 1);
  const index_t N = 150;
  const auto prefill = attnkit::dense_mask(p, N, N);
  for (index_t i = 0; i < N; ++i)
    for (index_t j = i + 1; j < N; ++j) REQUIRE(prefill[static_cast<std::size_t>(i * N + j)] == 0);
  const problem s = make_problem(2, 4, 2, N, N, 16, 16);
  const auto in = random_qkv<float>(s, gen);
  const auto full = run_ref(p, in.q, in.k, in.v);
  for (index_t nq : {1, 7}) {
    CAPTURE(nq);
    const auto rows = attnkit::dense_mask(p, nq, N);
    for (index_t i = 0; i < nq; ++i) CHECK(mask_row(rows, N, i) == mask_row(prefill, N, N - nq + i));
    // q = the last nq queries of the prefill
    problem d = s;
    d.Nq = nq;
    tensor<float> q = random_tensor<float>(d.q_ext(), layout::bhsd, gen);
    q.for_each([&](index_t b, index_t h, index_t i, index_t x) { q.view(b, h, i, x) = in.q.view(b, h, N - nq + i, x); });
    const auto dec = run_ref(p, q, in.k, in.v);
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < nq; ++i) {
          CHECK(dec.lse((b * 4 + h) * nq + i) == full.lse((b * 4 + h) * N + N - nq + i));
          for (index_t x = 0; x < 16; ++x) CHECK(dec.out.get(b, h, i, x) == full.out.get(b, h, N - nq + i, x));
        }
  }
}

TEST_CASE("non-causal without sink is symmetric; a sink is key-side (whole columns)", "[power][pattern]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<index_t> bs(1, 6), w(0, 3), n(1, 80);
  for (int trial = 0; trial < 50; ++trial) {
    attnkit::power p = make_power(bs(gen), w(gen), 0, -1, false);
    const index_t N = n(gen);
    INFO(describe(p) << " N=" << N);
    auto m = attnkit::dense_mask(p, N, N);
    for (index_t i = 0; i < N; ++i)
      for (index_t j = 0; j < N; ++j)
        REQUIRE(m[static_cast<std::size_t>(i * N + j)] == m[static_cast<std::size_t>(j * N + i)]);
    p.sink_blocks = 2;
    m = attnkit::dense_mask(p, N, N);
    for (index_t i = 0; i < N; ++i)
      for (index_t j = 0; j < std::min(N, 2 * p.block_size); ++j) REQUIRE(m[static_cast<std::size_t>(i * N + j)] == 1);
  }
}

// ---------------------------------------------------------------------------------------------
// The reference's numbers.
// ---------------------------------------------------------------------------------------------

TEST_CASE("properties 1 and 2: at most 3 blocks, or W >= n_blocks, equals causal / dense softmax", "[power][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(true, false);
  const auto n = GENERATE(std::make_pair(24, 24), std::make_pair(23, 23), std::make_pair(1, 24), std::make_pair(5, 17));
  for (index_t W : {0, 1, 2}) {
    const attnkit::power p = make_power(8, W, 0, -1, causal);  // N <= 3 blocks of 8
    INFO(describe(p) << " Nq=" << n.first << " Nk=" << n.second);
    CHECK(attnkit::dense_mask(p, n.first, n.second) == causal_mask(n.first, n.second, causal));
    const problem s = make_problem(2, 2, 1, n.first, n.second, 16, 8);
    const auto in = random_qkv<float>(s, gen);
    attnkit::softmax sm;
    sm.causal = causal;
    check_same_math(run_ref(p, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v));
  }
  // property 1: a window of at least n_blocks blocks
  const attnkit::power wide = make_power(4, 20, 0, 0, causal);  // 80 tokens = 20 blocks
  CHECK(attnkit::dense_mask(wide, 80, 80) == causal_mask(80, 80, causal));
  const problem s = make_problem(1, 2, 2, 80, 80, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  attnkit::softmax sm;
  sm.causal = causal;
  check_same_math(run_ref(wide, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v));
}

TEST_CASE("reference output == masked softmax over dense_mask (GQA, Nq != Nk)", "[power][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<index_t> bs(1, 9), w(0, 4), sk(0, 2), mp(-1, 3), n(1, 60);
  std::uniform_int_distribution<int> coin(0, 1);
  for (int trial = 0; trial < 12; ++trial) {
    attnkit::power p = make_power(bs(gen), w(gen), sk(gen), mp(gen), coin(gen) == 1);
    p.scale = trial % 3 == 0 ? 0.7f : 0.f;
    const problem s = make_problem(2, 4, 2, n(gen), n(gen), 12, 10);
    INFO(describe(p) << " " << describe(s));
    const auto in = random_qkv<float>(s, gen);
    check_same_math(run_ref(p, in.q, in.k, in.v), masked_reference(attnkit::dense_mask(p, s.Nq, s.Nk), p.scale, in));
  }
}

TEST_CASE("reference: Nq > Nk causal: the first Nq - Nk rows see nothing (zeros, lse -inf)", "[power][reference][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 2, 1, 30, 12, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  const attnkit::power p = make_power(4, 1, 1);
  const auto r = run_ref(p, in.q, in.k, in.v);
  check_empty_rows(r, [&](index_t, index_t, index_t i) { return i < s.Nq - s.Nk; });
  CHECK(all_finite(r.out));
}

TEST_CASE("reference: hand-computed block-1 case", "[power][reference]") {
  // b = 1, W = 1, S = 0, causal, D = 1, scale 1, q = 1: row 3 sees keys {1, 2, 3} (distances 2, 1, 0);
  // k = (5, ln 3, 0, 0), v = (100, 1, 5, 2): logits ln 3, 0, 0 -> weights 3/5, 1/5, 1/5.
  const float ln3 = static_cast<float>(std::log(3.0));
  std::vector<float> q(4, 1.f), k{5.f, ln3, 0.f, 0.f}, v{100.f, 1.f, 5.f, 2.f}, out(4, -1.f), lse(4, -1.f);
  attnkit::power p = make_power(1, 1, 0);
  p.scale = 1;
  attnkit::options o;
  o.lse = lse.data();
  attnkit::reference::attention(p, attnkit::view_bhsd<const float>(q.data(), 1, 1, 4, 1),
                                attnkit::view_bhsd<const float>(k.data(), 1, 1, 4, 1),
                                attnkit::view_bhsd<const float>(v.data(), 1, 1, 4, 1),
                                attnkit::view_bhsd(out.data(), 1, 1, 4, 1), o);
  auto near = [](double got, double want) { return std::abs(got - want) <= 1e-6 * (1 + std::abs(want)); };
  CHECK(near(out[3], (3 * 1.0 + 5 + 2) / 5));
  CHECK(near(lse[3], std::log(5.0)));
  CHECK(near(out[0], 100.0));  // row 0 sees key 0 only
  CHECK(near(lse[0], 5.0));
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

namespace {

template <bool Fast>
void expect_rejected(const attnkit::power& p, const std::string& what, std::mt19937& gen) {
  INFO(describe(p) << " expecting an error mentioning '" << what << "'" << (Fast ? " (attention)" : " (reference)"));
  const problem s = make_problem(2, 2, 1, 10, 12, 8, 8);
  check_rejected<Fast>(p, s, what, gen);
}

template <bool Fast>
void expect_all_rejections(std::mt19937& gen) {
  expect_rejected<Fast>(make_power(0, 5, 1), "block_size", gen);
  expect_rejected<Fast>(make_power(-4, 5, 1), "block_size", gen);
  expect_rejected<Fast>(make_power(16, -1, 1), "window_blocks", gen);
  expect_rejected<Fast>(make_power(16, 5, -1), "sink_blocks", gen);
  expect_rejected<Fast>(make_power(16, 5, 1, -2), "max_power", gen);
  attnkit::power p;
  p.scale = inf;
  expect_rejected<Fast>(p, "scale", gen);
}

}  // namespace

TEST_CASE("reference: bad power fields throw attnkit::error, out untouched", "[power][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  expect_all_rejections<false>(gen);
  CHECK_THROWS_AS(attnkit::dense_mask(make_power(0, 1, 1), 4, 4), attnkit::error);
  CHECK_THROWS_AS(attnkit::dense_mask(make_power(2, 1, 1, -3), 4, 4), attnkit::error);
  // the edges of the valid range are accepted
  CHECK_NOTHROW(attnkit::dense_mask(make_power(1, 0, 0, -1), 4, 4));
  const problem s = make_problem(1, 1, 1, 5, 5, 4, 4);
  const auto in = random_qkv<float>(s, gen);
  CHECK_NOTHROW(run_ref(make_power(1, 0, 0, 0), in.q, in.k, in.v));
}

// ---------------------------------------------------------------------------------------------
// Fast path vs reference (attnkit::attention).
// ---------------------------------------------------------------------------------------------

TEST_CASE("fast: causal and non-causal, block sizes 16 and 32, N = 300, match reference", "[power][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t b = GENERATE(16, 32);
  const bool causal = GENERATE(true, false);
  const auto cfg = GENERATE(std::make_tuple(5, 1, -1), std::make_tuple(1, 0, -1), std::make_tuple(2, 2, 2),
                            std::make_tuple(0, 1, -1));
  const attnkit::power p = make_power(b, std::get<0>(cfg), std::get<1>(cfg), std::get<2>(cfg), causal);
  fast_vs_reference<float>(p, make_problem(2, 4, 2, 300, 300, 32, 32), gen);
}

TEST_CASE("fast: odd block sizes, token-level blocks and one block larger than N match reference", "[power][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t b = GENERATE(1, 7, 100, 512);
  const bool causal = GENERATE(true, false);
  const attnkit::power p = make_power(b, 1, 1, -1, causal);
  fast_vs_reference<float>(p, make_problem(1, 2, 1, 301, 301, 48, 24), gen);
}

TEST_CASE("fast: decode (Nq = 1 and Nq = 7, Nk = 300) matches reference and the prefill rows", "[power][fast][decode]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t nq = GENERATE(1, 7);
  const bool causal = GENERATE(true, false);
  const index_t block = GENERATE(16, 32);
  const attnkit::power p = make_power(block, 2, 1, -1, causal);
  const problem full = make_problem(1, 8, 2, 300, 300, 64, 64);
  const auto in = random_qkv<float>(full, gen);
  problem d = full;
  d.Nq = nq;
  tensor<float> q = random_tensor<float>(d.q_ext(), layout::bhsd, gen);
  q.for_each([&](index_t b, index_t h, index_t i, index_t x) { q.view(b, h, i, x) = in.q.view(b, h, 300 - nq + i, x); });
  INFO(describe(p) << " Nq=" << nq);
  const auto fast = run_fast(p, q, in.k, in.v);
  const auto ref = run_ref(p, q, in.k, in.v);
  check_matches(fast, ref, float_tol);
  const auto prefill = run_ref(p, in.q, in.k, in.v);
  for (index_t h = 0; h < 8; ++h)
    for (index_t i = 0; i < nq; ++i)
      for (index_t x = 0; x < 64; ++x)
        CHECK(fast.out.get(0, h, i, x) == Approx(prefill.out.get(0, h, 300 - nq + i, x)).margin(2e-5));
}

TEST_CASE("fast: Nq > Nk causal: rows with no key are zeros with lse -inf", "[power][fast][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(40, 25), std::make_pair(300, 100), std::make_pair(5, 1));
  const problem s = make_problem(2, 4, 2, n.first, n.second, 32, 16);
  const attnkit::power p = make_power(16, 2, 1);
  auto [fast, ref] = fast_vs_reference<float>(p, s, gen);
  check_empty_rows(fast, [&](index_t, index_t, index_t i) { return i < s.Nq - s.Nk; });
  check_empty_rows(ref, [&](index_t, index_t, index_t i) { return i < s.Nq - s.Nk; });
  // non-causal with Nq > Nk: no empty rows
  fast_vs_reference<float>(make_power(16, 2, 1, -1, false), s, gen);
}

TEST_CASE("fast: GQA, bf16 and strided layouts match reference", "[power][fast][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::power p = make_power(32, 3, 1);
  fast_vs_reference<float>(p, make_problem(2, 6, 2, 290, 290, 40, 24), gen, layout::strided);
  fast_vs_reference<float>(p, make_problem(1, 4, 1, 77, 290, 64, 64), gen, layout::bshd);
  for_each_bf16_way([&] {
    fast_vs_reference<bf16, float>(p, make_problem(2, 4, 2, 300, 300, 64, 64), gen);
    fast_vs_reference<bf16, bf16>(make_power(16, 1, 0, -1, false), make_problem(1, 4, 2, 300, 300, 64, 64), gen);
  });
}

TEST_CASE("fast: threads = 1 and 2 give bitwise identical out and lse", "[power][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::power p = make_power(16, 3, 1);
  const problem s = make_problem(2, 4, 2, 300, 300, 32, 32);
  const auto in = random_qkv<float>(s, gen);
  const auto one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
  const auto two = run_fast(p, in.q, in.k, in.v, layout::bhsd, 2);
  CHECK(same_bits(one.out, two.out));
  CHECK(same_bits(one.lse_mem, two.lse_mem));
  check_matches(one, run_ref(p, in.q, in.k, in.v), float_tol);
}

TEST_CASE("fast: bad power fields throw attnkit::error, out untouched", "[power][fast][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  expect_all_rejections<true>(gen);
}
