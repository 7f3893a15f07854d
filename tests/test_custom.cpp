// Custom attention (user keep / score / block callables): its float64 reference against the
// softmax reference for patterns softmax can express (causal, ALiBi, soft-cap, windows), the
// (b, h) arguments of the callables, empty rows, dense_mask, validation, and ("fast: " cases)
// attnkit::attention against the references on fresh random inputs, with and without a block
// predicate. Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "sparse_helpers.hpp"
#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::block_kind;
using attnkit::index_t;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

/// keep(b, h, i, j) = j <= i + off (bottom-right causal for off = Nk - Nq).
struct causal_keep {
  index_t off;
  bool operator()(index_t, index_t, index_t i, index_t j) const { return j <= i + off; }
};
struct keep_all {
  bool operator()(index_t, index_t, index_t, index_t) const { return true; }
};
/// The exact block classification of causal_keep for a tile of queries [qf, ql] x keys [kf, kl].
struct causal_blocks {
  index_t off;
  block_kind operator()(index_t, index_t, index_t qf, index_t ql, index_t kf, index_t kl) const {
    if (kf > ql + off) return block_kind::skip;
    if (kl <= qf + off) return block_kind::full;
    return block_kind::partial;
  }
};
struct all_full {
  block_kind operator()(index_t, index_t, index_t, index_t, index_t, index_t) const { return block_kind::full; }
};
/// ALiBi: s - slope[h] * |i + off - j| (the softmax policy's bias); generic in the score type,
/// so the reference evaluates it in double and the fast path in float.
struct alibi_score {
  const float* slopes;
  index_t off;
  template <class S>
  S operator()(S s, index_t, index_t h, index_t i, index_t j) const {
    const index_t pos = i + off;
    return s - static_cast<S>(slopes[h]) * static_cast<S>(pos > j ? pos - j : j - pos);
  }
};
struct softcap_score {
  float cap;
  template <class S>
  S operator()(S s, index_t, index_t, index_t, index_t) const {
    return static_cast<S>(cap) * std::tanh(s / static_cast<S>(cap));
  }
};

/// A contiguous [1, 1, N, D] copy of batch entry b, head h of t.
template <class T>
tensor<T> slice(const tensor<T>& t, index_t b, index_t h) {
  tensor<T> s({1, 1, t.ext[2], t.ext[3]}, layout::bhsd, nan_of<T>());
  s.for_each([&](index_t, index_t, index_t i, index_t d) { s.view(0, 0, i, d) = t.view(b, h, i, d); });
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The reference.
// ---------------------------------------------------------------------------------------------

TEST_CASE("reference: custom causal keep == softmax{causal} (bottom-right, GQA)", "[custom][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(50, 50), std::make_pair(7, 40), std::make_pair(40, 7), std::make_pair(1, 33));
  const problem s = make_problem(2, 4, 2, n.first, n.second, 16, 12);
  INFO(describe(s));
  const auto in = random_qkv<float>(s, gen);
  const auto p = attnkit::make_custom(causal_keep{s.Nk - s.Nq});
  attnkit::softmax sm;
  sm.causal = true;
  check_same_math(run_ref(p, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v));
  // a block predicate is a hint for the fast path only: the reference is bitwise the same
  const auto pb = attnkit::make_custom(causal_keep{s.Nk - s.Nq}, attnkit::identity_score{}, causal_blocks{s.Nk - s.Nq});
  const auto a = run_ref(p, in.q, in.k, in.v), b = run_ref(pb, in.q, in.k, in.v);
  CHECK(same_bits(a.out, b.out));
  CHECK(same_bits(a.lse_mem, b.lse_mem));
}

TEST_CASE("reference: custom ALiBi and soft-cap scores == softmax with alibi_slopes / softcap", "[custom][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(45, 45), std::make_pair(9, 60), std::make_pair(60, 9));
  const bool causal = GENERATE(false, true);
  const problem s = make_problem(2, 4, 1, n.first, n.second, 16, 16);
  INFO(describe(s) << " causal=" << causal);
  const auto in = random_qkv<float>(s, gen);
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const index_t off = s.Nk - s.Nq;
  attnkit::softmax sm;
  sm.causal = causal;
  sm.alibi_slopes = slopes.data();
  const auto want = run_ref(sm, in.q, in.k, in.v);
  if (causal)
    check_same_math(run_ref(attnkit::make_custom(causal_keep{off}, alibi_score{slopes.data(), off}), in.q, in.k, in.v),
                    want);
  else
    check_same_math(run_ref(attnkit::make_custom(keep_all{}, alibi_score{slopes.data(), off}), in.q, in.k, in.v), want);
  attnkit::softmax cap;
  cap.softcap = 2.5f;
  cap.scale = 0.8f;
  check_same_math(run_ref(attnkit::make_custom(keep_all{}, softcap_score{2.5f}, 0.8f), in.q, in.k, in.v),
                  run_ref(cap, in.q, in.k, in.v));
}

TEST_CASE("reference: scale 0 is 1/sqrt(D); an explicit scale is used as is", "[custom][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 2, 20, 30, 25, 8);
  const auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 2.f);
  check_same_math(run_ref(attnkit::make_custom(keep_all{}), in.q, in.k, in.v), run_ref(attnkit::softmax{}, in.q, in.k, in.v));
  attnkit::softmax sm;
  sm.scale = 1.7f;
  const auto p = attnkit::make_custom(keep_all{}, 1.7f);
  check_same_math(run_ref(p, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v));
  // and the two scales really differ (the check above is not vacuous)
  const auto a = run_ref(p, in.q, in.k, in.v), b = run_ref(attnkit::make_custom(keep_all{}), in.q, in.k, in.v);
  CHECK_FALSE(compare_out(a.out, b.out, 1e-3, 1e-3).first);
}

