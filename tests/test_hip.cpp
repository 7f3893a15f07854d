// HiP attention: the spec's properties on the fast selection (hip_select, dense_mask) and on
// the float64 reference (reference/hip.hpp), the fast selection against the reference's on
// inputs whose dot products are exact in float (so ties are real ties and the tie rule is
// tested), attnkit::attention against the reference, selections reused, validation.
// Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
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
using attnkit::index_t;

namespace {

std::string describe(const attnkit::hip& p) {
  std::ostringstream o;
  o << "hip{top_k=" << p.top_k << " block_q=" << p.block_q << " stride_q=" << p.stride_q << " block_k=" << p.block_k
    << " stride_k=" << p.stride_k << " sink=" << p.sink << " window=" << p.window << " causal=" << p.causal
    << " scale=" << p.scale << "}";
  return o.str();
}

attnkit::hip make_hip(index_t top_k, index_t bq, index_t bk, index_t sink = 0, index_t window = 0, bool causal = true,
                      index_t sq = 1, index_t sk = 1) {
  attnkit::hip p;
  p.top_k = top_k, p.block_q = bq, p.block_k = bk, p.sink = sink, p.window = window, p.causal = causal;
  p.stride_q = sq, p.stride_k = sk;
  return p;
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

/// q and k with entries in {-8, ..., 8} / 8: with D <= 64 every dot product is exact in float,
/// so the fast path and the float64 reference rank blocks identically, ties included.
qkv<float> dyadic_qkv(const problem& s, std::mt19937& gen, layout l = layout::bhsd) {
  qkv<float> in = random_qkv<float>(s, gen, l, l, l);
  std::uniform_int_distribution<int> eighths(-8, 8);
  in.q.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.q.view(b, h, i, d) = eighths(gen) / 8.f; });
  in.k.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.k.view(b, h, i, d) = eighths(gen) / 8.f; });
  return in;
}

template <class In, class Out = float>
std::pair<result<Out>, result<float>> fast_vs_reference(const attnkit::hip& p, const qkv<In>& in, layout l = layout::bhsd,
                                                         int threads = 0) {
  INFO(describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>() << " layout=" << name(l));
  result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, l, threads);
  result<float> ref = run_ref(p, in.q, in.k, in.v);
  check_matches(fast, ref, tol_for<In, Out>());
  return {std::move(fast), std::move(ref)};
}

/// The spec's search region of query block qb.
struct region {
  index_t s0, s1, n, K;
};
region region_of(const attnkit::hip& p, index_t nq, index_t nk, index_t qb) {
  const index_t last = std::min(nq, (qb + 1) * p.block_q) - 1 + nk - nq;
  const index_t T = p.causal ? std::max<index_t>(0, std::min(nk, last + 1)) : nk;
  const index_t s0 = std::min(p.sink, T), s1 = p.causal ? std::max(s0, T - p.window) : T;
  return {s0, s1, (s1 - s0 + p.block_k - 1) / p.block_k, (p.top_k + p.block_k - 1) / p.block_k};
}

/// The selection's kept ranges of (b, h, qb), as the first token of each.
std::vector<index_t> kept_starts(const attnkit::hip_selection& sel, index_t b, index_t h, index_t qb) {
  std::vector<index_t> starts;
  for (const auto& r : sel.kept(b, h, qb)) starts.push_back(r.first);
  return starts;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The selection.
// ---------------------------------------------------------------------------------------------

TEST_CASE("property 2: each query block keeps exactly min(n, K) distinct blocks inside [s0, s1)", "[hip][selection]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto cfg = GENERATE(std::make_tuple(16, 8, 2, 0, 0), std::make_tuple(24, 7, 3, 5, 9), std::make_tuple(8, 32, 1, 1, 30),
                            std::make_tuple(40, 5, 4, 0, 3), std::make_tuple(1000, 16, 2, 0, 0));
  const bool causal = GENERATE(true, false);
  const attnkit::hip p = make_hip(std::get<0>(cfg), std::get<1>(cfg), std::get<2>(cfg), std::get<3>(cfg),
                                  std::get<4>(cfg), causal, 2, std::min<index_t>(2, std::get<2>(cfg)));
  const problem s = make_problem(2, 4, 2, 157, 203, 24, 8);
  INFO(describe(p));
  const auto in = random_qkv<float>(s, gen);
  const auto sel = attnkit::hip_select(p, in.q.cview(), in.k.cview());
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t qb = 0; qb < sel.query_blocks; ++qb) {
        const region r = region_of(p, s.Nq, s.Nk, qb);
        const auto kept = sel.kept(b, h, qb);
        CHECK(static_cast<index_t>(kept.size()) == std::min(r.n, r.K));
        for (std::size_t e = 0; e < kept.size(); ++e) {
          const index_t m = (kept[e].first - r.s0) / p.block_k;
          CHECK(kept[e].first == r.s0 + m * p.block_k);
          CHECK(kept[e].second == std::min(r.s1, kept[e].first + p.block_k));
          CHECK(kept[e].first >= r.s0);
          if (e > 0) CHECK(kept[e].first > kept[e - 1].first);
        }
      }
}

