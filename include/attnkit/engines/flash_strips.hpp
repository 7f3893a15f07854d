/// \file
/// Strip tiles of the flash engine, for neighborhood windows that are small along the last
/// axis (2-D/3-D kernels like 7x7 or 13x13). A query tile of the block-sparse path is a patch
/// whose rows all read the union of their windows, which for small stride-1 windows is 2-4x
/// the keys each row keeps. Here a tile is instead a strip of W consecutive queries along
/// the last axis (W: the lanes of a vector, 16 with AVX-512, 8 with AVX2, 4 with NEON and SSE),
/// one per lane, and lane r reads key `start(r) + o` at window offset o: every
/// lane reads exactly its own window, so no work is spent on keys outside it (the "speed of
/// light" of GNA, Hassani et al. 2025, reached without requiring strides).
///
/// Each worker keeps, for the band of strips it sweeps, the key lines their windows reach,
/// built when first needed and kept in L2 while the sweep reuses them: K as transposed
/// segments (one row of positions per channel), V as float rows in memory order (float V with
/// whole-vector rows is read in place instead). In q.k the keys of a window offset come, for
/// interior strips, from a lane shift of two vectors loaded once per segment row (valignd,
/// AVX-512) or an unaligned load, and from a load and a permute for border, causal and strided
/// strips (see `lanes`). p.v runs
/// per lane pair along the channels, the weights broadcast: neighbouring lanes' windows are
/// one row apart (or equal, at a border), so each value row is loaded once for both, and
/// neither V nor the outputs are transposed. A task holds up to three strips on neighbouring
/// lines, which share every K vector and value row they use (up to three FMAs per key vector;
/// three strips sped 13 x 13 and 3 x 7 x 7 windows up 4-6% over two). The rows a later task
/// reads from memory (queries, K/V rows, outputs) are prefetched a line at a time from the
/// inner loops of the current one.
/// The window is small, so each strip's softmax is exact in two passes (scores, then
/// max/exp/sum, then P.V), with no rescaling.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/arena.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/arch.hpp"
#include "../simd/convert.hpp"
#include "../simd/exp.hpp"
#include "../simd/microkernels.hpp"
#include "../simd/permute.hpp"
#include "../simd/transpose.hpp"
#include "../variants/neighborhood.hpp"
#include "flash_plan.hpp"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace attnkit::detail::flash::strips {

using A = simd::wide_arch;
using V = simd::vec<A>;
using IV = simd::ivec<A>;
inline constexpr int W = static_cast<int>(V::size);  // lanes: queries of one strip
inline constexpr int tile_rows_of_many_rows = 3 * W;  // the block-sparse path's tiles (flash.hpp many_rows)

/// Accumulators the unrolled kernels may keep in registers: q.k of N strips holds N x OB
/// scores, N queries and a key (and, shifting lanes on AVX-512, two more vectors); p.v of N
/// strips and L lanes holds L x N x CB outputs, CB value vectors and a weight.
inline constexpr int registers = simd::registers<A>;
inline constexpr int shift_registers = XSIMD_WITH_AVX512F ? 2 : 0;
template <int N>
inline constexpr int max_offsets_per_pass = (registers - N - 1 - shift_registers) / N;
template <int N, int L>
inline constexpr int max_vectors_per_pass = (registers - 1) / (L * N + 1);

/// Can this pattern run on strips? The permute reaches 2W - 1 positions past start(0), which
/// holds for strides up to W along the last axis.
template <int Rank>
bool applicable(const neighborhood<Rank>& p) {
  return p.stride[Rank - 1] <= W;
}

/// Do strips do less work than the block-sparse tiles for this pattern? Both are counted in
/// lane-keys (every lane of a tile or strip costs its keys, used or not), with the tiles'
/// cost from the plan the block-sparse path would build (on tiles of 48 rows); `strip_penalty`
/// covers the transposed copies and the permutes of border strips (measured on 2-D and 3-D
/// benchmark shapes, where strips win for 3x7x7, 7x7 and 13x13 windows and lose to tiles for
/// a 1-D window of 512).
template <int Rank>
bool preferred(const neighborhood<Rank>& p) {
  if (!applicable(p)) return false;
  constexpr double strip_penalty = 1.15;
  problem pb{};
  pb.nq = pb.nk = grid_size<Rank>(p.shape);
  pb.group = 1;
  const double tiles = flash_plan<neighborhood<Rank>>(p, pb, tile_rows_of_many_rows).lane_keys();
  double strips = static_cast<double>(pb.nq / p.shape[Rank - 1]);
  for (int a = 0; a < Rank; ++a) strips *= static_cast<double>(p.kernel[a]);
  double lanes = 0;
  for (index_t g = 0; g < p.dilation[Rank - 1]; ++g)
    lanes += W * std::ceil(static_cast<double>((p.shape[Rank - 1] - g + p.dilation[Rank - 1] - 1) / p.dilation[Rank - 1]) / W);
  return strips * lanes * strip_penalty < tiles;
}

/// dst[c * dst_stride + i] = scale * rows[min(i, n - 1) * row_stride + c] for i < W, c < depth:
/// W rows transposed (the last one repeated).
inline void transpose_rows(const float* rows, index_t row_stride, int n, index_t depth, float scale, float* dst,
                           index_t dst_stride) {
  const float* row_of[W];
  for (int i = 0; i < W; ++i) row_of[i] = rows + std::min(i, n - 1) * row_stride;
  simd::rows_to_lanes<W>(row_of, depth, scale, dst, dst_stride);
}

/// Rows first, first + step, ... (n <= W of them) of head (b, h) of t, as float rows with
/// unit stride: in place when t is float with unit stride along dim, else converted into buf.
template <class T>
const float* rows_as_float(const tensor_view<const T>& t, index_t b, index_t h, index_t first, index_t step, int n,
                           float* buf, index_t& row_stride) {
  if constexpr (std::is_same_v<T, float>) {
    // One row: any stride does (the product may overflow); more: the rows lie in t.
    const index_t stride = n > 1 ? step * t.stride(seq_axis) : 0;
    if (t.stride(dim_axis) == 1 && saturating_mul(stride, W) < (index_t(1) << 31)) {
      row_stride = stride;
      return t.row(b, h, first);
    }
  }
  for (int i = 0; i < n; ++i) simd::to_float_row(t.row(b, h, first + i * step), t.stride(dim_axis), t.dim(), buf + i * t.dim());
  row_stride = t.dim();
  return buf;
}

/// Key lines for one band of strips: a slot holds, for one key line, the in-group positions
/// [start, start + width) of the column's dilation group, transposed (fill_segment: K) or as
/// rows (fill_rows: V). Loads and permutes run past a window's end, into positions that hold
/// whatever the slot held before (zero when new, else other keys): q.k reads them only for
/// offsets that the softmax replaces by -inf (lanes whose window is shorter than the kernel)
/// or for lanes past the strip's end, which write nothing. p.v weighs V rows past a window by
/// zero, so those rows are zero past the group's end (a stale NaN times zero is NaN).
/// Slots are tagged by key line (tags < `tags`, each found through a table: in 3-D the cache
/// holds a whole sweep's lines, and searching the slots took about a quarter of the fills'
/// time); a line the current task needs and no slot holds replaces the least recently used
/// line the task does not need.
class line_cache {
 public:
  void reset(index_t slots, index_t depth, index_t width, index_t tags) {
    stride_ = depth * width + 16;  // one cache line more: slots do not alias the same cache sets
    data_.resize(static_cast<std::size_t>(slots * stride_ + 16));
    // Slots start on a cache line (rows too: width is a multiple of 16), so that the loads of
    // interior strips, at a multiple of 16 positions (see band::lead), are aligned.
    base_ = data_.data() + (16 - reinterpret_cast<std::uintptr_t>(data_.data()) / sizeof(float) % 16) % 16;
    line_.assign(static_cast<std::size_t>(slots), -1);
    used_.assign(static_cast<std::size_t>(slots), -1);
    slot_of_.assign(static_cast<std::size_t>(tags), -1);
  }

