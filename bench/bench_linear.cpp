/// \file
/// Linear attention and kernelized attention with relative positions (FFT) against dense flash
/// attention at the same shape, in the same run; H 4 (B 1), D = Dv = 64 or 128, N 1K to 64K.
///
///   linear/{causal,full}/D:d/N:n   elu+1 features. Counters: speedup (dense time / ours),
///                     half_ratio (time(N) / time(N/2), measured in the same iteration: the
///                     scaling exponent is log2 of it), roof_ratio (the matrix products'
///                     GFLOP/s over the FMA roof of this run: for causal the chunk products,
///                     2 (m + C) Dv + 2 C m + 2 m Dv flops a token, m = D, C = the chunk; for
///                     non-causal the state build and read-out, 4 m Dv a token).
///   linear/favor/causal/N:n        FAVOR+ with m = 256 features, D 128.
///   rpe/{elu,favor}/D:d/N:n        kernelized_rpe with random biases, non-causal, normalised q
///                     and k: elu+1 (m = D) or FAVOR+ (m = 256). Counters: speedup, half_ratio.
///   toeplitz/N:n      the FFT path (toeplitz_multiply) against the direct O(N^2) Toeplitz
///                     product in float (columns in vector lanes) and against the same
///                     convolutions on Eigen's FFT (kissfft, column by column), 64 columns, one
///                     thread each. Counters: fft_speedup, eigen_fft_speedup, max_error (max
///                     |FFT - direct| over max |direct|).
///
/// Dense is timed as bench_content does (dense_estimate.hpp). "tiny" versions run in CI:
///
///   bench_linear --benchmark_filter=tiny --benchmark_min_time=0.01
#include "bench_common.hpp"
#include "dense_estimate.hpp"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>
#include <unsupported/Eigen/FFT>

