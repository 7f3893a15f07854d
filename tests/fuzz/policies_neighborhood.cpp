/// \file
/// Fuzz decoders of attnkit::neighborhood<1>, <2> and <3>: grid shape, kernel, dilation,
/// stride (GNA) and causal per axis, plus on-purpose invalid and overflowing fields
/// (tests/fuzz/harness.hpp).
#include "harness.hpp"

namespace attnkit_fuzz {
namespace {

template <int Rank>
std::string axes_text(const std::array<index_t, Rank>& a) {
  std::string s = "{";
  for (int i = 0; i < Rank; ++i) s += (i ? ", " : "") + fmt(a[static_cast<std::size_t>(i)]);
  return s + "}";
}

template <int Rank>
void decode_neighborhood(fuzz_case& c) {
  reader& r = c.r;
  attnkit::neighborhood<Rank> p;
  const index_t limit = Rank == 1 ? 64 : Rank == 2 ? 8 : 4;
  const std::uint64_t shape_default = Rank == 1 ? 15 : Rank == 2 ? 3 : 1;
  for (std::size_t a = 0; a < Rank; ++a) {
    p.shape[a] = 1 + static_cast<index_t>(r.take("nb_shape", static_cast<std::uint64_t>(limit), shape_default));
    p.kernel[a] = 1 + static_cast<index_t>(
        r.take("nb_kernel", static_cast<std::uint64_t>(p.shape[a]), static_cast<std::uint64_t>(std::min<index_t>(p.shape[a], 3) - 1)));
    p.dilation[a] = 1 + static_cast<index_t>(r.take("nb_dilation", static_cast<std::uint64_t>(p.shape[a] / p.kernel[a]), 0));
    p.stride[a] = 1 + static_cast<index_t>(r.take("nb_stride", static_cast<std::uint64_t>(p.kernel[a]), 0));
    p.causal[a] = r.flag("nb_causal");
  }
  p.scale = decode_scale(c);
  switch (r.take("nb_fault", 9, 0)) {
    case 1:
      p.kernel[0] = pow2_62, p.dilation[0] = 4;
      c.fault("kernel[0] * dilation[0] = 2^62 * 4 overflows");
      break;
    case 2:
      p.kernel[0] = p.shape[0] + 1;
      c.fault("kernel[0] > shape[0]");
      break;
    case 3:
      p.dilation[0] = 0;
      c.fault("dilation[0] = 0");
      break;
    case 4:
      p.stride[0] = p.kernel[0] + 1;
      c.fault("stride[0] > kernel[0]");
      break;
    case 5:
      if (Rank == 1) {
        p.shape[0] = 0;
        c.fault("shape[0] = 0");
      } else {
        p.shape[0] = p.shape[1] = pow2_32;
        c.fault("prod(shape) = 2^64 overflows");
      }
      break;
    case 6:
      if (Rank == 1) {
        p.shape[0] = -4;
        c.fault("shape[0] = -4");
      } else {
        p.shape[0] = 3, p.shape[1] = third_of_2_64;
        c.fault("prod(shape) = 3 * (2^64 + 2) / 3 overflows");
      }
      break;
    case 7:
      p.stride[0] = 0;
      c.fault("stride[0] = 0");
      break;
    case 8:
      p.kernel[0] = i64_max, p.dilation[0] = 2;
      c.fault("kernel[0] * dilation[0] = INT64_MAX * 2 overflows");
      break;
    default: break;
  }
  // The sequence length: prod(shape) with wrapping arithmetic (an overflowing product is what
  // a library that does not check it would compare against).
  std::uint64_t n = 1;
  for (index_t s : p.shape) n *= static_cast<std::uint64_t>(s);
  index_t seq = static_cast<index_t>(n);
  if (seq < 0 || seq > 4096) seq = 4;
  if (r.take("nb_fault_seq", 2, 0) == 1) {
    seq += 1;
    c.fault("q.seq() = k.seq() = prod(shape) + 1");
  }
  const problem pb = decode_problem(c, {seq, seq});
  c.lf.scale = p.scale;
  std::ostringstream s;
  s << "neighborhood<" << Rank << ">{shape=" << axes_text<Rank>(p.shape) << ", kernel=" << axes_text<Rank>(p.kernel)
    << ", dilation=" << axes_text<Rank>(p.dilation) << ", stride=" << axes_text<Rank>(p.stride) << ", causal={";
  for (int a = 0; a < Rank; ++a) s << (a ? ", " : "") << p.causal[static_cast<std::size_t>(a)];
  s << "}, scale=" << fmt(double(p.scale)) << "}";
  c.policy = s.str();
  run_policy(c, p, pb, Rank == 2 ? type_set::float_f16 : type_set::float_only);
}

}  // namespace

void decode_neighborhood1(fuzz_case& c) { decode_neighborhood<1>(c); }
void decode_neighborhood2(fuzz_case& c) { decode_neighborhood<2>(c); }
void decode_neighborhood3(fuzz_case& c) { decode_neighborhood<3>(c); }

}  // namespace attnkit_fuzz