TEST_CASE("fast selection == reference selection (exact scores: ties broken the same way)", "[hip][selection]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto cfg = GENERATE(std::make_tuple(16, 8, 2, 1, 1, 0, 0), std::make_tuple(20, 13, 3, 2, 2, 4, 11),
                            std::make_tuple(6, 32, 1, 4, 1, 0, 7), std::make_tuple(64, 32, 2, 1, 1, 0, 0),
                            std::make_tuple(12, 1, 2, 1, 1, 3, 0), std::make_tuple(9, 64, 5, 3, 2, 2, 20));
  const bool causal = GENERATE(true, false);
  const attnkit::hip p = make_hip(std::get<0>(cfg), std::get<1>(cfg), std::get<2>(cfg), std::get<5>(cfg),
                                  std::get<6>(cfg), causal, std::get<3>(cfg), std::get<4>(cfg));
  const index_t D = GENERATE(16, 64);
  const problem s = make_problem(1, 4, 2, 131, 260, D, 8);
  INFO(describe(p) << " D=" << D);
  const auto in = dyadic_qkv(s, gen);
  const auto sel = attnkit::hip_select(p, in.q.cview(), in.k.cview());
  for (index_t h = 0; h < s.Hq; ++h) {
    const auto want = attnkit::reference::hip_selected_blocks(p, in.q.cview(), in.k.cview(), 0, h);
    REQUIRE(static_cast<index_t>(want.size()) == sel.query_blocks);
    for (index_t qb = 0; qb < sel.query_blocks; ++qb) {
      INFO("h=" << h << " query block " << qb);
      CHECK(kept_starts(sel, 0, h, qb) == want[static_cast<std::size_t>(qb)]);
    }
    CHECK(attnkit::dense_mask(sel, 0, h) == attnkit::reference::hip_mask(p, in.q.cview(), in.k.cview(), 0, h));
  }
}

TEST_CASE("property 3: a planted needle is selected (every block scored: n <= 2K) and a peak is found",
          "[hip][selection]") {
  // Only branch centres are scored, so a lone needle among random scores can be pruned; it is
  // certain when the first round already splits into single blocks, or when scores fall with
  // the distance from it (attention locality, what the search relies on).
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(true, false);
  const problem s = make_problem(1, 1, 1, 16, 32, 32, 8);
  auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 0.1f);
  in.q.for_each([&](index_t b, index_t h, index_t i, index_t) { in.q.view(b, h, i, 0) = 1.f; });
  for (index_t j : {10, 11}) in.k.view(0, 0, j, 0) = 50.f;
  const auto sel = attnkit::hip_select(make_hip(16, 16, 2, 0, 0, causal), in.q.cview(), in.k.cview());
  const auto starts = kept_starts(sel, 0, 0, 0);
  CHECK(std::find(starts.begin(), starts.end(), 10) != starts.end());

  const problem wide = make_problem(1, 1, 1, 64, 2048, 32, 8);
  auto peak = random_qkv<float>(wide, gen, layout::bhsd, layout::bhsd, layout::bhsd, 0.01f);
  peak.q.for_each([&](index_t b, index_t h, index_t i, index_t) { peak.q.view(b, h, i, 0) = 1.f; });
  peak.k.for_each([&](index_t b, index_t h, index_t j, index_t) {
    peak.k.view(b, h, j, 0) = -std::fabs(static_cast<float>(j) - 1001.f) / 64.f;
  });
  const auto found = attnkit::hip_select(make_hip(8, 32, 2, 0, 0, causal), peak.q.cview(), peak.k.cview());
  for (index_t qb = 0; qb < found.query_blocks; ++qb) {
    const auto kept = kept_starts(found, 0, 0, qb);
    CHECK(std::find(kept.begin(), kept.end(), 1000) != kept.end());
  }
}

