/// \file
/// Complex FFTs of W independent sequences at once, one sequence per lane of vec<Arch> (W = 16
/// floats with AVX-512, 8 with AVX2, 4 with SSE2 and NEON), so every butterfly is plain vertical
/// SIMD code. The engine of kernelized attention with relative positions: thousands of circular
/// convolutions of length n = 2^a 3^b 5^c with one kernel g.
///
/// Layout: a buffer holds n positions of 2W floats, W real parts then W imaginary parts:
///   re of lane l at position t: x[2 t W + l],   im: x[(2 t + 1) W + l].
///
/// Algorithm: in-place mixed-radix Cooley-Tukey, radix 8 (4 with 16 vector registers), 5, 3
/// and a last 4 or 2. The forward transform decimates in frequency, which takes natural order
/// to digit-reversed order (the "scrambled" order: the convolution only multiplies spectra
/// pointwise, so no reordering pass is needed); the inverse decimates in time, which takes it
/// back. Both run depth first: a block of more than 16 KiB (l1_block_bytes) gets its own
/// level, one pass over it, then each of its sub-blocks is finished in turn; a smaller block
/// runs all its levels in L1. Only the levels of the large blocks leave L1 (the top one goes
/// to memory, the next ones to L3 or L2): at n = 2^17 with AVX-512 (16 MiB) 3 of 6 levels.
/// This measured faster on Zen 4 than a four-step split (two passes over memory, but strided
/// column gathers) at every n from 2^12 to 2^20, also with the other core streaming its own
/// transforms through the shared L3.
///
/// The stage that runs first may read another buffer than the one transformed in place
/// (multiply_inverse reads xhat and transforms y) and multiply each element by a complex number
/// as it loads it (the kernel spectrum), so the product and the copy cost no pass of their own.
/// The inverse is the forward transform on swapped parts: IDFT(z) = S(DFT(S(z))) with
/// S(z) = i conj(z), i.e. re and im exchanged, which the layout gives for free (the first stage
/// loads re from the im slot, the last stores it there); a factor c becomes conj(c):
/// S(c z) = conj(c) S(z).
///
/// Twiddles are computed in double and rounded to float: the error is about 1e-7 log2(n) of the
/// largest magnitude.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
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
  } else if constexpr (Radix == 8) {  // radix 2, then 4-point DFTs of the sums (even outputs) and differences (odd)
    const V sqrt_half(0.707106781186547524f), minus_sqrt_half(-0.707106781186547524f);
    complex_lanes<Arch> even[4], odd[4];
    ATTNKIT_UNROLL for (int s = 0; s < 4; ++s) even[s] = x[s] + x[s + 4], odd[s] = x[s] - x[s + 4];
    small_dft(even);
    // odd[s] times e^{-i pi s / 4}; that of odd[2], -i, is folded into its sums below
    odd[1] = {sqrt_half * (odd[1].re + odd[1].im), sqrt_half * (odd[1].im - odd[1].re)};
    odd[3] = {sqrt_half * (odd[3].im - odd[3].re), minus_sqrt_half * (odd[3].re + odd[3].im)};
    const auto s02 = plus_minus_i(odd[0], odd[2]), d02 = plus_plus_i(odd[0], odd[2]);
    const auto s13 = odd[1] + odd[3], d13 = odd[1] - odd[3];
    ATTNKIT_UNROLL for (int k = 0; k < 4; ++k) x[2 * k] = even[k];
    x[1] = s02 + s13;
    x[5] = s02 - s13;
    x[3] = plus_minus_i(d02, d13);
    x[7] = plus_plus_i(d02, d13);
  } else {
    static_assert(Radix == 5, "radices 2, 3, 4, 5, 8");
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

/// Hides how p was computed: GCC otherwise turns the address of every leg of a butterfly into
/// an induction variable of its own, 16 of them for radix 8 (read and write), which spill.
template <class T>
ATTNKIT_ALWAYS_INLINE T* opaque(T* p) {
#if defined(__GNUC__) || defined(__clang__)
  asm("" : "+r"(p));
#endif
  return p;
}

/// A sequence buffer (see the file comment), its real parts at + re_at in each position, its
/// imaginary parts at + im_at: swapped (re_at = W) in the inverse transform.
template <class Arch>
struct lane_buffer {
  static constexpr index_t position = 2 * static_cast<index_t>(vec<Arch>::size);  // floats
  float* base;
  index_t re_at = 0, im_at = position / 2;

  ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> load(const float* p) const {
    return {vec<Arch>::load_aligned(p + re_at), vec<Arch>::load_aligned(p + im_at)};
  }
  ATTNKIT_ALWAYS_INLINE void store(float* p, const complex_lanes<Arch>& v) const {
    v.re.store_aligned(p + re_at);
    v.im.store_aligned(p + im_at);
  }
};

/// A factor 1 for every element.
struct no_twist {
  static constexpr index_t stride = 0;
  ATTNKIT_ALWAYS_INLINE const float* at(index_t) const { return nullptr; }
  template <class Arch>
  ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> operator()(const float*, const complex_lanes<Arch>& v) const {
    return v;
  }
};

/// Element t times (re_scale * factors[2 t], im_scale * factors[2 t + 1]), the same in every
/// lane: the kernel spectrum of multiply_inverse, conjugated and divided by n.
struct spectrum_twist {
  static constexpr index_t stride = 2;
  const float* factors;
  float re_scale, im_scale;

  ATTNKIT_ALWAYS_INLINE const float* at(index_t t) const { return factors + stride * t; }
  template <class Arch>
  ATTNKIT_ALWAYS_INLINE complex_lanes<Arch> operator()(const float* w, const complex_lanes<Arch>& v) const {
    return times(v, complex_lanes<Arch>{vec<Arch>(re_scale * w[0]), vec<Arch>(im_scale * w[1])});
  }
};

/// Loads the legs of a butterfly, elements first + s leg (s < Radix), times a twist. One
/// address per butterfly, the legs at a fixed stride from it, keeps the integer registers few.
template <class Arch, class Twist = no_twist>
struct lane_reader {
  lane_buffer<Arch> buffer;
  Twist twist{};

  template <int Radix>
  ATTNKIT_ALWAYS_INLINE void operator()(index_t first, index_t leg, complex_lanes<Arch> (&x)[Radix]) const {
    const float* p = opaque(buffer.base + first * buffer.position);
    const float* w = twist.at(first);
    const index_t step = leg * buffer.position, twist_step = leg * twist.stride;
    ATTNKIT_UNROLL for (int s = 0; s < Radix; ++s) x[s] = twist(w + s * twist_step, buffer.load(p + s * step));
  }
};

/// Stores the legs of a butterfly (see lane_reader).
template <class Arch>
struct lane_writer {
  lane_buffer<Arch> buffer;

  template <int Radix>
  ATTNKIT_ALWAYS_INLINE void operator()(index_t first, index_t leg, const complex_lanes<Arch> (&x)[Radix]) const {
    float* p = opaque(buffer.base + first * buffer.position);
    const index_t step = leg * buffer.position;
    ATTNKIT_UNROLL for (int s = 0; s < Radix; ++s) buffer.store(p + s * step, x[s]);
  }
};

/// One level of the transform: butterflies of `radix` over blocks of `length` elements; its
/// twiddles w^{q j} (w = e^{-2 pi i / length}, j < length / radix, 1 <= q < radix) start at
/// `twiddles`, radix - 1 complex numbers per j.
struct level_plan {
  int radix;
  index_t length;
  std::size_t twiddles;
};

/// The butterflies of one level over every block of `length` elements in [first, first +
/// extent): butterfly j of a block reads its elements j + s length / Radix (s < Radix) and
/// writes back to the same ones.
///   Decimation in frequency (Dit = false): DFT, then output q times w^{q j}.
///   Decimation in time (Dit = true): input s times w^{s j}, then DFT.
/// With several blocks j is the outer loop, so they share its twiddle loads. read and write
/// come by value: the vector stores may alias anything (xsimd stores through may_alias types),
/// so fields read through a reference would be reloaded after every store.
template <int Radix, bool Dit, class Arch, class Read, class Write>
void radix_stage(index_t first, index_t extent, index_t length, const float* twiddles, const Read read, const Write write) {
  const index_t leg = length / Radix, end = first + extent;
  const auto butterfly = [&](index_t at, const complex_lanes<Arch>* w, auto twiddled) ATTNKIT_INLINE_LAMBDA {
    complex_lanes<Arch> x[Radix];
    read(at, leg, x);
    if constexpr (decltype(twiddled)::value && Dit) {
      ATTNKIT_UNROLL for (int s = 1; s < Radix; ++s) x[s] = times(x[s], w[s - 1]);
    }
    small_dft(x);
    if constexpr (decltype(twiddled)::value && !Dit) {
      ATTNKIT_UNROLL for (int s = 1; s < Radix; ++s) x[s] = times(x[s], w[s - 1]);
    }
    write(at, leg, x);
  };
  const auto twiddles_of = [&](index_t j, complex_lanes<Arch>(&w)[Radix - 1]) ATTNKIT_INLINE_LAMBDA {
    const float* wj = twiddles + 2 * (Radix - 1) * j;
    ATTNKIT_UNROLL for (int s = 0; s < Radix - 1; ++s) w[s] = {vec<Arch>(wj[2 * s]), vec<Arch>(wj[2 * s + 1])};
  };
  if (extent == length) {  // one block: a plain loop over j
    butterfly(first, nullptr, std::false_type{});
    for (index_t j = 1; j < leg; ++j) {
      complex_lanes<Arch> w[Radix - 1];
      twiddles_of(j, w);
      butterfly(first + j, w, std::true_type{});
    }
    return;
  }
  for (index_t block = first; block < end; block += length) butterfly(block, nullptr, std::false_type{});  // j = 0: twiddles 1
  for (index_t j = 1; j < leg; ++j) {
    complex_lanes<Arch> w[Radix - 1];
    twiddles_of(j, w);
    for (index_t block = first + j; block < end; block += length) butterfly(block, w, std::true_type{});
  }
}

/// radix_stage with the level's radix as a template argument.
template <bool Dit, class Arch, class Read, class Write>
void radix_stage(const level_plan& level, index_t first, index_t extent, const float* twiddles, const Read& read, const Write& write) {
  const float* own = twiddles + level.twiddles;
  switch (level.radix) {
    case 2: return radix_stage<2, Dit, Arch>(first, extent, level.length, own, read, write);
    case 3: return radix_stage<3, Dit, Arch>(first, extent, level.length, own, read, write);
    case 4: return radix_stage<4, Dit, Arch>(first, extent, level.length, own, read, write);
    case 5: return radix_stage<5, Dit, Arch>(first, extent, level.length, own, read, write);
    default: return radix_stage<8, Dit, Arch>(first, extent, level.length, own, read, write);
  }
}

/// e^{-2 pi i numerator / denominator}, in double.
inline std::complex<double> unit_root(index_t numerator, index_t denominator) {
  const double angle = -2 * 3.14159265358979323846 * static_cast<double>(numerator % denominator) / static_cast<double>(denominator);
  return {std::cos(angle), std::sin(angle)};
}

}  // namespace fft_detail

