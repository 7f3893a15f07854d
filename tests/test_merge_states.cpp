// merge_states: combining partial attention results over disjoint key sets by their
// log-sum-exp equals attention over the union (split-key decoding, ring attention).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::index_t;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

/// Attention of q over keys [from, to) of k/v (a seq slice), into a fresh float result.
template <class T>
result<float> attend_slice(const attnkit::softmax& p, const tensor<T>& q, const tensor<T>& k, const tensor<T>& v,
                           index_t from, index_t to, bool reference = false) {
  problem s{q.ext[0], q.ext[1], k.ext[1], q.ext[2], to - from, q.ext[3], v.ext[3]};
  result<float> r = make_result<float>(s, layout::bhsd);
  attnkit::options o;
  o.lse = r.lse_ptr();
  o.lse_size = s.rows();
  const auto ks = seq_slice(k.cview(), from, to), vs = seq_slice(v.cview(), from, to);
  if (reference)
    attnkit::reference::attention(p, q.cview(), ks, vs, r.out.view, o);
  else
    attnkit::attention(p, q.cview(), ks, vs, r.out.view, o);
  return r;
}

void merge(result<float>& a, const result<float>& b) {
  attnkit::merge_states(a.out.view, a.lse_ptr(), attnkit::tensor_view<const float>(b.out.view), b.lse_mem.data() + guard);
}

/// The same, passing out_b as the writable view it is (it converts to a const view; clang
/// once refused to deduce the memory space through that conversion).
void merge_writable(result<float>& a, const result<float>& b) {
  attnkit::merge_states(a.out.view, a.lse_ptr(), b.out.view, b.lse_mem.data() + guard);
}

}  // namespace

TEST_CASE("merge_states of a split key set equals the unsplit result", "[merge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto shape = GENERATE(std::make_tuple(1, 4, 2, 1, 500, 64), std::make_tuple(2, 8, 2, 33, 200, 32),
                              std::make_tuple(1, 2, 1, 97, 130, 80), std::make_tuple(3, 1, 1, 5, 2, 16));
  problem s;
  s.B = std::get<0>(shape), s.Hq = std::get<1>(shape), s.Hkv = std::get<2>(shape), s.Nq = std::get<3>(shape),
  s.Nk = std::get<4>(shape), s.D = std::get<5>(shape), s.Dv = std::get<5>(shape) / 2 + 1;
  CAPTURE(describe(s));
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax p;
  p.softcap = GENERATE(0.f, 5.f);  // per-key transforms commute with splitting; positions do not
  const auto whole = run_fast(p, in.q, in.k, in.v);
  const auto whole_ref = run_ref(p, in.q, in.k, in.v);
  std::uniform_int_distribution<index_t> cut(1, s.Nk - 1);
  for (index_t split : {index_t(1), cut(gen), s.Nk - 1}) {
    CAPTURE(split);
    for (int reference = 0; reference < 2; ++reference) {
      CAPTURE(reference);
      auto a = attend_slice(p, in.q, in.k, in.v, 0, split, reference);
      const auto b = attend_slice(p, in.q, in.k, in.v, split, s.Nk, reference);
      merge(a, b);
      check_matches(a, whole_ref, tolerance{1e-5, 1e-5, 1e-5, 1e-6});
      const auto [ok, msg] = compare_out(a.out, whole.out, 1e-5, 1e-5);
      INFO(msg);
      CHECK(ok);
    }
  }
  // three parts, merged in either order
  if (s.Nk >= 3) {
    const index_t c1 = s.Nk / 3, c2 = 2 * s.Nk / 3 + 1;
    auto a = attend_slice(p, in.q, in.k, in.v, 0, c1);
    const auto b = attend_slice(p, in.q, in.k, in.v, c1, c2);
    const auto c = attend_slice(p, in.q, in.k, in.v, c2, s.Nk);
    merge(a, c);
    merge(a, b);
    check_matches(a, whole_ref, tolerance{1e-5, 1e-5, 1e-5, 1e-6});
  }
}

