// Routing attention: the spec's properties on the fast path and on the float64 reference
// (reference/routing.hpp), the fast clusters against the reference's, attnkit::attention
// against the reference, the centroid helpers (kmeans_init, update_centroids), validation.
// Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
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
using assignment = attnkit::routing::assignment_kind;
using norm = attnkit::routing::routing_norm_kind;

namespace {

std::string describe(const attnkit::routing& p) {
  std::ostringstream o;
  o << "routing{C=" << p.num_clusters << " window_q=" << p.window_q << " window_k=" << p.window_k
    << " assignment=" << (p.assignment == assignment::balanced ? "balanced" : "argmax")
    << " norm=" << (p.routing_norm == norm::layer_norm ? "layer_norm" : "l2") << " causal=" << p.causal
    << " scale=" << p.scale << "}";
  return o.str();
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

/// Random centroids [Hq, C, D] (unit-scale entries, like normalised routing vectors).
std::vector<float> random_centroids(index_t Hq, index_t C, index_t D, std::mt19937& gen) {
  std::normal_distribution<float> nd;
  std::vector<float> mu(static_cast<std::size_t>(Hq * C * D));
  for (float& x : mu) x = nd(gen);
  return mu;
}

attnkit::routing make_routing(const std::vector<float>& mu, index_t C, assignment a = assignment::balanced,
                              bool causal = false, norm n = norm::layer_norm, index_t wq = 0, index_t wk = 0) {
  attnkit::routing p;
  p.centroids = mu.data(), p.num_clusters = C, p.assignment = a, p.causal = causal, p.routing_norm = n;
  p.window_q = wq, p.window_k = wk;
  return p;
}

template <class In, class Out = float>
std::pair<result<Out>, result<float>> fast_vs_reference(const attnkit::routing& p, const qkv<In>& in,
                                                         layout l = layout::bhsd, int threads = 0) {
  INFO(describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>() << " layout=" << name(l));
  result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, l, threads);
  result<float> ref = run_ref(p, in.q, in.k, in.v);
  check_matches(fast, ref, tol_for<In, Out>());
  return {std::move(fast), std::move(ref)};
}

}  // namespace

TEST_CASE("property 1: one cluster equals dense / causal softmax", "[routing][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(true, false);
  const problem s = make_problem(2, 4, 2, GENERATE(1, 97, 200), 200, 32, 16);
  const auto mu = random_centroids(s.Hq, 1, s.D, gen);
  const attnkit::routing p = make_routing(mu, 1, GENERATE(assignment::balanced, assignment::argmax), causal);
  const auto in = random_qkv<float>(s, gen);
  attnkit::softmax sm;
  sm.causal = causal;
  INFO(describe(p));
  check_matches(run_fast(p, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v), float_tol);
  check_matches(run_ref(p, in.q, in.k, in.v), run_ref(sm, in.q, in.k, in.v), float_tol);
}

TEST_CASE("fast clusters == reference clusters; balanced clusters have exactly min(w, N) members", "[routing][clusters]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t C = GENERATE(1, 3, 7, 40);
  const assignment a = GENERATE(assignment::balanced, assignment::argmax);
  const norm n = GENERATE(norm::layer_norm, norm::l2);
  const auto windows = GENERATE(std::make_pair(0, 0), std::make_pair(5, 17), std::make_pair(500, 1));
  const problem s = make_problem(2, 4, 2, 123, 157, 24, 8);
  const auto mu = random_centroids(s.Hq, C, s.D, gen);
  const attnkit::routing p = make_routing(mu, C, a, false, n, windows.first, windows.second);
  INFO(describe(p));
  const auto in = random_qkv<float>(s, gen);
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h) {
      const auto fast = attnkit::routing_membership(p, in.q.cview(), in.k.cview(), b, h);
      const auto ref = attnkit::reference::routing_membership(p, in.q.cview(), in.k.cview(), b, h);
      CHECK(fast.queries == ref.queries);
      CHECK(fast.keys == ref.keys);
      if (a == assignment::balanced) {
        const index_t wq = std::min<index_t>(windows.first ? windows.first : (s.Nq + C - 1) / C, s.Nq);
        const index_t wk = std::min<index_t>(windows.second ? windows.second : (s.Nk + C - 1) / C, s.Nk);
        for (index_t c = 0; c < C; ++c) {
          CHECK(static_cast<index_t>(fast.queries[static_cast<std::size_t>(c)].size()) == wq);
          CHECK(static_cast<index_t>(fast.keys[static_cast<std::size_t>(c)].size()) == wk);
        }
      } else {  // argmax: a partition
        index_t total = 0;
        for (const auto& c : fast.queries) total += static_cast<index_t>(c.size());
        CHECK(total == s.Nq);
      }
    }
}

