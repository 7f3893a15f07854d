// Probabilistic (existence-probability) attention, part A of spec/probabilistic.md: Rozental,
// "Zonkey: A Hierarchical Diffusion Language Model with Differentiable Tokenization and
// Probabilistic Attention", arXiv 2601.21768 (code ARozental/Zonkey, ProbabilisticAttention).
// The float64 reference pinned by hand and against independent formulations (softmax attention,
// an explicit bias matrix on a custom policy, weights multiplied by probabilities), the spec's
// properties on both the reference and attnkit::attention, the fast path against the
// reference on fresh random inputs, existence_from_continue, and validation.
// Set ATTNKIT_TEST_SEED to replay a failing run.
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
using mode_kind = attnkit::probabilistic::mode_kind;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

std::string describe(const attnkit::probabilistic& p) {
  std::ostringstream o;
  o << "probabilistic{mode=" << (p.mode == mode_kind::zonkey_ratio ? "zonkey_ratio" : "key_logprob")
    << " log_space=" << p.log_space << " query_prob=" << (p.query_prob ? "given" : "null") << " scale=" << p.scale
    << " causal=" << p.causal << " window=(" << p.window_left << "," << p.window_right << ") softcap=" << p.softcap
    << " alibi=" << (p.alibi_slopes ? "yes" : "no") << " key_lens=" << (p.key_lens ? "yes" : "no")
    << " query_lens=" << (p.query_lens ? "yes" : "no") << "}";
  return o.str();
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

/// Existence probabilities of every kind the spec names: exact zeros, exact ones, tiny values
/// (1e-20 .. 1e-7), and the rest uniform in (0, 1]; not monotone.
std::vector<float> random_probs(index_t count, std::mt19937& gen, double zeros = 0.15, double ones = 0.15,
                                double tiny = 0.1) {
  std::vector<float> p(static_cast<std::size_t>(count));
  std::uniform_real_distribution<double> u(0, 1), exponent(-20, -7);
  for (float& x : p) {
    const double r = u(gen);
    if (r < zeros)
      x = 0.f;
    else if (r < zeros + ones)
      x = 1.f;
    else if (r < zeros + ones + tiny)
      x = static_cast<float>(std::pow(10.0, exponent(gen)));
    else
      x = static_cast<float>(1.0 - u(gen));  // (0, 1]
  }
  return p;
}

/// The same probabilities as log p (-inf for p = 0), the log_space encoding.
std::vector<float> to_log(const std::vector<float>& p) {
  std::vector<float> l(p.size());
  for (std::size_t e = 0; e < p.size(); ++e) l[e] = p[e] == 0.f ? -inf : static_cast<float>(std::log(double(p[e])));
  return l;
}

attnkit::probabilistic make_policy(const std::vector<float>& key_prob, const std::vector<float>* query_prob,
                                   mode_kind mode, bool log_space = false) {
  attnkit::probabilistic p;
  p.key_prob = key_prob.data();
  p.query_prob = query_prob ? query_prob->data() : nullptr;
  p.mode = mode;
  p.log_space = log_space;
  return p;
}

/// The softmax policy with the same masks and score steps.
attnkit::softmax softmax_of(const attnkit::probabilistic& p) {
  attnkit::softmax s;
  s.scale = p.scale, s.causal = p.causal, s.window_left = p.window_left, s.window_right = p.window_right;
  s.softcap = p.softcap, s.alibi_slopes = p.alibi_slopes, s.key_lens = p.key_lens, s.query_lens = p.query_lens;
  return s;
}

/// attnkit::attention (fast) or attnkit::reference::attention of p, into fresh out and lse.
template <class O = float, class P, class Q, class K, class V>
result<O> run_either(bool fast, const P& p, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v,
                     layout lo = layout::bhsd, int threads = 0) {
  return fast ? run_fast<O>(p, q, k, v, lo, threads) : run_ref<O>(p, q, k, v, lo);
}

/// Fresh random q, k, v (type In, layouts lq/lk/lv, amplitude amp); attention (out type Out,
/// layout lo) against the reference, out and lse. Returns both results.
template <class In, class Out = float, class P>
std::pair<result<Out>, result<float>> fast_vs_reference(const P& p, const problem& s, std::mt19937& gen,
                                                        layout lq = layout::bhsd, layout lk = layout::bhsd,
                                                        layout lv = layout::bhsd, layout lo = layout::bhsd,
                                                        int threads = 0, float amp = 1.f) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>()
                   << " layouts q=" << name(lq) << " k=" << name(lk) << " v=" << name(lv) << " out=" << name(lo)
                   << " threads=" << threads);
  const qkv<In> in = random_qkv<In>(s, gen, lq, lk, lv, amp);
  result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, lo, threads);
  result<float> ref = run_ref<float>(p, in.q, in.k, in.v, layout::bhsd);
  check_matches(fast, ref, tol_for<In, Out>());
  return {std::move(fast), std::move(ref)};
}

/// CHECKs that two results agree within (atol, rtol) on out and lse.
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

/// Bitwise equality of out and lse, except that +0 and -0 count as the same zero.
template <class T>
bool same_result(const result<T>& a, const result<T>& b) {
  bool same = same_bits(a.lse_mem, b.lse_mem);
  a.out.for_each([&](index_t bb, index_t h, index_t i, index_t d) {
    const float x = a.out.get(bb, h, i, d), y = b.out.get(bb, h, i, d);
    same = same &&
           (std::memcmp(&a.out.view(bb, h, i, d), &b.out.view(bb, h, i, d), sizeof(T)) == 0 || (x == 0.f && y == 0.f));
  });
  return same;
}

/// Rows for which is_empty(b, h, i) holds are exactly zero with lse -inf.
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

/// Values that read out the attention weights: Dv = Nk and v[b, h, j, :] = e_j, so that
/// out[b, h, i, j] is the weight of key j in row i.
tensor<float> one_hot_values(const problem& s) {
  REQUIRE(s.Dv == s.Nk);
  tensor<float> v(s.v_ext(), layout::bhsd, nan_of<float>());
  v.for_each([&](index_t b, index_t h, index_t j, index_t d) { v.set(b, h, j, d, j == d ? 1.f : 0.f); });
  return v;
}

/// The spec's formulation for SDPA users, built independently of the reference: a custom policy
/// with keep = softmax visibility and p_i != 0 and p_j != 0, and score = soft-cap, ALiBi, then
/// the float bias matrix triu(log p_k - log p_q, 1) (zonkey_ratio) or log p_k (key_logprob),
/// all from the linear probabilities with log(max(p, 1e-20)).
struct explicit_bias {
  const attnkit::probabilistic& p;
  const std::vector<float>& kp;  // [B, Nk], linear
  const std::vector<float>& qp;  // [B, Nq], linear
  index_t nq, nk;

  static double log_clamped(float x) { return std::log(std::max(double(x), 1e-20)); }

