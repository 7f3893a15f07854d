/// \file
/// Complex FFTs of W independent sequences at once, one sequence per lane of vec<Arch> (W = 16
/// floats with AVX-512, 8 with AVX2, 4 with SSE2 and NEON), so every butterfly is plain vertical
/// SIMD code. The engine of kernelized attention with relative positions: thousands of circular
/// convolutions of length n = 2^a 3^b 5^c with one kernel g.
///
/// Layout: a buffer holds n positions of 2W floats, W real parts then W imaginary parts:
///   re of lane l at position t: x[2 t W + l],   im: x[(2 t + 1) W + l].
///
/// Algorithm: four-step (Bailey). n = n1 n2 with n2 <= n1 ~ sqrt(n); position t1 + n1 t2 is row
/// t2, column t1. The forward transform runs n2-point FFTs down the columns (stride n1
/// positions, B adjacent columns together so that each row read is B * 2W * 4 contiguous bytes,
/// and the next block of columns prefetched meanwhile), multiplies by W_n^{t1 k2} as it writes
/// them back, then n1-point FFTs along the rows. That leaves frequency k2 + n2 k1 at position
/// k1 + n1 k2 (the transpose of natural order, the "scrambled" order), which saves the transpose
/// pass: the convolution only multiplies spectra pointwise. The inverse runs the same steps
/// backwards (rows, twiddle, columns) and ends in natural order, with the kernel product fused
/// into its first pass and the twiddle into the first pass of the columns. Each step thus reads
/// and writes the whole buffer once: 2 passes over memory per transform instead of log2(n) for
/// a radix-2 FFT, whose buffer (n * W * 8 bytes, 16 MiB at n = 2^17 with AVX-512) is far
/// larger than L2. Small n (the whole buffer fits L1) are one row, n2 = 1.
///
/// The row and column FFTs are Stockham autosort passes of radix 4, 2, 3 and 5 between two
/// scratch buffers (natural order in and out, no bit reversal); the first pass reads the main
/// buffer and the last writes it back, so the gather, scatter and twiddle cost no pass of their
/// own. The inverse transform is the forward one on swapped parts: IDFT(z) = S(DFT(S(z))) with
/// S(z) = i conj(z), i.e. re and im exchanged, which the layout gives for free (load re from the
/// im slot); twiddles of the swapped domain: S(c z) = conj(c) S(z).
///
/// Twiddles are computed in double and rounded to float: the error is about 1e-7 log2(n) of the
/// largest magnitude.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "arch.hpp"