TEST_CASE("fast == reference: clusters, windows, causal, Nq != Nk, both norms and assignments", "[routing][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t C = GENERATE(2, 5, 16);
  const assignment a = GENERATE(assignment::balanced, assignment::argmax);
  const bool causal = GENERATE(true, false);
  const auto windows = GENERATE(std::make_pair(0, 0), std::make_pair(40, 25), std::make_pair(7, 90));
  const auto shape = GENERATE(std::make_pair(250, 250), std::make_pair(60, 301), std::make_pair(3, 200));
  const problem s = make_problem(2, 4, 2, shape.first, shape.second, 40, 24);
  const auto mu = random_centroids(s.Hq, C, s.D, gen);
  const attnkit::routing p = make_routing(mu, C, a, causal, C == 5 ? norm::l2 : norm::layer_norm, windows.first, windows.second);
  fast_vs_reference<float>(p, random_qkv<float>(s, gen));
}

TEST_CASE("property 2: with argmax each row is plain attention over its own cluster's keys", "[routing][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 1, 1, 150, 150, 16, 16);
  const auto mu = random_centroids(1, 6, s.D, gen);
  const attnkit::routing p = make_routing(mu, 6, assignment::argmax);
  const auto in = random_qkv<float>(s, gen);
  const auto clusters = attnkit::routing_membership(p, in.q.cview(), in.k.cview(), 0, 0);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(s.Nq * s.Nk), 0);
  for (std::size_t c = 0; c < clusters.queries.size(); ++c)
    for (const index_t i : clusters.queries[c])
      for (const index_t j : clusters.keys[c]) mask[static_cast<std::size_t>(i * s.Nk + j)] = 1;
  check_matches(run_fast(p, in.q, in.k, in.v), masked_reference(mask, 0, in), float_tol);
}

TEST_CASE("property 3: a row depends only on its clusters' keys; property 7: causal never uses a later key",
          "[routing][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(true, false);
  const problem s = make_problem(1, 2, 1, 180, 180, 16, 16);
  const auto mu = random_centroids(2, 9, s.D, gen);
  const attnkit::routing p = make_routing(mu, 9, assignment::balanced, causal);
  const auto in = random_qkv<float>(s, gen);
  const auto before = run_fast(p, in.q, in.k, in.v);
  const auto clusters = attnkit::routing_membership(p, in.q.cview(), in.k.cview(), 0, 0);
  // Query 17 of head 0: change every value row outside its clusters (and, causal, after it).
  const index_t i = 17;
  std::vector<bool> seen(static_cast<std::size_t>(s.Nk), false);
  for (std::size_t c = 0; c < clusters.queries.size(); ++c)
    if (std::binary_search(clusters.queries[c].begin(), clusters.queries[c].end(), i))
      for (const index_t j : clusters.keys[c]) seen[static_cast<std::size_t>(j)] = !causal || j <= i;
  auto changed = in;
  changed.v.for_each([&](index_t b, index_t h, index_t j, index_t d) {
    if (!seen[static_cast<std::size_t>(j)]) changed.v.view(b, h, j, d) += 3.f;
  });
  const auto after = run_fast(p, changed.q, changed.k, changed.v);
  for (index_t d = 0; d < s.Dv; ++d) CHECK(before.out.get(0, 0, i, d) == after.out.get(0, 0, i, d));
}

