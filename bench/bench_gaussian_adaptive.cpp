/// \file
/// Gaussian adaptive attention (GAAM; Ioannides, Chadha, Elkins 2024, arXiv 2401.11143): the
/// feature-gaussian engine on both axes, B 1, H 16, D 128, float in and out (bhsd), N 4096 and
/// 16384, all hardware threads. GAAM reads v once and writes out once, so it is measured
/// against memory bandwidth (spec/probabilistic.md part B: "attnkit targets memory bandwidth").
///
///   gaam/{dim,seq}/N:n              one Gaussian, one chunk (the defaults)
///   gaam/{dim,seq}/G:8/chunks:4/N:n 8 Gaussians in each of 4 chunks: the folded quadratic
///                                   makes the cost independent of G
///   gaam/dim/bf16/N:n               bf16 in and out
///   baseline/copy/N:n               out = v with the same threads and partition: the
///                                   ceiling of any one-read, one-write kernel here
///
/// Counters: GBps = (bytes of v read + bytes of out written) per second; paired_bw_GBps =
/// DRAM read bandwidth of read passes run right before and right after the timed loop (this
/// host's bandwidth swings between runs: bench_common.hpp, paired_bandwidth); bw_ratio =
/// GBps / paired_bw_GBps. Written bytes count too, so a kernel as fast as a copy reads above
/// 1 (a copy with ordinary stores moved ~1.1x the read bandwidth here): bw_ratio is set
/// directly, not through set_ratio_counter's check for ratios above 1. The target is
/// bw_ratio >= 0.5. cpu_GBps = the bytes over the process's CPU time spread over the hardware
/// threads: what GBps would be had no other process taken CPU time (on a shared host a
/// waiting thread adds wall time, not CPU time; stalls on memory count in both). The CPU
/// model and instruction set are printed first. "tiny" versions run in CI:
///
///   bench_gaussian_adaptive --benchmark_filter=tiny --benchmark_min_time=0.01
#include "bench_common.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>

namespace {

using namespace attnkit_bench;
using i64 = std::int64_t;
using axis_kind = attnkit::gaussian_adaptive::axis_kind;

constexpr i64 kBatch = 1, kHeads = 16, kDim = 128;
/// Bytes of the paired read passes (as bench_softmax's decode).
constexpr std::size_t kPairedBytes = std::size_t(256) << 20;

/// CPU time of the whole process (every thread), in seconds.
double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// The CPU model from /proc/cpuinfo (Linux; "unknown" elsewhere).
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  return "unknown";
}

template <class T>
buffer<T> input_buffer(std::size_t n, std::uint64_t seed) {
  buffer<T> b = alloc_buffer<T>(n);
  std::vector<float> x = normal_vector(n, seed);
  for (std::size_t i = 0; i < n; ++i) b.get()[i] = T(x[i]);
  return b;
}

/// G Gaussians per chunk: offsets in [-0.5, 0.5], scales exp(N(0, 1)) (the code's init).
struct parameters {
  std::vector<float> offsets, scales;
  parameters(i64 chunks, i64 gaussians) {
    const std::vector<float> a = normal_vector(static_cast<std::size_t>(chunks * gaussians), 7),
                             b = normal_vector(static_cast<std::size_t>(chunks * gaussians), 8);
    for (std::size_t i = 0; i < a.size(); ++i) {
      offsets.push_back(std::clamp(0.25f * a[i], -0.5f, 0.5f));
      scales.push_back(std::exp(b[i]));
    }
  }
};

/// Times `step` per iteration between paired bandwidth passes; sets GBps, paired_bw_GBps and
/// bw_ratio for `bytes` moved a step. In-cache (tiny) cases report against main()'s bandwidth.
template <class Step>
void time_streaming(benchmark::State& state, double bytes, bool paired, Step step) {
  constexpr int passes_each_side = 3;
  std::unique_ptr<paired_bandwidth> bw;
  step();  // warm-up: thread pool, arenas, pages
  if (paired) {
    bw = std::make_unique<paired_bandwidth>(kPairedBytes);
    for (int p = 0; p < passes_each_side; ++p) bw->pass();
  }
  const double cpu0 = process_cpu_seconds();
  loop_clock clock;
  for (auto _ : state) {
    step();
    benchmark::ClobberMemory();
  }
  const double secs = clock.seconds(), cpu = process_cpu_seconds() - cpu0;
  if (bw)
    for (int p = 0; p < passes_each_side; ++p) bw->pass();
  const double read_bw = bw ? bw->gbps() : read_bw_gbps();
  const double gbps = bytes * static_cast<double>(state.iterations()) / secs * 1e-9;
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (bw) state.counters["paired_bw_GBps"] = read_bw;
  if (read_bw > 0) state.counters["bw_ratio"] = gbps / read_bw;
  // The rate if every thread had had a CPU to itself: bytes over the process's CPU time
  // spread over the hardware threads (stalls on memory count, waiting for a CPU does not).
  if (cpu > 0) state.counters["cpu_GBps"] = bytes * static_cast<double>(state.iterations()) / (cpu / hw_threads()) * 1e-9;
}

