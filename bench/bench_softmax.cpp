/// \file
/// Softmax attention benchmarks, with the baselines that give them meaning, in one binary:
///
///   baseline/fma_roof      register-only FMA loop on every hardware thread (FP32 roof)
///   baseline/read_bw       vectorised sum of a large array on every thread (DRAM read roof)
///   eigen_sgemm/...        Eigen sgemm at the two GEMM shapes of attention, heads split
///                          over a persistent team of one thread per hardware thread
///                          (Eigen itself runs single-threaded)
///   eigen_naive/...        what a user writes with Eigen: materialise the N x N scores,
///                          softmax them (causal: mask the full matrix), multiply by V
///   attnkit/dense/...      attnkit::attention forward, float / bf16 / f16 inputs, float out
///   attnkit/decode/...     one query token against 4K / 32K cached keys, 32 query heads
///                          over 8 KV heads (grouped-query), float K/V
///   eigen_naive/decode/... the same decode step with Eigen (one small GEMM per KV head)
///
/// The FMA roof and the read bandwidth are measured once in main() before the benchmarks
/// run, printed, and used by the counters: every attention benchmark reports "GFLOPs"
/// (4*B*Hq*Nq*Nk*D per call, exactly half for causal) and "roof_ratio"; decode reports
/// "GBps" (bytes of K and V read: B*Hkv*Nk*(D+Dv)*sizeof(float)) and "bw_ratio", the
/// latter over the bandwidth of read passes run right before and after the timed decode
/// steps ("paired_bw_GBps": this host's bandwidth swings by 2x between runs, see
/// paired_bandwidth).
/// Every family also has a "tiny" version for CI:
///
///   bench_softmax --benchmark_filter=tiny --benchmark_min_time=0.01
///
/// which also switches main() to quick roof measurements (so does --attnkit_quick or the
/// environment variable ATTNKIT_BENCH_QUICK=1; ATTNKIT_BENCH_BW_MIB sets the size of the
/// bandwidth array). Define ATTNKIT_BENCH_BASELINES_ONLY to build only the baselines.
#include "bench_common.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(ATTNKIT_BENCH_BASELINES_ONLY)
#include <attnkit/attnkit.hpp>
#endif

