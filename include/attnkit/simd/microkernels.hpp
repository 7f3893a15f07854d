/// \file
/// Register-blocked broadcast-FMA micro-kernels of the flash engine. Query rows are vector
/// lanes (Br = NR vectors), so K and V are read in place, one broadcast per element:
///   scores:  s[j][r]  = sum_c k[j][c] * qt[c][r]       (MR keys x NR row vectors)
///   output:  ot[c][r] += sum_j v[j][c] * p[j][r]       (MR value dims x NR row vectors)
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../core/config.hpp"
#include "arch.hpp"

namespace attnkit::detail::simd {

/// count * elements * size bytes, modulo 2^64: rows_ahead's addresses may lie past the last row
/// (prefetches do not fault), where validation bounds no product of a stride.
inline std::uintptr_t wrapping_bytes(index_t count, index_t elements, std::size_t size) {
  return static_cast<std::uintptr_t>(count) * static_cast<std::uintptr_t>(elements) * size;
}

/// Rows of another stream brought into cache while a kernel reads its own (at decode the
/// hardware prefetchers follow one stream at a time): row j's cache lines are requested when
/// the kernel reaches its key j. first == 0: none.
struct rows_ahead {
  std::uintptr_t first = 0, stride = 0;  // in bytes, modulo 2^64 (see wrapping_bytes)
  index_t bytes = 0;
  ATTNKIT_ALWAYS_INLINE void row(int j) const { request<3>(j, j + 1); }
  /// Rows [j0, j1) into L2 only: the tile kernels' chunks (tens of KiB) would crowd their own
  /// rows out of L1.
  ATTNKIT_ALWAYS_INLINE void rows_to_l2(int j0, int j1) const { request<2>(j0, j1); }

 private:
  template <int Locality>  // __builtin_prefetch's: 3 all cache levels, 2 from L2 out
  ATTNKIT_ALWAYS_INLINE void request(int j0, int j1) const {
    if (!first) return;
    for (int j = j0; j < j1; ++j) {
      const std::uintptr_t at = first + static_cast<std::uintptr_t>(j) * stride;
      for (index_t o = 0; o < bytes; o += 64) __builtin_prefetch(reinterpret_cast<const void*>(at + o), 0, Locality);
    }
  }
};

/// Pins a loaded vector in a register. GCC otherwise folds the load into every FMA that uses
/// it (one load per FMA), which makes the load ports, not the FMA units, the limit.
template <class V>
ATTNKIT_ALWAYS_INLINE V in_register(V v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  auto raw = v.data;
  asm("" : "+v"(raw));
  return V(raw);
#else
  return v;
#endif
}

/// Calls f(std::integral_constant<int, n>) for a runtime 0 < n <= Max.
template <int Max, class F>
ATTNKIT_ALWAYS_INLINE void with_count(int n, F&& f) {
  if constexpr (Max > 0) {
    if (n == Max)
      f(std::integral_constant<int, Max>{});
    else
      with_count<Max - 1>(n, f);
  }
}

template <class G, int M>
ATTNKIT_ALWAYS_INLINE void qk_block(const float* ATTNKIT_RESTRICT qt, const float* ATTNKIT_RESTRICT k,
                                    index_t ks, index_t depth, float* ATTNKIT_RESTRICT s) {
  using V = typename G::V;
  V acc[M][G::NR];
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = V(0.f);
  for (index_t c = 0; c < depth; ++c) {
    V qv[G::NR];
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) qv[n] = in_register(V::load_aligned(qt + c * G::Br + n * G::W));
    ATTNKIT_UNROLL for (int m = 0; m < M; ++m) {
      const V kb(k[m * ks + c]);
      ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = xsimd::fma(kb, qv[n], acc[m][n]);
    }
  }
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n].store_aligned(s + m * G::Br + n * G::W);
}