  index_t lq(index_t b) const { return p.query_lens ? p.query_lens[b] : nq; }
  index_t lk(index_t b) const { return p.key_lens ? p.key_lens[b] : nk; }

  bool keep(index_t b, index_t i, index_t j) const {
    const attnkit::softmax s = softmax_of(p);
    return attnkit::reference::detail::softmax_visible(s, i, j, lq(b), lk(b)) && qp[b * nq + i] != 0.f &&
           kp[b * nk + j] != 0.f;
  }
  double score(double s, index_t b, index_t h, index_t i, index_t j) const {
    if (p.softcap > 0) s = double(p.softcap) * std::tanh(s / double(p.softcap));
    if (p.alibi_slopes) s -= double(p.alibi_slopes[h]) * std::abs(double(i + lk(b) - lq(b) - j));
    if (p.mode == mode_kind::key_logprob) return s + log_clamped(kp[b * nk + j]);
    return j > i ? s + log_clamped(kp[b * nk + j]) - log_clamped(qp[b * nq + i]) : s;
  }
};

/// The reference of `bias` as a custom policy (its own float64 masked-softmax loop).
template <class Q, class K, class V>
result<float> run_explicit_bias(const explicit_bias& bias, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v) {
  auto policy = attnkit::make_custom(
      [&](index_t b, index_t, index_t i, index_t j) { return bias.keep(b, i, j); },
      [&](double s, index_t b, index_t h, index_t i, index_t j) { return bias.score(s, b, h, i, j); }, bias.p.scale);
  return run_ref(policy, q, k, v);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The reference, pinned by hand (and the fast path on the same numbers).
// ---------------------------------------------------------------------------------------------

TEST_CASE("hand-computed two-key cases, linear and log-space probabilities", "[probabilistic][reference]") {
  // D = 1, scale = 1: q = (1, 1), k = (0, ln 3), v = (1, 5). Plain softmax weights 1/4, 3/4.
  const float ln3 = static_cast<float>(std::log(3.0));
  problem s = make_problem(1, 1, 1, 2, 2, 1, 1);
  tensor<float> q(s.q_ext(), layout::bhsd, 1.f), k(s.k_ext(), layout::bhsd, 0.f), v(s.v_ext(), layout::bhsd, 0.f);
  k.set(0, 0, 1, 0, ln3);
  v.set(0, 0, 0, 0, 1.f);
  v.set(0, 0, 1, 0, 5.f);
  const bool fast = GENERATE(false, true);
  const bool log_space = GENERATE(false, true);
  CAPTURE(fast, log_space);
  auto near = [](double got, double want) { return std::abs(got - want) <= 1e-6 * (1 + std::abs(want)); };
  auto run = [&](std::vector<float> probs, mode_kind mode) {
    if (log_space) probs = to_log(probs);
    attnkit::probabilistic p = make_policy(probs, nullptr, mode, log_space);
    p.scale = 1;
    return run_either(fast, p, q, k, v);
  };

  SECTION("p = (1, 0.5), zonkey_ratio: row 0 sees key 1 at p_1 / p_0 = 0.5; row 1 has no bias") {
    const auto r = run({1.f, 0.5f}, mode_kind::zonkey_ratio);
    CHECK(near(r.out.get(0, 0, 0, 0), (1 + 5 * 1.5) / 2.5));  // logits 0, ln 1.5
    CHECK(near(r.lse(0), std::log(2.5)));
    CHECK(near(r.out.get(0, 0, 1, 0), 4.0));
    CHECK(near(r.lse(1), std::log(4.0)));
  }
  SECTION("p = (1, 0.5), key_logprob: both rows see key 1 at weight factor 0.5") {
    const auto r = run({1.f, 0.5f}, mode_kind::key_logprob);
    for (index_t i = 0; i < 2; ++i) {
      CAPTURE(i);
      CHECK(near(r.out.get(0, 0, i, 0), (1 + 5 * 1.5) / 2.5));
      CHECK(near(r.lse(i), std::log(2.5)));
    }
  }
  SECTION("non-monotone p = (0.5, 1), zonkey_ratio: the ratio 2 > 1 is a positive bias, not clamped") {
    const auto r = run({0.5f, 1.f}, mode_kind::zonkey_ratio);
    CHECK(near(r.out.get(0, 0, 0, 0), (1 + 5 * 6.0) / 7.0));  // logits 0, ln 6
    CHECK(near(r.lse(0), std::log(7.0)));
    CHECK(near(r.out.get(0, 0, 1, 0), 4.0));
    // key_logprob: row 0 logits ln 0.5, ln 3
    const auto l = run({0.5f, 1.f}, mode_kind::key_logprob);
    CHECK(near(l.out.get(0, 0, 0, 0), (0.5 + 15) / 3.5));
    CHECK(near(l.lse(0), std::log(3.5)));
  }
  SECTION("p_0 = 0: row 0 is zeros with lse -inf, key 0 is removed from row 1") {
    for (const mode_kind mode : {mode_kind::zonkey_ratio, mode_kind::key_logprob}) {
      const auto r = run({0.f, 1.f}, mode);
      CHECK(r.out.get(0, 0, 0, 0) == 0.f);
      CHECK(r.lse(0) == -inf);
      CHECK(near(r.out.get(0, 0, 1, 0), 5.0));
      CHECK(near(r.lse(1), std::log(3.0)));
    }
  }
  SECTION("p_1 = 0: key 1 is removed from both rows; row 1 itself is zeros") {
    const auto r = run({1.f, 0.f}, mode_kind::zonkey_ratio);
    CHECK(near(r.out.get(0, 0, 0, 0), 1.0));
    CHECK(near(r.lse(0), 0.0));
    CHECK(r.out.get(0, 0, 1, 0) == 0.f);
    CHECK(r.lse(1) == -inf);
  }
  SECTION("probabilities below 1e-20 are clamped to 1e-20: p = (1, 1e-30) is p = (1, 1e-20)") {
    const auto r = run({1.f, 1e-30f}, mode_kind::zonkey_ratio);
    const double w = 3e-20;  // e^{ln 3 + ln 1e-20}
    CHECK(near(r.out.get(0, 0, 0, 0), (1 + 5 * w) / (1 + w)));
    CHECK(std::abs(r.lse(0)) < 1e-6f);
    // row 1: p_1 = 1e-30 is not 0, so the row exists and sees both keys without bias
    CHECK(near(r.out.get(0, 0, 1, 0), 4.0));
  }
  SECTION("cross-attention: query_prob (0.25) and raw indices: row 0 biases key 1 by ln(0.5 / 0.25)") {
    std::vector<float> kp{1.f, 0.5f}, qp{0.25f, 1.f};
    if (log_space) kp = to_log(kp), qp = to_log(qp);
    attnkit::probabilistic p = make_policy(kp, &qp, mode_kind::zonkey_ratio, log_space);
    p.scale = 1;
    const auto r = run_either(fast, p, q, k, v);
    CHECK(near(r.out.get(0, 0, 0, 0), (1 + 5 * 6.0) / 7.0));  // logits 0, ln 3 + ln 2
    CHECK(near(r.out.get(0, 0, 1, 0), 4.0));
  }
}

TEST_CASE("reference: explicit bias matrix (SDPA form) on a custom policy agrees, every field",
          "[probabilistic][reference]") {
  ATTNKIT_SEEDED_RNG(gen);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const auto n = GENERATE(std::make_pair(37, 37), std::make_pair(23, 41), std::make_pair(41, 23));
  problem s = make_problem(3, 4, 2, n.first, n.second, 12, 7);
  CAPTURE(describe(s));
  const auto kp = random_probs(s.B * s.Nk, gen), qp = random_probs(s.B * s.Nq, gen);
  const bool self = s.Nq == s.Nk;
  const std::vector<float>& qprob = self ? kp : qp;
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const std::int32_t kl[3] = {static_cast<std::int32_t>(s.Nk), static_cast<std::int32_t>(s.Nk - 5), 3};
  const std::int32_t ql[3] = {static_cast<std::int32_t>(s.Nq), static_cast<std::int32_t>(s.Nq - 2), 0};
  const auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 2.f);
  for (int variant = 0; variant < 5; ++variant) {
    attnkit::probabilistic p = make_policy(kp, self ? nullptr : &qp, mode);
    if (variant >= 1) p.causal = true;
    if (variant >= 2) p.softcap = 3.f, p.alibi_slopes = slopes.data(), p.scale = 0.7f;
    if (variant >= 3) p.window_left = 9, p.window_right = 4, p.causal = false;
    if (variant >= 4) p.key_lens = kl, p.query_lens = ql, p.causal = true;
    INFO(describe(p));
    const explicit_bias bias{p, kp, qprob, s.Nq, s.Nk};
    const auto want = run_explicit_bias(bias, in.q, in.k, in.v);
    const auto got = run_ref(p, in.q, in.k, in.v);
    check_close(got, want, 1e-6, 1e-6);
  }
}

