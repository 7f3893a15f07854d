/// \file
/// Block-sparse attention benchmarks: every sparse variant against dense flash attention at
/// the same shape, in the same run, and its *speed-of-light ratio* (GNA, Hassani et al. 2025):
///
///   sol_ratio = sparse time / (dense time * fraction of query-key pairs kept)
///
/// 1.0 means the sparse kernel does the kept work exactly as fast as dense attention does its
/// (all) work; above 1, time goes to work that is skipped in principle (partial tiles, union
/// windows) or to a slower kernel. Each iteration times the sparse call, then the dense one,
/// so both see the same machine state. Dense softmax attention (non-causal) costs the same for
/// every query, so its time at N queries is measured on the first `kDenseRows` queries over
/// all N keys and scaled by N / kDenseRows (linear in the query count by construction: equal
/// query tiles, each over all keys).
///
/// Counters: sol_ratio; kept (fraction of pairs); GFLOPs on kept pairs (4*H*kept*D per call)
/// and roof_ratio against the FMA roof measured in main(); dense_roof_ratio, the dense
/// reference's own rate over that roof. "tiny" versions run in CI:
///
///   bench_sparse --benchmark_filter=tiny --benchmark_min_time=0.01
#include "bench_common.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>

namespace {

using namespace attnkit_bench;
using i64 = std::int64_t;
using attnkit::index_t;

constexpr i64 kH = 4;            // query heads = KV heads
constexpr i64 kDenseRows = 1024;  // queries of the dense reference run

// ---------------------------------------------------------------------------------------
// Kept query-key pairs, counted exactly (no N x N mask).

template <int Rank>
double kept_pairs(const attnkit::neighborhood<Rank>& p) {
  double pairs = 1;  // the pattern is a product over axes
  for (int a = 0; a < Rank; ++a) {
    double axis = 0;
    for (index_t x = 0; x < p.shape[a]; ++x) {
      const auto w = attnkit::detail::neighborhood_axis(p.shape[a], p.kernel[a], p.dilation[a], p.stride[a],
                                                        p.causal[a], x);
      axis += static_cast<double>(w.end - w.start);
    }
    pairs *= axis;
  }
  return pairs;
}

double kept_pairs(const attnkit::power& p, i64 n) {
  const i64 blocks = (n + p.block_size - 1) / p.block_size;
  double pairs = 0;
  for (i64 i = 0; i < n; ++i)
    for (i64 bk = 0; bk < blocks; ++bk) {
      const i64 first = bk * p.block_size, last = std::min(n, first + p.block_size) - 1;
      if (!attnkit::detail::power_keeps(p, i, first, n, n)) continue;  // one key decides the block
      pairs += static_cast<double>(std::min(last, p.causal ? i : last) - first + 1);
    }
  return pairs;
}

double kept_pairs(const attnkit::radial& p, i64 n) {  // token mode, non-causal, no global tokens
  const i64 s = p.tokens_per_frame;
  double pairs = 0;
  for (i64 i = 0; i < p.frames; ++i)
    for (i64 j = 0; j < p.frames; ++j) {
      const i64 d = i > j ? i - j : j - i, r = attnkit::detail::radial_band(d);
      if (j < p.sink_frames || d <= 1) {
        pairs += static_cast<double>(s * s);
      } else if ((i64(1) << r) <= s) {
        const i64 half = (s >> r) - 1;
        for (i64 x = 0; x < s; ++x) pairs += static_cast<double>(std::min(s - 1, x + half) - std::max<i64>(0, x - half) + 1);
      } else if (d % (((i64(1) << r) + s - 1) / s) == 0) {
        pairs += static_cast<double>(s);
      }
    }
  (void)n;
  return pairs;
}

// ---------------------------------------------------------------------------------------

/// Aligned like a framework's tensors (PyTorch's CPU allocator aligns to 64 bytes). With a
/// std::vector's 16-byte alignment every 64-byte row load spans two cache lines: the strips,
/// which read V rows in place, ran 6-10% slower at 7 x 7 and 3 x 7 x 7; dense attention, which
/// packs its tiles, about 1%.
struct inputs {
  i64 n, d;
  buffer<float> q, k, v, out, dense_out;
  inputs(i64 n_, i64 d_)
      : n(n_), d(d_), q(normal_buffer(static_cast<std::size_t>(kH * n * d), 1)),
        k(normal_buffer(static_cast<std::size_t>(kH * n * d), 2)),
        v(normal_buffer(static_cast<std::size_t>(kH * n * d), 3)),
        out(alloc_buffer<float>(static_cast<std::size_t>(kH * n * d))),
        dense_out(alloc_buffer<float>(static_cast<std::size_t>(kH * std::min(n, kDenseRows) * d))) {}
  static buffer<float> normal_buffer(std::size_t size, std::uint64_t seed) {
    buffer<float> b = alloc_buffer<float>(size);
    fill_normal(b.get(), size, seed);
    return b;
  }
};

/// Times `policy` over N tokens and dense attention over the first kDenseRows queries.
template <class Policy>
void bm_sparse(benchmark::State& state, Policy policy, i64 n, i64 d, double pairs_per_head) {
  inputs in(n, d);
  const i64 dense_rows = std::min(n, kDenseRows);
  const auto q = attnkit::view_bhsd(in.q.get(), 1, kH, n, d), k = attnkit::view_bhsd(in.k.get(), 1, kH, n, d),
             v = attnkit::view_bhsd(in.v.get(), 1, kH, n, d);
  // The first dense_rows queries of every head: same strides as q, fewer rows.
  const attnkit::tensor_view<float> q_dense(in.q.get(), {1, kH, dense_rows, d}, q.strides());
  const auto out = attnkit::view_bhsd(in.out.get(), 1, kH, n, d);
  const auto dense_out = attnkit::view_bhsd(in.dense_out.get(), 1, kH, dense_rows, d);
  const attnkit::softmax dense{};
  attnkit::attention(policy, q, k, v, out);  // warm-up: arenas, pages
  attnkit::attention(dense, q_dense, k, v, dense_out);
  double sparse_s = 0, dense_s = 0;
  for (auto _ : state) {
    auto t0 = clock_type::now();
    attnkit::attention(policy, q, k, v, out);
    const double ts = seconds_since(t0);
    t0 = clock_type::now();
    attnkit::attention(dense, q_dense, k, v, dense_out);
    dense_s += seconds_since(t0) * static_cast<double>(n) / static_cast<double>(dense_rows);
    sparse_s += ts;
    state.SetIterationTime(ts);
  }
  const double kept = pairs_per_head / (static_cast<double>(n) * static_cast<double>(n));
  state.counters["kept"] = kept;
  state.counters["sol_ratio"] = sparse_s / (dense_s * kept);
  // How fast the denominator ran: dense attention here reads 16-32K keys per query tile
  // from the L3 this host shares, and its rate varies more between runs than the sparse one.
  if (dense_s > 0)
    set_ratio_counter(state, "dense_roof_ratio",
                      4.0 * kH * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(d) *
                          static_cast<double>(state.iterations()) / dense_s * 1e-9,
                      fma_roof_gflops(), "FMA roof");
  set_flop_counters(state, 4.0 * kH * pairs_per_head * static_cast<double>(d), sparse_s);
}

template <class Policy>
void add(const std::string& name, Policy policy, i64 n, i64 d, double pairs, bool tiny) {
  benchmark::RegisterBenchmark((name + "/D:" + std::to_string(d)).c_str(), bm_sparse<Policy>, policy, n, d, pairs)
      ->UseManualTime()
      ->Unit(tiny ? benchmark::kMicrosecond : benchmark::kMillisecond);
}

void register_all() {
  for (const bool tiny : {false, true}) {
    const std::string t = tiny ? "/tiny" : "";
    for (const i64 d : {i64(64), i64(128)}) {
      if (tiny && d == 128) continue;
      {  // 1-D: N = 16K, kernel 512
        attnkit::neighborhood<1> p;
        p.shape = {tiny ? 512 : 16384};
        p.kernel = {tiny ? 33 : 512};
        add("neighborhood1d" + t + "/N:" + std::to_string(p.shape[0]) + "/kernel:" + std::to_string(p.kernel[0]), p,
            p.shape[0], d, kept_pairs(p), tiny);
      }
      for (const i64 kernel : {i64(13), i64(7)})  // 2-D: 128 x 128, dilation 1 and 2
        for (const i64 dil : {i64(1), i64(2)}) {
          attnkit::neighborhood<2> p;
          const i64 side = tiny ? 24 : 128;
          p.shape = {side, side};
          p.kernel = {kernel, kernel};
          p.dilation = {dil, dil};
          add("neighborhood2d" + t + "/grid:" + std::to_string(side) + "x" + std::to_string(side) + "/kernel:" +
                  std::to_string(kernel) + "x" + std::to_string(kernel) + "/dilation:" + std::to_string(dil),
              p, side * side, d, kept_pairs(p), tiny);
          if (tiny) break;
        }
      {  // 3-D: 16 x 32 x 32, kernel 3 x 7 x 7
        attnkit::neighborhood<3> p;
        p.shape = tiny ? std::array<index_t, 3>{4, 8, 8} : std::array<index_t, 3>{16, 32, 32};
        p.kernel = {3, 7, 7};
        add("neighborhood3d" + t + "/grid:" + std::to_string(p.shape[0]) + "x" + std::to_string(p.shape[1]) + "x" +
                std::to_string(p.shape[2]) + "/kernel:3x7x7",
            p, p.shape[0] * p.shape[1] * p.shape[2], d, kept_pairs(p), tiny);
      }
      for (const i64 n : {i64(16384), i64(32768)}) {  // paper defaults: b 256, W 5, S 1, causal
        const attnkit::power p{};
        const i64 nn = tiny ? 2048 : n;
        add("power" + t + "/N:" + std::to_string(nn), p, nn, d, kept_pairs(p, nn), tiny);
        if (tiny) break;
      }
      for (const i64 frames : {i64(16), i64(32)}) {  // token mode, 1 sink frame, 1024 tokens per frame
        attnkit::radial p;
        p.frames = tiny ? 8 : frames;
        p.tokens_per_frame = tiny ? 64 : 1024;
        const i64 nn = p.frames * p.tokens_per_frame;
        add("radial" + t + "/N:" + std::to_string(nn) + "/frames:" + std::to_string(p.frames), p, nn, d,
            kept_pairs(p, nn), tiny);
        if (tiny) break;
      }
      {  // custom: causal sliding window of 1024 keys, with a block predicate
        const i64 n = tiny ? 1024 : 16384, w = tiny ? 128 : 1024;
        const auto keep = [w](index_t, index_t, index_t i, index_t j) { return j <= i && i - j < w; };
        const auto block = [w](index_t, index_t, index_t q0, index_t q1, index_t k0, index_t k1) {
          if (k0 > q1 || q0 - k1 >= w) return attnkit::block_kind::skip;
          return k1 <= q0 && q1 - k0 < w ? attnkit::block_kind::full : attnkit::block_kind::partial;
        };
        double pairs = 0;
        for (i64 i = 0; i < n; ++i) pairs += static_cast<double>(std::min(i + 1, w));
        add("custom_window" + t + "/N:" + std::to_string(n) + "/window:" + std::to_string(w),
            attnkit::make_custom(keep, attnkit::identity_score{}, block), n, d, pairs, tiny);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick_flag = take_flag(argc, argv, "--attnkit_quick");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  measure_roofs(quick_mode(quick_flag));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
