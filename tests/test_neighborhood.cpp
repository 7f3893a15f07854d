// Neighborhood attention (NA, dilated, causal, strided / GNA): the spec's worked examples and
// properties on the float64 reference (reference/neighborhood.hpp) and on dense_mask (the
// variant's admit rule), the reference's window rule against dense_mask, validation, and
// ("fast: " cases) attnkit::attention against the reference on fresh random inputs.
// Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
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
using attnkit::neighborhood;

namespace {

template <int R>
std::string describe(const neighborhood<R>& p) {
  std::ostringstream o;
  auto arr = [&](const char* n, const auto& a) {
    o << " " << n << "=(";
    for (int i = 0; i < R; ++i) o << (i ? "," : "") << a[i];
    o << ")";
  };
  o << "neighborhood<" << R << ">{";
  arr("shape", p.shape);
  arr("kernel", p.kernel);
  arr("dilation", p.dilation);
  arr("stride", p.stride);
  arr("causal", p.causal);
  o << " scale=" << p.scale << "}";
  return o.str();
}

template <int R>
index_t grid(const neighborhood<R>& p) {
  index_t n = 1;
  for (index_t s : p.shape) n *= s;
  return n;
}

template <int R>
std::array<index_t, R> coords(const neighborhood<R>& p, index_t t) {
  std::array<index_t, R> x{};
  for (int a = R - 1; a >= 0; --a) x[a] = t % p.shape[a], t /= p.shape[a];
  return x;
}

template <int R>
index_t token(const neighborhood<R>& p, const std::array<index_t, R>& x) {
  index_t t = 0;
  for (int a = 0; a < R; ++a) t = t * p.shape[a] + x[a];
  return t;
}

/// The reference's keys of query t, sorted.
template <int R>
std::vector<index_t> ref_keys(const neighborhood<R>& p, index_t t) {
  std::vector<index_t> keys;
  attnkit::reference::detail::neighborhood_window(p, t, keys);
  std::sort(keys.begin(), keys.end());
  return keys;
}

inline std::string list(const std::vector<index_t>& v) {
  std::ostringstream o;
  o << "{";
  for (std::size_t i = 0; i < v.size(); ++i) o << (i ? "," : "") << v[i];
  o << "}";
  return o.str();
}

/// A random valid policy: every axis length in [1, max_len], dilation 1..3, kernel, stride.
template <int R>
neighborhood<R> random_policy(std::mt19937& gen, index_t max_len) {
  neighborhood<R> p;
  std::uniform_int_distribution<int> coin(0, 1);
  for (int a = 0; a < R; ++a) {
    const index_t L = std::uniform_int_distribution<index_t>(1, max_len)(gen);
    const index_t d = std::uniform_int_distribution<index_t>(1, std::min<index_t>(3, L))(gen);
    const index_t w = std::uniform_int_distribution<index_t>(1, L / d)(gen);
    const index_t s = std::uniform_int_distribution<index_t>(1, w)(gen);
    p.shape[a] = L, p.dilation[a] = d, p.kernel[a] = w, p.stride[a] = s, p.causal[a] = coin(gen) == 1;
  }
  return p;
}

problem problem_of(index_t B, index_t Hq, index_t Hkv, index_t N, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = N, s.Nk = N, s.D = D, s.Dv = Dv;
  return s;
}

/// Fresh random q, k, v (type In, layout l); attention (out type Out) vs the reference.
template <class In, class Out = float, class P>
void fast_vs_reference(const P& p, const problem& s, std::mt19937& gen, layout l = layout::bhsd) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>()
                   << " layout=" << name(l));
  const qkv<In> in = random_qkv<In>(s, gen, l, l, l);
  const result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, l);
  const result<float> ref = run_ref(p, in.q, in.k, in.v);
  check_matches(fast, ref, tol_for<In, Out>());
}

