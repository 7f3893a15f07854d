/// \file
/// Neighborhood attention (NATTEN semantics: Hassani et al. 2023, 2022, 2024, 2025): every query
/// of a 1-, 2- or 3-D token grid attends to a window of keys around it, shifted (not truncated)
/// at the borders; per-axis dilation, causal masking and GNA's stride. spec/neighborhood.md.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../engines/flash_plan.hpp"

namespace attnkit {

template <int Rank>
struct neighborhood {
  static_assert(Rank >= 1 && Rank <= 3, "attnkit::neighborhood: Rank must be 1, 2 or 3");
  static constexpr std::array<index_t, Rank> ones() {
    std::array<index_t, Rank> a{};
    for (auto& x : a) x = 1;
    return a;
  }
  std::array<index_t, Rank> shape{};            ///< token grid, row-major (last axis fastest)
  std::array<index_t, Rank> kernel{};           ///< window size per axis
  std::array<index_t, Rank> dilation = ones();  ///< every d-th token per axis
  std::array<index_t, Rank> stride = ones();    ///< GNA: queries of a stride group share a window
  std::array<bool, Rank> causal{};              ///< causal masking per axis
  float scale = 0;                              ///< multiplier of q.k; 0 means 1/sqrt(D)
};

namespace detail {

/// The keys one axis admits for a query coordinate: in-group positions [start, end) of the
/// dilation group `group` (spec "The per-axis window"); key y is admitted iff
/// y % dilation == group and start <= y / dilation < end.
struct axis_window {
  index_t group, start, end;
};

inline axis_window neighborhood_axis(index_t length, index_t kernel, index_t dilation, index_t stride, bool causal,
                                     index_t x) {
  const index_t g = x % dilation, u = x / dilation;
  const index_t lg = (length - g + dilation - 1) / dilation;
  if (causal) {
    const index_t leader = std::min(u / stride * stride + stride - 1, lg - 1);
    return {g, std::max<index_t>(leader - kernel + 1, 0), u + 1};
  }
  const index_t left = kernel / 2;
  const index_t leader = std::min(u / stride * stride + stride / 2, lg - 1);
  const index_t start = std::min(std::max<index_t>(leader - left, 0), lg - kernel);
  return {g, start, start + kernel};
}

template <class Policy>
struct is_neighborhood : std::false_type {};
template <int Rank>
struct is_neighborhood<neighborhood<Rank>> : std::true_type {};

template <int Rank>
std::array<index_t, Rank> unflatten(const std::array<index_t, Rank>& shape, index_t t) {
  std::array<index_t, Rank> x{};
  for (int a = Rank - 1; a >= 0; --a) x[a] = t % shape[a], t /= shape[a];
  return x;
}

/// Does query token t attend to key token u? (the spec's admit rule on every axis)
template <int Rank>
bool neighborhood_keeps(const neighborhood<Rank>& p, index_t t, index_t u) {
  const auto x = unflatten<Rank>(p.shape, t), y = unflatten<Rank>(p.shape, u);
  for (int a = 0; a < Rank; ++a) {
    const axis_window w = neighborhood_axis(p.shape[a], p.kernel[a], p.dilation[a], p.stride[a], p.causal[a], x[a]);
    if (y[a] % p.dilation[a] != w.group) return false;
    const index_t v = y[a] / p.dilation[a];
    if (v < w.start || v >= w.end) return false;
  }
  return true;
}

template <int Rank>
index_t grid_size(const std::array<index_t, Rank>& shape) {
  index_t n = 1;
  for (index_t s : shape) n = checked_mul(n, s, "neighborhood: the grid size prod(shape)");
  return n;
}

template <int Rank>
void validate_pattern(const neighborhood<Rank>& p) {
  for (int a = 0; a < Rank; ++a) {
    require(p.shape[a] >= 1, "neighborhood: shape[", a, "] = ", p.shape[a], ", expected >= 1");
    require(p.kernel[a] >= 1, "neighborhood: kernel[", a, "] = ", p.kernel[a], ", expected >= 1");
    require(p.dilation[a] >= 1, "neighborhood: dilation[", a, "] = ", p.dilation[a], ", expected >= 1");
    require(p.stride[a] >= 1, "neighborhood: stride[", a, "] = ", p.stride[a], ", expected >= 1");
    require(saturating_mul(p.kernel[a], p.dilation[a]) <= p.shape[a], "neighborhood: kernel[", a, "] * dilation[",
            a, "] = ", p.kernel[a], " * ", p.dilation[a], ", expected at most shape[", a, "] = ", p.shape[a],
            " (window larger than the grid)");
    require(p.stride[a] <= p.kernel[a], "neighborhood: stride[", a, "] = ", p.stride[a], ", expected at most kernel[",
            a, "] = ", p.kernel[a]);
  }
}

/// Checks the policy against the call's shapes (shapes themselves are checked by attention()).
template <int Rank>
void validate(const neighborhood<Rank>& p, index_t, index_t, index_t nq, index_t nk) {
  validate_scale("neighborhood", p.scale);
  validate_pattern(p);
  const index_t n = grid_size<Rank>(p.shape);
  require(nq == n, "neighborhood: q.seq() = ", nq, ", expected the grid size prod(shape) = ", n);
  require(nk == n, "neighborhood: k.seq() = ", nk, ", expected the grid size prod(shape) = ", n);
}

}  // namespace detail

namespace detail::flash {

/// Neighborhood attention's plan, after NATTEN's fused kernels and GNA: a query tile is a
/// patch of one dilation group's sub-grid (so its queries' windows overlap as much as
/// possible), and it visits the union box of their windows, one run per line of keys along
/// the last axis (step = that axis' dilation). Each row keeps an interval of a run, or
/// nothing when the run's line is outside its window. The patch shape is chosen per call to
/// minimise the keys visited. aux[2a], aux[2a+1]: the row's in-group window on axis a.
template <int Rank>
struct flash_plan<neighborhood<Rank>> {
  static constexpr bool packs_gqa = false, token_callables = false, has_score = false;
  using coords = std::array<index_t, Rank>;
  struct patch {
    coords group, origin, extent;  // dilation group; first in-group query coordinate; size
  };
  const neighborhood<Rank>& p;
  const problem& pb;
  coords shape_of_tile{};
  std::vector<patch> patches;
  double visited = 0;  // keys visited over all tiles of one head, Br lanes each
  int br;
  // Every coordinate's window, per axis: choosing the tile shape asks for each one about
  // ln(Br) times, and computing them each time (divisions) took 10% of a 1-D call.
  std::array<std::vector<axis_window>, Rank> windows;