namespace attnkit::detail::simd {

/// Smallest 2^a 3^b 5^c >= n (n >= 1).
inline index_t smooth_size(index_t n) {
  index_t best = 1;
  while (best < n) best *= 2;
  for (index_t fives = 1; fives < best; fives *= 5)
    for (index_t odd = fives; odd < best; odd *= 3) {
      index_t candidate = odd;
      while (candidate < n) candidate *= 2;
      best = std::min(best, candidate);
    }
  return best;
}

namespace fft_detail {

/// W complex numbers, one per lane.
template <class Arch>
struct complex_lanes {
  vec<Arch> re, im;
};

template <class Arch>
ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> operator+(const complex_lanes<Arch>& a, const complex_lanes<Arch>& b) {
  return {a.re + b.re, a.im + b.im};
}
template <class Arch>
ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> operator-(const complex_lanes<Arch>& a, const complex_lanes<Arch>& b) {
  return {a.re - b.re, a.im - b.im};
}
/// a * w, w the same in every lane.
template <class Arch>
ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> times(const complex_lanes<Arch>& a, const complex_lanes<Arch>& w) {
  return {xsimd::fms(a.re, w.re, a.im * w.im), xsimd::fma(a.re, w.im, a.im * w.re)};
}
/// a + (-i) b and a - (-i) b.
template <class Arch>
ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> plus_minus_i(const complex_lanes<Arch>& a, const complex_lanes<Arch>& b) {
  return {a.re + b.im, a.im - b.re};
}
template <class Arch>
ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> plus_plus_i(const complex_lanes<Arch>& a, const complex_lanes<Arch>& b) {
  return {a.re - b.im, a.im + b.re};
}

/// In-place forward DFT of Radix points (e^{-2 pi i s k / Radix}).
template <int Radix, class Arch>
ATTNKIT_ALWAYS_INLINE void small_dft(complex_lanes<Arch> (&x)[Radix]) {
  using V = vec<Arch>;
  if constexpr (Radix == 2) {
    const auto sum = x[0] + x[1];
    x[1] = x[0] - x[1];
    x[0] = sum;
  } else if constexpr (Radix == 3) {
    const V half(0.5f), sin60(0.866025403784438647f);
    const auto sum = x[1] + x[2], diff = x[1] - x[2];
    const complex_lanes<Arch> mid{xsimd::fnma(half, sum.re, x[0].re), xsimd::fnma(half, sum.im, x[0].im)};
    const complex_lanes<Arch> rot{sin60 * diff.re, sin60 * diff.im};
    x[0] = x[0] + sum;
    x[1] = plus_minus_i(mid, rot);
    x[2] = plus_plus_i(mid, rot);
  } else if constexpr (Radix == 4) {
    const auto s02 = x[0] + x[2], d02 = x[0] - x[2], s13 = x[1] + x[3], d13 = x[1] - x[3];
    x[0] = s02 + s13;
    x[2] = s02 - s13;
    x[1] = plus_minus_i(d02, d13);
    x[3] = plus_plus_i(d02, d13);
  } else {
    static_assert(Radix == 5, "radices 2, 3, 4, 5");
    const V c1(0.309016994374947424f), c2(-0.809016994374947424f);  // cos(2 pi / 5), cos(4 pi / 5)
    const V s1(0.951056516295153572f), s2(0.587785252292473129f);   // sin(2 pi / 5), sin(4 pi / 5)
    const auto s14 = x[1] + x[4], d14 = x[1] - x[4], s23 = x[2] + x[3], d23 = x[2] - x[3];
    const complex_lanes<Arch> a1{xsimd::fma(c2, s23.re, xsimd::fma(c1, s14.re, x[0].re)),
                                 xsimd::fma(c2, s23.im, xsimd::fma(c1, s14.im, x[0].im))};
    const complex_lanes<Arch> a2{xsimd::fma(c1, s23.re, xsimd::fma(c2, s14.re, x[0].re)),
                                 xsimd::fma(c1, s23.im, xsimd::fma(c2, s14.im, x[0].im))};
    const complex_lanes<Arch> b1{xsimd::fma(s2, d23.re, s1 * d14.re), xsimd::fma(s2, d23.im, s1 * d14.im)};
    const complex_lanes<Arch> b2{xsimd::fnma(s1, d23.re, s2 * d14.re), xsimd::fnma(s1, d23.im, s2 * d14.im)};
    x[0] = x[0] + s14 + s23;
    x[1] = plus_minus_i(a1, b1);
    x[4] = plus_plus_i(a1, b1);
    x[2] = plus_minus_i(a2, b2);
    x[3] = plus_plus_i(a2, b2);
  }
}

/// `batch` sequences in lane layout: element t of sequence b is the position at
/// base + t * t_stride + b * b_stride floats, its real parts at + re_at, imaginary at + im_at
/// (swapped, re_at = W, for the inverse transform).
template <class Arch>
struct lane_buffer {
  float* base;
  index_t t_stride, b_stride;
  index_t re_at = 0, im_at = static_cast<index_t>(vec<Arch>::size);