TEST_CASE("property 6: scores increasing with key position select exactly the last K blocks", "[hip][selection]") {
  const index_t nk = GENERATE(97, 256, 1000);
  const index_t bk = GENERATE(1, 2, 3);
  const attnkit::hip p = make_hip(12, 8, bk, 0, 0, false);
  const problem s = make_problem(1, 1, 1, 20, nk, 8, 4);
  tensor<float> q = output_tensor<float>(s.q_ext(), layout::bhsd), k = output_tensor<float>(s.k_ext(), layout::bhsd);
  q.for_each([&](index_t b, index_t h, index_t i, index_t d) { q.view(b, h, i, d) = d == 0 ? 1.f : 0.f; });
  k.for_each([&](index_t b, index_t h, index_t j, index_t d) { k.view(b, h, j, d) = d == 0 ? static_cast<float>(j) : 0.f; });
  const auto sel = attnkit::hip_select(p, q.cview(), k.cview());
  const index_t n = (nk + bk - 1) / bk, K = (p.top_k + bk - 1) / bk;
  std::vector<index_t> last;
  for (index_t m = n - K; m < n; ++m) last.push_back(m * bk);
  for (index_t qb = 0; qb < sel.query_blocks; ++qb) CHECK(kept_starts(sel, 0, 0, qb) == last);
  CHECK(attnkit::reference::hip_selected_blocks(p, q.cview(), k.cview(), 0, 0)[0] == last);
}

TEST_CASE("property 5: the selection is deterministic, thread-count invariant and ignores the scale", "[hip][selection]") {
  ATTNKIT_SEEDED_RNG(gen);
  attnkit::hip p = make_hip(24, 16, 2, 2, 5);
  const problem s = make_problem(2, 4, 1, 200, 300, 32, 8);
  const auto in = random_qkv<float>(s, gen);
  attnkit::options one, two;
  one.threads = 1, two.threads = 2;
  const auto a = attnkit::hip_select(p, in.q.cview(), in.k.cview(), one);
  const auto b = attnkit::hip_select(p, in.q.cview(), in.k.cview(), two);
  p.scale = 0.01f;
  const auto c = attnkit::hip_select(p, in.q.cview(), in.k.cview());
  CHECK(a.range_first == b.range_first);
  CHECK(a.range_first == c.range_first);
  CHECK(a.ranges == c.ranges);
}

// ---------------------------------------------------------------------------------------------
// Attention.
// ---------------------------------------------------------------------------------------------

TEST_CASE("property 1: top_k covering every block equals causal / dense softmax", "[hip][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(true, false);
  const attnkit::hip p = make_hip(4096, 16, 2, 0, 0, causal);
  const problem s = make_problem(1, 4, 2, GENERATE(1, 100, 257), 257, 32, 16);
  const auto in = random_qkv<float>(s, gen);
  attnkit::softmax sm;
  sm.causal = causal;
  check_matches(run_fast(p, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v), float_tol);
  check_matches(run_ref(p, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v), float_tol);
}

TEST_CASE("fast == reference: odd sizes, sink, window, strides, causal and not", "[hip][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto cfg = GENERATE(std::make_tuple(16, 8, 2, 1, 1, 0, 0), std::make_tuple(20, 13, 3, 2, 2, 4, 11),
                            std::make_tuple(6, 32, 1, 4, 1, 0, 7), std::make_tuple(64, 32, 2, 1, 1, 16, 32),
                            std::make_tuple(9, 5, 5, 1, 3, 2, 1), std::make_tuple(30, 3, 2, 3, 1, 0, 0));
  const bool causal = GENERATE(true, false);
  const attnkit::hip p = make_hip(std::get<0>(cfg), std::get<1>(cfg), std::get<2>(cfg), std::get<5>(cfg),
                                  std::get<6>(cfg), causal, std::get<3>(cfg), std::get<4>(cfg));
  const auto shape = GENERATE(std::make_pair(301, 301), std::make_pair(77, 290), std::make_pair(5, 333));
  fast_vs_reference<float>(p, dyadic_qkv(make_problem(2, 4, 2, shape.first, shape.second, 40, 24), gen));
}

