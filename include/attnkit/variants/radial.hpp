/// \file
/// Radial attention (Li et al. 2025, arXiv 2506.19852): a static O(n log n) mask for video
/// diffusion; the attention budget between two frames halves each time their distance
/// doubles (diagonal bands of shrinking width), plus an attention sink and global tokens.
/// `token` mode is the paper's Equation 4; `official_blocks` reproduces the released
/// block mask (mit-han-lab/radial-attention, gen_log_mask_shrinked). spec/radial.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash_plan.hpp"

namespace attnkit {

struct radial {
  enum class mode_kind { token, official_blocks };
  index_t frames = 0;            ///< f: video frames
  index_t tokens_per_frame = 0;  ///< s: tokens per frame (frame-major: token = frame * s + x)
  index_t sink_frames = 1;       ///< leading frames visible to every query (clamped to f)
  mode_kind mode = mode_kind::token;
  index_t block_size = 128;      ///< b: the block of official_blocks mode
  float decay_factor = 1;        ///< gamma: width scale of official_blocks mode
  bool causal = false;           ///< extension: additionally key index <= query index
  float scale = 0;               ///< multiplier of q.k; 0 means 1/sqrt(D)
};

namespace detail {

inline index_t bit_length(index_t x) {
  index_t n = 0;
  for (; x > 0; x >>= 1) ++n;
  return n;
}

/// floor(log2(max(d, 1))): the band index r of frame distance d.
inline index_t radial_band(index_t d) { return bit_length(std::max<index_t>(d, 1)) - 1; }

/// Token mode: is key (frame j, position y) kept by query (frame i, position x)? Video tokens only.
inline bool radial_token_keeps(const radial& p, index_t i, index_t x, index_t j, index_t y) {
  const index_t s = p.tokens_per_frame;
  if (j < std::min(p.sink_frames, p.frames)) return true;
  const index_t d = i > j ? i - j : j - i, r = radial_band(d);
  if (r < 62 && (index_t(1) << r) <= s) {
    const index_t dx = x > y ? x - y : y - x;
    if ((dx + 1) << r <= s) return true;
  }
  if (x != y) return false;
  const index_t every = r < 62 ? ((index_t(1) << r) + s - 1) / s : std::numeric_limits<index_t>::max();
  return d % every == 0;
}

/// official_blocks mode: the released block mask BM over ceil(N / b)^2 tiles, row-major.
/// Per frame pair the release draws a band L[x][y] = keep_frame && |y - x| <= width, places
/// it at the pair's offset inside whole b x b tiles and keeps a tile when more than 60% of
/// its touched columns are more than one-third filled; each column's fill is counted here by
/// interval arithmetic instead of drawing the band.
inline std::vector<std::uint8_t> radial_block_mask(const radial& p, index_t n) {
  const index_t f = p.frames, s = p.tokens_per_frame, b = p.block_size;
  const index_t nb = (n + b - 1) / b, m = (s + b - 1) / b;
  const double p2 = std::ldexp(1.0, static_cast<int>(bit_length(s)));
  std::vector<std::uint8_t> bm(static_cast<std::size_t>(nb * nb), 0);
  for (index_t i = 0; i < f; ++i)
    for (index_t j = 0; j < f; ++j) {
      const bool sink = j < p.sink_frames;
      const index_t d = i > j ? i - j : j - i, g = bit_length(d);
      const double lp = p2 / std::ldexp(1.0, static_cast<int>(g));
      const double width = d <= 1 ? static_cast<double>(s) : std::max(lp * p.decay_factor, static_cast<double>(b));
      const bool keep_frame = lp >= 128 || d % static_cast<index_t>(std::floor(128 / lp)) == 0;
      if (!sink && !keep_frame) continue;
      const index_t rr = i * s % b, rc = j * s % b;
      for (index_t u = 0; u < m; ++u)
        for (index_t w = 0; w < m; ++w) {
          const index_t x_lo = std::max<index_t>(0, u * b - rr), x_hi = std::min<index_t>(s - 1, u * b + b - 1 - rr);
          index_t touched = 0, dense = 0;
          for (index_t c = 0; c < b; ++c) {
            const index_t y = w * b + c - rc;
            if (y < 0 || y >= s || x_lo > x_hi) continue;
            index_t lo = x_lo, hi = x_hi;
            if (!sink) {
              lo = std::max<index_t>(lo, static_cast<index_t>(std::ceil(static_cast<double>(y) - width)));
              hi = std::min<index_t>(hi, static_cast<index_t>(std::floor(static_cast<double>(y) + width)));
            }
            const index_t rows = std::max<index_t>(0, hi - lo + 1);
            touched += rows > 0;
            dense += static_cast<double>(rows) / static_cast<double>(b) > 1.0 / 3.0;
          }
          if (static_cast<double>(dense) / (static_cast<double>(touched) + 1e-9) <= 0.6) continue;
          const index_t bi = i * s / b + u, bj = j * s / b + w;
          if (bi < nb && bj < nb) bm[static_cast<std::size_t>(bi * nb + bj)] = 1;
        }
    }
  return bm;
}

inline void validate_pattern(const radial& p, index_t n) {
  require(p.frames >= 1, "radial: frames = ", p.frames, ", expected >= 1");
  require(p.tokens_per_frame >= 1, "radial: tokens_per_frame = ", p.tokens_per_frame, ", expected >= 1");
  require(p.block_size >= 1, "radial: block_size = ", p.block_size, ", expected >= 1");
  require(p.sink_frames >= 0, "radial: sink_frames = ", p.sink_frames, ", expected >= 0");
  require(std::isfinite(p.decay_factor) && p.decay_factor > 0, "radial: decay_factor = ", p.decay_factor,
          ", expected a finite value > 0");
  require(p.mode == radial::mode_kind::token || p.mode == radial::mode_kind::official_blocks,
          "radial: mode = ", static_cast<int>(p.mode), ", expected token or official_blocks");
  require(saturating_mul(p.frames, p.tokens_per_frame) <= n, "radial: frames * tokens_per_frame = ", p.frames, " * ",
          p.tokens_per_frame, ", expected at most the sequence length ", n);
  require(p.mode != radial::mode_kind::official_blocks || p.block_size <= n, "radial: block_size = ", p.block_size,
          ", expected at most the sequence length ", n, " in official_blocks mode");
}

inline void validate(const radial& p, index_t, index_t, index_t nq, index_t nk) {
  validate_scale("radial", p.scale);
  require(nq == nk, "radial: q.seq() = ", nq, ", expected k.seq() = ", nk, " (self-attention)");
  validate_pattern(p, nk);
}

/// The token rule of either mode; `bm` is radial_block_mask's result (official_blocks only).
inline bool radial_keeps(const radial& p, const std::vector<std::uint8_t>& bm, index_t n, index_t q, index_t t) {
  if (p.causal && t > q) return false;
  const index_t nv = p.frames * p.tokens_per_frame;
  if (q >= nv || t >= nv) return true;
  if (p.mode == radial::mode_kind::official_blocks) {
    const index_t nb = (n + p.block_size - 1) / p.block_size;
    return bm[static_cast<std::size_t>(q / p.block_size * nb + t / p.block_size)] != 0;
  }
  const index_t s = p.tokens_per_frame;
  return radial_token_keeps(p, q / s, q % s, t / s, t % s);
}

}  // namespace detail

namespace detail::flash {

/// Radial attention's plan. token mode: a tile holds queries of one frame (or global queries);
/// per key frame it visits the band around the tile's positions (the whole frame for frame
/// distance <= 1 and sinks, the tile's own positions for the sparse diagonal), then the global
/// keys; each row keeps an interval of every run. official_blocks mode: runs are the kept b x b
/// blocks of the released block mask (all full but the causal diagonal). aux[0]: frame,
/// aux[1]: position in frame, aux[2]: query block, aux[5]: last visible key.
template <>
struct flash_plan<radial> {
  static constexpr bool packs_gqa = false, token_callables = false, has_score = false;
  const radial& p;
  const problem& pb;
  index_t nv;                             // video tokens; the rest are global
  std::vector<std::uint8_t> block_mask;   // official_blocks: BM, ceil(N/b)^2
  segmented_tiles query_tiles;            // within a frame (token) or block (official_blocks)

