// Core pieces: bf16/f16 conversions, tensor_view, the executor, error, the vector 2^x.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <attnkit/core/error.hpp>
#include <attnkit/core/executor.hpp>
#include <attnkit/core/tensor_view.hpp>
#include <attnkit/core/types.hpp>
#include <attnkit/simd/exp.hpp>


using attnkit::bf16;
using attnkit::f16;
using attnkit::index_t;

namespace {

// The core tests do not include test_helpers.hpp (which pulls in the engines), so that they
// build on their own; same seeding convention: ATTNKIT_TEST_SEED replays a failure.
std::uint32_t fresh_seed() {
  if (const char* s = std::getenv("ATTNKIT_TEST_SEED")) return static_cast<std::uint32_t>(std::stoul(s));
  static std::random_device rd;
  return rd();
}
#define ATTNKIT_SEEDED_RNG(name)                 \
  const std::uint32_t name##_seed = fresh_seed(); \
  CAPTURE(name##_seed);                           \
  std::mt19937 name(name##_seed)

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
std::uint16_t bf(float x) { return bf16(x).bits; }
std::uint16_t hf(float x) { return f16(x).bits; }

// A native IEEE binary16 type, a second oracle for f16's rounding (round to nearest even):
// AArch64's __fp16 (FCVT; GCC 12 has no _Float16 in C++ there), or GCC's _Float16 (C++ on x86
// since GCC 12, on other targets since GCC 13; clang 14 lacks it in C++ on x86).
#if defined(__aarch64__) && defined(__ARM_FP16_FORMAT_IEEE)
#define ATTNKIT_TEST_NATIVE_F16 __fp16
#elif defined(__FLT16_MAX__) && !defined(__clang__) && \
    (defined(__x86_64__) || defined(__i386__) || __GNUC__ >= 13)
#define ATTNKIT_TEST_NATIVE_F16 _Float16
#endif

/// Independent round-to-nearest-even to bf16 of a finite float: pick the nearer of the two
/// bf16 neighbours by comparing distances in double (ties: even mantissa).
std::uint16_t bf16_oracle(float x) {
  const std::uint32_t u = float_to_bits(x);
  const std::uint16_t down = static_cast<std::uint16_t>(u >> 16);
  if ((u & 0xffffu) == 0) return down;
  const std::uint16_t up = static_cast<std::uint16_t>(down + 1);  // away from zero in magnitude
  const double xd = x, dd = bits_to_float(std::uint32_t(down) << 16);
  const std::uint32_t up_bits = std::uint32_t(up) << 16;
  // the next magnitude may be infinity: its "value" for rounding is 2^128
  const double ud = ((up_bits & 0x7fffffffu) == 0x7f800000u) ? std::copysign(std::ldexp(1.0, 128), xd)
                                                               : double(bits_to_float(up_bits));
  const double e_down = std::abs(xd - dd), e_up = std::abs(ud - xd);
  if (e_down < e_up) return down;
  if (e_up < e_down) return up;
  return (down & 1u) ? up : down;
}

/// Independent float -> f16 (round to nearest even) computed in double: enumerate the f16
/// grid around x.
std::uint16_t f16_oracle(float x) {
  if (std::isnan(x)) return 0x7e00;
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::abs(double(x));
  const double max_half = 65504.0, ulp_top = 32.0;  // ulp of the top binade
  if (a >= max_half + ulp_top / 2) return sign | 0x7c00;  // 65520 and up: infinity (tie goes to even = inf)
  // exponent of a as an f16: subnormals share the exponent of 2^-14
  int e = a == 0 ? -14 : std::max(-14, static_cast<int>(std::floor(std::log2(a))));
  if (a != 0 && std::ldexp(1.0, e) > a) --e;  // guard against log2 rounding
  if (a != 0 && std::ldexp(1.0, e + 1) <= a) ++e;
  e = std::max(e, -14);
  const double ulp = std::ldexp(1.0, e - 10);
  double q = a / ulp;  // exact: a is a float, ulp a power of two
  double fl = std::floor(q);
  const double rest = q - fl;
  if (rest > 0.5 || (rest == 0.5 && std::fmod(fl, 2.0) != 0)) fl += 1;
  const double v = fl * ulp;
  // encode v
  if (v == 0) return sign;
  if (v < std::ldexp(1.0, -14)) return sign | static_cast<std::uint16_t>(v / std::ldexp(1.0, -24));
  int ev = static_cast<int>(std::floor(std::log2(v)));
  if (std::ldexp(1.0, ev) > v) --ev;
  if (std::ldexp(1.0, ev + 1) <= v) ++ev;
  const std::uint16_t m = static_cast<std::uint16_t>(v / std::ldexp(1.0, ev - 10) - 1024);
  return sign | static_cast<std::uint16_t>((ev + 15) << 10) | m;
}

}  // namespace

TEST_CASE("bf16: exact values and round to nearest even", "[core][bf16]") {
  CHECK(bf(1.0f) == 0x3f80);
  CHECK(bf(-2.0f) == 0xc000);
  CHECK(bf(0.0f) == 0x0000);
  CHECK(bf(-0.0f) == 0x8000);
  CHECK(std::signbit(float(bf16(-0.0f))));
  CHECK(float(bf16(1.0f)) == 1.0f);
  CHECK(float(bf16(0.15625f)) == 0.15625f);
  // ties: 1 + 2^-8 sits halfway between 1 and 1 + 2^-7; even mantissa (1.0) wins
  CHECK(bf(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);
  // 1 + 3 * 2^-8 sits halfway between 0x3f81 and 0x3f82; even is 0x3f82
  CHECK(bf(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  // just above the tie rounds up, just below rounds down
  CHECK(bf(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)) == 0x3f81);
  CHECK(bf(std::nextafter(1.0f + 3 * std::ldexp(1.0f, -8), 0.0f)) == 0x3f81);
  CHECK(bf(-(1.0f + std::ldexp(1.0f, -8))) == 0xbf80);
  // infinities, overflow, NaN
  CHECK(bf(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(bf(-std::numeric_limits<float>::infinity()) == 0xff80);
  CHECK(bf(std::numeric_limits<float>::max()) == 0x7f80);  // above bf16 max + half ulp
  CHECK(bf(bits_to_float(0x7f7f7fffu)) == 0x7f7f);          // just below the tie: largest finite
  CHECK(bf(bits_to_float(0x7f7f8000u)) == 0x7f80);          // tie, odd mantissa: rounds to infinity
  CHECK(std::isnan(float(bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(float(bf16(bits_to_float(0x7f800001u)))));  // signalling NaN whose payload is below bit 16
  CHECK(std::isnan(float(bf16(bits_to_float(0xffc00000u)))));
  // subnormals round like everything else
  CHECK(bf(bits_to_float(0x00008000u)) == 0x0000);
  CHECK(bf(bits_to_float(0x00018000u)) == 0x0002);
  CHECK(bf(std::numeric_limits<float>::denorm_min()) == 0x0000);
}

TEST_CASE("bf16: every pattern round-trips, random floats round like the oracle", "[core][bf16]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const bf16 h = bf16::from_bits(static_cast<std::uint16_t>(b));
    const float f = float(h);
    const bf16 back(f);
    if (std::isnan(f)) {
      if (!std::isnan(float(back))) FAIL("bf16 NaN pattern " << b << " did not stay NaN");
    } else if (back.bits != b) {
      FAIL("bf16 pattern " << b << " round-tripped to " << back.bits);
    }
  }
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<std::uint32_t> any;
  for (int n = 0; n < 200000; ++n) {
    const float x = bits_to_float(any(gen));
    if (std::isnan(x)) continue;
    const std::uint16_t got = bf(x), want = bf16_oracle(x);
    if (got != want) FAIL("bf16(" << x << " = 0x" << std::hex << float_to_bits(x) << ") = 0x" << got << ", want 0x" << want);
  }
  SUCCEED();
}

TEST_CASE("f16: exact values, subnormals, overflow and ties", "[core][f16]") {
  CHECK(hf(1.0f) == 0x3c00);
  CHECK(hf(-2.0f) == 0xc000);
  CHECK(hf(0.5f) == 0x3800);
  CHECK(hf(0.0f) == 0x0000);
  CHECK(hf(-0.0f) == 0x8000);
  CHECK(std::signbit(float(f16(-0.0f))));
  CHECK(float(f16(-0.0f)) == 0.0f);
  // max and overflow
  CHECK(hf(65504.0f) == 0x7bff);
  CHECK(float(f16::from_bits(0x7bff)) == 65504.0f);
  CHECK(hf(65519.0f) == 0x7bff);
  CHECK(hf(std::nextafter(65520.0f, 0.0f)) == 0x7bff);
  CHECK(hf(65520.0f) == 0x7c00);
  CHECK(hf(-65520.0f) == 0xfc00);
  CHECK(hf(1e10f) == 0x7c00);
  CHECK(hf(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(hf(-std::numeric_limits<float>::infinity()) == 0xfc00);
  CHECK(std::isinf(float(f16::from_bits(0x7c00))));
  // NaN stays NaN (quiet), including a NaN whose payload lives only in low float bits
  CHECK(std::isnan(float(f16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(float(f16(bits_to_float(0x7f800001u)))));
  CHECK(std::isnan(float(f16(bits_to_float(0xff800001u)))));
  // smallest normal, subnormals
  CHECK(hf(std::ldexp(1.0f, -14)) == 0x0400);
  CHECK(hf(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(float(f16::from_bits(0x0001)) == std::ldexp(1.0f, -24));
  CHECK(float(f16::from_bits(0x03ff)) == 1023 * std::ldexp(1.0f, -24));
  CHECK(float(f16::from_bits(0x8001)) == -std::ldexp(1.0f, -24));
  CHECK(hf(std::ldexp(1.0f, -25)) == 0x0000);                                // tie with 0: even
  CHECK(hf(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);          // just above the tie
  CHECK(hf(3 * std::ldexp(1.0f, -25)) == 0x0002);                            // 1.5 ulp: tie, even is 2
  CHECK(hf(5 * std::ldexp(1.0f, -25)) == 0x0002);                            // 2.5 ulp: tie, even is 2
  CHECK(hf(1023.5f * std::ldexp(1.0f, -24)) == 0x0400);                      // rounds up into the normals
  CHECK(hf(-std::ldexp(1.0f, -24)) == 0x8001);
  CHECK(hf(std::ldexp(1.0f, -26)) == 0x0000);
  CHECK(hf(-std::ldexp(1.0f, -26)) == 0x8000);
  // normal ties: 1 + 2^-11 halfway between 1 and 1 + 2^-10
  CHECK(hf(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  CHECK(hf(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
  CHECK(hf(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)) == 0x3c01);
  CHECK(hf(2047.0f) == 0x67ff);
  CHECK(hf(2049.0f) == 0x6800);  // tie between 2048 and 2050: even mantissa is 2048
  CHECK(hf(2051.0f) == 0x6802);  // tie between 2050 and 2052: 2052
}

TEST_CASE("f16: every bit pattern round-trips through float", "[core][f16]") {
  int nans = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const f16 h = f16::from_bits(static_cast<std::uint16_t>(b));
    const float f = float(h);
    const f16 back(f);
    const bool is_nan_pattern = ((b >> 10) & 0x1f) == 0x1f && (b & 0x3ff) != 0;
    if (is_nan_pattern) {
      ++nans;
      if (!std::isnan(f) || !std::isnan(float(back))) FAIL("f16 NaN pattern " << b << " did not stay NaN");
    } else if (back.bits != b) {
      FAIL("f16 pattern 0x" << std::hex << b << " -> " << f << " -> 0x" << back.bits);
    }
  }
  CHECK(nans == 2 * 1023);
}

TEST_CASE("f16: random floats round like an independent oracle", "[core][f16]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_int_distribution<std::uint32_t> any;
  // float exponents in and around the f16 range, to hit subnormals, ties and overflow often
  std::uniform_int_distribution<std::uint32_t> exp_near(127 - 27, 127 + 17), mant(0, 0x7fffff), sign(0, 1);
  for (int n = 0; n < 400000; ++n) {
    const float x = (n % 2) ? bits_to_float(any(gen))
                            : bits_to_float((sign(gen) << 31) | (exp_near(gen) << 23) |
                                            ((n % 4 == 0) ? (mant(gen) & ~0x1fffu) | 0x1000u : mant(gen)));
    if (std::isnan(x)) continue;
    const std::uint16_t got = hf(x), want = f16_oracle(x);
    if (got != want) FAIL("f16(" << x << " = 0x" << std::hex << float_to_bits(x) << ") = 0x" << got << ", want 0x" << want);
#if defined(ATTNKIT_TEST_NATIVE_F16)
    const ATTNKIT_TEST_NATIVE_F16 native = static_cast<ATTNKIT_TEST_NATIVE_F16>(x);
    std::uint16_t native_bits;
    std::memcpy(&native_bits, &native, 2);
    if (got != native_bits)
      FAIL("f16(" << x << ") = 0x" << std::hex << got << ", the native half type gives 0x" << native_bits);
#endif
  }
  SUCCEED();
}

TEST_CASE("conversion helpers to_float / from_float", "[core]") {
  using attnkit::detail::from_float;
  using attnkit::detail::to_float;
  CHECK(to_float(1.5f) == 1.5f);
  CHECK(from_float<float>(1.5f) == 1.5f);
  CHECK(to_float(from_float<bf16>(1.5f)) == 1.5f);
  CHECK(to_float(from_float<f16>(1.5f)) == 1.5f);
  CHECK(from_float<bf16>(3.14159f).bits == bf16(3.14159f).bits);
  CHECK(from_float<f16>(3.14159f).bits == f16(3.14159f).bits);
  STATIC_REQUIRE(sizeof(bf16) == 2);
  STATIC_REQUIRE(sizeof(f16) == 2);
  STATIC_REQUIRE(!std::is_convertible_v<float, bf16>);  // explicit only
  STATIC_REQUIRE(!std::is_convertible_v<bf16, float>);
  STATIC_REQUIRE(!std::is_convertible_v<float, f16>);
  STATIC_REQUIRE(!std::is_convertible_v<f16, float>);
}

TEST_CASE("tensor_view: view_bhsd strides and indexing", "[core][tensor_view]") {
  const index_t B = 2, H = 3, S = 5, D = 7;
  std::vector<float> buf(static_cast<std::size_t>(B * H * S * D));
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  auto t = attnkit::view_bhsd(buf.data(), B, H, S, D);
  STATIC_REQUIRE(std::is_same_v<decltype(t), attnkit::tensor_view<float>>);
  CHECK(t.data() == buf.data());
  CHECK(t.batch() == B);
  CHECK(t.heads() == H);
  CHECK(t.seq() == S);
  CHECK(t.dim() == D);
  CHECK(t.stride(attnkit::batch_axis) == H * S * D);
  CHECK(t.stride(attnkit::heads_axis) == S * D);
  CHECK(t.stride(attnkit::seq_axis) == D);
  CHECK(t.stride(attnkit::dim_axis) == 1);
  CHECK(t.size() == B * H * S * D);
  CHECK(!t.empty());
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t s = 0; s < S; ++s)
        for (index_t d = 0; d < D; ++d) {
          const index_t flat = ((b * H + h) * S + s) * D + d;
          REQUIRE(t(b, h, s, d) == static_cast<float>(flat));
          REQUIRE(&t(b, h, s, d) == buf.data() + flat);
        }
  CHECK(t.row(1, 2, 3) == buf.data() + ((1 * H + 2) * S + 3) * D);
  t(1, 2, 4, 6) = -1.f;
  CHECK(buf.back() == -1.f);
}

TEST_CASE("tensor_view: view_bshd strides and indexing", "[core][tensor_view]") {
  const index_t B = 2, S = 5, H = 3, D = 4;
  std::vector<float> buf(static_cast<std::size_t>(B * S * H * D));
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  auto t = attnkit::view_bshd(buf.data(), B, S, H, D);
  // logical axes are still [batch, heads, seq, dim]
  CHECK(t.batch() == B);
  CHECK(t.heads() == H);
  CHECK(t.seq() == S);
  CHECK(t.dim() == D);
  CHECK(t.stride(attnkit::batch_axis) == S * H * D);
  CHECK(t.stride(attnkit::heads_axis) == D);
  CHECK(t.stride(attnkit::seq_axis) == H * D);
  CHECK(t.stride(attnkit::dim_axis) == 1);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t s = 0; s < S; ++s)
        for (index_t d = 0; d < D; ++d) {
          const index_t flat = ((b * S + s) * H + h) * D + d;
          REQUIRE(t(b, h, s, d) == static_cast<float>(flat));
        }
  CHECK(t.row(1, 2, 3) == buf.data() + ((1 * S + 3) * H + 2) * D);
}

TEST_CASE("tensor_view: custom strides, empty views, const conversion", "[core][tensor_view]") {
  std::vector<float> buf(200, 0.f);
  attnkit::tensor_view<float> t(buf.data() + 3, {1, 2, 3, 4}, {0, 50, 10, 2});
  CHECK(&t(0, 1, 2, 3) == buf.data() + 3 + 50 + 20 + 6);
  CHECK(t.offset(0, 1, 2, 3) == 76);
  CHECK(t.extents() == std::array<index_t, 4>{1, 2, 3, 4});
  CHECK(t.strides() == std::array<index_t, 4>{0, 50, 10, 2});

  // const conversion: implicit one way only
  STATIC_REQUIRE(std::is_convertible_v<attnkit::tensor_view<float>, attnkit::tensor_view<const float>>);
  STATIC_REQUIRE(!std::is_convertible_v<attnkit::tensor_view<const float>, attnkit::tensor_view<float>>);
  STATIC_REQUIRE(!std::is_convertible_v<attnkit::tensor_view<float>, attnkit::tensor_view<const bf16>>);
  STATIC_REQUIRE(std::is_convertible_v<attnkit::tensor_view<bf16>, attnkit::tensor_view<const bf16>>);
  attnkit::tensor_view<const float> c = t;
  CHECK(c.data() == t.data());
  CHECK(c.extents() == t.extents());
  CHECK(c.strides() == t.strides());
  t(0, 0, 1, 1) = 9.f;
  CHECK(c(0, 0, 1, 1) == 9.f);
  STATIC_REQUIRE(std::is_same_v<decltype(c(0, 0, 0, 0)), const float&>);

  // views of const data from the helpers
  const std::vector<float> cbuf(24, 1.f);
  auto cv = attnkit::view_bhsd(cbuf.data(), 1, 2, 3, 4);
  STATIC_REQUIRE(std::is_same_v<decltype(cv), attnkit::tensor_view<const float>>);
  CHECK(cv(0, 1, 2, 3) == 1.f);

  attnkit::tensor_view<float> empty = attnkit::view_bhsd<float>(nullptr, 1, 0, 5, 4);
  CHECK(empty.empty());
  CHECK(empty.size() == 0);
  attnkit::tensor_view<float> def;
  CHECK(def.empty());
  CHECK(def.data() == nullptr);
}

TEST_CASE("error is a std::invalid_argument and keeps its message", "[core][error]") {
  STATIC_REQUIRE(std::is_base_of_v<std::invalid_argument, attnkit::error>);
  try {
    attnkit::detail::require(false, "thing = ", 3, ", expected ", 4);
    FAIL("require(false) did not throw");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) == "thing = 3, expected 4");
  }
  CHECK_NOTHROW(attnkit::detail::require(true, "never"));
  CHECK_THROWS_AS(attnkit::detail::require(false, "x"), attnkit::error);
}

TEST_CASE("executor: parallel_for runs every item exactly once", "[core][executor]") {
  const int threads = GENERATE(1, 2, 0, 3, 64);
  const index_t items = GENERATE(index_t(0), index_t(1), index_t(2), index_t(1000));
  CAPTURE(threads, items);
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(items));
  for (auto& h : hits) h.store(0);
  std::atomic<int> calls{0};
  attnkit::detail::parallel_for(items, threads, [&](index_t i) {
    REQUIRE(i >= 0);
    REQUIRE(i < items);
    hits[static_cast<std::size_t>(i)].fetch_add(1);
    calls.fetch_add(1);
  });
  CHECK(calls.load() == items);
  int wrong = 0;
  for (auto& h : hits) wrong += h.load() != 1;
  CHECK(wrong == 0);
}

TEST_CASE("executor: threads = 1 runs on the calling thread, in order", "[core][executor]") {
  const auto me = std::this_thread::get_id();
  std::vector<index_t> order;
  bool same_thread = true;
  attnkit::detail::parallel_for(100, 1, [&](index_t i) {
    same_thread = same_thread && std::this_thread::get_id() == me;
    order.push_back(i);
  });
  CHECK(same_thread);
  REQUIRE(order.size() == 100);
  for (index_t i = 0; i < 100; ++i) CHECK(order[static_cast<std::size_t>(i)] == i);
  CHECK(attnkit::detail::worker_count(0, 1) == 1);
  CHECK(attnkit::detail::worker_count(4, 2) == 2);
  CHECK(attnkit::detail::worker_count(1, 1000) == 1);
  CHECK(attnkit::detail::worker_count(0, 1 << 20) == attnkit::hardware_threads());
  CHECK(attnkit::hardware_threads() >= 1);
}

TEST_CASE("executor: concurrent parallel_for from 4 user threads", "[core][executor]") {
  constexpr int users = 4;
  constexpr index_t items = 2000;
  for (int round = 0; round < 20; ++round) {
    std::vector<std::vector<std::atomic<int>>> hits(users);
    for (auto& h : hits) {
      h = std::vector<std::atomic<int>>(static_cast<std::size_t>(items));
      for (auto& x : h) x.store(0);
    }
    std::vector<std::thread> ts;
    for (int u = 0; u < users; ++u)
      ts.emplace_back([&, u] {
        const int threads = u % 3;  // 0, 1, 2, 0
        attnkit::detail::parallel_for(items, threads, [&](index_t i) {
          // a little work so that jobs overlap
          volatile double x = 0;
          for (int r = 0; r < 50; ++r) x = x + std::sqrt(double(i + r));
          hits[static_cast<std::size_t>(u)][static_cast<std::size_t>(i)].fetch_add(1);
        });
      });
    for (auto& t : ts) t.join();
    int wrong = 0;
    for (auto& h : hits)
      for (auto& x : h) wrong += x.load() != 1;
    REQUIRE(wrong == 0);
  }
}

TEST_CASE("executor: an exception thrown by an item reaches the caller", "[core][executor]") {
  const int threads = GENERATE(1, 2, 0);
  CAPTURE(threads);
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(attnkit::detail::parallel_for(1000, threads,
                                                [&](attnkit::index_t i) {
                                                  ++ran;
                                                  if (i == 5) throw std::runtime_error("item 5");
                                                }),
                  std::runtime_error);
  CHECK(ran.load() >= 1);
  // the pool is still usable afterwards
  std::atomic<int> again{0};
  attnkit::detail::parallel_for(100, threads, [&](attnkit::index_t) { ++again; });
  CHECK(again.load() == 100);
}

TEST_CASE("executor: many short concurrent jobs (claim races)", "[core][executor]") {
  // Short jobs from several user threads make a worker wake for a job whose items are
  // claimed a moment later: the worker must neither crash nor lose an item.
  for (int rep = 0; rep < 500; ++rep) {
    std::atomic<long> sum{0};
    std::vector<std::thread> users;
    for (int u = 0; u < 3; ++u)
      users.emplace_back([&, u] {
        attnkit::detail::parallel_for(1 + (rep + u) % 7, 0, [&](attnkit::index_t i) { sum += i + 1; });
      });
    for (auto& t : users) t.join();
    long expected = 0;
    for (int u = 0; u < 3; ++u) {
      const long n = 1 + (rep + u) % 7;
      expected += n * (n + 1) / 2;
    }
    REQUIRE(sum.load() == expected);
  }
}

namespace {

/// simd::exp2 on Arch, lane by lane: the values of xs, one vector at a time.
template <class Arch>
std::vector<float> exp2_of(const std::vector<float>& xs) {
  using V = attnkit::detail::simd::vec<Arch>;
  std::vector<float> out(xs.size());
  std::vector<float> chunk(V::size);
  for (std::size_t i = 0; i < xs.size(); i += V::size) {
    for (std::size_t l = 0; l < V::size; ++l) chunk[l] = xs[std::min(i + l, xs.size() - 1)];
    const V e = attnkit::detail::simd::exp2<Arch>(V::load_unaligned(chunk.data()));
    e.store_unaligned(chunk.data());
    for (std::size_t l = 0; l < V::size && i + l < xs.size(); ++l) out[i + l] = chunk[l];
  }
  return out;
}

template <class Arch>
void check_exp2(std::mt19937& rng) {
  std::uniform_real_distribution<float> wide(-130.f, 130.f), softmax(-30.f, 0.f);
  std::vector<float> xs;
  for (int i = 0; i < 4000; ++i) xs.push_back(i % 2 ? wide(rng) : softmax(rng));
  for (float x : {0.f, -0.f, -0.5f, 0.5f, -1.f, -124.9f, -125.f, -125.1f, 126.9f, 127.f})  // edges
    xs.push_back(x);
  const std::vector<float> got = exp2_of<Arch>(xs);
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float x = xs[i];
    CAPTURE(x);
    if (x < -125.f) {
      REQUIRE(got[i] == 0.f);  // masked scores vanish exactly
    } else {
      const double want = std::exp2(static_cast<double>(std::min(x, 127.f)));  // clamped above 127
      REQUIRE(std::isfinite(got[i]));
      REQUIRE(std::abs(got[i] - want) <= 3e-7 * want);
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> special = exp2_of<Arch>({-inf, inf, std::numeric_limits<float>::quiet_NaN(), -1e30f});
  REQUIRE(special[0] == 0.f);
  REQUIRE(special[1] == static_cast<float>(std::exp2(127.0)));
  REQUIRE(std::isnan(special[2]));
  REQUIRE(special[3] == 0.f);
}

}  // namespace

TEST_CASE("exp2: 2^x to a few ulp, exactly 0 below -125 and at -inf, NaN kept", "[core][exp2]") {
  ATTNKIT_SEEDED_RNG(rng);
  SECTION("widest instruction set") { check_exp2<attnkit::detail::simd::wide_arch>(rng); }
  SECTION("4 lanes") { check_exp2<attnkit::detail::simd::narrow_arch>(rng); }
}

#if defined(__aarch64__)
// The aarch64 build (cmake/aarch64-linux-gnu.cmake, tested under qemu-user) must run the kernels
// on NEON, not on a scalar fallback: xsimd's neon64, 4 float lanes, 32 vector registers.
TEST_CASE("aarch64: the kernels are compiled for NEON", "[core][simd]") {
  using attnkit::detail::simd::narrow_arch;
  using attnkit::detail::simd::wide_arch;
  STATIC_REQUIRE(std::is_same_v<wide_arch, xsimd::neon64>);
  STATIC_REQUIRE(std::is_same_v<narrow_arch, xsimd::neon64>);
  STATIC_REQUIRE(attnkit::detail::simd::vec<wide_arch>::size == 4);
  STATIC_REQUIRE(attnkit::detail::simd::registers<wide_arch> == 32);
}
#endif
