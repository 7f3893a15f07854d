// Softplus attention with length scaling (LSSA) and re-weighting (LSSAR), section 1 of
// spec/extra_variants.md: Gao, Spratling, Gionfrida, "Softplus Attention with Re-weighting
// Boosts Length Extrapolation in Large Language Models", arXiv 2501.13428. The float64
// reference (two-pass form) pinned by hand, against the literal definition and against the
// one-pass online softmax over t = power * log softplus(lambda s) on a custom policy; the
// spec's properties on the reference and on attnkit::attention; the fast path against the
// reference on fresh random inputs; validation. Set ATTNKIT_TEST_SEED to replay a failing run.
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

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

std::string describe(const attnkit::softplus& p) {
  std::ostringstream o;
  o << "softplus{scale=" << p.scale << " length_scale=" << p.length_scale << " alpha=" << p.alpha
    << " min_len=" << p.min_len << " power=" << p.power << " threshold=" << p.threshold << " causal=" << p.causal
    << " window=(" << p.window_left << "," << p.window_right << ") key_lens=" << (p.key_lens ? "yes" : "no")
    << " query_lens=" << (p.query_lens ? "yes" : "no") << "}";
  return o.str();
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

attnkit::softplus make_softplus(float power = 1, float threshold = 0, bool causal = false) {
  attnkit::softplus p;
  p.power = power, p.threshold = threshold, p.causal = causal;
  return p;
}

/// The softmax policy with the same masks (softmax_visible of it is the spec's step 4).
attnkit::softmax masks_of(const attnkit::softplus& p) {
  attnkit::softmax s;
  s.scale = p.scale, s.causal = p.causal, s.window_left = p.window_left, s.window_right = p.window_right;
  s.key_lens = p.key_lens, s.query_lens = p.query_lens;
  return s;
}

/// Row i's visible keys of batch entry b (nq queries, nk keys).
std::vector<index_t> visible_keys(const attnkit::softplus& p, index_t b, index_t i, index_t nq, index_t nk) {
  const index_t lq = p.query_lens ? p.query_lens[b] : nq, lk = p.key_lens ? p.key_lens[b] : nk;
  std::vector<index_t> keys;
  for (index_t j = 0; j < nk; ++j)
    if (attnkit::reference::detail::softmax_visible(masks_of(p), i, j, lq, lk)) keys.push_back(j);
  return keys;
}

/// lambda_i = alpha log(max(n_i, min_len)) (length_scale) or 1.
double lambda_of(const attnkit::softplus& p, index_t n) {
  return p.length_scale ? double(p.alpha) * std::log(double(std::max(n, p.min_len))) : 1.0;
}

/// log(softplus(x)) in double, written for the test: log1p(e^x) is e^x (1 - e^x/2 + ...).
double log_softplus_test(double x) {
  if (x > 0) return std::log(x + std::log1p(std::exp(-x)));
  if (x > -700) return std::log(std::log1p(std::exp(x)));
  return x;
}

/// attnkit::attention (fast) or attnkit::reference::attention of p, into fresh out and lse.
template <class O = float, class P, class Q, class K, class V>
result<O> run_either(bool fast, const P& p, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v,
                     layout lo = layout::bhsd, int threads = 0) {
  return fast ? run_fast<O>(p, q, k, v, lo, threads) : run_ref<O>(p, q, k, v, lo);
}

/// How much a relative error of u_ij = n_i A_ij (float carries a few 1e-7 of it) is amplified
/// by the cancellation in R_ij = max(0, u_ij - threshold)^power, per row [B, Hq, Nq]: the
/// largest u / |u - threshold| over the row's visible keys (1 when threshold = 0). The power
/// multiplies it again. Rows where some u lies very close to the threshold are ill-conditioned:
/// the weight of that key (or whether the row is empty at all) depends on the last bits of u.
template <class Q, class K>
std::vector<double> reweighting_condition(const attnkit::softplus& p, const tensor<Q>& q, const tensor<K>& k) {
  const index_t B = q.ext[0], Hq = q.ext[1], Nq = q.ext[2], D = q.ext[3], Hkv = k.ext[1], Nk = k.ext[2];
  const double scale = p.scale != 0 ? double(p.scale) : 1 / std::sqrt(double(D)), tau = p.threshold;
  std::vector<double> kappa(static_cast<std::size_t>(B * Hq * Nq), 1.0);
  if (tau == 0) return kappa;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h)
      for (index_t i = 0; i < Nq; ++i) {
        const auto keys = visible_keys(p, b, i, Nq, Nk);
        const double lambda = lambda_of(p, static_cast<index_t>(keys.size()));
        std::vector<double> log_a;
        double m = -HUGE_VAL;
        for (const index_t j : keys) {
          double dot = 0;
          for (index_t d = 0; d < D; ++d) dot += double(q.get(b, h, i, d)) * double(k.get(b, h / (Hq / Hkv), j, d));
          log_a.push_back(log_softplus_test(lambda * scale * dot));
          m = std::max(m, log_a.back());
        }
        double z = 0;
        for (const double la : log_a) z += std::exp(la - m);
        double worst = 1;
        for (const double la : log_a) {
          const double u = double(keys.size()) * std::exp(la - m) / z;
          worst = std::max(worst, u / std::abs(u - tau));
        }
        kappa[static_cast<std::size_t>((b * Hq + h) * Nq + i)] = worst;
      }
  return kappa;
}

