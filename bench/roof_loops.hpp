/// \file
/// The inner loops of the benchmark roofs, on xsimd (every ISA the library runs on): FP32
/// FMA throughput and a streaming read. Kept apart from bench_common.hpp so that CI can
/// compile them alone for each x86 ISA and check that the FMA loop keeps its accumulators in
/// registers (cmake/check_roof_loop.cmake): a loop that spills reads low, and every
/// roof_ratio printed over it reads high (16 AVX2 accumulators plus two constants in 16 ymm
/// registers read 1.75x low on a Zen 2 host).
#pragma once

#include <xsimd/xsimd.hpp>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include <attnkit/simd/arch.hpp>

namespace attnkit_bench::roof_detail {

using arch = xsimd::default_arch;
using vec = xsimd::batch<float, arch>;

constexpr int kLanes = static_cast<int>(vec::size);

/// Independent FMA chains: enough to cover FMA latency x FMA ports on current cores (at most
/// 4 cycles x 2 ports of 512 bits on x86, 4 x 4 of 128 bits on Arm Neoverse V cores, 5 x 2
/// on Zen 2), and no more than the vector registers hold next to the two constants.
constexpr int kAcc = attnkit::detail::simd::registers<arch> >= 32 ? 16 : 12;
static_assert(kAcc + 2 <= attnkit::detail::simd::registers<arch>, "the FMA loop must not spill");

/// xsimd::fma is a true FMA where the build has one (FMA3, AVX-512, aarch64), else mul + add.
#if XSIMD_WITH_AVX512F || XSIMD_WITH_FMA3_AVX2 || XSIMD_WITH_FMA3_AVX || XSIMD_WITH_FMA3_SSE || XSIMD_WITH_NEON64
constexpr bool kFused = true;
#else
constexpr bool kFused = false;
#endif

/// "avx512bw FMA", "fma3<avx2> FMA", "sse2 mul+add", "neon64 FMA".
inline std::string kind() { return std::string(arch::name()) + (kFused ? " FMA" : " mul+add"); }

/// `iters` rounds of kAcc FMAs of kLanes floats; returns a value that depends on all of them.
/// The rounds are unrolled through an index sequence (no pragma: every compiler unrolls it).
template <std::size_t... K>
inline float fma_rounds(std::int64_t iters, float seed, std::index_sequence<K...>) {
  vec acc[kAcc] = {vec(seed + 0.01f * static_cast<float>(K))...};
  const vec mul(0.999999f), add(1e-6f);
  for (std::int64_t i = 0; i < iters; ++i) ((acc[K] = xsimd::fma(acc[K], mul, add)), ...);
  vec sum(0.f);
  ((sum += acc[K]), ...);
  return xsimd::hadd(sum);
}

__attribute__((noinline)) inline float fma_loop(std::int64_t iters, float seed) {
  return fma_rounds(iters, seed, std::make_index_sequence<kAcc>{});
}

inline double flops_per_iter() { return 2.0 * kAcc * kLanes; }

#if defined(__AVX512BF16__)
/// `iters` rounds of kAcc vdpbf16ps: 16 lanes x 2 bf16 products added to a float each.
template <std::size_t... K>
inline float bf16_dot_rounds(std::int64_t iters, float seed, std::index_sequence<K...>) {
  __m512 acc[kAcc] = {_mm512_set1_ps(seed + 0.01f * static_cast<float>(K))...};
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.999f), _mm512_set1_ps(0.998f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  for (std::int64_t i = 0; i < iters; ++i) ((acc[K] = _mm512_dpbf16_ps(acc[K], a, b)), ...);
  __m512 sum = _mm512_setzero_ps();
  ((sum = _mm512_add_ps(sum, acc[K])), ...);
  return _mm512_reduce_add_ps(sum);
}

__attribute__((noinline)) inline float bf16_dot_loop(std::int64_t iters, float seed) {
  return bf16_dot_rounds(iters, seed, std::make_index_sequence<kAcc>{});
}

inline double bf16_dot_flops_per_iter() { return 4.0 * kAcc * 16; }
#endif

/// One read pass over [p, p + n): a vectorised sum with 8 independent accumulators.
template <std::size_t... K>
inline float read_rounds(const float* p, std::size_t n, std::index_sequence<K...>) {
  constexpr std::size_t step = sizeof...(K) * vec::size;
  vec acc[sizeof...(K)] = {(static_cast<void>(K), vec(0.f))...};
  std::size_t i = 0;
  for (; i + step <= n; i += step) ((acc[K] += vec::load_unaligned(p + i + K * vec::size)), ...);
  vec sum(0.f);
  ((sum += acc[K]), ...);
  float r = xsimd::hadd(sum);
  for (; i < n; ++i) r += p[i];
  return r;
}

__attribute__((noinline)) inline float read_sum(const float* p, std::size_t n) {
  return read_rounds(p, n, std::make_index_sequence<8>{});
}

}  // namespace attnkit_bench::roof_detail