/// A copy of `t` holding only the given tokens, in that order, along the seq axis.
template <class T>
tensor<T> gather(const tensor<T>& t, const std::vector<index_t>& tokens) {
  tensor<T> g({t.ext[0], t.ext[1], static_cast<index_t>(tokens.size()), t.ext[3]}, layout::bhsd, nan_of<T>());
  g.for_each([&](index_t b, index_t h, index_t s, index_t d) {
    g.view(b, h, s, d) = t.view(b, h, tokens[static_cast<std::size_t>(s)], d);
  });
  return g;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The pattern: worked examples, the window rule vs dense_mask, counts and properties.
// ---------------------------------------------------------------------------------------------

TEST_CASE("reference and dense_mask: the spec's worked 1-D examples (L = 10)", "[neighborhood][pattern]") {
  struct example {
    index_t kernel, dilation, stride;
    bool causal;
    index_t query;
    std::vector<index_t> keys;
  };
  const std::vector<example> examples = {
      {3, 1, 1, false, 0, {0, 1, 2}},    {3, 1, 1, false, 9, {7, 8, 9}}, {3, 1, 1, false, 5, {4, 5, 6}},
      {4, 1, 1, false, 5, {3, 4, 5, 6}}, {3, 2, 1, false, 4, {2, 4, 6}}, {3, 2, 1, false, 1, {1, 3, 5}},
      {3, 1, 2, false, 2, {2, 3, 4}},    {3, 1, 2, false, 3, {2, 3, 4}}, {3, 1, 2, false, 9, {7, 8, 9}},
      {3, 3, 1, false, 6, {3, 6, 9}},    {3, 1, 1, true, 0, {0}},        {3, 1, 1, true, 5, {3, 4, 5}},
      {3, 1, 2, true, 2, {1, 2}},        {3, 1, 2, true, 3, {1, 2, 3}},
  };
  for (const example& e : examples) {
    neighborhood<1> p;
    p.shape = {10};
    p.kernel = {e.kernel};
    p.dilation = {e.dilation};
    p.stride = {e.stride};
    p.causal = {e.causal};
    INFO(describe(p) << " query " << e.query << " want " << list(e.keys));
    const std::vector<index_t> ref = ref_keys(p, e.query);
    INFO("reference " << list(ref));
    CHECK(ref == e.keys);
    const std::vector<index_t> dm = mask_row(attnkit::dense_mask(p, 10, 10), 10, e.query);
    INFO("dense_mask " << list(dm));
    CHECK(dm == e.keys);
  }
}

TEST_CASE("reference window rule == dense_mask, every 1-D configuration with L < 30", "[neighborhood][pattern]") {
  // The spec's formulas were checked against NATTEN exhaustively for L < 30; the reference's
  // cartesian enumeration and the variant's O(N^2) admit test must agree on all of them.
  index_t configs = 0, mismatches = 0;
  std::string first;
  for (index_t L = 1; L < 30; ++L)
    for (index_t d = 1; d <= L; ++d)
      for (index_t w = 1; w * d <= L; ++w)
        for (index_t s = 1; s <= w; ++s)
          for (bool causal : {false, true}) {
            neighborhood<1> p;
            p.shape = {L}, p.kernel = {w}, p.dilation = {d}, p.stride = {s}, p.causal = {causal};
            const auto mask = attnkit::dense_mask(p, L, L);
            ++configs;
            for (index_t t = 0; t < L; ++t) {
              const auto ref = ref_keys(p, t);
              if (ref != mask_row(mask, L, t) && mismatches++ == 0)
                first = describe(p) + " query " + std::to_string(t) + ": reference " + list(ref) +
                        ", dense_mask " + list(mask_row(mask, L, t));
            }
          }
  INFO(configs << " configurations; " << mismatches << " rows differ; first: " << first);
  CHECK(configs > 5000);
  CHECK(mismatches == 0);
}

TEMPLATE_TEST_CASE_SIG("reference window rule == dense_mask on random 2-D and 3-D grids", "[neighborhood][pattern]",
                       ((int R), R), 2, 3) {
  ATTNKIT_SEEDED_RNG(gen);
  for (int trial = 0; trial < 60; ++trial) {
    const neighborhood<R> p = random_policy<R>(gen, R == 2 ? 13 : 7);
    const index_t n = grid(p);
    INFO(describe(p));
    const auto mask = attnkit::dense_mask(p, n, n);
    REQUIRE(mask.size() == static_cast<std::size_t>(n * n));
    for (index_t t = 0; t < n; ++t) {
      CAPTURE(t);
      REQUIRE(ref_keys(p, t) == mask_row(mask, n, t));
    }
  }
}

TEMPLATE_TEST_CASE_SIG("key counts: non-causal exactly prod(kernel); causal at most; the query itself is a key",
                       "[neighborhood][pattern]", ((int R), R), 1, 2, 3) {
  ATTNKIT_SEEDED_RNG(gen);
  for (int trial = 0; trial < 80; ++trial) {
    neighborhood<R> p = random_policy<R>(gen, R == 1 ? 40 : (R == 2 ? 12 : 7));
    const bool causal = trial % 2 == 1;
    for (int a = 0; a < R; ++a) p.causal[a] = causal && p.causal[a];
    const index_t n = grid(p);
    index_t prod = 1;
    for (index_t w : p.kernel) prod *= w;
    INFO(describe(p) << " prod(kernel)=" << prod);
    const auto mask = attnkit::dense_mask(p, n, n);
    bool any_causal = false;
    for (bool c : p.causal) any_causal = any_causal || c;
    for (index_t t = 0; t < n; ++t) {
      CAPTURE(t);
      const auto keys = ref_keys(p, t);
      REQUIRE(std::adjacent_find(keys.begin(), keys.end()) == keys.end());  // no duplicates
      REQUIRE(std::binary_search(keys.begin(), keys.end(), t));             // never an empty row
      REQUIRE(keys.front() >= 0);
      REQUIRE(keys.back() < n);
      if (!any_causal)
        REQUIRE(static_cast<index_t>(keys.size()) == prod);
      else
        REQUIRE(static_cast<index_t>(keys.size()) <= prod);
      REQUIRE(static_cast<index_t>(mask_row(mask, n, t).size()) == static_cast<index_t>(keys.size()));
    }
  }
}

TEST_CASE("1-D causal, stride 1: query x sees min(x/d + 1, w) keys ending at itself", "[neighborhood][pattern][causal]") {
  for (index_t L : {7, 20, 31})
    for (index_t d : {1, 2, 3})
      for (index_t w = 1; w * d <= L; ++w) {
        neighborhood<1> p;
        p.shape = {L}, p.kernel = {w}, p.dilation = {d}, p.causal = {true};
        INFO(describe(p));
        const auto mask = attnkit::dense_mask(p, L, L);
        for (index_t x = 0; x < L; ++x) {
          CAPTURE(x);
          std::vector<index_t> want;
          for (index_t y = x - (std::min(x / d + 1, w) - 1) * d; y <= x; y += d) want.push_back(y);
          CHECK(ref_keys(p, x) == want);
          CHECK(mask_row(mask, L, x) == want);
        }
      }
}

TEST_CASE("property 5: queries of one stride group (non-causal) share their key set", "[neighborhood][pattern]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (int trial = 0; trial < 60; ++trial) {
    neighborhood<2> p = random_policy<2>(gen, 16);
    p.causal = {false, false};
    if (trial % 3 == 0) p.stride = p.kernel;  // blocked
    INFO(describe(p));
    const index_t n = grid(p);
    std::map<std::array<index_t, 4>, std::vector<index_t>> seen;  // (g0, u0/s0, g1, u1/s1) -> keys
    index_t shared = 0;
    for (index_t t = 0; t < n; ++t) {
      const auto x = coords(p, t);
      const std::array<index_t, 4> grp = {x[0] % p.dilation[0], x[0] / p.dilation[0] / p.stride[0],
                                          x[1] % p.dilation[1], x[1] / p.dilation[1] / p.stride[1]};
      const auto keys = ref_keys(p, t);
      const auto it = seen.find(grp);
      if (it == seen.end()) {
        seen.emplace(grp, keys);
      } else {
        CAPTURE(t);
        CHECK(it->second == keys);
        ++shared;
      }
    }
    if (p.stride[0] * p.stride[1] > 1) CHECK(shared > 0);  // the property was exercised
  }
}