namespace {

using namespace attnkit_bench;
using i64 = std::int64_t;
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_row_map = Eigen::Map<const row_matrix>;

// Problem sizes. Dense: B = 1, 8 query heads, 8 KV heads (plain multi-head attention).
constexpr i64 kDenseB = 1, kDenseH = 8;
// Decode: one query token, 32 query heads over 8 KV heads, head dim 128.
constexpr i64 kDecB = 1, kDecHq = 32, kDecHkv = 8, kDecD = 128;
// Decode K/V are replicated until the working set is at least this large and the replicas
// are read in turn, so every iteration streams K/V from DRAM (as a decode step of a model
// with many layers does) rather than from the last-level cache.
constexpr std::size_t kDecodeStreamBytes = std::size_t(256) << 20;

// ---------------------------------------------------------------------------------------
// Baselines (a) and (b) as benchmarks (the roofs themselves are measured in main()).

// These two time only the measured kernel (manual time): starting pinned threads under a
// busy scheduler can take milliseconds, which is not part of the roof.

void bm_fma_roof(benchmark::State& state, double seconds) {
  const int threads = hw_threads();
  const std::int64_t calib = 1 << 16;
  const auto t0 = clock_type::now();
  benchmark::DoNotOptimize(roof_detail::fma_loop(calib, 1.0f));
  const auto iters =
      static_cast<std::int64_t>(std::max(1.0, seconds / std::max(seconds_since(t0), 1e-7) * calib));
  double total = 0;
  for (auto _ : state) {
    const double t = fma_seconds(threads, iters);
    state.SetIterationTime(t);
    total += t;
  }
  set_flop_counters(state, roof_detail::flops_per_iter() * static_cast<double>(iters) * threads, total);
}

void bm_read_bw(benchmark::State& state, std::size_t bytes) {
  read_bw_array a(bytes, hw_threads());
  a.pass();  // warm the TLB
  double total = 0;
  for (auto _ : state) {
    const double t = a.pass_seconds();
    state.SetIterationTime(t);
    total += t;
  }
  set_byte_counters(state, static_cast<double>(a.bytes()), total);
}

// ---------------------------------------------------------------------------------------
// Baseline (c): Eigen sgemm, C[M,N] = A[M,K] * B[K,N] (row-major, as attention stores
// its operands), `heads` independent products split over the hardware threads.

void bm_eigen_sgemm(benchmark::State& state, i64 m, i64 n, i64 k, i64 heads) {
  const auto a = normal_vector(static_cast<std::size_t>(heads * m * k), 11);
  const auto b = normal_vector(static_cast<std::size_t>(heads * k * n), 12);
  std::vector<float> c(static_cast<std::size_t>(heads * m * n));
  worker_team& team = worker_team::shared();
  const int threads = team.size();
  auto body = [&](int t) {
    for (i64 h = t; h < heads; h += threads) {
      const_row_map A(a.data() + h * m * k, m, k);
      const_row_map B(b.data() + h * k * n, k, n);
      Eigen::Map<row_matrix> C(c.data() + h * m * n, m, n);
      C.noalias() = A * B;
    }
  };
  team.run(body);  // warm-up
  loop_clock clock;
  for (auto _ : state) {
    team.run(body);
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, 2.0 * static_cast<double>(heads) * m * n * k, clock.seconds());
}

// ---------------------------------------------------------------------------------------
// Baseline (d): naive Eigen attention. Per head: S = scale * Q K^T (N x N, materialised;
// Eigen folds the scale into the GEMM), causal by masking the full S with -inf above the
// diagonal, softmax row by row (max, Eigen's vectorised exp, sum: one row stays in cache),
// O = S V / rowsum. Heads split over the hardware threads, one scores matrix per thread
// (8192 tokens: 256 MiB each).

struct naive_workspace {
  row_matrix s;
  Eigen::VectorXf l;
};

void naive_attention_head(const float* q, const float* k, const float* v, float* o, i64 nq, i64 nk, i64 d,
                          bool causal, naive_workspace& ws) {
  const_row_map Q(q, nq, d), K(k, nk, d), V(v, nk, d);
  Eigen::Map<row_matrix> O(o, nq, d);
  row_matrix& S = ws.s;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  S.noalias() = scale * (Q * K.transpose());
  if (causal) S.triangularView<Eigen::StrictlyUpper>().setConstant(-std::numeric_limits<float>::infinity());
  ws.l.resize(nq);
  for (i64 i = 0; i < nq; ++i) {
    auto row = S.row(i);
    const float m = row.maxCoeff();
    row = (row.array() - m).exp().matrix();
    ws.l(i) = row.sum();
  }
  O.noalias() = S * V;
  O.array().colwise() /= ws.l.array();
}

void bm_eigen_naive(benchmark::State& state, i64 n, i64 d, bool causal) {
  const i64 b = kDenseB, h = kDenseH;
  const std::size_t elems = static_cast<std::size_t>(b * h * n * d);
  const auto q = normal_vector(elems, 1), k = normal_vector(elems, 2), v = normal_vector(elems, 3);
  std::vector<float> o(elems);
  worker_team& team = worker_team::shared();
  const int threads = team.size();
  peak_memory_probe probe;
  std::vector<naive_workspace> ws(static_cast<std::size_t>(threads));
  for (auto& w : ws) w.s.resize(n, n);
  auto body = [&](int t) {
    for (i64 bh = t; bh < b * h; bh += threads) {
      const i64 off = bh * n * d;
      naive_attention_head(q.data() + off, k.data() + off, v.data() + off, o.data() + off, n, n, d, causal,
                           ws[static_cast<std::size_t>(t)]);
    }
  };
  team.run(body);  // warm-up (also touches the scores)
  loop_clock clock;
  for (auto _ : state) {
    team.run(body);
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, attention_flops(b, h, n, n, d, causal), clock.seconds());
  probe.report(state);
}

// ---------------------------------------------------------------------------------------
// Decode inputs: K/V [B, Hkv, Nk, D] replicated `replicas` times, contiguous.

struct decode_inputs {
  i64 nk = 0, replicas = 1;
  std::vector<float> q, k, v, o;