// ---------------------------------------------------------------------------------------------
// Properties of the spec, on the reference and on attnkit::attention.
// ---------------------------------------------------------------------------------------------

TEST_CASE("all probabilities 1 equal softmax attention (outputs and lse), both modes", "[probabilistic][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const bool log_space = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(30, 100), std::make_pair(100, 30));
  problem s = make_problem(2, 4, 2, n.first, n.second, 16, 12);
  CAPTURE(fast, log_space, describe(s));
  // 1 in linear form, 0 in log form
  const std::vector<float> kp(static_cast<std::size_t>(s.B * s.Nk), log_space ? 0.f : 1.f),
      qp(static_cast<std::size_t>(s.B * s.Nq), log_space ? 0.f : 1.f);
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const std::int32_t kl[2] = {static_cast<std::int32_t>(s.Nk) - 3, 11}, ql[2] = {static_cast<std::int32_t>(s.Nq), 7};
  const auto in = random_qkv<float>(s, gen);
  for (int variant = 0; variant < 4; ++variant) {
    attnkit::probabilistic p = make_policy(kp, s.Nq == s.Nk && variant % 2 == 0 ? nullptr : &qp, mode, log_space);
    if (variant >= 1) p.causal = true, p.softcap = 4.f;
    if (variant >= 2) p.window_left = 13, p.alibi_slopes = slopes.data();
    if (variant >= 3) p.key_lens = kl, p.query_lens = ql, p.scale = 0.3f;
    INFO(describe(p));
    const auto got = run_either(fast, p, in.q, in.k, in.v);
    const auto want = run_either(fast, softmax_of(p), in.q, in.k, in.v);
    if (fast)
      check_close(got, want, 1e-6, 1e-6);
    else
      CHECK(same_result(got, want));  // the reference adds an exact 0 bias
  }
}

TEST_CASE("p_j = 0 removes key j exactly: its k and v are never used", "[probabilistic][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const bool causal = GENERATE(false, true);
  problem s = make_problem(2, 4, 2, 150, 150, 16, 16);
  CAPTURE(fast, causal, describe(s));
  auto kp = random_probs(s.B * s.Nk, gen, 0.3);
  for (index_t j = 64; j < 128; ++j) kp[static_cast<std::size_t>(s.Nk + j)] = 0.f;  // one whole key chunk
  attnkit::probabilistic p = make_policy(kp, nullptr, mode);
  p.causal = causal;
  const auto in = random_qkv<float>(s, gen);
  const auto a = run_either(fast, p, in.q, in.k, in.v);
  // other finite values in the removed keys: out and lse are bitwise the same
  auto k2 = in.k, v2 = in.v;
  std::uniform_real_distribution<float> garbage(-50.f, 50.f);
  for (index_t b = 0; b < s.B; ++b)
    for (index_t j = 0; j < s.Nk; ++j) {
      if (kp[static_cast<std::size_t>(b * s.Nk + j)] != 0.f) continue;
      for (index_t h = 0; h < s.Hkv; ++h) {
        for (index_t d = 0; d < s.D; ++d) k2.set(b, h, j, d, garbage(gen));
        for (index_t d = 0; d < s.Dv; ++d) v2.set(b, h, j, d, garbage(gen));
      }
    }
  const auto b = run_either(fast, p, in.q, k2, v2);
  CHECK(same_result(a, b));
  CHECK(no_nan(a));
  // NaN there, as padding beyond key_lens may hold: it does not reach the output (the fast
  // path may then take another rounding path: equal within float tolerance, not bitwise)
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (index_t bb = 0; bb < s.B; ++bb)
    for (index_t j = 0; j < s.Nk; ++j) {
      if (kp[static_cast<std::size_t>(bb * s.Nk + j)] != 0.f) continue;
      for (index_t h = 0; h < s.Hkv; ++h) {
        for (index_t d = 0; d < s.D; ++d) k2.set(bb, h, j, d, nan);
        for (index_t d = 0; d < s.Dv; ++d) v2.set(bb, h, j, d, nan);
      }
    }
  const auto c = run_either(fast, p, in.q, k2, v2);
  CHECK(no_nan(c));
  check_close(c, a, 2e-6, 2e-6);
}

