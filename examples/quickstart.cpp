// attnkit quick start: causal grouped-query softmax attention on the CPU.
//
// Runs attnkit::attention on random inputs (B=1, Hq=8, Hkv=2, N=2048, D=128, float) with the
// log-sum-exp output, checks it against the float64 reference attnkit::reference::attention,
// and prints the error, the best time of a few runs and the throughput.
// Exits with status 1 if the error exceeds 1e-4.
//
// The check uses two smaller copies, which keeps the O(N^2 D) reference at well under a second:
//   - the first 256 queries with the first 256 keys: with a causal mask, query i only sees
//     keys j <= i, so these rows equal the corresponding rows of the full result;
//   - the last 256 queries with all 2048 keys: causal masks are bottom-right aligned
//     (query i of Nq sees keys j <= i + Nk - Nq), so these rows match the full result too.
#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using attnkit::index_t;

// Copies rows [first, first + count) of the sequence axis of a contiguous [B, H, N, D] tensor.
std::vector<float> slice_rows(const std::vector<float>& x, index_t batch, index_t heads, index_t n, index_t dim,
                              index_t first, index_t count) {
  std::vector<float> y(static_cast<std::size_t>(batch * heads * count * dim));
  for (index_t bh = 0; bh < batch * heads; ++bh)
    std::copy_n(x.begin() + (bh * n + first) * dim, count * dim, y.begin() + bh * count * dim);
  return y;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

}  // namespace

int main() {
  const index_t B = 1, Hq = 8, Hkv = 2, N = 2048, D = 128;
  const index_t M = 256;  // rows checked at each end of the sequence

  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto random = [&](index_t n) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (float& e : x) e = normal(rng);
    return x;
  };
  const std::vector<float> q = random(B * Hq * N * D);
  const std::vector<float> k = random(B * Hkv * N * D);
  const std::vector<float> v = random(B * Hkv * N * D);
  std::vector<float> out(q.size()), lse(static_cast<std::size_t>(B * Hq * N));

  // Non-owning views, logical axes [batch, heads, seq, dim].
  const auto Q = attnkit::view_bhsd(q.data(), B, Hq, N, D);
  const auto K = attnkit::view_bhsd(k.data(), B, Hkv, N, D);
  const auto V = attnkit::view_bhsd(v.data(), B, Hkv, N, D);
  const auto O = attnkit::view_bhsd(out.data(), B, Hq, N, D);

  attnkit::softmax sm;  // scale 0 means 1/sqrt(D)
  sm.causal = true;
  attnkit::options opt;
  opt.lse = lse.data();  // log-sum-exp per (batch, query head, query)

  // Time it: best of a few runs, after one warm-up.
  attnkit::attention(sm, Q, K, V, O, opt);
  double best_ms = 1e300;
  for (int run = 0; run < 5; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    attnkit::attention(sm, Q, K, V, O, opt);
    const auto t1 = std::chrono::steady_clock::now();
    best_ms = std::min(best_ms, std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  // 2 matrix products of 2*N*N*D flops per head; a causal mask skips about half of them.
  const double flops = 4.0 * double(B) * double(Hq) * double(N) * double(N) * double(D) / 2.0;

  // Check against the float64 reference on the two smaller copies described above.
  double err = 0, lse_err = 0;
  struct part {
    index_t first_query, keys;
  };
  for (const part& p : {part{0, M}, part{N - M, N}}) {
    const std::vector<float> qs = slice_rows(q, B, Hq, N, D, p.first_query, M);
    const std::vector<float> ks = slice_rows(k, B, Hkv, N, D, 0, p.keys);
    const std::vector<float> vs = slice_rows(v, B, Hkv, N, D, 0, p.keys);
    std::vector<float> ref(qs.size()), ref_lse(static_cast<std::size_t>(B * Hq * M));
    attnkit::options ref_opt;
    ref_opt.lse = ref_lse.data();
    attnkit::reference::attention(sm, attnkit::view_bhsd(qs.data(), B, Hq, M, D),
                                  attnkit::view_bhsd(ks.data(), B, Hkv, p.keys, D),
                                  attnkit::view_bhsd(vs.data(), B, Hkv, p.keys, D),
                                  attnkit::view_bhsd(ref.data(), B, Hq, M, D), ref_opt);
    err = std::max(err, max_abs_diff(slice_rows(out, B, Hq, N, D, p.first_query, M), ref));
    lse_err = std::max(lse_err, max_abs_diff(slice_rows(lse, B, Hq, N, 1, p.first_query, M), ref_lse));
  }

  std::printf("attnkit quickstart: causal softmax, GQA %lld:%lld, B=%lld N=%lld D=%lld, float, %d threads\n",
              static_cast<long long>(Hq), static_cast<long long>(Hkv), static_cast<long long>(B),
              static_cast<long long>(N), static_cast<long long>(D), attnkit::hardware_threads());
  std::printf("  max abs error vs float64 reference (%lld of %lld rows): out %.3g, lse %.3g\n",
              static_cast<long long>(2 * M * B * Hq), static_cast<long long>(N * B * Hq), err, lse_err);
  std::printf("  time %.3f ms (best of 5), %.1f GFLOP/s\n", best_ms, flops / (best_ms * 1e-3) / 1e9);

  const double tolerance = 1e-4;
  if (!(err <= tolerance && lse_err <= tolerance)) {
    std::printf("FAILED: error above %g\n", tolerance);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
