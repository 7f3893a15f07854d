/// \file
/// The flash engine on the CPU: FlashAttention-2's tiled online softmax (Dao 2023), never
/// materialising Nq x Nk, dense or block-sparse. A variant's plan (flash_plan.hpp, specialised
/// in the variant's header) gives each query tile its key runs and, per row, the interval of
/// each run it keeps: chunks every row keeps entirely run unmasked, partial ones are masked per
/// token, chunks no row keeps are never visited. Query rows are vector lanes: a tile of Br
/// queries of one head (or, for short queries, of all heads of one GQA group) is packed
/// transposed once, so both products are broadcast-FMA micro-kernels that read K and V in
/// place, and the row-wise max, exp and sum of the online softmax are plain vertical vector
/// operations. With very few rows (decode) the products run along the head dimension instead,
/// keys split across threads and merged by log-sum-exp. Small neighborhood windows run on
/// strips instead (flash_strips.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
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
#include "../simd/transpose.hpp"
#include "../variants/softmax.hpp"
#include "flash_plan.hpp"
#include "flash_strips.hpp"

namespace attnkit::detail::flash {

/// Tile shape: Br = NR vectors of W query rows, Bc keys per key chunk. With rows in lanes the
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
  static constexpr int Bc = RowsInLanes ? 64 : 256;  // few rows: longer K/V streams per chunk
  using rows = tile_rows<Br>;
};

/// The online softmax's running state of one tile, per row (in lanes): max m and sum l in
/// base-2 units, and what tells that float was not enough for the tile: the lowest score
/// (before masking), -inf only when a q.k overflowed, and raw_nonfinite, set when a custom
/// policy's callables met an overflowed or NaN score. The tile then runs exactly (run_exact).
template <class G>
struct running {
  typename G::V m[G::NR], l[G::NR], low[G::NR];
  bool raw_nonfinite = false;

  void reset() {
    ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n)
      m[n] = typename G::V(neg_inf), l[n] = typename G::V(0.f), low[n] = typename G::V(0.f);
    raw_nonfinite = false;
  }
};

/// Key rows first, first + step, ... (n of them) of head (b, h) of t as floats with unit
/// stride along dim; points into t itself when it already is, otherwise converts into buf.
template <class T>
const float* float_rows(const tensor_view<const T>& t, index_t b, index_t h, index_t first, index_t step, index_t n,
                        float* buf, index_t& row_stride) {
  if constexpr (std::is_same_v<T, float>) {
    if (t.stride(dim_axis) == 1) {
      // One row: any stride does (the product may overflow); more: the rows lie in t.
      row_stride = n > 1 ? step * t.stride(seq_axis) : 0;
      return t.row(b, h, first);
    }
  }
  const index_t dd = t.dim();
  for (index_t r = 0; r < n; ++r) simd::to_float_row(t.row(b, h, first + r * step), t.stride(dim_axis), dd, buf + r * dd);
  row_stride = dd;
  return buf;
}

/// Rows first, first + step, ... of head (b, h) of t for simd::rows_ahead (first may lie past
/// the last row: prefetches do not fault, and the address is never dereferenced).
template <class T>
simd::rows_ahead rows_of(const tensor_view<const T>& t, index_t b, index_t h, index_t first, index_t step) {
  if (t.stride(dim_axis) != 1) return {};
  const std::uintptr_t row0 = reinterpret_cast<std::uintptr_t>(t.row(b, h, 0));
  return {row0 + simd::wrapping_bytes(first, t.stride(seq_axis), sizeof(T)),
          simd::wrapping_bytes(step, t.stride(seq_axis), sizeof(T)), t.dim() * static_cast<index_t>(sizeof(T))};
}

/// One chunk of a run: keys key0, key0 + step, ... (nkeys of them) at run positions pos0, ...
struct chunk {
  index_t key0, step, pos0;
  int nkeys;
  bool partial;     // some row does not keep every key: apply the spans
  bool token_mask;  // the plan's keep() decides per token
};

/// Calls f(chunk) for the chunks of tile t that fall in [kbeg, kend) of its key sequence (its
/// runs one after the other). Runs and chunks that no row keeps are skipped.
template <class G, class Plan, class F>
void for_each_chunk(const Plan& plan, typename G::rows& t, index_t b, index_t kbeg, index_t kend, F&& f) {
  index_t offset = 0;  // position of the run in the tile's key sequence
  plan.for_each_run(b, t, [&](const key_run& run) {
    const index_t r0 = std::max<index_t>(kbeg - offset, 0), r1 = std::min<index_t>(kend - offset, run.count);
    offset += run.count;
    if (r0 >= r1) return;
    // Full positions: kept by every live row; any positions: kept by some row.
    index_t full_lo = 0, full_hi = run.count - 1, any_lo = run.count, any_hi = -1;
    for (int r = 0; r < t.rows; ++r) {
      if (!t.live[r]) continue;
      full_lo = std::max<index_t>(full_lo, t.lo[r]);
      full_hi = std::min<index_t>(full_hi, t.hi[r]);
      if (t.lo[r] <= t.hi[r]) any_lo = std::min<index_t>(any_lo, t.lo[r]), any_hi = std::max<index_t>(any_hi, t.hi[r]);
    }
    if (run.token_mask) any_lo = 0, any_hi = run.count - 1;
    const index_t end = std::min(r1, any_hi + 1);
    for (index_t pos0 = std::max(r0, any_lo); pos0 < end; pos0 += G::Bc) {
      const int nkeys = static_cast<int>(std::min<index_t>(G::Bc, end - pos0));
      const bool partial = pos0 < full_lo || pos0 + nkeys - 1 > full_hi;
      f(chunk{run.first + pos0 * run.step, run.step, pos0, nkeys, partial && !run.token_mask,
              run.token_mask});
    }
  });
}