  flash_plan(const neighborhood<Rank>& policy, const problem& problem_, int br_) : p(policy), pb(problem_), br(br_) {
    for (int a = 0; a < Rank; ++a)
      for (index_t x = 0; x < p.shape[a]; ++x)
        windows[a].push_back(neighborhood_axis(p.shape[a], p.kernel[a], p.dilation[a], p.stride[a], p.causal[a], x));
    choose_tile_shape();
    enumerate_patches();
  }

  index_t group_length(int a, index_t g) const { return (p.shape[a] - g + p.dilation[a] - 1) / p.dilation[a]; }
  axis_window window(int a, index_t g, index_t u) const {
    return windows[a][static_cast<std::size_t>(g + p.dilation[a] * u)];
  }

  /// Keys visited along axis a, summed over all its segments of `len` queries, and the count
  /// of segments.
  std::pair<index_t, index_t> axis_cost(int a, index_t len) const {
    index_t keys = 0, segments = 0;
    for (index_t g = 0; g < p.dilation[a]; ++g)
      for (index_t u0 = 0; u0 < group_length(a, g); u0 += len, ++segments)
        keys += window(a, g, std::min(u0 + len, group_length(a, g)) - 1).end - window(a, g, u0).start;
    return {keys, segments};
  }

  /// The patch shape (at most br queries) that visits the fewest keys, counting Br lanes per
  /// tile whatever its size, with a small penalty for short runs along the last axis.
  void choose_tile_shape() {
    std::array<std::vector<std::pair<index_t, index_t>>, Rank> cost;
    for (int a = 0; a < Rank; ++a) {
      const index_t longest = std::min<index_t>(group_length(a, 0), br);
      for (index_t len = 1; len <= longest; ++len) cost[a].push_back(axis_cost(a, len));
    }
    double best = -1;
    coords t{};
    for (auto& x : t) x = 1;
    while (true) {
      index_t size = 1;
      double keys = 1;
      for (int a = 0; a < Rank; ++a) size *= t[a], keys *= static_cast<double>(cost[a][t[a] - 1].first);
      if (size <= br) {
        const auto [last_keys, last_segments] = cost[Rank - 1][t[Rank - 1] - 1];
        const double run_length = static_cast<double>(last_keys) / static_cast<double>(last_segments);
        const double c = keys * (1 + 8 / run_length);
        if (best < 0 || c < best) best = c, shape_of_tile = t, visited = keys;
      }
      int a = Rank - 1;  // next shape, odometer order
      while (a >= 0 && t[a] == static_cast<index_t>(cost[a].size())) t[a] = 1, --a;
      if (a < 0) break;
      ++t[a];
    }
  }