TEST_CASE("property 4: permuting the sequence permutes the output (non-causal)", "[routing][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 2, 120, 120, 16, 16);
  const auto mu = random_centroids(2, 8, s.D, gen);
  const attnkit::routing p = make_routing(mu, 8, GENERATE(assignment::balanced, assignment::argmax));
  const auto in = random_qkv<float>(s, gen);
  std::vector<index_t> perm(120);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), gen);
  auto shuffled = in;
  const auto move_rows = [&](const tensor<float>& from, tensor<float>& to) {
    from.for_each([&](index_t b, index_t h, index_t j, index_t d) {
      to.view(b, h, perm[static_cast<std::size_t>(j)], d) = from.view(b, h, j, d);
    });
  };
  move_rows(in.q, shuffled.q), move_rows(in.k, shuffled.k), move_rows(in.v, shuffled.v);
  const auto a = run_fast(p, in.q, in.k, in.v), b = run_fast(p, shuffled.q, shuffled.k, shuffled.v);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 120; ++i)
      for (index_t d = 0; d < 16; ++d)
        CHECK(a.out.get(0, h, i, d) == Approx(b.out.get(0, h, perm[static_cast<std::size_t>(i)], d)).margin(1e-5));
}

TEST_CASE("tokens in no cluster are zeros with lse -inf; tokens in several clusters average them", "[routing][fast][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 100, 100, 16, 16);
  const auto mu = random_centroids(2, 4, s.D, gen);
  // Windows of 10 queries per cluster: at most 40 of 100 tokens are routed anywhere.
  const attnkit::routing p = make_routing(mu, 4, assignment::balanced, false, norm::layer_norm, 10, 30);
  const auto in = random_qkv<float>(s, gen);
  const auto [fast, ref] = fast_vs_reference<float>(p, in);
  std::vector<int> memberships[2];
  for (index_t h = 0; h < 2; ++h) {
    memberships[h].assign(100, 0);
    for (const auto& c : attnkit::routing_membership(p, in.q.cview(), in.k.cview(), 0, h).queries)
      for (const index_t i : c) ++memberships[h][static_cast<std::size_t>(i)];
  }
  check_empty_rows(fast, [&](index_t, index_t h, index_t i) { return memberships[h][static_cast<std::size_t>(i)] == 0; });
}

TEST_CASE("fast: GQA, bf16 inputs and outputs, strided layouts match reference", "[routing][fast][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto mu = random_centroids(6, 5, 40, gen);
  const attnkit::routing p = make_routing(mu, 5, assignment::balanced, true);
  fast_vs_reference<float>(p, random_qkv<float>(make_problem(2, 6, 2, 190, 190, 40, 24), gen, layout::strided, layout::strided, layout::strided), layout::strided);
  fast_vs_reference<float>(p, random_qkv<float>(make_problem(1, 6, 3, 77, 290, 40, 40), gen, layout::bshd, layout::bshd, layout::bshd), layout::bshd);
  const auto in = random_qkv<bf16>(make_problem(1, 6, 2, 200, 200, 40, 32), gen);
  fast_vs_reference<bf16, float>(p, in);
  fast_vs_reference<bf16, bf16>(p, in);
}

TEST_CASE("huge finite q and k (squares past float's range): the reference's clusters, finite outputs",
          "[routing][fast][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 90, 90, 16, 16);
  const auto mu = random_centroids(2, 4, s.D, gen);
  const attnkit::routing p = make_routing(mu, 4, GENERATE(assignment::balanced, assignment::argmax), false,
                                          GENERATE(norm::layer_norm, norm::l2));
  auto in = random_qkv<float>(s, gen);
  in.q.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.q.view(b, h, i, d) *= 1e25f; });
  in.k.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.k.view(b, h, i, d) *= 1e25f; });
  for (index_t h = 0; h < 2; ++h) {
    const auto fast = attnkit::routing_membership(p, in.q.cview(), in.k.cview(), 0, h);
    const auto ref = attnkit::reference::routing_membership(p, in.q.cview(), in.k.cview(), 0, h);
    CHECK(fast.queries == ref.queries);
    CHECK(fast.keys == ref.keys);
  }
  const auto fast = run_fast(p, in.q, in.k, in.v);
  CHECK(all_finite(fast.out));
  check_matches(fast, run_ref(p, in.q, in.k, in.v), tolerance{2e-5, 1e-5, 1e-4, 1e-5});
}