/// What a plan may add (flash_plan.hpp): softmax's score steps, per-chunk score steps, passes
/// that want the log-sum-exp alone, and a finishing step on each output row.
template <class Plan, class = void>
struct has_softmax_scores : std::false_type {};
template <class Plan>
struct has_softmax_scores<Plan, std::enable_if_t<Plan::softmax_scores>> : std::true_type {};
template <class Plan, class = void>
struct has_score_steps : std::false_type {};
template <class Plan>
struct has_score_steps<Plan, std::enable_if_t<Plan::score_steps>> : std::true_type {};
template <class Plan, class = void>
struct may_skip_values : std::false_type {};
template <class Plan>
struct may_skip_values<Plan, std::void_t<decltype(std::declval<const Plan&>().lse_only())>> : std::true_type {};
template <class Plan, class = void>
struct finishes_rows : std::false_type {};
template <class Plan>
struct finishes_rows<Plan, std::enable_if_t<Plan::finishes_rows>> : std::true_type {};

/// The softmax normaliser, the score step of every plan without steps of its own: scores are
/// base-2 log-weights as they are. A step may instead transform each score (`transforms`,
/// transform(x, n, j) for the rows of vector n and key j of the chunk, before masking), say
/// what log-weight a chunk's largest stored score has (log_weight), and compute the weights of
/// a row vector relative to the running log-weight m, in place (weights, returning their sum).
struct softmax_step {
  static constexpr bool transforms = false;
  template <class V>
  V transform(V x, int, int) const {
    return x;
  }
  template <class V>
  V log_weight(V chunk_max, int) const {
    return chunk_max;
  }
  template <class G>
  ATTNKIT_ALWAYS_INLINE typename G::V weights(float* s, int nkeys, int lane0, typename G::V m, int) const {
    using V = typename G::V;
    V sum(0.f);
    for (int j = 0; j < nkeys; ++j) {
      float* sj = s + j * G::Br + lane0;
      const V p = simd::exp2<typename G::arch>(V::load_aligned(sj) - m);
      p.store_aligned(sj);
      sum += p;
    }
    return sum;
  }
};

/// Total keys in the runs of tile t (the length of its key sequence).
template <class G, class Plan>
index_t tile_keys(const Plan& plan, typename G::rows& t, index_t b) {
  index_t n = 0;
  plan.for_each_run(b, t, [&](const key_run& run) { n += run.count; });
  return n;
}

/// Custom policies: keep() masks and score() transforms each score of a chunk (scalar calls).
/// Returns whether a kept key's score (before score()) was infinite or NaN.
template <class G, class Plan>
bool apply_token_callables(const Plan& plan, const typename G::rows& t, index_t b, const chunk& c, float* s) {
  bool nonfinite = false;
  for (int j = 0; j < c.nkeys; ++j) {
    const index_t key = c.key0 + j * c.step;
    for (int r = 0; r < t.rows; ++r) {
      float& x = s[j * G::Br + r];
      if (c.token_mask && !plan.keep(b, t.head[r], t.query[r], key)) {
        x = neg_inf;
        continue;
      }
      nonfinite = nonfinite || !std::isfinite(x);
      if constexpr (Plan::has_score) x = plan.score(x * ln2, b, t.head[r], t.query[r], key) * log2e;
    }
  }
  return nonfinite;
}

/// One online-softmax step over a chunk whose scores s[j][row] (base 2) are computed:
/// soft-cap and ALiBi, lowest score (TrackLow: scores no callable has masked; before
/// soft-capping, the lowest -|score|), the plan's score step, mask (partial chunks only), new
/// running max, weights in place, rescale.
template <class G, bool Cap, bool Alibi, bool Mask, bool TrackLow, class Step>
ATTNKIT_ALWAYS_INLINE void online_softmax_step(const problem& pb, const typename G::rows& t, const chunk& c,
                                               float* s, running<G>& st, float* ot, const Step& step) {
  typename G::V* m = st.m;
  typename G::V* l = st.l;
  using V = typename G::V;
  using IV = simd::ivec<typename G::arch>;
  const int nkeys = c.nkeys;
  ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) {
    const int lane0 = n * G::W;
    V chunk_max(neg_inf), low = st.low[n];
    [[maybe_unused]] const IV lo = IV::load_aligned(t.lo + lane0), hi = IV::load_aligned(t.hi + lane0);
    [[maybe_unused]] const V pos = V::load_aligned(t.pos + lane0), slope = V::load_aligned(t.slope2 + lane0);
    [[maybe_unused]] const V cap(pb.cap2), inv_cap(Cap ? 1.f / pb.cap2 : 0.f);
    [[maybe_unused]] const V scale(pb.scale2);
    for (int j = 0; j < nkeys; ++j) {
      float* sj = s + j * G::Br + lane0;
      V x = V::load_aligned(sj);
      if constexpr (G::bf16_dot) x *= scale;  // q stays exact in bf16, so the scale comes here
      if constexpr (Cap) {
        // tanh maps an infinite score to a finite one: look before it (-|x| is -inf then)
        if constexpr (TrackLow) low = xsimd::min(low, -xsimd::abs(x));
        x = cap * simd::tanh<typename G::arch>(x * inv_cap);
      }
      if constexpr (Alibi) x = xsimd::fnma(slope, xsimd::abs(pos - V(static_cast<float>(c.key0 + j * c.step))), x);
      if constexpr (TrackLow && (Alibi || !Cap)) low = xsimd::min(low, x);
      if constexpr (Step::transforms) x = step.transform(x, n, j);
      if constexpr (Mask) {
        const IV jv(static_cast<std::int32_t>(c.pos0 + j));
        const auto visible = (jv >= lo) & (jv <= hi);
        x = xsimd::select(xsimd::bool_cast(visible), x, V(neg_inf));
      }
      if constexpr (G::bf16_dot || Cap || Alibi || Mask || Step::transforms) x.store_aligned(sj);
      chunk_max = xsimd::max(chunk_max, x);
    }
    const V mx = xsimd::max(m[n], step.log_weight(chunk_max, n));
    // FA2's guard: a row with nothing visible yet keeps max -inf; use 0 so -inf - -inf never occurs.
    const V m_use = xsimd::select(mx == V(neg_inf), V(0.f), mx);
    const V alpha = simd::exp2<typename G::arch>(m[n] - m_use);
    const V sum = step.template weights<G>(s, nkeys, lane0, m_use, n);
    l[n] = xsimd::fma(l[n], alpha, sum);
    m[n] = mx;
    st.low[n] = low;
    if (xsimd::any(alpha != V(1.f))) {
      if constexpr (G::rows_in_lanes) {
        for (index_t col = 0; col < pb.dv; ++col) {
          float* oc = ot + col * G::Br + lane0;
          (V::load_aligned(oc) * alpha).store_aligned(oc);
        }
      } else {
        alignas(64) float a[G::W];
        alpha.store_aligned(a);
        for (int r = 0; r < G::W; ++r)
          for (index_t col = 0; col < pb.dv; ++col) ot[(lane0 + r) * pb.dv + col] *= a[r];
      }
    }
  }
}