TEST_CASE("p_j = 0 equals deleting key j (key_logprob, non-causal)", "[probabilistic][property]") {
  // key_logprob's bias depends on p_j alone, so deleting keys (and their probabilities)
  // changes nothing else; zonkey_ratio compares raw indices, which deleting would shift.
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  problem s = make_problem(1, 4, 2, 45, 131, 16, 8);
  CAPTURE(fast);
  const auto kp = random_probs(s.Nk, gen, 0.4);
  const auto qp = random_probs(s.Nq, gen, 0.0);
  std::vector<index_t> kept;
  for (index_t j = 0; j < s.Nk; ++j)
    if (kp[static_cast<std::size_t>(j)] != 0.f) kept.push_back(j);
  problem t = s;
  t.Nk = static_cast<index_t>(kept.size());
  const auto in = random_qkv<float>(s, gen);
  auto k2 = output_tensor<float>(t.k_ext(), layout::bhsd), v2 = output_tensor<float>(t.v_ext(), layout::bhsd);
  std::vector<float> kp2;
  for (index_t c = 0; c < t.Nk; ++c) {
    const index_t j = kept[static_cast<std::size_t>(c)];
    kp2.push_back(kp[static_cast<std::size_t>(j)]);
    for (index_t h = 0; h < s.Hkv; ++h) {
      for (index_t d = 0; d < s.D; ++d) k2.view(0, h, c, d) = in.k.view(0, h, j, d);
      for (index_t d = 0; d < s.Dv; ++d) v2.view(0, h, c, d) = in.v.view(0, h, j, d);
    }
  }
  attnkit::probabilistic full = make_policy(kp, &qp, mode_kind::key_logprob);
  attnkit::probabilistic compact = make_policy(kp2, &qp, mode_kind::key_logprob);
  const float cap = GENERATE(0.f, 2.f);
  full.softcap = compact.softcap = cap;
  CAPTURE(cap, t.Nk);
  check_close(run_either(fast, full, in.q, in.k, in.v), run_either(fast, compact, in.q, k2, v2), 2e-6, 2e-6);
}

TEST_CASE("probabilities 0/1 equal hard masks: fade-out equals padding (key_lens = query_lens)",
          "[probabilistic][property]") {
  // Self-attention with p = 1 before L_b and 0 from L_b on: the rows from L_b on are zeros and
  // the keys from L_b on are removed, exactly softmax with key_lens = query_lens = L_b (whose
  // rows then sit at their own positions, so causal, windows and ALiBi line up too).
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const bool log_space = GENERATE(false, true);
  problem s = make_problem(3, 4, 1, 130, 130, 16, 16);
  CAPTURE(fast, log_space);
  const std::int32_t lens[3] = {130, 57, 0};
  std::vector<float> p01(static_cast<std::size_t>(s.B * s.Nk));
  for (index_t b = 0; b < s.B; ++b)
    for (index_t j = 0; j < s.Nk; ++j) p01[static_cast<std::size_t>(b * s.Nk + j)] = j < lens[b] ? 1.f : 0.f;
  const std::vector<float> probs = log_space ? to_log(p01) : p01;
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  const auto in = random_qkv<float>(s, gen);
  for (int variant = 0; variant < 3; ++variant) {
    attnkit::probabilistic p = make_policy(probs, nullptr, mode, log_space);
    if (variant >= 1) p.causal = true, p.alibi_slopes = slopes.data();
    if (variant >= 2) p.window_left = 20, p.softcap = 3.f;
    attnkit::softmax padded = softmax_of(p);
    padded.key_lens = padded.query_lens = lens;
    INFO(describe(p));
    const auto got = run_either(fast, p, in.q, in.k, in.v);
    const auto want = run_either(fast, padded, in.q, in.k, in.v);
    if (fast)
      check_close(got, want, 1e-6, 1e-6);
    else
      CHECK(same_result(got, want));
    check_empty_rows(got, [&](index_t b, index_t, index_t i) { return i >= lens[b]; });
  }
}

TEST_CASE("probabilities 0/1 anywhere equal the hard mask of the zero positions", "[probabilistic][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const auto n = GENERATE(std::make_pair(100, 100), std::make_pair(60, 140));
  problem s = make_problem(2, 2, 2, n.first, n.second, 16, 16);
  CAPTURE(fast, describe(s));
  const auto kp = random_probs(s.B * s.Nk, gen, 0.5, 0.5, 0.0), qp = random_probs(s.B * s.Nq, gen, 0.3, 0.7, 0.0);
  const bool self = s.Nq == s.Nk;
  attnkit::probabilistic p = make_policy(kp, self ? nullptr : &qp, mode);
  p.causal = GENERATE(false, true);
  const auto in = random_qkv<float>(s, gen);
  const std::vector<float>& qprob = self ? kp : qp;
  // the mask alone, on a custom policy (no score transform)
  const auto mask = attnkit::make_custom([&](index_t b, index_t, index_t i, index_t j) {
    const index_t pos = i + s.Nk - s.Nq;
    return qprob[static_cast<std::size_t>(b * s.Nq + i)] == 1.f && kp[static_cast<std::size_t>(b * s.Nk + j)] == 1.f &&
           (!p.causal || j <= pos);
  });
  check_close(run_either(fast, p, in.q, in.k, in.v), run_ref(mask, in.q, in.k, in.v), 2e-6, 2e-6);
}

TEST_CASE("p_i = 0 gives a zero row with lse -inf, whatever its keys", "[probabilistic][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const bool log_space = GENERATE(false, true);
  problem s = make_problem(2, 4, 2, 110, 130, 16, 16);
  CAPTURE(fast, log_space);
  const auto kp = random_probs(s.B * s.Nk, gen, 0.1);
  auto qp = random_probs(s.B * s.Nq, gen, 0.4);
  for (index_t i = 48; i < 96; ++i) qp[static_cast<std::size_t>(i)] = 0.f;  // a whole query tile of batch 0
  const auto kpl = log_space ? to_log(kp) : kp, qpl = log_space ? to_log(qp) : qp;
  attnkit::probabilistic p = make_policy(kpl, &qpl, mode, log_space);
  p.scale = 3.f;  // large logits in the rows that are zeroed
  auto in = random_qkv<float>(s, gen);
  // a NaN in the query of a row that does not exist does not reach its zeros
  for (index_t h = 0; h < s.Hq; ++h) in.q.set(0, h, 50, 3, std::numeric_limits<float>::quiet_NaN());
  const auto r = run_either(fast, p, in.q, in.k, in.v);
  check_empty_rows(r, [&](index_t b, index_t, index_t i) { return qp[static_cast<std::size_t>(b * s.Nq + i)] == 0.f; });
  CHECK(no_nan(r));
  // rows that exist still see their keys: lse finite
  index_t missing = 0;
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i)
        if (qp[static_cast<std::size_t>(b * s.Nq + i)] != 0.f)
          missing += !std::isfinite(r.lse((b * s.Hq + h) * s.Nq + i));
  CHECK(missing == 0);
}

TEST_CASE("log_space input gives the same result as linear input", "[probabilistic][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const auto n = GENERATE(std::make_pair(90, 90), std::make_pair(50, 120));
  problem s = make_problem(2, 2, 1, n.first, n.second, 16, 16);
  CAPTURE(fast, describe(s));
  const auto kp = random_probs(s.B * s.Nk, gen), qp = random_probs(s.B * s.Nq, gen);
  // and probabilities below 1e-20, which both encodings clamp to 1e-20
  std::vector<float> kp2 = kp;
  kp2[3] = 1e-30f, kp2[5] = 1e-38f, kp2[7] = 1e-44f;
  const auto kl = to_log(kp2), ql = to_log(qp);
  const bool self = s.Nq == s.Nk;
  attnkit::probabilistic lin = make_policy(kp2, self ? nullptr : &qp, mode, false);
  attnkit::probabilistic lg = make_policy(kl, self ? nullptr : &ql, mode, true);
  lin.causal = lg.causal = GENERATE(false, true);
  const auto in = random_qkv<float>(s, gen);
  // log p rounded to float differs from log of the float p by half an ulp of log p (<= 4e-6 at -46)
  check_close(run_either(fast, lg, in.q, in.k, in.v), run_either(fast, lin, in.q, in.k, in.v), 2e-5, 2e-5);
}

