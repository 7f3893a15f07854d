/// \file
/// Fuzz decoders of the policies of spec/probabilistic.md and spec/extra_variants.md, with
/// extreme and invalid fields (tests/fuzz/harness.hpp):
///   probabilistic      existence probabilities (both modes, linear and log space, null query_prob,
///                      and attnkit::existence_from_continue), plus softmax's fields;
///   softplus           LSSA / LSSAR (alpha, min_len, power, threshold), softmax's masks;
///   affine_scaled      alpha, beta and every beta_mode, plus softmax's fields;
///   gaussian_adaptive  GAAM on v (both axes, chunks, Gaussians, offsets, scales, eps, unbiased,
///                      residual; q and k only shape-checked);
///   local_linear       the ridge, softmax's masks.
///
/// Result checks. probabilistic, softplus and affine_scaled are softmax-like: their logits'
/// float error goes into logit_facts (the probabilities' bias bound in score_add; softplus's
/// effective multiplier power * lambda in scale; affine's alpha in out_gain). GAAM is
/// elementwise (out = v * w): compared through the feature_sums regime, whatever q and k hold,
/// where its Gaussians are moderate. local_linear is a regularised solve in double on both
/// sides: compared only with ridge >= 1e-2 and moderate kernel logits, within a tolerance
/// from the conditioning of S.
#include "harness.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>
#include <vector>

