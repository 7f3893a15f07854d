/// \file
/// Shared test helpers: owning tensors in several layouts (with guard elements around and
/// between the viewed elements), random inputs, fast-vs-reference comparison with Catch2
/// checks, and bitwise comparison.
///
/// Every test seeds its generator afresh (std::random_device) and prints the seed when an
/// assertion fails; set ATTNKIT_TEST_SEED=<seed> to replay a failure.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <attnkit/attnkit.hpp>

namespace attnkit_test {

using attnkit::index_t;

/// The seed of one test run: ATTNKIT_TEST_SEED if set, otherwise fresh from random_device.
inline std::uint32_t fresh_seed() {
  if (const char* s = std::getenv("ATTNKIT_TEST_SEED")) return static_cast<std::uint32_t>(std::stoul(s));
  static std::random_device rd;
  return rd();
}

/// Declares `std::mt19937 name` seeded afresh, and captures the seed for failure messages.
#define ATTNKIT_SEEDED_RNG(name)                               \
  const std::uint32_t name##_seed = attnkit_test::fresh_seed(); \
  CAPTURE(name##_seed);                                         \
  std::mt19937 name(name##_seed)

/// Runs f() for each way bf16 q, k, v can multiply in this build: on the AVX512_BF16 dot
/// product and widened to float (the CPU picks one, bf16dot::preferred; tests cover both).
template <class F>
void for_each_bf16_way(F&& f) {
#if defined(__AVX512BF16__)
  struct restore {
    ~restore() { attnkit::detail::simd::bf16dot::choice() = -1; }
  } restore_choice;
  for (int way : {0, 1}) {
    INFO((way ? "bf16 on the dot product" : "bf16 widened to float"));
    attnkit::detail::simd::bf16dot::choice() = way;
    f();
  }
#else
  f();
#endif
}

/// Memory layouts the tests exercise. `strided` is not contiguous on any axis: the dim stride
/// is 2, the seq stride is padded, and heads/batch strides have gaps too.
enum class layout { bhsd, bshd, strided };

inline const char* name(layout l) {
  switch (l) {
    case layout::bhsd: return "bhsd";
    case layout::bshd: return "bshd";
    case layout::strided: return "strided";
  }
  return "?";
}

template <class T>
T from_f(float x) {
  return attnkit::detail::from_float<T>(x);
}
template <class T>
float to_f(T x) {
  return attnkit::detail::to_float(x);
}

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  if constexpr (std::is_same_v<T, attnkit::bf16>) return "bf16";
  if constexpr (std::is_same_v<T, attnkit::f16>) return "f16";
  return "?";
}

/// Guard elements before and after every tensor's viewed span.
constexpr index_t guard = 16;

/// An owning tensor with logical extents [batch, heads, seq, dim] in a chosen layout. Elements
/// outside the view (guards, gaps of the strided layout) hold `fill`: NaN for inputs (so that a
/// stray read shows up), a sentinel for outputs (so that a stray write shows up).
template <class T>
struct tensor {
  std::array<index_t, 4> ext{};
  layout lay = layout::bhsd;
  std::vector<T> mem;
  attnkit::tensor_view<T> view;

  tensor() = default;
  tensor(std::array<index_t, 4> extents, layout l, T fill) : ext(extents), lay(l) {
    const index_t H = ext[1], S = ext[2], D = ext[3];
    std::array<index_t, 4> st{};
    switch (l) {
      case layout::bhsd: st = {H * S * D, S * D, D, 1}; break;
      case layout::bshd: st = {S * H * D, D, H * D, 1}; break;
      case layout::strided: {
        const index_t ss = 2 * D + 3, sh = ss * S + 1, sb = sh * H + 7;
        st = {sb, sh, ss, 2};
        break;
      }
    }
    index_t span = 1;
    for (int a = 0; a < 4; ++a) span += (ext[a] > 0 ? ext[a] - 1 : 0) * st[a];
    mem.assign(static_cast<std::size_t>(span + 2 * guard), fill);
    view = attnkit::tensor_view<T>(mem.data() + guard, ext, st);
  }
  tensor(const tensor& o) : ext(o.ext), lay(o.lay), mem(o.mem) {
    view = attnkit::tensor_view<T>(mem.data() + guard, ext, o.view.strides());
  }
  tensor& operator=(const tensor& o) {
    if (this != &o) {
      ext = o.ext;
      lay = o.lay;
      mem = o.mem;
      view = attnkit::tensor_view<T>(mem.data() + guard, ext, o.view.strides());
    }
    return *this;
  }
  tensor(tensor&&) = default;  // std::vector's move keeps the buffer, so `view` stays valid
  tensor& operator=(tensor&&) = default;

  attnkit::tensor_view<const T> cview() const { return attnkit::tensor_view<const T>(view); }
  float get(index_t b, index_t h, index_t s, index_t d) const { return to_f(view(b, h, s, d)); }
  void set(index_t b, index_t h, index_t s, index_t d, float x) const { view(b, h, s, d) = from_f<T>(x); }

  template <class F>
  void for_each(F&& f) const {
    for (index_t b = 0; b < ext[0]; ++b)
      for (index_t h = 0; h < ext[1]; ++h)
        for (index_t s = 0; s < ext[2]; ++s)
          for (index_t d = 0; d < ext[3]; ++d) f(b, h, s, d);
  }
};

template <class T>
T nan_of() {
  return from_f<T>(std::numeric_limits<float>::quiet_NaN());
}
template <class T>
T sentinel_of() {
  return from_f<T>(-12345.0f);
}

/// An input tensor: guards NaN, viewed elements uniform in [lo, hi] (rounded to T).
template <class T>
tensor<T> random_tensor(std::array<index_t, 4> ext, layout l, std::mt19937& gen, float lo = -1.f, float hi = 1.f) {
  tensor<T> t(ext, l, nan_of<T>());
  std::uniform_real_distribution<float> u(lo, hi);
  t.for_each([&](index_t b, index_t h, index_t s, index_t d) { t.set(b, h, s, d, u(gen)); });
  return t;
}

/// An output tensor: everything holds the sentinel.
template <class T>
tensor<T> output_tensor(std::array<index_t, 4> ext, layout l) {
  return tensor<T>(ext, l, sentinel_of<T>());
}

template <class T>
bool same_bits(const tensor<T>& a, const tensor<T>& b) {
  return a.mem.size() == b.mem.size() &&
         (a.mem.empty() || std::memcmp(a.mem.data(), b.mem.data(), a.mem.size() * sizeof(T)) == 0);
}
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

/// The problem sizes: q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv].
struct problem {
  index_t B = 1, Hq = 1, Hkv = 1, Nq = 1, Nk = 1, D = 16, Dv = 16;
  std::array<index_t, 4> q_ext() const { return {B, Hq, Nq, D}; }
  std::array<index_t, 4> k_ext() const { return {B, Hkv, Nk, D}; }
  std::array<index_t, 4> v_ext() const { return {B, Hkv, Nk, Dv}; }
  std::array<index_t, 4> o_ext() const { return {B, Hq, Nq, Dv}; }
  index_t rows() const { return B * Hq * Nq; }
};

inline std::string describe(const problem& s) {
  std::ostringstream o;
  o << "B=" << s.B << " Hq=" << s.Hq << " Hkv=" << s.Hkv << " Nq=" << s.Nq << " Nk=" << s.Nk << " D=" << s.D
    << " Dv=" << s.Dv;
  return o.str();
}

inline std::string describe(const attnkit::softmax& p) {
  std::ostringstream o;
  o << "softmax{scale=" << p.scale << " causal=" << p.causal << " window=(" << p.window_left << ","
    << p.window_right << ") softcap=" << p.softcap << " alibi=" << (p.alibi_slopes ? "yes" : "no")
    << " key_lens=" << (p.key_lens ? "yes" : "no") << " query_lens=" << (p.query_lens ? "yes" : "no") << "}";
  return o.str();
}

template <class T>
struct qkv {
  tensor<T> q, k, v;
};

template <class T>
qkv<T> random_qkv(const problem& s, std::mt19937& gen, layout lq = layout::bhsd, layout lk = layout::bhsd,
                  layout lv = layout::bhsd, float amp = 1.f) {
  return {random_tensor<T>(s.q_ext(), lq, gen, -amp, amp), random_tensor<T>(s.k_ext(), lk, gen, -amp, amp),
          random_tensor<T>(s.v_ext(), lv, gen, -1.f, 1.f)};
}

/// Output of one call: out (guards hold the sentinel) and lse [B, Hq, Nq] (+ guard elements).
template <class O>
struct result {
  tensor<O> out;
  std::vector<float> lse_mem;  // guard + rows + guard, sentinel-filled before the call
  float lse(index_t r) const { return lse_mem[static_cast<std::size_t>(guard + r)]; }
  float* lse_ptr() { return lse_mem.data() + guard; }
};

template <class O>
result<O> make_result(const problem& s, layout lo) {
  result<O> r{output_tensor<O>(s.o_ext(), lo), std::vector<float>(static_cast<std::size_t>(s.rows() + 2 * guard), -777.f)};
  return r;
}

/// attnkit::attention of policy p into a fresh out tensor of type O (layout lo), with lse.
template <class O = float, class P, class Q, class K, class V>
result<O> run_fast(const P& p, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v,
                   layout lo = layout::bhsd, int threads = 0) {
  problem s{q.ext[0], q.ext[1], k.ext[1], q.ext[2], k.ext[2], q.ext[3], v.ext[3]};
  result<O> r = make_result<O>(s, lo);
  attnkit::options opt;
  opt.lse = r.lse_ptr();
  opt.lse_size = s.rows();
  opt.threads = threads;
  attnkit::attention(p, q.cview(), k.cview(), v.cview(), r.out.view, opt);
  return r;
}

/// attnkit::reference::attention of policy p into a fresh out tensor (type O, layout lo), with lse.
template <class O = float, class P, class Q, class K, class V>
result<O> run_ref(const P& p, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v,
                  layout lo = layout::bhsd) {
  problem s{q.ext[0], q.ext[1], k.ext[1], q.ext[2], k.ext[2], q.ext[3], v.ext[3]};
  result<O> r = make_result<O>(s, lo);
  attnkit::options opt;
  opt.lse = r.lse_ptr();
  opt.lse_size = s.rows();
  attnkit::reference::attention(p, q.cview(), k.cview(), v.cview(), r.out.view, opt);
  return r;
}

/// Tolerances: out |got - want| <= atol + rtol |want|; the same for lse with its own pair.
struct tolerance {
  double atol, rtol, lse_atol, lse_rtol;
};
inline constexpr tolerance float_tol{2e-5, 1e-5, 1e-4, 1e-6};
inline constexpr tolerance half_tol{1e-2, 1e-2, 1e-2, 1e-3};

template <class... T>
constexpr tolerance tol_for() {
  return (std::is_same_v<T, float> && ...) ? float_tol : half_tol;
}

inline bool close(double got, double want, double atol, double rtol) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::abs(got - want) <= atol + rtol * std::abs(want);
}

/// Compares every element of two outputs (any element types); reports the worst element.
template <class A, class B>
std::pair<bool, std::string> compare_out(const tensor<A>& got, const tensor<B>& want, double atol, double rtol) {
  if (got.ext != want.ext) return {false, "MISMATCH: different extents"};
  index_t bad = 0;
  double worst_bad = -1, worst_all = -1;
  std::string where_bad, where_all;
  auto where = [](index_t b, index_t h, index_t s, index_t d, double g, double w) {
    std::ostringstream o;
    o << "(b=" << b << ", h=" << h << ", s=" << s << ", d=" << d << "): got " << g << ", want " << w;
    return o.str();
  };
  got.for_each([&](index_t b, index_t h, index_t s, index_t d) {
    const double g = got.get(b, h, s, d), w = want.get(b, h, s, d);
    const bool good = close(g, w, atol, rtol);
    const double err = std::isfinite(g) && std::isfinite(w) ? std::abs(g - w) : (good ? 0.0 : HUGE_VAL);
    if (!good) {
      ++bad;
      if (err > worst_bad) { worst_bad = err; where_bad = where(b, h, s, d, g, w); }
    }
    if (err > worst_all) { worst_all = err; where_all = where(b, h, s, d, g, w); }
  });
  std::ostringstream o;
  if (bad)
    o << "MISMATCH: " << bad << " bad elements; worst |err| = " << worst_bad << " at " << where_bad;
  else
    o << "all close; worst |err| = " << worst_all << " at " << where_all;
  return {bad == 0, o.str()};
}

inline std::pair<bool, std::string> compare_lse(const std::vector<float>& got_mem, const std::vector<float>& want_mem,
                                                index_t rows, double atol, double rtol) {
  index_t bad = 0;
  std::string first;
  for (index_t r = 0; r < rows; ++r) {
    const double g = got_mem[static_cast<std::size_t>(guard + r)], w = want_mem[static_cast<std::size_t>(guard + r)];
    if (!close(g, w, atol, rtol)) {
      if (bad++ == 0) {
        std::ostringstream o;
        o << "row " << r << ": got " << g << ", want " << w;
        first = o.str();
      }
    }
  }
  // guards untouched
  for (index_t i = 0; i < guard; ++i) {
    if (got_mem[static_cast<std::size_t>(i)] != -777.f ||
        got_mem[static_cast<std::size_t>(guard + rows + i)] != -777.f) {
      ++bad;
      first += " [lse guard overwritten]";
      break;
    }
  }
  std::ostringstream o;
  o << (bad ? "LSE MISMATCH: " : "lse close: ") << bad << " bad rows; first " << first;
  return {bad == 0, o.str()};
}

/// Guards and gaps of an output tensor still hold the sentinel.
template <class T>
bool guards_intact(const tensor<T>& t) {
  tensor<T> fresh = output_tensor<T>(t.ext, t.lay);
  // Copy the viewed elements of t into fresh, then compare whole buffers.
  t.for_each([&](index_t b, index_t h, index_t s, index_t d) { fresh.view(b, h, s, d) = t.view(b, h, s, d); });
  return same_bits(fresh, t);
}

/// No NaN in the viewed elements.
template <class T>
bool all_finite(const tensor<T>& t) {
  bool ok = true;
  t.for_each([&](index_t b, index_t h, index_t s, index_t d) { ok = ok && std::isfinite(t.get(b, h, s, d)); });
  return ok;
}

/// CHECKs that `fast` matches `ref` (out and lse) within `tol`, and that guards are intact.
template <class O>
void check_matches(const result<O>& fast, const result<float>& ref, tolerance tol) {
  const auto [ok_out, msg_out] = compare_out(fast.out, ref.out, tol.atol, tol.rtol);
  INFO(msg_out);
  CHECK(ok_out);
  const index_t rows = fast.out.ext[0] * fast.out.ext[1] * fast.out.ext[2];
  const auto [ok_lse, msg_lse] = compare_lse(fast.lse_mem, ref.lse_mem, rows, tol.lse_atol, tol.lse_rtol);
  INFO(msg_lse);
  CHECK(ok_lse);
  CHECK(guards_intact(fast.out));
}

/// Random q, k, v of type In in the given layouts; attention (out type Out, layout lo) vs the
/// reference; CHECKs closeness. Returns both results for further checks.
template <class In, class Out = float>
std::pair<result<Out>, result<float>> check_vs_reference(const attnkit::softmax& p, const problem& s, std::mt19937& gen,
                                                         layout lq = layout::bhsd, layout lk = layout::bhsd,
                                                         layout lv = layout::bhsd, layout lo = layout::bhsd,
                                                         int threads = 0, float amp = 1.f) {
  INFO(describe(s) << " " << describe(p) << " in=" << type_name<In>() << " out=" << type_name<Out>() << " layouts q="
                   << name(lq) << " k=" << name(lk) << " v=" << name(lv) << " out=" << name(lo)
                   << " threads=" << threads);
  qkv<In> in = random_qkv<In>(s, gen, lq, lk, lv, amp);
  result<Out> fast = run_fast<Out>(p, in.q, in.k, in.v, lo, threads);
  result<float> ref = run_ref<float>(p, in.q, in.k, in.v, layout::bhsd);
  check_matches(fast, ref, tol_for<In, Out>());
  return {std::move(fast), std::move(ref)};
}

/// A sub-range [from, to) of a view along the seq axis.
template <class T>
attnkit::tensor_view<T> seq_slice(attnkit::tensor_view<T> t, index_t from, index_t to) {
  return attnkit::tensor_view<T>(t.data() + from * t.stride(attnkit::seq_axis),
                                 {t.batch(), t.heads(), to - from, t.dim()}, t.strides());
}

}  // namespace attnkit_test