  flash_plan(const radial& policy, const problem& problem_, int br)
      : p(policy),
        pb(problem_),
        nv(policy.frames * policy.tokens_per_frame),
        query_tiles(pb.nq, br, [&](index_t i) {
          const bool blocks = p.mode == radial::mode_kind::official_blocks;
          const index_t seg =
              !blocks ? p.tokens_per_frame : p.block_size >= br ? p.block_size : br / p.block_size * p.block_size;
          return i == nv || (i < nv && i % seg == 0);
        }) {
    if (p.mode == radial::mode_kind::official_blocks) block_mask = radial_block_mask(p, pb.nk);
  }

  index_t tiles() const { return query_tiles.tiles(pb); }

  template <int Br>
  void describe(index_t, index_t hkv, index_t tile, tile_rows<Br>& t) const {
    query_tiles.describe(pb, hkv, tile, t, [&](int r, index_t i) {
      t.aux[0][r] = static_cast<std::int32_t>(i / p.tokens_per_frame);
      t.aux[1][r] = static_cast<std::int32_t>(i % p.tokens_per_frame);
      t.aux[2][r] = static_cast<std::int32_t>(i / p.block_size);
      t.aux[5][r] = static_cast<std::int32_t>(p.causal ? i : pb.nk);
    });
  }