TEST_CASE("key_logprob multiplies the softmax weights by p_j (weights read with one-hot values)",
          "[probabilistic][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const bool causal = GENERATE(false, true);
  problem s = make_problem(2, 2, 1, 40, 70, 16, 70);
  CAPTURE(fast, causal);
  const auto kp = random_probs(s.B * s.Nk, gen, 0.2, 0.2, 0.0), qp = random_probs(s.B * s.Nq, gen, 0.0, 0.2, 0.0);
  attnkit::probabilistic p = make_policy(kp, &qp, mode_kind::key_logprob);
  p.causal = causal;
  auto in = random_qkv<float>(s, gen);
  in.v = one_hot_values(s);
  const auto got = run_either(fast, p, in.q, in.k, in.v);
  const auto soft = run_ref(softmax_of(p), in.q, in.k, in.v);  // the plain softmax weights
  index_t bad = 0;
  std::string first;
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        double total = 0;
        for (index_t j = 0; j < s.Nk; ++j)
          total += soft.out.get(b, h, i, j) * double(kp[static_cast<std::size_t>(b * s.Nk + j)]);
        const index_t row = (b * s.Hq + h) * s.Nq + i;
        const double want_lse = total > 0 ? double(soft.lse(row)) + std::log(total) : -HUGE_VAL;
        bool ok = close(got.lse(row), want_lse, 1e-5, 1e-6);
        for (index_t j = 0; j < s.Nk; ++j) {
          const double want =
              total > 0 ? soft.out.get(b, h, i, j) * double(kp[static_cast<std::size_t>(b * s.Nk + j)]) / total : 0.0;
          ok = ok && close(got.out.get(b, h, i, j), want, 2e-6, 1e-5);
        }
        if (!ok && bad++ == 0) first = "b=" + std::to_string(b) + " h=" + std::to_string(h) + " i=" + std::to_string(i);
      }
  INFO("rows whose weights are not p_j times softmax's, renormalised: " << bad << ", first " << first);
  CHECK(bad == 0);
}

TEST_CASE("zonkey_ratio closed form: weights times p_j / p_i for keys after the query", "[probabilistic][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(40, 70), std::make_pair(70, 40));
  problem s = make_problem(1, 2, 1, n.first, n.second, 16, n.second);
  CAPTURE(fast, describe(s));
  auto kp = random_probs(s.Nk, gen, 0.1, 0.2, 0.0), qp = random_probs(s.Nq, gen, 0.1, 0.2, 0.0);
  kp[0] = 1.f, qp[0] = 1.f;  // query 0 with p_0 = 1: the pure log p_j bias
  const bool self = s.Nq == s.Nk;
  const std::vector<float>& qprob = self ? kp : qp;
  attnkit::probabilistic p = make_policy(kp, self ? nullptr : &qp, mode_kind::zonkey_ratio);
  auto in = random_qkv<float>(s, gen);
  in.v = one_hot_values(s);
  const auto got = run_either(fast, p, in.q, in.k, in.v);
  const auto soft = run_ref(softmax_of(p), in.q, in.k, in.v);
  index_t bad = 0;
  std::string first;
  for (index_t h = 0; h < s.Hq; ++h)
    for (index_t i = 0; i < s.Nq; ++i) {
      const double pi = qprob[static_cast<std::size_t>(i)];
      std::vector<double> w(static_cast<std::size_t>(s.Nk));
      double total = 0;
      for (index_t j = 0; j < s.Nk; ++j) {
        const double pj = kp[static_cast<std::size_t>(j)];
        const double factor = pi == 0 || pj == 0 ? 0.0 : (j > i ? pj / pi : 1.0);
        w[static_cast<std::size_t>(j)] = soft.out.get(0, h, i, j) * factor;
        total += w[static_cast<std::size_t>(j)];
      }
      const index_t row = h * s.Nq + i;
      bool ok = close(got.lse(row), total > 0 ? double(soft.lse(row)) + std::log(total) : -HUGE_VAL, 1e-5, 1e-6);
      for (index_t j = 0; j < s.Nk; ++j)
        ok = ok && close(got.out.get(0, h, i, j), total > 0 ? w[static_cast<std::size_t>(j)] / total : 0.0, 2e-6, 1e-5);
      if (!ok && bad++ == 0) first = "h=" + std::to_string(h) + " i=" + std::to_string(i);
    }
  INFO("rows that do not follow the closed form: " << bad << ", first " << first);
  CHECK(bad == 0);
  // query 0 (p_0 = 1) has the pure log p_j bias: its row equals key_logprob's row 0
  attnkit::probabilistic logprob = p;
  logprob.mode = mode_kind::key_logprob;
  const auto l = run_either(fast, logprob, in.q, in.k, in.v);
  for (index_t h = 0; h < s.Hq; ++h)
    for (index_t j = 0; j < s.Nk; ++j) CHECK(close(got.out.get(0, h, 0, j), l.out.get(0, h, 0, j), 2e-6, 2e-5));
}

TEST_CASE("zonkey_ratio: scaling the probabilities of later keys moves only their weights",
          "[probabilistic][property]") {
  // Multiplying p_j of every key j > i by c multiplies those keys' weights by c relative to
  // the keys at or before i (the closed form); the ratios among the earlier keys stay put.
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  problem s = make_problem(1, 1, 1, 60, 60, 16, 60);
  CAPTURE(fast);
  auto kp = random_probs(s.Nk, gen, 0.0, 0.0, 0.0);
  std::uniform_int_distribution<index_t> pick(5, 50);
  const index_t i = pick(gen);
  const double c = 0.37;
  auto kp2 = kp;
  for (index_t j = i + 1; j < s.Nk; ++j)
    kp2[static_cast<std::size_t>(j)] = static_cast<float>(c * kp[static_cast<std::size_t>(j)]);
  // p_i itself is unchanged, so row i's ratios change by exactly c (up to float rounding of p)
  auto in = random_qkv<float>(s, gen);
  in.v = one_hot_values(s);
  const auto a = run_either(fast, make_policy(kp, nullptr, mode_kind::zonkey_ratio), in.q, in.k, in.v);
  const auto b = run_either(fast, make_policy(kp2, nullptr, mode_kind::zonkey_ratio), in.q, in.k, in.v);
  CAPTURE(i);
  const double early_a = a.out.get(0, 0, i, 0), early_b = b.out.get(0, 0, i, 0);
  for (index_t j = 1; j < s.Nk; ++j) {
    CAPTURE(j);
    const double ratio_a = a.out.get(0, 0, i, j) / early_a, ratio_b = b.out.get(0, 0, i, j) / early_b;
    const double factor =
        j > i ? double(kp2[static_cast<std::size_t>(j)]) / double(kp[static_cast<std::size_t>(j)]) : 1.0;
    CHECK(ratio_b == Approx(ratio_a * factor).epsilon(2e-5));
  }
}