TEST_CASE("reference: keep and score receive the batch entry and the query head", "[custom][reference][gqa]") {
  // head h of batch entry b keeps a window of half-width w = h + 2b + 1 and has ALiBi slope
  // 0.1 (h + 1): each (b, h) slice must equal softmax{window w, alibi} on that slice alone.
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 4, 2, 30, 30, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  auto half_width = [](index_t b, index_t h) { return h + 2 * b + 1; };
  const auto p = attnkit::make_custom(
      [&](index_t b, index_t h, index_t i, index_t j) { return std::abs(i - j) <= half_width(b, h); },
      [](auto x, index_t, index_t h, index_t i, index_t j) {
        using S = decltype(x);
        return x - static_cast<S>(0.1 * double(h + 1) * double(std::abs(i - j)));
      });
  const auto whole = run_ref(p, in.q, in.k, in.v);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 4; ++h) {
      CAPTURE(b, h);
      const float slope = 0.1f * float(h + 1);
      attnkit::softmax sm;
      sm.window_left = sm.window_right = half_width(b, h);
      sm.alibi_slopes = &slope;
      const auto part = run_ref(sm, slice(in.q, b, h), slice(in.k, b, h / 2), slice(in.v, b, h / 2));
      for (index_t i = 0; i < 30; ++i) {
        CHECK(std::abs(part.lse(i) - whole.lse((b * 4 + h) * 30 + i)) <= 1e-5);
        for (index_t d = 0; d < 8; ++d) CHECK(std::abs(part.out.get(0, 0, i, d) - whole.out.get(b, h, i, d)) <= 1e-6);
      }
    }
}

TEST_CASE("reference: rows with no kept key, or only -inf scores, are zeros with lse -inf", "[custom][reference][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 2, 1, 20, 15, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  // odd rows keep nothing
  const auto p = attnkit::make_custom([](index_t, index_t, index_t i, index_t) { return i % 2 == 0; });
  const auto r = run_ref(p, in.q, in.k, in.v);
  check_empty_rows(r, [](index_t, index_t, index_t i) { return i % 2 == 1; });
  // rows whose every score is -inf (a score transform used as a mask)
  const auto q = attnkit::make_custom(keep_all{}, [](auto x, index_t, index_t, index_t i, index_t) {
    return i < 5 ? -std::numeric_limits<decltype(x)>::infinity() : x;
  });
  const auto r2 = run_ref(q, in.q, in.k, in.v);
  check_empty_rows(r2, [](index_t, index_t, index_t i) { return i < 5; });
  CHECK(all_finite(r2.out));
}