TEST_CASE("fast == reference on continuous inputs (D 64 and 128)", "[hip][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::hip p = make_hip(48, 32, 2, 4, 16, GENERATE(true, false));
  const index_t D = GENERATE(64, 128);
  fast_vs_reference<float>(p, random_qkv<float>(make_problem(1, 2, 1, 400, 400, D, D), gen));
}

TEST_CASE("fast: decode rows (Nq = 1 and 3) match reference; a decode row equals the prefill row of a one-query block",
          "[hip][fast][decode]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t nq = GENERATE(1, 3);
  const attnkit::hip p = make_hip(16, 32, 2, 2, GENERATE(0, 8));
  const problem full = make_problem(1, 8, 2, 300, 300, 64, 32);
  const auto in = dyadic_qkv(full, gen);
  problem d = full;
  d.Nq = nq;
  tensor<float> q = output_tensor<float>(d.q_ext(), layout::bhsd);
  q.for_each([&](index_t b, index_t h, index_t i, index_t x) { q.view(b, h, i, x) = in.q.view(b, h, 300 - nq + i, x); });
  INFO(describe(p) << " Nq=" << nq);
  const auto fast = run_fast(p, q, in.k, in.v);
  check_matches(fast, run_ref(p, q, in.k, in.v), float_tol);
  if (nq == 1) {  // prefill with one query per block: the same search as the decode row's
    attnkit::hip per_query = p;
    per_query.block_q = 1;
    const auto prefill = run_fast(per_query, in.q, in.k, in.v);
    for (index_t h = 0; h < 8; ++h)
      for (index_t x = 0; x < 32; ++x) CHECK(fast.out.get(0, h, 0, x) == Approx(prefill.out.get(0, h, 299, x)).margin(2e-5));
  }
}

TEST_CASE("property 4: causal never uses a key after the query; rows left empty are zeros with lse -inf",
          "[hip][fast][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::hip p = make_hip(8, 16, 2, 0, 0, true);
  const problem s = make_problem(1, 2, 1, GENERATE(120, 150), 120, 16, 16);
  const auto in = random_qkv<float>(s, gen);
  const auto mask = attnkit::dense_mask(p, in.q.cview(), in.k.cview(), 0, 1);
  index_t future = 0;
  for (index_t i = 0; i < s.Nq; ++i)
    for (index_t j = 0; j < s.Nk; ++j) future += mask[static_cast<std::size_t>(i * s.Nk + j)] && j > i + s.Nk - s.Nq;
  CHECK(future == 0);
  // Perturbing the future leaves every row unchanged.
  const auto before = run_fast(p, in.q, in.k, in.v);
  auto later = in;
  later.v.for_each([&](index_t b, index_t h, index_t j, index_t d) { later.v.view(b, h, j, d) += j > 60 ? 5.f : 0.f; });
  const auto after = run_fast(p, later.q, later.k, later.v);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i + s.Nk - s.Nq <= 60; ++i)
      for (index_t d = 0; d < 16; ++d) CHECK(before.out.get(0, h, i, d) == after.out.get(0, h, i, d));
  // Window 0, sink 0: early queries of a block may keep no block at or before them.
  const auto [fast, ref] = fast_vs_reference<float>(p, in);
  const std::vector<std::uint8_t> masks[2] = {attnkit::dense_mask(p, in.q.cview(), in.k.cview(), 0, 0), mask};
  const auto is_empty = [&](index_t, index_t h, index_t i) { return mask_row(masks[h], s.Nk, i).empty(); };
  bool some_empty = false;
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < s.Nq; ++i) some_empty = some_empty || is_empty(0, h, i);
  if (some_empty) {
    check_empty_rows(fast, is_empty);
    check_empty_rows(ref, is_empty);
  }
}

