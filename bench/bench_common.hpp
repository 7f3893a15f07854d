/// \file
/// Shared pieces of attnkit's Google Benchmark programs: the machine roofs (FP32 FMA
/// throughput and DRAM read bandwidth, both on every hardware thread) measured once in
/// main(), counter helpers that report GFLOP/s and GB/s and their ratio to those roofs,
/// random inputs, a persistent worker team for the single-threaded Eigen baselines, and a
/// peak-memory probe.
///
/// Counters (over wall-clock time: register every benchmark with UseRealTime(), because
/// attnkit and the baselines run their own threads):
///   GFLOPs      useful floating-point work per second, 1e9 units
///   roof_ratio  GFLOPs / FMA roof measured in main() (plain number)
///   GBps        bytes read per second, 1e9 units
///   bw_ratio    GBps / read bandwidth measured in main(), or for streaming benchmarks over
///               the bandwidth of read passes run next to their timed loop (paired_bandwidth)
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "roof_loops.hpp"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#endif

namespace attnkit_bench {

// ---------------------------------------------------------------------------------------
// Threads and time

inline int hw_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// A fixed team of threads for the multi-threaded baselines: the caller plus size() - 1
/// persistent workers (as attnkit keeps its own pool), so thread creation is not timed.
/// run(f) calls f(t) for t in [0, size()) concurrently and returns when all are done.
class worker_team {
 public:
  explicit worker_team(int threads) : size_(std::max(threads, 1)) {
    for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { work(t); });
  }
  ~worker_team() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    start_.notify_all();
    for (auto& w : workers_) w.join();
  }
  worker_team(const worker_team&) = delete;
  worker_team& operator=(const worker_team&) = delete;

  int size() const { return size_; }

  template <class F>
  void run(F&& f) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = std::function<void(int)>(std::ref(f));
      pending_ = size_ - 1;
      ++generation_;
    }
    start_.notify_all();
    f(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

  /// The team shared by the baselines: one thread per hardware thread.
  static worker_team& shared() {
    static worker_team team(hw_threads());
    return team;
  }

 private:
  void work(int t) {
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      std::function<void(int)> job = job_;
      lock.unlock();
      job(t);
      lock.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::function<void(int)> job_;
  std::uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

/// Runs f(thread_index) on `threads` new std::threads, thread t pinned to the t-th CPU the
/// process may use (Linux; elsewhere unpinned), and returns when all are done. The roof
/// measurements use it so that the scheduler cannot stack two of them on one core.
template <class F>
void run_on_pinned_threads(int threads, F&& f) {
#if defined(__linux__)
  std::vector<int> cpus;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
#endif
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
#if defined(__linux__)
      if (!cpus.empty()) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[static_cast<std::size_t>(t) % cpus.size()], &one);
        pthread_setaffinity_np(pthread_self(), sizeof one, &one);
      }
#endif
      f(t);
    });
  for (auto& th : pool) th.join();
}

/// A spin barrier so that the threads of a roof measurement start together.
class spin_barrier {
 public:
  explicit spin_barrier(int n) : n_(n) {}
  void arrive_and_wait() {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_acq_rel);
    } else {
      while (gen_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
    }
  }

 private:
  int n_;
  std::atomic<int> count_{0}, gen_{0};
};

// ---------------------------------------------------------------------------------------
// Aligned buffers (64-byte aligned; 2 MiB aligned with a transparent-huge-page hint when
// large, which makes first touch of the bandwidth array several times faster).

struct free_deleter {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
using buffer = std::unique_ptr<T[], free_deleter>;

template <class T>
buffer<T> alloc_buffer(std::size_t n) {
  const std::size_t bytes = std::max<std::size_t>(n * sizeof(T), 64);
  const std::size_t align = bytes >= (std::size_t(8) << 20) ? (std::size_t(2) << 20) : 64;
  const std::size_t rounded = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align > 64) madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return buffer<T>(static_cast<T*>(p));
}

// ---------------------------------------------------------------------------------------
// Random inputs: standard normal values from a fixed seed (splitmix64 + Box-Muller; fast
// enough to fill the 8192-token inputs in a fraction of a second).