/// CHECKs fast against ref row by row: out within tol.atol + 1e-6 power kappa_i (+ rtol), lse
/// within tol.lse_atol + 1e-6 power kappa_i (+ lse_rtol), kappa_i from reweighting_condition.
/// Rows with kappa_i > 1e5 (some u within 1e-5 of the threshold) are not compared; they must
/// stay rare.
template <class O, class Q, class K>
void check_softplus_matches(const result<O>& fast, const result<float>& ref, const attnkit::softplus& p,
                            const tensor<Q>& q, const tensor<K>& k, tolerance tol) {
  const auto kappa = reweighting_condition(p, q, k);
  const auto& e = fast.out.ext;
  index_t bad = 0, skipped = 0;
  std::string first;
  for (index_t b = 0; b < e[0]; ++b)
    for (index_t h = 0; h < e[1]; ++h)
      for (index_t i = 0; i < e[2]; ++i) {
        const index_t row = (b * e[1] + h) * e[2] + i;
        if (kappa[static_cast<std::size_t>(row)] > 1e5) {
          ++skipped;
          continue;
        }
        const double c = double(p.power) * kappa[static_cast<std::size_t>(row)];
        bool ok = close(fast.lse(row), ref.lse(row), tol.lse_atol + 1e-6 * c, tol.lse_rtol);
        for (index_t d = 0; d < e[3]; ++d)
          ok = ok && close(fast.out.get(b, h, i, d), ref.out.get(b, h, i, d), tol.atol + 1e-6 * c, tol.rtol);
        if (!ok && bad++ == 0) {
          std::ostringstream o;
          o << "b=" << b << " h=" << h << " i=" << i << " (kappa " << c << "): out[0] got " << fast.out.get(b, h, i, 0)
            << ", want " << ref.out.get(b, h, i, 0) << "; lse got " << fast.lse(row) << ", want " << ref.lse(row);
          first = o.str();
        }
      }
  const index_t rows = e[0] * e[1] * e[2];
  INFO("rows that differ: " << bad << " of " << rows << " (" << skipped << " ill-conditioned rows not compared); first "
                            << first);
  CHECK(bad == 0);
  CHECK(skipped <= std::max<index_t>(1, rows / 20));
  CHECK(guards_intact(fast.out));
  bool lse_guards = true;  // make_result fills lse's guard elements with -777
  for (index_t g = 0; g < guard; ++g)
    lse_guards = lse_guards && fast.lse_mem[static_cast<std::size_t>(g)] == -777.f &&
                 fast.lse_mem[static_cast<std::size_t>(guard + rows + g)] == -777.f;
  CHECK(lse_guards);
}

/// Fresh random q, k, v; attention against the reference (out and lse) within `tol`.
template <class In, class Out = float>
std::pair<result<Out>, result<float>> fast_vs_reference(const attnkit::softplus& p, const problem& s, std::mt19937& gen,
                                                        layout l = layout::bhsd, float amp = 1.f,
                                                        tolerance tol = tol_for<In, Out>()) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>()
                   << " layout=" << name(l) << " amp=" << amp);
  const qkv<In> in = random_qkv<In>(s, gen, l, l, l, amp);
  result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, l);
  result<float> ref = run_ref<float>(p, in.q, in.k, in.v, layout::bhsd);
  check_softplus_matches(fast, ref, p, in.q, in.k, tol);
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

template <class A, class B>
void check_out_close(const result<A>& got, const result<B>& want, double atol, double rtol) {
  const auto [ok_out, msg_out] = compare_out(got.out, want.out, atol, rtol);
  INFO(msg_out);
  CHECK(ok_out);
}

/// Rows for which is_empty(b, h, i) holds are exactly zero with lse -inf.
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
  INFO("rows expected empty (zeros, lse -inf) but not: " << wrong << ", first " << first);
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

/// Values that read out the attention weights: Dv = Nk, v[b, h, j, :] = e_j.
tensor<float> one_hot_values(const problem& s) {
  REQUIRE(s.Dv == s.Nk);
  tensor<float> v(s.v_ext(), layout::bhsd, nan_of<float>());
  v.for_each([&](index_t b, index_t h, index_t j, index_t d) { v.set(b, h, j, d, j == d ? 1.f : 0.f); });
  return v;
}

/// The literal definition, in double, for scores of moderate size: a = log(1 + e^{lambda s}),
/// A = a / sum a, R = max(0, n A - threshold)^power, W = R / sum R (0 if the sum is 0).
/// Returns W[row][j] over all Nk keys (0 for invisible ones).
std::vector<std::vector<double>> literal_weights(const attnkit::softplus& p, const tensor<float>& q,
                                                 const tensor<float>& k, index_t b, index_t h, index_t group) {
  const index_t nq = q.ext[2], nk = k.ext[2], D = q.ext[3];
  const double scale = p.scale != 0 ? double(p.scale) : 1 / std::sqrt(double(D));
  std::vector<std::vector<double>> w(static_cast<std::size_t>(nq),
                                     std::vector<double>(static_cast<std::size_t>(nk), 0.0));
  for (index_t i = 0; i < nq; ++i) {
    const auto keys = visible_keys(p, b, i, nq, nk);
    const index_t n = static_cast<index_t>(keys.size());
    const double lambda = lambda_of(p, n);
    std::vector<double> a;
    double z = 0;
    for (const index_t j : keys) {
      double dot = 0;
      for (index_t d = 0; d < D; ++d) dot += double(q.get(b, h, i, d)) * double(k.get(b, h / group, j, d));
      a.push_back(std::log1p(std::exp(lambda * scale * dot)));
      z += a.back();
    }
    double total = 0;
    std::vector<double> r;
    for (const double x : a) {
      r.push_back(std::pow(std::max(0.0, double(n) * x / z - double(p.threshold)), double(p.power)));
      total += r.back();
    }
    for (std::size_t t = 0; t < keys.size(); ++t)
      w[static_cast<std::size_t>(i)][static_cast<std::size_t>(keys[t])] = total > 0 ? r[t] / total : 0.0;
  }
  return w;
}