TEST_CASE("dense_mask of a custom policy is keep(0, 0, i, j)", "[custom][pattern]") {
  const auto p = attnkit::make_custom([](index_t b, index_t h, index_t i, index_t j) { return (i * 7 + j * 3 + b + h) % 5 < 2; });
  const auto m = attnkit::dense_mask(p, 13, 17);
  REQUIRE(m.size() == 13u * 17u);
  for (index_t i = 0; i < 13; ++i)
    for (index_t j = 0; j < 17; ++j) CHECK(bool(m[static_cast<std::size_t>(i * 17 + j)]) == ((i * 7 + j * 3) % 5 < 2));
}

TEST_CASE("reference: bad input throws attnkit::error, out untouched", "[custom][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 10, 10, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
  const auto before = out;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), inf}) {
    const auto p = attnkit::make_custom(keep_all{}, bad);
    CHECK_THROWS_AS(attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view),
                    attnkit::error);
    CHECK_THROWS_WITH(attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view),
                      Catch::Contains("scale"));
  }
  auto wrong = output_tensor<float>({1, 2, 9, 8}, layout::bhsd);
  const auto wrong_before = wrong;
  CHECK_THROWS_AS(attnkit::reference::attention(attnkit::make_custom(keep_all{}), in.q.cview(), in.k.cview(),
                                                in.v.cview(), wrong.view),
                  attnkit::error);
  CHECK(same_bits(before, out));
  CHECK(same_bits(wrong_before, wrong));
}

// ---------------------------------------------------------------------------------------------
// Fast path vs reference (attnkit::attention).
// ---------------------------------------------------------------------------------------------

TEST_CASE("fast: custom causal == softmax{causal}, with and without a block predicate", "[custom][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(301, 301), std::make_pair(1, 300), std::make_pair(7, 300),
                          std::make_pair(130, 65), std::make_pair(64, 64));
  const bool with_block = GENERATE(false, true);
  const problem s = make_problem(2, 4, 2, n.first, n.second, 32, 32);
  INFO(describe(s) << " block predicate=" << with_block);
  const auto in = random_qkv<float>(s, gen);
  const index_t off = s.Nk - s.Nq;
  attnkit::softmax sm;
  sm.causal = true;
  const auto want = run_ref(sm, in.q, in.k, in.v);
  auto check = [&](const auto& p) {
    const auto fast = run_fast(p, in.q, in.k, in.v);
    check_matches(fast, run_ref(p, in.q, in.k, in.v), float_tol);
    check_matches(fast, want, float_tol);
    if (off < 0) check_empty_rows(fast, [&](index_t, index_t, index_t i) { return i + off < 0; });
  };
  if (with_block)
    check(attnkit::make_custom(causal_keep{off}, attnkit::identity_score{}, causal_blocks{off}));
  else
    check(attnkit::make_custom(causal_keep{off}));
}

TEST_CASE("fast: custom ALiBi score == softmax with alibi_slopes, with and without a block predicate",
          "[custom][fast][alibi]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(200, 200), std::make_pair(3, 257), std::make_pair(100, 70));
  const bool causal = GENERATE(false, true);
  const bool with_block = GENERATE(false, true);
  const problem s = make_problem(1, 8, 2, n.first, n.second, 64, 64);
  INFO(describe(s) << " causal=" << causal << " block predicate=" << with_block);
  const auto in = random_qkv<float>(s, gen);
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const index_t off = s.Nk - s.Nq;
  attnkit::softmax sm;
  sm.causal = causal;
  sm.alibi_slopes = slopes.data();
  const auto want = run_ref(sm, in.q, in.k, in.v);
  auto check = [&](const auto& p) {
    const auto fast = run_fast(p, in.q, in.k, in.v);
    check_matches(fast, run_ref(p, in.q, in.k, in.v), float_tol);
    check_matches(fast, want, float_tol);
  };
  const alibi_score score{slopes.data(), off};
  if (causal && with_block)
    check(attnkit::make_custom(causal_keep{off}, score, causal_blocks{off}));
  else if (causal)
    check(attnkit::make_custom(causal_keep{off}, score));
  else if (with_block)
    check(attnkit::make_custom(keep_all{}, score, all_full{}));  // keep is never needed
  else
    check(attnkit::make_custom(keep_all{}, score));
}