  template <int Br, class F>
  void for_each_run(index_t, tile_rows<Br>& t, F&& f) const {
    if (t.rows == 0) return;
    // Runs whose rows keep the interval [lo_r, hi_r] of run positions (lo_r > hi_r: nothing).
    const auto run = [&](index_t first, index_t count, auto&& span_of) {
      for (int r = 0; r < t.rows; ++r) {
        const auto [lo, hi] = span_of(r);
        t.lo[r] = static_cast<std::int32_t>(std::max<index_t>(lo, 0));
        t.hi[r] = static_cast<std::int32_t>(std::min<index_t>(hi, count - 1));
        clip_to_last_key(t, r, first);
      }
      f(key_run{first, count, 1, false});
    };
    const auto whole = [](int) { return std::pair<index_t, index_t>{0, std::numeric_limits<std::int32_t>::max()}; };
    if (t.query[0] >= nv) return run(0, pb.nk, whole);  // global queries see every key
    if (p.mode == radial::mode_kind::official_blocks) {
      const index_t nb = (pb.nk + p.block_size - 1) / p.block_size, video_blocks = (nv + p.block_size - 1) / p.block_size;
      block_runs(t, p.block_size, video_blocks, nv, [&](index_t bk) {
        std::uint64_t m = 0;
        for (int r = 0; r < t.rows; ++r)
          m |= std::uint64_t(block_mask[static_cast<std::size_t>(t.aux[2][r] * nb + bk)] != 0) << r;
        return m;
      }, f);
    } else {
      const index_t s = p.tokens_per_frame, frame = t.aux[0][0];
      const index_t x_first = t.aux[1][0], x_last = t.aux[1][t.rows - 1];
      for (index_t j = 0; j < p.frames; ++j) {
        const index_t d = frame > j ? frame - j : j - frame, r = radial_band(d);
        if (j < p.sink_frames || d <= 1) {
          run(j * s, s, whole);
        } else if (r < 62 && (index_t(1) << r) <= s) {
          const index_t half = (s >> r) - 1, lo = std::max<index_t>(0, x_first - half);
          const index_t hi = std::min<index_t>(s - 1, x_last + half);
          run(j * s + lo, hi - lo + 1, [&](int row) {
            return std::pair<index_t, index_t>{t.aux[1][row] - half - lo, t.aux[1][row] + half - lo};
          });
        } else if (d % (((index_t(1) << std::min<index_t>(r, 61)) + s - 1) / s) == 0) {
          run(j * s + x_first, x_last - x_first + 1, [&](int row) {
            return std::pair<index_t, index_t>{t.aux[1][row] - x_first, t.aux[1][row] - x_first};
          });
        }
      }
    }
    if (pb.nk > nv) run(nv, pb.nk - nv, whole);
  }
};

}  // namespace detail::flash

/// Which keys each query attends to (row-major nq x nk bytes, 1 = attends).
inline std::vector<std::uint8_t> dense_mask(const radial& p, index_t nq, index_t nk) {
  detail::require(nq == nk, "dense_mask: nq = ", nq, ", nk = ", nk, ", expected equal");
  const std::size_t elements = detail::mask_elements(nq, nk);
  detail::validate_pattern(p, nk);
  const std::vector<std::uint8_t> bm =
      p.mode == radial::mode_kind::official_blocks ? detail::radial_block_mask(p, nk) : std::vector<std::uint8_t>{};
  std::vector<std::uint8_t> mask(elements, 0);
  for (index_t q = 0; q < nq; ++q)
    for (index_t t = 0; t < nk; ++t) mask[static_cast<std::size_t>(q * nk + t)] = detail::radial_keeps(p, bm, nk, q, t);
  return mask;
}

}  // namespace attnkit