/// The masking and softmax of one chunk: token callables, then spans on partial chunks, with
/// the plan's score step for the chunk.
template <class G, bool Cap, bool Alibi, class Plan>
ATTNKIT_ALWAYS_INLINE void softmax_chunk(const Plan& plan, const problem& pb, const typename G::rows& t, index_t b,
                                         const chunk& c, float* s, running<G>& st, float* ot) {
  if constexpr (Plan::token_callables) {
    // keep() writes -inf and score() may return it: the callables check the raw scores.
    if (c.token_mask || Plan::has_score) {
      st.raw_nonfinite = apply_token_callables<G>(plan, t, b, c, s) || st.raw_nonfinite;
      return online_softmax_step<G, Cap, Alibi, false, false>(pb, t, c, s, st, ot, softmax_step{});
    }
  }
  const auto with = [&](const auto& step) {
    if (c.partial)
      online_softmax_step<G, Cap, Alibi, true, true>(pb, t, c, s, st, ot, step);
    else
      online_softmax_step<G, Cap, Alibi, false, true>(pb, t, c, s, st, ot, step);
  };
  if constexpr (has_score_steps<Plan>::value)
    plan.template with_step<G>(t, b, c, with);
  else
    with(softmax_step{});
}

/// Scratch of one worker, carved from its arena: packed Q, the output accumulator, the score
/// tile, converted K/V chunks, and (bf16 dot) the probabilities packed in pairs. 32-bit slots.
template <class G>
struct scratch {
  scratch_lease lease;
  float *qt, *ot, *s, *kbuf, *vbuf, *pp;

  explicit scratch(const problem& pb) {
    const auto slots = [](index_t n) { return static_cast<std::size_t>((n + 15) & ~index_t(15)); };
    const std::size_t nqt = slots(pb.d * G::Br), not_ = slots(pb.dv * G::Br), ns = slots(G::Bc * G::Br),
                      nk = slots(G::Bc * (pb.d + 1)), nv = slots(G::Bc * pb.dv),
                      npp = G::bf16_dot ? slots(G::Bc / 2 * G::Br) : 0;
    float* base = static_cast<float*>(lease.reserve((nqt + not_ + ns + nk + nv + npp) * sizeof(float)));
    qt = base;
    ot = qt + nqt;
    s = ot + not_;
    kbuf = s + ns;
    vbuf = kbuf + nk;
    pp = vbuf + nv;
  }
};

/// Packs the tile's rows of float q (unit stride along dim) into lanes with in-register
/// transposes, pre-scaled, when rows are lanes of 16: the scalar loop over 48 x D strided
/// elements weighs on tiles with few chunks (sparse patterns, small N; dense N 512 gained
/// 3-10% with this and write_rows_in_registers). Returns false when it does not apply.
template <class G, class Q>
bool pack_rows_in_registers([[maybe_unused]] const problem& pb, [[maybe_unused]] const typename G::rows& t,
                            [[maybe_unused]] const tensor_view<const Q>& q, [[maybe_unused]] index_t b,
                            [[maybe_unused]] float* qt) {
#if defined(__AVX512F__)
  if constexpr (G::rows_in_lanes && G::W == 16 && std::is_same_v<Q, float>) {
    if (q.stride(dim_axis) != 1) return false;
    for (int n = 0; n < G::NR; ++n) {
      const float* rows[16];
      for (int i = 0; i < 16; ++i) {
        const int r = n * 16 + i;
        rows[i] = r < t.rows ? q.row(b, t.head[r], t.query[r]) : nullptr;
      }
      simd::rows_to_lanes16(rows, pb.d, pb.scale2, qt + n * 16, G::Br);
    }
    return true;
  }
#endif
  return false;
}