TEST_CASE("property 4: stride == kernel with divisible shape is block-diagonal (Swin) attention",
          "[neighborhood][pattern]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {12, 10};
  p.kernel = {4, 5};
  p.stride = p.kernel;
  const index_t n = grid(p);
  auto same_tile = [&](index_t t, index_t u) {
    const auto x = coords(p, t), y = coords(p, u);
    return x[0] / 4 == y[0] / 4 && x[1] / 5 == y[1] / 5;
  };
  const auto mask = attnkit::dense_mask(p, n, n);
  std::vector<std::uint8_t> tiles(static_cast<std::size_t>(n * n));
  for (index_t t = 0; t < n; ++t)
    for (index_t u = 0; u < n; ++u) tiles[static_cast<std::size_t>(t * n + u)] = same_tile(t, u);
  for (index_t t = 0; t < n; ++t) {
    CAPTURE(t);
    CHECK(ref_keys(p, t) == mask_row(tiles, n, t));
  }
  CHECK(mask == tiles);
  // and the attention output equals softmax restricted to the tile
  const problem s = problem_of(2, 2, 1, n, 16, 8);
  const auto in = random_qkv<float>(s, gen);
  check_same_math(run_ref(p, in.q, in.k, in.v), masked_reference(tiles, 0.f, in));
}

TEST_CASE("property 7: a causal axis never uses a key with a larger coordinate", "[neighborhood][pattern][causal]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (int trial = 0; trial < 60; ++trial) {
    neighborhood<3> p = random_policy<3>(gen, 8);
    p.causal[static_cast<std::size_t>(trial % 3)] = true;  // at least one causal axis
    INFO(describe(p));
    const index_t n = grid(p);
    for (index_t t = 0; t < n; ++t) {
      const auto x = coords(p, t);
      for (index_t u : ref_keys(p, t)) {
        const auto y = coords(p, u);
        for (int a = 0; a < 3; ++a)
          if (p.causal[a]) REQUIRE(y[a] <= x[a]);
      }
    }
  }
}

TEST_CASE("reference: changing a future token never changes an earlier causal row", "[neighborhood][reference][causal]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {9, 7};
  p.kernel = {4, 3};
  p.dilation = {2, 1};
  p.stride = {2, 1};
  p.causal = {true, false};  // causal in time (axis 0), bidirectional in space
  const index_t n = grid(p);
  const problem s = problem_of(1, 2, 2, n, 8, 8);
  auto in = random_qkv<float>(s, gen);
  const auto before = run_ref(p, in.q, in.k, in.v);
  // replace every token of frames x0 >= 5
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  for (index_t t = 5 * 7; t < n; ++t)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 8; ++d) in.k.set(0, h, t, d, u(gen)), in.v.set(0, h, t, d, u(gen));
  const auto after = run_ref(p, in.q, in.k, in.v);
  index_t changed_early = 0, changed_late = 0;
  for (index_t h = 0; h < 2; ++h)
    for (index_t t = 0; t < n; ++t) {
      bool same = before.lse(h * n + t) == after.lse(h * n + t);
      for (index_t d = 0; d < 8; ++d) same = same && before.out.get(0, h, t, d) == after.out.get(0, h, t, d);
      (t < 5 * 7 ? changed_early : changed_late) += !same;
    }
  CHECK(changed_early == 0);
  CHECK(changed_late > 0);  // the change was visible to the rows allowed to see it
}

TEST_CASE("property 1: kernel == shape (any stride, non-causal) equals dense softmax", "[neighborhood][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (int trial = 0; trial < 4; ++trial) {
    neighborhood<2> p;
    p.shape = {5, 7};
    p.kernel = p.shape;
    p.stride = {std::uniform_int_distribution<index_t>(1, 5)(gen), std::uniform_int_distribution<index_t>(1, 7)(gen)};
    p.scale = trial % 2 ? 0.3f : 0.f;
    INFO(describe(p));
    const problem s = problem_of(2, 4, 2, 35, 16, 12);
    const auto in = random_qkv<float>(s, gen);
    attnkit::softmax dense;
    dense.scale = p.scale;
    check_same_math(run_ref(p, in.q, in.k, in.v), run_ref(dense, in.q, in.k, in.v));
  }
  neighborhood<3> p3;
  p3.shape = {2, 3, 4};
  p3.kernel = p3.shape;
  p3.stride = {1, 3, 2};
  const problem s = problem_of(1, 2, 1, 24, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  check_same_math(run_ref(p3, in.q, in.k, in.v), run_ref(attnkit::softmax{}, in.q, in.k, in.v));
}

TEST_CASE("property 2: 1-D causal with kernel == L (any stride) equals causal softmax", "[neighborhood][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (index_t stride : {1, 3, 40}) {
    neighborhood<1> p;
    p.shape = {40};
    p.kernel = {40};
    p.stride = {stride};
    p.causal = {true};
    INFO(describe(p));
    const problem s = problem_of(2, 2, 1, 40, 16, 16);
    const auto in = random_qkv<float>(s, gen);
    attnkit::softmax causal;
    causal.causal = true;
    check_same_math(run_ref(p, in.q, in.k, in.v), run_ref(causal, in.q, in.k, in.v));
  }
}

