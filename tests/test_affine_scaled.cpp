// Affine-scaled attention, section 2 of spec/extra_variants.md: Bae, Park, Park, Kim, Lee, Yoo,
// Woo, Ryu, Kwon, Lee (NAVER Cloud), "Affine-Scaled Attention: Towards Flexible and Stable
// Transformer Attention", arXiv 2602.23057. The float64 reference pinned by hand and against
// softmax attention; the spec's properties (defaults are softmax, linearity in alpha and beta,
// complement with alpha 0 is the uniform average, fully masked rows are 0) on the reference and
// on attnkit::attention; the fast path against the reference on fresh random inputs;
// validation. Set ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <attnkit/attnkit.hpp>

#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::f16;
using attnkit::index_t;
using beta_mode = attnkit::affine_scaled::beta_mode_kind;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

const char* name(beta_mode m) {
  return m == beta_mode::given ? "given" : m == beta_mode::complement ? "complement" : "zero";
}

std::string describe(const attnkit::affine_scaled& p) {
  std::ostringstream o;
  o << "affine_scaled{alpha=" << (p.alpha ? "given" : "null") << " beta=" << (p.beta ? "given" : "null")
    << " beta_mode=" << name(p.beta_mode) << " scale=" << p.scale << " causal=" << p.causal << " window=("
    << p.window_left << "," << p.window_right << ") softcap=" << p.softcap
    << " alibi=" << (p.alibi_slopes ? "yes" : "no") << " key_lens=" << (p.key_lens ? "yes" : "no")
    << " query_lens=" << (p.query_lens ? "yes" : "no") << "}";
  return o.str();
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

/// An affine policy with alpha and beta arrays [B, Hq, Nq] (or null) and a beta mode.
attnkit::affine_scaled make_affine(const float* alpha, const float* beta, beta_mode mode) {
  attnkit::affine_scaled p;
  p.alpha = alpha;
  p.beta = beta;
  p.beta_mode = mode;
  return p;
}

/// Per-row values [B, Hq, Nq], uniform in [lo, hi].
std::vector<float> random_rows(const problem& s, std::mt19937& gen, float lo, float hi) {
  std::vector<float> a(static_cast<std::size_t>(s.rows()));
  std::uniform_real_distribution<float> u(lo, hi);
  for (float& x : a) x = u(gen);
  return a;
}

/// The softmax policy with the same masks and score steps.
attnkit::softmax softmax_of(const attnkit::affine_scaled& p) {
  attnkit::softmax s;
  s.scale = p.scale, s.causal = p.causal, s.window_left = p.window_left, s.window_right = p.window_right;
  s.softcap = p.softcap, s.alibi_slopes = p.alibi_slopes, s.key_lens = p.key_lens, s.query_lens = p.query_lens;
  return s;
}

/// The row's visible keys under p's masks (softmax.md step 4).
std::vector<index_t> visible_keys(const attnkit::affine_scaled& p, index_t b, index_t i, index_t nq, index_t nk) {
  const index_t lq = p.query_lens ? p.query_lens[b] : nq, lk = p.key_lens ? p.key_lens[b] : nk;
  std::vector<index_t> keys;
  for (index_t j = 0; j < nk; ++j)
    if (attnkit::reference::detail::softmax_visible(softmax_of(p), i, j, lq, lk)) keys.push_back(j);
  return keys;
}

template <class O = float, class P, class Q, class K, class V>
result<O> run_either(bool fast, const P& p, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v,
                     layout lo = layout::bhsd, int threads = 0) {
  return fast ? run_fast<O>(p, q, k, v, lo, threads) : run_ref<O>(p, q, k, v, lo);
}

/// Fresh random q, k, v; attention against the reference (out and lse).
template <class In, class Out = float>
std::pair<result<Out>, result<float>> fast_vs_reference(const attnkit::affine_scaled& p, const problem& s,
                                                        std::mt19937& gen, layout lq = layout::bhsd,
                                                        layout lk = layout::bhsd, layout lv = layout::bhsd,
                                                        layout lo = layout::bhsd) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>()
                   << " layouts q=" << name(lq) << " k=" << name(lk) << " v=" << name(lv) << " out=" << name(lo));
  const qkv<In> in = random_qkv<In>(s, gen, lq, lk, lv);
  result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, lo);
  result<float> ref = run_ref<float>(p, in.q, in.k, in.v, layout::bhsd);
  check_matches(fast, ref, tol_for<In, Out>());
  return {std::move(fast), std::move(ref)};
}

