/// \file
/// Float64 reference of radial attention, written from spec/radial.md: `token` mode is the
/// paper's Equation 4 plus sink and global tokens; `official_blocks` is a literal port of the
/// spec's pseudocode of the released gen_log_mask_shrinked (it draws each frame pair's band L
/// and padded mask G as boolean arrays and counts column densities, O(f^2 s^2)). It shares no
/// code with variants/radial.hpp or with the flash engine, so tests can compare them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../variants/radial.hpp"
#include "masked.hpp"

namespace attnkit::reference::detail {

/// Python's int.bit_length() for x >= 0 (bit_length(0) = 0).
inline index_t radial_bit_length(index_t x) {
  index_t n = 0;
  while (x > 0) {
    ++n;
    x /= 2;
  }
  return n;
}

/// Token mode, both tokens video tokens: query (frame i, position x), key (frame j, position y).
inline bool radial_token_visible(const attnkit::radial& p, index_t i, index_t x, index_t j, index_t y) {
  const index_t s = p.tokens_per_frame;
  // 1. sink
  if (j < p.sink_frames) return true;
  // r = floor(log2(max(d, 1)))
  const index_t d = i > j ? i - j : j - i;
  index_t r = 0;
  while ((index_t(2) << r) <= d) ++r;
  const index_t two_r = index_t(1) << r;
  // 2. band
  const index_t dx = x > y ? x - y : y - x;
  if (two_r <= s && (dx + 1) * two_r <= s) return true;
  // 3. sparse diagonal
  const index_t every = (two_r + s - 1) / s;  // ceil(2^r / s)
  return x == y && d % every == 0;
}

/// official_blocks mode: the block mask BM over nb x nb tiles (nb = ceil(n / b)), row-major,
/// ported literally from the spec's pseudocode.
inline std::vector<std::uint8_t> radial_official_block_mask(const attnkit::radial& p, index_t n) {
  const index_t f = p.frames, s = p.tokens_per_frame, b = p.block_size;
  const double P2 = std::pow(2.0, static_cast<double>(radial_bit_length(s)));
  const index_t nb = (n + b - 1) / b;
  const index_t m = (s + b - 1) / b;
  const index_t mb = m * b;
  std::vector<std::uint8_t> BM(static_cast<std::size_t>(nb * nb), 0);
  std::vector<std::uint8_t> L(static_cast<std::size_t>(s * s)), G(static_cast<std::size_t>(mb * mb));
  for (index_t i = 0; i < f; ++i)
    for (index_t j = 0; j < f; ++j) {
      if (j < p.sink_frames) {
        std::fill(L.begin(), L.end(), std::uint8_t(1));
      } else {
        const index_t d = i > j ? i - j : j - i;
        const index_t g = radial_bit_length(d);
        const double two_g = std::pow(2.0, static_cast<double>(g));
        const double width =
            d <= 1 ? static_cast<double>(s)
                   : std::max(P2 / two_g * static_cast<double>(p.decay_factor), static_cast<double>(b));
        const double Lp = P2 / two_g;
        const bool keep_frame = (Lp >= 128) || (d % static_cast<index_t>(std::floor(128 / Lp)) == 0);
        for (index_t x = 0; x < s; ++x)
          for (index_t y = 0; y < s; ++y) {
            const double dist = static_cast<double>(y > x ? y - x : x - y);
            L[static_cast<std::size_t>(x * s + y)] = keep_frame && dist <= width;
          }
      }
      const index_t rr = (i * s) % b, rc = (j * s) % b;
      std::fill(G.begin(), G.end(), std::uint8_t(0));
      for (index_t x = 0; x < s; ++x)
        for (index_t y = 0; y < s; ++y)
          if (rr + x < mb && rc + y < mb)
            G[static_cast<std::size_t>((rr + x) * mb + (rc + y))] = L[static_cast<std::size_t>(x * s + y)];
      for (index_t u = 0; u < m; ++u)
        for (index_t w = 0; w < m; ++w) {
          index_t nz = 0, hi = 0;
          for (index_t c = 0; c < b; ++c) {
            index_t rows = 0;
            for (index_t r = 0; r < b; ++r) rows += G[static_cast<std::size_t>((u * b + r) * mb + (w * b + c))];
            const double dens = static_cast<double>(rows) / static_cast<double>(b);
            nz += dens > 0;
            hi += dens > 1.0 / 3.0;
          }
          const bool keep = static_cast<double>(hi) / (static_cast<double>(nz) + 1e-9) > 0.6;
          const index_t bi = (i * s) / b + u, bj = (j * s) / b + w;
          if (keep && bi < nb && bj < nb) BM[static_cast<std::size_t>(bi * nb + bj)] = 1;
        }
    }
  return BM;
}

/// The token rule of either mode for query token q and key token t of a sequence of n tokens;
/// `bm` is radial_official_block_mask(p, n) (official_blocks mode only).
inline bool radial_visible(const attnkit::radial& p, const std::vector<std::uint8_t>& bm, index_t n, index_t q,
                           index_t t) {
  if (p.causal && t > q) return false;
  const index_t s = p.tokens_per_frame, nv = p.frames * s;
  if (q >= nv || t >= nv) return true;  // global tokens
  if (p.mode == attnkit::radial::mode_kind::official_blocks) {
    const index_t b = p.block_size, nb = (n + b - 1) / b;
    return bm[static_cast<std::size_t>((q / b) * nb + t / b)] != 0;
  }
  return radial_token_visible(p, q / s, q % s, t / s, t % s);
}

/// Radial attention in float64 (O(N^2 D)); the pattern is the same for every batch entry and
/// head. Shapes are assumed checked (Nq == Nk, frames * tokens_per_frame <= N).
template <class Q, class K, class V, class O>
void run(const attnkit::radial& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  const index_t n = k.seq();
  const std::vector<std::uint8_t> bm = p.mode == attnkit::radial::mode_kind::official_blocks
                                           ? radial_official_block_mask(p, n)
                                           : std::vector<std::uint8_t>{};
  run_masked(
      p.scale, [&](index_t, index_t, index_t i, index_t j) { return radial_visible(p, bm, n, i, j); }, keep_score{},
      q, k, v, out, o);
}

}  // namespace attnkit::reference::detail