namespace {

using namespace attnkit_bench;
using i64 = std::int64_t;
using attnkit::index_t;

constexpr i64 kHeads = 4;

buffer<float> normal_buffer(std::size_t size, std::uint64_t seed, float amplitude = 1.f) {
  buffer<float> b = alloc_buffer<float>(size);
  fill_normal(b.get(), size, seed);
  for (std::size_t i = 0; i < size; ++i) b.get()[i] *= amplitude;
  return b;
}

/// q, k, v [1, kHeads, n, d] (q and k scaled so that elu+1 features stay moderate) and out.
struct inputs {
  i64 n, d;
  buffer<float> q, k, v, out;
  inputs(i64 n_, i64 d_)
      : n(n_), d(d_), q(normal_buffer(size(), 1, 0.3f)), k(normal_buffer(size(), 2, 0.3f)), v(normal_buffer(size(), 3)),
        out(alloc_buffer<float>(size())) {}
  std::size_t size() const { return static_cast<std::size_t>(kHeads * n * d); }
  attnkit::tensor_view<float> view(float* p, i64 rows) const { return attnkit::view_bhsd(p, 1, kHeads, rows, d); }
};

/// Seconds of one call of policy p on the first `rows` rows of every tensor.
template <class P>
double seconds_of(const P& p, inputs& in, i64 rows) {
  const auto t0 = clock_type::now();
  attnkit::attention(p, in.view(in.q.get(), rows), in.view(in.k.get(), rows), in.view(in.v.get(), rows),
                     in.view(in.out.get(), rows));
  return seconds_since(t0);
}

/// Times p at N and N / 2, and dense attention at N: speedup, half_ratio; returns ours.
template <class P>
double run_against_dense(benchmark::State& state, const P& p, inputs& in, bool causal) {
  seconds_of(p, in, in.n);  // warm-up: arenas, pages
  double ours = 0, half = 0, dense = 0;
  for (auto _ : state) {
    const double t = seconds_of(p, in, in.n);
    half += seconds_of(p, in, in.n / 2);
    ours += t;
    state.SetIterationTime(t);
    dense += dense_seconds(state, in.view(in.q.get(), in.n), in.view(in.k.get(), in.n), in.view(in.v.get(), in.n),
                           in.out.get(), causal);
  }
  state.counters["speedup"] = dense / ours;
  state.counters["half_ratio"] = ours / half;
  return ours;
}

void bm_linear(benchmark::State& state, i64 n, i64 d, bool causal) {
  inputs in(n, d);
  attnkit::linear<attnkit::elu_plus_one> p;
  p.causal = causal;
  const double secs = run_against_dense(state, p, in, causal);
  const double m = static_cast<double>(d), dv = m, chunk = 32;  // the engine's default chunk
  const double per_token = causal ? 2 * (m + chunk) * dv + 2 * chunk * m + 2 * m * dv : 4 * m * dv;
  set_flop_counters(state, per_token * static_cast<double>(kHeads * n), secs);
}

void bm_linear_favor(benchmark::State& state, i64 n) {
  inputs in(n, 128);
  attnkit::linear<attnkit::favor_plus> p;
  p.causal = true;
  run_against_dense(state, p, in, true);
}

/// Random relative-position biases for every head, in [-2, 2].
std::vector<float> random_bias(i64 n, std::uint64_t seed) {
  std::vector<float> b = normal_vector(static_cast<std::size_t>(kHeads * (2 * n - 1)), seed);
  for (float& x : b) x = std::clamp(x, -2.f, 2.f);
  return b;
}

template <class FeatureMap>
void bm_rpe(benchmark::State& state, i64 n, i64 d) {
  inputs in(n, d);
  const std::vector<float> bias = random_bias(n, 4), half_bias = random_bias(n / 2, 5);
  attnkit::kernelized_rpe<FeatureMap> p, p_half;
  p.bias = bias.data(), p_half.bias = half_bias.data();
  seconds_of(p, in, n);
  double ours = 0, half = 0, dense = 0;
  for (auto _ : state) {
    const double t = seconds_of(p, in, n);
    half += seconds_of(p_half, in, n / 2);
    ours += t;
    state.SetIterationTime(t);
    dense += dense_seconds(state, in.view(in.q.get(), n), in.view(in.k.get(), n), in.view(in.v.get(), n), in.out.get(), false);
  }
  state.counters["speedup"] = dense / ours;
  state.counters["half_ratio"] = ours / half;
}

/// y[i][c] = sum_j exp(b_{j-i}) x[j][c], directly: columns in vector lanes.
void direct_toeplitz(const std::vector<float>& weight, i64 n, const float* x, i64 cols, float* y) {
  for (i64 i = 0; i < n; ++i) {
    float* yi = y + i * cols;
    std::fill(yi, yi + cols, 0.f);
    for (i64 j = 0; j < n; ++j) {
      const float w = weight[static_cast<std::size_t>(j - i + n - 1)];
      const float* xj = x + j * cols;
      for (i64 c = 0; c < cols; ++c) yi[c] += w * xj[c];
    }
  }
}

/// The same product column by column on Eigen's FFT (kissfft; real input, full spectrum).
void eigen_toeplitz(const std::vector<float>& weight, i64 n, const float* x, i64 cols, float* y) {
  const i64 length = attnkit::detail::simd::smooth_size(2 * n - 1);
  Eigen::FFT<float> fft;
  std::vector<float> g(static_cast<std::size_t>(length), 0.f), column(static_cast<std::size_t>(length)), out;
  for (i64 u = -(n - 1); u <= n - 1; ++u)  // g[u mod L] = c_{-u}
    g[static_cast<std::size_t>(u < 0 ? u + length : u)] = weight[static_cast<std::size_t>(-u + n - 1)];
  std::vector<std::complex<float>> spectrum, transformed;
  fft.fwd(spectrum, g);
  for (i64 c = 0; c < cols; ++c) {
    std::fill(column.begin(), column.end(), 0.f);
    for (i64 j = 0; j < n; ++j) column[static_cast<std::size_t>(j)] = x[j * cols + c];
    fft.fwd(transformed, column);
    for (std::size_t f = 0; f < transformed.size(); ++f) transformed[f] *= spectrum[f];
    fft.inv(out, transformed);
    for (i64 i = 0; i < n; ++i) y[i * cols + c] = out[static_cast<std::size_t>(i)];
  }
}

void bm_toeplitz(benchmark::State& state, i64 n) {
  const i64 cols = 64;
  const std::vector<float> x = normal_vector(static_cast<std::size_t>(n * cols), 6), bias = random_bias(n, 7);
  std::vector<float> weight(bias.begin(), bias.begin() + 2 * n - 1), y(x.size()), y_direct(x.size());
  for (float& w : weight) w = std::exp(w);
  attnkit::toeplitz_multiply(bias.data(), n, n, false, x.data(), cols, y.data(), 1);
  double fft = 0, direct = 0, eigen = 0;
  for (auto _ : state) {
    auto t0 = clock_type::now();
    attnkit::toeplitz_multiply(bias.data(), n, n, false, x.data(), cols, y.data(), 1);
    const double t = seconds_since(t0);
    fft += t;
    state.SetIterationTime(t);
    t0 = clock_type::now();
    direct_toeplitz(weight, n, x.data(), cols, y_direct.data());
    direct += seconds_since(t0);
    t0 = clock_type::now();
    eigen_toeplitz(weight, n, x.data(), cols, y_direct.data());
    eigen += seconds_since(t0);
    benchmark::DoNotOptimize(y_direct.data());
  }
  direct_toeplitz(weight, n, x.data(), cols, y_direct.data());
  double err = 0, top = 0;
  for (std::size_t e = 0; e < y.size(); ++e)
    err = std::max(err, double(std::fabs(y[e] - y_direct[e]))), top = std::max(top, double(std::fabs(y_direct[e])));
  state.counters["fft_speedup"] = direct / fft;
  state.counters["eigen_fft_speedup"] = eigen / fft;
  state.counters["max_error"] = err / top;  // against the direct product in float
}

void register_all() {
  const auto reg = [](const std::string& name, auto fn, auto... args) {
    return benchmark::RegisterBenchmark(name.c_str(), fn, args...)->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  for (const i64 d : {i64(64), i64(128)})
    for (const i64 n : {i64(1024), i64(2048), i64(4096), i64(8192), i64(16384), i64(32768), i64(65536)}) {
      const std::string shape = "/D:" + std::to_string(d) + "/N:" + std::to_string(n);
      const int iters = n > 16384 ? 1 : 3;
      reg("linear/causal" + shape, bm_linear, n, d, true)->Iterations(iters);
      reg("linear/full" + shape, bm_linear, n, d, false)->Iterations(iters);
      reg("rpe/elu" + shape, bm_rpe<attnkit::elu_plus_one>, n, d)->Iterations(iters);
    }
  for (const i64 n : {i64(4096), i64(16384), i64(65536)}) {
    reg("linear/favor/causal/N:" + std::to_string(n), bm_linear_favor, n)->Iterations(1);
    reg("rpe/favor/D:128/N:" + std::to_string(n), bm_rpe<attnkit::favor_plus>, n, i64(128))->Iterations(1);
  }
  reg("toeplitz/N:16384", bm_toeplitz, i64(16384))->Iterations(1);
  reg("toeplitz/N:65536", bm_toeplitz, i64(65536))->Iterations(1);
  reg("linear/causal/tiny/N:512", bm_linear, i64(512), i64(64), true);
  reg("linear/full/tiny/N:512", bm_linear, i64(512), i64(64), false);
  reg("rpe/elu/tiny/N:512", bm_rpe<attnkit::elu_plus_one>, i64(512), i64(64));
  reg("rpe/favor/tiny/N:256", bm_rpe<attnkit::favor_plus>, i64(256), i64(64));
  reg("toeplitz/tiny/N:512", bm_toeplitz, i64(512));
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