/// Runs the keys [kbeg, kend) of the tile's key sequence for one query tile; leaves the
/// unnormalised output in sc.ot (transposed) and the running max / sum (base 2) in m, l.
template <class G, bool Cap, bool Alibi, class Plan, class Q, class K, class Vt>
void process_tile(const Plan& plan, const problem& pb, typename G::rows& t, const tensor_view<const Q>& q,
                  const tensor_view<const K>& k, const tensor_view<const Vt>& v, index_t b, index_t hkv,
                  index_t kbeg, index_t kend, const scratch<G>& sc, running<G>& st) {
  // Q pre-scaled into base-2 units, transposed when rows are lanes; padding rows are zero.
  if (!pack_rows_in_registers<G>(pb, t, q, b, sc.qt)) {
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
  }
  std::fill(sc.ot, sc.ot + pb.dv * G::Br, 0.f);
  st.reset();

  for_each_chunk<G>(plan, t, b, kbeg, kend, [&](const chunk& c) {
    index_t ks, vs;
    const float* kp = float_rows(k, b, hkv, c.key0, c.step, c.nkeys, sc.kbuf, ks);
    // K and V chunks alternate, and the hardware prefetchers follow one stream at a time: q.k
    // asks for this chunk's V rows, p.v for the next chunk's K rows (with 16K keys of D 128,
    // 16 MiB of K/V per head, tiles went from ~0.6 to ~0.8 of the FMA roof).
    if constexpr (G::rows_in_lanes) {
      simd::qk_tile<G>(sc.qt, kp, ks, pb.d, c.nkeys, sc.s, rows_of(v, b, hkv, c.key0, c.step));
    } else {
      simd::qk_rows_tile<simd::wide_arch, G::Br>(sc.qt, kp, ks, pb.d, c.nkeys, sc.s, rows_of(v, b, hkv, c.key0, c.step));
    }
    softmax_chunk<G, Cap, Alibi>(plan, pb, t, b, c, sc.s, st, sc.ot);
    if constexpr (may_skip_values<Plan>::value)
      if (plan.lse_only()) return;  // a pass that wants the log-sum-exp alone: no p.v
    const float* vp = float_rows(v, b, hkv, c.key0, c.step, c.nkeys, sc.vbuf, vs);
    if constexpr (G::rows_in_lanes)
      simd::pv_tile<G>(sc.s, c.nkeys, vp, vs, pb.dv, sc.ot, rows_of(k, b, hkv, c.key0 + c.nkeys * c.step, c.step),
                       c.nkeys);
    else
      simd::pv_rows_tile<simd::wide_arch, G::Br>(sc.s, c.nkeys, vp, vs, pb.dv, sc.ot,
                                                 rows_of(k, b, hkv, c.key0 + c.nkeys * c.step, c.step));
  });
}

#if defined(__AVX512BF16__)
/// process_tile for bf16 q, k, v on the AVX512_BF16 dot product: operands stay bf16 (packed in
/// pairs along each product's reduction axis), accumulation and the softmax stay float.
template <class G, bool Cap, bool Alibi, class Plan>
void process_tile_bf16(const Plan& plan, const problem& pb, typename G::rows& t, const tensor_view<const bf16>& q,
                       const tensor_view<const bf16>& k, const tensor_view<const bf16>& v, index_t b, index_t hkv,
                       index_t kbeg, index_t kend, const scratch<G>& sc, running<G>& st) {
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
  st.reset();

  // K is read in place when its rows are unit-stride pairs, else copied with an even width.
  const bool k_in_place = k.stride(dim_axis) == 1 && pb.d % 2 == 0;
  auto* kbuf = reinterpret_cast<std::uint16_t*>(sc.kbuf);
  auto* vp = reinterpret_cast<std::uint32_t*>(sc.vbuf);
  auto* pp = reinterpret_cast<std::uint32_t*>(sc.pp);
  const index_t vds = v.stride(dim_axis);
  for_each_chunk<G>(plan, t, b, kbeg, kend, [&](const chunk& ch) {
    const std::uint16_t* kp = reinterpret_cast<const std::uint16_t*>(k.row(b, hkv, ch.key0));
    index_t ks = ch.nkeys > 1 ? ch.step * k.stride(seq_axis) : 0;  // one key: any stride (see float_rows)
    if (!k_in_place) {
      for (int r = 0; r < ch.nkeys; ++r)
        for (index_t c = 0; c < 2 * pairs; ++c)
          kbuf[r * 2 * pairs + c] =
              static_cast<std::uint16_t>(bits(k.row(b, hkv, ch.key0 + r * ch.step), k.stride(dim_axis), c, pb.d));
      kp = kbuf;
      ks = 2 * pairs;
    }
    simd::bf16dot::qk_tile<G>(qt, kp, ks, pairs, ch.nkeys, sc.s);
    softmax_chunk<G, Cap, Alibi>(plan, pb, t, b, ch, sc.s, st, sc.ot);
    if constexpr (may_skip_values<Plan>::value)
      if (plan.lse_only()) return;
    simd::bf16dot::pack_probabilities<G>(sc.s, ch.nkeys, pp);
    for (int j = 0; j < ch.nkeys; j += 2) {
      const bf16* v0 = v.row(b, hkv, ch.key0 + j * ch.step);
      const bf16* v1 = j + 1 < ch.nkeys ? v.row(b, hkv, ch.key0 + (j + 1) * ch.step) : nullptr;
      std::uint32_t* dst = vp + (j / 2) * pb.dv;
      if (v1)
        for (index_t c = 0; c < pb.dv; ++c) dst[c] = v0[c * vds].bits | static_cast<std::uint32_t>(v1[c * vds].bits) << 16;
      else
        for (index_t c = 0; c < pb.dv; ++c) dst[c] = v0[c * vds].bits;
    }
    simd::bf16dot::pv_tile<G>(pp, (ch.nkeys + 1) / 2, vp, pb.dv, sc.ot);
  });
}
#endif