/// FFTs of n = 2^a 3^b 5^c points of W = vec<Arch>::size sequences at once (see the file comment
/// for the layout and the algorithm). The transform calls allocate nothing and are const: one
/// object serves many threads, each with its own `work`.
template <class Arch>
class lane_fft {
  using lane_buffer = fft_detail::lane_buffer<Arch>;
  using level_plan = fft_detail::level_plan;
  template <class Twist = fft_detail::no_twist>
  using reader = fft_detail::lane_reader<Arch, Twist>;
  using writer = fft_detail::lane_writer<Arch>;

 public:
  static constexpr index_t lanes = static_cast<index_t>(vec<Arch>::size);

  /// n = 2^a 3^b 5^c >= 1: plans the levels and computes their twiddles.
  explicit lane_fft(index_t n) : n_(n) {
    require(n >= 1 && smooth_size(n) == n, "lane_fft: n = ", n, ", expected 2^a 3^b 5^c >= 1");
    // Radix 8 where 32 vector registers hold its 8 inputs and 7 twiddles, else 4; then 5, 3
    // and a last 4 or 2 for the powers of two left. Fewer levels: fewer passes over blocks
    // beyond L1.
    const bool radix_8 = registers<Arch> >= 32;
    index_t twos = 0, rest = n;
    while (rest % 2 == 0) ++twos, rest /= 2;
    std::vector<int> radices;
    for (const index_t big = radix_8 ? 3 : 2; twos >= big; twos -= big) radices.push_back(radix_8 ? 8 : 4);
    for (int radix : {5, 3})
      while (rest % radix == 0) radices.push_back(radix), rest /= radix;
    if (twos > 0) radices.push_back(twos == 2 ? 4 : 2);

    index_t length = n;
    for (int radix : radices) {
      levels_.push_back({radix, length, twiddles_.size()});
      for (index_t j = 0; j < length / radix; ++j)
        for (index_t q = 1; q < radix; ++q) {
          const std::complex<double> w = fft_detail::unit_root(q * j, length);
          twiddles_.push_back(static_cast<float>(w.real()));
          twiddles_.push_back(static_cast<float>(w.imag()));
        }
      length /= radix;
    }
  }