TEST_CASE("fast: GQA, bf16 inputs and outputs, strided layouts match reference", "[hip][fast][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::hip p = make_hip(24, 16, 2, 3, 10);
  fast_vs_reference<float>(p, dyadic_qkv(make_problem(2, 6, 2, 190, 190, 40, 24), gen, layout::strided), layout::strided);
  fast_vs_reference<float>(p, dyadic_qkv(make_problem(1, 4, 1, 77, 290, 64, 64), gen, layout::bshd), layout::bshd);
  // bf16: the dyadic entries are exact in bf16, so the selection matches the reference's.
  const auto in = dyadic_qkv(make_problem(1, 4, 2, 200, 200, 32, 32), gen);
  qkv<bf16> half{output_tensor<bf16>(in.q.ext, layout::bhsd), output_tensor<bf16>(in.k.ext, layout::bhsd),
                 output_tensor<bf16>(in.v.ext, layout::bhsd)};
  in.q.for_each([&](index_t b, index_t h, index_t i, index_t d) { half.q.view(b, h, i, d) = bf16(in.q.view(b, h, i, d)); });
  in.k.for_each([&](index_t b, index_t h, index_t i, index_t d) { half.k.view(b, h, i, d) = bf16(in.k.view(b, h, i, d)); });
  in.v.for_each([&](index_t b, index_t h, index_t i, index_t d) { half.v.view(b, h, i, d) = bf16(in.v.view(b, h, i, d)); });
  fast_vs_reference<bf16, float>(p, half);
  fast_vs_reference<bf16, bf16>(p, half);
}

TEST_CASE("huge finite q and k: finite outputs; the reference's choice while scores stay exact in float",
          "[hip][fast][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::hip p = make_hip(16, 16, 2, 1, 4, GENERATE(true, false));
  const float factor = GENERATE(0x1p55f, 0x1p100f);  // q.k up to 2^115 (exact), or past float's range
  auto in = dyadic_qkv(make_problem(1, 2, 1, 120, 120, 32, 16), gen);
  in.q.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.q.view(b, h, i, d) *= factor; });
  in.k.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.k.view(b, h, i, d) *= factor; });
  INFO("factor " << factor);
  const auto fast = run_fast(p, in.q, in.k, in.v);
  CHECK(all_finite(fast.out));
  // (The outputs themselves are softmaxes of scores near 1e34, rounded to about 1e27: not
  // comparable to the float64 reference, as for every policy.)
  if (factor < 0x1p60f)
    for (index_t h = 0; h < 2; ++h)
      CHECK(attnkit::dense_mask(p, in.q.cview(), in.k.cview(), 0, h) ==
            attnkit::reference::hip_mask(p, in.q.cview(), in.k.cview(), 0, h));
}

TEST_CASE("fast: threads = 1 and 2 give bitwise identical out and lse", "[hip][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::hip p = make_hip(32, 16, 2, 2, 8);
  const auto in = random_qkv<float>(make_problem(2, 4, 2, 300, 300, 32, 32), gen);
  const auto one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
  const auto two = run_fast(p, in.q, in.k, in.v, layout::bhsd, 2);
  CHECK(same_bits(one.out, two.out));
  CHECK(same_bits(one.lse_mem, two.lse_mem));
}