/// One unit of work: a query tile of one (batch, KV head), over a stretch of its key sequence.
struct work_item {
  index_t b, hkv, tile;
  index_t kbeg, kend;  // positions in the tile's key sequence
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

/// Did float fall short for this tile? In some live row: a running max of +inf or a NaN sum
/// (an overflowed q.k or a NaN input), a score of -inf before masking (a q.k that overflowed
/// downwards: alone in its row, float would drop the row's only keys), a callable's
/// non-finite score, or an output accumulator past float's range (large values summed).
template <class G>
bool needs_exact(const problem& pb, const typename G::rows& t, const running<G>& st, const float* ot) {
  using V = typename G::V;
  if (st.raw_nonfinite) return true;
  alignas(64) float m[G::Br], l[G::Br], low[G::Br], sums[G::Br];
  ATTNKIT_UNROLL for (int n = 0; n < G::NR; ++n) {
    st.m[n].store_aligned(m + n * G::W), st.l[n].store_aligned(l + n * G::W), st.low[n].store_aligned(low + n * G::W);
    if constexpr (G::rows_in_lanes) {  // x * 0 is NaN exactly where x is infinite or NaN
      V probe(0.f);
      for (index_t col = 0; col < pb.dv; ++col) probe = xsimd::fma(V::load_aligned(ot + col * G::Br + n * G::W), V(0.f), probe);
      probe.store_aligned(sums + n * G::W);
    }
  }
  if constexpr (!G::rows_in_lanes)
    for (int r = 0; r < G::Br; ++r) {
      sums[r] = 0.f;
      for (index_t col = 0; col < pb.dv; ++col) sums[r] += ot[r * pb.dv + col] * 0.f;
    }
  for (int r = 0; r < t.rows; ++r)
    if (t.live[r] && (m[r] == -neg_inf || std::isnan(l[r]) || low[r] == neg_inf || std::isnan(sums[r]))) return true;
  return false;
}

/// The rows of tile t over keys [kbeg, kend) of its key sequence, in double precision and
/// straight from the definition (spec "Reference algorithm", the online form): the path of
/// tiles for which float fell short (needs_exact). Calls write(r, out row (double*, Dv), natural
/// lse) for each row; a row with no visible key gets zeros and -inf.
template <class G, class Plan, class Q, class K, class Vt, class Write>
void run_exact(const Plan& plan, const problem& pb, typename G::rows& t, const tensor_view<const Q>& q,
               const tensor_view<const K>& k, const tensor_view<const Vt>& v, index_t b, index_t hkv, index_t kbeg,
               index_t kend, Write&& write) {
  const double minus_inf = -std::numeric_limits<double>::infinity();
  const auto rows = static_cast<std::size_t>(t.rows), d = static_cast<std::size_t>(pb.d),
             dv = static_cast<std::size_t>(pb.dv);
  std::vector<double> qd(rows * d), acc(rows * dv, 0.0), m(rows, minus_inf), l(rows, 0.0), kd(d), vd(dv);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < d; ++c)
      qd[r * d + c] = to_float(q(b, t.head[r], t.query[r], static_cast<index_t>(c)));
  for_each_chunk<G>(plan, t, b, kbeg, kend, [&](const chunk& c) {
    for (int j = 0; j < c.nkeys; ++j) {
      const index_t key = c.key0 + j * c.step, position = c.pos0 + j;
      for (std::size_t e = 0; e < d; ++e) kd[e] = to_float(k(b, hkv, key, static_cast<index_t>(e)));
      for (std::size_t e = 0; e < dv; ++e) vd[e] = to_float(v(b, hkv, key, static_cast<index_t>(e)));
      const auto kept = [&](int r) {
        if constexpr (Plan::token_callables)
          if (c.token_mask) return static_cast<bool>(plan.keep(b, t.head[r], t.query[r], key));
        return !c.partial || (t.lo[r] <= position && position <= t.hi[r]);
      };
      for (int r = 0; r < t.rows; ++r) {
        if (!t.live[r] || !kept(r)) continue;
        const std::size_t ru = static_cast<std::size_t>(r);
        double score = 0;
        for (std::size_t e = 0; e < d; ++e) score += qd[ru * d + e] * kd[e];
        score *= static_cast<double>(pb.scale);
        if (pb.softcap > 0) score = pb.softcap * std::tanh(score / pb.softcap);
        if (pb.slopes) score -= static_cast<double>(pb.slopes[t.head[r]]) * std::fabs(double(t.pos[r]) - double(key));
        if constexpr (Plan::has_score)
          score = plan.score(score, b, t.head[r], t.query[r], key);
        if (score > m[ru]) {  // a new maximum: rescale what was summed so far
          const double alpha = std::exp(m[ru] - score);
          for (std::size_t e = 0; e < dv; ++e) acc[ru * dv + e] *= alpha;
          l[ru] *= alpha;
          m[ru] = score;
        }
        if (score == minus_inf) continue;  // weight 0 (and no -inf - -inf)
        const double weight = std::exp(score - m[ru]);  // NaN stays NaN
        l[ru] += weight;
        for (std::size_t e = 0; e < dv; ++e) acc[ru * dv + e] += weight * vd[e];
      }
    }
  });
  for (std::size_t r = 0; r < rows; ++r) {
    double* row = acc.data() + r * dv;
    const bool seen = t.live[r] && l[r] != 0;
    for (std::size_t e = 0; e < dv; ++e) row[e] = seen ? row[e] / l[r] : 0.0;
    write(static_cast<int>(r), row, seen ? m[r] + std::log(l[r]) : minus_inf);
  }
}

/// Writes the normalised rows of a tile whose rows are lanes of 16 (every row that `seen`,
/// from sc.ot) to float out (unit stride along dim) with in-register transposes. Returns false
/// when it does not apply.
template <class G, class O, class Seen>
bool write_rows_in_registers([[maybe_unused]] const problem& pb, [[maybe_unused]] const typename G::rows& t,
                             [[maybe_unused]] const tensor_view<O>& out, [[maybe_unused]] index_t b,
                             [[maybe_unused]] const float* ot, [[maybe_unused]] const float* sums,
                             [[maybe_unused]] Seen&& seen) {
#if defined(__AVX512F__)
  if constexpr (G::rows_in_lanes && G::W == 16 && std::is_same_v<O, float>) {
    if (out.stride(dim_axis) != 1) return false;
    for (int n = 0; n < G::NR; ++n) {
      float* rows[16];
      alignas(64) float inv[16];
      for (int i = 0; i < 16; ++i) {
        const int r = n * 16 + i;
        rows[i] = seen(r) ? out.row(b, t.head[r], t.query[r]) : nullptr;
        inv[i] = rows[i] ? 1.f / sums[r] : 0.f;
      }
      simd::lanes_to_rows(ot + n * 16, G::Br, pb.dv, inv, rows);
    }
    return true;
  }
#endif
  return false;
}

