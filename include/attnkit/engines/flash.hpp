/// \file
/// The flash engine on the CPU: FlashAttention-2's tiled online softmax (Dao 2023), never
/// materialising Nq x Nk. Query rows are vector lanes: a tile of Br queries of one head (or,
/// for short queries, of all heads of one GQA group) is packed transposed once, so both
/// products are broadcast-FMA micro-kernels that read K and V in place, and the row-wise max,
/// exp and sum of the online softmax are plain vertical vector operations. With very few
/// rows (decode) the products run along the head dimension instead, keys split across
/// threads and merged by log-sum-exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/arena.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/arch.hpp"
#include "../simd/bf16_avx512.hpp"
#include "../simd/convert.hpp"
#include "../simd/exp.hpp"
#include "../simd/microkernels.hpp"
#include "../variants/softmax.hpp"

namespace attnkit::detail::flash {

inline constexpr float log2e = 1.4426950408889634f;
inline constexpr float ln2 = 0.6931471805599453f;
inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// Tile shape: Br = NR vectors of W query rows, Bc keys per key tile. With rows in lanes the
/// micro-kernels hold MR x NR accumulators; otherwise (few rows, decode) the products run
/// along the head dimension on the widest vectors and only the softmax uses Arch. Bf16Dot:
/// bf16 inputs multiplied by the AVX512_BF16 dot product (rows in lanes, 16 lanes only).
template <class Arch, int NR_, bool RowsInLanes = true, bool Bf16Dot = false>
struct geometry {
  using arch = Arch;
  using V = simd::vec<Arch>;
  static constexpr bool rows_in_lanes = RowsInLanes;
  static constexpr bool bf16_dot = Bf16Dot;
  static constexpr int W = static_cast<int>(V::size);
  static constexpr int NR = NR_;
  static constexpr int MR = (simd::registers<Arch> == 32 || NR_ == 1) ? 8 : 4;
  static constexpr int Br = W * NR;
  static constexpr int Bc = RowsInLanes ? 64 : 256;  // few rows: longer K/V streams per tile
};

/// Everything about one call the tiles need, with scores in base-2 units (exp2 is cheaper).
struct problem {
  index_t batch, q_heads, kv_heads, group, nq, nk, d, dv;
  index_t rows_per_group;   // group * nq: the rows that share one KV head
  float scale2;             // scale * log2(e)
  float cap2;               // softcap * log2(e); 0: off
  const float* slopes;      // ALiBi slope per query head, or null
};

/// The query rows of one tile: their visible key spans, and the key range of the tile.
template <class G>
struct tile_rows {
  alignas(64) std::int32_t lo[G::Br];
  alignas(64) std::int32_t hi[G::Br];
  alignas(64) float pos[G::Br];     // key-space position of the query (ALiBi distance)
  alignas(64) float slope2[G::Br];  // ALiBi slope * log2(e)
  index_t head[G::Br], query[G::Br];
  int rows = 0;                     // valid rows; lanes beyond are padding
  index_t kmin = 0, kmax = -1;      // union of the spans (empty when kmin > kmax)
  index_t full_lo = 0, full_hi = -1;  // intersection of the non-empty spans
};

/// Query tiles per (batch, KV head). A head with at least Br queries gets tiles of its own, so
/// each tile covers one band of keys; fewer queries are packed across the heads of the GQA
/// group (decode), which then share every K/V tile they read.
template <class G>
index_t tiles_per_group(const problem& pb) {
  if (pb.nq >= G::Br) return pb.group * ((pb.nq + G::Br - 1) / G::Br);
  return (pb.rows_per_group + G::Br - 1) / G::Br;
}

/// Fills t with the rows of query tile `tile` of (batch b, KV head hkv) and their key spans.
template <class G>
void describe_rows(const softmax& p, const problem& pb, index_t b, index_t hkv, index_t tile, tile_rows<G>& t) {
  t.kmin = std::numeric_limits<index_t>::max();
  t.kmax = -1;
  t.full_lo = 0;
  t.full_hi = std::numeric_limits<index_t>::max();
  t.rows = 0;
  const index_t lq_all = pb.nq, lk_all = pb.nk;
  const bool own_tiles = pb.nq >= G::Br;
  const index_t tiles_per_head = (pb.nq + G::Br - 1) / G::Br;
  for (int r = 0; r < G::Br; ++r) {
    const index_t rg = own_tiles ? tile / tiles_per_head * pb.nq + tile % tiles_per_head * G::Br + r : tile * G::Br + r;
    const bool valid = own_tiles ? tile % tiles_per_head * G::Br + r < pb.nq : rg < pb.rows_per_group;
    if (!valid) {
      t.lo[r] = 0, t.hi[r] = -1, t.pos[r] = 0, t.slope2[r] = 0, t.head[r] = 0, t.query[r] = 0;
      continue;
    }
    t.rows = r + 1;
    const index_t i = rg % pb.nq, hq = hkv * pb.group + rg / pb.nq;
    const key_span s = softmax_span(p, b, i, lq_all, lk_all);
    const index_t lq = p.query_lens ? p.query_lens[b] : lq_all, lk = p.key_lens ? p.key_lens[b] : lk_all;
    t.head[r] = hq;
    t.query[r] = i;
    t.lo[r] = static_cast<std::int32_t>(std::min<index_t>(s.lo, lk_all));
    t.hi[r] = static_cast<std::int32_t>(std::max<index_t>(s.hi, -1));
    t.pos[r] = static_cast<float>(i + lk - lq);
    t.slope2[r] = pb.slopes ? pb.slopes[hq] * log2e : 0.f;
    if (s.lo <= s.hi) {
      t.kmin = std::min(t.kmin, s.lo);
      t.kmax = std::max(t.kmax, s.hi);
      t.full_lo = std::max(t.full_lo, s.lo);
      t.full_hi = std::min(t.full_hi, s.hi);
    }
  }
  if (t.kmax < 0) t.kmin = 0;
}

/// Rows [j0, j0 + n) of head (b, h) of t as floats with unit stride along dim; points into
/// t itself when it already is, otherwise converts into buf.
template <class T>
const float* float_rows(const tensor_view<const T>& t, index_t b, index_t h, index_t j0, index_t n, float* buf,
                        index_t& row_stride) {
  if constexpr (std::is_same_v<T, float>) {
    if (t.stride(dim_axis) == 1) {
      row_stride = t.stride(seq_axis);
      return t.row(b, h, j0);
    }
  }
  const index_t dd = t.dim();
  for (index_t r = 0; r < n; ++r) simd::to_float_row(t.row(b, h, j0 + r), t.stride(dim_axis), dd, buf + r * dd);
  row_stride = dd;
  return buf;
}

/// Asks for one row of `bytes` bytes ahead of use (a hint: never faults).
template <class T>
ATTNKIT_ALWAYS_INLINE void prefetch_row(const T* row, index_t bytes) {
  const char* p = reinterpret_cast<const char*>(row);
  for (index_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 1);  // to L2: spares L1 fill buffers
}

/// One online-softmax step over a key tile whose scores s[j][row] (base 2) are computed:
/// transform, mask (partial tiles only), new running max, exponentials in place, rescale.
template <class G, bool Cap, bool Alibi, bool Mask>
ATTNKIT_ALWAYS_INLINE void online_softmax_step(const problem& pb, const tile_rows<G>& t, index_t j0, int nkeys,
                                               float* s, typename G::V* m, typename G::V* l, float* ot) {
  using V = typename G::V;
  using IV = simd::ivec<typename G::arch>;
  for (int n = 0; n < G::NR; ++n) {
    const int lane0 = n * G::W;
    V mx = m[n];
    [[maybe_unused]] const IV lo = IV::load_aligned(t.lo + lane0), hi = IV::load_aligned(t.hi + lane0);
    [[maybe_unused]] const V pos = V::load_aligned(t.pos + lane0), slope = V::load_aligned(t.slope2 + lane0);
    [[maybe_unused]] const V cap(pb.cap2), inv_cap(Cap ? 1.f / pb.cap2 : 0.f);
    [[maybe_unused]] const V scale(pb.scale2);
    for (int j = 0; j < nkeys; ++j) {
      float* sj = s + j * G::Br + lane0;
      V x = V::load_aligned(sj);
      if constexpr (G::bf16_dot) x *= scale;  // q stays exact in bf16, so the scale comes here
      if constexpr (Cap) x = cap * simd::tanh<typename G::arch>(x * inv_cap);
      if constexpr (Alibi) x = xsimd::fnma(slope, xsimd::abs(pos - V(static_cast<float>(j0 + j))), x);
      if constexpr (Mask) {
        const IV jv(static_cast<std::int32_t>(j0 + j));
        const auto visible = (jv >= lo) & (jv <= hi);
        x = xsimd::select(xsimd::bool_cast(visible), x, V(neg_inf));
      }
      if constexpr (G::bf16_dot || Cap || Alibi || Mask) x.store_aligned(sj);
      mx = xsimd::max(mx, x);
    }
    // FA2's guard: a row with nothing visible yet keeps max -inf; use 0 so -inf - -inf never occurs.
    const V m_use = xsimd::select(mx == V(neg_inf), V(0.f), mx);
    const V alpha = simd::exp2<typename G::arch>(m[n] - m_use);
    V sum(0.f);
    for (int j = 0; j < nkeys; ++j) {
      float* sj = s + j * G::Br + lane0;
      const V p = simd::exp2<typename G::arch>(V::load_aligned(sj) - m_use);
      p.store_aligned(sj);
      sum += p;
    }
    l[n] = xsimd::fma(l[n], alpha, sum);
    m[n] = mx;
    if (xsimd::any(alpha != V(1.f))) {
      if constexpr (G::rows_in_lanes) {
        for (index_t c = 0; c < pb.dv; ++c) {
          float* oc = ot + c * G::Br + lane0;
          (V::load_aligned(oc) * alpha).store_aligned(oc);
        }
      } else {
        alignas(64) float a[G::W];
        alpha.store_aligned(a);
        for (int r = 0; r < G::W; ++r)
          for (index_t c = 0; c < pb.dv; ++c) ot[(lane0 + r) * pb.dv + c] *= a[r];
      }
    }
  }
}

/// Scratch of one worker, carved from its arena: packed Q, the output accumulator, the score
/// tile, converted K/V tiles, and (bf16 dot) the probabilities packed in pairs. 32-bit slots.
template <class G>
struct scratch {
  float *qt, *ot, *s, *kbuf, *vbuf, *pp;