TEST_CASE("causal: zonkey_ratio only removes zero-probability keys; no row sees the future",
          "[probabilistic][property][causal]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(200, 200), std::make_pair(100, 200), std::make_pair(150, 70));
  problem s = make_problem(1, 4, 2, n.first, n.second, 16, 16);
  CAPTURE(fast, describe(s));
  const index_t off = s.Nk - s.Nq;
  const auto kp = random_probs(s.Nk, gen, 0.2), qp = random_probs(s.Nq, gen, 0.1);
  const bool self = s.Nq == s.Nk;
  attnkit::probabilistic p = make_policy(kp, self ? nullptr : &qp, mode_kind::zonkey_ratio);
  p.causal = true;
  const auto in = random_qkv<float>(s, gen);
  const auto a = run_either(fast, p, in.q, in.k, in.v);
  if (self) {
    // j <= i for every visible key: no bias at all, only the zeros act (all other p set to 1)
    std::vector<float> hard(kp.size());
    for (std::size_t e = 0; e < kp.size(); ++e) hard[e] = kp[e] == 0.f ? 0.f : 1.f;
    attnkit::probabilistic h = make_policy(hard, nullptr, mode_kind::zonkey_ratio);
    h.causal = true;
    check_close(a, run_either(fast, h, in.q, in.k, in.v), 1e-6, 1e-6);
  }
  // changing a key no row may see leaves earlier rows bitwise unchanged
  std::uniform_int_distribution<index_t> pick(std::max<index_t>(0, off + 1), s.Nk - 1);
  const index_t j0 = pick(gen);
  CAPTURE(j0);
  auto k2 = in.k, v2 = in.v;
  for (index_t h = 0; h < s.Hkv; ++h) {
    for (index_t d = 0; d < s.D; ++d) k2.set(0, h, j0, d, 3.f * k2.get(0, h, j0, d) + 1.f);
    for (index_t d = 0; d < s.Dv; ++d) v2.set(0, h, j0, d, -v2.get(0, h, j0, d) + 0.5f);
  }
  const auto b = run_either(fast, p, in.q, k2, v2);
  index_t changed_early = 0;
  for (index_t h = 0; h < s.Hq; ++h)
    for (index_t i = 0; i < s.Nq && j0 > i + off; ++i) {
      bool same = a.lse(h * s.Nq + i) == b.lse(h * s.Nq + i);
      for (index_t d = 0; d < s.Dv; ++d)
        same = same && (std::memcmp(&a.out.view(0, h, i, d), &b.out.view(0, h, i, d), 4) == 0 ||
                        (a.out.get(0, h, i, d) == 0.f && b.out.get(0, h, i, d) == 0.f));
      changed_early += !same;
    }
  CHECK(changed_early == 0);
}

TEST_CASE("tiny probabilities (1e-20 .. 1e-7) and below stay finite", "[probabilistic][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const bool log_space = GENERATE(false, true);
  problem s = make_problem(2, 2, 1, 130, 130, 16, 16);
  CAPTURE(log_space);
  // every probability tiny, or down to the smallest subnormal; queries tiny and keys 1 too
  // (zonkey_ratio's bias reaches +46)
  std::vector<float> kp = random_probs(s.B * s.Nk, gen, 0.0, 0.1, 0.8);
  kp[1] = 1e-45f, kp[2] = 1e-30f, kp[3] = std::numeric_limits<float>::min();
  for (index_t j = 0; j < 64; ++j) kp[static_cast<std::size_t>(s.Nk + j)] = 1e-20f;
  const auto probs = log_space ? to_log(kp) : kp;
  attnkit::probabilistic p = make_policy(probs, nullptr, mode, log_space);
  p.causal = GENERATE(false, true);
  auto [fast, ref] = fast_vs_reference<float>(p, s, gen);
  CHECK(no_nan(fast));
  CHECK(all_finite(fast.out));
  CHECK(all_finite(ref.out));
  for (index_t r = 0; r < s.rows(); ++r) CHECK(std::isfinite(fast.lse(r)));
}

// ---------------------------------------------------------------------------------------------
// Fast path against the reference.
// ---------------------------------------------------------------------------------------------

TEST_CASE("matches reference: odd sizes, Dv != D, GQA, batch > 1, both modes", "[probabilistic][sizes]") {
  ATTNKIT_SEEDED_RNG(gen);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const auto shape = GENERATE(std::make_tuple(1, 1, 1, 1, 1, 1, 1), std::make_tuple(2, 4, 2, 37, 37, 24, 20),
                              std::make_tuple(3, 6, 3, 13, 29, 3, 17), std::make_tuple(2, 8, 1, 50, 21, 40, 8),
                              std::make_tuple(1, 2, 2, 1, 97, 16, 16), std::make_tuple(2, 3, 1, 65, 64, 80, 33));
  problem s = make_problem(std::get<0>(shape), std::get<1>(shape), std::get<2>(shape), std::get<3>(shape),
                           std::get<4>(shape), std::get<5>(shape), std::get<6>(shape));
  const auto kp = random_probs(s.B * s.Nk, gen), qp = random_probs(s.B * s.Nq, gen);
  const bool self = s.Nq == s.Nk;
  for (const bool log_space : {false, true}) {
    const auto kpl = log_space ? to_log(kp) : kp, qpl = log_space ? to_log(qp) : qp;
    attnkit::probabilistic p = make_policy(kpl, self ? nullptr : &qpl, mode, log_space);
    fast_vs_reference<float>(p, s, gen);
    p.causal = true;
    fast_vs_reference<float>(p, s, gen);
    if (self) {  // self-attention with the queries' own array given explicitly
      p.query_prob = kpl.data();
      fast_vs_reference<float>(p, s, gen);
    }
  }
}

TEST_CASE("matches reference: layouts", "[probabilistic][layout]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto lay = GENERATE(std::make_tuple(layout::bshd, layout::bshd, layout::bshd, layout::bshd),
                            std::make_tuple(layout::strided, layout::strided, layout::strided, layout::strided),
                            std::make_tuple(layout::bhsd, layout::strided, layout::bshd, layout::strided),
                            std::make_tuple(layout::strided, layout::bshd, layout::bhsd, layout::bshd));
  problem s = make_problem(2, 4, 2, 45, 45, 24, 20);
  const auto kp = random_probs(s.B * s.Nk, gen);
  attnkit::probabilistic p = make_policy(kp, nullptr, GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob));
  p.causal = GENERATE(false, true);
  fast_vs_reference<float>(p, s, gen, std::get<0>(lay), std::get<1>(lay), std::get<2>(lay), std::get<3>(lay));
}