/// Writes the rows of tile t, processed over keys [kbeg, kend) of its key sequence (all of
/// them), to out and o.lse: normalised from sc.ot, or exactly (run_exact) when float fell short.
template <class G, class Plan, class Q, class K, class Vt, class O>
void write_tile(const Plan& plan, const problem& pb, typename G::rows& t, const tensor_view<const Q>& q,
                const tensor_view<const K>& k, const tensor_view<const Vt>& v, index_t b, index_t hkv, index_t kbeg,
                index_t kend, const scratch<G>& sc, const running<G>& st, const tensor_view<O>& out, const options& o) {
  const auto lse_at = [&](const typename G::rows& tr, int r) -> float& {
    return o.lse[(b * pb.q_heads + tr.head[r]) * pb.nq + tr.query[r]];
  };
  if (needs_exact<G>(pb, t, st, sc.ot)) {
    return run_exact<G>(plan, pb, t, q, k, v, b, hkv, kbeg, kend, [&](int r, double* row, double lse) {
      if constexpr (finishes_rows<Plan>::value) plan.finish(b, t.head[r], t.query[r], row);
      for (index_t c = 0; c < pb.dv; ++c) out(b, t.head[r], t.query[r], c) = from_float<O>(static_cast<float>(row[c]));
      if (o.lse) lse_at(t, r) = static_cast<float>(lse);
    });
  }
  alignas(64) float mr[G::Br], lr[G::Br];
  ATTNKIT_UNROLL for (int i = 0; i < G::NR; ++i) st.m[i].store_aligned(mr + i * G::W), st.l[i].store_aligned(lr + i * G::W);
  const auto seen = [&](int r) { return r < t.rows && t.live[r] && lr[r] != 0.f; };
  if constexpr (finishes_rows<Plan>::value) {
    // The plan finishes each normalised row (in sc.vbuf, free once the tile is done) before it
    // is stored.
    for (int r = 0; r < t.rows; ++r) {
      const float* src = G::rows_in_lanes ? sc.ot + r : sc.ot + r * pb.dv;
      const index_t src_stride = G::rows_in_lanes ? G::Br : 1;
      const float inv = seen(r) ? 1.f / lr[r] : 0.f;
      for (index_t c = 0; c < pb.dv; ++c) sc.vbuf[c] = seen(r) ? src[c * src_stride] * inv : 0.f;
      plan.finish(b, t.head[r], t.query[r], sc.vbuf);
      for (index_t c = 0; c < pb.dv; ++c) out(b, t.head[r], t.query[r], c) = from_float<O>(sc.vbuf[c]);
      if (o.lse) lse_at(t, r) = seen(r) ? (mr[r] + std::log2(lr[r])) * ln2 : neg_inf;
    }
    return;
  }
  // A row that saw nothing is written as exact zeros, whatever (NaN) its lanes accumulated.
  const bool transposed = write_rows_in_registers<G>(pb, t, out, b, sc.ot, lr, seen);
  for (int r = 0; r < t.rows; ++r) {
    const float lse2 = seen(r) ? mr[r] + std::log2(lr[r]) : neg_inf;
    if (o.lse) lse_at(t, r) = seen(r) ? lse2 * ln2 : neg_inf;
    if (transposed && seen(r)) continue;
    const float* src = G::rows_in_lanes ? sc.ot + r : sc.ot + r * pb.dv;
    const index_t src_stride = G::rows_in_lanes ? G::Br : 1;
    const float inv = seen(r) ? 1.f / lr[r] : 0.f;
    for (index_t c = 0; c < pb.dv; ++c)
      out(b, t.head[r], t.query[r], c) = from_float<O>(seen(r) ? src[c * src_stride] * inv : 0.f);
  }
}