/// Reads the weights out of a run on one-hot values and checks them against `want` (all rows
/// of batch entry b, head h): atol grows by 1e-6 power kappa_i and rows with kappa_i > 1e5 are
/// skipped, kappa from reweighting_condition (the float rounding of u near the threshold).
template <class O>
index_t count_bad_weights(const result<O>& r, const std::vector<std::vector<double>>& want, index_t b, index_t h,
                          const std::vector<double>& kappa, double power, std::string& first) {
  index_t bad = 0;
  const index_t Hq = r.out.ext[1], Nq = r.out.ext[2];
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double c = kappa[static_cast<std::size_t>((b * Hq + h) * Nq + static_cast<index_t>(i))];
    if (c > 1e5) continue;
    for (std::size_t j = 0; j < want[i].size(); ++j) {
      const double got = r.out.get(b, h, static_cast<index_t>(i), static_cast<index_t>(j));
      if (!close(got, want[i][j], 2e-6 + 1e-6 * power * c, 2e-5) && bad++ == 0) {
        std::ostringstream o;
        o << "b=" << b << " h=" << h << " i=" << i << " j=" << j << ": got " << got << ", want " << want[i][j];
        first = o.str();
      }
    }
  }
  return bad;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The reference, pinned by hand (and the fast path on the same numbers).
// ---------------------------------------------------------------------------------------------

TEST_CASE("hand-computed two-key cases", "[softplus][reference]") {
  // D = 1, scale = 1, q = 1, k = (0, ln 3), v = (1, 5): softplus of the scores is ln 2 and
  // ln 4, so A = (1/3, 2/3) and n A = (2/3, 4/3).
  const double ln2 = std::log(2.0);
  problem s = make_problem(1, 1, 1, 1, 2, 1, 1);
  tensor<float> q(s.q_ext(), layout::bhsd, 1.f), k(s.k_ext(), layout::bhsd, 0.f), v(s.v_ext(), layout::bhsd, 0.f);
  k.set(0, 0, 1, 0, static_cast<float>(std::log(3.0)));
  v.set(0, 0, 0, 0, 1.f);
  v.set(0, 0, 1, 0, 5.f);
  const bool fast = GENERATE(false, true);
  CAPTURE(fast);
  auto near = [](double got, double want) { return std::abs(got - want) <= 2e-6 * (1 + std::abs(want)); };
  auto run = [&](attnkit::softplus p) {
    p.scale = 1;
    return run_either(fast, p, q, k, v);
  };
  attnkit::softplus plain = make_softplus();
  plain.length_scale = false;

  SECTION("LSSA without length scaling: weights 1/3, 2/3; lse log(3 ln 2)") {
    const auto r = run(plain);
    CHECK(near(r.out.get(0, 0, 0, 0), 11.0 / 3));
    CHECK(near(r.lse(0), std::log(3 * ln2)));
  }
  SECTION("power 2, threshold 0: weights (1, 4) / 5; lse log sum a^2") {
    auto p = plain;
    p.power = 2;
    const auto r = run(p);
    CHECK(near(r.out.get(0, 0, 0, 0), 21.0 / 5));
    CHECK(near(r.lse(0), std::log(5 * ln2 * ln2)));
  }
  SECTION("power 0.5: weights (1, sqrt 2) / (1 + sqrt 2)") {
    auto p = plain;
    p.power = 0.5f;
    const auto r = run(p);
    const double r2 = std::sqrt(2.0);
    CHECK(near(r.out.get(0, 0, 0, 0), (1 + 5 * r2) / (1 + r2)));
    CHECK(near(r.lse(0), std::log(std::sqrt(ln2) + std::sqrt(2 * ln2))));
  }
  SECTION("threshold 0.5: R = (1/6, 5/6); lse log sum R = 0") {
    auto p = plain;
    p.threshold = 0.5f;
    const auto r = run(p);
    CHECK(near(r.out.get(0, 0, 0, 0), 26.0 / 6));
    CHECK(near(r.lse(0), 0.0));
    p.power = 2;  // R = (1/36, 25/36)
    const auto r2 = run(p);
    CHECK(near(r2.out.get(0, 0, 0, 0), 126.0 / 26));
    CHECK(near(r2.lse(0), std::log(26.0 / 36)));
  }
  SECTION("threshold 1 drops key 0; threshold 2 drops both: zeros, lse -inf") {
    auto p = plain;
    p.threshold = 1;
    const auto r = run(p);
    CHECK(near(r.out.get(0, 0, 0, 0), 5.0));
    CHECK(near(r.lse(0), std::log(1.0 / 3)));
    p.threshold = 2;
    const auto z = run(p);
    CHECK(z.out.get(0, 0, 0, 0) == 0.f);
    CHECK(z.lse(0) == -inf);
  }
  SECTION("length scaling: lambda = alpha log(max(n, min_len))") {
    attnkit::softplus p = make_softplus();
    p.alpha = static_cast<float>(1 / ln2);  // n = 2: lambda = 1, the unscaled case
    auto r = run(p);
    CHECK(near(r.out.get(0, 0, 0, 0), 11.0 / 3));
    p.min_len = 4;  // lambda = log 4 / log 2 = 2: softplus(0) = ln 2, softplus(2 ln 3) = ln 10
    r = run(p);
    const double ln10 = std::log(10.0);
    CHECK(near(r.out.get(0, 0, 0, 0), (ln2 + 5 * ln10) / (ln2 + ln10)));
    CHECK(near(r.lse(0), std::log(ln2 + ln10)));
    p.alpha = static_cast<float>(1 / std::log(4.0));  // min_len 4 again, lambda = 1
    r = run(p);
    CHECK(near(r.out.get(0, 0, 0, 0), 11.0 / 3));
  }
  SECTION("causal, Nq = Nk = 2: row 0 sees key 0 alone (n = 1, lambda from min_len)") {
    problem c = make_problem(1, 1, 1, 2, 2, 1, 1);
    tensor<float> q2(c.q_ext(), layout::bhsd, 1.f);
    attnkit::softplus p = make_softplus(2.f, 0.f, true);
    p.scale = 1;
    const auto r = run_either(fast, p, q2, k, v);
    CHECK(near(r.out.get(0, 0, 0, 0), 1.0));
    CHECK(near(r.lse(0), 2 * std::log(ln2)));  // power * log softplus(lambda * 0)
    // row 1: n = 2, lambda = log 2: softplus(0) = ln 2, softplus(ln 2 ln 3)
    const double a1 = std::log1p(std::exp(ln2 * std::log(3.0)));
    CHECK(near(r.out.get(0, 0, 1, 0), (ln2 * ln2 + 5 * a1 * a1) / (ln2 * ln2 + a1 * a1)));
  }
}