  bool holds(index_t line) const { return slot_of_[static_cast<std::size_t>(line)] >= 0; }

  /// Slots of lines[0, n) for task number `task` (increasing), filling missing ones with
  /// fill(line, slot): hits are claimed first, so a miss never evicts a line of this task.
  template <class Fill>
  void lookup(const index_t* lines, int n, index_t task, const float** slots, Fill&& fill) {
    for (int i = 0; i < n; ++i) {
      const index_t s = slot_of_[static_cast<std::size_t>(lines[i])];
      slots[i] = s >= 0 ? slot(static_cast<std::size_t>(s)) : nullptr;
      if (s >= 0) used_[static_cast<std::size_t>(s)] = task;
    }
    for (int i = 0; i < n; ++i) {
      if (slots[i]) continue;
      std::size_t victim = 0;
      for (std::size_t s = 1; s < line_.size(); ++s)
        if (used_[s] < used_[victim]) victim = s;
      if (line_[victim] >= 0) slot_of_[static_cast<std::size_t>(line_[victim])] = -1;
      slot_of_[static_cast<std::size_t>(lines[i])] = static_cast<index_t>(victim);
      line_[victim] = lines[i];
      used_[victim] = task;
      fill(lines[i], slot(victim));
      slots[i] = slot(victim);
    }
  }

 private:
  float* slot(std::size_t s) { return base_ + static_cast<index_t>(s) * stride_; }
  index_t stride_ = 0;
  std::vector<float> data_;
  float* base_ = nullptr;
  std::vector<index_t> line_, used_, slot_of_;
};

/// Cache lines a task will need soon (its output rows, the next task's queries, the rows of
/// key lines a later task will transpose), requested one at a time, evenly spread over the
/// inner loops of the current task (which call drip() once per channel of q.k and per offset
/// of p.v), so that DRAM latency overlaps its arithmetic: requests in bursts fill the miss
/// buffers and stall the loop that issues them.
class prefetch_queue {
 public:
  void reset(std::size_t ranges) { ranges_.resize(ranges), size_ = 0, lines_ = 0; }
  void clear() { size_ = 0, lines_ = 0; }

  /// Rows first, first + step, ... (n of them) of head (b, h) of t (for writing when `write`),
  /// when their channels are contiguous.
  template <class T>
  void add_rows(const tensor_view<T>& t, index_t b, index_t h, index_t first, index_t step, index_t n, bool write) {
    if (t.stride(dim_axis) != 1 || n <= 0) return;
    const std::size_t row = static_cast<std::size_t>(t.dim()) * sizeof(T);
    if (n == 1 || step * t.stride(seq_axis) == t.dim())  // one row: any stride
      return add(t.row(b, h, first), static_cast<std::size_t>(n) * row, write);
    for (index_t i = 0; i < n; ++i) add(t.row(b, h, first + i * step), row, write);
  }

  /// Cache lines [first, end) (first | 1: for writing).
  struct range {
    std::uintptr_t first, end;
  };

  /// Issues the queued lines, one every `every` calls.
  struct cursor {
    const range *next, *last;
    std::uintptr_t at = 0, end = 0;
    bool write = false;
    std::size_t every, countdown;
    ATTNKIT_ALWAYS_INLINE void drip() {
      if (--countdown != 0) return;
      countdown = every;
      if (at == end) {
        if (next == last) return;
        at = next->first & ~std::uintptr_t(1), end = next->end, write = next->first & 1, ++next;
      }
      if (write)
        __builtin_prefetch(reinterpret_cast<const void*>(at), 1, 3);
      else
        __builtin_prefetch(reinterpret_cast<const void*>(at), 0, 3);
      at += 64;
    }
  };
  /// A cursor spreading the queue over `drips` calls.
  cursor start(std::size_t drips) const {
    const std::size_t every = std::max<std::size_t>(1, drips / std::max<std::size_t>(lines_, 1));
    return {ranges_.data(), ranges_.data() + size_, 0, 0, false, every, every};
  }

 private:
  void add(const void* p, std::size_t bytes, bool write) {
    if (size_ == ranges_.size()) return;
    const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(63);
    const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(p) + bytes + 63) & ~std::uintptr_t(63);
    ranges_[size_++] = {first | write, end};
    lines_ += (end - first) / 64;
  }

  std::vector<range> ranges_;
  std::size_t size_ = 0, lines_ = 0;
};

/// Writes positions [start, start + span) of dilation group g of key line `line` of t[b, h]
/// into dst transposed (row stride width >= lead + span per channel, position start at column
/// lead); positions past the group's end keep what they held (see line_cache). Zeroing them,
/// a call to memset per channel, took 1.5-2% of the time of 7 x 7 and 13 x 13 windows.
template <int Rank, class T>
void fill_segment(const neighborhood<Rank>& p, const tensor_view<const T>& t, index_t b, index_t h, index_t line,
                  index_t g, index_t start, index_t span, index_t lead, index_t width, float* buf, float* dst) {
  const index_t len = p.shape[Rank - 1], d = p.dilation[Rank - 1], group_len = (len - g + d - 1) / d;
  const index_t valid = std::clamp<index_t>(group_len - start, 0, span);
  // Each block of W rows brings the next one to L1 (the queue's prefetches mostly left them
  // in L2 by now): 1-2% of 7 x 7 and 3 x 7 x 7 windows.
  simd::rows_ahead next_rows;
  if (t.stride(dim_axis) == 1 && valid > 0)
    next_rows = {reinterpret_cast<std::uintptr_t>(t.row(b, h, line * len + g + d * start)),
                 simd::wrapping_bytes(d, t.stride(seq_axis), sizeof(T)),
                 static_cast<index_t>(t.dim() * static_cast<index_t>(sizeof(T)))};
  for (index_t u = 0; u < valid; u += W) {
    // The rows were prefetched by earlier tasks (prefetch_queue): read across, in place.
    const int n = static_cast<int>(std::min<index_t>(W, valid - u));
    for (index_t i = u + W; i < std::min(valid, u + 2 * W); ++i) next_rows.row(static_cast<int>(i));
    index_t row_stride;
    const float* rows = rows_as_float(t, b, h, line * len + g + d * (start + u), d, n, buf, row_stride);
    transpose_rows(rows, row_stride, n, t.dim(), 1.f, dst + lead + u, width);
  }
}

/// Writes positions [start, start + span) of dilation group g of key line `line` of t[b, h]
/// into dst as float rows of `stride` floats (channels past the head dimension zero), position
/// start at row lead, and zero rows past them up to row `rows`.
template <int Rank, class T>
void fill_rows(const neighborhood<Rank>& p, const tensor_view<const T>& t, index_t b, index_t h, index_t line,
               index_t g, index_t start, index_t span, index_t lead, index_t rows, index_t stride, float* dst) {
  const index_t len = p.shape[Rank - 1], d = p.dilation[Rank - 1], group_len = (len - g + d - 1) / d;
  const index_t valid = std::clamp<index_t>(group_len - start, 0, span);
  for (index_t u = 0; u < valid; ++u) {
    float* row = dst + (lead + u) * stride;
    simd::to_float_row(t.row(b, h, line * len + g + d * (start + u)), t.stride(dim_axis), t.dim(), row);
    std::fill(row + t.dim(), row + stride, 0.f);
  }
  std::fill(dst + (lead + valid) * stride, dst + rows * stride, 0.f);
}