/// s[j][0..Br) for the nkeys key rows at k (row stride ks, unit stride along depth); requests
/// the other stream's rows j as it reaches key j (ahead: the chunk's value rows).
template <class G>
inline void qk_tile(const float* qt, const float* k, index_t ks, index_t depth, int nkeys, float* s,
                    const rows_ahead& ahead = {}) {
  int j = 0;
  for (; j + G::MR <= nkeys; j += G::MR) {
    ahead.rows_to_l2(j, j + G::MR);
    qk_block<G, G::MR>(qt, k + j * ks, ks, depth, s + j * G::Br);
  }
  ahead.rows_to_l2(j, nkeys);
  with_count<G::MR - 1>(nkeys - j, [&](auto m) { qk_block<G, decltype(m)::value>(qt, k + j * ks, ks, depth, s + j * G::Br); });
}

template <class G, int M>
ATTNKIT_ALWAYS_INLINE void pv_block(const float* ATTNKIT_RESTRICT p, int nkeys, const float* ATTNKIT_RESTRICT v,
                                    index_t vs, float* ATTNKIT_RESTRICT ot) {
  using V = typename G::V;
  V acc[M][G::NR];
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = V::load_aligned(ot + m * G::Br + n * G::W);
  for (int j = 0; j < nkeys; ++j) {
    V pv[G::NR];
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) pv[n] = in_register(V::load_aligned(p + j * G::Br + n * G::W));
    ATTNKIT_UNROLL for (int m = 0; m < M; ++m) {
      const V vb(v[j * vs + m]);
      ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n] = xsimd::fma(vb, pv[n], acc[m][n]);
    }
  }
  ATTNKIT_UNROLL for (int m = 0; m < M; ++m)
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) acc[m][n].store_aligned(ot + m * G::Br + n * G::W);
}

/// ot[c][0..Br) += sum_j v[j][c] p[j][0..Br) for c < width, over nkeys value rows; requests
/// `ahead_rows` rows of the other stream (the next chunk's keys), spread over the passes.
template <class G>
inline void pv_tile(const float* p, int nkeys, const float* v, index_t vs, index_t width, float* ot,
                    const rows_ahead& ahead = {}, int ahead_rows = 0) {
  const index_t passes = std::max<index_t>(1, width / G::MR);
  index_t c = 0;
  for (index_t pass = 0; c + G::MR <= width; c += G::MR, ++pass) {
    ahead.rows_to_l2(static_cast<int>(pass * ahead_rows / passes), static_cast<int>((pass + 1) * ahead_rows / passes));
    pv_block<G, G::MR>(p, nkeys, v + c, vs, ot + c * G::Br);
  }
  with_count<G::MR - 1>(static_cast<int>(width - c),
                        [&](auto m) { pv_block<G, decltype(m)::value>(p, nkeys, v + c, vs, ot + c * G::Br); });
}

}  // namespace attnkit::detail::simd

// Few-row kernels (decode): with only R <= W query rows, vectors run along the head dimension
// instead, so every lane does useful work; the scores need one transposing reduction per
// W dot products.
//   scores:  s[j][r]  = sum_c q[r][c] * k[j][c]          (W/R keys x R rows per reduction)
//   output:  o[r][c] += sum_j p[j][r] * v[j][c]          (row pairs x whole V rows per pass)
// Both read each K and V row whole before the next, in key order. Few rows do little work
// per byte, so K/V stream from DRAM: reading four rows interleaved, or V in half rows,
// measured about 0.55x the read bandwidth at decode against 0.65-0.75x for whole rows in
// order. The hardware prefetchers follow one stream at a time, so each kernel also requests
// the other's rows (rows_ahead): q.k the chunk's V rows, p.v the next chunk's K rows. That
// took decode at 32K keys from ~20 to ~30 GB/s per thread on a Zen 5 host.

