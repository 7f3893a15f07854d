/// \file
/// Compiler portability macros and the index type shared by every header.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define ATTNKIT_HOST_DEVICE __host__ __device__
#else
#define ATTNKIT_HOST_DEVICE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ATTNKIT_ALWAYS_INLINE inline __attribute__((always_inline))
#define ATTNKIT_INLINE_LAMBDA __attribute__((always_inline))  // after a lambda's parameter list
#define ATTNKIT_NOINLINE __attribute__((noinline))
#define ATTNKIT_RESTRICT __restrict__
#else
#define ATTNKIT_ALWAYS_INLINE inline
#define ATTNKIT_INLINE_LAMBDA
#define ATTNKIT_NOINLINE
#define ATTNKIT_RESTRICT
#endif

/// Unrolls the next loop whole: for loops over a few register-blocked accumulators (a
/// compile-time trip count), which stay in registers only when their loops unroll. g++ -O2
/// unrolls none of them by itself, and ran dense attention 3x slower than at -O3.
#if defined(__clang__)
#define ATTNKIT_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define ATTNKIT_UNROLL _Pragma("GCC unroll 64")
#else
#define ATTNKIT_UNROLL
#endif

namespace attnkit {
using index_t = std::int64_t;
}  // namespace attnkit
