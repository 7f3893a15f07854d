/// \file
/// PowerAttention (Chen et al. 2025, arXiv 2503.03588, Algorithm 1): each query block sees
/// a local window of blocks, sink blocks, and the blocks at power-of-two block distances, so
/// the receptive field doubles with every layer. spec/power.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash_plan.hpp"

namespace attnkit {

struct power {
  index_t block_size = 256;    ///< tokens per block, b
  index_t window_blocks = 5;   ///< local window W in blocks (block distances 0..W-1)
  index_t sink_blocks = 1;     ///< leading key blocks every query sees
  index_t max_power = -1;      ///< largest exponent e of a kept distance 2^e; -1 unlimited
  bool causal = true;          ///< true: the paper; false: symmetric extension (|delta|)
  float scale = 0;             ///< multiplier of q.k; 0 means 1/sqrt(D)
};

namespace detail {

/// Is the key block at block distance `delta` (>= 0) kept by the window or power rule?
inline bool power_keeps_distance(const power& p, index_t delta) {
  if (delta < p.window_blocks) return true;
  if ((delta & (delta - 1)) != 0) return false;
  // 2^62 and up exceed every distance: as unlimited as -1.
  return p.max_power < 0 || p.max_power >= 62 || delta <= (index_t(1) << p.max_power);
}

/// Does query row i attend to key j? (absolute position i + nk - nq: bottom-right aligned)
inline bool power_keeps(const power& p, index_t i, index_t j, index_t nq, index_t nk) {
  const index_t pos = i + nk - nq;
  if (p.causal && j > pos) return false;
  if (j < saturating_mul(p.sink_blocks, p.block_size)) return true;
  const index_t bq = floor_div(pos, p.block_size);
  const index_t bk = j / p.block_size;
  const index_t delta = p.causal ? bq - bk : (bq > bk ? bq - bk : bk - bq);
  return delta >= 0 && power_keeps_distance(p, delta);
}

inline void validate_pattern(const power& p) {
  require(p.block_size >= 1, "power: block_size = ", p.block_size, ", expected >= 1");
  require(p.window_blocks >= 0, "power: window_blocks = ", p.window_blocks, ", expected >= 0");
  require(p.sink_blocks >= 0, "power: sink_blocks = ", p.sink_blocks, ", expected >= 0");
  require(p.max_power >= -1, "power: max_power = ", p.max_power, ", expected >= -1");
}

inline void validate(const power& p, index_t, index_t, index_t, index_t) {
  validate_scale("power", p.scale);
  validate_pattern(p);
}

}  // namespace detail

namespace detail::flash {

/// PowerAttention's plan: query tiles never straddle a query block (so all rows of a tile see
/// the same key blocks when block_size >= Br), and key runs are whole key blocks, merged when
/// consecutive blocks are seen by the same rows: every run is full except the causal diagonal.
/// aux[5]: the row's last visible key.
template <>
struct flash_plan<power> {
  static constexpr bool packs_gqa = false, token_callables = false, has_score = false;
  const power& p;
  const problem& pb;
  const segmented_tiles query_tiles;

  flash_plan(const power& policy, const problem& problem_, int br)
      : p(policy), pb(problem_), query_tiles(pb.nq, br, [&](index_t i) {
          const index_t seg = p.block_size >= br ? p.block_size : br / p.block_size * p.block_size;
          return (i + pb.nk - pb.nq) % seg == 0;
        }) {}

  index_t tiles() const { return query_tiles.tiles(pb); }

  template <int Br>
  void describe(index_t, index_t hkv, index_t tile, tile_rows<Br>& t) const {
    query_tiles.describe(pb, hkv, tile, t, [&](int r, index_t i) {
      const index_t pos = i + pb.nk - pb.nq;
      t.live[r] = pb.nk > 0 && (!p.causal || pos >= 0);
      t.aux[5][r] = static_cast<std::int32_t>(p.causal ? std::max<index_t>(pos, -1) : pb.nk);
      const index_t bq = floor_div(pos, p.block_size);
      t.aux[0][r] = static_cast<std::int32_t>(bq);
    });
  }

  template <int Br, class F>
  void for_each_run(index_t, tile_rows<Br>& t, F&& f) const {
    const index_t nblocks = ceil_div(pb.nk, p.block_size);
    index_t last_block = -1;
    for (int r = 0; r < t.rows; ++r)
      if (t.live[r]) last_block = std::max<index_t>(last_block, p.causal ? t.aux[5][r] / p.block_size : nblocks - 1);
    block_runs(t, p.block_size, last_block + 1, pb.nk, [&](index_t bk) {
      std::uint64_t m = 0;
      for (int r = 0; r < t.rows; ++r) {
        if (!t.live[r]) continue;
        const index_t bq = t.aux[0][r];
        bool keep = bk < p.sink_blocks;
        if (!keep && p.causal) keep = bk <= bq && power_keeps_distance(p, bq - bk);
        if (!keep && !p.causal) keep = power_keeps_distance(p, bq > bk ? bq - bk : bk - bq);
        m |= std::uint64_t(keep) << r;
      }
      return m;
    }, f);
  }
};

}  // namespace detail::flash

/// Which keys each query attends to (row-major nq x nk bytes, 1 = attends).
inline std::vector<std::uint8_t> dense_mask(const power& p, index_t nq, index_t nk) {
  detail::validate_pattern(p);
  std::vector<std::uint8_t> mask(detail::mask_elements(nq, nk), 0);
  for (index_t i = 0; i < nq; ++i)
    for (index_t j = 0; j < nk; ++j) mask[static_cast<std::size_t>(i * nk + j)] = detail::power_keeps(p, i, j, nq, nk);
  return mask;
}

}  // namespace attnkit