  decode_inputs(i64 nk_, bool stream) : nk(nk_) {
    const std::size_t kv = static_cast<std::size_t>(kDecB * kDecHkv * nk * kDecD);
    if (stream) {
      const std::size_t bytes = 2 * kv * sizeof(float);
      replicas = static_cast<i64>(std::max<std::size_t>(1, (kDecodeStreamBytes + bytes - 1) / bytes));
    }
    q = normal_vector(static_cast<std::size_t>(kDecB * kDecHq * kDecD), 21);
    k.resize(kv * static_cast<std::size_t>(replicas));
    v.resize(kv * static_cast<std::size_t>(replicas));
    fill_normal(k.data(), kv, 22);
    fill_normal(v.data(), kv, 23);
    for (i64 r = 1; r < replicas; ++r) {
      std::memcpy(k.data() + kv * static_cast<std::size_t>(r), k.data(), kv * sizeof(float));
      std::memcpy(v.data() + kv * static_cast<std::size_t>(r), v.data(), kv * sizeof(float));
    }
    o.resize(static_cast<std::size_t>(kDecB * kDecHq * kDecD));
  }
  const float* k_at(i64 r) const { return k.data() + r * kDecB * kDecHkv * nk * kDecD; }
  const float* v_at(i64 r) const { return v.data() + r * kDecB * kDecHkv * nk * kDecD; }
  double bytes_read() const { return static_cast<double>(kDecB * kDecHkv * nk * (kDecD + kDecD)) * sizeof(float); }
};

// Times one decode step per iteration, back to back as in a model's decode loop. Streamed
// inputs: bw_ratio is over read passes run right before and right after the timed loop
// (paired_bandwidth); the in-cache tiny variant reports against the bandwidth from main().
template <class Step>
void time_decode(benchmark::State& state, const decode_inputs& in, bool stream, Step step) {
  constexpr int passes_each_side = 3;
  std::unique_ptr<paired_bandwidth> bw;
  if (stream) {
    bw = std::make_unique<paired_bandwidth>(kDecodeStreamBytes);
    for (int p = 0; p < passes_each_side; ++p) bw->pass();
  }
  loop_clock clock;
  for (auto _ : state) {
    step();
    benchmark::ClobberMemory();
  }
  const double secs = clock.seconds();
  if (!bw) return set_byte_counters(state, in.bytes_read(), secs);
  for (int p = 0; p < passes_each_side; ++p) bw->pass();
  set_paired_byte_counters(state, in.bytes_read(), secs, *bw);
}

// Naive Eigen decode: per KV head, the group's Hq/Hkv query rows as one small GEMM
// S = Qg K^T, row softmax, O = S V (K/V read once per KV head).
void bm_eigen_naive_decode(benchmark::State& state, i64 nk, bool stream) {
  decode_inputs in(nk, stream);
  const i64 group = kDecHq / kDecHkv;
  worker_team& team = worker_team::shared();
  const int threads = team.size();
  std::vector<naive_workspace> ws(static_cast<std::size_t>(threads));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDecD));
  i64 rep = 0;
  auto body = [&](int t) {
    naive_workspace& w = ws[static_cast<std::size_t>(t)];
    const float* kbase = in.k_at(rep);
    const float* vbase = in.v_at(rep);
    for (i64 bh = t; bh < kDecB * kDecHkv; bh += threads) {
      const_row_map Qg(in.q.data() + bh * group * kDecD, group, kDecD);
      const_row_map K(kbase + bh * nk * kDecD, nk, kDecD), V(vbase + bh * nk * kDecD, nk, kDecD);
      Eigen::Map<row_matrix> O(in.o.data() + bh * group * kDecD, group, kDecD);
      w.s.noalias() = scale * (Qg * K.transpose());
      w.l.resize(group);
      for (i64 i = 0; i < group; ++i) {
        auto row = w.s.row(i);
        const float m = row.maxCoeff();
        row = (row.array() - m).exp().matrix();
        w.l(i) = row.sum();
      }
      O.noalias() = w.s * V;
      O.array().colwise() /= w.l.array();
    }
  };
  team.run(body);
  time_decode(state, in, stream, [&] {
    rep = (rep + 1) % in.replicas;
    team.run(body);
  });
}

#if !defined(ATTNKIT_BENCH_BASELINES_ONLY)
// ---------------------------------------------------------------------------------------
// attnkit: dense forward. T is the input storage type (float, bf16, f16); out is float.

template <class T>
std::vector<T> inputs_as(std::size_t n, std::uint64_t seed) {
  if constexpr (std::is_same_v<T, float>)
    return normal_vector(n, seed);
  else
    return convert_vector<T>(normal_vector(n, seed));
}

/// Does attnkit multiply these inputs on bf16 dot products (AVX512-BF16 builds, on CPUs where
/// that beats widening to float)? Then their roof is the dot product's, not the FP32 FMA's.
template <class T>
bool uses_bf16_dot() {
#if defined(__AVX512BF16__)
  return std::is_same_v<T, attnkit::bf16> && attnkit::detail::simd::bf16dot::preferred();
#else
  return false;
#endif
}