TEST_CASE("scores below float's range (lse -inf in float) still count: the rows average their clusters",
          "[routing][fast][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 1, 1, 40, 40, 16, 8);
  const auto mu = random_centroids(1, 3, s.D, gen);
  const attnkit::routing p = make_routing(mu, 3);
  auto in = random_qkv<float>(s, gen);
  // Constant rows: every score is the same -4.8e39 (past float's range), every routing vector 0.
  in.q.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.q.view(b, h, i, d) = -3e37f; });
  in.k.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.k.view(b, h, i, d) = 10.f; });
  const auto fast = run_fast(p, in.q, in.k, in.v);
  const auto ref = run_ref(p, in.q, in.k, in.v);
  check_matches(fast, ref, float_tol);
  CHECK(fast.out.get(0, 0, 0, 0) != 0.f);  // query 0 is in every cluster (ties go to small indices)
}

TEST_CASE("property 6: threads = 1 and 2 give bitwise identical out and lse", "[routing][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto mu = random_centroids(4, 11, 32, gen);
  const attnkit::routing p = make_routing(mu, 11, GENERATE(assignment::balanced, assignment::argmax), true);
  const auto in = random_qkv<float>(make_problem(2, 4, 2, 300, 300, 32, 32), gen);
  const auto one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
  const auto two = run_fast(p, in.q, in.k, in.v, layout::bhsd, 2);
  CHECK(same_bits(one.out, two.out));
  CHECK(same_bits(one.lse_mem, two.lse_mem));
}

// ---------------------------------------------------------------------------------------------
// Centroid helpers.
// ---------------------------------------------------------------------------------------------

