/// \file
/// The linear engine on the CPU: attention through a key-value state (spec/linear.md "Fast
/// algorithm"). Per (batch, kv head) the state is S = sum_j phi(k_j) v_j^T (m x Dv) and
/// z = sum_j phi(k_j); query i reads out phi(q_i)^T S / (phi(q_i) . z + eps).
///
/// Everything is a small matrix product on the flash engine's broadcast-FMA micro-kernels, with
/// Br value columns in lanes: S is kept as panels [Dv / Br][m][Br], so the key-side update
/// S += Kc^T Vc is `pv_tile` (keys' feature rows read in place) and the read-out Q' S is
/// `qk_tile` (query feature rows read in place).
///
/// Causal runs in chunks of C queries (Katharopoulos et al.; the spec's chunked form): a chunk's
/// queries read the state of every key before the chunk's key window, plus the window itself
/// through the masked C x C product A = Qc Kc^T. Both terms come out of one `qk_tile` call: a
/// row is [phi(q_i), A_i] and a panel is [S_p; Vc_p] (the state with the window's values
/// stacked below it). The state then absorbs the window, as a chunk product added to it (the
/// spec's chunk-level partial sums: rounding grows with N / C, not N).
///
/// Parallelism: the state is a sum, so keys split into pieces of `piece_keys` whose partial
/// states run in parallel and are added in a fixed order (results never depend on the thread
/// count); causal sequences also split into segments of chunks that start from the sum of the
/// pieces before them when there are fewer (batch, kv head) pairs than hardware threads.
///
/// FAVOR+ key features carry a running shift (the largest exponent so far): a state is kept in
/// units of exp(-shift), rescaled when a chunk raises it, so features never overflow and
/// causal outputs depend on no future key. eps is scaled the same way, so the result is the
/// unshifted formula's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/arena.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/convert.hpp"
#include "../simd/transpose.hpp"
#include "../simd/microkernels.hpp"
#include "../variants/linear.hpp"
#include "features.hpp"
#include "flash.hpp"