TEMPLATE_TEST_CASE("matches reference: 16-bit inputs and outputs", "[probabilistic][half]", (std::pair<bf16, float>),
                   (std::pair<bf16, bf16>), (std::pair<f16, f16>), (std::pair<float, bf16>)) {
  using In = typename TestType::first_type;
  using Out = typename TestType::second_type;
  ATTNKIT_SEEDED_RNG(gen);
  problem s = make_problem(2, 4, 2, 70, 90, 32, 24);
  const auto kp = random_probs(s.B * s.Nk, gen), qp = random_probs(s.B * s.Nq, gen);
  attnkit::probabilistic p = make_policy(kp, &qp, GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob));
  for_each_bf16_way([&] {
    fast_vs_reference<In, Out>(p, s, gen);
    p.causal = true;
    fast_vs_reference<In, Out>(p, s, gen, layout::bshd, layout::bshd, layout::bshd, layout::bshd);
    p.causal = false;
  });
}

TEST_CASE("matches reference: every softmax field combined", "[probabilistic][fields]") {
  ATTNKIT_SEEDED_RNG(gen);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  const bool log_space = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(40, 100), std::make_pair(100, 40));
  problem s = make_problem(4, 4, 2, n.first, n.second, 16, 8);
  const bool self = s.Nq == s.Nk;
  const auto kp = random_probs(s.B * s.Nk, gen), qp = random_probs(s.B * s.Nq, gen);
  const auto kpl = log_space ? to_log(kp) : kp, qpl = log_space ? to_log(qp) : qp;
  const auto slopes = attnkit::alibi_slopes(s.Hq);
  std::vector<std::int32_t> kl(4), ql(4);
  std::uniform_int_distribution<int> rk(0, static_cast<int>(s.Nk)), rq(0, static_cast<int>(s.Nq));
  for (int b = 0; b < 4; ++b) kl[b] = rk(gen), ql[b] = rq(gen);
  kl[0] = static_cast<std::int32_t>(s.Nk), ql[0] = static_cast<std::int32_t>(s.Nq), kl[1] = 0, ql[2] = 0;
  INFO("key_lens " << kl[0] << " " << kl[1] << " " << kl[2] << " " << kl[3] << "; query_lens " << ql[0] << " " << ql[1]
                   << " " << ql[2] << " " << ql[3]);
  for (int variant = 0; variant < 6; ++variant) {
    attnkit::probabilistic p = make_policy(kpl, self ? nullptr : &qpl, mode, log_space);
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
    auto [fast, ref] =
        fast_vs_reference<float>(p, s, gen, layout::bhsd, layout::bhsd, layout::bhsd, layout::bhsd, 0, 2.f);
    CHECK(no_nan(fast));
  }
}

TEST_CASE("matches reference: N ~ 300 crossing key chunks and query tiles, tiles on the diagonal",
          "[probabilistic][large]") {
  ATTNKIT_SEEDED_RNG(gen);
  const mode_kind mode = GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob);
  SECTION("self-attention N = 300: the ratio is live above the diagonal, whole zero key chunks and query tiles") {
    problem s = make_problem(1, 2, 1, 300, 300, 32, 32);
    auto kp = random_probs(s.Nk, gen, 0.05, 0.05, 0.05);
    for (index_t j = 128; j < 192; ++j) kp[static_cast<std::size_t>(j)] = 0.f;  // one whole key chunk
    for (index_t j = 240; j < 288; ++j) kp[static_cast<std::size_t>(j)] = 0.f;  // one whole query tile
    attnkit::probabilistic p = make_policy(kp, nullptr, mode);
    auto [fast, ref] = fast_vs_reference<float>(p, s, gen);
    check_empty_rows(fast, [&](index_t, index_t, index_t i) { return kp[static_cast<std::size_t>(i)] == 0.f; });
    p.causal = true;
    fast_vs_reference<float>(p, s, gen);
    p.causal = false;
    p.window_left = p.window_right = 70;
    fast_vs_reference<float>(p, s, gen);
  }
  SECTION("cross-attention Nq = 230, Nk = 290 with query_prob, monotone probabilities from existence_from_continue") {
    problem s = make_problem(2, 2, 1, 230, 290, 24, 16);
    std::vector<float> bk(static_cast<std::size_t>(s.B * s.Nk)), bq(static_cast<std::size_t>(s.B * s.Nq));
    std::uniform_real_distribution<float> u(0.f, 0.05f);
    for (float& x : bk) x = u(gen);
    for (float& x : bq) x = u(gen);
    const auto kp = attnkit::existence_from_continue(bk.data(), s.B, s.Nk);
    const auto qp = attnkit::existence_from_continue(bq.data(), s.B, s.Nq);
    attnkit::probabilistic p = make_policy(kp, &qp, mode);
    fast_vs_reference<float>(p, s, gen);
    p.causal = true;
    fast_vs_reference<float>(p, s, gen);
  }
}