TEST_CASE("kmeans_init: SplitMix64 draws, bit-identical for a seed, Lloyd steps keep member means", "[routing][kmeans]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(2, 2, 1, 90, 110, 16, 16);
  const auto in = random_qkv<float>(s, gen);
  attnkit::routing p;
  const std::vector<float> x = attnkit::routing_vectors(p, in.q.cview(), in.k.cview(), 1);
  const index_t n = static_cast<index_t>(x.size()) / s.D;
  REQUIRE(n == 2 * 90 + 2 * 110);
  const index_t C = 6;
  std::vector<float> a(static_cast<std::size_t>(C * s.D)), b(a.size()), c(a.size()), zero_iters(a.size());
  attnkit::kmeans_init(a.data(), x.data(), n, s.D, C, 1234);
  attnkit::kmeans_init(b.data(), x.data(), n, s.D, C, 1234, 10, 1);
  attnkit::kmeans_init(c.data(), x.data(), n, s.D, C, 1235);
  CHECK(same_bits(a, b));
  CHECK(!same_bits(a, c));
  // iters = 0: the rows the spec's shuffle draws (SplitMix64 written out here).
  attnkit::kmeans_init(zero_iters.data(), x.data(), n, s.D, C, 7, 0);
  std::uint64_t state = 7;
  const auto next = [&] {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::vector<index_t> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  for (index_t t = 0; t < C; ++t) {
    std::swap(idx[static_cast<std::size_t>(t)], idx[static_cast<std::size_t>(t + static_cast<index_t>(next() % static_cast<std::uint64_t>(n - t)))]);
    for (index_t d = 0; d < s.D; ++d)
      CHECK(zero_iters[static_cast<std::size_t>(t * s.D + d)] == x[static_cast<std::size_t>(idx[static_cast<std::size_t>(t)] * s.D + d)]);
  }
  // n < C: centroid t is row next() mod n.
  std::vector<float> many(static_cast<std::size_t>(9 * s.D));
  attnkit::kmeans_init(many.data(), x.data(), 4, s.D, 9, 99, 0);
  state = 99;
  for (index_t t = 0; t < 9; ++t) {
    const auto row = static_cast<index_t>(next() % 4);
    for (index_t d = 0; d < s.D; ++d) CHECK(many[static_cast<std::size_t>(t * s.D + d)] == x[static_cast<std::size_t>(row * s.D + d)]);
  }
  // After the Lloyd steps every centroid with members is the mean of the rows nearest to it
  // under the previous centroids: one more step from a fixed point changes little.
  for (float v : a) CHECK(std::isfinite(v));
}

TEST_CASE("property 8: update_centroids with decay 0 and eps 0 is one Lloyd step", "[routing][kmeans]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 70, 80, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  const index_t C = 5;
  const auto mu = random_centroids(2, C, s.D, gen);
  attnkit::routing p = make_routing(mu, C);
  attnkit::routing_state st(mu.data(), 2, C, s.D);
  attnkit::update_centroids(st, p, in.q.cview(), in.k.cview(), 0.0, 0.0);
  for (index_t h = 0; h < 2; ++h) {
    const std::vector<float> x = attnkit::routing_vectors(p, in.q.cview(), in.k.cview(), h);
    const index_t n = static_cast<index_t>(x.size()) / s.D;
    std::vector<double> sum(static_cast<std::size_t>(C * s.D), 0.0), count(static_cast<std::size_t>(C), 0.0);
    for (index_t i = 0; i < n; ++i) {
      index_t best = 0;
      double best_dot = -std::numeric_limits<double>::infinity();
      for (index_t c = 0; c < C; ++c) {
        double dot = 0;
        for (index_t d = 0; d < s.D; ++d)
          dot += double(x[static_cast<std::size_t>(i * s.D + d)]) * mu[static_cast<std::size_t>((h * C + c) * s.D + d)];
        if (dot > best_dot) best_dot = dot, best = c;
      }
      count[static_cast<std::size_t>(best)] += 1;
      for (index_t d = 0; d < s.D; ++d) sum[static_cast<std::size_t>(best * s.D + d)] += x[static_cast<std::size_t>(i * s.D + d)];
    }
    for (index_t c = 0; c < C; ++c)
      for (index_t d = 0; d < s.D; ++d) {
        const float got = st.centroids[static_cast<std::size_t>((h * C + c) * s.D + d)];
        const double want = count[static_cast<std::size_t>(c)] > 0
                                ? sum[static_cast<std::size_t>(c * s.D + d)] / count[static_cast<std::size_t>(c)]
                                : mu[static_cast<std::size_t>((h * C + c) * s.D + d)];
        CHECK(got == Approx(want).margin(1e-5));
      }
  }
  // The default decay moves the centroids only slightly.
  attnkit::routing_state slow(mu.data(), 2, C, s.D);
  attnkit::update_centroids(slow, p, in.q.cview(), in.k.cview());
  for (std::size_t e = 0; e < mu.size(); ++e) CHECK(std::fabs(slow.centroids[e] - mu[e]) < 0.1f + 0.1f * std::fabs(mu[e]));
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

TEST_CASE("bad routing fields throw attnkit::error naming the field, out untouched", "[routing][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 40, 40, 16, 16);
  auto mu = random_centroids(2, 3, 16, gen);
  const auto bad = [&](auto&& change, const std::string& what) {
    attnkit::routing p = make_routing(mu, 3);
    change(p);
    INFO(what);
    check_rejected<true>(p, s, what, gen);
    check_rejected<false>(p, s, what, gen);
  };
  bad([](attnkit::routing& p) { p.centroids = nullptr; }, "centroids");
  bad([](attnkit::routing& p) { p.num_clusters = 0; }, "num_clusters");
  bad([](attnkit::routing& p) { p.window_q = -1; }, "window_q");
  bad([](attnkit::routing& p) { p.window_k = -3; }, "window_k");
  bad([](attnkit::routing& p) { p.assignment = static_cast<assignment>(7); }, "assignment");
  bad([](attnkit::routing& p) { p.routing_norm = static_cast<norm>(-1); }, "routing_norm");
  bad([](attnkit::routing& p) { p.scale = std::numeric_limits<float>::quiet_NaN(); }, "scale");
  mu[5] = std::numeric_limits<float>::infinity();
  bad([](attnkit::routing&) {}, "centroids");
}