TEST_CASE("reference: two-pass form equals the one-pass online softmax over power * log softplus",
          "[softplus][reference]") {
  // spec, fast algorithm: with threshold 0, W_ij = a_ij^p / sum a^p, an ordinary softmax over
  // t_ij = p log softplus(lambda_i s_ij) whose lse the variant reports. Here as a custom
  // policy whose score callable applies t with lambda_i from the row's own key count.
  ATTNKIT_SEEDED_RNG(gen);
  const float power = GENERATE(1.f, 0.3f, 2.f, 7.5f);
  const auto n = GENERATE(std::make_pair(40, 40), std::make_pair(25, 60), std::make_pair(60, 25));
  problem s = make_problem(3, 2, 1, n.first, n.second, 16, 8);
  CAPTURE(power, describe(s));
  const std::int32_t kl[3] = {static_cast<std::int32_t>(s.Nk), 5, 0}, ql[3] = {static_cast<std::int32_t>(s.Nq), 9, 3};
  const auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 2.f);
  for (int variant = 0; variant < 4; ++variant) {
    attnkit::softplus p = make_softplus(power);
    if (variant == 1) p.causal = true, p.alpha = 0.7f, p.min_len = 5;
    if (variant == 2) p.window_left = 6, p.window_right = 2, p.length_scale = false;
    if (variant == 3) p.causal = true, p.key_lens = kl, p.query_lens = ql, p.scale = 0.5f;
    INFO(describe(p));
    auto one_pass = attnkit::make_custom(
        [&](index_t b, index_t, index_t i, index_t j) {
          const index_t lq = p.query_lens ? p.query_lens[b] : s.Nq, lk = p.key_lens ? p.key_lens[b] : s.Nk;
          return attnkit::reference::detail::softmax_visible(masks_of(p), i, j, lq, lk);
        },
        [&](double x, index_t b, index_t, index_t i, index_t) {
          const index_t n_i = static_cast<index_t>(visible_keys(p, b, i, s.Nq, s.Nk).size());
          return double(p.power) * log_softplus_test(lambda_of(p, n_i) * x);
        },
        p.scale);
    check_close(run_ref(p, in.q, in.k, in.v), run_ref(one_pass, in.q, in.k, in.v), 1e-6, 1e-6);
  }
}