template <class T>
void bm_attnkit_dense(benchmark::State& state, i64 n, i64 d, bool causal) {
  const i64 b = kDenseB, h = kDenseH, hkv = kDenseH;
  const auto q = inputs_as<T>(static_cast<std::size_t>(b * h * n * d), 1);
  const auto k = inputs_as<T>(static_cast<std::size_t>(b * hkv * n * d), 2);
  const auto v = inputs_as<T>(static_cast<std::size_t>(b * hkv * n * d), 3);
  std::vector<float> o(static_cast<std::size_t>(b * h * n * d));
  const auto Q = attnkit::view_bhsd(q.data(), b, h, n, d);
  const auto K = attnkit::view_bhsd(k.data(), b, hkv, n, d);
  const auto V = attnkit::view_bhsd(v.data(), b, hkv, n, d);
  const auto O = attnkit::view_bhsd(o.data(), b, h, n, d);
  attnkit::softmax sm;
  sm.causal = causal;
  attnkit::options opt;  // threads = 0: every hardware thread
  peak_memory_probe probe;
  attnkit::attention(sm, Q, K, V, O, opt);  // warm-up: thread pool, scratch arenas
  loop_clock clock;
  for (auto _ : state) {
    attnkit::attention(sm, Q, K, V, O, opt);
    benchmark::ClobberMemory();
  }
  set_flop_counters(state, attention_flops(b, h, n, n, d, causal), clock.seconds(),
                    uses_bf16_dot<T>() ? roof_kind::bf16_dot : roof_kind::fp32_fma);
  probe.report(state);
}

// attnkit: decode step, float K/V.
void bm_attnkit_decode(benchmark::State& state, i64 nk, bool stream) {
  decode_inputs in(nk, stream);
  const auto Q = attnkit::view_bhsd(static_cast<const float*>(in.q.data()), kDecB, kDecHq, 1, kDecD);
  const auto O = attnkit::view_bhsd(in.o.data(), kDecB, kDecHq, 1, kDecD);
  attnkit::softmax sm;
  attnkit::options opt;
  auto kv = [&](i64 r) {
    return std::make_pair(attnkit::view_bhsd(in.k_at(r), kDecB, kDecHkv, nk, kDecD),
                          attnkit::view_bhsd(in.v_at(r), kDecB, kDecHkv, nk, kDecD));
  };
  {
    const auto [K, V] = kv(0);
    attnkit::attention(sm, Q, K, V, O, opt);  // warm-up
  }
  i64 rep = 0;
  time_decode(state, in, stream, [&] {
    rep = (rep + 1) % in.replicas;
    const auto [K, V] = kv(rep);
    attnkit::attention(sm, Q, K, V, O, opt);
  });
}
#endif  // !ATTNKIT_BENCH_BASELINES_ONLY

// ---------------------------------------------------------------------------------------
// Registration

std::string dense_name(const char* family, i64 n, i64 d, bool causal, bool tiny) {
  return std::string(family) + (tiny ? "/tiny" : "") + "/N:" + std::to_string(n) + "/D:" + std::to_string(d) +
         "/causal:" + (causal ? "1" : "0");
}

benchmark::internal::Benchmark* finish(benchmark::internal::Benchmark* bm, bool tiny, bool manual_time = false) {
  if (manual_time)
    bm->UseManualTime();
  else
    bm->UseRealTime();
  return bm->Unit(tiny ? benchmark::kMicrosecond : benchmark::kMillisecond);
}