/// Calls f(std::integral_constant<int, B>) for the first (largest) block size B <= n of the
/// list, which ends with 1, and returns B. Few sizes keep the unrolled kernels few: odd window
/// widths (the usual ones) get one pass, others two or three.
template <int B, int... Smaller, class F>
ATTNKIT_ALWAYS_INLINE int largest_block(int n, F&& f) {
  if constexpr (sizeof...(Smaller) == 0) {
    static_assert(B == 1, "the list ends with 1");
    f(std::integral_constant<int, 1>{});
    return 1;
  } else {
    if (n >= B) {
      f(std::integral_constant<int, B>{});
      return B;
    }
    return largest_block<Smaller...>(n, f);
  }
}

/// Calls f(std::integral_constant<int, i>) for i = 0, 1, ..., N - 1.
template <class F, int... I>
ATTNKIT_ALWAYS_INLINE void static_for(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
ATTNKIT_ALWAYS_INLINE void static_for(F&& f) {
  static_for(f, std::make_integer_sequence<int, N>{});
}

/// Where lane r finds the key of window offset O in a transposed row.
enum class lanes {
  shifted,       // at r + O (interior strips)
  permuted,      // at idx[r] + O, idx[r] < W (border, causal): a one-source permute of one load
  permuted_far,  // at idx[r] + O, idx[r] < 2W (strided windows): a two-source permute of two loads
};

/// The keys of one transposed row for window offsets O = 0, 1, ... from `at`. Shifted lanes
/// with AVX-512 derive 16 offsets from two loads in registers (valignd), where one unaligned
/// load per offset, nearly always across two cache lines, held the FMAs to about half their
/// rate; elsewhere (a vector of 32 bytes or less crosses a cache line at most every other
/// offset) they load per offset. Permuted lanes load per offset: a permute of registers kept
/// for all offsets would need a register copy per offset (the two-source permute overwrites
/// an operand).
template <lanes L>
struct row_keys {
#if XSIMD_WITH_AVX512F
  static constexpr bool shift_in_registers = L == lanes::shifted;
#else
  static constexpr bool shift_in_registers = false;
#endif
  const float* row = nullptr;
  V lo, hi;  // shift_in_registers: positions [0, 2W)
  row_keys() = default;
  explicit ATTNKIT_ALWAYS_INLINE row_keys(const float* at) : row(at) {
    if constexpr (shift_in_registers) lo = V::load_unaligned(at), hi = V::load_unaligned(at + W);
  }

  template <int O>  // O < W when shifted
  ATTNKIT_ALWAYS_INLINE V at([[maybe_unused]] const simd::lane_permutation& idx) const {
    if constexpr (L == lanes::permuted_far)
      return idx.of(V::load_unaligned(row + O), V::load_unaligned(row + O + W));
    else if constexpr (L == lanes::permuted)
      return idx.of(V::load_unaligned(row + O));
    else if constexpr (!shift_in_registers)
      return V::load_unaligned(row + O);
    else if constexpr (O == 0)
      return lo;
#if XSIMD_WITH_AVX512F
    else
      return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), O));
#endif
  }
};

/// The rows are read in channel order at a large stride, which the hardware prefetchers
/// follow too late: ask for the positions of a row `prefetch_distance` channels ahead (past
/// the end of a line, the hint lands on the next line's rows or the padding: harmless).
inline constexpr index_t prefetch_distance = 12;
ATTNKIT_ALWAYS_INLINE void prefetch_rows_ahead(const float* row) {
  __builtin_prefetch(row, 0, 3);
  __builtin_prefetch(row + 2 * W - 1, 0, 3);
}

/// Scores of one key line for window offsets [o0, o0 + OB), for N strips sharing each key
/// vector: s[n][o][lane] = sum_c q[n][c][lane] * key(o)[c][lane]. The first pass over a line
/// (o0 == 0) prefetches its rows and drips the queue; later passes read the same rows.
template <int OB, int N, lanes L>
ATTNKIT_ALWAYS_INLINE void qk_line(const float* const* q, const float* krow, index_t padded, index_t depth,
                                   const simd::lane_permutation& idx, int o0, float* const* s,
                                   prefetch_queue::cursor& ahead) {
  const bool first_pass = o0 == 0;
  static_assert(OB <= max_offsets_per_pass<N>, "q.k accumulators fit the registers");
  V acc[N][OB];
  ATTNKIT_UNROLL for (int n = 0; n < N; ++n)
    ATTNKIT_UNROLL for (int o = 0; o < OB; ++o) acc[n][o] = V(0.f);
  for (index_t c = 0; c < depth; ++c) {
    const float* kr = krow + c * padded + o0;
    if (first_pass) {
      prefetch_rows_ahead(kr + prefetch_distance * padded);
      ahead.drip();
    }
    V qc[N];
    ATTNKIT_UNROLL for (int n = 0; n < N; ++n) qc[n] = simd::in_register(V::load_aligned(q[n] + c * W));
    const row_keys<L> keys(kr);
    static_for<OB>([&](auto o) ATTNKIT_INLINE_LAMBDA {
      constexpr int O = decltype(o)::value;
      // N FMAs per key vector, loaded once: folded into each FMA (GCC's choice), the loads,
      // half of them across a cache line, were the limit with 16 registers (AVX2).
      const V k = simd::in_register(keys.template at<O>(idx));
      ATTNKIT_UNROLL for (int n = 0; n < N; ++n) acc[n][O] = xsimd::fma(qc[n], k, acc[n][O]);
    });
  }
  ATTNKIT_UNROLL for (int n = 0; n < N; ++n)
    ATTNKIT_UNROLL for (int o = 0; o < OB; ++o) acc[n][o].store_aligned(s[n] + (o0 + o) * W);
}

/// Adds the share of key lines [0, lines) to output channels [c0, c0 + W CB) of lane r and,
/// when Pair, lane r + 1 of N strips, from value rows in memory order: o[n][lane][c] += sum
/// over lines and offsets of p[n][line][o][lane] * v(line, idx[lane] + o)[c], the weights
/// broadcast. Lane r + 1 starts Shift (0 or 1) rows after lane r, so each value row is loaded
/// once for the lanes of all strips that use it; line_rows[li] + first is lane r's first row
/// on line li.
template <int CB, bool Pair, int Shift, int N>
ATTNKIT_ALWAYS_INLINE void pv_lanes(const float* const* p, const float* const* line_rows, int lines, index_t first,
                                    int offsets, index_t vrow, index_t vstride, int r, index_t c0, float* const* out,
                                    prefetch_queue::cursor& ahead) {
  constexpr int L = Pair ? 2 : 1;
  static_assert(CB <= max_vectors_per_pass<N, L>, "p.v accumulators fit the registers");
  V acc[L][N][CB];
  ATTNKIT_UNROLL for (int l = 0; l < L; ++l)
    ATTNKIT_UNROLL for (int n = 0; n < N; ++n)
      ATTNKIT_UNROLL for (int c = 0; c < CB; ++c) acc[l][n][c] = V::load_aligned(out[n] + (r + l) * vstride + c0 + c * W);
  const float* pl[N];
  ATTNKIT_UNROLL for (int n = 0; n < N; ++n) pl[n] = p[n];
  for (int li = 0; li < lines; ++li) {
    const float* rows = line_rows[li] + first;
    // Row j: lane r at offset j, lane r + 1 at offset j - Shift.
    const auto row = [&](int j, auto first_lane, auto second_lane) ATTNKIT_INLINE_LAMBDA {
      ahead.drip();
      V v[CB];
      ATTNKIT_UNROLL for (int c = 0; c < CB; ++c) v[c] = simd::in_register(V::load_unaligned(rows + j * vrow + c * W));
      const auto lane = [&](auto l, int o) ATTNKIT_INLINE_LAMBDA {
        constexpr int Ln = decltype(l)::value;
        ATTNKIT_UNROLL for (int n = 0; n < N; ++n) {
          const V w(pl[n][o * W + r + Ln]);
          ATTNKIT_UNROLL for (int c = 0; c < CB; ++c) acc[Ln][n][c] = xsimd::fma(w, v[c], acc[Ln][n][c]);
        }
      };
      if constexpr (decltype(first_lane)::value) lane(std::integral_constant<int, 0>{}, j);
      if constexpr (decltype(second_lane)::value) lane(std::integral_constant<int, L - 1>{}, j - Shift);
    };
    constexpr std::true_type yes{};
    constexpr std::false_type no{};
    if constexpr (Pair && Shift == 1) {
      row(0, yes, no);
      for (int j = 1; j < offsets; ++j) row(j, yes, yes);
      row(offsets, no, yes);
    } else {
      for (int j = 0; j < offsets; ++j) row(j, yes, std::integral_constant<bool, Pair>{});
    }
    ATTNKIT_UNROLL for (int n = 0; n < N; ++n) pl[n] += offsets * W;
  }
  ATTNKIT_UNROLL for (int l = 0; l < L; ++l)
    ATTNKIT_UNROLL for (int n = 0; n < N; ++n)
      ATTNKIT_UNROLL for (int c = 0; c < CB; ++c) acc[l][n][c].store_aligned(out[n] + (r + l) * vstride + c0 + c * W);
}