  ATTNKIT_ALWAYS_INLINE float* at(index_t t, index_t b) const { return base + t * t_stride + b * b_stride; }
  ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> load(index_t t, index_t b) const {
    const float* p = at(t, b);
    return {vec<Arch>::load_aligned(p + re_at), vec<Arch>::load_aligned(p + im_at)};
  }
  ATTNKIT_ALWAYS_INLINE void store(index_t t, index_t b, const complex_lanes<Arch>& v) const {
    float* p = at(t, b);
    v.re.store_aligned(p + re_at);
    v.im.store_aligned(p + im_at);
  }
};

/// A factor 1 for every element.
struct no_twist {};

/// Element (t, b) times the complex number (re_scale * table[i], im_scale * table[i + 1]),
/// i = t * t_stride + b * b_stride: the four-step twiddles, or the kernel spectrum (conjugated,
/// divided by n) of the convolution.
struct table_twist {
  const float* table;
  index_t t_stride, b_stride;
  float re_scale = 1, im_scale = 1;
};

template <class Arch>
ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> apply(no_twist, index_t, index_t, const complex_lanes<Arch>& v) {
  return v;
}
template <class Arch>
ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> apply(const table_twist& twist, index_t t, index_t b, const complex_lanes<Arch>& v) {
  const float* w = twist.table + t * twist.t_stride + b * twist.b_stride;
  return times(v, complex_lanes<Arch>{vec<Arch>(twist.re_scale * w[0]), vec<Arch>(twist.im_scale * w[1])});
}

/// Reads element (t, b) of a lane_buffer times a twist. With prefetch_ahead != 0 it also asks
/// for the position that many floats further on: the same element of the next block of
/// columns, which then arrives from memory while this block is transformed (the strided rows
/// of a column block defeat the hardware prefetchers).
template <class Arch, class Twist = no_twist>
struct lane_reader {
  lane_buffer<Arch> buffer;
  Twist twist{};
  index_t prefetch_ahead = 0;

  ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> operator()(index_t t, index_t b) const {
    const float* p = buffer.at(t, b);
    if (prefetch_ahead != 0) {
      // In integers: the address lies past the buffer for the last block (prefetches never fault).
      const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(prefetch_ahead) * sizeof(float);
      ATTNKIT_UNROLL for (index_t line = 0; line < 2 * static_cast<index_t>(vec<Arch>::size); line += 16)
        prefetch(reinterpret_cast<const void*>(ahead + static_cast<std::uintptr_t>(line) * sizeof(float)));
    }
    return apply(twist, t, b, buffer.load(t, b));
  }

 private:
  static ATTNKIT_ALWAYS_INLINE void prefetch(const void* address) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(address, 0, 2);  // to L2: the block is read a whole block later
#else
    (void)address;
#endif
  }
};

/// Writes element (t, b) of a lane_buffer times a twist.
template <class Arch, class Twist = no_twist>
struct lane_writer {
  lane_buffer<Arch> buffer;
  Twist twist{};

