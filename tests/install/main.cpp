// A downstream program: includes the umbrella header, runs one causal GQA call and checks it
// against the float64 reference. Exits non-zero on any mismatch.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  const attnkit::index_t B = 2, Hq = 4, Hkv = 2, Nq = 37, Nk = 53, D = 40;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto random = [&](std::size_t n) {
    std::vector<float> x(n);
    for (float& e : x) e = normal(rng);
    return x;
  };
  const std::vector<float> q = random(std::size_t(B * Hq * Nq * D));
  const std::vector<float> k = random(std::size_t(B * Hkv * Nk * D));
  const std::vector<float> v = random(std::size_t(B * Hkv * Nk * D));
  std::vector<float> out(q.size()), ref(q.size());
  std::vector<float> lse(std::size_t(B * Hq * Nq)), lse_ref(lse.size());

  const auto Q = attnkit::view_bhsd(q.data(), B, Hq, Nq, D);
  const auto K = attnkit::view_bhsd(k.data(), B, Hkv, Nk, D);
  const auto V = attnkit::view_bhsd(v.data(), B, Hkv, Nk, D);

  attnkit::softmax sm;
  sm.causal = true;
  sm.window_left = 20;
  attnkit::options opt;
  opt.lse = lse.data();
  attnkit::attention(sm, Q, K, V, attnkit::view_bhsd(out.data(), B, Hq, Nq, D), opt);
  opt.lse = lse_ref.data();
  attnkit::reference::attention(sm, Q, K, V, attnkit::view_bhsd(ref.data(), B, Hq, Nq, D), opt);

  double err = 0, lse_err = 0;
  for (std::size_t i = 0; i < out.size(); ++i) err = std::fmax(err, std::fabs(double(out[i]) - ref[i]));
  for (std::size_t i = 0; i < lse.size(); ++i) lse_err = std::fmax(lse_err, std::fabs(double(lse[i]) - lse_ref[i]));

  bool threw = false;
  try {  // Hq = 4 is not a multiple of 3 key/value heads
    attnkit::attention(sm, Q, attnkit::view_bhsd(k.data(), B, 3, 1, D), attnkit::view_bhsd(v.data(), B, 3, 1, D),
                       attnkit::view_bhsd(out.data(), B, Hq, Nq, D));
  } catch (const attnkit::error&) {
    threw = true;
  }

#if defined(ATTNKIT_USE_OPENMP)
  const char* threads = "OpenMP";
#else
  const char* threads = "thread pool";
#endif
  std::printf("consumer (%s): max |out - ref| = %.3g, max |lse - ref| = %.3g, bad shape %s\n", threads, err,
              lse_err, threw ? "rejected" : "NOT rejected");
  return err <= 1e-4 && lse_err <= 1e-4 && threw ? 0 : 1;
}