namespace attnkit::detail::simd {

/// Lane i of the result is the sum of the lanes of rows[i].
template <class Arch>
ATTNKIT_ALWAYS_INLINE vec<Arch> transpose_sum(const vec<Arch>* rows) {
#if defined(__AVX512F__)
  if constexpr (vec<Arch>::size == 16) {
    // xsimd 8.1's avx512f haddp permutes its lanes, so the tree is spelled out here.
    __m512 pairs[8], quads[4];
    ATTNKIT_UNROLL for (int k = 0; k < 8; ++k) {
      const __m512 a = rows[2 * k], b = rows[2 * k + 1];
      pairs[k] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    ATTNKIT_UNROLL for (int k = 0; k < 4; ++k) {
      const __m512 a = pairs[2 * k], b = pairs[2 * k + 1];
      quads[k] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    const auto fold = [](__m512 a, __m512 b) {
      return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    };
    return fold(fold(quads[0], quads[1]), fold(quads[2], quads[3]));
  }
#endif
  if constexpr (std::is_base_of_v<xsimd::avx, Arch> && vec<Arch>::size == 8) {
    return xsimd::haddp(rows);
  } else {
    alignas(64) float sums[vec<Arch>::size];
    for (std::size_t i = 0; i < vec<Arch>::size; ++i) sums[i] = xsimd::hadd(rows[i]);
    return vec<Arch>::load_aligned(sums);
  }
}

/// s[j][0..R) for the nkeys key rows at k (row stride ks); q is R rows of depth floats.
template <class Arch, int R>
inline void qk_rows_tile(const float* ATTNKIT_RESTRICT q, const float* ATTNKIT_RESTRICT k, index_t ks,
                         index_t depth, int nkeys, float* ATTNKIT_RESTRICT s, const rows_ahead& ahead = {}) {
  using V = vec<Arch>;
  constexpr int W = static_cast<int>(V::size);
  static_assert(W % R == 0, "rows must divide the vector width");
  constexpr int KB = W / R;           // keys per reduction
  constexpr int keys_ahead = 16;      // K rows requested this far ahead (measured: +10% at decode)
  // Accumulators per row: two chains in flight when rows are few and registers allow.
  constexpr int A = R <= 4 && registers<Arch> == 32 ? 2 : 1;
  const index_t body = depth / W * W;
  for (int j = 0; j < nkeys; j += KB) {
    const int kb_count = std::min(KB, nkeys - j);
    V dots[KB * R];
    ATTNKIT_UNROLL for (int kb = 0; kb < KB; ++kb) {
      if (kb < kb_count) {
        ahead.row(j + kb);
        if (j + kb + keys_ahead < nkeys)
          for (index_t c = 0; c < depth; c += 64 / sizeof(float)) __builtin_prefetch(k + (j + kb + keys_ahead) * ks + c, 0, 3);
      }
      const float* kr = k + (j + std::min(kb, kb_count - 1)) * ks;  // tail: repeat the last key
      V acc[A][R];
      ATTNKIT_UNROLL for (int a = 0; a < A; ++a)
        ATTNKIT_UNROLL for (int r = 0; r < R; ++r) acc[a][r] = V(0.f);
      index_t c = 0;
      for (; c + A * W <= body; c += A * W)
        ATTNKIT_UNROLL for (int a = 0; a < A; ++a) {
          const V kv = in_register(V::load_unaligned(kr + c + a * W));
          ATTNKIT_UNROLL for (int r = 0; r < R; ++r) acc[a][r] = xsimd::fma(kv, V::load_unaligned(q + r * depth + c + a * W), acc[a][r]);
        }
      for (; c < body; c += W) {
        const V kv = in_register(V::load_unaligned(kr + c));
        ATTNKIT_UNROLL for (int r = 0; r < R; ++r) acc[0][r] = xsimd::fma(kv, V::load_unaligned(q + r * depth + c), acc[0][r]);
      }
      ATTNKIT_UNROLL for (int r = 0; r < R; ++r) {
        dots[kb * R + r] = acc[0][r];
        ATTNKIT_UNROLL for (int a = 1; a < A; ++a) dots[kb * R + r] += acc[a][r];
      }
    }
    const V sums_v = transpose_sum<Arch>(dots);
    if (kb_count == KB && body == depth) {  // lane kb * R + r is s[j + kb][r]: store as is
      sums_v.store_unaligned(s + j * R);
      continue;
    }
    alignas(64) float sums[W];
    sums_v.store_aligned(sums);
    for (int kb = 0; kb < kb_count; ++kb)
      for (int r = 0; r < R; ++r) {
        const float* kr = k + (j + kb) * ks;
        float x = sums[kb * R + r];
        for (index_t c = body; c < depth; ++c) x += q[r * depth + c] * kr[c];
        s[(j + kb) * R + r] = x;
      }
  }
}

/// o[r0..r0+2)[c0..c0+C*W) += sum_j p[j][r] v[j][c] over nkeys value rows (row stride vs).
template <class Arch, int R, int C>
ATTNKIT_ALWAYS_INLINE void pv_rows_pair(const float* ATTNKIT_RESTRICT p, int nkeys, const float* ATTNKIT_RESTRICT v,
                                        index_t vs, index_t width, int r0, index_t c0, float* ATTNKIT_RESTRICT o,
                                        const rows_ahead& ahead = {}) {
  using V = vec<Arch>;
  constexpr index_t W = static_cast<index_t>(V::size);
  V acc[2][C];
  ATTNKIT_UNROLL for (int r = 0; r < 2; ++r)
    ATTNKIT_UNROLL for (int c = 0; c < C; ++c) acc[r][c] = V::load_unaligned(o + (r0 + r) * width + c0 + c * W);
  for (int j = 0; j < nkeys; ++j) {
    ahead.row(j);
    const V p0(p[j * R + r0]), p1(p[j * R + r0 + 1]);
    ATTNKIT_UNROLL for (int c = 0; c < C; ++c) {
      const V vv = in_register(V::load_unaligned(v + j * vs + c0 + c * W));
      acc[0][c] = xsimd::fma(p0, vv, acc[0][c]);
      acc[1][c] = xsimd::fma(p1, vv, acc[1][c]);
    }
  }
  ATTNKIT_UNROLL for (int r = 0; r < 2; ++r)
    ATTNKIT_UNROLL for (int c = 0; c < C; ++c) acc[r][c].store_unaligned(o + (r0 + r) * width + c0 + c * W);
}

/// o[r][0..width) += sum_j p[j][r] v[j][0..width) over nkeys value rows (row stride vs). Keys
/// go in blocks small enough for L1: the first row pair reads each row of a block whole, the
/// other pairs read it again from L1.
template <class Arch, int R>
inline void pv_rows_tile(const float* ATTNKIT_RESTRICT p, int nkeys, const float* ATTNKIT_RESTRICT v, index_t vs,
                         index_t width, float* ATTNKIT_RESTRICT o, const rows_ahead& ahead = {}) {
  static_assert(R % 2 == 0, "rows go in pairs");
  constexpr index_t W = static_cast<index_t>(vec<Arch>::size);
  constexpr int C = registers<Arch> == 32 ? 8 : 4;  // 2 x C accumulators
  constexpr int block = 16;                         // 16 rows of up to 512 floats fit L1
  for (int j0 = 0; j0 < nkeys; j0 += block) {
    const int n = std::min(block, nkeys - j0);
    const float* pj = p + j0 * R;
    const float* vj = v + j0 * vs;
    rows_ahead block_ahead = ahead;
    if (block_ahead.first) block_ahead.first += static_cast<std::uintptr_t>(j0) * ahead.stride;
    for (int r0 = 0; r0 < R; r0 += 2) {
      // The first pass over the block requests the rows ahead.
      const auto ahead_of = [&](index_t c) { return r0 == 0 && c == 0 ? block_ahead : rows_ahead{}; };
      index_t c0 = 0;
      for (; c0 + C * W <= width; c0 += C * W) pv_rows_pair<Arch, R, C>(pj, n, vj, vs, width, r0, c0, o, ahead_of(c0));
      for (; c0 + 2 * W <= width; c0 += 2 * W) pv_rows_pair<Arch, R, 2>(pj, n, vj, vs, width, r0, c0, o, ahead_of(c0));
      for (; c0 + W <= width; c0 += W) pv_rows_pair<Arch, R, 1>(pj, n, vj, vs, width, r0, c0, o, ahead_of(c0));
      for (; c0 < width; ++c0)
        for (int j = 0; j < n; ++j)
          for (int r = r0; r < r0 + 2; ++r) o[r * width + c0] += pj[j * R + r] * vj[j * vs + c0];
    }
  }
}

}  // namespace attnkit::detail::simd