  ATTNKIT_ALWAYS_INLINE void operator()(index_t t, index_t b, const complex_lanes<Arch>& v) const {
    buffer.store(t, b, apply(twist, t, b, v));
  }
};

/// One Stockham pass: `radix` and the span, the product of the earlier passes' radices (the
/// length of the sub-transforms done so far); its twiddles start at `twiddles`.
struct pass_plan {
  int radix;
  index_t span;
  std::size_t twiddles;
};

struct sub_fft_plan {
  index_t size = 1;
  std::vector<pass_plan> passes;
};

/// Stockham pass over `batch` sequences of m elements (Govindaraju et al., SC 2008): butterfly
/// j = base + k (k < span) reads elements j + s m / Radix, multiplies leg s by
/// w^{s k} (w = e^{-2 pi i / (span Radix)}), and writes its outputs to base Radix + k + s span.
/// The batch loop is innermost, so a block of columns shares each twiddle load.
/// read and write come by value: the vector stores may alias anything (xsimd stores through
/// may_alias types), so fields read through a reference would be reloaded after every store.
template <int Radix, class Arch, class Read, class Write>
void stockham_pass(index_t m, index_t span, index_t batch, const float* twiddles, const Read read, const Write write) {
  const index_t leg = m / Radix;
  if (span == 1) {  // first pass: all twiddles 1
    for (index_t j = 0; j < leg; ++j)
      for (index_t b = 0; b < batch; ++b) {
        complex_lanes<Arch> x[Radix];
        ATTNKIT_UNROLL for (int s = 0; s < Radix; ++s) x[s] = read(j + s * leg, b);
        small_dft(x);
        ATTNKIT_UNROLL for (int s = 0; s < Radix; ++s) write(j * Radix + s, b, x[s]);
      }
    return;
  }
  for (index_t base = 0; base < leg; base += span)
    for (index_t k = 0; k < span; ++k) {
      const float* wk = twiddles + 2 * (Radix - 1) * k;
      complex_lanes<Arch> w[Radix - 1];
      ATTNKIT_UNROLL for (int s = 0; s < Radix - 1; ++s) w[s] = {vec<Arch>(wk[2 * s]), vec<Arch>(wk[2 * s + 1])};
      for (index_t b = 0; b < batch; ++b) {
        complex_lanes<Arch> x[Radix];
        x[0] = read(base + k, b);
        ATTNKIT_UNROLL for (int s = 1; s < Radix; ++s) x[s] = times(read(base + k + s * leg, b), w[s - 1]);
        small_dft(x);
        ATTNKIT_UNROLL for (int s = 0; s < Radix; ++s) write(base * Radix + k + s * span, b, x[s]);
      }
    }
}

/// The pass with its radix as a template argument.
template <class Arch, class Read, class Write>
void run_pass(const pass_plan& pass, index_t m, index_t batch, const float* twiddles, const Read& read, const Write& write) {
  const float* own = twiddles + pass.twiddles;
  switch (pass.radix) {
    case 2: return stockham_pass<2, Arch>(m, pass.span, batch, own, read, write);
    case 3: return stockham_pass<3, Arch>(m, pass.span, batch, own, read, write);
    case 4: return stockham_pass<4, Arch>(m, pass.span, batch, own, read, write);
    default: return stockham_pass<5, Arch>(m, pass.span, batch, own, read, write);
  }
}

/// e^{-2 pi i numerator / denominator}, in double, numerator reduced first.
inline void unit_root(index_t numerator, index_t denominator, float* out) {
  const double angle = -2 * 3.14159265358979323846 * static_cast<double>(numerator % denominator) / static_cast<double>(denominator);
  out[0] = static_cast<float>(std::cos(angle));
  out[1] = static_cast<float>(std::sin(angle));
}

/// Passes for an m-point FFT: the radix-5 and radix-3 passes first (the first pass needs no
/// twiddles, and theirs are the most per butterfly), then one radix-2 pass if log2 is odd, then
/// radix 4; appends their twiddles to `twiddles`.
inline sub_fft_plan make_sub_fft_plan(index_t m, std::vector<float>& twiddles) {
  std::vector<int> radices;
  index_t rest = m;
  for (int radix : {5, 3}) {
    while (rest % radix == 0) radices.push_back(radix), rest /= radix;
  }
  index_t twos = 0;
  while (rest % 2 == 0) ++twos, rest /= 2;
  if (twos % 2 == 1) radices.push_back(2);
  for (index_t i = 0; i < twos / 2; ++i) radices.push_back(4);
  sub_fft_plan plan;
  plan.size = m;
  index_t span = 1;
  for (int radix : radices) {
    plan.passes.push_back({radix, span, twiddles.size()});
    if (span > 1) {
      for (index_t k = 0; k < span; ++k)
        for (index_t s = 1; s < radix; ++s) {
          float w[2];
          unit_root(s * k, span * radix, w);
          twiddles.insert(twiddles.end(), w, w + 2);
        }
    }
    span *= radix;
  }
  return plan;
}

}  // namespace fft_detail

/// FFTs of n = 2^a 3^b 5^c points of W = vec<Arch>::size sequences at once (see the file comment
/// for the layout and the algorithm). The transform calls allocate nothing and are const: one
/// object serves many threads, each with its own `work`.
template <class Arch>
class lane_fft {
  using complex_lanes = fft_detail::complex_lanes<Arch>;
  using lane_buffer = fft_detail::lane_buffer<Arch>;
  using table_twist = fft_detail::table_twist;
  template <class Twist = fft_detail::no_twist>
  using reader = fft_detail::lane_reader<Arch, Twist>;
  template <class Twist = fft_detail::no_twist>
  using writer = fft_detail::lane_writer<Arch, Twist>;