void register_all() {
  const roof_settings roofs = roof_settings_for(false), quick = roof_settings_for(true);

  // (a), (b): the roofs as table rows (ratios ~1 by construction; a check of stability).
  finish(benchmark::RegisterBenchmark("baseline/fma_roof", bm_fma_roof, 0.05), false, true);
  finish(benchmark::RegisterBenchmark("baseline/fma_roof/tiny", bm_fma_roof, 0.002), true, true);
  finish(benchmark::RegisterBenchmark("baseline/read_bw", bm_read_bw, roofs.bw_bytes), false, true);
  finish(benchmark::RegisterBenchmark("baseline/read_bw/tiny", bm_read_bw, quick.bw_bytes), true, true);

  // (c): Eigen sgemm at the two GEMM shapes of attention (N = 2048, D = 128), 8 heads.
  finish(benchmark::RegisterBenchmark("eigen_sgemm/M:2048/N:2048/K:128/heads:8", bm_eigen_sgemm, 2048, 2048, 128,
                                      kDenseH),
         false);
  finish(benchmark::RegisterBenchmark("eigen_sgemm/M:2048/N:128/K:2048/heads:8", bm_eigen_sgemm, 2048, 128, 2048,
                                      kDenseH),
         false);
  finish(benchmark::RegisterBenchmark("eigen_sgemm/tiny/M:64/N:64/K:16/heads:8", bm_eigen_sgemm, 64, 64, 16,
                                      kDenseH),
         true);

  // Dense forward, float: attnkit next to the naive Eigen baseline (d) at every shape.
  for (const i64 n : {512, 2048, 8192})
    for (const i64 d : {64, 128})
      for (const bool causal : {false, true}) {
#if !defined(ATTNKIT_BENCH_BASELINES_ONLY)
        finish(benchmark::RegisterBenchmark(dense_name("attnkit/dense/f32", n, d, causal, false).c_str(),
                                            bm_attnkit_dense<float>, n, d, causal),
               false);
#endif
        finish(benchmark::RegisterBenchmark(dense_name("eigen_naive/f32", n, d, causal, false).c_str(),
                                            bm_eigen_naive, n, d, causal),
               false);
      }
  for (const bool causal : {false, true}) {
#if !defined(ATTNKIT_BENCH_BASELINES_ONLY)
    finish(benchmark::RegisterBenchmark(dense_name("attnkit/dense/f32", 64, 16, causal, true).c_str(),
                                        bm_attnkit_dense<float>, 64, 16, causal),
           true);
#endif
    finish(benchmark::RegisterBenchmark(dense_name("eigen_naive/f32", 64, 16, causal, true).c_str(), bm_eigen_naive,
                                        64, 16, causal),
           true);
  }

#if !defined(ATTNKIT_BENCH_BASELINES_ONLY)
  // Dense forward, 16-bit inputs (float out).
  for (const bool causal : {false, true}) {
    finish(benchmark::RegisterBenchmark(dense_name("attnkit/dense/bf16", 2048, 128, causal, false).c_str(),
                                        bm_attnkit_dense<attnkit::bf16>, 2048, 128, causal),
           false);
    finish(benchmark::RegisterBenchmark(dense_name("attnkit/dense/bf16", 64, 16, causal, true).c_str(),
                                        bm_attnkit_dense<attnkit::bf16>, 64, 16, causal),
           true);
  }
  for (const bool causal : {false, true}) {
    finish(benchmark::RegisterBenchmark(dense_name("attnkit/dense/f16", 2048, 128, causal, false).c_str(),
                                        bm_attnkit_dense<attnkit::f16>, 2048, 128, causal),
           false);
    finish(benchmark::RegisterBenchmark(dense_name("attnkit/dense/f16", 64, 16, causal, true).c_str(),
                                        bm_attnkit_dense<attnkit::f16>, 64, 16, causal),
           true);
  }
#endif

  // Decode: 1 query, Hq 32 over Hkv 8, D 128, float K/V streamed from DRAM.
  for (const i64 nk : {4096, 32768}) {
    const std::string shape = "/Nk:" + std::to_string(nk) + "/Hq:32/Hkv:8/D:128";
#if !defined(ATTNKIT_BENCH_BASELINES_ONLY)
    finish(benchmark::RegisterBenchmark(("attnkit/decode/f32" + shape).c_str(), bm_attnkit_decode, nk, true), false);
#endif
    finish(benchmark::RegisterBenchmark(("eigen_naive/decode/f32" + shape).c_str(), bm_eigen_naive_decode, nk, true),
           false);
  }
#if !defined(ATTNKIT_BENCH_BASELINES_ONLY)
  finish(benchmark::RegisterBenchmark("attnkit/decode/f32/tiny/Nk:256/Hq:32/Hkv:8/D:128", bm_attnkit_decode, 256,
                                      false),
         true);
#endif
  finish(benchmark::RegisterBenchmark("eigen_naive/decode/f32/tiny/Nk:256/Hq:32/Hkv:8/D:128", bm_eigen_naive_decode,
                                      256, false),
         true);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick_flag = take_flag(argc, argv, "--attnkit_quick");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Eigen::setNbThreads(1);  // the Eigen baselines split heads over threads themselves
  register_all();
  measure_roofs(quick_mode(quick_flag));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