template <class T>
void bm_gaam(benchmark::State& state, axis_kind axis, i64 heads, i64 n, i64 d, i64 chunks, i64 gaussians,
             bool paired) {
  const std::size_t size = static_cast<std::size_t>(kBatch * heads * n * d);
  const buffer<T> v = input_buffer<T>(size, 1);
  buffer<T> out = alloc_buffer<T>(size);
  std::memset(static_cast<void*>(out.get()), 0, size * sizeof(T));  // first touch outside the timed loop
  const parameters params(chunks, gaussians);
  attnkit::gaussian_adaptive p;
  p.axis = axis;
  p.chunks = chunks, p.gaussians = gaussians;
  if (chunks * gaussians > 1) p.mean_offsets = params.offsets.data(), p.var_scales = params.scales.data();
  const auto V = attnkit::view_bhsd(static_cast<const T*>(v.get()), kBatch, heads, n, d);
  const auto O = attnkit::view_bhsd(out.get(), kBatch, heads, n, d);
  time_streaming(state, 2.0 * static_cast<double>(size * sizeof(T)), paired,
                 [&] { attnkit::attention(p, V, V, V, O); });
}

/// out = v through attnkit's executor, split as the dim axis splits tokens.
void bm_copy(benchmark::State& state, i64 n) {
  const std::size_t size = static_cast<std::size_t>(kBatch * kHeads * n * kDim);
  const buffer<float> v = input_buffer<float>(size, 1);
  buffer<float> out = alloc_buffer<float>(size);
  std::memset(out.get(), 0, size * sizeof(float));
  const i64 rows = kBatch * kHeads * n, per_item = attnkit::detail::feature_gaussian::rows_per_item(kDim, true);
  time_streaming(state, 2.0 * static_cast<double>(size * sizeof(float)), true, [&] {
    attnkit::detail::parallel_for((rows + per_item - 1) / per_item, 0, [&](i64 item) {
      const i64 first = item * per_item, last = std::min(rows, first + per_item);
      std::memcpy(out.get() + first * kDim, v.get() + first * kDim,
                  static_cast<std::size_t>((last - first) * kDim) * sizeof(float));
    });
  });
}

void register_all() {
  const auto reg = [](const std::string& name, auto fn, auto... args) {
    return benchmark::RegisterBenchmark(name.c_str(), fn, args...)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  for (const i64 n : {i64(4096), i64(16384)}) {
    const std::string shape = "/N:" + std::to_string(n);
    reg("baseline/copy" + shape, bm_copy, n);
    for (const axis_kind axis : {axis_kind::dim, axis_kind::seq}) {
      const std::string name = std::string("gaam/") + (axis == axis_kind::dim ? "dim" : "seq");
      reg(name + shape, bm_gaam<float>, axis, kHeads, n, kDim, i64(1), i64(1), true);
      reg(name + "/G:8/chunks:4" + shape, bm_gaam<float>, axis, kHeads, n, kDim, i64(4), i64(8), true);
    }
    reg("gaam/dim/bf16" + shape, bm_gaam<attnkit::bf16>, axis_kind::dim, kHeads, n, kDim, i64(1), i64(1), true);
  }
  const auto tiny = [&](const std::string& name, axis_kind axis) {
    reg(name, bm_gaam<float>, axis, i64(2), i64(256), i64(64), i64(2), i64(3), false)->Unit(benchmark::kMicrosecond);
  };
  tiny("gaam/dim/tiny/N:256", axis_kind::dim);
  tiny("gaam/seq/tiny/N:256", axis_kind::seq);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick_flag = take_flag(argc, argv, "--attnkit_quick");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const std::string model = cpu_model(), isa = xsimd::default_arch::name();
  std::printf("CPU: %s; attnkit built for %s (%d-lane float vectors)\n", model.c_str(), isa.c_str(),
              static_cast<int>(xsimd::batch<float>::size));
  benchmark::AddCustomContext("cpu_model", model);
  benchmark::AddCustomContext("isa", isa);
  register_all();
  measure_roofs(quick_mode(quick_flag));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