TEST_CASE("property 6: dilation equals NA with dilation 1 on each dilation group", "[neighborhood][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {11, 13};
  p.kernel = {3, 4};
  p.dilation = {2, 3};
  p.stride = GENERATE(std::array<index_t, 2>{1, 1}, std::array<index_t, 2>{2, 3});
  p.causal = GENERATE(std::array<bool, 2>{false, false}, std::array<bool, 2>{true, false});
  INFO(describe(p));
  const index_t n = grid(p);
  const problem s = problem_of(2, 2, 1, n, 8, 6);
  const auto in = random_qkv<float>(s, gen);
  const auto whole = run_ref(p, in.q, in.k, in.v);
  index_t compared = 0;
  for (index_t g0 = 0; g0 < 2; ++g0)
    for (index_t g1 = 0; g1 < 3; ++g1) {
      // the group's tokens (x0 % 2 == g0, x1 % 3 == g1) as a dense sub-grid, row-major
      std::vector<index_t> tokens;
      neighborhood<2> sub = p;
      sub.dilation = {1, 1};
      sub.shape = {(11 - g0 + 1) / 2, (13 - g1 + 2) / 3};
      for (index_t x0 = g0; x0 < 11; x0 += 2)
        for (index_t x1 = g1; x1 < 13; x1 += 3) tokens.push_back(token(p, {x0, x1}));
      REQUIRE(static_cast<index_t>(tokens.size()) == grid(sub));
      CAPTURE(g0, g1, describe(sub));
      const qkv<float> part{gather(in.q, tokens), gather(in.k, tokens), gather(in.v, tokens)};
      const auto r = run_ref(sub, part.q, part.k, part.v);
      for (index_t b = 0; b < 2; ++b)
        for (index_t h = 0; h < 2; ++h)
          for (std::size_t i = 0; i < tokens.size(); ++i) {
            const index_t t = tokens[i], ti = static_cast<index_t>(i);
            REQUIRE(std::abs(r.lse((b * 2 + h) * grid(sub) + ti) - whole.lse((b * 2 + h) * n + t)) <= 1e-6);
            for (index_t d = 0; d < 6; ++d)
              REQUIRE(std::abs(r.out.get(b, h, ti, d) - whole.out.get(b, h, t, d)) <= 1e-6);
            ++compared;
          }
    }
  CHECK(compared == 2 * 2 * n);
}