template <class G, bool Cap, bool Alibi, class Plan, class Q, class K, class Vt, class O>
void run_tiles(const Plan& plan, const problem& pb, const tensor_view<const Q>& q, const tensor_view<const K>& k,
               const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  const index_t tiles = plan.tiles();
  const index_t groups = pb.batch * pb.kv_heads;

  // The length of every tile's key sequence; split long ones when there are too few tiles.
  std::vector<index_t> lengths(static_cast<std::size_t>(groups * tiles));
  index_t busy = 0, longest = 0;
  parallel_for(groups, o.threads, [&](index_t gi) {
    typename G::rows t;
    for (index_t tile = 0; tile < tiles; ++tile) {
      plan.describe(gi / pb.kv_heads, gi % pb.kv_heads, tile, t);
      lengths[static_cast<std::size_t>(gi * tiles + tile)] = tile_keys<G>(plan, t, gi / pb.kv_heads);
    }
  });
  for (index_t n : lengths) busy += n > 0, longest = std::max(longest, n);
  const index_t splits = key_splits(busy, longest);

  std::vector<work_item> items;
  items.reserve(static_cast<std::size_t>(busy * splits));
  for (index_t gi = 0; gi < groups; ++gi)
    for (index_t tile = 0; tile < tiles; ++tile) {
      const index_t n = lengths[static_cast<std::size_t>(gi * tiles + tile)];
      const index_t chunk = ((n + splits - 1) / splits + G::Bc - 1) / G::Bc * G::Bc;
      for (index_t c = 0; c < splits; ++c) {
        const index_t cb = std::min(n, c * chunk), ce = std::min(n, cb + chunk);
        const index_t slot = splits > 1 ? (gi * tiles + tile) * splits + c : -1;
        // Tiles that visit nothing still run, with no keys: their rows are written as zeros.
        if (c == 0 || cb < ce) items.push_back({gi / pb.kv_heads, gi % pb.kv_heads, tile, cb, ce, slot});
      }
    }
  // Head by head, longest first within a head, so that the dynamic schedule ends with short
  // items (causal tiles vary 1:N) while the K/V rows in use stay those of one head: sorting
  // all heads' items by length together interleaved the heads, and with 4 heads of 16K keys
  // (32 MiB of K/V) that spilled L3 and made radial attention 1.3x slower per head.
  std::stable_sort(items.begin(), items.end(), [](const work_item& a, const work_item& b) {
    if (a.b != b.b || a.hkv != b.hkv) return a.b < b.b || (a.b == b.b && a.hkv < b.hkv);
    return a.kend - a.kbeg > b.kend - b.kbeg;
  });

  // Split results: normalised partial outputs [slot][row][dv] and each chunk's running max m
  // (base 2; -inf for a chunk that was not run or saw nothing) and sum l, kept apart: as one
  // log-sum-exp m + log2(l), even in double, log2(l) vanished below m's ulp once |m| passed
  // about 1e16 (ties at scores of -1e25 weighed chunks of 512 and 227 keys alike).
  std::vector<float> part_out, part_m;
  std::vector<double> part_l;
  if (splits > 1) {
    part_out.assign(static_cast<std::size_t>(groups * tiles * splits * G::Br * pb.dv), 0.f);
    part_m.assign(static_cast<std::size_t>(groups * tiles * splits * G::Br), neg_inf);
    part_l.assign(static_cast<std::size_t>(groups * tiles * splits * G::Br), 0.0);
  }

  // Split tiles whose float work fell short, marked per slot (each item writes its own); the
  // merge recomputes them exactly over all their keys.
  std::vector<char> slot_exact(splits > 1 ? static_cast<std::size_t>(groups * tiles * splits) : 0, 0);
  const auto write_exact = [&](index_t b, const typename G::rows& t, int r, double* row, double lse) {
    if constexpr (finishes_rows<Plan>::value) plan.finish(b, t.head[r], t.query[r], row);
    for (index_t c = 0; c < pb.dv; ++c) out(b, t.head[r], t.query[r], c) = from_float<O>(static_cast<float>(row[c]));
    if (o.lse) o.lse[(b * pb.q_heads + t.head[r]) * pb.nq + t.query[r]] = static_cast<float>(lse);
  };

  parallel_for(static_cast<index_t>(items.size()), o.threads, [&](index_t n) {
    const work_item& w = items[static_cast<std::size_t>(n)];
    typename G::rows t;
    plan.describe(w.b, w.hkv, w.tile, t);
    const scratch<G> sc(pb);
    running<G> st;
#if defined(__AVX512BF16__)
    if constexpr (G::bf16_dot)
      process_tile_bf16<G, Cap, Alibi>(plan, pb, t, q, k, v, w.b, w.hkv, w.kbeg, w.kend, sc, st);
    else
#endif
      process_tile<G, Cap, Alibi>(plan, pb, t, q, k, v, w.b, w.hkv, w.kbeg, w.kend, sc, st);
    if (w.slot < 0) return write_tile<G>(plan, pb, t, q, k, v, w.b, w.hkv, w.kbeg, w.kend, sc, st, out, o);
    if (needs_exact<G>(pb, t, st, sc.ot)) {
      slot_exact[static_cast<std::size_t>(w.slot)] = 1;
      return;
    }
    alignas(64) float mr[G::Br], lr[G::Br];
    ATTNKIT_UNROLL for (int i = 0; i < G::NR; ++i) st.m[i].store_aligned(mr + i * G::W), st.l[i].store_aligned(lr + i * G::W);
    const auto seen = [&](int r) { return r < t.rows && t.live[r] && lr[r] != 0.f; };
    for (int r = 0; r < t.rows; ++r) {
      const float inv = seen(r) ? 1.f / lr[r] : 0.f;
      const float* src = G::rows_in_lanes ? sc.ot + r : sc.ot + r * pb.dv;
      const index_t src_stride = G::rows_in_lanes ? G::Br : 1;
      float* dst = part_out.data() + (w.slot * G::Br + r) * pb.dv;
      for (index_t c = 0; c < pb.dv; ++c) dst[c] = seen(r) ? src[c * src_stride] * inv : 0.f;
      part_m[static_cast<std::size_t>(w.slot * G::Br + r)] = seen(r) ? mr[r] : neg_inf;
      part_l[static_cast<std::size_t>(w.slot * G::Br + r)] = seen(r) ? lr[r] : 0.0;
    }
  });
  if (splits == 1) return;

  // Merge the chunks of each tile by their log-sum-exp, in chunk order.
  parallel_for(groups * tiles, o.threads, [&](index_t gt) {
    typename G::rows t;
    const index_t b = gt / tiles / pb.kv_heads, hkv = gt / tiles % pb.kv_heads, tile = gt % tiles;
    plan.describe(b, hkv, tile, t);
    const auto first_slot = slot_exact.begin() + gt * splits;
    if (std::find(first_slot, first_slot + splits, 1) != first_slot + splits) {
      return run_exact<G>(plan, pb, t, q, k, v, b, hkv, 0, lengths[static_cast<std::size_t>(gt)],
                          [&](int r, double* row, double lse) { write_exact(b, t, r, row, lse); });
    }
    scratch_lease lease;
    double* merged = static_cast<double*>(lease.reserve(static_cast<std::size_t>(pb.dv) * sizeof(double)));
    for (int r = 0; r < t.rows; ++r) {
      const auto at = [&](index_t c) { return static_cast<std::size_t>((gt * splits + c) * G::Br + r); };
      double mx = neg_inf;
      for (index_t c = 0; c < splits; ++c) mx = std::max(mx, double(part_m[at(c)]));
      // Chunk c weighs l_c 2^(m_c - mx): the maxima's differences are exact, the sums stay whole.
      const auto mass_of = [&](index_t c) {
        return part_m[at(c)] == neg_inf ? 0.0 : std::exp2(double(part_m[at(c)]) - mx) * part_l[at(c)];
      };
      std::fill(merged, merged + pb.dv, 0.0);
      double total = 0;
      if (mx != neg_inf) {
        for (index_t c = 0; c < splits; ++c) total += mass_of(c);
        // Normalised weights, in double: a convex combination of finite partials stays finite
        // (in float, weights summing to 1 + 1 ulp took FLT_MAX partials to inf).
        for (index_t c = 0; c < splits; ++c) {
          const double wgt = mass_of(c) / total;
          const float* src = part_out.data() + ((gt * splits + c) * G::Br + r) * pb.dv;
          for (index_t d = 0; d < pb.dv; ++d) merged[d] += wgt * src[d];
        }
      }
      if constexpr (finishes_rows<Plan>::value) plan.finish(b, t.head[r], t.query[r], merged);
      for (index_t c = 0; c < pb.dv; ++c) out(b, t.head[r], t.query[r], c) = from_float<O>(static_cast<float>(merged[c]));
      if (o.lse)
        o.lse[(b * pb.q_heads + t.head[r]) * pb.nq + t.query[r]] =
            mx == neg_inf ? neg_inf : static_cast<float>((mx + std::log2(total)) * double(ln2));
    }
  });
}