TEST_CASE("reference and fast: weights follow the literal definition (one-hot values)", "[softplus][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto pt = GENERATE(std::make_pair(1.f, 0.f), std::make_pair(3.f, 0.f), std::make_pair(1.f, 0.8f),
                           std::make_pair(2.f, 1.f), std::make_pair(0.5f, 0.3f));
  const bool causal = GENERATE(false, true);
  problem s = make_problem(1, 2, 1, 30, 50, 16, 50);
  attnkit::softplus p = make_softplus(pt.first, pt.second, causal);
  CAPTURE(fast, describe(p));
  auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 1.5f);
  in.v = one_hot_values(s);
  const auto r = run_either(fast, p, in.q, in.k, in.v);
  for (index_t h = 0; h < s.Hq; ++h) {
    std::string first;
    const index_t bad = count_bad_weights(r, literal_weights(p, in.q, in.k, 0, h, s.Hq / s.Hkv), 0, h,
                                          reweighting_condition(p, in.q, in.k), p.power, first);
    INFO("weights that differ from the definition: " << bad << ", first " << first);
    CHECK(bad == 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Properties of the spec, on the reference and on attnkit::attention.
// ---------------------------------------------------------------------------------------------

TEST_CASE("power 1, threshold 0 is LSSA; length_scale false is plain softplus normalisation", "[softplus][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const bool causal = GENERATE(false, true);
  problem s = make_problem(2, 2, 2, 35, 45, 16, 45);
  CAPTURE(fast, causal);
  auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 1.5f);
  in.v = one_hot_values(s);
  // LSSA: a_ij / sum a_ij with lambda_i = log n_i (alpha 1, min_len 2), written directly
  attnkit::softplus lssa = make_softplus(1.f, 0.f, causal);
  const auto r = run_either(fast, lssa, in.q, in.k, in.v);
  const double scale = 1 / std::sqrt(double(s.D));
  index_t bad = 0;
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        const auto keys = visible_keys(lssa, b, i, s.Nq, s.Nk);
        const double lambda = std::log(std::max<double>(double(keys.size()), 2.0));
        std::vector<double> a(static_cast<std::size_t>(s.Nk), 0.0);
        double z = 0;
        for (const index_t j : keys) {
          double dot = 0;
          for (index_t d = 0; d < s.D; ++d) dot += double(in.q.get(b, h, i, d)) * double(in.k.get(b, h, j, d));
          a[static_cast<std::size_t>(j)] = std::log1p(std::exp(lambda * scale * dot));
          z += a[static_cast<std::size_t>(j)];
        }
        for (index_t j = 0; j < s.Nk; ++j)
          bad += !close(r.out.get(b, h, i, j), z > 0 ? a[static_cast<std::size_t>(j)] / z : 0.0, 2e-6, 2e-5);
        bad += !close(r.lse((b * s.Hq + h) * s.Nq + i), z > 0 ? std::log(z) : -HUGE_VAL, 1e-5, 1e-6);
      }
  CHECK(bad == 0);
  // length_scale false: lambda = 1 whatever alpha and min_len
  attnkit::softplus plain = lssa, plain2 = lssa;
  plain.length_scale = plain2.length_scale = false;
  plain2.alpha = 7.f, plain2.min_len = 50;
  const auto a = run_either(fast, plain, in.q, in.k, in.v);
  const auto b = run_either(fast, plain2, in.q, in.k, in.v);
  CHECK(same_bits(a.out, b.out));
  CHECK(same_bits(a.lse_mem, b.lse_mem));
  // ... and it is softplus(s) / sum softplus(s): the literal weights with lambda = 1
  for (index_t h = 0; h < s.Hq; ++h) {
    std::string first;
    const index_t bad_plain = count_bad_weights(a, literal_weights(plain, in.q, in.k, 1, h, 1), 1, h,
                                                reweighting_condition(plain, in.q, in.k), plain.power, first);
    INFO(first);
    CHECK(bad_plain == 0);
  }
}

TEST_CASE("weights are non-negative and sum to 1 per row (0 where every R is 0)", "[softplus][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto pt = GENERATE(std::make_pair(1.f, 0.f), std::make_pair(4.f, 0.f), std::make_pair(0.25f, 0.f),
                           std::make_pair(1.f, 0.9f), std::make_pair(2.5f, 1.5f), std::make_pair(1.f, 3.f));
  problem s = make_problem(2, 4, 2, 70, 70, 16, 70);
  std::vector<std::int32_t> kl{70, 33}, ql{70, 61};
  attnkit::softplus p = make_softplus(pt.first, pt.second, true);
  p.window_left = 40;
  p.key_lens = kl.data(), p.query_lens = ql.data();
  CAPTURE(fast, describe(p));
  auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 2.f);
  in.v = one_hot_values(s);
  const auto r = run_either(fast, p, in.q, in.k, in.v);
  index_t negative = 0, bad_sum = 0, zero_rows = 0;
  for (index_t b = 0; b < s.B; ++b)
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        double sum = 0;
        for (index_t j = 0; j < s.Nk; ++j) {
          negative += r.out.get(b, h, i, j) < 0.f;
          sum += r.out.get(b, h, i, j);
        }
        const float lse = r.lse((b * s.Hq + h) * s.Nq + i);
        if (lse == -inf) {
          ++zero_rows;
          bad_sum += sum != 0;
        } else {
          bad_sum += std::abs(sum - 1) > 2e-5;
        }
      }
  CAPTURE(zero_rows);
  CHECK(negative == 0);
  CHECK(bad_sum == 0);
  CHECK(no_nan(r));
  // padding rows are empty whatever the threshold
  check_empty_rows(r, [&](index_t b, index_t, index_t i) { return i >= ql[static_cast<std::size_t>(b)]; });
}

TEST_CASE("increasing the power never decreases the largest weight of a row", "[softplus][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const float threshold = GENERATE(0.f, 0.5f);
  problem s = make_problem(1, 2, 1, 40, 60, 16, 60);
  CAPTURE(fast, threshold);
  auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 1.5f);
  in.v = one_hot_values(s);
  std::vector<double> previous(static_cast<std::size_t>(s.rows()), 0.0);
  index_t decreased = 0;
  for (const float power : {0.5f, 1.f, 1.5f, 2.f, 4.f, 8.f, 30.f}) {
    attnkit::softplus p = make_softplus(power, threshold, true);
    const auto r = run_either(fast, p, in.q, in.k, in.v);
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        double largest = 0;
        for (index_t j = 0; j < s.Nk; ++j) largest = std::max(largest, double(r.out.get(0, h, i, j)));
        auto& prev = previous[static_cast<std::size_t>(h * s.Nq + i)];
        if (largest < prev - 1e-6) {
          UNSCOPED_INFO("power " << power << " h=" << h << " i=" << i << ": largest weight " << largest << " < "
                                 << prev);
          ++decreased;
        }
        prev = largest;
      }
  }
  CHECK(decreased == 0);
}