 public:
  static constexpr index_t lanes = static_cast<index_t>(vec<Arch>::size);

  /// n = 2^a 3^b 5^c >= 1.
  explicit lane_fft(index_t n) : n_(n) {
    require(n >= 1 && smooth_size(n) == n, "lane_fft: n = ", n, ", expected 2^a 3^b 5^c >= 1");
    if (n * position * static_cast<index_t>(sizeof(float)) > one_row_bytes) {
      for (index_t d = 1; d * d <= n; ++d)
        if (n % d == 0) columns_length_ = d;  // the largest divisor <= sqrt(n)
    }
    row_length_ = n / columns_length_;
    const index_t column_bytes = columns_length_ * position * static_cast<index_t>(sizeof(float));
    column_block_ = std::clamp<index_t>(column_block_bytes / column_bytes, 1, row_length_);
    rows_ = fft_detail::make_sub_fft_plan(row_length_, pass_twiddles_);
    columns_ = fft_detail::make_sub_fft_plan(columns_length_, pass_twiddles_);
    if (columns_length_ > 1) {
      grid_twiddles_.resize(static_cast<std::size_t>(2 * n));
      for (index_t t1 = 0; t1 < row_length_; ++t1)
        for (index_t k2 = 0; k2 < columns_length_; ++k2)
          fft_detail::unit_root(t1 * k2, n, &grid_twiddles_[static_cast<std::size_t>(2 * (t1 * columns_length_ + k2))]);
    }
  }

  index_t size() const { return n_; }

  /// Floats of scratch each call needs, 64-byte aligned.
  std::size_t work_floats() const {
    const index_t longest = std::max(row_length_, columns_length_);
    const index_t transforms = std::max(2 * row_length_, 2 * columns_length_ * column_block_) * position;
    const index_t spectrum = 3 * longest * position;                  // kernel_spectrum: packed lanes + transform
    const index_t permutation = position + (n_ + 31) / 32;            // one position + a bit per position
    return static_cast<std::size_t>(std::max({transforms, spectrum, permutation}));
  }

  /// Forward DFT (e^{-2 pi i t k / n}), unnormalised, in place, with frequency k2 + n2 k1 left
  /// at position k1 + n1 k2 (the scrambled order).
  void forward_scrambled(float* x, float* work) const {
    if (columns_length_ > 1) {
      for (index_t first = 0; first < row_length_; first += column_block_) {
        const index_t block = std::min(column_block_, row_length_ - first);
        const lane_buffer columns{x + first * position, row_length_ * position, position};
        const index_t next_block = first + block < row_length_ ? block * position : 0;
        const table_twist twiddles{&grid_twiddles_[static_cast<std::size_t>(2 * first * columns_length_)], 2, 2 * columns_length_};
        run(columns_, block, reader<>{columns, {}, next_block}, writer<table_twist>{columns, twiddles}, work);
      }
    }
    for (index_t row = 0; row < columns_length_; ++row) {
      const lane_buffer positions{x + row * row_length_ * position, position, 0};
      run(rows_, 1, reader<>{positions}, writer<>{positions}, work);
    }
  }

