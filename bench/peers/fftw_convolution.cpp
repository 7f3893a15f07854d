// attnkit's lane FFT against FFTW for the convolutions of kernelized_rpe: 2W real columns of
// length n convolved with one real kernel, one thread. attnkit: one forward_scrambled +
// multiply_inverse (W complex lanes carry the 2W columns); FFTW: r2c, pointwise product, c2r
// of 2W contiguous columns (plan_many, FFTW_MEASURE). Not built by CMake (FFTW is GPL and not
// a dependency); Debian: apt-get install libfftw3-dev, then
//   g++ -std=c++17 -O3 -march=native -Iinclude bench/peers/fftw_convolution.cpp -o fftw_convolution -lfftw3f
#include <attnkit/simd/fft.hpp>
#include <fftw3.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
using namespace attnkit::detail::simd;
using A = wide_arch;
int main() {
  const int W = vec<A>::size, cols = 2 * W;
  for (int n : {4096, 32768, 131072, 262144}) {
    lane_fft<A> f(n);
    float* x = (float*)aligned_alloc(64, 2L * n * W * 4);
    std::vector<float> g(n), spec(2 * n);
    std::mt19937 gen(1); std::uniform_real_distribution<float> u(-1, 1);
    for (auto& v : g) v = u(gen);
    f.kernel_spectrum(g.data(), nullptr, spec.data(), nullptr);
    float* r = fftwf_alloc_real((size_t)n * cols);
    fftwf_complex* c = fftwf_alloc_complex((size_t)(n / 2 + 1) * cols);
    std::vector<fftwf_complex> G(n / 2 + 1);
    for (auto& z : G) z[0] = u(gen), z[1] = u(gen);
    fftwf_plan fwd = fftwf_plan_many_dft_r2c(1, &n, cols, r, nullptr, 1, n, c, nullptr, 1, n / 2 + 1, FFTW_MEASURE);
    fftwf_plan inv = fftwf_plan_many_dft_c2r(1, &n, cols, c, nullptr, 1, n / 2 + 1, r, nullptr, 1, n, FFTW_MEASURE);
    auto time = [&](auto fill, auto fn) { double best = 1e9; for (int rep = 0; rep < 7; ++rep) { fill(); auto t0 = std::chrono::steady_clock::now(); fn(); best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()); } return best; };
    double ours = time([&] { for (long i = 0; i < 2L * n * W; ++i) x[i] = u(gen); },
                       [&] { f.forward_scrambled(x, nullptr); f.multiply_inverse(x, spec.data(), x, nullptr); });
    double theirs = time([&] { for (long i = 0; i < (long)n * cols; ++i) r[i] = u(gen); }, [&] {
      fftwf_execute(fwd);
      for (int col = 0; col < cols; ++col) for (int k = 0; k <= n / 2; ++k) {
        fftwf_complex& z = c[(size_t)col * (n / 2 + 1) + k]; const float a = z[0], b = z[1];
        z[0] = a * G[k][0] - b * G[k][1]; z[1] = a * G[k][1] + b * G[k][0]; }
      fftwf_execute(inv); });
    printf("n %7d, %d real columns: ours %.3f ms, FFTW r2c/c2r %.3f ms: ours %.2fx faster\n", n, cols, ours * 1e3, theirs * 1e3, theirs / ours);
    free(x); fftwf_free(r); fftwf_free(c);
  }
}