/// Strips per task, on neighbouring lines of the pair axis: each key vector of q.k and each
/// value row of p.v serves up to this many strips. Three fit the registers (with 32 of them,
/// 3 x 7 q.k accumulators and 2 lanes x 3 strips x 4 vectors in p.v; with 16, 3 x 3 and
/// 2 x 3 x 2).
inline constexpr int strips_per_task = 3;

/// Key lines a task reads at most: its strips' windows on the pair axis start at most a
/// stride apart.
template <int Rank>
index_t key_lines_per_task(const neighborhood<Rank>& p) {
  index_t lines = 1;
  for (int a = 0; a < Rank - 1; ++a) lines *= p.kernel[a] + (a == Rank - 2 ? (strips_per_task - 1) * p.stride[a] : 0);
  return lines;
}

/// Strips per band (the work item that sweeps the pair axis, keeping the key lines its
/// windows reach). Bands of 8 (a 128-wide line whole) transpose 1.2x fewer positions per
/// query than bands of 4: a segment is 16-32 positions wider than its band. But the sweep
/// reuses a band's lines only while they stay in L2, next to the queue's prefetches, the
/// queries and scores, on 4 KiB pages that do not spread evenly over the L2's sets. The lines
/// of a task and of the next step, each a K segment and V rows, take 3.2 MB for 13 x 13
/// windows at D 128 in bands of 8 and 2.0 MB in bands of 4. On an Intel host with 2 MiB of L2
/// per core (alternating calls in one process), bands of 4 ran that shape and 7 x 7 with
/// dilation 2 at D 128 10% faster, 13 x 13 at D 64 (1.6 MB in bands of 8) 5% and 7 x 7 at
/// D 128 3%, but 7 x 7 at D 64 (1.0 MB) only 1%; on a Zen 5 host (1 MiB), 13 x 13 at D 64 ran
/// at the same speed. So 4 where the lines of 8 take more than half the L2.
template <int Rank>
std::size_t strips_per_band(const neighborhood<Rank>& p, const problem& pb) {
  const index_t positions = W * 8 + 32 + (p.kernel[Rank - 1] - 1) * p.dilation[Rank - 1];
  const double bytes =
      static_cast<double>((key_lines_per_task(p) + strips_per_task) * positions * (pb.d + pb.dv)) * sizeof(float);
  return bytes > 0.5 * static_cast<double>(l2_cache_bytes()) ? 4 : 8;
}

/// Calls f(std::integral_constant<int, N>) for N = n in [1, strips_per_task].
template <class F>
ATTNKIT_ALWAYS_INLINE void with_strip_count(int n, F&& f) {
  static_assert(strips_per_task >= 1 && strips_per_task <= 3, "one to three strips per task");
  if (n == 1) f(std::integral_constant<int, 1>{});
  if constexpr (strips_per_task >= 2)
    if (n == 2) f(std::integral_constant<int, 2>{});
  if constexpr (strips_per_task >= 3)
    if (n == 3) f(std::integral_constant<int, 3>{});
}

/// The float work of one task once its queries are packed and its K/V lines cached: scores,
/// softmax and (unnormalised) p.v of its strips. It depends on neither the element types nor
/// the rank, and is not inlined: one copy of the unrolled kernels serves every instantiation of
/// run() (inlined into each, they multiplied the compile time tenfold).
struct task_work {
  std::array<const float*, strips_per_task> q;  // packed queries, transposed
  std::array<float*, strips_per_task> s, o;     // scores (lines x offsets x lanes), outputs (lanes x vstride)
  const float* const* krows;
  const float* const* vrows;
  const std::uint8_t* uses;  // per line, bit n: strip n keeps keys on it
  int strips, lines, offsets, lanes;
  index_t segment, d, vstride;
  index_t vrow;  // floats from one value row to the next: vstride in the line cache, else the tensor's
  const std::int32_t* idx;    // lane offsets, 64-byte aligned
  const std::int32_t* count;  // keys per lane, 64-byte aligned
  bool contiguous, full_windows;
  std::int32_t reach;  // the largest lane offset
};