  void enumerate_patches() {
    coords g{};
    while (true) {
      coords origin{};
      while (true) {
        patch pt{g, origin, {}};
        for (int a = 0; a < Rank; ++a) pt.extent[a] = std::min(shape_of_tile[a], group_length(a, g[a]) - origin[a]);
        patches.push_back(pt);
        int a = Rank - 1;
        while (a >= 0 && origin[a] + shape_of_tile[a] >= group_length(a, g[a])) origin[a] = 0, --a;
        if (a < 0) break;
        origin[a] += shape_of_tile[a];
      }
      int a = Rank - 1;
      while (a >= 0 && g[a] + 1 == p.dilation[a]) g[a] = 0, --a;
      if (a < 0) break;
      ++g[a];
    }
  }

  index_t flatten(const coords& x) const {
    index_t t = 0;
    for (int a = 0; a < Rank; ++a) t = t * p.shape[a] + x[a];
    return t;
  }

  index_t tiles() const { return pb.group * static_cast<index_t>(patches.size()); }

  /// The work of one head in lane-keys: Br lanes times the keys each tile visits.
  double lane_keys() const { return br * visited; }

  template <int Br>
  void describe(index_t, index_t hkv, index_t tile, tile_rows<Br>& t) const {
    t.clear();
    const index_t per_head = static_cast<index_t>(patches.size());
    const patch& pt = patches[static_cast<std::size_t>(tile % per_head)];
    coords u{};  // offset inside the patch, row-major
    for (int r = 0;; ++r) {
      coords x{};
      for (int a = 0; a < Rank; ++a) {
        x[a] = pt.group[a] + p.dilation[a] * (pt.origin[a] + u[a]);
        const axis_window w = window(a, pt.group[a], pt.origin[a] + u[a]);
        t.aux[2 * a][r] = static_cast<std::int32_t>(w.start);
        t.aux[2 * a + 1][r] = static_cast<std::int32_t>(w.end);
      }
      t.set_row(r, hkv * pb.group + tile / per_head, flatten(x));
      int a = Rank - 1;
      while (a >= 0 && u[a] + 1 == pt.extent[a]) u[a] = 0, --a;
      if (a < 0) break;
      ++u[a];
    }
  }

  template <int Br, class F>
  void for_each_run(index_t, tile_rows<Br>& t, F&& f) const {
    if (t.rows == 0) return;
    coords lo{}, hi{}, group{};  // union box of the rows' windows (in-group, hi exclusive)
    for (int a = 0; a < Rank; ++a) {
      lo[a] = t.aux[2 * a][0], hi[a] = t.aux[2 * a + 1][0];
      for (int r = 1; r < t.rows; ++r)
        lo[a] = std::min<index_t>(lo[a], t.aux[2 * a][r]), hi[a] = std::max<index_t>(hi[a], t.aux[2 * a + 1][r]);
      group[a] = t.query[0] / stride_of(a) % p.shape[a] % p.dilation[a];
    }
    constexpr int last = Rank - 1;
    coords v = lo;  // the run's line: in-group coordinates on axes before the last
    while (true) {
      coords y{};
      for (int a = 0; a < Rank; ++a) y[a] = group[a] + p.dilation[a] * v[a];
      for (int r = 0; r < t.rows; ++r) {
        bool inside = true;
        for (int a = 0; a < last; ++a) inside = inside && t.aux[2 * a][r] <= v[a] && v[a] < t.aux[2 * a + 1][r];
        t.lo[r] = static_cast<std::int32_t>(inside ? t.aux[2 * last][r] - lo[last] : 0);
        t.hi[r] = static_cast<std::int32_t>(inside ? t.aux[2 * last + 1][r] - 1 - lo[last] : -1);
      }
      f(key_run{flatten(y), hi[last] - lo[last], p.dilation[last], false});
      int a = last - 1;
      while (a >= 0 && v[a] + 1 == hi[a]) v[a] = lo[a], --a;
      if (a < 0) break;
      ++v[a];
    }
  }

  /// Tokens between neighbours along axis a.
  index_t stride_of(int a) const {
    index_t s = 1;
    for (int b = a + 1; b < Rank; ++b) s *= p.shape[b];
    return s;
  }
};

}  // namespace detail::flash

/// Which keys each query attends to (row-major nq x nk bytes, 1 = attends).
template <int Rank>
std::vector<std::uint8_t> dense_mask(const neighborhood<Rank>& p, index_t nq, index_t nk) {
  detail::validate_pattern(p);
  const index_t n = detail::grid_size<Rank>(p.shape);
  detail::require(nq == n && nk == n, "dense_mask: nq = ", nq, ", nk = ", nk, ", expected both = prod(shape) = ", n);
  std::vector<std::uint8_t> mask(detail::mask_elements(nq, nk), 0);
  for (index_t t = 0; t < nq; ++t)
    for (index_t u = 0; u < nk; ++u) mask[static_cast<std::size_t>(t * nk + u)] = detail::neighborhood_keeps(p, t, u);
  return mask;
}

}  // namespace attnkit
