// Radial attention (token mode and the released official_blocks mask): the spec's properties
// and known cases on the float64 reference (reference/radial.hpp) and on dense_mask (the
// variant's rule), the reference's rules against dense_mask, validation, and ("fast: " cases)
// attnkit::attention against the reference on fresh random inputs.
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
using mode = attnkit::radial::mode_kind;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

std::string describe(const attnkit::radial& p) {
  std::ostringstream o;
  o << "radial{frames=" << p.frames << " tokens_per_frame=" << p.tokens_per_frame << " sink_frames=" << p.sink_frames
    << " mode=" << (p.mode == mode::token ? "token" : "official_blocks") << " block_size=" << p.block_size
    << " decay_factor=" << p.decay_factor << " causal=" << p.causal << " scale=" << p.scale << "}";
  return o.str();
}

attnkit::radial make_radial(index_t f, index_t s, index_t sink = 0, mode m = mode::token, index_t b = 128,
                            float gamma = 1.f, bool causal = false) {
  attnkit::radial p;
  p.frames = f, p.tokens_per_frame = s, p.sink_frames = sink, p.mode = m, p.block_size = b, p.decay_factor = gamma,
  p.causal = causal;
  return p;
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t N, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = N, s.Nk = N, s.D = D, s.Dv = Dv;
  return s;
}

std::uint8_t at(const std::vector<std::uint8_t>& m, index_t n, index_t i, index_t j) {
  return m[static_cast<std::size_t>(i * n + j)];
}

/// The reference's own rule as a dense n x n mask.
std::vector<std::uint8_t> reference_mask(const attnkit::radial& p, index_t n) {
  const std::vector<std::uint8_t> bm = p.mode == mode::official_blocks
                                           ? attnkit::reference::detail::radial_official_block_mask(p, n)
                                           : std::vector<std::uint8_t>{};
  std::vector<std::uint8_t> m(static_cast<std::size_t>(n * n));
  for (index_t q = 0; q < n; ++q)
    for (index_t t = 0; t < n; ++t) m[static_cast<std::size_t>(q * n + t)] = attnkit::reference::detail::radial_visible(p, bm, n, q, t);
  return m;
}

