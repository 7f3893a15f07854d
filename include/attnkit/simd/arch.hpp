/// \file
/// Instruction sets the CPU kernels are compiled for, chosen by the consumer's -march.
#pragma once

#include <xsimd/xsimd.hpp>

namespace attnkit::detail::simd {

/// The widest instruction set this translation unit was compiled for.
using wide_arch = xsimd::default_arch;

/// 4 float lanes: the online softmax of tiles with few query rows (decode) runs on it.
#if XSIMD_WITH_FMA3_SSE
using narrow_arch = xsimd::fma3<xsimd::sse4_2>;
#elif XSIMD_WITH_SSE4_2
using narrow_arch = xsimd::sse4_2;
#elif XSIMD_WITH_SSE2
using narrow_arch = xsimd::sse2;
#else
using narrow_arch = xsimd::default_arch;  // NEON: 4 lanes already
#endif

template <class Arch>
using vec = xsimd::batch<float, Arch>;

template <class Arch>
using ivec = xsimd::batch<std::int32_t, Arch>;

/// Vector registers of the arch: 32 with AVX-512 and on aarch64, 16 otherwise (x86-64).
template <class Arch>
#if defined(__aarch64__)
inline constexpr int registers = 32;
#else
inline constexpr int registers = vec<Arch>::size == 16 ? 32 : 16;
#endif

}  // namespace attnkit::detail::simd