ATTNKIT_NOINLINE inline void compute_task(const task_work& t, prefetch_queue::cursor ahead, V* max_out, V* sum_out) {
  const simd::lane_permutation perm(t.idx);
  const auto with_lanes = [&](auto&& f) {
    if (t.contiguous)
      f(std::integral_constant<lanes, lanes::shifted>{});
    else if (t.reach < W)
      f(std::integral_constant<lanes, lanes::permuted>{});
    else
      f(std::integral_constant<lanes, lanes::permuted_far>{});
  };
  // The strips that use line li, and their count.
  const auto users = [&](int li, int* which) {
    int n = 0;
    for (int s = 0; s < t.strips; ++s)
      if (t.uses[li] >> s & 1) which[n++] = s;
    return n;
  };

  // Scores, line by line (a line costs only the strips that use it).
  with_lanes([&](auto kind) {
    constexpr lanes L = decltype(kind)::value;
    for (int li = 0; li < t.lines; ++li) {
      int which[strips_per_task];
      const float* q[strips_per_task];
      float* s[strips_per_task];
      const int n = users(li, which);
      for (int i = 0; i < n; ++i)
        q[i] = t.q[which[i]], s[i] = t.s[which[i]] + static_cast<std::size_t>(li * t.offsets * W);
      with_strip_count(n, [&](auto strips) {
        constexpr int N = decltype(strips)::value;
        // Passes of at most as many offsets as the registers hold (2 x 13 or 3 x 7 accumulators
        // with 32 registers): the sizes that fit are instantiated, the others never run.
        const auto pass = [&](int o0, auto m) ATTNKIT_INLINE_LAMBDA {
          if constexpr (decltype(m)::value <= max_offsets_per_pass<N>)
            qk_line<decltype(m)::value, N, L>(q, t.krows[li], t.segment, t.d, perm, o0, s, ahead);
        };
        // Passes of equal size: a short last one (13 = 4 + 4 + 4 + 1 with 16 registers) has too
        // few accumulator chains to cover the FMA latency; 4 + 3 + 3 + 3 has 9 or more.
        constexpr int most = max_offsets_per_pass<N>;
        for (int o0 = 0, passes = (t.offsets + most - 1) / most; o0 < t.offsets; passes = std::max(passes - 1, 1)) {
          const int n_offsets = std::min(most, (t.offsets - o0 + passes - 1) / passes);
          if constexpr (N <= 2)
            o0 += largest_block<13, 11, 9, 7, 6, 5, 4, 3, 2, 1>(n_offsets, [&](auto m) { pass(o0, m); });
          else
            o0 += largest_block<7, 6, 5, 4, 3, 2, 1>(n_offsets, [&](auto m) { pass(o0, m); });
        }
      });
    }
  });

  // Exact softmax per strip over its lines; p = 0 at offsets a lane does not keep (p.v skips
  // the lines a strip does not use).
  const V lane_count = xsimd::to_float(IV::load_aligned(t.count));
  // Locals, not t's fields nor the caller's arrays: the score stores could alias those, and the
  // compiler reloaded them per vector (a store-to-load chain through the exponentials).
  const auto softmax = [lane_count, lines = t.lines, offsets = t.offsets, full = t.full_windows, uses = t.uses](
                           float* s, int sn, V& max_out, V& sum_out) {
    V mx(neg_inf);
    for (int li = 0; li < lines; ++li) {
      if (!(uses[li] >> sn & 1)) continue;
      float* sl = s + static_cast<std::size_t>(li * offsets) * W;
      for (int oo = 0; oo < offsets; ++oo) {
        V x = V::load_aligned(sl + oo * W);
        if (!full) {
          x = xsimd::select(V(static_cast<float>(oo)) < lane_count, x, V(neg_inf));
          x.store_aligned(sl + oo * W);
        }
        mx = xsimd::max(mx, x);
      }
    }
    V sum(0.f);
    for (int li = 0; li < lines; ++li) {
      if (!(uses[li] >> sn & 1)) continue;  // p.v skips this strip on this line
      float* sl = s + static_cast<std::size_t>(li * offsets) * W;
      for (int oo = 0; oo < offsets; ++oo) {
        const V e = simd::exp2<A>(V::load_aligned(sl + oo * W) - mx);
        e.store_aligned(sl + oo * W);
        sum += e;
      }
    }
    max_out = mx, sum_out = sum;
  };
  for (int sn = 0; sn < t.strips; ++sn) softmax(t.s[sn], sn, max_out[sn], sum_out[sn]);

  // P.V, lanes in pairs: their rows are value rows in memory order, read once for both lanes
  // of all strips (no transposes of V or of the outputs). Lines go in groups that the same
  // strips use: the accumulators are loaded and stored once per group, and the group's value
  // rows stay in L1 for all its lanes. Five lines for windows up to 9 wide (the lines all
  // three strips of a 7 x 7 task use are one group: 1-2.5% faster than four), four for wider
  // ones (13 x 13 with dilation 2 ran 3% slower with five). Outputs are normalised when
  // written.
  const int group_lines = t.offsets <= 9 ? 5 : 4;
  for (int sn = 0; sn < t.strips; ++sn) std::fill(t.o[sn], t.o[sn] + t.lanes * t.vstride, 0.f);
  const index_t vectors = t.vstride / W;
  for (int li = 0, n = 1; li < t.lines; li += n) {
    n = 1;
    while (li + n < t.lines && n < group_lines && t.uses[li + n] == t.uses[li]) ++n;
    int which[strips_per_task];
    const float* p[strips_per_task];
    float* out[strips_per_task];
    const int users_n = users(li, which);
    for (int i = 0; i < users_n; ++i)
      p[i] = t.s[which[i]] + static_cast<std::size_t>(li * t.offsets) * W, out[i] = t.o[which[i]];
    with_strip_count(users_n, [&](auto strips) {
      constexpr int N = decltype(strips)::value;
      for (int r = 0; r < t.lanes; r += 2) {
        // The lane after the last valid one has no window: its rows may lie past V's end.
        const std::int32_t shift = r + 1 < t.lanes ? t.idx[r + 1] - t.idx[r] : -1;
        // As many vectors per pass as the registers hold for a lane pair (4 with 32 registers).
        const int most = max_vectors_per_pass<N, 2>;
        for (index_t c = 0; c < vectors;)
          c += largest_block<4, 2, 1>(static_cast<int>(std::min<index_t>(vectors - c, most)), [&](auto m)
                                                                                                 ATTNKIT_INLINE_LAMBDA {
            const auto lanes_from = [&](auto pair, auto shifted, int lane) ATTNKIT_INLINE_LAMBDA {
              constexpr int CB = decltype(m)::value;
              if constexpr (CB <= max_vectors_per_pass<N, decltype(pair)::value ? 2 : 1>)
                pv_lanes<CB, decltype(pair)::value, decltype(shifted)::value, N>(
                    p, t.vrows + li, n, t.idx[lane] * t.vrow + c * W, t.offsets, t.vrow, t.vstride, lane, c * W, out,
                    ahead);
            };
            if (shift == 1)  // interior
              lanes_from(std::true_type{}, std::integral_constant<int, 1>{}, r);
            else if (shift == 0)  // clamped at a border
              lanes_from(std::true_type{}, std::integral_constant<int, 0>{}, r);
            else  // strided windows, or a last lane alone: one lane at a time
              for (int l = r; l < std::min(r + 2, t.lanes); ++l)
                lanes_from(std::false_type{}, std::integral_constant<int, 0>{}, l);
          });
      }
    });
  }
}

/// Streaming (non-temporal) stores of whole vectors: AVX and AVX-512.
#if defined(__AVX__)
inline constexpr bool can_stream = true;
#else
inline constexpr bool can_stream = false;
#endif

/// dst[c] = scale * src[c] for c < n (a multiple of W) with streaming stores, when dst is a
/// float row aligned to a vector; else writes nothing and returns false.
template <class O>
bool stream_scaled_row([[maybe_unused]] const float* src, [[maybe_unused]] float scale, [[maybe_unused]] index_t n,
                       [[maybe_unused]] O* dst) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<O, float>) {
    if (reinterpret_cast<std::uintptr_t>(dst) % sizeof(V) != 0) return false;
    const V s(scale);
    for (index_t c = 0; c < n; c += W) {
#if XSIMD_WITH_AVX512F
      _mm512_stream_ps(dst + c, (V::load_aligned(src + c) * s).data);
#else
      _mm256_stream_ps(dst + c, (V::load_aligned(src + c) * s).data);
#endif
    }
    return true;
  }
#endif
  return false;
}

/// One strip: W queries of one head on one line, consecutive in-group positions along the
/// last axis.
struct strip {
  std::array<index_t, 3> x{};  // coordinates of lane 0 (all lanes share all but the last)
  int lanes = 0;               // valid lanes
};

/// A work item: a query head and up to strips_per_task strips on neighbouring lines of one
/// dilation group of the pair axis (the second-to-last, Rank >= 2), which share their K/V
/// loads; they differ only in their coordinate on that axis.
struct task {
  index_t hq;
  std::array<strip, strips_per_task> s;
  int strips;
};

/// Did float fall short for a strip? In a valid lane: a max of +inf, a NaN or zero sum (every
/// window holds a key, so 0 means all its scores overflowed to -inf), or an output past
/// float's range. `o`: the lanes' unnormalised output rows, `vstride` floats apart.
inline bool falls_short(const float* o, index_t vstride, int lanes, const float* m, const float* l) {
  for (int r = 0; r < lanes; ++r) {
    V probe(0.f);  // x * 0 is NaN exactly where x is infinite or NaN
    for (index_t c = 0; c < vstride; c += W) probe = xsimd::fma(V::load_unaligned(o + r * vstride + c), V(0.f), probe);
    if (m[r] == -neg_inf || std::isnan(l[r]) || l[r] == 0.f || xsimd::any(xsimd::isnan(probe))) return true;
  }
  return false;
}