inline std::uint64_t splitmix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline void fill_normal(float* p, std::size_t n, std::uint64_t seed) {
  std::uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
  constexpr double two_pi = 6.283185307179586;
  for (std::size_t i = 0; i < n; i += 2) {
    const double u1 = (static_cast<double>(splitmix64(s) >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
    const double u2 = static_cast<double>(splitmix64(s) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    p[i] = static_cast<float>(r * std::cos(two_pi * u2));
    if (i + 1 < n) p[i + 1] = static_cast<float>(r * std::sin(two_pi * u2));
  }
}

inline std::vector<float> normal_vector(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  fill_normal(v.data(), n, seed);
  return v;
}

/// Converts float values to a 16-bit storage type T (explicit constructor from float).
template <class T>
std::vector<T> convert_vector(const std::vector<float>& src) {
  std::vector<T> out;
  out.reserve(src.size());
  for (float x : src) out.push_back(T(x));
  return out;
}

// ---------------------------------------------------------------------------------------
// Roof 1: FP32 FMA throughput, on all hardware threads; roof 2 below: read bandwidth. Their
// inner loops are in roof_loops.hpp.

/// Wall time of a multi-threaded measurement: from the first thread's start to the last
/// thread's end (a thread that starts late cannot make the others look faster).
class thread_span {
 public:
  explicit thread_span(int threads)
      : start_(static_cast<std::size_t>(threads)), stop_(static_cast<std::size_t>(threads)) {}
  void start(int t) { start_[static_cast<std::size_t>(t)] = clock_type::now(); }
  void stop(int t) { stop_[static_cast<std::size_t>(t)] = clock_type::now(); }
  double seconds() const {
    return std::chrono::duration<double>(*std::max_element(stop_.begin(), stop_.end()) -
                                         *std::min_element(start_.begin(), start_.end()))
        .count();
  }

 private:
  std::vector<clock_type::time_point> start_, stop_;
};

/// Runs `loop(iters, seed)` (roof_detail::fma_loop by default) on `threads` threads at once;
/// returns the wall time from the first thread's start to the last thread's finish.
template <class Loop = decltype(&roof_detail::fma_loop)>
double loop_seconds(int threads, std::int64_t iters, Loop loop = &roof_detail::fma_loop) {
  spin_barrier barrier(threads);
  thread_span span(threads);
  std::vector<float> sink(static_cast<std::size_t>(threads));
  run_on_pinned_threads(threads, [&](int t) {
    barrier.arrive_and_wait();
    span.start(t);
    sink[static_cast<std::size_t>(t)] = loop(iters, 1.0f + 0.1f * static_cast<float>(t));
    span.stop(t);
  });
  float s = 0;
  for (float x : sink) s += x;
  benchmark::DoNotOptimize(s);
  return span.seconds();
}

inline double fma_seconds(int threads, std::int64_t iters) { return loop_seconds(threads, iters); }

/// A multiply-add roof on all hardware threads, in GFLOP/s: the best of `reps` runs of `loop`
/// (flops_per_iter FLOPs a round) of about `seconds_per_rep` each (a short calibration run
/// picks the round count).
template <class Loop>
double measure_loop_roof(Loop loop, double flops_per_iter, double seconds_per_rep, int reps, int threads) {
  const std::int64_t calib = 1 << 16;
  const auto t0 = clock_type::now();
  benchmark::DoNotOptimize(loop(calib, 1.0f));
  const double tc = std::max(seconds_since(t0), 1e-7);
  const auto iters = static_cast<std::int64_t>(std::max(1.0, seconds_per_rep / tc * calib));
  double best = 0;
  for (int r = 0; r < reps; ++r)
    best = std::max(best, flops_per_iter * static_cast<double>(iters) * threads / loop_seconds(threads, iters, loop) * 1e-9);
  return best;
}

/// The FP32 FMA roof on all hardware threads.
inline double measure_fma_roof(double seconds_per_rep, int reps, int threads = hw_threads()) {
  return measure_loop_roof(&roof_detail::fma_loop, roof_detail::flops_per_iter(), seconds_per_rep, reps, threads);
}

// ---------------------------------------------------------------------------------------
// Roof 2: DRAM read bandwidth. Each thread first-touches its own contiguous part of one
// array of `total_bytes` (so pages live near it) and sums it; GB/s is all bytes read over
// the wall time from the first start to the last finish.

class read_bw_array {
 public:
  read_bw_array(std::size_t total_bytes, int threads)
      : threads_(threads),
        per_thread_((total_bytes / sizeof(float) / static_cast<std::size_t>(threads)) / 128 * 128),
        data_(alloc_buffer<float>(per_thread_ * static_cast<std::size_t>(threads))) {
    run_on_pinned_threads(threads_, [&](int t) {
      float* p = data_.get() + per_thread_ * static_cast<std::size_t>(t);
      for (std::size_t i = 0; i < per_thread_; ++i) p[i] = 1.0f;
    });
  }

  std::size_t bytes() const { return per_thread_ * static_cast<std::size_t>(threads_) * sizeof(float); }

  /// One timed pass on all threads; GB/s.
  double pass() { return static_cast<double>(bytes()) / pass_seconds() * 1e-9; }

  /// One timed pass on all threads; seconds from the first thread's start to the last's end.
  double pass_seconds() {
    spin_barrier barrier(threads_);
    thread_span span(threads_);
    std::vector<float> sink(static_cast<std::size_t>(threads_));
    run_on_pinned_threads(threads_, [&](int t) {
      const float* p = data_.get() + per_thread_ * static_cast<std::size_t>(t);
      barrier.arrive_and_wait();
      span.start(t);
      sink[static_cast<std::size_t>(t)] = roof_detail::read_sum(p, per_thread_);
      span.stop(t);
    });
    float s = 0;
    for (float x : sink) s += x;
    benchmark::DoNotOptimize(s);
    return span.seconds();
  }

 private:
  int threads_;
  std::size_t per_thread_;
  buffer<float> data_;
};

/// The median of `passes` passes: on a virtual machine, passes occasionally read far above
/// the sustained rate (idle neighbours) or below it (busy CPUs), so the median, not the
/// best, is what a streaming kernel can expect.
inline double measure_read_bw(std::size_t total_bytes, int passes, int threads = hw_threads()) {
  read_bw_array a(total_bytes, threads);
  std::vector<double> r;
  for (int p = 0; p < std::max(passes, 1); ++p) r.push_back(a.pass());
  std::sort(r.begin(), r.end());
  return r[r.size() / 2];
}

// ---------------------------------------------------------------------------------------
// The roofs of this run, set once in main() before RunSpecifiedBenchmarks.

inline double& fma_roof_gflops() {
  static double v = 0;
  return v;
}
inline double& read_bw_gbps() {
  static double v = 0;
  return v;
}
/// The bf16 dot-product roof (vdpbf16ps), on builds that have it; else 0.
inline double& bf16_dot_roof_gflops() {
  static double v = 0;
  return v;
}

/// Roof settings: full by default; quick under CI (the "tiny" filter, env
/// ATTNKIT_BENCH_QUICK=1 or --attnkit_quick). ATTNKIT_BENCH_BW_MIB overrides the size of
/// the bandwidth array. The roofs are always measured: every ratio's denominator comes from
/// the same run.
struct roof_settings {
  double fma_seconds_per_rep = 0.015;  // best of several short runs: robust to brief noise
  int fma_reps = 12;
  std::size_t bw_bytes = std::size_t(256) << 20;  // 8x a 32 MiB L3; first touch < 0.1 s
  int bw_passes = 7;
};

inline roof_settings roof_settings_for(bool quick) {
  roof_settings s;
  if (quick) {
    s.fma_seconds_per_rep = 0.005;
    s.fma_reps = 4;
    s.bw_bytes = std::size_t(128) << 20;
    s.bw_passes = 5;
  }
  if (const char* mib = std::getenv("ATTNKIT_BENCH_BW_MIB")) {
    const long v = std::atol(mib);
    if (v > 0) s.bw_bytes = static_cast<std::size_t>(v) << 20;
  }
  return s;
}

/// Measures both roofs, stores them, prints them and adds them to the benchmark context
/// (so they appear in JSON/CSV output too). Warns when other processes keep the CPUs busy,
/// because then the roofs (and every timing) read low.
inline void measure_roofs(bool quick) {
  const roof_settings s = roof_settings_for(quick);
  const int threads = hw_threads();
#if defined(__linux__)
  double load[1] = {0};
  if (getloadavg(load, 1) == 1 && load[0] > 0.5 * threads)
    std::printf("WARNING: 1-minute load average %.2f on %d hardware threads: other processes are running, "
                "roofs and timings will read low\n",
                load[0], threads);
#endif
  const auto t0 = clock_type::now();
  fma_roof_gflops() = measure_fma_roof(s.fma_seconds_per_rep, s.fma_reps, threads);
  read_bw_gbps() = measure_read_bw(s.bw_bytes, s.bw_passes, threads);
  const double took = seconds_since(t0);
  char line[256];
  std::snprintf(line, sizeof line, "%.1f GFLOP/s measured (%d threads, %d-lane %s, %d accumulators)",
                fma_roof_gflops(), threads, roof_detail::kLanes, roof_detail::kind().c_str(), roof_detail::kAcc);
  std::printf("FMA roof:       %s\n", line);
  benchmark::AddCustomContext("fma_roof_GFLOPs", line);
#if defined(__AVX512BF16__)
  bf16_dot_roof_gflops() = measure_loop_roof(&roof_detail::bf16_dot_loop, roof_detail::bf16_dot_flops_per_iter(),
                                             s.fma_seconds_per_rep, s.fma_reps, threads);
  std::snprintf(line, sizeof line, "%.1f GFLOP/s measured (%d threads, 16-lane AVX-512 vdpbf16ps, %d accumulators)",
                bf16_dot_roof_gflops(), threads, roof_detail::kAcc);
  std::printf("BF16 dot roof:  %s\n", line);
  benchmark::AddCustomContext("bf16_dot_roof_GFLOPs", line);
#endif
  std::snprintf(line, sizeof line, "%.1f GB/s measured (%d threads, %zu MiB array)", read_bw_gbps(), threads,
                s.bw_bytes >> 20);
  std::printf("Read bandwidth: %s\n", line);
  benchmark::AddCustomContext("read_bw_GBps", line);
  std::printf("(roofs measured in %.2f s%s)\n", took, quick ? ", quick mode" : "");
  std::fflush(stdout);
}

// ---------------------------------------------------------------------------------------
// Counters. "GFLOPs" and "GBps" are Google Benchmark rates (kIsIterationInvariantRate:
// the per-iteration amount in 1e9 units times the iteration count over the benchmark's
// time, real time under UseRealTime()). The ratios are plain numbers computed from the
// wall time of the timed loop, measured by a loop_clock started right before it.

class loop_clock {
 public:
  loop_clock() : t0_(clock_type::now()) {}
  double seconds() const { return seconds_since(t0_); }

 private:
  clock_type::time_point t0_;
};

/// `secs`: the time the iterations took (loop_clock::seconds(), or the sum of the times given
/// to SetIterationTime under UseManualTime()).
/// Sets counter `name` to rate / roof, a fraction of what the machine can do. A ratio above 1
/// means the roof is wrong on this host (or the work count is): no such ratio is reported;
/// the benchmark's label says so instead, and so does a warning on stderr.
inline void set_ratio_counter(benchmark::State& state, const char* name, double rate, double roof,
                              const char* roof_name) {
  if (roof <= 0 || !(rate >= 0)) return;
  const double ratio = rate / roof;
  if (ratio <= 1.0) {
    state.counters[name] = ratio;
    return;
  }
  char what[160];
  std::snprintf(what, sizeof what, "ROOF WRONG: %.3g is %.2fx the %s (%.3g); no %s", rate, ratio, roof_name, roof,
                name);
  state.SetLabel(what);
  std::fprintf(stderr, "\n*** WARNING: %s. The roof measured in this run is wrong on this host. ***\n\n", what);
}

/// roof_ratio over the FP32 FMA roof, or over the bf16 dot-product roof for work done on
/// bf16 dot products (bf16 inputs where attnkit uses them: see bf16_dot_in_use()).
enum class roof_kind { fp32_fma, bf16_dot };

inline void set_flop_counters(benchmark::State& state, double flops_per_iter, double secs,
                              roof_kind roof = roof_kind::fp32_fma) {
  const double g = flops_per_iter * 1e-9;
  state.counters["GFLOPs"] = benchmark::Counter(g, benchmark::Counter::kIsIterationInvariantRate);
  if (secs <= 0) return;
  const double rate = g * static_cast<double>(state.iterations()) / secs;
  if (roof == roof_kind::bf16_dot)
    set_ratio_counter(state, "roof_ratio", rate, bf16_dot_roof_gflops(), "bf16 dot-product roof");
  else
    set_ratio_counter(state, "roof_ratio", rate, fma_roof_gflops(), "FMA roof");
}

inline void set_byte_counters(benchmark::State& state, double bytes_per_iter, double secs) {
  const double g = bytes_per_iter * 1e-9;
  state.counters["GBps"] = benchmark::Counter(g, benchmark::Counter::kIsIterationInvariantRate);
  if (secs > 0)
    set_ratio_counter(state, "bw_ratio", g * static_cast<double>(state.iterations()) / secs, read_bw_gbps(),
                      "read bandwidth");
}

/// Bandwidth measured alongside a streaming benchmark, by read passes over `bytes` run next
/// to its timed loop. The memory bandwidth this shared host gives one machine swings
/// between ~45 and ~85 GB/s from one run to the next (neighbours' traffic), so a
/// denominator measured in main() minutes earlier compares two different machines.
class paired_bandwidth {
 public:
  explicit paired_bandwidth(std::size_t bytes) : array_(bytes, hw_threads()) { array_.pass_seconds(); }

  void pass() { seconds_ += array_.pass_seconds(), ++passes_; }

  /// GB/s over all passes so far.
  double gbps() const { return seconds_ > 0 ? static_cast<double>(array_.bytes()) * passes_ / seconds_ * 1e-9 : 0; }

 private:
  read_bw_array array_;
  double seconds_ = 0;
  int passes_ = 0;
};

/// Byte counters for a benchmark timed next to paired_bandwidth passes:
/// "bw_ratio" is over the paired bandwidth ("paired_bw_GBps"), not the one from main().
inline void set_paired_byte_counters(benchmark::State& state, double bytes_per_iter, double secs,
                                     const paired_bandwidth& bw) {
  const double g = bytes_per_iter * 1e-9;
  state.counters["GBps"] = benchmark::Counter(g, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["paired_bw_GBps"] = bw.gbps();
  if (secs > 0)
    set_ratio_counter(state, "bw_ratio", g * static_cast<double>(state.iterations()) / secs, bw.gbps(),
                      "paired read bandwidth");
}

/// FLOPs of softmax attention as conventionally counted (FlashAttention papers): two
/// matrix products of 2*Nq*Nk*D each per query head (D == Dv here); exactly half for causal.
inline double attention_flops(std::int64_t b, std::int64_t hq, std::int64_t nq, std::int64_t nk, std::int64_t d,
                              bool causal) {
  const double f = 4.0 * static_cast<double>(b) * hq * nq * nk * d;
  return causal ? f / 2 : f;
}

// ---------------------------------------------------------------------------------------
// Peak extra memory during a benchmark (Linux): resets the process's peak RSS (VmHWM) via
// /proc/self/clear_refs once the inputs and outputs exist, before the first call, and
// reports how far it rose above the RSS at that point ("peak_extra_MiB": the kernel's
// scratch memory). Memory a kernel keeps between calls (attnkit's per-thread arenas) shows
// only where it grows, i.e. in the first benchmark that needs that much. Silently off
// where /proc is not writable.

class peak_memory_probe {
 public:
  peak_memory_probe() {
#if defined(__linux__)
    std::ofstream clear("/proc/self/clear_refs");
    if (clear) {
      clear << "5";
      clear.flush();
      ok_ = static_cast<bool>(clear);
    }
    if (ok_) base_kib_ = read_status_kib("VmRSS:");
    ok_ = ok_ && base_kib_ >= 0;
#endif
  }

  void report(benchmark::State& state) const {
    if (!ok_) return;
    const long hwm = read_status_kib("VmHWM:");
    if (hwm < 0) return;
    state.counters["peak_extra_MiB"] = static_cast<double>(std::max(0L, hwm - base_kib_)) / 1024.0;
  }

 private:
  static long read_status_kib(const char* key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const std::size_t klen = std::strlen(key);
    while (std::getline(f, line))
      if (line.compare(0, klen, key) == 0) return std::atol(line.c_str() + klen);
    return -1;
  }
  bool ok_ = false;
  long base_kib_ = -1;
};

// ---------------------------------------------------------------------------------------
// Command line: flags of our own (removed before Google Benchmark parses the rest).

/// Removes `--name` from argv if present; returns whether it was.
inline bool take_flag(int& argc, char** argv, const char* name) {
  bool found = false;
  int w = 1;
  for (int r = 1; r < argc; ++r) {
    if (std::strcmp(argv[r], name) == 0) {
      found = true;
      continue;
    }
    argv[w++] = argv[r];
  }
  argc = w;
  return found;
}

/// Quick roofs: --attnkit_quick, env ATTNKIT_BENCH_QUICK (non-empty, not "0"), or a
/// benchmark filter that selects the tiny benchmarks.
inline bool quick_mode(bool flag) {
  if (flag) return true;
  if (const char* e = std::getenv("ATTNKIT_BENCH_QUICK"))
    if (*e && std::strcmp(e, "0") != 0) return true;
  return benchmark::GetBenchmarkFilter().find("tiny") != std::string::npos;
}

}  // namespace attnkit_bench