TEST_CASE("lambda depends on n_i only: causal row i uses n_i = i + 1 + (Nk - Nq)", "[softplus][property][causal]") {
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const auto n = GENERATE(std::make_pair(30, 30), std::make_pair(20, 45), std::make_pair(45, 20));
  problem s = make_problem(1, 2, 1, n.first, n.second, 16, 8);
  const float threshold = GENERATE(0.f, 0.7f);
  attnkit::softplus p = make_softplus(2.f, threshold, true);
  p.alpha = 1.3f;
  CAPTURE(fast, describe(s), describe(p));
  const auto in = random_qkv<float>(s, gen, layout::bhsd, layout::bhsd, layout::bhsd, 1.5f);
  const auto full = run_either(fast, p, in.q, in.k, in.v);
  // row i against a one-query problem on its own keys 0..i + Nk - Nq, non-causal: same n_i
  const auto kappa = reweighting_condition(p, in.q, in.k);  // tolerance as check_softplus_matches
  index_t bad = 0;
  for (index_t i = 0; i < s.Nq; ++i) {
    const index_t keys = i + 1 + (s.Nk - s.Nq);
    if (keys <= 0) {
      bad += full.lse(i) != -inf;
      continue;
    }
    problem one = make_problem(1, 2, 1, 1, keys, s.D, s.Dv);
    auto q1 = output_tensor<float>(one.q_ext(), layout::bhsd);
    auto k1 = output_tensor<float>(one.k_ext(), layout::bhsd), v1 = output_tensor<float>(one.v_ext(), layout::bhsd);
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < s.D; ++d) q1.view(0, h, 0, d) = in.q.view(0, h, i, d);
    for (index_t j = 0; j < keys; ++j) {
      for (index_t d = 0; d < s.D; ++d) k1.view(0, 0, j, d) = in.k.view(0, 0, j, d);
      for (index_t d = 0; d < s.Dv; ++d) v1.view(0, 0, j, d) = in.v.view(0, 0, j, d);
    }
    attnkit::softplus open = p;
    open.causal = false;
    const auto row = run_either(fast, open, q1, k1, v1);
    for (index_t h = 0; h < 2; ++h) {
      const double c = kappa[static_cast<std::size_t>(h * s.Nq + i)];
      if (c > 1e5) continue;
      const double extra = 1e-6 * double(p.power) * c;
      bad += !close(full.lse(h * s.Nq + i), row.lse(h), 1e-5 + extra, 1e-6);
      for (index_t d = 0; d < s.Dv; ++d)
        bad += !close(full.out.get(0, h, i, d), row.out.get(0, h, 0, d), 2e-6 + extra, 1e-5);
    }
  }
  CHECK(bad == 0);
}

TEST_CASE("very negative scores give a well-defined distribution, never 0/0", "[softplus][edge]") {
  // q = 1, k in [-3, -1]: q.k in [-48, -16] (D = 16); scale 4 puts every lambda s below -40,
  // where softplus(y) underflows float's exp but log softplus(y) = y: the weights are those of
  // softmax over power * lambda * s.
  ATTNKIT_SEEDED_RNG(gen);
  const float power = GENERATE(1.f, 2.f);
  const float threshold = GENERATE(0.f, 0.5f);
  problem s = make_problem(2, 2, 1, 37, 53, 16, 16);
  CAPTURE(power, threshold);
  auto q = random_tensor<float>(s.q_ext(), layout::bhsd, gen, 1.f, 1.f);
  auto k = random_tensor<float>(s.k_ext(), layout::bhsd, gen, -3.f, -1.f);
  auto v = random_tensor<float>(s.v_ext(), layout::bhsd, gen);
  attnkit::softplus p = make_softplus(power, threshold);
  p.scale = 4;
  p.length_scale = false;  // lambda = 1: softmax's scale is then exactly power * 4
  const auto ref = run_ref(p, q, k, v);
  const auto fast = run_fast(p, q, k, v);
  CHECK(no_nan(fast));
  CHECK(all_finite(fast.out));
  for (index_t r = 0; r < s.rows(); ++r) CHECK(std::isfinite(fast.lse(r)));
  // logits of magnitude up to ~400: float carries ~4e-5 of absolute error in them
  check_softplus_matches(fast, ref, p, q, k, tolerance{2e-4, 1e-4, 1e-3, 1e-6});
  if (threshold == 0) {
    attnkit::softmax sm;
    sm.scale = power * 4;
    const auto want = run_ref(sm, q, k, v);
    check_out_close(ref, want, 1e-6, 1e-6);
    // lse of t = power * log a = power * lambda * s exactly: softmax's lse
    CHECK(compare_lse(ref.lse_mem, want.lse_mem, s.rows(), 1e-4, 1e-6).first);
  }
  // with length scaling too (lambda = log 53): finite and matching
  p.length_scale = true;
  const auto r2 = run_ref(p, q, k, v);
  const auto f2 = run_fast(p, q, k, v);
  CHECK(no_nan(f2));
  check_softplus_matches(f2, r2, p, q, k, tolerance{5e-4, 1e-4, 2e-3, 1e-6});
}