namespace attnkit::detail::linear_engine {

using G = flash::geometry<simd::wide_arch, 2>;
inline constexpr index_t Br = G::Br;
inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();
/// Keys of one partial state: the pieces of a (batch, kv head) run in parallel.
inline constexpr index_t piece_keys = 4096;
/// Chunk length when the policy leaves it to the engine (measured: bench_linear).
inline constexpr index_t default_chunk = 32;

inline index_t round_up(index_t n, index_t to) { return (n + to - 1) / to * to; }

using V = simd::vec<simd::wide_arch>;
inline constexpr index_t W = static_cast<index_t>(V::size);

/// dst[e] = e < count ? src[e] : 0 for e < Br (a row of the masked A = Qc Kc^T).
inline void keep_first(const float* src, index_t count, float* dst) {
  alignas(64) static constexpr float lane_index[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static_assert(W <= 16, "lane_index covers 16 lanes");
  const V index = V::load_aligned(lane_index);
  for (index_t e = 0; e < Br; e += W)
    xsimd::select(index < V(static_cast<float>(count - e)), V::load_aligned(src + e), V(0.f)).store_unaligned(dst + e);
}

/// sum_l a[l] b[l] over n floats.
inline float dot(const float* a, const float* b, index_t n) {
  V acc(0.f);
  index_t l = 0;
  for (; l + W <= n; l += W) acc = xsimd::fma(V::load_unaligned(a + l), V::load_unaligned(b + l), acc);
  float sum = xsimd::hadd(acc);
  for (; l < n; ++l) sum += a[l] * b[l];
  return sum;
}

/// Sizes of one call.
struct dims {
  index_t batch, q_heads, kv_heads, group, nq, nk, d, dv, m, panels, chunk, chunk_pad, off;
  /// Per (batch, kv head): values are scaled by 2^-value_exp[pair] on loading, outputs by
  /// 2^value_exp[pair] (nonzero only for values near FLT_MAX, whose sums would overflow).
  const int* value_exp;
  /// Floats of a compact state: S panels [panels][m][Br], then z[m].
  index_t state_floats() const { return panels * m * Br + round_up(m, 16); }
};

/// A running state in units of exp(-shift): S panels (panel stride `panel_stride` floats), z.
struct state_ref {
  float* s;
  index_t panel_stride;
  float* z;
  float* shift;
};

/// state *= factor (S and z).
inline void scale_state(const dims& dm, const state_ref& st, float factor) {
  for (index_t p = 0; p < dm.panels; ++p)
    for (index_t t = 0; t < dm.m * Br; ++t) st.s[p * st.panel_stride + t] *= factor;
  for (index_t l = 0; l < dm.m; ++l) st.z[l] *= factor;
}

/// Raises a state's shift to at least `to`, rescaling what it holds.
inline void raise_shift(const dims& dm, const state_ref& st, float to) {
  if (!(to > *st.shift)) return;
  // The first keys find an empty state (shift -inf): exp(-inf) = 0 leaves it empty.
  scale_state(dm, st, *st.shift == neg_inf ? 0.f : std::exp(*st.shift - to));
  *st.shift = to;
}

/// into += from (both compact states), in into's units after raising its shift.
inline void add_state(const dims& dm, const state_ref& into, const float* from, float from_shift) {
  if (from_shift == neg_inf) return;  // no keys
  raise_shift(dm, into, from_shift);
  const float factor = std::exp(from_shift - *into.shift);
  const float* fz = from + dm.panels * dm.m * Br;
  for (index_t p = 0; p < dm.panels; ++p)
    for (index_t t = 0; t < dm.m * Br; ++t) into.s[p * into.panel_stride + t] += factor * from[p * dm.m * Br + t];
  for (index_t l = 0; l < dm.m; ++l) into.z[l] += factor * fz[l];
}

/// Per-worker buffers for chunks of up to C rows (offsets in floats, 64-byte multiples).
struct chunk_buffers {
  float *kf, *kft, *sv, *prod, *z, *zsum, *rows, *tile, *qoff, *den, *vrow, *feat;
  index_t sv_panel, row_stride;

  template <class Map>
  static index_t floats(const dims& dm, const Map&) {
    return layout(dm, nullptr, Map::scratch_floats(dm.chunk_pad, dm.d)).second;
  }
  template <class Map>
  static chunk_buffers in(const dims& dm, const Map&, float* base) {
    return layout(dm, base, Map::scratch_floats(dm.chunk_pad, dm.d)).first;
  }

 private:
  static std::pair<chunk_buffers, index_t> layout(const dims& dm, float* base, index_t feature_scratch) {
    chunk_buffers b{};
    const index_t C = dm.chunk_pad, m = dm.m;
    b.sv_panel = (m + C) * Br;
    b.row_stride = round_up(m + C, 16);
    index_t at = 0;
    const auto take = [&](float*& p, index_t n) {
      p = base ? base + at : nullptr;
      at += round_up(n, 16);
    };
    take(b.kf, C * m);
    take(b.kft, C * m);  // C / Br panels of [m][Br]
    take(b.sv, dm.panels * b.sv_panel);
    take(b.prod, m * Br);
    take(b.z, m);
    take(b.zsum, m);
    take(b.rows, C * b.row_stride);
    take(b.tile, C * Br);
    take(b.qoff, C);
    take(b.den, C);
    take(b.vrow, dm.dv);
    take(b.feat, feature_scratch);
    return {b, at};
  }
};

/// Features of keys [k0, k0 + n) into buf.kf (rows of m) with the state's shift raised to cover
/// them, and their values into the V part of buf.sv (rows m.. of each panel, zero lanes and
/// rows past the end).
template <class Map, class K, class Vt>
void load_key_chunk(const dims& dm, const Map& map, const tensor_view<const K>& k, const tensor_view<const Vt>& v,
                    index_t b, index_t hk, index_t k0, index_t n, const chunk_buffers& buf, const state_ref& st) {
  float key_max;
  map.keys(k, b, hk, k0, n, buf.kf, dm.m, key_max, buf.feat);
  raise_shift(dm, st, key_max);
  map.finish_keys(buf.kf, n, dm.m, *st.shift);
  for (index_t j = 0; j < dm.chunk_pad; ++j) {
    if (j < n) {
      simd::to_float_row(v.row(b, hk, k0 + j), v.stride(dim_axis), dm.dv, buf.vrow);
      if (const int e = dm.value_exp[b * dm.kv_heads + hk]; e != 0)
        for (index_t c = 0; c < dm.dv; ++c) buf.vrow[c] = std::ldexp(buf.vrow[c], -e);
    }
    for (index_t p = 0; p < dm.panels; ++p) {
      float* dst = buf.sv + p * buf.sv_panel + (dm.m + j) * Br;
      const index_t width = j < n ? std::min(Br, dm.dv - p * Br) : 0;
      std::copy(buf.vrow + p * Br, buf.vrow + p * Br + width, dst);
      std::fill(dst + width, dst + Br, 0.f);
    }
  }
}

/// state += Kc^T Vc and z += Kc^T 1 for the chunk loaded in buf (n keys): the product goes
/// to a zeroed buffer first, then into the state.
inline void absorb_chunk(const dims& dm, const chunk_buffers& buf, index_t n, const state_ref& st) {
  for (index_t p = 0; p < dm.panels; ++p) {
    std::fill(buf.prod, buf.prod + dm.m * Br, 0.f);
    simd::pv_tile<G>(buf.sv + p * buf.sv_panel + dm.m * Br, static_cast<int>(n), buf.kf, dm.m, dm.m, buf.prod);
    float* s = st.s + p * st.panel_stride;
    for (index_t t = 0; t < dm.m * Br; ++t) s[t] += buf.prod[t];
  }
  std::fill(buf.zsum, buf.zsum + dm.m, 0.f);
  for (index_t j = 0; j < n; ++j)
    for (index_t l = 0; l < dm.m; ++l) buf.zsum[l] += buf.kf[j * dm.m + l];
  for (index_t l = 0; l < dm.m; ++l) st.z[l] += buf.zsum[l];
}

/// The partial state of keys [k0, k1) of (b, hk) into a compact state (zeroed here).
template <class Map, class K, class Vt>
void partial_state(const dims& dm, const Map& map, const tensor_view<const K>& k, const tensor_view<const Vt>& v,
                   index_t b, index_t hk, index_t k0, index_t k1, float* state, float& shift, const chunk_buffers& buf) {
  std::fill(state, state + dm.state_floats(), 0.f);
  shift = neg_inf;
  const state_ref st{state, dm.m * Br, state + dm.panels * dm.m * Br, &shift};
  for (index_t c0 = k0; c0 < k1; c0 += dm.chunk) {
    const index_t n = std::min(dm.chunk, k1 - c0);
    load_key_chunk(dm, map, k, v, b, hk, c0, n, buf, st);
    absorb_chunk(dm, buf, n, st);
  }
}

/// Outputs of queries [i0, i0 + n) of query head hq from the rows of buf.rows: columns
/// [0, m) hold phi(q_i), columns [m, m + keys) the masked A_i (keys > 0: the V part of
/// buf.sv holds the window's values). Row offsets in buf.qoff.
template <class O>
void read_out(const dims& dm, const chunk_buffers& buf, const state_ref& st, index_t keys, float eps, index_t b,
              index_t hq, index_t i0, index_t n, const tensor_view<O>& out, const options& o) {
  const index_t depth = dm.m + round_up(keys, Br);
  const features::power_of_two unit(dm.value_exp[b * dm.kv_heads + hq / dm.group]);
  for (index_t i = 0; i < n; ++i) {
    const float* r = buf.rows + i * buf.row_stride;
    float den = dot(r, st.z, dm.m);
    for (index_t j = 0; j < keys; ++j) den += r[dm.m + j];
    buf.den[i] = den;
  }
  for (index_t p = 0; p < dm.panels; ++p) {
    // The state's panel sits right above the window's values: [S_p; Vc_p] in one panel.
    const float* panel = st.s + p * st.panel_stride;
    simd::qk_tile<G>(panel, buf.rows, buf.row_stride, depth, static_cast<int>(n), buf.tile);
    for (index_t i = 0; i < n; ++i) {
      const float offset = buf.qoff[i] + *st.shift;  // log of the common factor taken out
      const float total = buf.den[i] + eps * std::exp(-offset);
      const float inv = total > 0 ? 1.f / total : 0.f;  // den = 0 with eps = 0: no key weight
      O* row = out.row(b, hq, i0 + i) + p * Br * out.stride(dim_axis);
      const index_t width = std::min(Br, dm.dv - p * Br);
      if constexpr (std::is_same_v<O, float>) {
        if (width == Br && out.stride(dim_axis) == 1 && unit.exact() && std::isfinite(inv)) {
          for (index_t e = 0; e < Br; e += W) (V::load_aligned(buf.tile + i * Br + e) * V(inv)).store_unaligned(row + e);
          continue;
        }
      }
      for (index_t e = 0; e < width; ++e)  // a subnormal total: divide (its reciprocal is inf)
        row[e * out.stride(dim_axis)] =
            from_float<O>(unit(std::isfinite(inv) ? buf.tile[i * Br + e] * inv : buf.tile[i * Br + e] / total));
    }
  }
  if (o.lse)
    for (index_t i = 0; i < n; ++i)
      o.lse[(b * dm.q_heads + hq) * dm.nq + i0 + i] =
          buf.den[i] > 0 ? std::log(buf.den[i]) + buf.qoff[i] + *st.shift : neg_inf;
}

/// Query features of [i0, i0 + n) of head hq into columns [0, m) of buf.rows, offsets in qoff.
template <class Map, class Q>
void load_queries(const Map& map, const tensor_view<const Q>& q, index_t b, index_t hq, index_t i0, index_t n,
                  const chunk_buffers& buf) {
  map.queries(q, b, hq, i0, n, buf.rows, buf.row_stride, buf.qoff, buf.feat);
}

/// Runs query chunks [c_begin, c_end) of (b, hk) causally, from the state of every key before
/// the first chunk's window (`initial`, compact).
template <class Map, class Q, class K, class Vt, class O>
void causal_segment(const dims& dm, const Map& map, float eps, const tensor_view<const Q>& q,
                    const tensor_view<const K>& k, const tensor_view<const Vt>& v, const tensor_view<O>& out,
                    const options& o, index_t b, index_t hk, index_t c_begin, index_t c_end, const float* initial,
                    float initial_shift, const chunk_buffers& buf) {
  float shift = neg_inf;
  const state_ref running{buf.sv, buf.sv_panel, buf.z, &shift};
  for (index_t p = 0; p < dm.panels; ++p) std::fill(buf.sv + p * buf.sv_panel, buf.sv + p * buf.sv_panel + dm.m * Br, 0.f);
  std::fill(buf.z, buf.z + dm.m, 0.f);
  add_state(dm, running, initial, initial_shift);
  const auto clamp_key = [&](index_t t) { return std::clamp<index_t>(t, 0, dm.nk); };
  for (index_t c = c_begin; c < c_end; ++c) {
    const index_t i0 = c * dm.chunk, n = std::min(dm.chunk, dm.nq - i0);
    const index_t k0 = clamp_key(i0 + dm.off), keys = clamp_key(i0 + n + dm.off) - k0;
    if (keys > 0) load_key_chunk(dm, map, k, v, b, hk, k0, keys, buf, running);
    // K'c transposed into panels of Br keys ([kp][m][Br]) for A = Qc Kc^T.
    for (index_t j0 = 0; j0 < round_up(keys, Br); j0 += W) {
      const float* rows[W];
      for (index_t j = 0; j < W; ++j) rows[j] = j0 + j < keys ? buf.kf + (j0 + j) * dm.m : nullptr;
      simd::rows_to_lanes<W>(rows, dm.m, 1.f, buf.kft + (j0 / Br) * dm.m * Br + j0 % Br, Br);
    }
    for (index_t g = 0; g < dm.group; ++g) {
      const index_t hq = hk * dm.group + g;
      load_queries(map, q, b, hq, i0, n, buf);
      for (index_t kp = 0; kp * Br < keys; ++kp) {
        simd::qk_tile<G>(buf.kft + kp * dm.m * Br, buf.rows, buf.row_stride, dm.m, static_cast<int>(n), buf.tile);
        for (index_t i = 0; i < n; ++i) {
          // query i0 + i sees key k0 + j when k0 + j <= i0 + i + off
          const index_t visible = std::min(i0 + i + dm.off - k0 + 1, keys) - kp * Br;
          keep_first(buf.tile + i * Br, visible, buf.rows + i * buf.row_stride + dm.m + kp * Br);
        }
      }
      read_out(dm, buf, running, keys, eps, b, hq, i0, n, out, o);
    }
    if (keys > 0) absorb_chunk(dm, buf, keys, running);
  }
}

/// Key ranges whose partial states are summed, in order: range r of a (batch, kv head) pair
/// covers [first[r], first[r + 1]); segment s starts from the sum of ranges [0, ends[s]).
struct key_pieces {
  std::vector<index_t> first, ends;
  index_t count() const { return static_cast<index_t>(first.size()) - 1; }
};

/// Splits [0, boundary[0]), [boundary[0], boundary[1]), ... into pieces of at most piece_keys.
inline key_pieces split_keys(const std::vector<index_t>& boundaries) {
  key_pieces kp;
  kp.first.push_back(0);
  for (const index_t end : boundaries) {
    for (index_t at = kp.first.back(); end - at > piece_keys; at += piece_keys) kp.first.push_back(at + piece_keys);
    if (end > kp.first.back()) kp.first.push_back(end);
    kp.ends.push_back(kp.count());
  }
  return kp;
}

/// Linear attention on the CPU (arguments validated).
template <class FeatureMap, class Q, class K, class Vt, class O>
void run(const linear<FeatureMap>& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
         const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  dims dm{};
  dm.batch = q.batch(), dm.q_heads = q.heads(), dm.kv_heads = k.heads(), dm.group = dm.q_heads / dm.kv_heads;
  dm.nq = q.seq(), dm.nk = k.seq(), dm.d = q.dim(), dm.dv = v.dim(), dm.off = dm.nk - dm.nq;
  if (dm.batch == 0 || dm.nq == 0) return;
  float scale = 1;
  if constexpr (std::is_same_v<FeatureMap, favor_plus>) scale = effective_scale(p.feature_map.scale, dm.d);
  const features::binding<FeatureMap> map(p.feature_map, scale, dm.d, false);
  dm.m = map.features();
  dm.panels = (dm.dv + Br - 1) / Br;
  dm.chunk = p.chunk > 0 ? std::min(p.chunk, piece_keys) : default_chunk;
  dm.chunk_pad = round_up(dm.chunk, Br);
  const index_t buffer_floats = chunk_buffers::floats(dm, map), state_floats = dm.state_floats();
  const index_t pairs = dm.batch * dm.kv_heads;
  const std::vector<int> value_exp = features::value_exponents(v, o.threads);
  dm.value_exp = value_exp.data();

  // Causal: segments of query chunks run in parallel when (batch, kv head) pairs are fewer
  // than the hardware threads, each starting from the keys before its first window.
  // Non-causal: one state over all keys.
  const index_t chunks = (dm.nq + dm.chunk - 1) / dm.chunk;
  const index_t segments =
      p.causal ? std::clamp<index_t>(hardware_threads() / pairs, 1, std::max<index_t>(1, chunks / 4)) : 1;
  const auto segment_chunk = [&](index_t s) { return s * chunks / segments; };
  const auto window_start = [&](index_t c) { return std::clamp<index_t>(c * dm.chunk + dm.off, 0, dm.nk); };
  std::vector<index_t> boundaries;
  for (index_t s = 0; s < segments; ++s) boundaries.push_back(p.causal ? window_start(segment_chunk(s)) : dm.nk);
  const key_pieces kp = split_keys(boundaries);
  const index_t pieces = kp.count();

  // The states in the calling thread's arena (the micro-kernels read them aligned); workers
  // lease arenas of their own.
  scratch_lease states;
  float* const partial = static_cast<float*>(
      states.reserve(sizeof(float) * static_cast<std::size_t>((pieces + segments) * pairs * state_floats)));
  float* const start = partial + pieces * pairs * state_floats;
  std::vector<float> partial_shift(static_cast<std::size_t>(pairs * pieces));
  parallel_for(pairs * pieces, o.threads, [&](index_t item) {
    scratch_lease lease;
    const chunk_buffers buf = chunk_buffers::in(dm, map, static_cast<float*>(lease.reserve(sizeof(float) * buffer_floats)));
    const index_t pair = item / pieces, piece = item % pieces;
    partial_state(dm, map, k, v, pair / dm.kv_heads, pair % dm.kv_heads, kp.first[static_cast<std::size_t>(piece)],
                  kp.first[static_cast<std::size_t>(piece + 1)], partial + item * state_floats,
                  partial_shift[static_cast<std::size_t>(item)], buf);
  });

  // Each segment's starting state: the pieces before its first window, added in order.
  std::fill(start, start + pairs * segments * state_floats, 0.f);
  std::vector<float> start_shift(static_cast<std::size_t>(pairs * segments), neg_inf);
  for (index_t pair = 0; pair < pairs; ++pair)
    for (index_t s = 0; s < segments; ++s) {
      const index_t at = pair * segments + s;
      float* into = start + at * state_floats;
      const state_ref st{into, dm.m * Br, into + dm.panels * dm.m * Br, &start_shift[static_cast<std::size_t>(at)]};
      for (index_t piece = 0; piece < kp.ends[static_cast<std::size_t>(s)]; ++piece) {
        const index_t item = pair * pieces + piece;
        add_state(dm, st, partial + item * state_floats, partial_shift[static_cast<std::size_t>(item)]);
      }
    }

  if (p.causal) {
    parallel_for(pairs * segments, o.threads, [&](index_t item) {
      scratch_lease lease;
      const chunk_buffers buf = chunk_buffers::in(dm, map, static_cast<float*>(lease.reserve(sizeof(float) * buffer_floats)));
      const index_t pair = item / segments, s = item % segments;
      causal_segment(dm, map, p.eps, q, k, v, out, o, pair / dm.kv_heads, pair % dm.kv_heads, segment_chunk(s),
                     segment_chunk(s + 1), start + item * state_floats, start_shift[static_cast<std::size_t>(item)], buf);
    });
    return;
  }
  // Non-causal: every query reads the whole state, chunk by chunk of queries.
  parallel_for(dm.batch * dm.q_heads * chunks, o.threads, [&](index_t item) {
    scratch_lease lease;
    const chunk_buffers buf = chunk_buffers::in(dm, map, static_cast<float*>(lease.reserve(sizeof(float) * buffer_floats)));
    const index_t c = item % chunks, hq = item / chunks % dm.q_heads, b = item / chunks / dm.q_heads;
    const index_t pair = b * dm.kv_heads + hq / dm.group, i0 = c * dm.chunk, n = std::min(dm.chunk, dm.nq - i0);
    float* state = start + pair * state_floats;
    const state_ref st{state, dm.m * Br, state + dm.panels * dm.m * Br, &start_shift[static_cast<std::size_t>(pair)]};
    load_queries(map, q, b, hq, i0, n, buf);
    read_out(dm, buf, st, 0, p.eps, b, hq, i0, n, out, o);
  });
}

}  // namespace attnkit::detail::linear_engine