  index_t size() const { return n_; }

  /// Floats of scratch each call needs, 64-byte aligned: only forward and inverse use theirs
  /// (to reorder); the others are in place.
  std::size_t work_floats() const { return static_cast<std::size_t>(position + (n_ + 31) / 32); }

  /// Forward DFT (e^{-2 pi i t k / n}), unnormalised, in place, in the scrambled order:
  /// frequency k at position_of(k), the mixed-radix digit reversal of k.
  void forward_scrambled(float* x, float* /*work*/) const {
    const lane_buffer buffer{x};
    transform<false>(reader<>{buffer}, buffer, writer{buffer});
  }

  /// The spectrum of one complex sequence (g_im null: real), in the scrambled order, as 2 n
  /// floats (re, im per position): the `kernel` of multiply_inverse. Scalar code: it runs once
  /// per kernel, against thousands of convolutions.
  void kernel_spectrum(const float* g_re, const float* g_im, float* spectrum, float* /*work*/) const {
    for (index_t t = 0; t < n_; ++t) spectrum[2 * t] = g_re[t], spectrum[2 * t + 1] = g_im ? g_im[t] : 0;
    // The levels of forward_scrambled, breadth first, with a naive DFT per butterfly.
    for (const level_plan& level : levels_) {
      const index_t leg = level.length / level.radix;
      std::complex<double> roots[8];
      for (int k = 0; k < level.radix; ++k) roots[k] = fft_detail::unit_root(k, level.radix);
      for (index_t block = 0; block < n_; block += level.length)
        for (index_t j = 0; j < leg; ++j) {
          std::complex<double> x[8];
          for (int s = 0; s < level.radix; ++s) x[s] = {spectrum[2 * (block + j + s * leg)], spectrum[2 * (block + j + s * leg) + 1]};
          for (int q = 0; q < level.radix; ++q) {
            std::complex<double> sum = 0;
            for (int s = 0; s < level.radix; ++s) sum += x[s] * roots[s * q % level.radix];
            if (q > 0) {
              const float* w = &twiddles_[level.twiddles + static_cast<std::size_t>(2 * ((level.radix - 1) * j + q - 1))];
              sum *= std::complex<double>(w[0], w[1]);
            }
            spectrum[2 * (block + j + q * leg)] = static_cast<float>(sum.real());
            spectrum[2 * (block + j + q * leg) + 1] = static_cast<float>(sum.imag());
          }
        }
    }
  }