  explicit scratch(const problem& pb) {
    const auto slots = [](index_t n) { return static_cast<std::size_t>((n + 15) & ~index_t(15)); };
    const std::size_t nqt = slots(pb.d * G::Br), not_ = slots(pb.dv * G::Br), ns = slots(G::Bc * G::Br),
                      nk = slots(G::Bc * (pb.d + 1)), nv = slots(G::Bc * pb.dv),
                      npp = G::bf16_dot ? slots(G::Bc / 2 * G::Br) : 0;
    float* base = static_cast<float*>(thread_arena().reserve((nqt + not_ + ns + nk + nv + npp) * sizeof(float)));
    qt = base;
    ot = qt + nqt;
    s = ot + not_;
    kbuf = s + ns;
    vbuf = kbuf + nk;
    pp = vbuf + nv;
  }
};

/// Runs the key range [kbeg, kend) for one query tile; leaves the unnormalised output in
/// sc.ot (transposed) and the running max / sum (base 2) in m, l.
template <class G, bool Cap, bool Alibi, class Q, class K, class Vt>
void process_tile(const problem& pb, const tile_rows<G>& t, const tensor_view<const Q>& q,
                  const tensor_view<const K>& k, const tensor_view<const Vt>& v, index_t b, index_t hkv,
                  index_t kbeg, index_t kend, const scratch<G>& sc, typename G::V* m, typename G::V* l) {
  using V = typename G::V;
  // Q pre-scaled into base-2 units, transposed when rows are lanes; padding rows are zero.
  const index_t row_step = G::rows_in_lanes ? 1 : pb.d, dim_step = G::rows_in_lanes ? G::Br : 1;
  for (int r = 0; r < G::Br; ++r) {
    float* dst = sc.qt + r * row_step;
    if (r < t.rows) {
      const Q* qr = q.row(b, t.head[r], t.query[r]);
      const index_t qs = q.stride(dim_axis);
      for (index_t c = 0; c < pb.d; ++c) dst[c * dim_step] = to_float(qr[c * qs]) * pb.scale2;
    } else {
      for (index_t c = 0; c < pb.d; ++c) dst[c * dim_step] = 0.f;
    }
  }
  std::fill(sc.ot, sc.ot + pb.dv * G::Br, 0.f);
  for (int n = 0; n < G::NR; ++n) m[n] = V(neg_inf), l[n] = V(0.f);

  [[maybe_unused]] const index_t k_row_bytes = pb.d * k.stride(dim_axis) * static_cast<index_t>(sizeof(K)),
                                 v_row_bytes = pb.dv * v.stride(dim_axis) * static_cast<index_t>(sizeof(Vt));
  for (index_t j0 = kbeg; j0 < kend; j0 += G::Bc) {
    const int nkeys = static_cast<int>(std::min<index_t>(G::Bc, kend - j0));
    const bool partial = j0 < t.full_lo || j0 + nkeys - 1 > t.full_hi;
    index_t ks, vs;
    const float* kp = float_rows(k, b, hkv, j0, nkeys, sc.kbuf, ks);
    if constexpr (G::rows_in_lanes) {
      simd::qk_tile<G>(sc.qt, kp, ks, pb.d, nkeys, sc.s);
    } else {
      // Few rows do little work per byte, so K/V stream from DRAM: ask for the next tile's
      // keys and values while this tile's scores are computed.
      const auto ahead = [&](int j, int n) {
        for (index_t r = j0 + G::Bc + j; r < std::min<index_t>(j0 + G::Bc + j + n, kend); ++r) {
          prefetch_row(k.row(b, hkv, r), k_row_bytes);
          prefetch_row(v.row(b, hkv, r), v_row_bytes);
        }
      };
      simd::qk_rows_tile<simd::wide_arch, G::Br>(sc.qt, kp, ks, pb.d, nkeys, sc.s, ahead);
    }
    if (partial)
      online_softmax_step<G, Cap, Alibi, true>(pb, t, j0, nkeys, sc.s, m, l, sc.ot);
    else
      online_softmax_step<G, Cap, Alibi, false>(pb, t, j0, nkeys, sc.s, m, l, sc.ot);
    const float* vp = float_rows(v, b, hkv, j0, nkeys, sc.vbuf, vs);
    if constexpr (G::rows_in_lanes)
      simd::pv_tile<G>(sc.s, nkeys, vp, vs, pb.dv, sc.ot);
    else
      simd::pv_rows_tile<simd::wide_arch, G::Br>(sc.s, nkeys, vp, vs, pb.dv, sc.ot);
  }
}

#if defined(__AVX512BF16__)
/// process_tile for bf16 q, k, v on the AVX512_BF16 dot product: operands stay bf16 (packed in
/// pairs along each product's reduction axis), accumulation and the softmax stay float.
template <class G, bool Cap, bool Alibi>
void process_tile_bf16(const problem& pb, const tile_rows<G>& t, const tensor_view<const bf16>& q,
                       const tensor_view<const bf16>& k, const tensor_view<const bf16>& v, index_t b, index_t hkv,
                       index_t kbeg, index_t kend, const scratch<G>& sc, typename G::V* m, typename G::V* l) {
  using V = typename G::V;
  const auto bits = [](const bf16* row, index_t stride, index_t c, index_t n) -> std::uint32_t {
    return c < n ? row[c * stride].bits : 0u;
  };
  const index_t pairs = (pb.d + 1) / 2;
  auto* qt = reinterpret_cast<std::uint32_t*>(sc.qt);
  for (int r = 0; r < G::Br; ++r) {
    const bf16* qr = r < t.rows ? q.row(b, t.head[r], t.query[r]) : nullptr;
    const index_t qs = q.stride(dim_axis);
    for (index_t c = 0; c < pairs; ++c)
      qt[c * G::Br + r] = qr ? bits(qr, qs, 2 * c, pb.d) | bits(qr, qs, 2 * c + 1, pb.d) << 16 : 0u;
  }
  std::fill(sc.ot, sc.ot + pb.dv * G::Br, 0.f);
  for (int n = 0; n < G::NR; ++n) m[n] = V(neg_inf), l[n] = V(0.f);

  // K is read in place when its rows are unit-stride pairs, else copied with an even width.
  const bool k_in_place = k.stride(dim_axis) == 1 && pb.d % 2 == 0;
  auto* kbuf = reinterpret_cast<std::uint16_t*>(sc.kbuf);
  auto* vp = reinterpret_cast<std::uint32_t*>(sc.vbuf);
  auto* pp = reinterpret_cast<std::uint32_t*>(sc.pp);
  for (index_t j0 = kbeg; j0 < kend; j0 += G::Bc) {
    const int nkeys = static_cast<int>(std::min<index_t>(G::Bc, kend - j0));
    const bool partial = j0 < t.full_lo || j0 + nkeys - 1 > t.full_hi;
    const std::uint16_t* kp = reinterpret_cast<const std::uint16_t*>(k.row(b, hkv, j0));
    index_t ks = k.stride(seq_axis);
    if (!k_in_place) {
      for (int r = 0; r < nkeys; ++r)
        for (index_t c = 0; c < 2 * pairs; ++c)
          kbuf[r * 2 * pairs + c] = static_cast<std::uint16_t>(bits(k.row(b, hkv, j0 + r), k.stride(dim_axis), c, pb.d));
      kp = kbuf;
      ks = 2 * pairs;
    }
    simd::bf16dot::qk_tile<G>(qt, kp, ks, pairs, nkeys, sc.s);
    if (partial)
      online_softmax_step<G, Cap, Alibi, true>(pb, t, j0, nkeys, sc.s, m, l, sc.ot);
    else
      online_softmax_step<G, Cap, Alibi, false>(pb, t, j0, nkeys, sc.s, m, l, sc.ot);
    simd::bf16dot::pack_probabilities<G>(sc.s, nkeys, pp);
    const index_t vds = v.stride(dim_axis);
    for (int j = 0; j < nkeys; j += 2) {
      const bf16* v0 = v.row(b, hkv, j0 + j);
      const bf16* v1 = j + 1 < nkeys ? v.row(b, hkv, j0 + j + 1) : nullptr;
      std::uint32_t* dst = vp + (j / 2) * pb.dv;
      if (v1)
        for (index_t c = 0; c < pb.dv; ++c) dst[c] = v0[c * vds].bits | static_cast<std::uint32_t>(v1[c * vds].bits) << 16;
      else
        for (index_t c = 0; c < pb.dv; ++c) dst[c] = v0[c * vds].bits;
    }
    simd::bf16dot::pv_tile<G>(pp, (nkeys + 1) / 2, vp, pb.dv, sc.ot);
  }
}
#endif

/// One unit of work: a query tile of one (batch, KV head), over a chunk of its key range.
struct work_item {
  index_t b, hkv, tile;
  index_t kbeg, kend;  // keys visited
  index_t slot;        // partial-result slot when keys are split, else -1
};

/// How many chunks to split each tile's keys into. Depends on the problem only, never on the
/// thread count, so results are bitwise identical for any number of threads.
inline index_t key_splits(index_t busy_tiles, index_t max_keys) {
  constexpr index_t target_items = 32, min_chunk = 512;
  if (busy_tiles >= target_items || max_keys < 2 * min_chunk) return 1;
  const index_t wanted = (target_items + busy_tiles - 1) / busy_tiles;
  return std::max<index_t>(1, std::min(wanted, max_keys / min_chunk));
}

template <class G, bool Cap, bool Alibi, class Q, class K, class Vt, class O>
void run_tiles(const softmax& p, const problem& pb, const tensor_view<const Q>& q, const tensor_view<const K>& k,
               const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  using V = typename G::V;
  const index_t tiles = tiles_per_group<G>(pb);
  const index_t groups = pb.batch * pb.kv_heads;

  // Plan: the key range of every tile; split long ranges when there are too few tiles.
  std::vector<std::pair<index_t, index_t>> ranges(static_cast<std::size_t>(groups * tiles));
  index_t busy = 0, longest = 0;
  for (index_t gi = 0; gi < groups; ++gi)
    for (index_t tile = 0; tile < tiles; ++tile) {
      tile_rows<G> t;
      describe_rows(p, pb, gi / pb.kv_heads, gi % pb.kv_heads, tile, t);
      ranges[static_cast<std::size_t>(gi * tiles + tile)] = {t.kmin, t.kmax + 1};
      if (t.kmax >= t.kmin) ++busy, longest = std::max(longest, t.kmax + 1 - t.kmin);
    }
  const index_t splits = key_splits(busy, longest);

  std::vector<work_item> items;
  items.reserve(static_cast<std::size_t>(groups * tiles * splits));
  for (index_t gi = 0; gi < groups; ++gi)
    for (index_t tile = 0; tile < tiles; ++tile) {
      const auto [kb, ke] = ranges[static_cast<std::size_t>(gi * tiles + tile)];
      const index_t chunk = ((ke - kb + splits - 1) / splits + G::Bc - 1) / G::Bc * G::Bc;
      for (index_t c = 0; c < splits; ++c) {
        const index_t cb = std::min(ke, kb + c * chunk), ce = std::min(ke, cb + chunk);
        const index_t slot = splits > 1 ? (gi * tiles + tile) * splits + c : -1;
        items.push_back({gi / pb.kv_heads, gi % pb.kv_heads, tile, cb, ce, slot});
      }
    }
  // Longest first, so the dynamic schedule ends with short items (causal tiles vary 1:N).
  std::stable_sort(items.begin(), items.end(), [](const work_item& a, const work_item& b) {
    return a.kend - a.kbeg > b.kend - b.kbeg;
  });

  // Split results: normalised partial outputs [slot][row][dv] and their base-2 lse.
  std::vector<float> part_out, part_lse;
  if (splits > 1) {
    part_out.resize(static_cast<std::size_t>(groups * tiles * splits * G::Br * pb.dv));
    part_lse.resize(static_cast<std::size_t>(groups * tiles * splits * G::Br));
  }

  // A row that saw nothing is written as exact zeros, whatever (NaN) its lanes accumulated.
  auto write_row = [&](index_t b, index_t hq, index_t i, const float* src, index_t src_stride, float inv, float lse2) {
    for (index_t c = 0; c < pb.dv; ++c)
      out(b, hq, i, c) = from_float<O>(lse2 == neg_inf ? 0.f : src[c * src_stride] * inv);
    if (o.lse) o.lse[(b * pb.q_heads + hq) * pb.nq + i] = lse2 == neg_inf ? neg_inf : lse2 * ln2;
  };

  parallel_for(static_cast<index_t>(items.size()), o.threads, [&](index_t n) {
    const work_item& w = items[static_cast<std::size_t>(n)];
    tile_rows<G> t;
    describe_rows(p, pb, w.b, w.hkv, w.tile, t);
    const scratch<G> sc(pb);
    V m[G::NR], l[G::NR];
#if defined(__AVX512BF16__)
    if constexpr (G::bf16_dot)
      process_tile_bf16<G, Cap, Alibi>(pb, t, q, k, v, w.b, w.hkv, w.kbeg, w.kend, sc, m, l);
    else
#endif
      process_tile<G, Cap, Alibi>(pb, t, q, k, v, w.b, w.hkv, w.kbeg, w.kend, sc, m, l);
    alignas(64) float mr[G::Br], lr[G::Br];
    for (int i = 0; i < G::NR; ++i) m[i].store_aligned(mr + i * G::W), l[i].store_aligned(lr + i * G::W);
    for (int r = 0; r < t.rows; ++r) {
      const bool seen = t.lo[r] <= t.hi[r] && lr[r] != 0.f;  // a NaN sum is seen: NaN propagates
      const float inv = seen ? 1.f / lr[r] : 0.f;
      const float lse2 = seen ? mr[r] + std::log2(lr[r]) : neg_inf;
      const float* src = G::rows_in_lanes ? sc.ot + r : sc.ot + r * pb.dv;
      const index_t src_stride = G::rows_in_lanes ? G::Br : 1;
      if (w.slot < 0) {
        write_row(w.b, t.head[r], t.query[r], src, src_stride, inv, lse2);
      } else {
        float* dst = part_out.data() + (w.slot * G::Br + r) * pb.dv;
        for (index_t c = 0; c < pb.dv; ++c) dst[c] = lse2 == neg_inf ? 0.f : src[c * src_stride] * inv;
        part_lse[static_cast<std::size_t>(w.slot * G::Br + r)] = lse2;
      }
    }
  });
  if (splits == 1) return;

  // Merge the chunks of each tile by their log-sum-exp, in chunk order.
  parallel_for(groups * tiles, o.threads, [&](index_t gt) {
    tile_rows<G> t;
    const index_t b = gt / tiles / pb.kv_heads, hkv = gt / tiles % pb.kv_heads, tile = gt % tiles;
    describe_rows(p, pb, b, hkv, tile, t);
    float* merged = static_cast<float*>(thread_arena().reserve(static_cast<std::size_t>(pb.dv) * sizeof(float)));
    for (int r = 0; r < t.rows; ++r) {
      const auto lse_of = [&](index_t c) { return part_lse[static_cast<std::size_t>((gt * splits + c) * G::Br + r)]; };
      float mx = neg_inf;
      for (index_t c = 0; c < splits; ++c) mx = std::isnan(lse_of(c)) || std::isnan(mx) ? lse_of(c) : std::max(mx, lse_of(c));
      std::fill(merged, merged + pb.dv, 0.f);
      float total = 0.f;
      if (mx != neg_inf)
        for (index_t c = 0; c < splits; ++c) {
          const float wgt = std::exp2(lse_of(c) - mx);
          const float* src = part_out.data() + ((gt * splits + c) * G::Br + r) * pb.dv;
          for (index_t d = 0; d < pb.dv; ++d) merged[d] += wgt * src[d];
          total += wgt;
        }
      write_row(b, t.head[r], t.query[r], merged, 1, 1.f / total, mx == neg_inf ? neg_inf : mx + std::log2(total));
    }
  });
}

template <class G, class Q, class K, class Vt, class O>
void run_geometry(const softmax& p, const problem& pb, const tensor_view<const Q>& q,
                  const tensor_view<const K>& k, const tensor_view<const Vt>& v, const tensor_view<O>& out,
                  const options& o) {
  const bool cap = pb.cap2 > 0, alibi = pb.slopes != nullptr;
  if (cap && alibi) return run_tiles<G, true, true>(p, pb, q, k, v, out, o);
  if (cap) return run_tiles<G, true, false>(p, pb, q, k, v, out, o);
  if (alibi) return run_tiles<G, false, true>(p, pb, q, k, v, out, o);
  run_tiles<G, false, false>(p, pb, q, k, v, out, o);
}

/// Softmax attention on the CPU (arguments already validated).
template <class Q, class K, class Vt, class O>
void run(const softmax& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
         const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  problem pb{};
  pb.batch = q.batch();
  pb.q_heads = q.heads();
  pb.kv_heads = k.heads();
  pb.group = q.heads() / k.heads();
  pb.nq = q.seq();
  pb.nk = k.seq();
  pb.d = q.dim();
  pb.dv = v.dim();
  pb.rows_per_group = pb.group * pb.nq;
  pb.scale2 = effective_scale(p.scale, pb.d) * log2e;
  pb.cap2 = p.softcap * log2e;
  pb.slopes = p.alibi_slopes;
  if (pb.batch == 0 || pb.nq == 0) return;
  // Few rows per KV head (decode): products along the head dimension waste no lanes.
  using few_rows = geometry<simd::narrow_arch, 1, false>;
  using some_rows = geometry<simd::narrow_arch, 2, false>;
  using many_rows = geometry<simd::wide_arch, 3>;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<Q, bf16> && std::is_same_v<K, bf16> && std::is_same_v<Vt, bf16> &&
                simd::vec<simd::wide_arch>::size == 16) {
    if (pb.rows_per_group > some_rows::Br) return run_geometry<geometry<simd::wide_arch, 3, true, true>>(p, pb, q, k, v, out, o);
  }
#endif
  constexpr bool has_some_rows = simd::vec<simd::wide_arch>::size % some_rows::Br == 0;
  if (pb.rows_per_group <= few_rows::Br) {
    run_geometry<few_rows>(p, pb, q, k, v, out, o);
  } else if (has_some_rows && pb.rows_per_group <= some_rows::Br) {
    if constexpr (has_some_rows) run_geometry<some_rows>(p, pb, q, k, v, out, o);
  } else {
    run_geometry<many_rows>(p, pb, q, k, v, out, o);
  }
}

}  // namespace attnkit::detail::flash
