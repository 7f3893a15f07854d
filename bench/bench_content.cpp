/// \file
/// Content-based sparse attention: HiP and routing against dense flash attention at the same
/// shape, in the same run, with the time split into the selection (HiP's search, routing's
/// clusters) and the attention over it.
///
///   hip/prefill/N     H 2, D 128, the paper's defaults (top_k 512, block_q 32, block_k 2),
///                     causal. Counters: speedup (dense causal time / HiP time), select_share,
///                     recall (the dense softmax mass on the kept keys, float64, N 4096):
///                     recall_local on inputs with attention locality (keys a slow random
///                     walk, query i = key i + noise), recall_iid on i.i.d. normal q and k.
///   hip/decode/Nk     1 query per head, GQA 32/8, D 128: HiP selecting every step, and reusing
///                     one selection for 8 steps (the paper's refresh interval), against dense
///                     decode. Counters: speedup, select_share, speedup_reuse8, dense_GBps.
///   routing/N         H 2, D 128, C = round(sqrt(N)), balanced clusters. Counters: speedup,
///                     select_share (routing_membership for every head over the total).
///
/// Dense causal attention is timed whole up to N = 32768. Above, and for non-causal attention
/// above N = 8192, it is timed on its last 1024 query rows over all keys (every row of
/// non-causal attention costs the same) and scaled to the N rows, or to the N (N + 1) / 2
/// pairs of causal attention at that non-causal rate (which flatters dense: its causal tiles
/// run slower than full ones). "dense_estimated" says when. "tiny" versions run in CI:
///
///   bench_content --benchmark_filter=tiny --benchmark_min_time=0.01
#include "bench_common.hpp"
#include "dense_estimate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>