TEST_CASE("a selection reused: same result; over appended keys (decode) = softmax over its kept keys", "[hip][fast][decode]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::hip p = make_hip(16, 32, 2, 2, 6);
  const problem s = make_problem(1, 4, 2, 1, 260, 32, 16);
  const auto in = random_qkv<float>(s, gen);
  const auto sel = attnkit::hip_select(p, in.q.cview(), in.k.cview());
  auto direct = run_fast(p, in.q, in.k, in.v);
  auto again = make_result<float>(s, layout::bhsd);
  attnkit::options o;
  o.lse = again.lse_ptr();
  attnkit::attention(sel, in.q.cview(), in.k.cview(), in.v.cview(), again.out.view, o);
  CHECK(same_bits(direct.out, again.out));
  CHECK(same_bits(direct.lse_mem, again.lse_mem));

  // Three decode steps later: 263 keys, a new query; the kept ranges stay, sink and window move.
  problem later = s;
  later.Nk = 263;
  const auto next = random_qkv<float>(later, gen);
  auto got = make_result<float>(later, layout::bhsd);
  o.lse = got.lse_ptr();
  attnkit::attention(sel, next.q.cview(), next.k.cview(), next.v.cview(), got.out.view, o);
  for (index_t h = 0; h < 4; ++h) {
    std::vector<std::uint8_t> mask(263, 0);
    for (index_t j = 0; j < p.sink; ++j) mask[static_cast<std::size_t>(j)] = 1;
    for (const auto& r : sel.kept(0, h, 0))
      for (index_t j = r.first; j < r.second; ++j) mask[static_cast<std::size_t>(j)] = 1;
    for (index_t j = 263 - p.window; j < 263; ++j) mask[static_cast<std::size_t>(j)] = 1;
    // One head at a time through the masked reference: slice head h (and its KV head).
    problem one = later;
    one.Hq = 1, one.Hkv = 1;
    qkv<float> head{output_tensor<float>(one.q_ext(), layout::bhsd), output_tensor<float>(one.k_ext(), layout::bhsd),
                    output_tensor<float>(one.v_ext(), layout::bhsd)};
    head.q.for_each([&](index_t, index_t, index_t i, index_t d) { head.q.view(0, 0, i, d) = next.q.view(0, h, i, d); });
    head.k.for_each([&](index_t, index_t, index_t j, index_t d) { head.k.view(0, 0, j, d) = next.k.view(0, h / 2, j, d); });
    head.v.for_each([&](index_t, index_t, index_t j, index_t d) { head.v.view(0, 0, j, d) = next.v.view(0, h / 2, j, d); });
    const auto want = masked_reference(mask, 0, head);
    for (index_t d = 0; d < 16; ++d) CHECK(got.out.get(0, h, 0, d) == Approx(want.out.get(0, 0, 0, d)).margin(2e-5));
    CHECK(got.lse(h) == Approx(want.lse(0)).margin(1e-4));
  }
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

TEST_CASE("bad hip fields throw attnkit::error naming the field, out untouched", "[hip][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 40, 40, 16, 16);
  const auto bad = [&](auto&& change, const std::string& what) {
    attnkit::hip p;
    change(p);
    INFO(what);
    check_rejected<true>(p, s, what, gen);
    check_rejected<false>(p, s, what, gen);
  };
  bad([](attnkit::hip& p) { p.top_k = 0; }, "top_k");
  bad([](attnkit::hip& p) { p.block_q = 0; }, "block_q");
  bad([](attnkit::hip& p) { p.block_k = -1; }, "block_k");
  bad([](attnkit::hip& p) { p.stride_q = 0; }, "stride_q");
  bad([](attnkit::hip& p) { p.stride_q = 33; }, "stride_q");
  bad([](attnkit::hip& p) { p.stride_k = 3; }, "stride_k");
  bad([](attnkit::hip& p) { p.sink = -1; }, "sink");
  bad([](attnkit::hip& p) { p.window = -2; }, "window");
  bad([](attnkit::hip& p) { p.scale = std::numeric_limits<float>::infinity(); }, "scale");
}

TEST_CASE("a selection used with other shapes throws attnkit::error, out untouched", "[hip][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::hip p = make_hip(8, 16, 2);
  const auto in = random_qkv<float>(make_problem(1, 2, 1, 40, 60, 16, 16), gen);
  const auto sel = attnkit::hip_select(p, in.q.cview(), in.k.cview());
  const auto other = random_qkv<float>(make_problem(1, 2, 1, 41, 59, 16, 16), gen);
  auto out = output_tensor<float>({1, 2, 41, 16}, layout::bhsd);
  const auto before = out;
  CHECK_THROWS_WITH(attnkit::attention(sel, other.q.cview(), other.k.cview(), other.v.cview(), out.view),
                    Catch::Contains("hip_selection"));
  CHECK(same_bits(before, out));
  auto out2 = output_tensor<float>({1, 2, 40, 16}, layout::bhsd);
  const auto before2 = out2;
  const auto rejected = [&](auto&& tamper) {
    auto tampered = sel;
    tamper(tampered);
    CHECK_THROWS_WITH(attnkit::attention(tampered, in.q.cview(), in.k.cview(), in.v.cview(), out2.view),
                      Catch::Contains("hip_selection"));
    CHECK_THROWS_WITH(attnkit::dense_mask(tampered, 0, 0), Catch::Contains("hip_selection"));
    CHECK(same_bits(before2, out2));
  };
  rejected([](attnkit::hip_selection& t) { t.range_first[0] = 1000; });
  rejected([](attnkit::hip_selection& t) { t.range_end[0] = t.range_first[0] + 5; });  // longer than block_k
  rejected([](attnkit::hip_selection& t) { t.ranges[1] = static_cast<std::int32_t>(t.max_ranges + 1); });
  rejected([](attnkit::hip_selection& t) { t.range_first.pop_back(); });
  rejected([](attnkit::hip_selection& t) { t.policy.block_q = 7; });
}
