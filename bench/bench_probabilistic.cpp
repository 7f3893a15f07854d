/// \file
/// Probabilistic attention and the softmax alternatives on the flash engine against dense
/// softmax flash attention at the same shape, timed alternately in the same iterations:
/// B 1, H 4, D = Dv = 128, N 4K and 16K, causal and not.
///
///   zonkey/{ratio,logprob}/...   probabilistic with monotone existence probabilities that
///                                fade out over the last quarter (zonkey_ratio, key_logprob)
///   softplus/...                 LSSA (power 1, threshold 0); softplus/lssar: power 2, with
///                                the threshold (two passes, no target)
///   affine/...                   affine_scaled with alpha and beta given per query
/// Counters: time_ratio (our time over dense softmax's, summed over the iterations: the target
/// is <= 1.15), roof_ratio (softmax-convention GFLOP/s over the FMA roof of this run).
/// A "tiny" version runs in CI:
///
///   bench_probabilistic --benchmark_filter=tiny --benchmark_min_time=0.01
#include "bench_common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <attnkit/attnkit.hpp>

namespace {

using namespace attnkit_bench;
using i64 = std::int64_t;

constexpr i64 kHeads = 4, kDim = 128;

struct inputs {
  i64 n;
  buffer<float> q, k, v, out;
  std::vector<float> existence, alpha, beta;
  explicit inputs(i64 n_)
      : n(n_), q(alloc_buffer<float>(size())), k(alloc_buffer<float>(size())), v(alloc_buffer<float>(size())),
        out(alloc_buffer<float>(size())) {
    fill_normal(q.get(), size(), 1);
    fill_normal(k.get(), size(), 2);
    fill_normal(v.get(), size(), 3);
    // p = 1 for the first three quarters, then fading geometrically to about 1e-6.
    existence.resize(static_cast<std::size_t>(n));
    for (i64 j = 0; j < n; ++j)
      existence[static_cast<std::size_t>(j)] =
          j < 3 * n / 4 ? 1.f : static_cast<float>(std::exp(-14.0 * double(j - 3 * n / 4) / double(n / 4)));
    alpha = normal_vector(static_cast<std::size_t>(kHeads * n), 4);
    beta = normal_vector(static_cast<std::size_t>(kHeads * n), 5);
    for (float& a : alpha) a = 1.f / (1.f + std::exp(-a));
    for (float& b : beta) b *= 1e-3f;
  }
  std::size_t size() const { return static_cast<std::size_t>(kHeads * n * kDim); }
  attnkit::tensor_view<float> view(float* p) const { return attnkit::view_bhsd(p, 1, kHeads, n, kDim); }
  template <class P>
  double seconds_of(const P& p) {
    const auto t0 = clock_type::now();
    attnkit::attention(p, view(q.get()), view(k.get()), view(v.get()), view(out.get()));
    return seconds_since(t0);
  }
};

template <class P>
void run_against_softmax(benchmark::State& state, const P& p, inputs& in, bool causal) {
  attnkit::softmax dense;
  dense.causal = causal;
  in.seconds_of(p), in.seconds_of(dense);  // warm-up: arenas, pages
  double ours = 0, base = 0;
  for (auto _ : state) {
    base += in.seconds_of(dense);
    const double t = in.seconds_of(p);
    ours += t;
    state.SetIterationTime(t);
  }
  state.counters["time_ratio"] = ours / base;
  set_flop_counters(state, attention_flops(1, kHeads, in.n, in.n, kDim, causal), ours);
}

void bm_zonkey(benchmark::State& state, i64 n, bool causal, attnkit::probabilistic::mode_kind mode) {
  inputs in(n);
  attnkit::probabilistic p;
  p.key_prob = in.existence.data();
  p.mode = mode;
  p.causal = causal;
  run_against_softmax(state, p, in, causal);
}

void bm_softplus(benchmark::State& state, i64 n, bool causal, bool lssar) {
  inputs in(n);
  attnkit::softplus p;
  p.causal = causal;
  if (lssar) p.power = 2, p.threshold = 0.5f;
  run_against_softmax(state, p, in, causal);
}

void bm_affine(benchmark::State& state, i64 n, bool causal) {
  inputs in(n);
  attnkit::affine_scaled p;
  p.alpha = in.alpha.data();
  p.beta = in.beta.data();
  p.beta_mode = attnkit::affine_scaled::beta_mode_kind::given;
  p.causal = causal;
  run_against_softmax(state, p, in, causal);
}

void register_all() {
  using mode = attnkit::probabilistic::mode_kind;
  const auto reg = [](const std::string& name, auto fn, auto... args) {
    return benchmark::RegisterBenchmark(name.c_str(), fn, args...)->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  for (const i64 n : {i64(4096), i64(16384)})
    for (const bool causal : {false, true}) {
      const std::string shape = std::string(causal ? "/causal" : "/full") + "/N:" + std::to_string(n);
      const int iters = n > 4096 ? 2 : 5;
      reg("zonkey/ratio" + shape, bm_zonkey, n, causal, mode::zonkey_ratio)->Iterations(iters);
      reg("zonkey/logprob" + shape, bm_zonkey, n, causal, mode::key_logprob)->Iterations(iters);
      reg("softplus" + shape, bm_softplus, n, causal, false)->Iterations(iters);
      reg("affine" + shape, bm_affine, n, causal)->Iterations(iters);
      if (n == 4096) reg("softplus/lssar" + shape, bm_softplus, n, causal, true)->Iterations(iters);
    }
  reg("zonkey/ratio/tiny/N:256", bm_zonkey, i64(256), false, mode::zonkey_ratio);
  reg("softplus/tiny/N:256", bm_softplus, i64(256), true, false);
  reg("softplus/lssar/tiny/N:256", bm_softplus, i64(256), false, true);
  reg("affine/tiny/N:256", bm_affine, i64(256), true);
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