  /// The spectrum of one complex sequence (g_im null: real), in the scrambled order, as 2 n
  /// floats (re, im per position): the `kernel` of multiply_inverse.
  void kernel_spectrum(const float* g_re, const float* g_im, float* spectrum, float* work) const {
    // The same four steps, with W columns (then W rows) of the one sequence packed into lanes.
    float* packed = work;
    float* scratch = work + std::max(row_length_, columns_length_) * position;
    const auto transform_packed = [&](const fft_detail::sub_fft_plan& plan) {
      const lane_buffer buffer{packed, position, 0};
      run(plan, 1, reader<>{buffer}, writer<>{buffer}, scratch);
    };
    if (columns_length_ > 1) {
      for (index_t first = 0; first < row_length_; first += lanes) {
        for (index_t t2 = 0; t2 < columns_length_; ++t2)
          for (index_t l = 0; l < lanes; ++l) {
            const index_t column = first + l, t = column + row_length_ * t2;
            packed[t2 * position + l] = column < row_length_ ? g_re[t] : 0;
            packed[t2 * position + lanes + l] = column < row_length_ && g_im ? g_im[t] : 0;
          }
        transform_packed(columns_);
        for (index_t l = 0; l < lanes && first + l < row_length_; ++l)
          for (index_t k2 = 0; k2 < columns_length_; ++k2) {
            const float* w = &grid_twiddles_[static_cast<std::size_t>(2 * ((first + l) * columns_length_ + k2))];
            const float re = packed[k2 * position + l], im = packed[k2 * position + lanes + l];
            float* out = spectrum + 2 * (first + l + row_length_ * k2);
            out[0] = re * w[0] - im * w[1];
            out[1] = re * w[1] + im * w[0];
          }
      }
    } else {
      for (index_t t = 0; t < n_; ++t) spectrum[2 * t] = g_re[t], spectrum[2 * t + 1] = g_im ? g_im[t] : 0;
    }
    for (index_t first = 0; first < columns_length_; first += lanes) {
      const index_t rows = std::min(lanes, columns_length_ - first);
      for (index_t t1 = 0; t1 < row_length_; ++t1)
        for (index_t l = 0; l < lanes; ++l) {
          const float* in = spectrum + 2 * (t1 + row_length_ * (first + l));
          packed[t1 * position + l] = l < rows ? in[0] : 0;
          packed[t1 * position + lanes + l] = l < rows ? in[1] : 0;
        }
      transform_packed(rows_);
      for (index_t l = 0; l < rows; ++l)
        for (index_t k1 = 0; k1 < row_length_; ++k1) {
          float* out = spectrum + 2 * (k1 + row_length_ * (first + l));
          out[0] = packed[k1 * position + l];
          out[1] = packed[k1 * position + lanes + l];
        }
    }
  }

  /// y = IFFT(xhat .* kernel) / n in natural order: xhat from forward_scrambled (left
  /// unchanged), kernel from kernel_spectrum (the same for every lane); y may not alias xhat.
  void multiply_inverse(const float* xhat, const float* kernel, float* y, float* work) const {
    const float scale = 1.0f / static_cast<float>(n_);
    inverse_scrambled(xhat, y, work, [&](index_t row) {
      return table_twist{kernel + 2 * row * row_length_, 2, 0, scale, -scale};  // swapped domain: conj
    });
  }

  /// Natural-order forward DFT, unnormalised, in place.
  void forward(float* x, float* work) const {
    forward_scrambled(x, work);
    permute(x, work, [this](index_t natural) {  // frequency k2 + n2 k1 comes from k1 + n1 k2
      return natural / columns_length_ + row_length_ * (natural % columns_length_);
    });
  }

  /// Natural-order inverse DFT (e^{+2 pi i t k / n}), unnormalised, in place.
  void inverse(float* x, float* work) const {
    permute(x, work, [this](index_t scrambled) {
      return scrambled / row_length_ + columns_length_ * (scrambled % row_length_);
    });
    inverse_scrambled(x, x, work, [](index_t) { return fft_detail::no_twist{}; });
  }

 private:
  static constexpr index_t position = 2 * lanes;  // floats
  /// Up to this size the transform is one row: all of it stays in L1.
  static constexpr index_t one_row_bytes = 16 * 1024;
  /// Bytes of a column block: L1-sized, so the passes over it stay in L1 and L2.
  static constexpr index_t column_block_bytes = 32 * 1024;