  /// y = IFFT(xhat .* kernel) / n in natural order: xhat from forward_scrambled, kernel from
  /// kernel_spectrum (the same for every lane). y may be xhat itself (in place: every stage
  /// writes the positions it reads); otherwise xhat is left unchanged.
  void multiply_inverse(const float* xhat, const float* kernel, float* y, float* /*work*/) const {
    const float scale = 1.0f / static_cast<float>(n_);
    // Only ever read through: the const_cast lets one lane_buffer type serve both.
    const lane_buffer swapped_in{const_cast<float*>(xhat), lanes, 0}, target{y}, swapped_out{y, lanes, 0};
    transform<true>(reader<fft_detail::spectrum_twist>{swapped_in, {kernel, scale, -scale}}, target, writer{swapped_out});
  }

  /// Natural-order forward DFT, unnormalised, in place.
  void forward(float* x, float* work) const {
    forward_scrambled(x, work);
    permute(x, work, [this](index_t k) { return position_of(k); });
  }

  /// Natural-order inverse DFT (e^{+2 pi i t k / n}), unnormalised, in place.
  void inverse(float* x, float* work) const {
    permute(x, work, [this](index_t p) { return frequency_at(p); });
    const lane_buffer target{x}, swapped{x, lanes, 0};
    transform<true>(reader<>{swapped}, target, writer{swapped});
  }