TEST_CASE("threads = 1, 2, 3, 0 give bitwise identical out and lse", "[probabilistic][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(260, 260), std::make_pair(3, 1000), std::make_pair(120, 200));
  problem s = make_problem(2, 4, 2, n.first, n.second, 32, 32);
  CAPTURE(describe(s));
  const auto kp = random_probs(s.B * s.Nk, gen), qp = random_probs(s.B * s.Nq, gen);
  attnkit::probabilistic p = make_policy(kp, &qp, GENERATE(mode_kind::zonkey_ratio, mode_kind::key_logprob));
  p.causal = GENERATE(false, true);
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
// existence_from_continue.
// ---------------------------------------------------------------------------------------------

TEST_CASE("existence_from_continue: p_0 = 1, cumulative products, clamps, b = 1 ends the sequence",
          "[probabilistic][existence]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t B = 3, N = 40;
  std::vector<float> b(static_cast<std::size_t>(B * N));
  std::uniform_real_distribution<float> u(0.f, 0.3f);
  for (float& x : b) x = u(gen);
  b[0] = 0.9f;          // b_0 never matters: p is divided by its first entry
  b[N + 5] = 0.f;       // below the clamp 1e-7
  b[2 * N + 10] = 1.f;  // a certain boundary: nothing exists after it
  SECTION("unclamped: p_0 = 1 and p_t = prod_{s=1..t} (1 - b_s), zeros after b = 1") {
    const auto p = attnkit::existence_from_continue(b.data(), B, N, false);
    REQUIRE(p.size() == b.size());
    for (index_t r = 0; r < B; ++r) {
      double prod = 1;
      for (index_t t = 0; t < N; ++t) {
        if (t > 0) prod *= 1.0 - double(b[static_cast<std::size_t>(r * N + t)]);
        CAPTURE(r, t);
        CHECK(p[static_cast<std::size_t>(r * N + t)] == Approx(prod).epsilon(1e-6).margin(1e-30));
      }
      CHECK(p[static_cast<std::size_t>(r * N)] == 1.f);
    }
    for (index_t t = 10; t < N; ++t) CHECK(p[static_cast<std::size_t>(2 * N + t)] == 0.f);
    for (index_t t = 1; t < N; ++t)  // monotone
      CHECK(p[static_cast<std::size_t>(t)] <= p[static_cast<std::size_t>(t - 1)]);
  }
  SECTION("clamped (the code's default): b >= 1e-7, p in [1e-7, 1 - 1e-7]") {
    const auto p = attnkit::existence_from_continue(b.data(), B, N);
    for (index_t r = 0; r < B; ++r) {
      double log_p = 0;
      for (index_t t = 0; t < N; ++t) {
        if (t > 0) log_p += std::log1p(-std::max(double(b[static_cast<std::size_t>(r * N + t)]), 1e-7));
        const double want = std::min(std::max(std::exp(log_p), 1e-7), 1 - 1e-7);
        CAPTURE(r, t);
        CHECK(p[static_cast<std::size_t>(r * N + t)] == Approx(want).epsilon(1e-6));
        CHECK(p[static_cast<std::size_t>(r * N + t)] >= 1e-7f * (1 - 1e-6f));
        CHECK(p[static_cast<std::size_t>(r * N + t)] < 1.f);
      }
    }
    for (index_t t = 10; t < N; ++t) CHECK(p[static_cast<std::size_t>(2 * N + t)] == Approx(1e-7).epsilon(1e-6));
    // b = 0 everywhere: 1 - 1e-7 clamped, then (1 - 1e-7)^t
    const std::vector<float> zeros(5, 0.f);
    const auto z = attnkit::existence_from_continue(zeros.data(), 1, 5);
    for (index_t t = 0; t < 5; ++t)
      CHECK(z[static_cast<std::size_t>(t)] == Approx(std::min(std::pow(1 - 1e-7, double(t)), 1 - 1e-7)).epsilon(1e-7));
  }
  SECTION("bad b: outside [0, 1] or NaN throws; empty input is fine") {
    for (float bad : {-0.1f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
      CAPTURE(bad);
      std::vector<float> c = b;
      c[7] = bad;
      CHECK_THROWS_AS(attnkit::existence_from_continue(c.data(), B, N), attnkit::error);
    }
    CHECK_THROWS_AS(attnkit::existence_from_continue(nullptr, 1, 3), attnkit::error);
    CHECK_THROWS_AS(attnkit::existence_from_continue(b.data(), -1, 3), attnkit::error);
    CHECK(attnkit::existence_from_continue(nullptr, 0, 5).empty());
  }
}

// ---------------------------------------------------------------------------------------------
// Validation: attnkit::error before anything is written.
// ---------------------------------------------------------------------------------------------

namespace {

/// Fast and reference attention both throw attnkit::error mentioning `what`; out and lse keep
/// their sentinels.
template <class P>
void expect_rejected(const P& p, const qkv<float>& in, const problem& s, const std::string& what) {
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

TEST_CASE("bad input throws attnkit::error naming the field, out untouched", "[probabilistic][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s = make_problem(2, 4, 2, 10, 10, 8, 6);
  const auto in = random_qkv<float>(s, gen);
  std::vector<float> kp(static_cast<std::size_t>(s.B * s.Nk), 0.5f), qp(static_cast<std::size_t>(s.B * s.Nq), 0.5f);
  const float nan = std::numeric_limits<float>::quiet_NaN();

  SECTION("key_prob outside [0, 1] or NaN") {
    for (float bad : {-0.01f, 1.01f, nan, inf, -inf}) {
      CAPTURE(bad);
      auto k2 = kp;
      k2[13] = bad;
      expect_rejected(make_policy(k2, nullptr, mode_kind::zonkey_ratio), in, s, "key_prob[13]");
    }
  }
  SECTION("query_prob outside [0, 1] or NaN") {
    for (float bad : {-1.f, 2.f, nan}) {
      CAPTURE(bad);
      auto q2 = qp;
      q2[4] = bad;
      expect_rejected(make_policy(kp, &q2, mode_kind::key_logprob), in, s, "query_prob[4]");
    }
  }
  SECTION("log_space values above 0 or NaN") {
    for (float bad : {0.5f, 1e-3f, nan, inf}) {
      CAPTURE(bad);
      auto l = to_log(kp);
      l[19] = bad;
      expect_rejected(make_policy(l, nullptr, mode_kind::zonkey_ratio, true), in, s, "key_prob[19]");
      auto ql = to_log(qp);
      ql[0] = bad;
      const auto kl = to_log(kp);
      expect_rejected(make_policy(kl, &ql, mode_kind::zonkey_ratio, true), in, s, "query_prob[0]");
    }
  }
  SECTION("null key_prob") {
    attnkit::probabilistic p;
    expect_rejected(p, in, s, "key_prob");
  }
  SECTION("null query_prob with Nq != Nk") {
    problem t = make_problem(2, 4, 2, 9, 10, 8, 6);
    const auto in2 = random_qkv<float>(t, gen);
    expect_rejected(make_policy(kp, nullptr, mode_kind::zonkey_ratio), in2, t, "query_prob");
  }
  SECTION("an unknown mode") {
    attnkit::probabilistic p = make_policy(kp, nullptr, static_cast<mode_kind>(7));
    expect_rejected(p, in, s, "mode");
  }
  SECTION("the softmax fields: window, softcap, scale, ALiBi, lengths") {
    attnkit::probabilistic p = make_policy(kp, nullptr, mode_kind::zonkey_ratio);
    auto w = p;
    w.window_left = -2;
    expect_rejected(w, in, s, "window_left");
    auto c = p;
    c.softcap = -1.f;
    expect_rejected(c, in, s, "softcap");
    auto sc = p;
    sc.scale = nan;
    expect_rejected(sc, in, s, "scale");
    std::vector<float> slopes = attnkit::alibi_slopes(s.Hq);
    slopes[2] = inf;
    auto a = p;
    a.alibi_slopes = slopes.data();
    expect_rejected(a, in, s, "alibi_slopes[2]");
    const std::int32_t kl[2] = {3, 11}, ql[2] = {-1, 4};
    auto k = p;
    k.key_lens = kl;
    expect_rejected(k, in, s, "key_lens[1]");
    auto q = p;
    q.query_lens = ql;
    expect_rejected(q, in, s, "query_lens[0]");
  }
  SECTION("valid input does not throw") {
    auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
    CHECK_NOTHROW(attnkit::attention(make_policy(kp, &qp, mode_kind::zonkey_ratio), in.q.cview(), in.k.cview(),
                                     in.v.cview(), out.view));
    CHECK_NOTHROW(attnkit::reference::attention(make_policy(kp, nullptr, mode_kind::key_logprob), in.q.cview(),
                                                in.k.cview(), in.v.cview(), out.view));
  }
}