  /// The row and column sub-FFTs of `batch` sequences: read, the passes between the two halves
  /// of `scratch`, write. In place (read and write at the same positions) is fine: every pass
  /// but a lone one writes elsewhere, and a lone pass is one butterfly per sequence.
  template <class Read, class Write>
  void run(const fft_detail::sub_fft_plan& plan, index_t batch, const Read& read, const Write& write, float* scratch) const {
    const std::size_t count = plan.passes.size();
    if (count == 0) {
      for (index_t b = 0; b < batch; ++b) write(0, b, read(0, b));
      return;
    }
    const index_t m = plan.size;
    const auto half = [&](std::size_t i) { return lane_buffer{scratch + static_cast<index_t>(i % 2) * m * batch * position, batch * position, position}; };
    const float* twiddles = pass_twiddles_.data();
    for (std::size_t i = 0; i < count; ++i) {
      const fft_detail::pass_plan& pass = plan.passes[i];
      if (count == 1)
        fft_detail::run_pass<Arch>(pass, m, batch, twiddles, read, write);
      else if (i == 0)
        fft_detail::run_pass<Arch>(pass, m, batch, twiddles, read, writer<>{half(0)});
      else if (i + 1 == count)
        fft_detail::run_pass<Arch>(pass, m, batch, twiddles, reader<>{half(i - 1)}, write);
      else
        fft_detail::run_pass<Arch>(pass, m, batch, twiddles, reader<>{half(i - 1)}, writer<>{half(i)});
    }
  }

  /// Inverse of forward_scrambled's steps, from `in` (scrambled) to `out` (natural), in the
  /// swapped domain: rows (each input row times row_twist(row)), twiddles, columns.
  template <class RowTwist>
  void inverse_scrambled(const float* in, float* out, float* work, const RowTwist& row_twist) const {
    const bool one_row = columns_length_ == 1;
    for (index_t row = 0; row < columns_length_; ++row) {
      // Only ever read through `source`: the const_cast lets one lane_buffer type serve both.
      const lane_buffer source{const_cast<float*>(in) + row * row_length_ * position, position, 0, lanes, 0};
      const lane_buffer target{out + row * row_length_ * position, position, 0, one_row ? lanes : 0, one_row ? 0 : lanes};
      run(rows_, 1, reader<decltype(row_twist(row))>{source, row_twist(row)}, writer<>{target}, work);
    }
    if (one_row) return;
    for (index_t first = 0; first < row_length_; first += column_block_) {
      const index_t block = std::min(column_block_, row_length_ - first);
      const lane_buffer columns{out + first * position, row_length_ * position, position};
      const lane_buffer swapped{columns.base, columns.t_stride, columns.b_stride, lanes, 0};
      const index_t next_block = first + block < row_length_ ? block * position : 0;
      const table_twist twiddles{&grid_twiddles_[static_cast<std::size_t>(2 * first * columns_length_)], 2, 2 * columns_length_};
      run(columns_, block, reader<table_twist>{columns, twiddles, next_block}, writer<>{swapped}, work);
    }
  }

  /// x[p] = old x[source(p)] for every position p, by following the permutation's cycles, a bit
  /// per position in work marking those done.
  template <class Source>
  void permute(float* x, float* work, const Source& source) const {
    float* held = work;
    float* done_bits = work + position;
    std::memset(done_bits, 0, static_cast<std::size_t>((n_ + 31) / 32) * sizeof(float));
    const auto test_and_set = [&](index_t p) {
      std::uint32_t word;
      std::memcpy(&word, done_bits + p / 32, sizeof word);
      const std::uint32_t bit = std::uint32_t{1} << (p % 32);
      const bool was = (word & bit) != 0;
      word |= bit;
      std::memcpy(done_bits + p / 32, &word, sizeof word);
      return was;
    };
    const auto copy = [&](float* to, const float* from) { std::copy(from, from + position, to); };
    for (index_t start = 0; start < n_; ++start) {
      if (test_and_set(start) || source(start) == start) continue;
      copy(held, x + start * position);
      index_t p = start;
      for (index_t from = source(p); from != start; p = from, from = source(p)) {
        copy(x + p * position, x + from * position);
        test_and_set(from);
      }
      copy(x + p * position, held);
    }
  }

  index_t n_;
  index_t columns_length_ = 1;  // n2: rows of the four-step grid
  index_t row_length_ = 1;      // n1: columns
  index_t column_block_ = 1;    // B: columns transformed together
  fft_detail::sub_fft_plan rows_, columns_;
  std::vector<float> pass_twiddles_;
  std::vector<float> grid_twiddles_;  // W_n^{t1 k2} at 2 (t1 n2 + k2)
};

}  // namespace attnkit::detail::simd