/// Runs neighborhood attention on strips; p must be applicable(). Returns false, with out
/// and lse partly written, when float fell short for some strip (an overflowed q.k or sum,
/// or a NaN): the block-sparse path, which has an exact fallback per tile, then redoes it.
template <int Rank, class Q, class K, class Vt, class O>
bool run(const neighborhood<Rank>& p, const problem& pb, const tensor_view<const Q>& q, const tensor_view<const K>& k,
         const tensor_view<const Vt>& v, const tensor_view<O>& out, const options& o) {
  constexpr int last = Rank - 1, pair_axis = Rank - 2;  // pair_axis < 0: no pairs (1-D)
  std::array<std::vector<axis_window>, Rank> windows;  // per axis and coordinate (no divisions per task)
  for (int a = 0; a < Rank; ++a)
    for (index_t x = 0; x < p.shape[a]; ++x)
      windows[a].push_back(neighborhood_axis(p.shape[a], p.kernel[a], p.dilation[a], p.stride[a], p.causal[a], x));
  const auto window = [&](int a, index_t x) { return windows[a][static_cast<std::size_t>(x)]; };
  const auto flatten = [&](const std::array<index_t, 3>& x) {
    index_t t = 0;
    for (int a = 0; a < Rank; ++a) t = t * p.shape[a] + x[a];
    return t;
  };

  // Tasks of one KV head: every query head of its group x every strip (pair). A work item is
  // a band of up to `band_strips` neighbouring strips (of one line of the axes before the pair
  // axis), swept down the pair axis by one worker: the key lines its windows reach are
  // transposed once into the worker's cache, for the whole band, as the sweep reaches them.
  // With a dilation along the last axis, a band holds the same strips of several dilation
  // groups, swept together: their rows interleave in memory, and sweeping the groups apart
  // read each row's cache lines twice from DRAM (and made x-dilated windows 1.5x slower).
  const std::size_t band_strips = strips_per_band(p, pb);
  const index_t max_lines = key_lines_per_task(p);
  struct band {
    index_t first, last;  // its tasks
    index_t start, span;  // in-group positions [start, start + span) its windows reach (each group)
    index_t lead;         // segments store position start at column lead: interior strips load aligned
    index_t strips;       // strips across: task n + strips is task n's strip on the next lines
  };
  std::vector<task> tasks;
  std::vector<band> items;
  const index_t len = p.shape[last], d = p.dilation[last];
  index_t groups_per_band = 1;
  index_t sweeps_per_item = 1;  // consecutive sweeps of one band along z (3-D)
  {
    // Bands of each dilation group; group 0 is the longest, so it has the most bands.
    const index_t group_count = std::min(d, len);
    std::vector<std::vector<std::vector<strip>>> bands_of_group(static_cast<std::size_t>(group_count));
    for (index_t g = 0; g < group_count; ++g) {
      auto& bands = bands_of_group[static_cast<std::size_t>(g)];
      for (index_t u0 = 0; u0 * d + g < len; u0 += W) {
        strip s;
        s.x[last] = g + d * u0;
        s.lanes = static_cast<int>(std::min<index_t>(W, (len - g + d - 1) / d - u0));
        if (u0 == 0 || bands.back().size() == band_strips) bands.emplace_back();
        bands.back().push_back(s);
      }
    }
    groups_per_band = std::clamp<index_t>(static_cast<index_t>(band_strips / bands_of_group[0][0].size()), 1,
                                          group_count);
    std::vector<std::vector<strip>> bands_of_line;
    for (index_t g0 = 0; g0 < group_count; g0 += groups_per_band)
      for (std::size_t k = 0; k < bands_of_group[static_cast<std::size_t>(g0)].size(); ++k) {
        bands_of_line.emplace_back();
        for (index_t g = g0; g < std::min(group_count, g0 + groups_per_band); ++g)
          if (k < bands_of_group[static_cast<std::size_t>(g)].size())
            for (const strip& st : bands_of_group[static_cast<std::size_t>(g)][k]) bands_of_line.back().push_back(st);
      }

    // Neighbouring lines of one dilation group along the pair axis, strips_per_task at a
    // time, in sweep order (the first coordinate of each step; the rest follow by dy).
    std::vector<std::pair<index_t, int>> steps;  // first line, lines
    if constexpr (Rank == 1) {
      steps.emplace_back(0, 1);
    } else {
      const index_t ly = p.shape[pair_axis], dy = p.dilation[pair_axis];
      for (index_t gy = 0; gy < dy; ++gy)
        for (index_t y = gy; y < ly; y += strips_per_task * dy)
          steps.emplace_back(y, static_cast<int>(std::min<index_t>(strips_per_task, (ly - y + dy - 1) / dy)));
    }
    // Lines of the axes before the pair axis (3-D: z), one dilation group after another.
    std::vector<index_t> outer_lines;
    if constexpr (Rank == 3) {
      for (index_t gz = 0; gz < p.dilation[0]; ++gz)
        for (index_t z = gz; z < p.shape[0]; z += p.dilation[0]) outer_lines.push_back(z);
    } else {
      outer_lines.push_back(0);
    }
    const index_t outer = static_cast<index_t>(outer_lines.size());
    // Sweeps split into chunks when there are too few for the workers (each chunk transposes
    // its first lines again), at least 16 steps long. When there are many, consecutive sweeps
    // of a band along z (3-D) go to one worker, whose line cache then keeps every line the
    // last sweep filled, (kernel - 1) / kernel of those the next sweep needs: filling each
    // z-line again for each query plane that reaches it was 10% of the time of 3 x 7 x 7
    // windows. Only while those lines take at most 4 MiB per worker, and every worker still
    // gets 4 items.
    const index_t sweeps = pb.batch * pb.kv_heads * pb.group * outer * static_cast<index_t>(bands_of_line.size());
    const index_t workers = static_cast<index_t>(worker_count(o.threads, sweeps * 64));
    const index_t step_count = static_cast<index_t>(steps.size());
    const index_t chunks = std::clamp<index_t>((2 * workers + sweeps - 1) / sweeps, 1, std::max<index_t>(1, step_count / 16));
    if constexpr (Rank == 3) {
      const double bytes = static_cast<double>(p.kernel[0] * p.shape[1]) * static_cast<double>(len + 48) *
                           static_cast<double>(pb.d) * sizeof(float) * static_cast<double>(std::min(d, len));
      if (bytes <= 4.0 * (1 << 20)) sweeps_per_item = std::clamp<index_t>(sweeps / (4 * workers), 1, outer);
    }
    for (index_t h = 0; h < pb.group; ++h)
      for (const std::vector<strip>& strips_of_band : bands_of_line)
        for (index_t line0 = 0; line0 < outer; line0 += sweeps_per_item) {
          index_t start = len, end = 0;
          for (const strip& st : strips_of_band) {
            start = std::min(start, window(last, st.x[last]).start);
            end = std::max(end, window(last, st.x[last] + d * (st.lanes - 1)).end);
          }
          // Interior strips (windows unclamped across their lanes) start W positions apart:
          // the first one's start, put on a multiple of W, aligns them all. Bands with only
          // border strips (which permute their keys anyway) keep their segments narrow.
          index_t lead = 0;
          for (const strip& st : strips_of_band) {
            const index_t first = window(last, st.x[last]).start;
            if (st.lanes == W && window(last, st.x[last] + d * (W - 1)).start - first == W - 1) {
              lead = (W - (first - start) % W) % W;
              break;
            }
          }
          for (index_t c = 0; c < chunks; ++c) {
            band item{static_cast<index_t>(tasks.size()), 0, start, end - start, lead,
                      static_cast<index_t>(strips_of_band.size())};
            for (index_t line = line0; line < std::min(outer, line0 + sweeps_per_item); ++line)
              for (index_t si = step_count * c / chunks; si < step_count * (c + 1) / chunks; ++si)
                for (strip st : strips_of_band) {
                  if constexpr (Rank == 3) st.x[0] = outer_lines[static_cast<std::size_t>(line)];
                  const auto [y, count] = steps[static_cast<std::size_t>(si)];
                  task t{h, {}, count};
                  for (int n = 0; n < count; ++n) {
                    t.s[n] = st;
                    if constexpr (pair_axis >= 0) t.s[n].x[pair_axis] = y + n * p.dilation[pair_axis];
                  }
                  tasks.push_back(t);
                }
            item.last = static_cast<index_t>(tasks.size());
            items.push_back(item);
          }
        }
  }

  // Scratch per worker: packed Q, output and scores of each strip, key-row pointers.
  const int offsets = static_cast<int>(p.kernel[last]);
  const std::size_t score_floats = static_cast<std::size_t>(max_lines * offsets * W);

  // Key lines of a task: the union box of its strips' windows on the axes before the last;
  // bit n of uses[line] says whether strip n keeps keys on it. The pair axis varies slowest:
  // in 3-D, the lines of one y (every z of the window) follow each other and the same strips
  // use them, so p.v takes them as one group; with y fastest, each z brought one-line groups
  // for the y at the windows' edges (3 x 7 x 7 tasks ran 8% slower in cache).
  const auto lines_of = [&](const task& tk, index_t* key_lines, std::uint8_t* uses) {
    std::array<std::array<axis_window, 3>, strips_per_task> w{};
    std::array<index_t, 3> first{}, end{};  // the union box, in in-group coordinates
    for (int a = 0; a < last; ++a) {
      first[a] = p.shape[a], end[a] = 0;
      for (int n = 0; n < tk.strips; ++n) {
        w[n][a] = window(a, tk.s[n].x[a]);
        first[a] = std::min(first[a], w[n][a].start), end[a] = std::max(end[a], w[n][a].end);
      }
    }
    int lines = 0;
    std::array<index_t, 3> vline = first;
    while (true) {
      index_t key_line = 0;
      std::uint8_t bits = 0;
      for (int a = 0; a < last; ++a) key_line = key_line * p.shape[a] + w[0][a].group + p.dilation[a] * vline[a];
      for (int n = 0; n < tk.strips; ++n) {
        bool in = true;
        for (int a = 0; a < last; ++a) in = in && w[n][a].start <= vline[a] && vline[a] < w[n][a].end;
        bits = static_cast<std::uint8_t>(bits | in << n);
      }
      key_lines[lines] = key_line;
      uses[lines] = bits;
      ++lines;
      int a = 0;
      while (a < last && vline[a] + 1 == end[a]) vline[a] = first[a], ++a;
      if (a == last) break;
      ++vline[a];
    }
    return lines;
  };

  // Segments reach every position a lane may read. Lane windows of stride 1 lie within W - 1
  // positions of lane 0's (idx < W), so the W or 2W positions read from an offset end at
  // most W - 1 past the band's span; strided windows (idx < 2W) read up to 2W - 1 past it. A narrow
  // segment matters: the task's K and V lines must stay in L2 together.
  const index_t margin = p.stride[last] > 1 ? 2 * W - 1 : W;
  index_t segment = 0;
  for (const band& it : items) segment = std::max(segment, (it.lead + it.span + margin + 15) / 16 * 16);
  const index_t vstride = (pb.dv + W - 1) / W * W;  // value rows and output tiles, whole vectors
  // p.v reads float value rows of whole vectors in place (copying them into the line cache
  // was 3-5% of the time); it reads only rows inside the windows of valid lanes, so never
  // past V's end.
  bool v_in_place = false;
  if constexpr (std::is_same_v<Vt, float>) v_in_place = v.stride(dim_axis) == 1 && pb.dv % W == 0;
  const index_t n_items = static_cast<index_t>(items.size());
  // A task's lines, and every line of the last sweep when a worker runs several along z.
  index_t cache_lines = max_lines;
  if constexpr (Rank == 3)
    if (sweeps_per_item > 1) cache_lines += p.kernel[0] * p.shape[1];
  // Ranges a task queues (one per row at most): its outputs (unless streamed, below), the next
  // task's queries, its share of the K/V rows of later key lines.
  const std::size_t queue_capacity = 2 * strips_per_task * W + static_cast<std::size_t>(2 * max_lines * segment);
  // Large float outputs are written with streaming stores, neither read first nor prefetched:
  // for 7 x 7 windows their rows were a quarter of the lines each task prefetched, and the
  // others arrived late (the queue is bound by how many misses a core keeps in flight).
  // Outputs small enough to stay in cache for the caller are stored normally.
  constexpr double stream_output_bytes = 8.0 * (1 << 20);
  const bool stream_out = can_stream && std::is_same_v<O, float> && out.stride(dim_axis) == 1 && pb.dv % W == 0 &&
                          static_cast<double>(pb.batch * pb.q_heads * pb.nq * pb.dv) * sizeof(float) >= stream_output_bytes;
  std::atomic<bool> fell_short{false};
  parallel_for(pb.batch * pb.kv_heads * n_items, o.threads, [&](index_t work) {
    const index_t b = work / n_items / pb.kv_heads, hkv = work / n_items % pb.kv_heads;
    const band& item = items[static_cast<std::size_t>(work % n_items)];
    // Kept between calls, like the arenas (no page faults).
    static thread_local line_cache kc, vc;
    static thread_local prefetch_queue upcoming;
    const index_t tag_count = pb.nq / len * d;  // key lines x dilation groups of the last axis
    kc.reset(cache_lines * groups_per_band, pb.d, segment, tag_count);
    if (!v_in_place) vc.reset(cache_lines * groups_per_band, vstride, segment, tag_count);
    upcoming.reset(queue_capacity);
    const std::size_t qfl = static_cast<std::size_t>(pb.d * W), ofl = static_cast<std::size_t>(vstride * W);
    const std::size_t cfl = static_cast<std::size_t>(W * std::max(pb.d, pb.dv));
    const std::size_t floats = strips_per_task * (qfl + ofl + score_floats) + cfl;
    scratch_lease lease;
    char* base = static_cast<char*>(lease.reserve(
        floats * sizeof(float) + static_cast<std::size_t>(max_lines) * (4 * sizeof(float*) + 3 * sizeof(index_t) + 2)));
    task_work work_of_task{};
    float* next = reinterpret_cast<float*>(base);
    std::array<float*, strips_per_task> packed_q{};
    for (int n = 0; n < strips_per_task; ++n) {
      packed_q[n] = next, work_of_task.q[n] = next, next += qfl;
      work_of_task.o[n] = next, next += ofl;
      work_of_task.s[n] = next, next += score_floats;
    }
    float* rowbuf = next;  // W rows converted to float (non-float inputs)
    const float** krows = reinterpret_cast<const float**>(rowbuf + cfl);
    const float** vrows = krows + max_lines;
    const float** kslots = vrows + max_lines;  // the cached lines of the current step
    const float** vslots = kslots + max_lines;
    index_t* key_lines = reinterpret_cast<index_t*>(vslots + max_lines);
    index_t* later_lines = key_lines + max_lines;  // of the next step, not in this one
    index_t* tags = later_lines + max_lines;        // cache tags: key line and dilation group
    std::uint8_t* uses = reinterpret_cast<std::uint8_t*>(tags + max_lines);
    std::uint8_t* later_uses = uses + max_lines;
    // The strips of one step of the sweep share their key lines (they differ only along the
    // last axis): lines, cache slots and the next step's new lines are found once per step.
    int lines = 0, later = 0;
    const task* step_task = nullptr;
    const auto same_step = [&](const task& x, const task& y) {
      if (x.strips != y.strips) return false;
      for (int n = 0; n < x.strips; ++n)
        for (int a = 0; a < last; ++a)
          if (x.s[n].x[a] != y.s[n].x[a]) return false;
      return x.s[0].x[last] % d == y.s[0].x[last] % d;  // one dilation group: one set of cache tags
    };
    for (index_t n = item.first; n < item.last; ++n) {
      const task& tk = tasks[static_cast<std::size_t>(n)];
      const index_t hq = hkv * pb.group + tk.hq;
      const strip& first_strip = tk.s[0];

      // Lanes: their last-axis windows (shared by all strips), queries packed transposed.
      alignas(64) std::int32_t idx[W];
      alignas(64) std::int32_t count[W];
      const index_t g = first_strip.x[last] % p.dilation[last];
      index_t start0 = 0;
      bool contiguous = true;
      std::int32_t reach = 0;    // the largest idx
      bool full_windows = true;  // every lane keeps all offsets: no masking
      for (int r = 0; r < W; ++r) {
        const int lane = std::min(r, first_strip.lanes - 1);
        const axis_window w = window(last, first_strip.x[last] + p.dilation[last] * lane);
        if (r == 0) start0 = w.start;
        idx[r] = static_cast<std::int32_t>(r < first_strip.lanes ? w.start - start0 : r);
        count[r] = static_cast<std::int32_t>(w.end - w.start);
        full_windows = full_windows && count[r] == p.kernel[last];
        contiguous = contiguous && idx[r] == r;
        reach = std::max(reach, idx[r]);
      }
      for (int sn = 0; sn < tk.strips; ++sn) {
        index_t row_stride;
        const float* rows =
            rows_as_float(q, b, hq, flatten(tk.s[sn].x), p.dilation[last], first_strip.lanes, rowbuf, row_stride);
        transpose_rows(rows, row_stride, first_strip.lanes, pb.d, pb.scale2, packed_q[sn], W);
      }

      const bool new_step = !step_task || !same_step(*step_task, tk);
      if (new_step) {
        step_task = &tk;
        lines = lines_of(tk, key_lines, uses);
        for (int li = 0; li < lines; ++li) tags[li] = key_lines[li] * d + g;
        kc.lookup(tags, lines, n, kslots, [&](index_t tag, float* dst) {
          fill_segment(p, k, b, hkv, tag / d, g, item.start, item.span, item.lead, segment, rowbuf, dst);
        });
        if (!v_in_place)
          vc.lookup(tags, lines, n, vslots, [&](index_t tag, float* dst) {
            fill_rows(p, v, b, hkv, tag / d, g, item.start, item.span, item.lead, segment, vstride, dst);
          });
        later = 0;
        if (n + item.strips < item.last) {
          const int next_lines = lines_of(tasks[static_cast<std::size_t>(n + item.strips)], later_lines, later_uses);
          // The cache holds this step's lines (just looked up) and those kept from the last sweep.
          for (int li = 0; li < next_lines; ++li)
            if (!kc.holds(later_lines[li] * d + g)) later_lines[later++] = later_lines[li];
        }
      }
      const index_t column0 = item.lead + start0 - item.start;
      const index_t vrow = v_in_place ? d * v.stride(seq_axis) : vstride;
      for (int li = 0; li < lines; ++li) {
        krows[li] = kslots[li] + column0;
        if (v_in_place)
          vrows[li] = reinterpret_cast<const float*>(v.row(b, hkv, key_lines[li] * len + g + d * start0));
        else
          vrows[li] = vslots[li] + column0 * vstride;
      }

      // While this task computes: its output rows, the next task's queries, and this task's
      // share (one strip's worth of positions, in every group of the band) of the key lines
      // its strip on the next lines adds to the sweep.
      upcoming.clear();
      if (!stream_out)
        for (int sn = 0; sn < tk.strips; ++sn) upcoming.add_rows(out, b, hq, flatten(tk.s[sn].x), d, tk.s[sn].lanes, true);
      if (n + 1 < item.last) {
        const task& after = tasks[static_cast<std::size_t>(n + 1)];
        for (int sn = 0; sn < after.strips; ++sn)
          upcoming.add_rows(q, b, hkv * pb.group + after.hq, flatten(after.s[sn].x), d, after.s[sn].lanes, false);
      }
      if (n + item.strips < item.last) {
        const index_t share = (item.span + item.strips - 1) / item.strips, j = (n - item.first) % item.strips;
        const index_t from = item.start + j * share, to = std::min(from + share, item.start + item.span);
        const index_t g0 = g / groups_per_band * groups_per_band, g1 = std::min(g0 + groups_per_band, d);
        for (int li = 0; li < later; ++li) {
          const auto add = [&](index_t first, index_t step, index_t count) {
            upcoming.add_rows(k, b, hkv, later_lines[li] * len + first, step, count, false);
            upcoming.add_rows(v, b, hkv, later_lines[li] * len + first, step, count, false);
          };
          if (g1 - g0 == d)  // every group: the rows are contiguous
            add(d * from, 1, std::min(len, d * to) - d * from);
          else
            for (index_t gg = g0; gg < g1; ++gg) add(gg + d * from, d, std::min(to, (len - gg + d - 1) / d) - from);
        }
      }
      const std::size_t pv_vectors = static_cast<std::size_t>(std::min(4, max_vectors_per_pass<strips_per_task, 2>));
      const std::size_t pv_passes = (static_cast<std::size_t>(vstride / W) + pv_vectors - 1) / pv_vectors;
      const std::size_t drips_per_line = static_cast<std::size_t>(pb.d) +  // one per channel of q.k's first pass
                                         pv_passes * (W / 2) * static_cast<std::size_t>(offsets + 1);  // per row of p.v
      work_of_task.krows = krows, work_of_task.vrows = vrows, work_of_task.uses = uses;
      work_of_task.strips = tk.strips, work_of_task.lines = lines, work_of_task.offsets = offsets;
      work_of_task.lanes = first_strip.lanes;
      work_of_task.segment = segment, work_of_task.d = pb.d, work_of_task.vstride = vstride, work_of_task.vrow = vrow;
      work_of_task.idx = idx, work_of_task.count = count;
      work_of_task.contiguous = contiguous, work_of_task.full_windows = full_windows, work_of_task.reach = reach;
      V mx[strips_per_task], sum[strips_per_task];
      compute_task(work_of_task, upcoming.start(static_cast<std::size_t>(lines) * drips_per_line), mx, sum);

      // Each valid lane's output row, normalised, and log-sum-exp.
      for (int sn = 0; sn < tk.strips; ++sn) {
        alignas(64) float m[W], l[W];
        mx[sn].store_aligned(m), sum[sn].store_aligned(l);
        if (falls_short(work_of_task.o[sn], vstride, first_strip.lanes, m, l)) {
          fell_short.store(true, std::memory_order_relaxed);
          continue;
        }
        const index_t os = out.stride(dim_axis), token0 = flatten(tk.s[sn].x);
        for (int r = 0; r < first_strip.lanes; ++r) {
          O* row = out.row(b, hq, token0 + d * r);
          const float* src = work_of_task.o[sn] + r * vstride;
          const float inv = 1.f / l[r];
          if (stream_out && stream_scaled_row(src, inv, pb.dv, row)) continue;
          if (os == 1)  // vectorises
            for (index_t c = 0; c < pb.dv; ++c) row[c] = from_float<O>(src[c] * inv);
          else
            for (index_t c = 0; c < pb.dv; ++c) row[c * os] = from_float<O>(src[c] * inv);
        }
        if (o.lse)
          for (int r = 0; r < first_strip.lanes; ++r)
            o.lse[(b * pb.q_heads + hq) * pb.nq + token0 + d * r] = (m[r] + std::log2(l[r])) * ln2;
      }
    }
#if defined(__AVX__)
    if (stream_out) _mm_sfence();  // the streamed rows are visible before the item counts as done
#endif
  });
  return !fell_short.load();
}

}  // namespace attnkit::detail::flash::strips