TEST_CASE("merging with an empty part (lse -inf) leaves the other unchanged", "[merge]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 2, s.Hq = 4, s.Hkv = 2, s.Nq = 9, s.Nk = 40, s.D = 16, s.Dv = 16;
  auto in = random_qkv<float>(s, gen);
  attnkit::softmax p;
  const auto full = attend_slice(p, in.q, in.k, in.v, 0, s.Nk);
  const auto empty = attend_slice(p, in.q, in.k, in.v, 0, 0);  // Nk = 0: zeros, -inf
  for (index_t r = 0; r < s.rows(); ++r) REQUIRE(empty.lse(r) == -inf);

  SECTION("non-empty <- empty") {
    auto a = full;
    merge(a, empty);
    CHECK(same_bits(a.out, full.out));
    CHECK(same_bits(a.lse_mem, full.lse_mem));
  }
  SECTION("empty <- non-empty") {
    auto a = empty;
    merge_writable(a, full);
    CHECK(same_bits(a.out, full.out));
    CHECK(same_bits(a.lse_mem, full.lse_mem));
  }
  SECTION("both empty: zeros and -inf") {
    auto a = empty;
    merge(a, empty);
    a.out.for_each([&](index_t b, index_t h, index_t i, index_t d) { REQUIRE(a.out.get(b, h, i, d) == 0.f); });
    for (index_t r = 0; r < s.rows(); ++r) REQUIRE(a.lse(r) == -inf);
  }
  SECTION("row-wise: a causal part empty for some rows only") {
    // keys [0, 20) with bottom-right causal leave the first rows empty when Nq > Nk
    attnkit::softmax c;
    c.causal = true;
    problem t = s;
    t.Nq = 30, t.Nk = 10;
    auto in2 = random_qkv<float>(t, gen);
    const auto part = attend_slice(c, in2.q, in2.k, in2.v, 0, t.Nk);
    const auto none = attend_slice(c, in2.q, in2.k, in2.v, 0, 0);
    auto a = part;
    merge(a, none);
    // by value: the empty rows are zeros either way (their sign is test_softmax's business)
    const auto [ok, msg] = compare_out(a.out, part.out, 0, 0);
    INFO(msg);
    CHECK(ok);
    CHECK(same_bits(a.lse_mem, part.lse_mem));
  }
}

TEST_CASE("merge_states in 16-bit storage and strided views", "[merge]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s;
  s.B = 1, s.Hq = 4, s.Hkv = 4, s.Nq = 7, s.Nk = 60, s.D = 32, s.Dv = 32;
  auto q = random_tensor<attnkit::bf16>(s.q_ext(), layout::bhsd, gen);
  auto k = random_tensor<attnkit::bf16>(s.k_ext(), layout::bhsd, gen);
  auto v = random_tensor<attnkit::bf16>(s.v_ext(), layout::bhsd, gen);
  attnkit::softmax p;
  const auto ref = run_ref(p, q, k, v);
  // halves into bf16 outputs in a strided layout
  problem h = s;
  h.Nk = 30;
  result<attnkit::bf16> a = make_result<attnkit::bf16>(h, layout::strided), b = make_result<attnkit::bf16>(h, layout::strided);
  attnkit::options oa, ob;
  oa.lse = a.lse_ptr();
  ob.lse = b.lse_ptr();
  attnkit::attention(p, q.cview(), seq_slice(k.cview(), 0, 30), seq_slice(v.cview(), 0, 30), a.out.view, oa);
  attnkit::attention(p, q.cview(), seq_slice(k.cview(), 30, 60), seq_slice(v.cview(), 30, 60), b.out.view, ob);
  attnkit::merge_states(a.out.view, a.lse_ptr(), attnkit::tensor_view<const attnkit::bf16>(b.out.view), b.lse_ptr());
  check_matches(a, ref, half_tol);
}

TEST_CASE("merge_states rejects mismatched shapes and null lse", "[merge][validation]") {
  std::vector<float> x(2 * 3 * 4, 1.f), y(2 * 3 * 5, 1.f), lse(6, 0.f);
  auto a = attnkit::view_bhsd(x.data(), 1, 2, 3, 4);
  auto b = attnkit::view_bhsd(static_cast<const float*>(y.data()), 1, 2, 3, 5);
  const auto before = x;
  CHECK_THROWS_AS(attnkit::merge_states(a, lse.data(), b, lse.data()), attnkit::error);
  CHECK_THROWS_WITH(attnkit::merge_states(a, lse.data(), b, lse.data()), Catch::Contains("out_b"));
  auto c = attnkit::view_bhsd(static_cast<const float*>(y.data()), 1, 2, 3, 4);
  CHECK_THROWS_AS(attnkit::merge_states(a, nullptr, c, lse.data()), attnkit::error);
  CHECK_THROWS_AS(attnkit::merge_states(a, lse.data(), c, nullptr), attnkit::error);
  CHECK(x == before);
}