namespace {

using namespace attnkit_bench;
using i64 = std::int64_t;
using attnkit::index_t;

buffer<float> normal_buffer(std::size_t size, std::uint64_t seed) {
  buffer<float> b = alloc_buffer<float>(size);
  fill_normal(b.get(), size, seed);
  return b;
}

/// Keys with attention locality: a slow random walk along the sequence (AR(1), correlation
/// 0.99 between neighbours), so nearby keys score alike.
void fill_local(float* p, i64 heads, i64 n, i64 d, std::uint64_t seed) {
  fill_normal(p, static_cast<std::size_t>(heads * n * d), seed);
  const float rho = 0.99f, fresh = std::sqrt(1 - rho * rho);
  for (i64 h = 0; h < heads; ++h)
    for (i64 i = 1; i < n; ++i)
      for (i64 c = 0; c < d; ++c) {
        float* x = p + (h * n + i) * d + c;
        *x = rho * x[-d] + fresh * *x;
      }
}

/// Mean over queries and heads of the dense softmax mass (float64) on the keys HiP keeps.
double hip_recall(const attnkit::hip& p, i64 heads, i64 n, i64 d, bool local, std::uint64_t seed) {
  std::vector<float> q(static_cast<std::size_t>(heads * n * d)), k(q.size());
  if (local) {  // query i resembles the keys around position i (its own content, plus noise)
    fill_local(k.data(), heads, n, d, seed);
    fill_normal(q.data(), q.size(), seed + 1);
    for (std::size_t e = 0; e < q.size(); ++e) q[e] = k[e] + 0.5f * q[e];
  } else {
    fill_normal(q.data(), q.size(), seed), fill_normal(k.data(), k.size(), seed + 1);
  }
  const auto qv = attnkit::view_bhsd(q.data(), 1, heads, n, d), kv = attnkit::view_bhsd(k.data(), 1, heads, n, d);
  const attnkit::hip_selection sel = attnkit::hip_select(p, qv, kv);
  const double scale = 1 / std::sqrt(static_cast<double>(d));
  double total = 0;
  std::vector<double> s(static_cast<std::size_t>(n));
  for (i64 h = 0; h < heads; ++h) {
    const std::vector<std::uint8_t> mask = attnkit::dense_mask(sel, 0, h);
    for (i64 i = 0; i < n; ++i) {
      const i64 visible = p.causal ? i + 1 : n;
      double m = -1e300, all = 0, kept = 0;
      for (i64 j = 0; j < visible; ++j) {
        double dot = 0;
        for (i64 c = 0; c < d; ++c) dot += double(q[static_cast<std::size_t>((h * n + i) * d + c)]) * k[static_cast<std::size_t>((h * n + j) * d + c)];
        s[static_cast<std::size_t>(j)] = dot * scale;
        m = std::max(m, s[static_cast<std::size_t>(j)]);
      }
      for (i64 j = 0; j < visible; ++j) {
        const double w = std::exp(s[static_cast<std::size_t>(j)] - m);
        all += w;
        if (mask[static_cast<std::size_t>(i * n + j)]) kept += w;
      }
      total += kept / all;
    }
  }
  return total / static_cast<double>(heads * n);
}

void bm_hip_prefill(benchmark::State& state, i64 n, bool tiny) {
  const i64 H = 2, D = 128;
  attnkit::hip p;  // the paper's defaults
  const std::size_t size = static_cast<std::size_t>(H * n * D);
  buffer<float> q = normal_buffer(size, 1), k = normal_buffer(size, 2), v = normal_buffer(size, 3),
                out = alloc_buffer<float>(size);
  const auto qv = attnkit::view_bhsd(q.get(), 1, H, n, D), kv = attnkit::view_bhsd(k.get(), 1, H, n, D),
             vv = attnkit::view_bhsd(v.get(), 1, H, n, D), ov = attnkit::view_bhsd(out.get(), 1, H, n, D);
  attnkit::attention(p, qv, kv, vv, ov);  // warm-up: arenas, pages
  double select_s = 0, attend_s = 0, dense_s = 0;
  for (auto _ : state) {
    auto t0 = clock_type::now();
    const attnkit::hip_selection sel = attnkit::hip_select(p, qv, kv);
    const double ts = seconds_since(t0);
    t0 = clock_type::now();
    attnkit::attention(sel, qv, kv, vv, ov);
    const double ta = seconds_since(t0);
    select_s += ts, attend_s += ta;
    state.SetIterationTime(ts + ta);
    dense_s += dense_seconds(state, qv, kv, vv, out.get(), true);
  }
  state.counters["speedup"] = dense_s / (select_s + attend_s);
  state.counters["select_share"] = select_s / (select_s + attend_s);
  if (!tiny) {
    state.counters["recall_local"] = hip_recall(p, 2, 4096, 128, true, 11);
    state.counters["recall_iid"] = hip_recall(p, 2, 4096, 128, false, 12);
  }
}

void bm_hip_decode(benchmark::State& state, i64 nk) {
  const i64 Hq = 32, Hkv = 8, D = 128;
  attnkit::hip p;
  buffer<float> q = normal_buffer(static_cast<std::size_t>(Hq * D), 1),
                k = normal_buffer(static_cast<std::size_t>(Hkv * nk * D), 2),
                v = normal_buffer(static_cast<std::size_t>(Hkv * nk * D), 3),
                out = alloc_buffer<float>(static_cast<std::size_t>(Hq * D));
  const auto qv = attnkit::view_bhsd(q.get(), 1, Hq, 1, D), kv = attnkit::view_bhsd(k.get(), 1, Hkv, nk, D),
             vv = attnkit::view_bhsd(v.get(), 1, Hkv, nk, D), ov = attnkit::view_bhsd(out.get(), 1, Hq, 1, D);
  const attnkit::softmax dense{};
  attnkit::attention(p, qv, kv, vv, ov);
  attnkit::attention(dense, qv, kv, vv, ov);
  double hip_s = 0, select_s = 0, attend_s = 0, dense_s = 0;
  for (auto _ : state) {
    auto t0 = clock_type::now();
    const attnkit::hip_selection sel = attnkit::hip_select(p, qv, kv);
    const double ts = seconds_since(t0);
    t0 = clock_type::now();
    attnkit::attention(sel, qv, kv, vv, ov);
    const double ta = seconds_since(t0);
    t0 = clock_type::now();
    attnkit::attention(dense, qv, kv, vv, ov);
    dense_s += seconds_since(t0);
    hip_s += ts + ta, select_s += ts, attend_s += ta;
    state.SetIterationTime(ts + ta);
  }
  state.counters["speedup"] = dense_s / hip_s;
  state.counters["select_share"] = select_s / hip_s;
  // One search per 8 steps: (search + 8 attentions) / 8 per step.
  state.counters["speedup_reuse8"] = dense_s / (select_s / 8 + attend_s);
  // Dense decode's own rate: it reads K and V once.
  state.counters["dense_GBps"] = 2.0 * Hkv * static_cast<double>(nk) * D * sizeof(float) * 1e-9 *
                                 static_cast<double>(state.iterations()) / dense_s;
}

void bm_routing(benchmark::State& state, i64 n) {
  const i64 H = 2, D = 128, C = std::llround(std::sqrt(static_cast<double>(n)));
  const std::size_t size = static_cast<std::size_t>(H * n * D);
  buffer<float> q = normal_buffer(size, 1), k = normal_buffer(size, 2), v = normal_buffer(size, 3),
                out = alloc_buffer<float>(size);
  const std::vector<float> mu = normal_vector(static_cast<std::size_t>(H * C * D), 4);
  attnkit::routing p;
  p.centroids = mu.data(), p.num_clusters = C;
  const auto qv = attnkit::view_bhsd(q.get(), 1, H, n, D), kv = attnkit::view_bhsd(k.get(), 1, H, n, D),
             vv = attnkit::view_bhsd(v.get(), 1, H, n, D), ov = attnkit::view_bhsd(out.get(), 1, H, n, D);
  attnkit::attention(p, qv, kv, vv, ov);
  double routing_s = 0, select_s = 0, dense_s = 0;
  for (auto _ : state) {
    auto t0 = clock_type::now();
    attnkit::attention(p, qv, kv, vv, ov);
    const double tr = seconds_since(t0);
    t0 = clock_type::now();
    for (i64 h = 0; h < H; ++h) benchmark::DoNotOptimize(attnkit::routing_membership(p, qv, kv, 0, h));
    select_s += seconds_since(t0);
    routing_s += tr;
    state.SetIterationTime(tr);
    dense_s += dense_seconds(state, qv, kv, vv, out.get(), false);
  }
  state.counters["clusters"] = static_cast<double>(C);
  state.counters["speedup"] = dense_s / routing_s;
  state.counters["select_share"] = select_s / routing_s;
}

void register_all() {
  for (const i64 n : {i64(8192), i64(32768), i64(131072)})
    benchmark::RegisterBenchmark(("hip/prefill/N:" + std::to_string(n)).c_str(), bm_hip_prefill, n, false)
        ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(n > 32768 ? 1 : 2);
  benchmark::RegisterBenchmark("hip/prefill/tiny/N:2048", bm_hip_prefill, i64(2048), true)
      ->UseManualTime()->Unit(benchmark::kMillisecond);
  for (const i64 nk : {i64(32768), i64(131072)})
    benchmark::RegisterBenchmark(("hip/decode/Nk:" + std::to_string(nk)).c_str(), bm_hip_decode, nk)
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("hip/decode/tiny/Nk:4096", bm_hip_decode, i64(4096))
      ->UseManualTime()->Unit(benchmark::kMicrosecond);
  for (const i64 n : {i64(8192), i64(32768), i64(131072)})
    benchmark::RegisterBenchmark(("routing/N:" + std::to_string(n)).c_str(), bm_routing, n)
        ->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);
  benchmark::RegisterBenchmark("routing/tiny/N:1024", bm_routing, i64(1024))->UseManualTime()->Unit(benchmark::kMillisecond);
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