/// The tile mask of a dense mask over b x b tiles (a tile is kept if any of its pairs is),
/// and whether every tile is uniform (all kept or none) within the first `uniform_upto` tokens.
struct tiles {
  index_t nb = 0, kept = 0;
  std::vector<std::uint8_t> bm;
  bool uniform = true;
};
tiles tiles_of(const std::vector<std::uint8_t>& m, index_t n, index_t b, index_t uniform_upto) {
  tiles t;
  t.nb = (n + b - 1) / b;
  t.bm.assign(static_cast<std::size_t>(t.nb * t.nb), 0);
  for (index_t u = 0; u < t.nb; ++u)
    for (index_t w = 0; w < t.nb; ++w) {
      index_t any = 0, in_any = 0, in_all = 1;  // in_*: over pairs below uniform_upto only
      for (index_t q = u * b; q < std::min(n, u * b + b); ++q)
        for (index_t k = w * b; k < std::min(n, w * b + b); ++k) {
          any |= at(m, n, q, k);
          if (q >= uniform_upto || k >= uniform_upto) continue;
          in_any |= at(m, n, q, k);
          in_all &= at(m, n, q, k);
        }
      t.bm[static_cast<std::size_t>(u * t.nb + w)] = static_cast<std::uint8_t>(any);
      t.kept += any;
      if (u * b < uniform_upto && w * b < uniform_upto) t.uniform = t.uniform && in_any == in_all;
    }
  return t;
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

index_t count(const std::vector<std::uint8_t>& m) { return static_cast<index_t>(std::count(m.begin(), m.end(), 1)); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Token mode: the pattern.
// ---------------------------------------------------------------------------------------------

TEST_CASE("reference rules == dense_mask on random configurations (both modes, sink, globals, causal)",
          "[radial][pattern]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<index_t> fr(1, 9), tpf(1, 40), sink(0, 3), extra(0, 9), bs(1, 48);
  std::uniform_real_distribution<float> gamma(0.1f, 2.f);
  std::uniform_int_distribution<int> coin(0, 1);
  for (int trial = 0; trial < 120; ++trial) {
    const bool official = trial % 2 == 1;
    const index_t f = fr(gen), s = tpf(gen), n = f * s + extra(gen);
    // official_blocks needs b <= N (a block larger than the sequence is refused)
    const attnkit::radial p = make_radial(f, s, sink(gen), official ? mode::official_blocks : mode::token,
                                          std::min(bs(gen), n), gamma(gen), coin(gen) == 1);
    INFO(describe(p) << " N=" << n);
    const auto mask = attnkit::dense_mask(p, n, n);
    const auto ref = reference_mask(p, n);
    REQUIRE(mask.size() == ref.size());
    index_t diff = 0, first = -1;
    for (std::size_t e = 0; e < ref.size(); ++e)
      if (mask[e] != ref[e] && diff++ == 0) first = static_cast<index_t>(e);
    INFO("differing pairs: " << diff << "; first (q, t) = (" << first / n << ", " << first % n << ")");
    REQUIRE(diff == 0);
  }
}

TEST_CASE("property 1: frames = 1 is dense attention (token mode, any s)", "[radial][pattern][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (index_t s : {1, 7, 40}) {
    for (index_t extra : {0, 5}) {
      attnkit::radial p = make_radial(1, s, 0);
      const index_t n = s + extra;
      INFO(describe(p) << " N=" << n);
      CHECK(count(attnkit::dense_mask(p, n, n)) == n * n);
      CHECK(count(reference_mask(p, n)) == n * n);
      const problem pr = make_problem(2, 2, 1, n, 16, 8);
      const auto in = random_qkv<float>(pr, gen);
      check_same_math(run_ref(p, in.q, in.k, in.v), run_ref(attnkit::softmax{}, in.q, in.k, in.v));
      p.causal = true;
      attnkit::softmax causal;
      causal.causal = true;
      check_same_math(run_ref(p, in.q, in.k, in.v), run_ref(causal, in.q, in.k, in.v));
    }
  }
  // official_blocks with whole tiles per frame is dense too
  const attnkit::radial ob = make_radial(1, 64, 0, mode::official_blocks, 32);
  CHECK(count(attnkit::dense_mask(ob, 64, 64)) == 64 * 64);
}

TEST_CASE("properties 2 and 3: band widths per frame distance, sparse diagonal beyond s", "[radial][pattern]") {
  // Spec: d <= 1 whole frame; d in [2^r, 2^(r+1)) with 2^r <= s: the positions within
  // s / 2^r - 1 of x (clipped to the frame); 2^r > s: only y = x, in every ceil(2^r / s)-th frame.
  for (index_t s : {16, 12}) {
    const index_t f = 40, n = f * s;
    const attnkit::radial p = make_radial(f, s, 0);
    INFO(describe(p));
    const auto mask = attnkit::dense_mask(p, n, n);
    index_t band_rows = 0, diag_rows = 0;
    for (index_t i = 0; i < f; ++i)
      for (index_t x = 0; x < s; ++x)
        for (index_t j = 0; j < f; ++j) {
          const index_t d = i > j ? i - j : j - i;
          index_t two_r = 1;
          while (2 * two_r <= std::max<index_t>(d, 1)) two_r *= 2;
          std::vector<index_t> want;
          if (d <= 1) {
            for (index_t y = 0; y < s; ++y) want.push_back(y);
          } else if (two_r <= s) {
            const index_t hw = s / two_r - 1;
            for (index_t y = std::max<index_t>(0, x - hw); y <= std::min(s - 1, x + hw); ++y) want.push_back(y);
            ++band_rows;
          } else {
            if (d % ((two_r + s - 1) / s) == 0) want.push_back(x);
            ++diag_rows;
          }
          std::vector<index_t> got;
          for (index_t y = 0; y < s; ++y)
            if (at(mask, n, i * s + x, j * s + y)) got.push_back(y);
          CAPTURE(i, x, j, d);
          REQUIRE(got == want);
        }
    CHECK(band_rows > 0);
    CHECK(diag_rows > 0);
    // property 3: the kept count of the frame's middle query never increases with d
    index_t last = s + 1;
    const index_t x = s / 2;
    for (index_t d = 0; d < f && d <= s; ++d) {
      index_t c = 0;
      for (index_t y = 0; y < s; ++y) c += at(mask, n, x, d * s + y);
      CAPTURE(d, c);
      CHECK(c <= last);
      last = c;
    }
  }
}

TEST_CASE("property 4: token mode without sink and global tokens is symmetric", "[radial][pattern]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<index_t> fr(1, 20), tpf(1, 24);
  for (int trial = 0; trial < 40; ++trial) {
    const attnkit::radial p = make_radial(fr(gen), tpf(gen), 0);
    const index_t n = p.frames * p.tokens_per_frame;
    INFO(describe(p));
    const auto m = attnkit::dense_mask(p, n, n);
    for (index_t q = 0; q < n; ++q)
      for (index_t t = 0; t < q; ++t) REQUIRE(at(m, n, q, t) == at(m, n, t, q));
  }
}

TEST_CASE("property 5: every query keeps every token of the sink frames (clamped to f)", "[radial][pattern]") {
  for (index_t sink : {1, 2, 50}) {
    const attnkit::radial p = make_radial(20, 8, sink);
    const index_t n = 20 * 8 + 3;
    INFO(describe(p));
    const auto m = attnkit::dense_mask(p, n, n);
    const auto r = reference_mask(p, n);
    const index_t visible = std::min<index_t>(sink, 20) * 8;
    for (index_t q = 0; q < n; ++q)
      for (index_t t = 0; t < visible; ++t) {
        REQUIRE(at(m, n, q, t) == 1);
        REQUIRE(at(r, n, q, t) == 1);
      }
    if (sink > 20) CHECK(count(m) == n * n);
    if (sink == 1) CHECK(count(m) < n * n);  // the sink is not everything
  }
  // official_blocks, frames of whole tiles: the sink frame's tiles are kept
  const attnkit::radial ob = make_radial(8, 64, 1, mode::official_blocks, 32);
  const auto m = attnkit::dense_mask(ob, 512, 512);
  for (index_t q = 0; q < 512; ++q)
    for (index_t t = 0; t < 64; ++t) REQUIRE(at(m, 512, q, t) == 1);
}

TEST_CASE("global tokens keep and are kept by everything; causal is the non-causal mask below the diagonal",
          "[radial][pattern]") {
  for (mode md : {mode::token, mode::official_blocks}) {
    attnkit::radial p = make_radial(6, 40, 1, md, 16, 0.5f);
    const index_t nv = 240, n = 263;
    INFO(describe(p));
    const auto m = attnkit::dense_mask(p, n, n);
    for (index_t q = 0; q < n; ++q)
      for (index_t t = 0; t < n; ++t)
        if (q >= nv || t >= nv) REQUIRE(at(m, n, q, t) == 1);
    CHECK(count(m) < n * n);
    p.causal = true;
    const auto c = attnkit::dense_mask(p, n, n);
    for (index_t q = 0; q < n; ++q)
      for (index_t t = 0; t < n; ++t) REQUIRE(at(c, n, q, t) == (t <= q ? at(m, n, q, t) : 0));
  }
}

TEST_CASE("property 7: kept pairs grow like n log n (doubling f at fixed s less than quadruples them)",
          "[radial][pattern]") {
  for (index_t s : {8, 16}) {
    index_t prev = 0;
    double prev_ratio = 4;
    for (index_t f : {8, 16, 32, 64}) {
      if (f * s > 512) break;
      const attnkit::radial p = make_radial(f, s, 0);
      const index_t n = f * s;
      const index_t kept = count(attnkit::dense_mask(p, n, n));
      CAPTURE(s, f, kept);
      CHECK(static_cast<double>(kept) <= 4.0 * double(s) * double(s) * double(f) * std::log2(double(f)));  // Eq. 6
      if (prev) {
        const double ratio = static_cast<double>(kept) / static_cast<double>(prev);
        CAPTURE(ratio);
        CHECK(ratio < 4.0);
        CHECK(ratio > 2.0);
        CHECK(ratio <= prev_ratio);
        prev_ratio = ratio;
      }
      prev = kept;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// official_blocks mode: known block masks.
// ---------------------------------------------------------------------------------------------

TEST_CASE("official_blocks: f = 12, s = 64, b = 32, gamma = 1, no sink keeps 48 of 24 x 24 tiles", "[radial][official]") {
  const attnkit::radial p = make_radial(12, 64, 0, mode::official_blocks, 32, 1.f);
  const index_t n = 768;
  const auto m = attnkit::dense_mask(p, n, n);
  const tiles t = tiles_of(m, n, 32, n);
  REQUIRE(t.nb == 24);
  CHECK(t.uniform);
  CHECK(t.kept == 48);
  // which ones: P2 = 128, so frames at distance 1 already fall to the every-2nd-frame rule
  // (d mod 2 != 0) and farther ones too: only each frame's own 2 x 2 tiles remain
  for (index_t u = 0; u < 24; ++u)
    for (index_t w = 0; w < 24; ++w) CHECK(t.bm[static_cast<std::size_t>(u * 24 + w)] == (u / 2 == w / 2));
  CHECK(attnkit::reference::detail::radial_official_block_mask(p, n) == t.bm);
}

TEST_CASE("official_blocks: f = 4, s = 128, b = 32: band tiles, the density rule and decay_factor",
          "[radial][official]") {
  // Worked by hand from the spec's pseudocode: P2 = 256. d = 0, 1: every 4 x 4 tile of the frame
  // pair. d = 2: Lp = 64 < 128, every 2nd frame, 2 mod 2 == 0 kept, width = max(64 gamma, 32):
  // gamma 1 -> tiles with |u - w| <= 2 (the |u - w| = 2 tiles keep 22 of 32 columns above 1/3
  // density: 0.69 > 0.6); gamma 0.5 (width 32) -> |u - w| <= 1. d = 3: 3 mod 2 != 0, dropped.
  for (float gamma : {1.f, 0.5f}) {
    const attnkit::radial p = make_radial(4, 128, 0, mode::official_blocks, 32, gamma);
    const index_t n = 512;
    INFO(describe(p));
    const auto m = attnkit::dense_mask(p, n, n);
    const tiles t = tiles_of(m, n, 32, n);
    REQUIRE(t.nb == 16);
    CHECK(t.uniform);
    const index_t reach = gamma == 1.f ? 2 : 1;
    for (index_t u = 0; u < 16; ++u)
      for (index_t w = 0; w < 16; ++w) {
        const index_t d = u / 4 > w / 4 ? u / 4 - w / 4 : w / 4 - u / 4;
        const index_t du = u % 4 > w % 4 ? u % 4 - w % 4 : w % 4 - u % 4;
        const bool want = d <= 1 || (d == 2 && du <= reach);
        CAPTURE(u, w);
        CHECK(bool(t.bm[static_cast<std::size_t>(u * 16 + w)]) == want);
      }
    CHECK(t.kept == (gamma == 1.f ? 216 : 200));
    CHECK(attnkit::reference::detail::radial_official_block_mask(p, n) == t.bm);
  }
}

TEST_CASE("official_blocks: f = 8, s = 256, b = 128: distances 0-4 and 6 kept, 5 and 7 dropped", "[radial][official]") {
  // P2 = 512: d <= 3 have Lp >= 128 (kept, width >= 128 covers the 2 x 2 tiles); d = 4..7 have
  // Lp = 64: every 2nd frame, so d = 4 and 6 are kept and 5, 7 are not. 56 frame pairs x 4 tiles.
  const attnkit::radial p = make_radial(8, 256, 0, mode::official_blocks, 128, 1.f);
  const index_t n = 2048;
  const auto bm = attnkit::reference::detail::radial_official_block_mask(p, n);
  const auto m = attnkit::dense_mask(p, n, n);
  const tiles t = tiles_of(m, n, 128, n);
  CHECK(t.uniform);
  CHECK(t.bm == bm);
  CHECK(t.kept == 224);
  for (index_t u = 0; u < 16; ++u)
    for (index_t w = 0; w < 16; ++w) {
      const index_t d = u / 2 > w / 2 ? u / 2 - w / 2 : w / 2 - u / 2;
      CAPTURE(u, w, d);
      CHECK(bool(bm[static_cast<std::size_t>(u * 16 + w)]) == (d <= 4 || d == 6));
    }
}

TEST_CASE("official_blocks: frames not aligned to tiles (s mod b != 0): reference port == dense_mask tiles",
          "[radial][official]") {
  const auto cfg = GENERATE(std::make_tuple(10, 50, 32, 1.f, 0), std::make_tuple(10, 50, 32, 0.5f, 1),
                            std::make_tuple(6, 40, 16, 1.f, 0), std::make_tuple(5, 200, 64, 0.8f, 1),
                            std::make_tuple(12, 72, 32, 0.95f, 2));
  const attnkit::radial p = make_radial(std::get<0>(cfg), std::get<1>(cfg), std::get<4>(cfg), mode::official_blocks,
                                        std::get<2>(cfg), std::get<3>(cfg));
  const index_t nv = p.frames * p.tokens_per_frame, n = nv + 7;
  INFO(describe(p) << " N=" << n);
  const auto bm = attnkit::reference::detail::radial_official_block_mask(p, n);
  const auto m = attnkit::dense_mask(p, n, n);
  // on video tokens the mask is BM expanded to tiles; globals are dense
  index_t diff = 0;
  const index_t b = p.block_size, nb = (n + b - 1) / b;
  REQUIRE(bm.size() == static_cast<std::size_t>(nb * nb));
  for (index_t q = 0; q < n; ++q)
    for (index_t t = 0; t < n; ++t) {
      const bool want = q >= nv || t >= nv || bm[static_cast<std::size_t>((q / b) * nb + t / b)];
      diff += bool(at(m, n, q, t)) != want;
    }
  CHECK(diff == 0);
  CHECK(tiles_of(m, n, b, nv / b * b).uniform);
}

TEST_CASE("official_blocks can leave a query with no key: zeros and lse -inf", "[radial][official][edge]") {
  // f = 1, s = 33, b = 16: the last frame row (token 32) is alone in its tile; every tile of
  // that tile row has column density 1/16 <= 1/3, so none is kept (the release's heuristic).
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::radial p = make_radial(1, 33, 0, mode::official_blocks, 16);
  const auto m = attnkit::dense_mask(p, 33, 33);
  for (index_t t = 0; t < 33; ++t) CHECK(at(m, 33, 32, t) == 0);
  CHECK(at(m, 33, 0, 32) == 1);  // token 32 is still a key of the rows above
  const problem s = make_problem(1, 2, 1, 33, 8, 8);
  const auto in = random_qkv<float>(s, gen);
  const auto r = run_ref(p, in.q, in.k, in.v);
  for (index_t h = 0; h < 2; ++h) {
    CHECK(r.lse(h * 33 + 32) == -inf);
    for (index_t d = 0; d < 8; ++d) CHECK(r.out.get(0, h, 32, d) == 0.f);
    CHECK(std::isfinite(r.lse(h * 33 + 31)));
  }
}

// ---------------------------------------------------------------------------------------------
// The reference's numbers.
// ---------------------------------------------------------------------------------------------

TEST_CASE("reference output == masked softmax over dense_mask", "[radial][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto cfg = GENERATE(std::make_tuple(6, 40, 1, 0, 16, false, 20), std::make_tuple(6, 40, 0, 1, 16, true, 0),
                            std::make_tuple(20, 6, 1, 0, 8, true, 9), std::make_tuple(10, 50, 2, 1, 32, false, 3));
  const attnkit::radial p = make_radial(std::get<0>(cfg), std::get<1>(cfg), std::get<2>(cfg),
                                        std::get<3>(cfg) ? mode::official_blocks : mode::token, std::get<4>(cfg), 0.7f,
                                        std::get<5>(cfg));
  const index_t n = p.frames * p.tokens_per_frame + std::get<6>(cfg);
  INFO(describe(p) << " N=" << n);
  const problem s = make_problem(2, 4, 2, n, 12, 10);
  const auto in = random_qkv<float>(s, gen);
  check_same_math(run_ref(p, in.q, in.k, in.v), masked_reference(attnkit::dense_mask(p, n, n), p.scale, in));
}

TEST_CASE("reference: hand-computed two-frame case", "[radial][reference]") {
  // f = 4, s = 2, no sink, token mode: query token 0 (frame 0, x = 0) keeps frames 0 and 1
  // whole (tokens 0..3); frame 2 (r = 1, 2 <= s): (|x - y| + 1) * 2 <= 2 -> y = 0 (token 4);
  // frame 3 (r = 1): token 6. D = 1, scale 1, q = 1, k_t = ln(t + 1), v_t = t:
  // weights proportional to t + 1 over {0, 1, 2, 3, 4, 6}.
  std::vector<float> q(8, 1.f), k(8), v(8), out(8, -1.f), lse(8, -1.f);
  for (int t = 0; t < 8; ++t) k[t] = static_cast<float>(std::log(t + 1.0)), v[t] = static_cast<float>(t);
  attnkit::radial p = make_radial(4, 2, 0);
  p.scale = 1;
  attnkit::options o;
  o.lse = lse.data();
  attnkit::reference::attention(p, attnkit::view_bhsd<const float>(q.data(), 1, 1, 8, 1),
                                attnkit::view_bhsd<const float>(k.data(), 1, 1, 8, 1),
                                attnkit::view_bhsd<const float>(v.data(), 1, 1, 8, 1),
                                attnkit::view_bhsd(out.data(), 1, 1, 8, 1), o);
  double z = 0, num = 0;
  for (int t : {0, 1, 2, 3, 4, 6}) z += t + 1, num += (t + 1.0) * t;
  CHECK(out[0] == Approx(num / z).epsilon(1e-6));
  CHECK(lse[0] == Approx(std::log(z)).epsilon(1e-6));
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

namespace {

template <bool Fast>
void expect_rejected(const attnkit::radial& p, index_t nq, index_t nk, const std::string& what, std::mt19937& gen) {
  INFO(describe(p) << " Nq=" << nq << " Nk=" << nk << " expecting an error mentioning '" << what << "'"
                   << (Fast ? " (attention)" : " (reference)"));
  problem s;
  s.Hq = 2, s.Hkv = 1, s.Nq = nq, s.Nk = nk, s.D = 8, s.Dv = 8;
  check_rejected<Fast>(p, s, what, gen);
}

template <bool Fast>
void expect_all_rejections(std::mt19937& gen) {
  expect_rejected<Fast>(make_radial(5, 10), 49, 49, "frames * tokens_per_frame", gen);  // f * s > N
  expect_rejected<Fast>(make_radial(5, 10), 50, 51, "q.seq()", gen);                    // Nq != Nk
  expect_rejected<Fast>(make_radial(5, 10), 51, 50, "q.seq()", gen);
  expect_rejected<Fast>(make_radial(0, 10), 50, 50, "frames", gen);
  expect_rejected<Fast>(make_radial(5, 0), 50, 50, "tokens_per_frame", gen);
  expect_rejected<Fast>(make_radial(5, -10), 50, 50, "tokens_per_frame", gen);
  expect_rejected<Fast>(make_radial(5, 10, 0, mode::official_blocks, 0), 50, 50, "block_size", gen);
  expect_rejected<Fast>(make_radial(5, 10, 0, mode::token, -1), 50, 50, "block_size", gen);
  attnkit::radial nan_scale = make_radial(5, 10);
  nan_scale.scale = std::numeric_limits<float>::quiet_NaN();
  expect_rejected<Fast>(nan_scale, 50, 50, "scale", gen);
  attnkit::radial unset;  // frames and tokens_per_frame have no usable default
  expect_rejected<Fast>(unset, 50, 50, "frames", gen);
}

}  // namespace

TEST_CASE("reference: bad radial policies throw attnkit::error, out untouched", "[radial][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  expect_all_rejections<false>(gen);
  CHECK_THROWS_AS(attnkit::dense_mask(make_radial(5, 10), 49, 49), attnkit::error);
  CHECK_THROWS_AS(attnkit::dense_mask(make_radial(5, 10), 50, 51), attnkit::error);
  CHECK_NOTHROW(attnkit::dense_mask(make_radial(5, 10), 50, 50));
}

// ---------------------------------------------------------------------------------------------
// Fast path vs reference (attnkit::attention).
// ---------------------------------------------------------------------------------------------

TEST_CASE("fast: token mode (f = 6, s = 40; global tokens; sink; causal) matches reference", "[radial][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t n = GENERATE(240, 260);
  const index_t sink = GENERATE(0, 1);
  const bool causal = GENERATE(false, true);
  const attnkit::radial p = make_radial(6, 40, sink, mode::token, 128, 1.f, causal);
  fast_vs_reference<float>(p, make_problem(2, 4, 2, n, 32, 32), gen);
}

TEST_CASE("fast: token mode with long videos (sparse diagonal only) matches reference", "[radial][fast]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(false, true);
  const attnkit::radial p = make_radial(24, 6, 1, mode::token, 128, 1.f, causal);  // 2^r > s from d = 8
  fast_vs_reference<float>(p, make_problem(1, 2, 1, 24 * 6 + 7, 16, 16), gen);
  const attnkit::radial q = make_radial(9, 33, 2, mode::token, 128, 1.f, causal);
  fast_vs_reference<float>(q, make_problem(1, 2, 2, 9 * 33 + 1, 24, 40), gen);
}

TEST_CASE("fast: official_blocks (f = 6, s = 40, b = 16; global tokens; causal) matches reference",
          "[radial][fast][official]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t n = GENERATE(240, 260);
  const float gamma = GENERATE(1.f, 0.5f);
  const bool causal = GENERATE(false, true);
  const attnkit::radial p = make_radial(6, 40, 1, mode::official_blocks, 16, gamma, causal);
  fast_vs_reference<float>(p, make_problem(2, 4, 2, n, 32, 32), gen);
}

TEST_CASE("fast: official_blocks with band tiles and an empty row matches reference", "[radial][fast][official]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool causal = GENERATE(false, true);
  const attnkit::radial p = make_radial(4, 128, 0, mode::official_blocks, 32, 0.5f, causal);
  fast_vs_reference<float>(p, make_problem(1, 4, 2, 512 + 5, 32, 32), gen);
  const attnkit::radial e = make_radial(1, 33, 0, mode::official_blocks, 16, 1.f, causal);
  auto [fast, ref] = fast_vs_reference<float>(e, make_problem(1, 2, 1, 33, 16, 16), gen);
  for (index_t h = 0; h < 2; ++h) {
    CHECK(fast.lse(h * 33 + 32) == -inf);
    for (index_t d = 0; d < 16; ++d) CHECK(fast.out.get(0, h, 32, d) == 0.f);
  }
}

TEST_CASE("fast: GQA, bf16 and strided layouts match reference", "[radial][fast][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const attnkit::radial tok = make_radial(6, 40, 1, mode::token, 128, 1.f, false);
  const attnkit::radial off = make_radial(6, 40, 1, mode::official_blocks, 16, 1.f, true);
  fast_vs_reference<float>(tok, make_problem(2, 6, 2, 250, 40, 24), gen, layout::strided);
  fast_vs_reference<float>(off, make_problem(1, 6, 1, 250, 24, 40), gen, layout::bshd);
  for_each_bf16_way([&] {
    fast_vs_reference<bf16, float>(tok, make_problem(1, 4, 2, 260, 64, 64), gen);
    fast_vs_reference<bf16, bf16>(off, make_problem(1, 4, 2, 260, 64, 64), gen);
  });
}

TEST_CASE("fast: threads = 1 and 2 give bitwise identical out and lse", "[radial][fast][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (mode md : {mode::token, mode::official_blocks}) {
    const attnkit::radial p = make_radial(6, 40, 1, md, 16, 1.f, md == mode::token);
    const problem s = make_problem(2, 4, 2, 260, 32, 32);
    const auto in = random_qkv<float>(s, gen);
    const auto one = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
    const auto two = run_fast(p, in.q, in.k, in.v, layout::bhsd, 2);
    CHECK(same_bits(one.out, two.out));
    CHECK(same_bits(one.lse_mem, two.lse_mem));
    check_matches(one, run_ref(p, in.q, in.k, in.v), float_tol);
  }
}

TEST_CASE("fast: bad radial policies throw attnkit::error, out untouched", "[radial][fast][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  expect_all_rejections<true>(gen);
}