TEST_CASE("property 8: translation equivariance away from the borders (stride 1)", "[neighborhood][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  // grid {R0, R1}; q, k, v shifted by one token along axis 1: new(x0, x1) = old(x0, x1 + 1)
  const auto cfg = GENERATE(std::make_tuple(1, 40, 1, 5, false), std::make_tuple(1, 40, 1, 6, true),
                            std::make_tuple(6, 15, 3, 5, false), std::make_tuple(6, 15, 2, 4, true));
  neighborhood<2> p;
  p.shape = {std::get<0>(cfg), std::get<1>(cfg)};
  p.kernel = {std::get<2>(cfg), std::get<3>(cfg)};
  p.causal = {false, std::get<4>(cfg)};
  INFO(describe(p));
  const index_t n = grid(p), L1 = p.shape[1], w = p.kernel[1];
  const problem s = problem_of(1, 2, 1, n, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  qkv<float> shifted = random_qkv<float>(s, gen);  // the last column stays fresh random
  for (index_t x0 = 0; x0 < p.shape[0]; ++x0)
    for (index_t x1 = 0; x1 + 1 < L1; ++x1) {
      const index_t to = token(p, {x0, x1}), from = token(p, {x0, x1 + 1});
      for (index_t h = 0; h < 2; ++h)
        for (index_t d = 0; d < 8; ++d) shifted.q.view(0, h, to, d) = in.q.view(0, h, from, d);
      for (index_t d = 0; d < 8; ++d) {
        shifted.k.view(0, 0, to, d) = in.k.view(0, 0, from, d);
        shifted.v.view(0, 0, to, d) = in.v.view(0, 0, from, d);
      }
    }
  const auto a = run_ref(p, in.q, in.k, in.v), b = run_ref(p, shifted.q, shifted.k, shifted.v);
  // interior along axis 1: both windows (x1 in the shifted grid, x1 + 1 in the original) avoid
  // the borders and the fresh last column
  const index_t lo = p.causal[1] ? w - 1 : w / 2, hi = p.causal[1] ? L1 - 2 : L1 - 2 - (w - 1 - w / 2);
  index_t rows = 0;
  for (index_t x0 = 0; x0 < p.shape[0]; ++x0)
    for (index_t x1 = lo; x1 <= hi; ++x1) {
      const index_t t = token(p, {x0, x1}), t1 = token(p, {x0, x1 + 1});
      CAPTURE(x0, x1);
      std::vector<index_t> shifted_keys = ref_keys(p, t);
      for (index_t& u : shifted_keys) ++u;
      REQUIRE(shifted_keys == ref_keys(p, t1));
      for (index_t h = 0; h < 2; ++h) {
        REQUIRE(std::abs(b.lse(h * n + t) - a.lse(h * n + t1)) <= 1e-6);
        for (index_t d = 0; d < 8; ++d) REQUIRE(std::abs(b.out.get(0, h, t, d) - a.out.get(0, h, t1, d)) <= 1e-6);
      }
      ++rows;
    }
  CHECK(rows >= p.shape[0] * 5);
}

// ---------------------------------------------------------------------------------------------
// The reference's numbers.
// ---------------------------------------------------------------------------------------------

TEST_CASE("reference: hand-computed 1-D case with an even kernel", "[neighborhood][reference]") {
  // L = 3, w = 2: windows {0,1}, {0,1}, {1,2}. D = 1, q = 1, k = (0, ln 3, 0), v = (1, 5, 2).
  const float ln3 = static_cast<float>(std::log(3.0));
  std::vector<float> q{1.f, 1.f, 1.f}, k{0.f, ln3, 0.f}, v{1.f, 5.f, 2.f}, out(3, -1.f), lse(3, -1.f);
  neighborhood<1> p;
  p.shape = {3};
  p.kernel = {2};
  p.scale = 1;
  attnkit::options o;
  o.lse = lse.data();
  attnkit::reference::attention(p, attnkit::view_bhsd<const float>(q.data(), 1, 1, 3, 1),
                                attnkit::view_bhsd<const float>(k.data(), 1, 1, 3, 1),
                                attnkit::view_bhsd<const float>(v.data(), 1, 1, 3, 1),
                                attnkit::view_bhsd(out.data(), 1, 1, 3, 1), o);
  auto near = [](double got, double want) { return std::abs(got - want) <= 1e-6 * (1 + std::abs(want)); };
  CHECK(near(out[0], 4.0));  // weights 1/4, 3/4
  CHECK(near(out[1], 4.0));
  CHECK(near(out[2], 17.0 / 4));  // keys 1, 2: weights 3/4, 1/4
  for (float l : lse) CHECK(near(l, std::log(4.0)));
  // scale 0 is 1/sqrt(D): D = 4 with q = (1, 1, 1, 1) and k = (h, h, h, h), h = ln 3 / 2
  const float h = ln3 / 2;
  std::vector<float> q4(12, 1.f), k4{0, 0, 0, 0, h, h, h, h, 0, 0, 0, 0};
  p.scale = 0;
  attnkit::reference::attention(p, attnkit::view_bhsd<const float>(q4.data(), 1, 1, 3, 4),
                                attnkit::view_bhsd<const float>(k4.data(), 1, 1, 3, 4),
                                attnkit::view_bhsd<const float>(v.data(), 1, 1, 3, 1),
                                attnkit::view_bhsd(out.data(), 1, 1, 3, 1), o);
  CHECK(near(out[0], 4.0));
  CHECK(near(lse[2], std::log(4.0)));
}

TEMPLATE_TEST_CASE_SIG("reference output == masked softmax over dense_mask", "[neighborhood][reference]", ((int R), R),
                       1, 2, 3) {
  ATTNKIT_SEEDED_RNG(gen);
  for (int trial = 0; trial < 6; ++trial) {
    const neighborhood<R> p = random_policy<R>(gen, R == 1 ? 60 : (R == 2 ? 11 : 6));
    const index_t n = grid(p);
    INFO(describe(p));
    const problem s = problem_of(2, 4, 2, n, 12, 10);
    const auto in = random_qkv<float>(s, gen);
    check_same_math(run_ref(p, in.q, in.k, in.v), masked_reference(attnkit::dense_mask(p, n, n), p.scale, in));
  }
}

TEST_CASE("reference: GQA reads kv head h / (Hq / Hkv)", "[neighborhood][reference][gqa]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {6, 7};
  p.kernel = {3, 5};
  p.stride = {2, 1};
  const problem s = problem_of(2, 4, 2, 42, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  // explicit repetition: kv head h / 2 copied to head h
  problem r = s;
  r.Hkv = 4;
  auto k4 = random_tensor<float>(r.k_ext(), layout::bhsd, gen), v4 = random_tensor<float>(r.v_ext(), layout::bhsd, gen);
  k4.for_each([&](index_t b, index_t h, index_t t, index_t d) { k4.view(b, h, t, d) = in.k.view(b, h / 2, t, d); });
  v4.for_each([&](index_t b, index_t h, index_t t, index_t d) { v4.view(b, h, t, d) = in.v.view(b, h / 2, t, d); });
  const auto a = run_ref(p, in.q, in.k, in.v), b = run_ref(p, in.q, k4, v4);
  CHECK(same_bits(a.out, b.out));
  CHECK(same_bits(a.lse_mem, b.lse_mem));
}

TEST_CASE("reference: B = 0 writes nothing", "[neighborhood][reference][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<1> p;
  p.shape = {5};
  p.kernel = {3};
  problem s = problem_of(0, 2, 1, 5, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
  const auto before = out;
  CHECK_NOTHROW(attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view));
  CHECK(same_bits(before, out));
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

namespace {

/// Calls attention (Fast) or reference::attention with policy p on q/k/v of N tokens
/// (Nq and Nk may differ) and checks attnkit::error mentioning `what`, out and lse untouched.
template <bool Fast, int R>
void expect_rejected(const neighborhood<R>& p, index_t nq, index_t nk, const std::string& what, std::mt19937& gen) {
  INFO(describe(p) << " Nq=" << nq << " Nk=" << nk << " expecting an error mentioning '" << what << "'"
                   << (Fast ? " (attention)" : " (reference)"));
  problem s;
  s.Hq = 2, s.Hkv = 1, s.Nq = nq, s.Nk = nk, s.D = 8, s.Dv = 8;
  check_rejected<Fast>(p, s, what, gen);
}

/// Every rejection the spec lists, through attention (Fast) or reference::attention.
template <bool Fast>
void expect_all_rejections(std::mt19937& gen) {
  neighborhood<2> ok;
  ok.shape = {4, 5};
  ok.kernel = {3, 3};
  auto with = [&](auto f) {
    neighborhood<2> p = ok;
    f(p);
    return p;
  };
  expect_rejected<Fast>(ok, 21, 21, "prod(shape)", gen);  // grid product != N
  expect_rejected<Fast>(ok, 20, 21, "k.seq()", gen);      // Nq != Nk (NA is self-attention)
  expect_rejected<Fast>(ok, 21, 20, "q.seq()", gen);
  expect_rejected<Fast>(with([](auto& p) { p.kernel = {5, 3}; }), 20, 20, "kernel[0]", gen);      // kernel > shape
  expect_rejected<Fast>(with([](auto& p) { p.dilation = {1, 2}; }), 20, 20, "dilation[1]", gen);  // 3 * 2 > 5
  expect_rejected<Fast>(with([](auto& p) { p.stride = {1, 4}; }), 20, 20, "stride[1]", gen);      // stride > kernel
  expect_rejected<Fast>(with([](auto& p) { p.stride = {0, 1}; }), 20, 20, "stride[0]", gen);
  expect_rejected<Fast>(with([](auto& p) { p.dilation = {0, 1}; }), 20, 20, "dilation[0]", gen);
  expect_rejected<Fast>(with([](auto& p) { p.kernel = {3, 0}; }), 20, 20, "kernel[1]", gen);
  expect_rejected<Fast>(with([](auto& p) { p.kernel = {-1, 3}; }), 20, 20, "kernel[0]", gen);
  expect_rejected<Fast>(with([](auto& p) { p.shape = {0, 5}; }), 0, 0, "shape[0]", gen);
  expect_rejected<Fast>(with([](auto& p) { p.scale = std::numeric_limits<float>::quiet_NaN(); }), 20, 20, "scale", gen);
  neighborhood<1> one;
  one.shape = {10};
  one.kernel = {4};
  one.dilation = {3};  // 4 * 3 > 10
  expect_rejected<Fast>(one, 10, 10, "dilation[0]", gen);
  neighborhood<3> three;
  three.shape = {2, 3, 4};
  three.kernel = {1, 1, 1};
  expect_rejected<Fast>(three, 23, 23, "prod(shape)", gen);
}

}  // namespace

TEST_CASE("reference: bad policies throw attnkit::error, out untouched", "[neighborhood][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  expect_all_rejections<false>(gen);
  neighborhood<2> bad;
  bad.shape = {4, 5};
  bad.kernel = {3, 3};
  bad.stride = {4, 1};
  CHECK_THROWS_AS(attnkit::dense_mask(bad, 20, 20), attnkit::error);
  bad.stride = {1, 1};
  CHECK_THROWS_AS(attnkit::dense_mask(bad, 21, 21), attnkit::error);
  CHECK_NOTHROW(attnkit::dense_mask(bad, 20, 20));
  // kernel == shape and kernel == 1 are legal (the latter a documented relaxation of NATTEN)
  neighborhood<2> edge;
  edge.shape = {4, 5};
  edge.kernel = {4, 1};
  edge.stride = {4, 1};
  const auto mask = attnkit::dense_mask(edge, 20, 20);
  for (index_t t = 0; t < 20; ++t) CHECK(ref_keys(edge, t).size() == 4);
  CHECK(std::count(mask.begin(), mask.end(), 1) == 20 * 4);
}

// ---------------------------------------------------------------------------------------------
// Fast path vs reference (attnkit::attention).
// ---------------------------------------------------------------------------------------------

TEST_CASE("fast: 1-D L = 203, kernel 17 (dilation, stride, causal, even kernel) matches reference",
          "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto cfg = GENERATE(std::make_tuple(17, 1, 1, false), std::make_tuple(17, 3, 1, false),
                            std::make_tuple(17, 1, 5, false), std::make_tuple(17, 1, 1, true),
                            std::make_tuple(17, 2, 4, true), std::make_tuple(16, 1, 1, false),
                            std::make_tuple(16, 5, 16, false), std::make_tuple(203, 1, 7, true),
                            std::make_tuple(1, 1, 1, false));
  neighborhood<1> p;
  p.shape = {203};
  p.kernel = {std::get<0>(cfg)};
  p.dilation = {std::get<1>(cfg)};
  p.stride = {std::get<2>(cfg)};
  p.causal = {std::get<3>(cfg)};
  fast_vs_reference<float>(p, problem_of(2, 4, 2, 203, 32, 24), gen);
}

TEST_CASE("fast: 2-D 23x19, kernel 7x5, dilation {2,3}, stride {2,1}, causal combinations match reference",
          "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {23, 19};
  p.kernel = {7, 5};
  p.causal = GENERATE(std::array<bool, 2>{false, false}, std::array<bool, 2>{true, false},
                      std::array<bool, 2>{false, true}, std::array<bool, 2>{true, true});
  const int variant = GENERATE(0, 1, 2, 3);
  if (variant & 1) p.dilation = {2, 3};
  if (variant & 2) p.stride = {2, 1};
  fast_vs_reference<float>(p, problem_of(2, 4, 2, 23 * 19, 32, 32), gen);
}

TEST_CASE("fast: 2-D even kernels, blocked (stride == kernel) and kernel == shape match reference",
          "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const int which = GENERATE(0, 1, 2, 3);
  neighborhood<2> p;
  p.shape = {23, 19};
  if (which == 0) p.kernel = {6, 4};
  if (which == 1) p.kernel = {7, 5}, p.stride = {7, 5};
  if (which == 2) p.kernel = {23, 19}, p.stride = {3, 19};
  if (which == 3) p.kernel = {8, 8}, p.stride = {8, 4}, p.causal = {true, false};
  fast_vs_reference<float>(p, problem_of(1, 2, 1, 23 * 19, 64, 64), gen);
}

TEST_CASE("fast: 3-D 5x9x11 matches reference", "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const int which = GENERATE(0, 1, 2, 3, 4);
  neighborhood<3> p;
  p.shape = {5, 9, 11};
  p.kernel = {3, 5, 7};
  if (which == 1) p.stride = {1, 2, 3};
  if (which == 2) p.causal = {true, false, false};
  if (which == 3) p.kernel = {3, 3, 5}, p.dilation = {1, 3, 2};
  if (which == 4) p.kernel = {2, 4, 6}, p.dilation = {2, 2, 1}, p.stride = {2, 3, 6}, p.causal = {true, true, true};
  fast_vs_reference<float>(p, problem_of(2, 4, 2, 5 * 9 * 11, 16, 16), gen);
}

TEST_CASE("fast: random policies on both engine paths (strips and block-sparse tiles) match reference",
          "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  int on_strips = 0, on_tiles = 0;
  for (int trial = 0; trial < 24; ++trial) {
    neighborhood<2> p = random_policy<2>(gen, 40);
    if (trial % 3 == 0) {  // long rows with a long window: the tiles' side
      p.shape = {3, 400}, p.kernel = {2, 150 + trial}, p.dilation = {1, 1}, p.stride = {1, 1};
    }
    (attnkit::detail::flash::strips::preferred(p) ? on_strips : on_tiles) += 1;
    fast_vs_reference<float>(p, problem_of(1, 2, 1, p.shape[0] * p.shape[1], 24, 16), gen);
  }
  INFO("strips " << on_strips << ", tiles " << on_tiles);
  CHECK(on_tiles > 0);
  CHECK(on_strips > 0);
}

TEST_CASE("fast: GQA / MQA head mappings and Dv != D match reference", "[neighborhood][fast][gqa]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto heads = GENERATE(std::make_pair(4, 2), std::make_pair(6, 1), std::make_pair(3, 3));
  neighborhood<2> p;
  p.shape = {13, 17};
  p.kernel = {5, 7};
  p.dilation = {2, 1};
  fast_vs_reference<float>(p, problem_of(2, heads.first, heads.second, 13 * 17, 40, 24), gen);
  p.causal = {true, true};
  p.scale = 0.25f;
  fast_vs_reference<float>(p, problem_of(1, heads.first, heads.second, 13 * 17, 24, 40), gen);
}

TEST_CASE("fast: bf16 inputs and outputs, strided layouts match reference", "[neighborhood][fast][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {23, 19};
  p.kernel = {7, 5};
  p.dilation = {2, 3};
  p.stride = {2, 1};
  p.causal = {true, false};
  const problem s = problem_of(1, 4, 2, 23 * 19, 64, 64);
  for_each_bf16_way([&] {
    fast_vs_reference<bf16, float>(p, s, gen);
    fast_vs_reference<bf16, bf16>(p, s, gen, layout::bshd);
  });
  fast_vs_reference<float, float>(p, s, gen, layout::strided);
  neighborhood<1> p1;
  p1.shape = {203};
  p1.kernel = {17};
  fast_vs_reference<bf16, bf16>(p1, problem_of(2, 2, 1, 203, 32, 32), gen, layout::strided);
}

/// The fast path on one thread and on `threads`: bitwise identical out and lse, and both match
/// the reference.
template <int Rank>
void check_thread_counts_agree(const neighborhood<Rank>& p, const problem& s, int threads, std::mt19937& gen) {
  const auto in = random_qkv<float>(s, gen);
  const auto one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
  const auto many = run_fast(p, in.q, in.k, in.v, layout::bhsd, threads);
  CHECK(same_bits(one.out, many.out));
  CHECK(same_bits(one.lse_mem, many.lse_mem));
  check_matches(one, run_ref(p, in.q, in.k, in.v), float_tol);
}

TEST_CASE("fast: threads = 1 and 2 give bitwise identical out and lse", "[neighborhood][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<3> p;
  p.shape = {5, 9, 11};
  p.kernel = {3, 5, 7};
  p.stride = {1, 2, 1};
  p.causal = {true, false, false};
  check_thread_counts_agree(p, problem_of(2, 4, 2, 495, 32, 32), 2, gen);
}

TEST_CASE("fast: strip bands across dilation groups and sweeps split into chunks match reference, bitwise "
          "for any thread count",
          "[neighborhood][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto shape = GENERATE(0, 1, 2);
  neighborhood<2> p;
  if (shape == 0) p.shape = {200, 40}, p.kernel = {5, 5};  // one band, a long sweep: chunks follow threads
  if (shape == 1) p.shape = {40, 300}, p.kernel = {3, 7}, p.dilation = {1, 2};  // groups too wide to share a band
  if (shape == 2) p.shape = {9, 60}, p.kernel = {3, 5}, p.dilation = {1, 10}, p.causal = {false, true};  // 10 groups
  REQUIRE(attnkit::detail::flash::strips::preferred(p));
  check_thread_counts_agree(p, problem_of(1, 2, 1, p.shape[0] * p.shape[1], 32, 24), 3, gen);
}

TEST_CASE("fast: strips in bands of 4, where a band of 8 would keep its lines in more than half the L2, match "
          "reference",
          "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {9, 150};  // bands of 4, 4 and 2 strips
  p.kernel = {7, 13};
  REQUIRE(attnkit::detail::flash::strips::preferred(p));
  attnkit::detail::flash::problem wide{}, narrow{};
  wide.d = wide.dv = 512;  // 12 lines x (8 W + 44) positions x 4 KiB: 3.7-8.5 MB
  narrow.d = narrow.dv = 8;
  REQUIRE(attnkit::detail::flash::strips::strips_per_band(p, wide) == 4);
  CHECK(attnkit::detail::flash::strips::strips_per_band(p, narrow) == 8);
  fast_vs_reference<float>(p, problem_of(1, 2, 1, 9 * 150, 512, 512), gen);
}

TEST_CASE("fast: 3-D sweeps along z run by one worker, keeping the last sweep's lines, match reference, bitwise "
          "for any thread count",
          "[neighborhood][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<3> p;
  p.shape = {12, 10, 20};
  p.kernel = {3, 5, 7};
  p.dilation = GENERATE(std::array<index_t, 3>{1, 1, 1}, std::array<index_t, 3>{2, 1, 1}, std::array<index_t, 3>{3, 2, 2});
  p.causal = {GENERATE(false, true), false, false};
  check_thread_counts_agree(p, problem_of(1, 2, 1, 12 * 10 * 20, 32, 32), 3, gen);
}

TEST_CASE("fast: outputs of 8 MiB, written with streaming stores when their rows are 64-byte aligned, equal the "
          "cached stores bitwise and match reference",
          "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> p;
  p.shape = {128, 128};
  p.kernel = {7, 7};
  p.dilation = GENERATE(std::array<index_t, 2>{1, 1}, std::array<index_t, 2>{2, 2});
  const problem s = problem_of(1, 2, 1, 128 * 128, 64, 64);  // 2 x 16384 x 64 float outputs: 8 MiB
  const auto in = random_qkv<float>(s, gen);
  const std::size_t n = static_cast<std::size_t>(s.Hq * s.Nq * s.Dv);
  // Rows at a multiple of 64 bytes (streamed), and 4 bytes past one (stored through the cache).
  std::vector<float> mem(2 * n + 32, -777.f);
  float* aligned = mem.data() + (16 - reinterpret_cast<std::uintptr_t>(mem.data()) / sizeof(float) % 16) % 16;
  float* unaligned = aligned + n + 17;
  result<float> streamed = make_result<float>(s, layout::bhsd);
  std::vector<float> cached_lse(streamed.lse_mem.size(), -777.f);
  attnkit::options o;
  o.threads = 2;
  for (float* out : {aligned, unaligned}) {
    o.lse = out == aligned ? streamed.lse_ptr() : cached_lse.data() + guard;
    attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), attnkit::view_bhsd(out, 1, s.Hq, s.Nq, s.Dv), o);
  }
  CHECK(std::memcmp(aligned, unaligned, n * sizeof(float)) == 0);
  CHECK(same_bits(streamed.lse_mem, cached_lse));
  CHECK(std::all_of(aligned + n, unaligned, [](float x) { return x == -777.f; }));  // nothing past the end
  streamed.out.for_each([&](index_t, index_t h, index_t t, index_t c) {
    streamed.out.view(0, h, t, c) = aligned[static_cast<std::size_t>((h * s.Nq + t) * s.Dv + c)];
  });
  check_matches(streamed, run_ref(p, in.q, in.k, in.v), float_tol);
}

