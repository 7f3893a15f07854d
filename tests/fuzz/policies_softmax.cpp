/// \file
/// Fuzz decoder of attnkit::softmax: scale, causal, windows, soft-cap, ALiBi slopes, variable
/// key and query lengths (tests/fuzz/harness.hpp). decode_softmax_fields decodes those fields
/// for the other policies built on softmax's masks too (policies_probabilistic.cpp).
#include "harness.hpp"

namespace attnkit_fuzz {
namespace {

index_t decode_window(fuzz_case& c, const char* name, const char* small_name, index_t nk) {
  const index_t small = static_cast<index_t>(c.r.take(small_name, 9, 2));
  switch (c.r.take(name, 10, 0)) {
    case 1: return small;
    case 2: return i64_max;  // unbounded, like -1 (contract 7)
    case 3: return pow2_62;
    case 4: return pow2_32;
    case 5: return third_of_2_64;
    case 6: c.fault(std::string(name) + " = -2"); return -2;
    case 7: c.fault(std::string(name) + " = INT64_MIN"); return i64_min;
    case 8: return nk;
    case 9: return 0;
    default: return -1;
  }
}

float decode_softcap(fuzz_case& c) {
  const auto bad = [&](float x) {
    c.fault("softcap = " + fmt(double(x)) + " (expected 0 or in [2^-126, 2^127])");
    return x;
  };
  switch (c.r.take("softcap", 14, 0)) {
    case 1: return 1.f;
    case 2: return 5.f;
    case 3: return 30.f;
    case 4: return 0.5f;
    case 5: return pow2_m126;
    case 6: return bad(1e-44f);
    case 7: return pow2_127;
    case 8: return bad(3e38f);
    case 9: return bad(-1.f);
    case 10: return bad(f_nan);
    case 11: return bad(f_inf);
    case 12: return 1e-3f;
    case 13: return bad(std::nextafter(pow2_m126, 0.f));
    default: return 0.f;
  }
}

/// Per-batch lengths: null, random, all full, all zero, or one out of range.
std::vector<std::int32_t> decode_lens(fuzz_case& c, const char* mode_name, const char* value_name, const char* bad_name,
                                      index_t batch, index_t n, std::string& text) {
  const int mode = static_cast<int>(c.r.take(mode_name, 5, 0));
  if (mode == 0) {
    text = "null";
    return {};
  }
  const std::size_t count = static_cast<std::size_t>(std::clamp<index_t>(batch, 1, 65536));
  std::vector<std::int32_t> lens(count, static_cast<std::int32_t>(n));
  for (std::size_t b = 0; b < std::min<std::size_t>(count, 64); ++b) {
    const auto x = static_cast<index_t>(c.r.take(value_name, 256, 0));
    if (mode == 1) lens[b] = static_cast<std::int32_t>(n >= 0 ? x % (n + 1) : 0);
    if (mode == 3) lens[b] = 0;
  }
  if (mode == 1)
    for (std::size_t b = 64; b < count; ++b) lens[b] = lens[b % 64];
  if (mode == 4) {
    static const std::int64_t bad[4] = {-1, -2, std::numeric_limits<std::int32_t>::max(), std::numeric_limits<std::int32_t>::min()};
    std::int64_t x = pick(c.r, bad_name, bad, 0);
    if (x == -2) x = n + 1;
    lens[0] = static_cast<std::int32_t>(x);
    if (batch >= 1 && (x < 0 || x > n)) c.fault(std::string(mode_name) + "[0] = " + fmt(index_t(x)) + " out of [0, " + fmt(n) + "]");
  }
  std::ostringstream s;
  s << "[";
  for (std::size_t b = 0; b < std::min<std::size_t>(count, 8); ++b) s << (b ? ", " : "") << lens[b];
  s << (count > 8 ? ", ...]" : "]");
  text = s.str();
  return lens;
}

}  // namespace

softmax_fields decode_softmax_fields(fuzz_case& c, const problem& pb, bool scores) {
  reader& r = c.r;
  softmax_fields f;
  f.scale = decode_scale(c);
  f.causal = r.flag("causal");
  f.window_left = decode_window(c, "window_left", "window_left_n", pb.Nk);
  f.window_right = decode_window(c, "window_right", "window_right_n", pb.Nk);
  std::ostringstream s;
  s << "scale=" << fmt(double(f.scale)) << ", causal=" << f.causal << ", window_left=" << f.window_left
    << ", window_right=" << f.window_right;

  if (scores) {
    f.softcap = decode_softcap(c);
    // ALiBi slopes, one per query head (q.heads() of the problem, faults included).
    const index_t heads = pb.ext[0][1];
    std::vector<float>& slopes = f.slopes;
    const int alibi = static_cast<int>(r.take("alibi", 6, 0));
    f.alibi = alibi;
    static const char* const alibi_names[6] = {"none", "standard", "per head in [-8, 8)", "all X", "one bad head",
                                               "standard, negated"};
    float x_slope = 0;
    if (alibi != 0) {
      const std::size_t count = static_cast<std::size_t>(std::clamp<index_t>(heads, 1, 65536));
      slopes.assign(count, 0.f);
      if (alibi == 1 || alibi == 5) {
        const std::vector<float> sl = attnkit::alibi_slopes(static_cast<index_t>(count));
        for (std::size_t h = 0; h < count; ++h) slopes[h] = alibi == 1 ? sl[h] : -sl[h];
      } else if (alibi == 3) {
        static const float xs[10] = {1e30f, -1e38f, 0x1p127f, -0x1p127f, 3e38f, -1e30f, f_nan, f_inf, 0.f, 8.f};
        x_slope = pick(r, "slope_x", xs, 0);
        for (float& sl : slopes) sl = x_slope;
        if (!std::isfinite(x_slope) || std::fabs(x_slope) > pow2_127)
          c.fault("alibi_slopes all " + fmt(double(x_slope)) + " (expected finite, |slope| <= 2^127)");
      } else {
        for (std::size_t h = 0; h < count; ++h)
          slopes[h] = h < 64 ? (static_cast<float>(r.take("slope", 256, 136)) - 128.f) / 16.f : slopes[h % 64];
        if (alibi == 4) {
          static const float bad[4] = {f_nan, f_inf, 3e38f, -f_inf};
          const float x = pick(r, "slope_bad", bad, 0);
          const std::size_t at = static_cast<std::size_t>(r.take("slope_bad_head", 64, 0)) % count;
          slopes[at] = x;
          if (heads >= 1 && static_cast<index_t>(at) < heads) c.fault("alibi_slopes[" + std::to_string(at) + "] = " + fmt(double(x)));
        }
      }
      c.lf.alibi = true;
      c.lf.slopes_equal = true;
      c.lf.slope_value = slopes[0];
      for (std::size_t h = 0; h < static_cast<std::size_t>(std::clamp<index_t>(heads, 0, 65536)); ++h) {
        c.lf.alibi_nonzero = c.lf.alibi_nonzero || slopes[h] != 0;
        c.lf.slope_max = std::max(c.lf.slope_max, std::fabs(double(slopes[h])));
        c.lf.slopes_equal = c.lf.slopes_equal && slopes[h] == slopes[0];
      }
    }
    s << ", softcap=" << fmt(double(f.softcap)) << ", alibi=" << alibi_names[alibi];
    if (alibi != 0) s << " (slope[0]=" << fmt(double(slopes[0])) << ")";
  }

  std::string key_text, query_text;
  f.key_lens = decode_lens(c, "key_lens", "key_len", "key_len_bad", pb.ext[0][0], pb.ext[1][2], key_text);
  f.query_lens = decode_lens(c, "query_lens", "query_len", "query_len_bad", pb.ext[0][0], pb.ext[0][2], query_text);
  s << ", key_lens=" << key_text << ", query_lens=" << query_text;
  f.text = s.str();
  return f;
}

void decode_softmax(fuzz_case& c) {
  const problem pb = decode_problem(c, {});
  const softmax_fields f = decode_softmax_fields(c, pb, true);
  attnkit::softmax p;
  f.set_all(p);
  c.lf.scale = p.scale;
  c.lf.cap = p.softcap;
  c.policy = "softmax{" + f.text + "}";
  run_policy(c, p, pb, type_set::softmax);
}

}  // namespace attnkit_fuzz