namespace attnkit_fuzz {

namespace {

/// A float field from table[i] (decision `name`); entries at or after `first_bad` are faults.
float pick_float(fuzz_case& c, const char* name, std::initializer_list<float> table, std::size_t first_bad) {
  const std::size_t i = static_cast<std::size_t>(c.r.take(name, table.size(), 0));
  const float v = table.begin()[i];
  if (i >= first_bad) c.fault(std::string(name) + " = " + fmt(double(v)));
  return v;
}

/// A float array of exactly `count` entries on the heap (count 0: an allocation of size 0, so
/// that ASan sees any read), or none (null).
struct float_array {
  std::unique_ptr<float[]> buf;
  index_t count = 0;
  bool null = false;
  const float* data() const { return null ? nullptr : buf.get(); }
  void allocate(index_t n) {
    count = n;
    buf.reset(new float[static_cast<std::size_t>(n)]);
  }
};

/// `count` when it is a size the harness allocates (shapes with faults may have none).
bool sized(double count, double limit = double(1 << 22)) { return count >= 0 && count <= limit; }

std::string first_values(const float_array& a) {
  if (a.null) return "null";
  std::ostringstream s;
  s << "[";
  for (index_t e = 0; e < std::min<index_t>(a.count, 6); ++e) s << (e ? ", " : "") << fmt(double(a.buf[static_cast<std::size_t>(e)]));
  s << (a.count > 6 ? ", ...]" : "]");
  return s.str();
}

/// run_types(c, p, pb, type_set::float_only) without instantiating the other element types
/// (run_types' switch instantiates every set): softplus and affine_scaled do not compile yet
/// with bf16 or f16 inputs (flash.hpp's widening call run(p, qf, kf, vf, out, o) is ambiguous
/// for their pass types, which live in attnkit::detail beside attention.hpp's detail::run).
template <class Policy>
void run_float_only(fuzz_case& c, const Policy& p, const problem& pb) {
  (void)c.r.take("types", 1, 0);
  run_typed<Policy, float, float, float, float>(c, p, pb);
}

// ---------------------------------------------------------------------------------------------
// probabilistic

enum prob_fill { prob_random, prob_ones, prob_zeros_and_ones, prob_tiny, prob_cumulative, prob_all_zero, prob_one_bad,
                 prob_null, prob_fills };
const char* const prob_fill_names[prob_fills] = {"U(0, 1)", "all 1", "0 and 1", "tiny, 0 and 1", "existence_from_continue",
                                                 "all 0", "U(0, 1) with one entry X", "null"};

/// Is x a valid entry (spec: p in [0, 1], or log p in [-inf, 0])?
bool valid_probability(float x, bool log_space) { return log_space ? x <= 0.f : x >= 0.f && x <= 1.f; }

/// log p as the spec has it (log(max(p, 1e-20)), -inf for p = 0), for the bias bound.
double existence_log(float x, bool log_space) {
  const double v = x, floor = std::log(1e-20);
  if (log_space) return v == -HUGE_VAL ? v : std::max(v, floor);
  return v == 0 ? -HUGE_VAL : std::log(std::max(v, 1e-20));
}

/// Calls existence_from_continue on inputs it must reject (decision cont_bad): b with NaN,
/// -0.1 or 1.5, a size that overflows, null b with a size.
void check_existence_rejects(fuzz_case& c) {
  const int bad = static_cast<int>(c.r.take("cont_bad", 6, 0));
  if (bad == 0 || c.dry_run) return;
  static const char* const names[6] = {"", "b[1] = NaN", "b[1] = -0.1", "b[1] = 1.5", "batch * n = 2^62 * 4",
                                       "b null, batch * n = 4"};
  float b[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  if (bad == 1) b[1] = f_nan;
  if (bad == 2) b[1] = -0.1f;
  if (bad == 3) b[1] = 1.5f;
  const outcome o = capture([&] {
    if (bad == 4) (void)attnkit::existence_from_continue(b, pow2_62, 4);
    else if (bad == 5) (void)attnkit::existence_from_continue(nullptr, 1, 4);
    else (void)attnkit::existence_from_continue(b, 1, 4);
  });
  if (o.kind != outcome::error)
    report(c, std::string("existence_from_continue(") + names[bad] + ") gave " + kind_name(o.kind) + " " + o.what +
                  ", expected attnkit::error");
}

/// Probabilities from continue decisions b (uniform in [0, 0.3], some 1 by decision cont_end)
/// through attnkit::existence_from_continue, checked: b in [0, 1] must give p in [0, 1].
void fill_cumulative(fuzz_case& c, float_array& a, index_t batch, index_t n, bool log_space, std::uint64_t& seed,
                     std::string& text) {
  const bool clamp = c.r.flag("cont_clamp", true);
  const int end = static_cast<int>(c.r.take("cont_end", 5, 0));
  static const char* const end_names[5] = {"no b = 1", "b = 1 at t = 0", "b = 1 at t = n / 2", "b = 1 at the last t",
                                           "every b = 1"};
  text = std::string("existence_from_continue (clamp ") + (clamp ? "on" : "off") + ", " + end_names[end] + ")";
  std::vector<float> b(static_cast<std::size_t>(a.count));
  for (float& x : b) x = static_cast<float>(uniform_random(seed, 0, 0.3));
  for (index_t r = 0; r < batch && n > 0; ++r) {
    const index_t at = end == 1 ? 0 : end == 2 ? n / 2 : n - 1;
    if (end >= 1 && end <= 3) b[static_cast<std::size_t>(r * n + at)] = 1.f;
    if (end == 4) std::fill(b.begin() + r * n, b.begin() + (r + 1) * n, 1.f);
  }
  std::vector<float> p;
  const outcome o = capture([&] { p = attnkit::existence_from_continue(b.data(), batch, n, clamp); });
  if (o.kind != outcome::ok) {
    if (!c.dry_run) report(c, "existence_from_continue rejected b in [0, 1]: " + o.what);
    p.assign(b.size(), 1.f);
  }
  if (p.size() != b.size() && !c.dry_run)
    report(c, "existence_from_continue returned " + std::to_string(p.size()) + " values for " + std::to_string(b.size()));
  p.resize(b.size(), 1.f);
  for (std::size_t e = 0; e < p.size(); ++e) {
    if (!(p[e] >= 0.f && p[e] <= 1.f) && !c.dry_run)
      report(c, "existence_from_continue gave p[" + std::to_string(e) + "] = " + fmt(double(p[e])) + " from b[" +
                    std::to_string(e) + "] = " + fmt(double(b[e])) + " (" + text + "; b in [0, 1] must give p in [0, 1])");
    a.buf[e] = log_space ? (p[e] == 0.f ? -f_inf : std::log(p[e])) : p[e];
  }
  // The spec's p_t = prod_{s = 1..t} (1 - b_s) (p_0 = 1; b raised to 1e-7 and p clamped to
  // [1e-7, 1 - 1e-7] with clamp), in double.
  for (index_t r = 0; r < batch && !c.dry_run; ++r) {
    double log_p = 0;
    for (index_t t = 0; t < n; ++t) {
      const auto e = static_cast<std::size_t>(r * n + t);
      const double bt = clamp ? std::max(double(b[e]), 1e-7) : double(b[e]);
      if (t > 0) log_p += std::log1p(-bt);
      double want = std::exp(log_p);
      if (clamp) want = std::min(std::max(want, 1e-7), 1 - 1e-7);
      if (!(std::fabs(double(p[e]) - want) <= 1e-6 * want + 1e-30))
        report(c, "existence_from_continue gave p[" + std::to_string(e) + "] = " + fmt(double(p[e])) + ", expected " +
                      fmt(want) + " = prod_{s = 1.." + fmt(t) + "} (1 - b_s) (" + text + ")");
    }
  }
}

/// One probability array of `count` entries ([batch, n] row-major): decisions <name> (a
/// prob_fill), and for some fills prob_bad, prob_bad_at, prob_seed, cont_*. Adds the fault of
/// its first invalid entry (null: `null_fault`, when given).
float_array decode_probabilities(fuzz_case& c, const char* name, int dflt, index_t batch, index_t n, bool log_space,
                                 const char* null_fault, double& bias_max) {
  reader& r = c.r;
  const int fill = static_cast<int>(r.take(name, prob_fills, static_cast<std::uint64_t>(dflt)));
  float_array a;
  std::string text = prob_fill_names[fill];
  if (fill == prob_null) {
    a.null = true;
    if (null_fault) c.fault(null_fault);
    c.note(std::string(name) + ": null");
    return a;
  }
  const double count = double(batch) * double(n);
  const bool real = batch >= 0 && n >= 0 && sized(count);
  a.allocate(real ? batch * n : 0);
  std::uint64_t seed = r.take("prob_seed", 0, 7);
  static const float tiny_linear[8] = {1e-20f, 1e-30f, 1e-44f, 1e-7f, 1.f, 0.f, 0.5f, 0x1p-126f};
  static const float tiny_log[8] = {-46.0517f, -1e30f, -3e38f, -flt_max, -0.f, -f_inf, -1e-45f, -0.6931472f};
  static const float bad[9] = {f_nan, std::nextafter(1.f, 2.f), -1e-45f, f_inf, -f_inf, 1e-45f, -0.5f, 2.f, -0.f};
  const auto store = [&](index_t e, double p) {  // a probability, in the array's space
    a.buf[static_cast<std::size_t>(e)] = static_cast<float>(log_space ? (p == 0 ? -HUGE_VAL : std::log(p)) : p);
  };
  switch (fill) {
    case prob_cumulative:
      if (real) fill_cumulative(c, a, batch, n, log_space, seed, text);
      break;
    case prob_tiny:
      for (index_t e = 0; e < a.count; ++e)
        a.buf[static_cast<std::size_t>(e)] = (log_space ? tiny_log : tiny_linear)[next_random(seed) % 8];
      break;
    default:
      for (index_t e = 0; e < a.count; ++e) {
        double p = uniform_random(seed, 0, 1);
        if (fill == prob_ones) p = 1;
        if (fill == prob_zeros_and_ones) p = next_random(seed) % 3 == 0 ? 0 : 1;
        if (fill == prob_all_zero) p = 0;
        store(e, p);
      }
  }
  if (fill == prob_one_bad) {
    const float x = pick(r, "prob_bad", bad, 0);
    const index_t at = static_cast<index_t>(r.take("prob_bad_at", 64, 0));
    if (a.count > 0) a.buf[static_cast<std::size_t>(at % a.count)] = x;
    text += " (X = " + fmt(double(x)) + " at " + fmt(a.count > 0 ? at % a.count : index_t(0)) + ")";
  }
  for (index_t e = 0; e < a.count; ++e) {
    const float x = a.buf[static_cast<std::size_t>(e)];
    if (!valid_probability(x, log_space)) {
      c.fault(std::string(name) + "[" + fmt(e) + "] = " + fmt(double(x)) +
              (log_space ? " (log_space: expected <= 0)" : " (expected in [0, 1])"));
      break;
    }
    const double lp = existence_log(x, log_space);
    if (std::isfinite(lp)) bias_max = std::max(bias_max, -lp);
  }
  c.note(std::string(name) + ": " + text + " " + first_values(a));
  return a;
}

// ---------------------------------------------------------------------------------------------
// softplus

/// ln(max(n, min_len)) * alpha: the largest length factor of a row with up to nk keys.
double softplus_lambda_max(const attnkit::softplus& p, index_t nk) {
  if (!p.length_scale) return 1;
  return double(p.alpha) * std::log(double(std::max<index_t>(std::max<index_t>(nk, 1), p.min_len)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void decode_probabilistic(fuzz_case& c) {
  reader& r = c.r;
  attnkit::probabilistic p;
  const problem pb = decode_problem(c, {});
  const softmax_fields f = decode_softmax_fields(c, pb, true);
  f.set_all(p);
  p.log_space = r.flag("log_space");
  const int mode = static_cast<int>(r.take("prob_mode", 3, 0));
  p.mode = mode == 2 ? static_cast<attnkit::probabilistic::mode_kind>(7)
                     : static_cast<attnkit::probabilistic::mode_kind>(mode);
  if (mode == 2) c.fault("mode = 7 (no such mode_kind)");
  // key_prob [B, Nk], query_prob [B, Nq] (B: q.batch()).
  const index_t batch = pb.ext[0][0], nq = pb.ext[0][2], nk = pb.ext[1][2];
  const std::string mode_name = mode == 0 ? "zonkey_ratio" : mode == 1 ? "key_logprob" : "mode 7";
  c.policy = "probabilistic{" + mode_name + ", log_space=" + std::to_string(p.log_space) + ", " + f.text + "}";
  double key_bias = 0, query_bias = 0;
  const bool keys_present = batch != 0 && nk != 0;
  const float_array key_prob =
      decode_probabilities(c, "key_prob", prob_random, batch, nk, p.log_space,
                           keys_present ? "key_prob is null with B * Nk > 0" : nullptr, key_bias);
  const std::string query_null_fault = "query_prob is null with Nq = " + fmt(nq) + " != Nk = " + fmt(nk);
  const float_array query_prob = decode_probabilities(c, "query_prob", prob_null, batch, nq, p.log_space,
                                                      nq != nk ? query_null_fault.c_str() : nullptr, query_bias);
  p.key_prob = key_prob.data();
  p.query_prob = query_prob.data();
  if (query_prob.null) query_bias = key_bias;
  check_existence_rejects(c);

  c.lf.scale = p.scale;
  c.lf.cap = p.softcap;
  // The bias is log p_j (- log p_i), each within [log 1e-20, 0].
  c.lf.score_add = mode == 1 ? key_bias : key_bias + query_bias;
  c.lf.inexact_ties = c.lf.score_add > 0;
  c.policy = "probabilistic{" + mode_name + ", log_space=" + std::to_string(p.log_space) + ", key_prob " +
             (key_prob.null ? "null" : "set") + ", query_prob " + (query_prob.null ? "null" : "set") + ", " + f.text + "}";
  run_types(c, p, pb, type_set::float_bf16);
}

void decode_softplus(fuzz_case& c) {
  reader& r = c.r;
  attnkit::softplus p;
  p.length_scale = r.flag("length_scale", true);
  p.alpha = pick_float(c, "sp_alpha",
                       {1.f, 0.5f, 2.f, 1e-3f, 0x1p64f, 1e-44f, 100.f, std::nextafter(0x1p64f, f_inf), 0.f, -1.f, f_nan, f_inf, -0.f},
                       7);
  p.min_len = pick_field(c, "sp_min_len", {2, 1, 3, 100, 2147483647, 0, -1, 2147483648, i64_max}, 5);
  p.power = pick_float(c, "sp_power",
                       {1.f, 2.f, 0.5f, 3.f, 4.f, 1024.f, 0x1p-20f, 8.f, 1.5f, 1025.f, std::nextafter(0x1p-20f, 0.f), 0.f,
                        -1.f, f_nan, f_inf},
                       9);
  p.threshold = pick_float(c, "sp_threshold",
                           {0.f, 0.5f, 1.f, 0.25f, 2.f, -0.f, 1e-44f, 0x1p31f, std::nextafter(0x1p31f, f_inf), -1e-45f, -1.f,
                            f_nan, f_inf},
                           8);
  const problem pb = decode_problem(c, {});
  const softmax_fields f = decode_softmax_fields(c, pb, false);
  f.set_masks(p);

  // Threshold 0: weights softplus(lambda s)^power, a softmax of t = power * log softplus(lambda s)
  // (|t| <= power (lambda |s| + 1)), whose error is power * lambda times the scores': the
  // softmax-like check with that effective scale.
  const index_t d = std::max<index_t>(pb.ext[0][3], 1);
  const double scale = p.scale != 0 ? std::fabs(double(p.scale)) : 1 / std::sqrt(double(d));
  const double lambda = softplus_lambda_max(p, pb.ext[1][2]);
  const double effective = scale * lambda * double(p.power);
  c.lf.scale = std::isfinite(effective) && effective > 0 ? static_cast<float>(std::min(effective, 1e30)) : flt_max;
  c.lf.score_add = 4 * double(p.power);
  if (p.threshold > 0) {
    // LSSAR: weights max(0, n A - tau)^power. With 1 <= power <= 4 and tau <= 1/2 the weights
    // sum to at least n 2^-power (sum_j n A_j = n), and each is off by at most power n A_j
    // times n A's relative error delta: out within power 2^power delta max|v|. delta: lambda
    // times the scores' error (|q|, |k| <= 1: |s| <= scale D) plus the transcendentals'.
    // Elsewhere weights at the threshold are ill-conditioned: not compared.
    c.lf.inexact_ties = true;  // q, k constant: n A = 1 each, against tau = 1 it rounds either way
    c.lf.feature_sums = true;
    const double delta = lambda * scale * double(d) * (double(d) + 8) * 0x1p-24 + 2e-6;
    c.lf.feature_tol = 2 * double(p.power) * std::exp2(double(p.power)) * delta;
    const bool comparable = p.power >= 1 && p.power <= 4 && p.threshold <= 0.5f && c.lf.feature_tol <= 1e-2;
    c.lf.feature_input_max = comparable ? 1 : 0;
  }
  c.policy = "softplus{length_scale=" + std::to_string(p.length_scale) + ", alpha=" + fmt(double(p.alpha)) +
             ", min_len=" + fmt(p.min_len) + ", power=" + fmt(double(p.power)) + ", threshold=" + fmt(double(p.threshold)) +
             ", " + f.text + "}";
  run_float_only(c, p, pb);
}

void decode_affine_scaled(fuzz_case& c) {
  reader& r = c.r;
  using mode = attnkit::affine_scaled::beta_mode_kind;
  attnkit::affine_scaled p;
  const int beta_mode = static_cast<int>(r.take("beta_mode", 4, 0));
  static const mode modes[3] = {mode::zero, mode::complement, mode::given};
  p.beta_mode = beta_mode == 3 ? static_cast<mode>(7) : modes[beta_mode];
  static const char* const mode_names[4] = {"zero", "complement", "given", "7"};
  if (beta_mode == 3) c.fault("beta_mode = 7 (no such beta_mode_kind)");
  const int alpha_fill = static_cast<int>(r.take("af_alpha", 9, 0));
  const int beta_fill = static_cast<int>(r.take("af_beta", 7, 0));
  const problem pb = decode_problem(c, {});
  const softmax_fields f = decode_softmax_fields(c, pb, true);
  f.set_all(p);

  // alpha and beta: [B, Hq, Nq] (q's).
  const double rows = double(pb.ext[0][0]) * double(pb.ext[0][1]) * double(pb.ext[0][2]);
  const bool real = pb.ext[0][0] >= 0 && pb.ext[0][1] >= 0 && pb.ext[0][2] >= 0 && sized(rows);
  std::uint64_t seed = r.take("af_seed", 0, 11);
  static const float bad[6] = {f_nan, f_inf, -f_inf, std::nextafter(0x1p32f, f_inf), -std::nextafter(0x1p32f, f_inf), 3e38f};
  static const char* const alpha_names[9] = {"null", "U(0, 1)", "U(-2, 2)", "all 0", "all 2^32", "all -2^32",
                                             "U(0, 1) with one entry X", "U(-1000, 1000)", "all 1"};
  static const char* const beta_names[7] = {"null", "U(-1, 1)", "U(-1e-3, 1e-3)", "all 2^32", "U(-1, 1) with one entry X",
                                            "all 0", "U(-100, 100)"};
  double alpha_max = 1, beta_max = 0;
  const auto fill = [&](const char* name, int how, bool is_alpha) {
    float_array a;
    if (how == 0) {
      a.null = true;
      return a;
    }
    a.allocate(real ? static_cast<index_t>(rows) : 0);
    for (index_t e = 0; e < a.count; ++e) {
      double x = 0;
      if (is_alpha) {
        static const double lo[9] = {0, 0, -2, 0, 0x1p32, -0x1p32, 0, -1000, 1}, hi[9] = {0, 1, 2, 0, 0x1p32, -0x1p32, 1, 1000, 1};
        x = lo[how] == hi[how] ? lo[how] : uniform_random(seed, lo[how], hi[how]);
      } else {
        static const double lo[7] = {0, -1, -1e-3, 0x1p32, -1, 0, -100}, hi[7] = {0, 1, 1e-3, 0x1p32, 1, 0, 100};
        x = lo[how] == hi[how] ? lo[how] : uniform_random(seed, lo[how], hi[how]);
      }
      a.buf[static_cast<std::size_t>(e)] = static_cast<float>(x);
    }
    if ((is_alpha && how == 6) || (!is_alpha && how == 4)) {
      const float x = pick(r, is_alpha ? "af_alpha_bad" : "af_beta_bad", bad, 0);
      const index_t at = static_cast<index_t>(r.take(is_alpha ? "af_alpha_bad_at" : "af_beta_bad_at", 64, 0));
      if (a.count > 0) {
        a.buf[static_cast<std::size_t>(at % a.count)] = x;
        c.fault(std::string(name) + "[" + fmt(at % a.count) + "] = " + fmt(double(x)));
      }
    }
    for (index_t e = 0; e < a.count; ++e) {
      const double x = std::fabs(double(a.buf[static_cast<std::size_t>(e)]));
      if (std::isfinite(x)) (is_alpha ? alpha_max : beta_max) = std::max(is_alpha ? alpha_max : beta_max, x);
    }
    return a;
  };
  const float_array alpha = fill("alpha", alpha_fill, true);
  const float_array beta = fill("beta", beta_fill, false);
  p.alpha = alpha.data();
  p.beta = beta.data();
  if (beta_mode == 2 && beta.null) c.fault("beta_mode given with beta null");
  if (beta_mode != 2 && !beta.null) c.fault(std::string("beta set with beta_mode ") + mode_names[beta_mode]);
  if (beta_mode == 1) beta_max = 1 + alpha_max;  // (1 - alpha_i) / n_i
  if (beta_mode == 0) beta_max = 0;

  c.lf.scale = p.scale;
  c.lf.cap = p.softcap;
  c.lf.out_gain = alpha_max;
  // beta_i times a sum of up to Nk values in double (the fast path by prefix sums): rounding
  // relative to sums of up to Nk |v|.
  c.lf.out_extra = beta_max * double(std::max<index_t>(pb.ext[1][2], 1)) * 1e-15;
  c.policy = std::string("affine_scaled{beta_mode=") + mode_names[beta_mode] + ", alpha " + alpha_names[alpha_fill] + " " +
             first_values(alpha) + ", beta " + beta_names[beta_fill] + " " + first_values(beta) + ", " + f.text + "}";
  run_float_only(c, p, pb);
}

void decode_gaussian_adaptive(fuzz_case& c) {
  reader& r = c.r;
  attnkit::gaussian_adaptive p;
  // Shapes: out = GAAM(v) has v's shape, so q and k need v's heads and tokens: N tokens for all
  // (ga_seq_fault: k and v one more), GQA groups (decision group) are faults.
  static const index_t lengths[15] = {8, 0, 1, 2, 3, 4, 5, 16, 17, 31, 64, 100, 256, 1000, 2048};
  const index_t n = pick(r, "ga_n", lengths, 0);
  const bool seq_fault = r.flag("ga_seq_fault");
  const problem pb = decode_problem(c, {n, seq_fault ? n + 1 : n});
  if (pb.ext[0][1] != pb.ext[1][1])
    c.fault("q.heads() = " + fmt(pb.ext[0][1]) + " != k.heads() = " + fmt(pb.ext[1][1]) + " (out = GAAM(v))");
  if (pb.ext[0][2] != pb.ext[1][2])
    c.fault("q.seq() = " + fmt(pb.ext[0][2]) + " != k.seq() = " + fmt(pb.ext[1][2]) + " (out = GAAM(v))");

  const int axis = static_cast<int>(r.take("ga_axis", 3, 0));
  p.axis = axis == 2 ? static_cast<attnkit::gaussian_adaptive::axis_kind>(5)
                     : static_cast<attnkit::gaussian_adaptive::axis_kind>(axis);
  if (axis == 2) c.fault("axis = 5 (no such axis_kind)");
  const index_t len = axis == 1 ? pb.ext[2][2] : pb.ext[2][3];  // v.seq() or v.dim()
  const index_t chunk_choices[12] = {1, 2, 3, 4, len / 2, len, len + 1, 0, -1, 2147483647, 2147483648, i64_max};
  p.chunks = pick(r, "ga_chunks", chunk_choices, 0);
  p.gaussians = pick_field(c, "ga_gaussians", {1, 2, 3, 8, 1000, pow2_62, i64_max, 0, -1}, 7);
  p.eps = pick_float(c, "ga_eps", {1e-8f, 0.f, 1.f, 1e-44f, 3e38f, -0.f, -1e-8f, f_nan, f_inf}, 6);
  p.unbiased = r.flag("unbiased", true);
  p.residual = r.flag("residual");
  const int offsets_fill = static_cast<int>(r.take("ga_offsets", 9, 0));
  const int scales_fill = static_cast<int>(r.take("ga_scales", 12, 0));
  std::uint64_t seed = r.take("ga_seed", 0, 13);

  // validate(): counts and eps; validate_with_views(): chunks against the axis (when it has
  // elements), then every parameter.
  if (p.chunks < 1 || p.chunks > 2147483647) c.fault("chunks = " + fmt(p.chunks) + " (expected in [1, 2^31 - 1])");
  index_t params = 0;
  const bool counts_ok = p.chunks >= 1 && p.gaussians >= 1 && !__builtin_mul_overflow(p.chunks, p.gaussians, &params);
  if (p.chunks >= 1 && p.gaussians >= 1 && !counts_ok) c.fault("chunks * gaussians overflows");
  const bool arrays = offsets_fill != 0 || scales_fill != 0;
  if (counts_ok && arrays && params > (index_t(1) << 54)) c.fault("chunks * gaussians = " + fmt(params) + " > 2^54 floats");
  if (len > 0 && p.chunks >= 1) {
    if (p.chunks > len) c.fault("chunks = " + fmt(p.chunks) + " > the axis length " + fmt(len));
    else if (p.unbiased && len / p.chunks < 2)
      c.fault("chunks of " + fmt(len / p.chunks) + " element with unbiased = true");
  }
  // The arrays: chunks x gaussians floats when the harness can hold them; a size that is a
  // fault anyway gets an empty allocation (nothing may be read); a valid size beyond the
  // harness's gets null (noted).
  const bool holdable = counts_ok && params <= (index_t(1) << 21);
  const bool faulty_size = !counts_ok || params > (index_t(1) << 54);
  static const char* const offset_names[9] = {"null", "zeros", "U(-1, 1)", "U(-3, 3)", "all 1e30", "+-FLT_MAX",
                                              "U(-1, 1), one NaN", "U(-1, 1), one inf", "U(-1, 1), one -inf"};
  static const char* const scale_names[12] = {"null", "ones", "exp(U(-2, 2))", "all 1e-3", "all 1e6", "all 1e-44",
                                              "all FLT_MAX", "ones, one 0", "ones, one -1", "ones, one NaN",
                                              "ones, one inf", "ones, one -0"};
  const auto make = [&](int how, bool offsets) {
    float_array a;
    if (how == 0) {
      a.null = true;
      return a;
    }
    if (!holdable) {
      if (faulty_size) {
        a.allocate(0);
      } else {
        a.null = true;
        c.note(std::string(offsets ? "mean_offsets" : "var_scales") + ": chunks * gaussians = " + fmt(params) +
               " floats, beyond the harness: null");
      }
      return a;
    }
    a.allocate(params);
    for (index_t e = 0; e < params; ++e) {
      double x = 0;
      if (offsets) {
        switch (how) {
          case 1: x = 0; break;
          case 3: x = uniform_random(seed, -3, 3); break;
          case 4: x = 1e30; break;
          case 5: x = e % 2 ? -double(flt_max) : double(flt_max); break;
          default: x = uniform_random(seed, -1, 1);
        }
      } else {
        switch (how) {
          case 2: x = std::exp(uniform_random(seed, -2, 2)); break;
          case 3: x = 1e-3; break;
          case 4: x = 1e6; break;
          case 5: x = 1e-44; break;
          case 6: x = double(flt_max); break;
          default: x = 1;
        }
      }
      a.buf[static_cast<std::size_t>(e)] = static_cast<float>(x);
    }
    const index_t at = params > 0 ? static_cast<index_t>(r.take(offsets ? "ga_offsets_at" : "ga_scales_at", 64, 0)) % params : 0;
    if (offsets && how >= 6 && params > 0) {
      const float x = how == 6 ? f_nan : how == 7 ? f_inf : -f_inf;
      a.buf[static_cast<std::size_t>(at)] = x;
      c.fault("mean_offsets[" + fmt(at) + "] = " + fmt(double(x)));
    }
    if (!offsets && how >= 7 && params > 0) {
      static const float bad_scales[5] = {0.f, -1.f, f_nan, f_inf, -0.f};
      const float x = bad_scales[how - 7];
      a.buf[static_cast<std::size_t>(at)] = x;
      c.fault("var_scales[" + fmt(at) + "] = " + fmt(double(x)));
    }
    return a;
  };
  const float_array offsets = make(offsets_fill, true);
  const float_array scales = make(scales_fill, false);
  p.mean_offsets = offsets.data();
  p.var_scales = scales.data();

  // Conditioning: weights softmax(-kappa (x - t)^2) with kappa = A / (2 var), A = sum_g 1 / c_g^2,
  // t = mean + centre. The float passes place t within about 2^-24 of the chunk's range and the
  // variance within about 1e-6, so a weight's log is off by about 1e-7 sqrt(A * len) (or A * len
  // with offsets moving t off the data) plus 1e-6 per unit of log weight: compared where
  // A * len <= 3e4 and the offsets are moderate (null, zeros, U(-1, 1), U(-3, 3)).
  double precision = 0;  // max over chunks of A
  if (holdable && counts_ok) {
    for (index_t ch = 0; ch < p.chunks; ++ch) {
      double a = 0;
      for (index_t g = 0; g < p.gaussians; ++g) {
        const double s = scales.null ? 1.0 : double(scales.buf[static_cast<std::size_t>(ch * p.gaussians + g)]);
        a += 1 / (s * s);
      }
      precision = std::max(precision, a);
    }
  } else if (counts_ok && scales.null) {
    precision = double(p.gaussians);
  } else {
    precision = HUGE_VAL;
  }
  const double l = double(std::max<index_t>(len, 1));
  const bool moderate = offsets_fill <= 3 && std::isfinite(precision) && precision * l <= 3e4;
  c.lf.feature_sums = true;
  c.lf.feature_input_max = moderate ? HUGE_VAL : 0;  // q and k are not read
  c.lf.feature_value_max = 1e30;                     // the weights do not depend on v's scale
  c.lf.feature_tol = 2e-5 + 1e-6 * std::sqrt(30 * precision * l) + (offsets_fill >= 2 ? 3e-7 * precision * l : 0);
  // Work: the reference's per element of v, one term per Gaussian (rejected inputs do none),
  // and the harness's own per element of q and k (filled and scanned though not read).
  const double dv = std::max(0.0, double(pb.ext[2][3])), d = std::max(0.0, double(pb.ext[0][3]));
  const double gaussians = c.faults.empty() ? std::max(1.0, double(p.gaussians)) : 1.0;
  c.lf.work_per_pair = 1e-9;
  c.lf.work_per_token = dv * (gaussians + 4) / 2 + d;
  c.policy = "gaussian_adaptive{axis=" + std::string(axis == 0 ? "dim" : axis == 1 ? "seq" : "5") + ", chunks=" +
             fmt(p.chunks) + ", gaussians=" + fmt(p.gaussians) + ", mean_offsets " + offset_names[offsets_fill] + " " +
             first_values(offsets) + ", var_scales " + scale_names[scales_fill] + " " + first_values(scales) +
             ", eps=" + fmt(double(p.eps)) + ", unbiased=" + std::to_string(p.unbiased) + ", residual=" +
             std::to_string(p.residual) + "}, axis length " + fmt(len);
  run_types(c, p, pb, type_set::softmax);
}

void decode_local_linear(fuzz_case& c) {
  attnkit::local_linear p;
  p.ridge = pick_float(c, "ridge", {1e-2f, 0.f, 1.f, 1e-6f, 100.f, 3e38f, flt_max, 1e-44f, -0.f, -1e-2f, f_nan, f_inf, -f_inf}, 9);
  const problem pb = decode_problem(c, {});
  const softmax_fields f = decode_softmax_fields(c, pb, false);
  f.set_masks(p);

  // Both sides work in double: the fast path's error is that of the solve, cond(S) times the
  // rounding, relative to the extrapolation |C S^-1 (q - mu)| <= 2 x^2 sqrt(D) / ridge |v|
  // (|q|, |k| <= x). Compared with ridge >= 1e-2 (no rank truncation, which the two sides
  // decide by different quantities) and kernel logits |scale q.k| <= 1e4.
  const double d = double(std::max<index_t>(pb.ext[0][3], 1)), dv = double(std::max<index_t>(pb.ext[2][3], 0));
  const double scale = p.scale != 0 ? std::fabs(double(p.scale)) : 1 / std::sqrt(d);
  const double ridge = double(p.ridge);
  double x = 0, tol = 0;
  if (std::isfinite(ridge) && p.ridge >= 1e-2f) {
    x = std::min(10.0, std::sqrt(1e4 / (scale * d)));
    const double extrapolation = 2 * x * x * std::sqrt(d) / ridge, condition = 1 + x * x * d / ridge;
    tol = 2e-5 + 1e-14 * extrapolation * condition;
    if (tol > 1e-2) x = 0;
  }
  c.lf.scale = p.scale;
  c.lf.feature_sums = true;
  c.lf.feature_input_max = x;
  c.lf.feature_tol = tol;
  // Work: per pair the moments (D x D and Dv x D) and the score; per query the solve (the
  // reference's Jacobi sweeps, about 4 D^3).
  c.lf.work_per_pair = d * (d + dv) + d + dv + 1;
  c.lf.work_per_token = 4 * d * d * d + d * dv;
  c.policy = "local_linear{ridge=" + fmt(ridge) + ", " + f.text + "}";
  run_types(c, p, pb, type_set::float_f16);
}

}  // namespace attnkit_fuzz