/// Attention with NaN in the keys of `poisoned` tokens; every query whose window holds none of
/// them matches the reference (which attends to exactly its window), and there are some.
template <int R>
void check_nan_keys_stay_in_their_windows(const neighborhood<R>& p, std::mt19937& gen) {
  INFO(describe(p));
  const index_t n = grid(p);
  const problem s = problem_of(1, 2, 1, n, 24, 16);
  qkv<float> in = random_qkv<float>(s, gen);
  std::vector<bool> poisoned(static_cast<std::size_t>(n), false);
  std::uniform_int_distribution<index_t> pick(0, n - 1);
  for (int i = 0; i < 6; ++i) {
    const index_t t = pick(gen);
    poisoned[static_cast<std::size_t>(t)] = true;
    in.k.view(0, 0, t, 5) = std::numeric_limits<float>::quiet_NaN();
  }
  const result<float> fast = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);  // one worker: every band in one cache
  const result<float> ref = run_ref(p, in.q, in.k, in.v);
  index_t clean = 0, mismatched = 0;
  for (index_t t = 0; t < n; ++t) {
    const std::vector<index_t> keys = ref_keys(p, t);
    if (std::any_of(keys.begin(), keys.end(), [&](index_t k) { return poisoned[static_cast<std::size_t>(k)]; }))
      continue;
    ++clean;
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t c = 0; c < s.Dv; ++c) {
        const double want = ref.out.view(0, h, t, c), got = fast.out.view(0, h, t, c);
        mismatched += !(std::abs(got - want) <= float_tol.atol + float_tol.rtol * std::abs(want));
      }
  }
  CHECK(clean > n / 4);
  CHECK(mismatched == 0);
}