 private:
  static constexpr index_t position = lane_buffer::position;  // floats
  /// Blocks up to this size run all their levels at once (breadth first), larger ones one level
  /// and then each sub-block in turn (depth first). Half of L1, for the twiddles and the stack.
  static constexpr index_t l1_block_bytes = 16 * 1024;

  /// The position of frequency k in the scrambled order: its digits, least significant in the
  /// top level's radix, reversed.
  index_t position_of(index_t k) const {
    index_t at = 0;
    for (const level_plan& level : levels_) at += k % level.radix * (level.length / level.radix), k /= level.radix;
    return at;
  }

  /// The frequency at position p of the scrambled order (the inverse of position_of).
  index_t frequency_at(index_t p) const {
    index_t frequency = 0, weight = 1;
    for (const level_plan& level : levels_) {
      const index_t leg = level.length / level.radix;
      frequency += p / leg * weight, p %= leg, weight *= level.radix;
    }
    return frequency;
  }

  /// The whole transform in place in `target`, except that the first stage to run reads
  /// `source` instead (in time: the deepest level; in frequency: the top one) and the last one
  /// writes `final`. Decimation in frequency (Dit = false): natural order to scrambled; in
  /// time: scrambled to natural.
  template <bool Dit, class Source>
  void transform(const Source& source, const lane_buffer& target, const writer& final) const {
    if (levels_.empty()) {  // n = 1
      fft_detail::complex_lanes<Arch> x[1];
      source(0, 0, x);
      final(0, 0, x);
      return;
    }
    descend<Dit>(0, 0, source, target, final);
  }

  /// The levels from `level` down of its block starting at `first`.
  template <bool Dit, class Source>
  void descend(std::size_t level, index_t first, const Source& source, const lane_buffer& target, const writer& final) const {
    const std::size_t deepest = levels_.size() - 1;
    const level_plan& own = levels_[level];
    if (level == deepest || own.length * position * static_cast<index_t>(sizeof(float)) <= l1_block_bytes) {
      for (std::size_t l = level; l <= deepest; ++l) stage<Dit>(Dit ? deepest - (l - level) : l, first, own.length, source, target, final);
      return;
    }
    if (!Dit) stage<Dit>(level, first, own.length, source, target, final);
    const index_t sub = own.length / own.radix;
    for (index_t q = 0; q < own.radix; ++q) descend<Dit>(level + 1, first + q * sub, source, target, final);
    if (Dit) stage<Dit>(level, first, own.length, source, target, final);
  }

  /// Level `level` over its blocks in [first, first + extent), reading source if it is the
  /// first stage to run and writing final if the last.
  template <bool Dit, class Source>
  void stage(std::size_t level, index_t first, index_t extent, const Source& source, const lane_buffer& target, const writer& final) const {
    const std::size_t deepest = levels_.size() - 1;
    const bool from_source = level == (Dit ? deepest : 0), to_final = level == (Dit ? 0 : deepest);
    const level_plan& own = levels_[level];
    const float* twiddles = twiddles_.data();
    if (from_source && to_final)
      fft_detail::radix_stage<Dit, Arch>(own, first, extent, twiddles, source, final);
    else if (from_source)
      fft_detail::radix_stage<Dit, Arch>(own, first, extent, twiddles, source, writer{target});
    else if (to_final)
      fft_detail::radix_stage<Dit, Arch>(own, first, extent, twiddles, reader<>{target}, final);
    else
      fft_detail::radix_stage<Dit, Arch>(own, first, extent, twiddles, reader<>{target}, writer{target});
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
  std::vector<level_plan> levels_;  // levels_[0] spans the whole sequence
  std::vector<float> twiddles_;
};

}  // namespace attnkit::detail::simd
