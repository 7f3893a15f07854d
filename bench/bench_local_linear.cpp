/// \file
/// Local linear attention (Zuo et al., arXiv 2510.01450) against dense softmax flash attention
/// at the same shape, in the same run: B 1, H 4 (query and key/value heads), D = Dv = 64.
///
///   lla/{full,causal}/ridge:{0.01,0}/N:n   attnkit::attention(local_linear). Counters:
///       vs_flash         LLA time over dense flash softmax time at this shape (measured in the
///                        same iteration; how many times slower LLA is)
///       GFLOPs           double-precision work a visible (query, key) pair needs, 2 D (score)
///                        + D (D + 1) (symmetric key moments) + 2 Dv D (value-key moments)
///       fp64_roof_ratio  GFLOPs over half the FP32 FMA roof measured in main() (the same
///                        vector units run half as many double lanes)
///   ridge:0 adds the per-query eigen-decomposition of the singular-S path (D^3 work per query).
///   lla/tiny/...  small shapes for CI:
///
///   bench_local_linear --benchmark_filter=tiny --benchmark_min_time=0.01
///
/// The CPU model is printed first and added to the benchmark context.
#include "bench_common.hpp"
#include "dense_estimate.hpp"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include <attnkit/attnkit.hpp>

namespace {

using namespace attnkit_bench;
using i64 = std::int64_t;

constexpr i64 kHeads = 4;

/// "model name" of the first CPU in /proc/cpuinfo (Linux), else "unknown".
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown";
}

/// q, k, v [1, kHeads, n, d], standard normal scaled by 0.5 (q, k) so that the kernel weights are
/// neither uniform nor one-hot, and out.
struct inputs {
  i64 n, d;
  buffer<float> q, k, v, out;
  inputs(i64 n_, i64 d_)
      : n(n_), d(d_), q(alloc_buffer<float>(size())), k(alloc_buffer<float>(size())), v(alloc_buffer<float>(size())),
        out(alloc_buffer<float>(size())) {
    fill_normal(q.get(), size(), 1);
    fill_normal(k.get(), size(), 2);
    fill_normal(v.get(), size(), 3);
    for (std::size_t i = 0; i < size(); ++i) q.get()[i] *= 0.5f, k.get()[i] *= 0.5f;
  }
  std::size_t size() const { return static_cast<std::size_t>(kHeads * n * d); }
  attnkit::tensor_view<float> view(float* p) const { return attnkit::view_bhsd(p, 1, kHeads, n, d); }
};

void bm_lla(benchmark::State& state, i64 n, i64 d, bool causal, float ridge) {
  inputs in(n, d);
  attnkit::local_linear p;
  p.causal = causal, p.ridge = ridge;
  const auto run = [&] {
    const auto t0 = clock_type::now();
    attnkit::attention(p, in.view(in.q.get()), in.view(in.k.get()), in.view(in.v.get()), in.view(in.out.get()));
    return seconds_since(t0);
  };
  run();  // warm-up: arenas, pages
  double ours = 0, dense = 0;
  for (auto _ : state) {
    const double t = run();
    ours += t;
    state.SetIterationTime(t);
    dense += dense_seconds(state, in.view(in.q.get()), in.view(in.k.get()), in.view(in.v.get()), in.out.get(), causal);
  }
  state.counters["vs_flash"] = ours / dense;
  const double pairs = causal ? static_cast<double>(n) * static_cast<double>(n + 1) / 2 : static_cast<double>(n) * n;
  const double dd = static_cast<double>(d);
  const double flops = static_cast<double>(kHeads) * pairs * (2 * dd + dd * (dd + 1) + 2 * dd * dd);
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  set_ratio_counter(state, "fp64_roof_ratio", flops * 1e-9 * static_cast<double>(state.iterations()) / ours,
                    fma_roof_gflops() / 2, "FP64 FMA roof (half the FP32 one)");
}

void register_all() {
  const auto reg = [](const std::string& name, auto... args) {
    return benchmark::RegisterBenchmark(name.c_str(), bm_lla, args...)->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  for (const i64 n : {i64(1024), i64(2048)})
    for (const bool causal : {false, true}) {
      const std::string mask = causal ? "causal" : "full";
      reg("lla/" + mask + "/ridge:0.01/N:" + std::to_string(n), n, i64(64), causal, 1e-2f)
          ->Iterations(n > 1024 ? 1 : 2);
      reg("lla/" + mask + "/ridge:0/N:" + std::to_string(n), n, i64(64), causal, 0.f)->Iterations(1);
    }
  reg("lla/tiny/full/ridge:0.01/N:128", i64(128), i64(32), false, 1e-2f);
  reg("lla/tiny/causal/ridge:0/N:128", i64(128), i64(32), true, 0.f);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick_flag = take_flag(argc, argv, "--attnkit_quick");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const std::string model = cpu_model();
  std::printf("CPU model:      %s\n", model.c_str());
  benchmark::AddCustomContext("cpu_model", model);
  register_all();
  measure_roofs(quick_mode(quick_flag));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