TEST_CASE("fast: NaN keys reach no query whose window misses them (strips read past windows only in masked or "
          "unwritten lanes)",
          "[neighborhood][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  neighborhood<2> causal_rows;  // partial last strip; causal lanes read offsets past their window
  causal_rows.shape = {12, 45}, causal_rows.kernel = {3, 7}, causal_rows.causal = {false, true};
  neighborhood<2> dilated;  // dilation groups of 17, 17 and 16 positions: segments of different widths
  dilated.shape = {10, 50}, dilated.kernel = {3, 5}, dilated.dilation = {1, 3};
  neighborhood<3> volume;
  volume.shape = {4, 6, 37}, volume.kernel = {3, 3, 5}, volume.causal = {false, false, true};
  REQUIRE(attnkit::detail::flash::strips::preferred(causal_rows));
  REQUIRE(attnkit::detail::flash::strips::preferred(dilated));
  REQUIRE(attnkit::detail::flash::strips::preferred(volume));
  for (int trial = 0; trial < 4; ++trial) {
    check_nan_keys_stay_in_their_windows(causal_rows, gen);
    check_nan_keys_stay_in_their_windows(dilated, gen);
    check_nan_keys_stay_in_their_windows(volume, gen);
  }
}

TEST_CASE("fast: bad policies throw attnkit::error, out untouched", "[neighborhood][fast][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  expect_all_rejections<true>(gen);
}