template <class A, class B>
void check_close(const result<A>& got, const result<B>& want, double atol, double rtol) {
  const auto [ok_out, msg_out] = compare_out(got.out, want.out, atol, rtol);
  INFO(msg_out);
  CHECK(ok_out);
  const index_t rows = got.out.ext[0] * got.out.ext[1] * got.out.ext[2];
  const auto [ok_lse, msg_lse] = compare_lse(got.lse_mem, want.lse_mem, rows, atol, rtol);
  INFO(msg_lse);
  CHECK(ok_lse);
}

/// Bitwise equality of out and lse, +0 and -0 counting as the same zero.
template <class T>
bool same_result(const result<T>& a, const result<T>& b) {
  bool same = same_bits(a.lse_mem, b.lse_mem);
  a.out.for_each([&](index_t bb, index_t h, index_t i, index_t d) {
    same = same && (std::memcmp(&a.out.view(bb, h, i, d), &b.out.view(bb, h, i, d), sizeof(T)) == 0 ||
                    (a.out.get(bb, h, i, d) == 0.f && b.out.get(bb, h, i, d) == 0.f));
  });
  return same;
}

template <class O, class F>
void check_empty_rows(const result<O>& r, F&& is_empty) {
  const auto& e = r.out.ext;
  index_t wrong = 0, empty = 0;
  std::string first;
  for (index_t b = 0; b < e[0]; ++b)
    for (index_t h = 0; h < e[1]; ++h)
      for (index_t i = 0; i < e[2]; ++i) {
        if (!is_empty(b, h, i)) continue;
        ++empty;
        bool ok = r.lse((b * e[1] + h) * e[2] + i) == -inf;
        for (index_t d = 0; d < e[3]; ++d) ok = ok && r.out.get(b, h, i, d) == 0.f;
        if (!ok && wrong++ == 0)
          first = "b=" + std::to_string(b) + " h=" + std::to_string(h) + " i=" + std::to_string(i);
      }
  INFO("rows expected empty (zeros, lse -inf) but not: " << wrong << " of " << empty << ", first " << first);
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

tensor<float> one_hot_values(const problem& s) {
  REQUIRE(s.Dv == s.Nk);
  tensor<float> v(s.v_ext(), layout::bhsd, nan_of<float>());
  v.for_each([&](index_t b, index_t h, index_t j, index_t d) { v.set(b, h, j, d, j == d ? 1.f : 0.f); });
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The reference, pinned by hand (and the fast path on the same numbers).
// ---------------------------------------------------------------------------------------------

TEST_CASE("hand-computed two-key cases", "[affine_scaled][reference]") {
  // D = 1, scale = 1: q = 1, k = (0, ln 3), v = (1, 5): P = (1/4, 3/4), (P V) = 4, sum v = 6.
  problem s = make_problem(1, 1, 1, 1, 2, 1, 1);
  tensor<float> q(s.q_ext(), layout::bhsd, 1.f), k(s.k_ext(), layout::bhsd, 0.f), v(s.v_ext(), layout::bhsd, 0.f);
  k.set(0, 0, 1, 0, static_cast<float>(std::log(3.0)));
  v.set(0, 0, 0, 0, 1.f);
  v.set(0, 0, 1, 0, 5.f);
  const bool fast = GENERATE(false, true);
  CAPTURE(fast);
  auto near = [](double got, double want) { return std::abs(got - want) <= 1e-6 * (1 + std::abs(want)); };
  auto run = [&](std::vector<float> alpha, std::vector<float> beta, beta_mode mode) {
    attnkit::affine_scaled p =
        make_affine(alpha.empty() ? nullptr : alpha.data(), beta.empty() ? nullptr : beta.data(), mode);
    p.scale = 1;
    const auto r = run_either(fast, p, q, k, v);
    CHECK(near(r.lse(0), std::log(4.0)));  // always the softmax part's
    return double(r.out.get(0, 0, 0, 0));
  };
  CHECK(near(run({}, {}, beta_mode::zero), 4.0));
  CHECK(near(run({2.f}, {}, beta_mode::zero), 8.0));
  CHECK(near(run({2.f}, {0.1f}, beta_mode::given), 8.0 + 0.6));
  CHECK(near(run({}, {-0.5f}, beta_mode::given), 4.0 - 3.0));
  CHECK(near(run({0.5f}, {}, beta_mode::complement), 2.0 + 0.25 * 6));  // beta = (1 - 0.5) / 2
  CHECK(near(run({}, {}, beta_mode::complement), 4.0));                 // alpha 1: beta 0
  CHECK(near(run({-1.f}, {}, beta_mode::complement), -4.0 + 6.0));      // beta = 2 / 2

  SECTION("causal, Nq = 3, Nk = 2: row 0 sees nothing, row 1 one key (n = 1), row 2 both") {
    problem c = make_problem(1, 1, 1, 3, 2, 1, 1);
    tensor<float> q3(c.q_ext(), layout::bhsd, 1.f);
    const std::vector<float> alpha{2.f, 2.f, 0.5f}, beta{0.7f, 0.1f, 0.2f};
    attnkit::affine_scaled p = make_affine(alpha.data(), beta.data(), beta_mode::given);
    p.scale = 1, p.causal = true;
    auto r = run_either(fast, p, q3, k, v);
    CHECK(r.out.get(0, 0, 0, 0) == 0.f);  // the beta term sums over no keys
    CHECK(r.lse(0) == -inf);
    CHECK(near(r.out.get(0, 0, 1, 0), 2 * 1.0 + 0.1 * 1.0));
    CHECK(near(r.lse(1), 0.0));
    CHECK(near(r.out.get(0, 0, 2, 0), 0.5 * 4.0 + 0.2 * 6.0));
    p.beta = nullptr, p.beta_mode = beta_mode::complement;  // row 1: beta = (1 - 2) / 1
    r = run_either(fast, p, q3, k, v);
    CHECK(r.out.get(0, 0, 0, 0) == 0.f);
    CHECK(near(r.out.get(0, 0, 1, 0), 2.0 - 1.0));
    CHECK(near(r.out.get(0, 0, 2, 0), 2.0 + 0.25 * 6.0));
  }
}

// ---------------------------------------------------------------------------------------------
// Properties of the spec, on the reference and on attnkit::attention.
// ---------------------------------------------------------------------------------------------

TEST_CASE("alpha = 1, beta = 0 (defaults) equals softmax attention exactly", "[affine_scaled][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(30, 100), std::make_pair(100, 30));
  problem s = make_problem(2, 4, 2, n.first, n.second, 16, 12);
  CAPTURE(fast, describe(s));
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const std::int32_t kl[2] = {static_cast<std::int32_t>(s.Nk) - 3, 11}, ql[2] = {static_cast<std::int32_t>(s.Nq), 7};
  const auto in = random_qkv<float>(s, gen);
  const std::vector<float> ones(static_cast<std::size_t>(s.rows()), 1.f),
      zeros(static_cast<std::size_t>(s.rows()), 0.f);
  for (int variant = 0; variant < 4; ++variant) {
    attnkit::affine_scaled p;
    if (variant >= 1) p.causal = true, p.softcap = 4.f;
    if (variant >= 2) p.window_left = 13, p.alibi_slopes = slopes.data();
    if (variant >= 3) p.key_lens = kl, p.query_lens = ql, p.scale = 0.3f;
    INFO(describe(p));
    const auto want = run_either(fast, softmax_of(p), in.q, in.k, in.v);
    CHECK(same_result(run_either(fast, p, in.q, in.k, in.v), want));
    // the same as explicit arrays: alpha 1 and a given beta of 0
    attnkit::affine_scaled explicit_ = p;
    explicit_.alpha = ones.data(), explicit_.beta = zeros.data(), explicit_.beta_mode = beta_mode::given;
    check_close(run_either(fast, explicit_, in.q, in.k, in.v), want, 1e-6, 1e-6);
  }
}

TEST_CASE("output is linear in (alpha, beta): alpha out_softmax + beta sum of visible v", "[affine_scaled][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(60, 60), std::make_pair(40, 90), std::make_pair(90, 40));
  problem s = make_problem(2, 4, 2, n.first, n.second, 16, 8);
  CAPTURE(fast, describe(s));
  const std::int32_t kl[2] = {static_cast<std::int32_t>(s.Nk), 17}, ql[2] = {static_cast<std::int32_t>(s.Nq) - 4, 23};
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const auto in = random_qkv<float>(s, gen);
  const auto alpha = random_rows(s, gen, -2.f, 2.f), beta = random_rows(s, gen, -0.2f, 0.2f);
  const std::vector<float> zeros(static_cast<std::size_t>(s.rows()), 0.f), ones(zeros.size(), 1.f);
  for (int variant = 0; variant < 3; ++variant) {
    attnkit::affine_scaled base;
    if (variant >= 1) base.causal = true, base.window_left = 25, base.alibi_slopes = slopes.data();
    if (variant >= 2) base.key_lens = kl, base.query_lens = ql, base.softcap = 2.f;
    INFO(describe(base));
    auto with = [&](const std::vector<float>& a, const std::vector<float>& b) {
      attnkit::affine_scaled p = base;
      p.alpha = a.data(), p.beta = b.data(), p.beta_mode = beta_mode::given;
      return run_either(fast, p, in.q, in.k, in.v);
    };
    const auto mixed = with(alpha, beta);
    const auto soft = run_either(fast, softmax_of(base), in.q, in.k, in.v);
    const auto sums = with(zeros, ones);  // alpha 0, beta 1: the sum of the visible values
    index_t bad_sum = 0, bad_mix = 0;
    std::string first;
    for (index_t b = 0; b < s.B; ++b)
      for (index_t h = 0; h < s.Hq; ++h)
        for (index_t i = 0; i < s.Nq; ++i) {
          const auto keys = visible_keys(base, b, i, s.Nq, s.Nk);
          const std::size_t row = static_cast<std::size_t>((b * s.Hq + h) * s.Nq + i);
          bad_mix += !close(mixed.lse(static_cast<index_t>(row)), soft.lse(static_cast<index_t>(row)), 1e-6, 1e-6);
          for (index_t d = 0; d < s.Dv; ++d) {
            double vsum = 0;
            for (const index_t j : keys) vsum += in.v.get(b, h / (s.Hq / s.Hkv), j, d);
            bad_sum += !close(sums.out.get(b, h, i, d), vsum, 1e-5, 1e-6);
            const double want = double(alpha[row]) * soft.out.get(b, h, i, d) + double(beta[row]) * vsum;
            if (!close(mixed.out.get(b, h, i, d), want, 1e-5, 1e-5) && bad_mix++ == 0) {
              std::ostringstream o;
              o << "b=" << b << " h=" << h << " i=" << i << " d=" << d << ": got " << mixed.out.get(b, h, i, d)
                << ", want " << want;
              first = o.str();
            }
          }
        }
    INFO("first mismatch of alpha out_softmax + beta sum v: " << first);
    CHECK(bad_sum == 0);
    CHECK(bad_mix == 0);
  }
}

TEST_CASE("complement with alpha 0 is the uniform average of the visible values", "[affine_scaled][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(40, 100), std::make_pair(100, 40));
  problem s = make_problem(2, 4, 2, n.first, n.second, 16, 8);
  CAPTURE(fast, describe(s));
  const std::int32_t kl[2] = {static_cast<std::int32_t>(s.Nk) - 9, 2}, ql[2] = {static_cast<std::int32_t>(s.Nq), 30};
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const auto in = random_qkv<float>(s, gen);
  const std::vector<float> zeros(static_cast<std::size_t>(s.rows()), 0.f);
  // softmax with q = 0 weighs its visible keys uniformly
  auto q0 = in.q;
  q0.for_each([&](index_t b, index_t h, index_t i, index_t d) { q0.set(b, h, i, d, 0.f); });
  for (int variant = 0; variant < 3; ++variant) {
    attnkit::affine_scaled p = make_affine(zeros.data(), nullptr, beta_mode::complement);
    if (variant >= 1) p.causal = true, p.window_left = 21;
    if (variant >= 2) p.key_lens = kl, p.query_lens = ql;
    attnkit::softmax uniform = softmax_of(p);
    p.alibi_slopes = slopes.data(), p.softcap = 3.f;  // P does not matter at alpha 0
    INFO(describe(p));
    const auto r = run_either(fast, p, in.q, in.k, in.v);
    const auto want = run_ref(uniform, q0, in.k, in.v);
    const auto [ok, msg] = compare_out(r.out, want.out, 2e-6, 1e-5);
    INFO(msg);
    CHECK(ok);
  }
}

TEST_CASE("complement keeps every row's weights summing to 1 (one-hot values)", "[affine_scaled][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  problem s = make_problem(1, 4, 2, 50, 64, 16, 64);
  CAPTURE(fast);
  auto in = random_qkv<float>(s, gen);
  in.v = one_hot_values(s);
  const auto alpha = random_rows(s, gen, -1.f, 3.f);
  attnkit::affine_scaled p = make_affine(alpha.data(), nullptr, beta_mode::complement);
  p.causal = true, p.window_left = 30;
  const auto r = run_either(fast, p, in.q, in.k, in.v);
  const auto soft = run_ref(softmax_of(p), in.q, in.k, in.v);
  index_t bad = 0;
  for (index_t h = 0; h < s.Hq; ++h)
    for (index_t i = 0; i < s.Nq; ++i) {
      const std::size_t row = static_cast<std::size_t>(h * s.Nq + i);
      const auto keys = visible_keys(p, 0, i, s.Nq, s.Nk);
      double sum = 0;
      for (index_t j = 0; j < s.Nk; ++j) sum += r.out.get(0, h, i, j);
      bad += std::abs(sum - 1) > 1e-5;
      // and each weight is alpha P + (1 - alpha) / n on visible keys, 0 elsewhere
      for (index_t j = 0; j < s.Nk; ++j) {
        const bool visible = std::find(keys.begin(), keys.end(), j) != keys.end();
        const double want =
            visible ? alpha[row] * double(soft.out.get(0, h, i, j)) + (1 - double(alpha[row])) / double(keys.size())
                    : 0.0;
        bad += !close(r.out.get(0, h, i, j), want, 2e-6, 1e-5);
      }
    }
  CHECK(bad == 0);
}

TEST_CASE("fully masked rows are 0 with lse -inf in every beta mode", "[affine_scaled][property][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const beta_mode mode = GENERATE(beta_mode::given, beta_mode::complement, beta_mode::zero);
  problem s = make_problem(3, 4, 2, 90, 20, 16, 16);
  CAPTURE(fast, name(mode));
  // causal with Nq > Nk: the first 70 rows see nothing; key_lens 0 for batch 1; query_lens 30 for batch 2
  const std::int32_t kl[3] = {20, 0, 20}, ql[3] = {90, 90, 30};
  const auto alpha = random_rows(s, gen, 0.5f, 2.f), beta = random_rows(s, gen, 0.5f, 1.f);
  attnkit::affine_scaled p = make_affine(alpha.data(), mode == beta_mode::given ? beta.data() : nullptr, mode);
  p.causal = true, p.key_lens = kl, p.query_lens = ql;
  const auto in = random_qkv<float>(s, gen);
  const auto r = run_either(fast, p, in.q, in.k, in.v);
  check_empty_rows(r, [&](index_t b, index_t, index_t i) { return i >= ql[b] || kl[b] == 0 || i + kl[b] - ql[b] < 0; });
  CHECK(no_nan(r));
  if (fast) check_matches(r, run_ref(p, in.q, in.k, in.v), float_tol);
}

TEST_CASE("NaN, inf or huge values in keys a row cannot see do not reach it", "[affine_scaled][property][nan]") {
  // softmax.md: a NaN in a masked-out key does not affect the output; the beta term sums
  // the visible values only, so the same holds for it (the spec's prefix sums of v must not
  // carry an invisible value into the window's sum).
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const float bad = GENERATE(std::numeric_limits<float>::quiet_NaN(), inf, 1e30f);
  problem s = make_problem(1, 2, 1, 100, 100, 8, 8);
  CAPTURE(fast, bad);
  const auto alpha = random_rows(s, gen, -1.f, 2.f), beta = random_rows(s, gen, -0.1f, 0.1f);
  const auto in = random_qkv<float>(s, gen);
  auto v2 = in.v;
  for (index_t d = 0; d < s.Dv; ++d) v2.set(0, 0, 3, d, bad), v2.set(0, 0, 90, d, bad);
  const auto clean = [&](const attnkit::affine_scaled& p, index_t i) {
    const auto keys = visible_keys(p, 0, i, s.Nq, s.Nk);
    return std::find(keys.begin(), keys.end(), 3) == keys.end() &&
           std::find(keys.begin(), keys.end(), 90) == keys.end();
  };
  for (const beta_mode mode : {beta_mode::given, beta_mode::complement}) {
    for (int variant = 0; variant < 3; ++variant) {
      attnkit::affine_scaled p = make_affine(alpha.data(), mode == beta_mode::given ? beta.data() : nullptr, mode);
      if (variant == 0) p.causal = true, p.window_left = 10;    // rows 14.. do not see key 3
      if (variant == 1) p.window_left = 5, p.window_right = 5;  // nor rows 9..84 key 90
      if (variant == 2) p.causal = true;                        // rows 0..2 see neither
      INFO(describe(p));
      const auto got = run_either(fast, p, in.q, in.k, v2);
      const auto want = run_ref(p, in.q, in.k, in.v);  // the invisible keys' values do not matter
      index_t wrong = 0, compared = 0;
      std::string first;
      for (index_t h = 0; h < s.Hq; ++h)
        for (index_t i = 0; i < s.Nq; ++i) {
          if (!clean(p, i)) continue;
          ++compared;
          bool ok = true;
          for (index_t d = 0; d < s.Dv; ++d)
            ok = ok && close(got.out.get(0, h, i, d), want.out.get(0, h, i, d), 2e-5, 1e-5);
          if (!ok && wrong++ == 0) {
            std::ostringstream o;
            o << "h=" << h << " i=" << i << ": got " << got.out.get(0, h, i, 0) << ", want "
              << want.out.get(0, h, i, 0);
            first = o.str();
          }
        }
      INFO("rows that never see keys 3 and 90 but differ: " << wrong << " of " << compared << "; first " << first);
      CHECK(compared > 0);
      CHECK(wrong == 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fast path against the reference.
// ---------------------------------------------------------------------------------------------

TEST_CASE("matches reference: odd sizes, Dv != D, GQA, batch > 1, every beta mode", "[affine_scaled][sizes]") {
  ATTNKIT_SEEDED_RNG(gen);
  const beta_mode mode = GENERATE(beta_mode::given, beta_mode::complement, beta_mode::zero);
  const auto shape = GENERATE(std::make_tuple(1, 1, 1, 1, 1, 1, 1), std::make_tuple(2, 4, 2, 37, 37, 24, 20),
                              std::make_tuple(3, 6, 3, 13, 29, 3, 17), std::make_tuple(2, 8, 1, 50, 21, 40, 8),
                              std::make_tuple(1, 2, 2, 1, 97, 16, 16), std::make_tuple(2, 3, 1, 65, 64, 80, 33));
  problem s = make_problem(std::get<0>(shape), std::get<1>(shape), std::get<2>(shape), std::get<3>(shape),
                           std::get<4>(shape), std::get<5>(shape), std::get<6>(shape));
  const auto alpha = random_rows(s, gen, -2.f, 2.f), beta = random_rows(s, gen, -0.1f, 0.1f);
  for (const bool with_alpha : {false, true}) {
    attnkit::affine_scaled p =
        make_affine(with_alpha ? alpha.data() : nullptr, mode == beta_mode::given ? beta.data() : nullptr, mode);
    fast_vs_reference<float>(p, s, gen);
    p.causal = true;
    auto [fast, ref] = fast_vs_reference<float>(p, s, gen);
    check_empty_rows(fast, [&](index_t, index_t, index_t i) { return i + s.Nk - s.Nq < 0; });
  }
}

TEST_CASE("matches reference: layouts and 16-bit types", "[affine_scaled][layout][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto lay = GENERATE(std::make_tuple(layout::bshd, layout::bshd, layout::bshd, layout::bshd),
                            std::make_tuple(layout::strided, layout::strided, layout::strided, layout::strided),
                            std::make_tuple(layout::bhsd, layout::strided, layout::bshd, layout::strided));
  problem s = make_problem(2, 4, 2, 45, 60, 24, 20);
  const auto alpha = random_rows(s, gen, -2.f, 2.f), beta = random_rows(s, gen, -0.1f, 0.1f);
  attnkit::affine_scaled p = make_affine(alpha.data(), beta.data(), beta_mode::given);
  p.causal = GENERATE(false, true);
  const layout lq = std::get<0>(lay), lk = std::get<1>(lay), lv = std::get<2>(lay), lo = std::get<3>(lay);
  fast_vs_reference<float>(p, s, gen, lq, lk, lv, lo);
  for_each_bf16_way([&] {
    fast_vs_reference<bf16, float>(p, s, gen, lq, lk, lv, lo);
    fast_vs_reference<bf16, bf16>(p, s, gen, lq, lk, lv, lo);
  });
  fast_vs_reference<f16, f16>(p, s, gen, lq, lk, lv, lo);
  p.beta = nullptr, p.beta_mode = beta_mode::complement;
  fast_vs_reference<float, bf16>(p, s, gen, lq, lk, lv, lo);
}

TEST_CASE("matches reference: every softmax field combined", "[affine_scaled][fields]") {
  ATTNKIT_SEEDED_RNG(gen);
  const beta_mode mode = GENERATE(beta_mode::given, beta_mode::complement);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(40, 100), std::make_pair(100, 40));
  problem s = make_problem(4, 4, 2, n.first, n.second, 16, 8);
  const auto alpha = random_rows(s, gen, -2.f, 2.f), beta = random_rows(s, gen, -0.1f, 0.1f);
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  std::vector<std::int32_t> kl(4), ql(4);
  std::uniform_int_distribution<int> rk(0, static_cast<int>(s.Nk)), rq(0, static_cast<int>(s.Nq));
  for (int b = 0; b < 4; ++b) kl[b] = rk(gen), ql[b] = rq(gen);
  kl[0] = static_cast<std::int32_t>(s.Nk), ql[0] = static_cast<std::int32_t>(s.Nq), kl[1] = 0, ql[2] = 0;
  INFO("key_lens " << kl[0] << " " << kl[1] << " " << kl[2] << " " << kl[3] << "; query_lens " << ql[0] << " " << ql[1]
                   << " " << ql[2] << " " << ql[3]);
  for (int variant = 0; variant < 6; ++variant) {
    attnkit::affine_scaled p = make_affine(alpha.data(), mode == beta_mode::given ? beta.data() : nullptr, mode);
    switch (variant) {
      case 0: p.scale = 0.9f, p.softcap = 2.5f; break;
      case 1: p.alibi_slopes = slopes.data(), p.causal = true; break;
      case 2: p.window_left = 7, p.window_right = 3; break;
      case 3: p.window_left = 12, p.causal = true, p.softcap = 4.f, p.alibi_slopes = slopes.data(); break;
      case 4: p.key_lens = kl.data(), p.query_lens = ql.data(); break;
      default:
        p.key_lens = kl.data(), p.query_lens = ql.data(), p.causal = true, p.window_left = 9;
        p.alibi_slopes = slopes.data(), p.softcap = 3.f, p.scale = 0.4f;
    }
    auto [fast, ref] = fast_vs_reference<float>(p, s, gen);
    CHECK(no_nan(fast));
  }
}

TEST_CASE("matches reference: N ~ 300 crossing key chunks and query tiles (sums of visible values)",
          "[affine_scaled][large]") {
  ATTNKIT_SEEDED_RNG(gen);
  const beta_mode mode = GENERATE(beta_mode::given, beta_mode::complement);
  problem s = make_problem(1, 2, 1, 290, 300, 32, 32);
  const auto alpha = random_rows(s, gen, -1.f, 2.f), beta = random_rows(s, gen, -0.02f, 0.02f);
  attnkit::affine_scaled p = make_affine(alpha.data(), mode == beta_mode::given ? beta.data() : nullptr, mode);
  fast_vs_reference<float>(p, s, gen);
  p.causal = true;
  fast_vs_reference<float>(p, s, gen);
  p.window_left = 100;  // the window's value sums are differences of prefix sums
  fast_vs_reference<float>(p, s, gen);
  p.causal = false, p.window_right = 50;
  fast_vs_reference<float>(p, s, gen);
}

TEST_CASE("threads = 1, 2, 3, 0 give bitwise identical out and lse", "[affine_scaled][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(260, 260), std::make_pair(3, 1000), std::make_pair(120, 200));
  const beta_mode mode = GENERATE(beta_mode::given, beta_mode::complement, beta_mode::zero);
  problem s = make_problem(2, 4, 2, n.first, n.second, 32, 32);
  const auto alpha = random_rows(s, gen, -1.f, 2.f), beta = random_rows(s, gen, -0.05f, 0.05f);
  attnkit::affine_scaled p = make_affine(alpha.data(), mode == beta_mode::given ? beta.data() : nullptr, mode);
  p.causal = GENERATE(false, true);
  CAPTURE(describe(s), describe(p));
  const auto in = random_qkv<float>(s, gen);
  const auto base = run_fast(p, in.q, in.k, in.v, layout::bhsd, 1);
  for (int threads : {2, 3, 0}) {
    CAPTURE(threads);
    const auto r = run_fast(p, in.q, in.k, in.v, layout::bhsd, threads);
    CHECK(same_bits(base.out, r.out));
    CHECK(same_bits(base.lse_mem, r.lse_mem));
  }
}

// ---------------------------------------------------------------------------------------------
// Validation: attnkit::error before anything is written.
// ---------------------------------------------------------------------------------------------

namespace {

void expect_rejected(const attnkit::affine_scaled& p, const qkv<float>& in, const problem& s, const std::string& what) {
  INFO("expected an error mentioning '" << what << "' from " << describe(p));
  for (int which = 0; which < 2; ++which) {
    CAPTURE(which);  // 0: attention, 1: reference::attention
    auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
    std::vector<float> lse(static_cast<std::size_t>(s.rows()), -777.f);
    const auto before = out;
    const auto lse_before = lse;
    attnkit::options o;
    o.lse = lse.data();
    auto call = [&] {
      if (which == 0)
        attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view, o);
      else
        attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view, o);
    };
    CHECK_THROWS_AS(call(), attnkit::error);
    CHECK_THROWS_WITH(call(), Catch::Contains(what));
    CHECK(same_bits(before, out));
    CHECK(same_bits(lse_before, lse));
  }
}

}  // namespace

TEST_CASE("bad input throws attnkit::error naming the field, out untouched", "[affine_scaled][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s = make_problem(2, 4, 2, 10, 12, 8, 6);
  const auto in = random_qkv<float>(s, gen);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> good = random_rows(s, gen, -1.f, 1.f);
  for (float bad : {nan, inf, -inf, 0x1p33f}) {
    CAPTURE(bad);
    auto a = good;
    a[17] = bad;
    expect_rejected(make_affine(a.data(), nullptr, beta_mode::zero), in, s, "alpha[17]");
    expect_rejected(make_affine(good.data(), a.data(), beta_mode::given), in, s, "beta[17]");
  }
  expect_rejected(make_affine(nullptr, nullptr, beta_mode::given), in, s, "beta");          // given needs beta
  expect_rejected(make_affine(nullptr, good.data(), beta_mode::zero), in, s, "beta_mode");  // set but ignored
  expect_rejected(make_affine(good.data(), good.data(), beta_mode::complement), in, s, "beta_mode");
  expect_rejected(make_affine(nullptr, nullptr, static_cast<beta_mode>(9)), in, s, "beta_mode");
  attnkit::affine_scaled w;
  w.window_left = -5;
  expect_rejected(w, in, s, "window_left");
  attnkit::affine_scaled c;
  c.softcap = nan;
  expect_rejected(c, in, s, "softcap");
  std::vector<float> slopes = attnkit::alibi_slopes(s.Hq);
  slopes[1] = nan;
  attnkit::affine_scaled a;
  a.alibi_slopes = slopes.data();
  expect_rejected(a, in, s, "alibi_slopes[1]");
  const std::int32_t kl[2] = {-1, 3};
  attnkit::affine_scaled k;
  k.key_lens = kl;
  expect_rejected(k, in, s, "key_lens[0]");
  auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
  CHECK_NOTHROW(attnkit::attention(make_affine(good.data(), good.data(), beta_mode::given), in.q.cview(), in.k.cview(),
                                   in.v.cview(), out.view));
}