template <class G, class Policy, class Q, class K, class Vt, class O>
void run_geometry(const Policy& p, const problem& pb, const tensor_view<const Q>& q, const tensor_view<const K>& k,
                  const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  const flash_plan<Policy> plan(p, pb, G::Br);
  if constexpr (has_softmax_scores<flash_plan<Policy>>::value) {  // soft-capping and ALiBi
    const bool cap = pb.cap2 > 0, alibi = pb.slopes != nullptr;
    if (cap && alibi) return run_tiles<G, true, true>(plan, pb, q, k, v, out, o);
    if (cap) return run_tiles<G, true, false>(plan, pb, q, k, v, out, o);
    if (alibi) return run_tiles<G, false, true>(plan, pb, q, k, v, out, o);
  }
  run_tiles<G, false, false>(plan, pb, q, k, v, out, o);
}

/// bf16 or f16 inputs that many query tiles read are widened to float once per call, into a
/// scratch copy, rather than per tile and key chunk (widened per chunk, bf16 ran at 0.84x the
/// float speed on an AVX2 build, N 2048, D 128). Calls whose copies would take more than this
/// widen per chunk.
inline constexpr index_t max_widened_bytes = index_t(64) << 20;

/// t as float, contiguous (b, h, s, d), in dst; rows widened in parallel.
template <class T>
tensor_view<const float> widened(const tensor_view<const T>& t, float* dst, int threads) {
  const index_t rows = t.batch() * t.heads() * t.seq(), block = 64;
  parallel_for(ceil_div(rows, block), threads, [&](index_t item) {
    for (index_t r = item * block; r < std::min(rows, (item + 1) * block); ++r)
      simd::to_float_row(t.row(r / t.seq() / t.heads(), r / t.seq() % t.heads(), r % t.seq()), t.stride(dim_axis),
                         t.dim(), dst + r * t.dim());
  });
  return view_bhsd(static_cast<const float*>(dst), t.batch(), t.heads(), t.seq(), t.dim());
}

/// Any flash policy on the CPU (arguments already validated).
template <class Policy, class Q, class K, class Vt, class O>
void run(const Policy& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
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
  pb.scale = effective_scale(p.scale, pb.d);
  pb.scale2 = pb.scale * log2e;
  pb.softcap = pb.cap2 = 0;
  pb.slopes = nullptr;
  using plan_t = flash_plan<Policy>;
  if constexpr (has_softmax_scores<plan_t>::value) {
    const softmax fields = plan_t::fields(p);
    pb.softcap = fields.softcap;
    pb.cap2 = fields.softcap * log2e;
    pb.slopes = fields.alibi_slopes;
  }
  if (pb.batch == 0 || pb.nq == 0) return;
  // Rows that share one K/V stream: few of them (decode) run along the head dimension.
  const index_t rows = plan_t::packs_gqa ? pb.rows_per_group : pb.nq;
  using few_rows = geometry<simd::narrow_arch, 1, false>;
  using some_rows = geometry<simd::narrow_arch, 2, false>;
  using many_rows = geometry<simd::wide_arch, 3>;
  static_assert(many_rows::Br == strips::tile_rows_of_many_rows, "strips compare against these tiles");
  [[maybe_unused]] bool on_bf16_dot = false;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<Q, bf16> && std::is_same_v<K, bf16> && std::is_same_v<Vt, bf16> &&
                simd::vec<simd::wide_arch>::size == 16 && !plan_t::token_callables)
    on_bf16_dot = rows > some_rows::Br && simd::bf16dot::preferred();
#endif
  if constexpr (!std::is_same_v<Q, float> || !std::is_same_v<K, float> || !std::is_same_v<Vt, float>) {
    if (!on_bf16_dot && rows > 2 * many_rows::Br) {
      const index_t floats = q.size() + k.size() + v.size();  // views are validated: no overflow
      if (floats * static_cast<index_t>(sizeof(float)) <= max_widened_bytes) {
        scratch_lease lease;
        float* copies = static_cast<float*>(lease.reserve(static_cast<std::size_t>(floats) * sizeof(float)));
        const auto qf = widened(q, copies, o.threads);
        const auto kf = widened(k, copies + q.size(), o.threads);
        const auto vf = widened(v, copies + q.size() + k.size(), o.threads);
        return flash::run(p, qf, kf, vf, out, o);  // qualified: no ADL into detail::run
      }
    }
  }
  if constexpr (is_neighborhood<Policy>::value)
    if (strips::preferred(p) && strips::run(p, pb, q, k, v, out, o)) return;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<Q, bf16> && std::is_same_v<K, bf16> && std::is_same_v<Vt, bf16> &&
                simd::vec<simd::wide_arch>::size == 16 && !plan_t::token_callables) {
    if (on_bf16_dot) return run_geometry<geometry<simd::wide_arch, 3, true, true>>(p, pb, q, k, v, out, o);
  }
#endif
  constexpr bool has_some_rows = simd::vec<simd::wide_arch>::size % some_rows::Br == 0;
  if (rows <= few_rows::Br) {
    run_geometry<few_rows>(p, pb, q, k, v, out, o);
  } else if (has_some_rows && rows <= some_rows::Br) {
    if constexpr (has_some_rows) run_geometry<some_rows>(p, pb, q, k, v, out, o);
  } else {
    run_geometry<many_rows>(p, pb, q, k, v, out, o);
  }
}

}  // namespace attnkit::detail::flash