TEST_CASE("fast: per-(batch, head) keep and score, GQA, soft-cap match reference", "[custom][fast][gqa]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 6, 2, 150, 170, 48, 32);
  const auto in = random_qkv<float>(s, gen);
  const auto p = attnkit::make_custom(
      [](index_t b, index_t h, index_t i, index_t j) { return (j + b) % (h + 2) != 0 && j <= 3 * i + 5; },
      [](auto x, index_t b, index_t h, index_t, index_t j) {
        using S = decltype(x);
        return static_cast<S>(3) * std::tanh(x / static_cast<S>(3)) + static_cast<S>(0.01 * double((j + h + b) % 7));
      },
      0.3f);
  check_matches(run_fast(p, in.q, in.k, in.v), run_ref(p, in.q, in.k, in.v), float_tol);
  const auto cap = attnkit::make_custom(keep_all{}, softcap_score{4.f});
  attnkit::softmax sm;
  sm.softcap = 4.f;
  check_matches(run_fast(cap, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v), float_tol);
}

TEST_CASE("fast: rows with no kept key are zeros with lse -inf", "[custom][fast][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 2, 1, 150, 90, 16, 16);
  const auto in = random_qkv<float>(s, gen);
  const auto p = attnkit::make_custom([](index_t b, index_t, index_t i, index_t j) { return i % 3 != b && j < i; });
  const auto fast = run_fast(p, in.q, in.k, in.v);
  check_matches(fast, run_ref(p, in.q, in.k, in.v), float_tol);
  check_empty_rows(fast, [](index_t b, index_t, index_t i) { return i % 3 == b || i == 0; });
}

TEST_CASE("fast: bf16 and strided layouts match reference", "[custom][fast][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 4, 2, 200, 200, 64, 64);
  const auto p = attnkit::make_custom(causal_keep{0}, attnkit::identity_score{}, causal_blocks{0});
  const auto hb = random_qkv<bf16>(s, gen);
  check_matches(run_fast<float>(p, hb.q, hb.k, hb.v), run_ref(p, hb.q, hb.k, hb.v), half_tol);
  check_matches(run_fast<bf16>(p, hb.q, hb.k, hb.v, layout::bshd), run_ref(p, hb.q, hb.k, hb.v), half_tol);
  const auto st = random_qkv<float>(s, gen, layout::strided, layout::bshd, layout::strided);
  check_matches(run_fast(p, st.q, st.k, st.v, layout::strided), run_ref(p, st.q, st.k, st.v), float_tol);
}

TEST_CASE("fast: threads = 1 and 2 give bitwise identical out and lse", "[custom][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 4, 2, 257, 257, 32, 32);
  const auto in = random_qkv<float>(s, gen);
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const auto p = attnkit::make_custom(causal_keep{0}, alibi_score{slopes.data(), 0}, causal_blocks{0});
  const auto one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
  const auto two = run_fast(p, in.q, in.k, in.v, layout::bhsd, 2);
  CHECK(same_bits(one.out, two.out));
  CHECK(same_bits(one.lse_mem, two.lse_mem));
  check_matches(one, run_ref(p, in.q, in.k, in.v), float_tol);
}

TEST_CASE("fast: bad input throws attnkit::error, out untouched", "[custom][fast][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 10, 10, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
  const auto before = out;
  const auto p = attnkit::make_custom(keep_all{}, std::numeric_limits<float>::quiet_NaN());
  CHECK_THROWS_AS(attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view), attnkit::error);
  CHECK_THROWS_WITH(attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view), Catch::Contains("scale"));
  auto wrong = output_tensor<float>({1, 2, 9, 8}, layout::bhsd);
  const auto wrong_before = wrong;
  CHECK_THROWS_AS(attnkit::attention(attnkit::make_custom(keep_all{}), in.q.cview(), in.k.cview(), in.v.cview(),
                                     wrong.view),
                  attnkit::error);
  CHECK(same_bits(before, out));
  CHECK(same_bits(wrong_before, wrong));
}