TEST_CASE("NaN in keys a row cannot see does not reach it", "[softplus][property][nan]") {
  // softmax.md: a NaN in a masked-out key does not affect the output. Here also through n_i,
  // Z_i and the second pass of the re-weighting.
  ATTNKIT_SEEDED_RNG(gen);
  const bool fast = GENERATE(false, true);
  const float threshold = GENERATE(0.f, 0.5f);
  problem s = make_problem(1, 2, 1, 100, 100, 8, 8);
  CAPTURE(fast, threshold);
  const auto in = random_qkv<float>(s, gen);
  auto k2 = in.k, v2 = in.v;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const index_t j : {index_t(3), index_t(90)}) {
    for (index_t d = 0; d < s.D; ++d) k2.set(0, 0, j, d, nan);
    for (index_t d = 0; d < s.Dv; ++d) v2.set(0, 0, j, d, nan);
  }
  for (int variant = 0; variant < 2; ++variant) {
    attnkit::softplus p = make_softplus(2.f, threshold);
    if (variant == 0) p.causal = true, p.window_left = 10;  // rows 14..89 see neither key
    if (variant == 1) p.window_left = 5, p.window_right = 5;
    INFO(describe(p));
    const auto got = run_either(fast, p, in.q, k2, v2);
    const auto want = run_ref(p, in.q, in.k, in.v);
    const auto kappa = reweighting_condition(p, in.q, in.k);  // tolerance as check_softplus_matches
    index_t wrong = 0, compared = 0;
    for (index_t h = 0; h < s.Hq; ++h)
      for (index_t i = 0; i < s.Nq; ++i) {
        const auto keys = visible_keys(p, 0, i, s.Nq, s.Nk);
        const double c = kappa[static_cast<std::size_t>(h * s.Nq + i)];
        if (std::find(keys.begin(), keys.end(), 3) != keys.end() ||
            std::find(keys.begin(), keys.end(), 90) != keys.end() || c > 1e5)
          continue;
        ++compared;
        const double extra = 1e-6 * double(p.power) * c;
        bool ok = close(got.lse(h * s.Nq + i), want.lse(h * s.Nq + i), 1e-4 + extra, 1e-6);
        for (index_t d = 0; d < s.Dv; ++d)
          ok = ok && close(got.out.get(0, h, i, d), want.out.get(0, h, i, d), 2e-5 + extra, 1e-5);
        wrong += !ok;
      }
    INFO("rows that never see the NaN keys but differ: " << wrong << " of " << compared);
    CHECK(compared > 0);
    CHECK(wrong == 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Fast path against the reference.
// ---------------------------------------------------------------------------------------------

TEST_CASE("matches reference: odd sizes, Dv != D, GQA, batch > 1", "[softplus][sizes]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto pt = GENERATE(std::make_pair(1.f, 0.f), std::make_pair(2.f, 0.f), std::make_pair(0.7f, 0.f),
                           std::make_pair(1.f, 0.5f), std::make_pair(3.f, 1.2f));
  const auto shape = GENERATE(std::make_tuple(1, 1, 1, 1, 1, 1, 1), std::make_tuple(2, 4, 2, 37, 37, 24, 20),
                              std::make_tuple(3, 6, 3, 13, 29, 3, 17), std::make_tuple(2, 8, 1, 50, 21, 40, 8),
                              std::make_tuple(1, 2, 2, 1, 97, 16, 16), std::make_tuple(2, 3, 1, 65, 64, 80, 33));
  problem s = make_problem(std::get<0>(shape), std::get<1>(shape), std::get<2>(shape), std::get<3>(shape),
                           std::get<4>(shape), std::get<5>(shape), std::get<6>(shape));
  attnkit::softplus p = make_softplus(pt.first, pt.second);
  fast_vs_reference<float>(p, s, gen);
  p.causal = true;
  auto [fast, ref] = fast_vs_reference<float>(p, s, gen);
  check_empty_rows(fast, [&](index_t, index_t, index_t i) { return i + s.Nk - s.Nq < 0; });
}

TEST_CASE("matches reference: layouts and 16-bit types", "[softplus][layout][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const layout l = GENERATE(layout::bhsd, layout::bshd, layout::strided);
  problem s = make_problem(2, 4, 2, 45, 60, 24, 20);
  attnkit::softplus p = make_softplus(1.5f, GENERATE(0.f, 0.4f), true);
  fast_vs_reference<float>(p, s, gen, l);
  for_each_bf16_way([&] {
    fast_vs_reference<bf16, float>(p, s, gen, l);
    fast_vs_reference<bf16, bf16>(p, s, gen, l);
  });
  fast_vs_reference<f16, f16>(p, s, gen, l);
  fast_vs_reference<float, bf16>(p, s, gen, l);
}

TEST_CASE("matches reference: windows, key_lens, query_lens, scale, alpha, min_len", "[softplus][fields]") {
  ATTNKIT_SEEDED_RNG(gen);
  const float threshold = GENERATE(0.f, 0.6f);
  const auto n = GENERATE(std::make_pair(70, 70), std::make_pair(40, 100), std::make_pair(100, 40));
  problem s = make_problem(4, 4, 2, n.first, n.second, 16, 8);
  std::vector<std::int32_t> kl(4), ql(4);
  std::uniform_int_distribution<int> rk(0, static_cast<int>(s.Nk)), rq(0, static_cast<int>(s.Nq));
  for (int b = 0; b < 4; ++b) kl[b] = rk(gen), ql[b] = rq(gen);
  kl[0] = static_cast<std::int32_t>(s.Nk), ql[0] = static_cast<std::int32_t>(s.Nq), kl[1] = 0, kl[2] = 1;
  INFO("key_lens " << kl[0] << " " << kl[1] << " " << kl[2] << " " << kl[3] << "; query_lens " << ql[0] << " " << ql[1]
                   << " " << ql[2] << " " << ql[3]);
  for (int variant = 0; variant < 5; ++variant) {
    attnkit::softplus p = make_softplus(2.f, threshold);
    switch (variant) {
      case 0: p.window_left = 7, p.window_right = 3; break;
      case 1: p.window_left = 12, p.causal = true, p.alpha = 0.4f, p.min_len = 16; break;
      case 2: p.key_lens = kl.data(), p.query_lens = ql.data(), p.scale = 0.8f; break;
      case 3: p.key_lens = kl.data(), p.query_lens = ql.data(), p.causal = true, p.power = 1; break;
      default: p.window_right = 0, p.window_left = 0, p.power = 0.5f;  // one key a row: n = 1
    }
    auto [fast, ref] = fast_vs_reference<float>(p, s, gen, layout::bhsd, 1.5f);
    CHECK(no_nan(fast));
  }
}

TEST_CASE("matches reference: large powers (log-space form only)", "[softplus][edge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const float power = GENERATE(50.f, 1024.f);
  const float threshold = GENERATE(0.f, 0.2f);
  problem s = make_problem(1, 2, 1, 40, 70, 16, 16);
  attnkit::softplus p = make_softplus(power, threshold, true);
  // the weights are a softmax of power * log a: float's relative error of log a (~1e-7) is
  // multiplied by the power in the logits, so the tolerance grows with it
  const double e = 2e-7 * power;
  auto [fast, ref] =
      fast_vs_reference<float>(p, s, gen, layout::bhsd, 1.f, tolerance{2e-5 + e, 1e-5 + e, 1e-4 + e, 1e-6});
  CHECK(no_nan(fast));
  CHECK(all_finite(fast.out));
}

TEST_CASE("one-pass form (threshold 0) equals the two-pass form (threshold 1e-30) on the fast path",
          "[softplus][property]") {
  ATTNKIT_SEEDED_RNG(gen);
  const float power = GENERATE(1.f, 2.5f);
  problem s = make_problem(2, 4, 2, 70, 130, 32, 24);
  const auto in = random_qkv<float>(s, gen);
  attnkit::softplus one = make_softplus(power, 0.f, GENERATE(false, true)), two = one;
  two.threshold = 1e-30f;  // > 0 selects the two passes; n A - 1e-30 = n A in float
  CAPTURE(describe(two));
  const auto a = run_fast(one, in.q, in.k, in.v), b = run_fast(two, in.q, in.k, in.v);
  check_out_close(b, a, 2e-6, 2e-5);
  // the reference of the two-pass run reports log sum R, with R = (n A)^power
  check_softplus_matches(b, run_ref(two, in.q, in.k, in.v), two, in.q, in.k, float_tol);
}

TEST_CASE("matches reference: N ~ 300 crossing key chunks and query tiles, tiles on the diagonal",
          "[softplus][large]") {
  ATTNKIT_SEEDED_RNG(gen);
  const float threshold = GENERATE(0.f, 0.5f);
  problem s = make_problem(1, 2, 1, 290, 300, 32, 32);
  attnkit::softplus p = make_softplus(1.f, threshold, true);
  fast_vs_reference<float>(p, s, gen);
  p.power = 2, p.causal = false, p.window_left = 90, p.window_right = 70;
  fast_vs_reference<float>(p, s, gen);
}

TEST_CASE("threads = 1, 2, 3, 0 give bitwise identical out and lse", "[softplus][threads]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(260, 260), std::make_pair(3, 1000), std::make_pair(120, 200));
  const auto pt = GENERATE(std::make_pair(1.f, 0.f), std::make_pair(2.f, 0.f), std::make_pair(2.f, 0.5f));
  problem s = make_problem(2, 4, 2, n.first, n.second, 32, 32);
  attnkit::softplus p = make_softplus(pt.first, pt.second, true);
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

void expect_rejected(const attnkit::softplus& p, const qkv<float>& in, const problem& s, const std::string& what) {
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

TEST_CASE("bad input throws attnkit::error naming the field, out untouched", "[softplus][validation]") {
  ATTNKIT_SEEDED_RNG(gen);
  problem s = make_problem(2, 4, 2, 10, 12, 8, 6);
  const auto in = random_qkv<float>(s, gen);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float bad : {0.f, -1.f, nan, inf}) {
    CAPTURE(bad);
    attnkit::softplus p;
    p.alpha = bad;
    expect_rejected(p, in, s, "alpha");
  }
  for (float bad : {0.f, -2.f, 2000.f, nan, inf}) {
    CAPTURE(bad);
    attnkit::softplus p;
    p.power = bad;
    expect_rejected(p, in, s, "power");
  }
  for (float bad : {-0.5f, nan, inf}) {
    CAPTURE(bad);
    attnkit::softplus p;
    p.threshold = bad;
    expect_rejected(p, in, s, "threshold");
  }
  for (index_t bad : {index_t(0), index_t(-3)}) {
    CAPTURE(bad);
    attnkit::softplus p;
    p.min_len = bad;
    expect_rejected(p, in, s, "min_len");
  }
  attnkit::softplus w;
  w.window_right = -4;
  expect_rejected(w, in, s, "window_right");
  attnkit::softplus sc;
  sc.scale = inf;
  expect_rejected(sc, in, s, "scale");
  const std::int32_t kl[2] = {12, 13}, ql[2] = {11, 0};
  attnkit::softplus k;
  k.key_lens = kl;
  expect_rejected(k, in, s, "key_lens[1]");
  attnkit::softplus q;
  q.query_lens = ql;
  expect_rejected(q, in, s, "query_lens[0]");
  // a wrong shape is caught too
  auto v2 = random_tensor<float>({2, 2, 11, 6}, layout::bhsd, gen);
  auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
  const auto before = out;
  CHECK_THROWS_AS(attnkit::attention(attnkit::softplus{}, in.q.cview(), in.k.cview(), v2.cview(), out.view),
                  attnkit::error);
  CHECK(same_bits(before, out));
  CHECK_NOTHROW(attnkit::attention(attnkit::softplus{}, in.q.cview(), in.k.cview(), in.v.cview(), out.view));
}
