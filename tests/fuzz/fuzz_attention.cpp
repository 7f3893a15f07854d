/// \file
/// attnkit's fuzz harness (issue 17): the table of policy decoders, the shared decoders
/// (shapes, layouts, scale), merge_states, and the entry points:
///   -DATTNKIT_LIBFUZZER  LLVMFuzzerTestOneInput (target fuzz_attention: clang, libFuzzer,
///                        ASan + UBSan); a finding prints the decoded input and aborts.
///   otherwise            main() of fuzz_replay:
///                          fuzz_replay PATH...          run files / every file of directories
///                          fuzz_replay --describe FILE  print what a file decodes to
///                          fuzz_replay --generate DIR   write the seed corpus (tests/fuzz/corpus)
/// See tests/fuzz/README.md.
#include "harness.hpp"

#include <string_view>

#ifndef ATTNKIT_LIBFUZZER
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <unistd.h>
#endif

namespace attnkit_fuzz {

// ---------------------------------------------------------------------------------------------
// The table of policy decoders. The policy is decision "policy" taken mod 16; its last slot,
// 15, reads decision "policy_more" (mod 16) for the entries from 15 on. So a decoder appended
// here leaves every existing corpus file decoding to the same policy as before.

struct policy_entry {
  const char* name;
  void (*decode)(fuzz_case&);
};

const policy_entry policy_table[] = {
    {"softmax", decode_softmax},
    {"neighborhood<1>", decode_neighborhood1},
    {"neighborhood<2>", decode_neighborhood2},
    {"neighborhood<3>", decode_neighborhood3},
    {"power", decode_power},
    {"radial", decode_radial},
    {"custom", decode_custom},
    {"merge_states", decode_merge_states},
    {"hip", decode_hip},
    {"routing", decode_routing},
    {"linear", decode_linear},
    {"kernelized_rpe", decode_kernelized_rpe},
    {"probabilistic", decode_probabilistic},
    {"softplus", decode_softplus},
    {"affine_scaled", decode_affine_scaled},
    // policy 15: policy_more 0, 1, ...
    {"gaussian_adaptive", decode_gaussian_adaptive},
    {"local_linear", decode_local_linear},
};
constexpr std::uint64_t policy_slots = 16, more_slots = 16;
static_assert(std::size(policy_table) <= policy_slots - 1 + more_slots, "attnkit fuzz: more policies than slots");

// ---------------------------------------------------------------------------------------------
// The harness's per-element loops (this file is built optimised: see CMakeLists.txt).

double load_as(etype t, const unsigned char* p) {
  switch (t) {
    case etype::bf16: return load<bf16>(p);
    case etype::f16: return load<f16>(p);
    default: return load<float>(p);
  }
}
void store_as(etype t, unsigned char* p, double v) {
  switch (t) {
    case etype::bf16: return store<bf16>(p, v);
    case etype::f16: return store<f16>(p, v);
    default: return store<float>(p, v);
  }
}

std::uint64_t next_random(std::uint64_t& seed) {
  std::uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
double uniform_random(std::uint64_t& seed, double lo, double hi) {
  return lo + (hi - lo) * double(next_random(seed) >> 11) * 0x1p-53;
}

void fill_values(const vspec& v, const memory& m, etype t, int mode, double x, std::uint64_t& seed) {
  static const double extremes[13] = {1, 0, -1, 0.5, 10, 1e20, -1e20, 3e38, -3e38, 1e38, 65504, 1e-44, 2.5};
  if (!v.honest || v.null || v.empty()) return;
  const index_t half = v.ext[2] / 2;
  v.for_each([&](index_t o, index_t, index_t, index_t s, index_t) {
    double val = 0;
    switch (mode) {
      case 0: val = uniform_random(seed, -1, 1); break;
      case 1: val = uniform_random(seed, -10, 10); break;
      case 2: val = static_cast<double>(static_cast<int>(next_random(seed) % 7) - 3); break;
      case 3: val = x; break;
      case 4: val = extremes[next_random(seed) % 13]; break;
      case 5: {
        const std::uint64_t z = next_random(seed);
        val = z % 16 == 0 ? (z / 16 % 3 == 0 ? std::nan("") : z / 16 % 3 == 1 ? HUGE_VAL : -HUGE_VAL)
                          : uniform_random(seed, -1, 1);
        break;
      }
      case 6: val = s < half ? x : -x; break;
      case 7: val = uniform_random(seed, -4, 4); break;
      default: val = s == half ? x : uniform_random(seed, -1, 1); break;
    }
    store_as(t, m.at(v.region, v.offset + o * static_cast<std::ptrdiff_t>(v.esize)), val);
  });
}

value_stats stats_of(const vspec& v, const memory& m, etype t) {
  value_stats st;
  if (!v.honest || v.null || v.empty()) return st;
  double row = 0;
  v.for_each([&](index_t o, index_t, index_t, index_t, index_t d) {
    const double x = load_as(t, m.at(v.region, v.offset + o * static_cast<std::ptrdiff_t>(v.esize)));
    if (d == 0) row = 0;
    if (!std::isfinite(x)) {
      st.finite = false;
      return;
    }
    if (!st.seen) st.first = x, st.seen = true;
    st.constant = st.constant && x == st.first;
    st.integral = st.integral && x == std::floor(x);
    st.max_abs = std::max(st.max_abs, std::fabs(x));
    row += std::fabs(x);
    st.row_abs_sum = std::max(st.row_abs_sum, row);
  });
  return st;
}

std::string check_results(const vspec& v, etype t, const memory& fast, const memory& ref, bool nan_check, bool compare,
                          double atol, double rtol, bool lenient, double type_max) {
  std::string bad;
  if (!v.honest || v.null || v.empty() || (!nan_check && !compare)) return bad;
  v.for_each([&](index_t o, index_t b, index_t h, index_t s, index_t d) {
    if (!bad.empty()) return;
    const std::ptrdiff_t at = v.offset + o * static_cast<std::ptrdiff_t>(v.esize);
    const double got = load_as(t, fast.at(v.region, at));
    const std::string where = std::string(v.name) + "(" + fmt(b) + ", " + fmt(h) + ", " + fmt(s) + ", " + fmt(d) + ")";
    if (nan_check && std::isnan(got)) {
      bad = where + " is NaN from finite inputs";
      return;
    }
    if (!compare) return;
    const double want = load_as(t, ref.at(v.region, at));
    if (!close(got, want, atol, rtol, lenient, type_max))
      bad = where + " = " + fmt(got) + ", reference " + fmt(want) + " (tolerance " + fmt(atol) + " + " + fmt(rtol) +
            " |ref|)";
  });
  return bad;
}

int self_overlap(const vspec& v) {
  if (v.empty()) return 0;
  std::array<std::pair<index_t, index_t>, 4> axes{};
  for (std::size_t a = 0; a < 4; ++a)  // (an axis of one element adds no address, whatever its stride)
    axes[a] = v.ext[a] == 1 ? std::pair<index_t, index_t>{0, 1} : std::pair<index_t, index_t>{v.str[a] < 0 ? -v.str[a] : v.str[a], v.ext[a]};
  std::sort(axes.begin(), axes.end());
  index_t reach = 0;
  bool nested = true;
  for (const auto& [stride, extent] : axes) {
    if (extent == 1) continue;
    if (stride == 0) return 2;
    nested = nested && stride > reach;
    reach += stride * (extent - 1);
  }
  if (nested) return 0;
  std::vector<index_t> offs;
  v.for_each([&](index_t o, index_t, index_t, index_t, index_t) { offs.push_back(o); });
  std::sort(offs.begin(), offs.end());
  return std::adjacent_find(offs.begin(), offs.end()) != offs.end() ? 2 : 1;
}

int shared_bytes(const vspec& a, const vspec& b) {
  if (a.empty() || b.empty() || a.null || b.null || a.region != b.region || !a.honest || !b.honest) return 0;
  const std::ptrdiff_t alo = a.offset + a.min_off * static_cast<std::ptrdiff_t>(a.esize),
                       ahi = a.offset + (a.max_off + 1) * static_cast<std::ptrdiff_t>(a.esize);
  const std::ptrdiff_t blo = b.offset + b.min_off * static_cast<std::ptrdiff_t>(b.esize),
                       bhi = b.offset + (b.max_off + 1) * static_cast<std::ptrdiff_t>(b.esize);
  if (ahi <= blo || bhi <= alo) return 0;
  const std::ptrdiff_t lo = std::min(alo, blo), hi = std::max(ahi, bhi);
  std::vector<std::uint8_t> mark(static_cast<std::size_t>(hi - lo), 0);
  a.for_each([&](index_t o, index_t, index_t, index_t, index_t) {
    const std::ptrdiff_t at = a.offset + o * static_cast<std::ptrdiff_t>(a.esize) - lo;
    for (std::size_t k = 0; k < a.esize; ++k) mark[static_cast<std::size_t>(at) + k] = 1;
  });
  bool shared = false;
  b.for_each([&](index_t o, index_t, index_t, index_t, index_t) {
    const std::ptrdiff_t at = b.offset + o * static_cast<std::ptrdiff_t>(b.esize) - lo;
    for (std::size_t k = 0; k < b.esize; ++k) shared = shared || mark[static_cast<std::size_t>(at) + k];
  });
  return shared ? 2 : 1;
}

void writable_mask::add(const memory& m, const vspec& v) {
  if (!v.honest || v.null || v.empty()) return;
  auto it = masks_.find(v.region);
  if (it == masks_.end()) it = masks_.emplace(v.region, std::vector<std::uint8_t>(m.size(v.region), 0)).first;
  std::vector<std::uint8_t>& mask = it->second;
  v.for_each([&](index_t o, index_t, index_t, index_t, index_t) {
    const std::ptrdiff_t at = v.offset + o * static_cast<std::ptrdiff_t>(v.esize);
    for (std::size_t k = 0; k < v.esize; ++k) mask[static_cast<std::size_t>(at) + k] = 1;
  });
}

std::string writable_mask::first_change(const memory& before, const memory& after) const {
  for (std::size_t r = 0; r < before.regions(); ++r) {
    const unsigned char* a = before.at(static_cast<int>(r), 0);
    const unsigned char* b = after.at(static_cast<int>(r), 0);
    const std::size_t n = before.size(static_cast<int>(r));
    if (std::memcmp(a, b, n) == 0) continue;
    const auto it = masks_.find(static_cast<int>(r));
    for (std::size_t i = 0; i < n; ++i)
      if ((it == masks_.end() || !it->second[i]) && a[i] != b[i])
        return "region " + std::to_string(r) + " +" + std::to_string(i);
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Shared decoders.

float decode_scale(fuzz_case& c) {
  const auto bad = [&](float x) {
    c.fault("scale = " + fmt(double(x)) + " (expected 0 or finite, 2^-126 <= |scale| <= 2^127)");
    return x;
  };
  switch (c.r.take("scale", 16, 0)) {
    case 1: return (static_cast<float>(c.r.take("scale_rand", 256, 192)) - 128.f) / 64.f;
    case 2: return 1.f;
    case 3: return -0.5f;
    case 4: return pow2_127;
    case 5: return bad(std::nextafter(pow2_127, f_inf));
    case 6: return bad(3e38f);
    case 7: return bad(flt_max);
    case 8:
      switch (c.r.take("scale_tiny", 4, 0)) {
        case 1: return bad(1e-44f);
        case 2: return bad(-std::nextafter(pow2_m126, 0.f));
        case 3: return -pow2_m126;
        default: return pow2_m126;
      }
    case 9: return bad(f_nan);
    case 10: return bad(f_inf);
    case 11: return -0.f;
    case 12: return -pow2_127;
    case 13: return 1e30f;
    case 14: return 64.f;
    case 15: return bad(-f_inf);
    default: return 0.f;
  }
}

namespace {

index_t decode_dim(reader& r, const char* kind, const char* small) {
  static const index_t dims[8] = {0, 1, 8, 16, 32, 64, 128, 17};
  const std::uint64_t k = r.take(kind, 8, 0);
  return k == 0 ? 1 + static_cast<index_t>(r.take(small, 16, 3)) : dims[k];
}

std::array<int, 4> permutation(std::uint64_t index) {
  std::array<int, 4> p{0, 1, 2, 3};
  for (std::uint64_t i = 0; i < index % 24; ++i) std::next_permutation(p.begin(), p.end());
  return p;
}

}  // namespace

problem decode_problem(fuzz_case& c, const seq_rule& rule) {
  reader& r = c.r;
  problem pb;
  pb.B = static_cast<index_t>(r.take("batch", 4, 1));
  pb.Hkv = 1 + static_cast<index_t>(r.take("kv_heads", 3, 0));
  pb.Hq = pb.Hkv * (1 + static_cast<index_t>(r.take("group", 4, 0)));
  if (rule.nq >= 0) {
    pb.Nq = rule.nq;
    pb.Nk = rule.nk;
  } else {
    switch (r.take("seq_mode", 4, 0)) {
      case 1:
        pb.Nq = static_cast<index_t>(r.take("nq", 65, 5));
        pb.Nk = static_cast<index_t>(r.take("nk", 65, 11));
        break;
      case 2:  // decode: long keys, few queries (the split-key path)
        pb.Nq = 1 + static_cast<index_t>(r.take("nq_decode", 4, 0));
        pb.Nk = static_cast<index_t>(r.take("nk_long", 2049, 2048));
        break;
      case 3:
        pb.Nq = static_cast<index_t>(r.take("nq_tiny", 4, 1));
        pb.Nk = static_cast<index_t>(r.take("nk_tiny", 4, 2));
        break;
      default: pb.Nq = pb.Nk = static_cast<index_t>(r.take("n", 65, 8));
    }
  }
  pb.D = decode_dim(r, "dim_kind", "dim");
  pb.Dv = decode_dim(r, "dv_kind", "dv");
  const int fault = static_cast<int>(r.take("shape_fault", 20, 0));
  pb.via = static_cast<int>(r.take("impossible_via", 2, 0));
  if (fault == 14 || fault == 15 || fault == 18) {  // head dimensions at the limit: honest, so small
    pb.B = 1, pb.Hq = pb.Hkv = 1;
    if (rule.nq < 0) pb.Nq = std::min<index_t>(pb.Nq, 2), pb.Nk = std::min<index_t>(pb.Nk, 2);
    if (fault == 14) pb.D = 65537;
    if (fault == 15) pb.D = 65536;
    if (fault == 18) pb.Dv = 65537;
  }
  auto& q = pb.ext[0];
  auto& k = pb.ext[1];
  auto& v = pb.ext[2];
  auto& o = pb.ext[3];
  q = {pb.B, pb.Hq, pb.Nq, pb.D};
  k = {pb.B, pb.Hkv, pb.Nk, pb.D};
  v = {pb.B, pb.Hkv, pb.Nk, pb.Dv};
  o = {pb.B, pb.Hq, pb.Nq, pb.Dv};
  const index_t e16 = index_t(1) << 16, e22 = index_t(1) << 22;
  switch (fault) {
    case 1: q[1] = o[1] = 3, k[1] = v[1] = 2; c.fault("q.heads() = 3 is not a multiple of k.heads() = 2"); break;
    case 2: k[3] = pb.D + 1; c.fault("k.dim() != q.dim()"); break;
    case 3: o[3] = pb.Dv + 1; c.fault("out.dim() != v.dim()"); break;
    case 4: v[2] = pb.Nk + 1; c.fault("v.seq() != k.seq()"); break;
    case 5: k[0] = pb.B + 1; c.fault("k.batch() != q.batch()"); break;
    case 6: o[2] = -1; c.fault("out.seq() = -1"); break;
    case 7: q[1] = o[1] = 0; c.fault("q.heads() = 0"); break;
    case 8: q[3] = k[3] = 0; c.fault("q.dim() = 0"); break;
    case 9:
      for (auto& e : pb.ext) e = {e16, e16, e16, e16};
      pb.impossible = {true, true, true, true};
      c.fault("every extent 2^16: element counts overflow");
      break;
    case 10:
      q[2] = o[2] = pow2_62;
      pb.impossible[0] = pb.impossible[3] = true;
      c.fault("q.seq() = 2^62");
      break;
    case 11:
      q = {3, 1, q[2], 1}, o = {3, 1, o[2], 1}, k = {3, 1, third_of_2_64, 1}, v = {3, 1, third_of_2_64, 1};
      pb.impossible[1] = pb.impossible[2] = true;
      c.fault("k.seq() = (2^64 + 2) / 3 with batch 3: the element count wraps to 2");
      break;
    case 12:
      q[2] = o[2] = k[2] = v[2] = pow2_32;
      pb.impossible = {true, true, true, true};
      c.fault("q.seq() = k.seq() = 2^32");
      break;
    case 13:
      q[3] = k[3] = index_t(1) << 40;
      pb.impossible[0] = pb.impossible[1] = true;
      c.fault("q.dim() = 2^40");
      break;
    case 14: c.fault("q.dim() = 65537 > 65536"); break;
    case 16:
      for (auto& e : pb.ext) e = {1, e22, e22, e22};
      pb.impossible = {true, true, true, true};
      pb.via = 1;
      c.fault("extents 2^22: view_bhsd's strides overflow");
      break;
    case 17:
      k[2] = v[2] = index_t(1) << 31;
      pb.impossible[1] = pb.impossible[2] = true;
      c.fault("k.seq() = 2^31");
      break;
    case 18: c.fault("v.dim() = 65537 > 65536"); break;
    case 19: k[1] = v[1] = 0; c.fault("k.heads() = 0"); break;
    default: break;
  }
  c.note("problem: B=" + fmt(pb.B) + " Hq=" + fmt(pb.Hq) + " Hkv=" + fmt(pb.Hkv) + " Nq=" + fmt(pb.Nq) +
         " Nk=" + fmt(pb.Nk) + " D=" + fmt(pb.D) + " Dv=" + fmt(pb.Dv) + (fault ? ", shape fault " + std::to_string(fault) : ""));
  return pb;
}

void decode_layout(fuzz_case& c, vspec& v, int t, bool writable) {
  static const char* const names[6][6] = {
      {"layout_q", "perm_q", "pad_q", "flip_q", "axis_q", "stride_q"},
      {"layout_k", "perm_k", "pad_k", "flip_k", "axis_k", "stride_k"},
      {"layout_v", "perm_v", "pad_v", "flip_v", "axis_v", "stride_v"},
      {"layout_out", "perm_out", "pad_out", "flip_out", "axis_out", "stride_out"},
      {"layout_out_a", "perm_out_a", "pad_out_a", "flip_out_a", "axis_out_a", "stride_out_a"},
      {"layout_out_b", "perm_out_b", "pad_out_b", "flip_out_b", "axis_out_b", "stride_out_b"}};
  const char* const* n = names[t];
  reader& r = c.r;
  const auto& e = v.ext;
  auto bhsd = [&] { v.str = {e[1] * e[2] * e[3], e[2] * e[3], e[3], 1}; };
  const int kind = static_cast<int>(r.take(n[0], 8, 0));
  switch (kind) {
    case 1:
      v.how = 2;
      v.str = {e[2] * e[1] * e[3], e[3], e[1] * e[3], 1};
      v.layout = "bshd";
      break;
    case 2:
    case 3: {
      const std::array<int, 4> order = permutation(r.take(n[1], 24, 0));  // outermost first
      std::array<index_t, 4> pad{};
      for (auto& p : pad) p = static_cast<index_t>(r.take(n[2], 4, 0));
      index_t running = 1;
      for (int i = 3; i >= 0; --i) {
        const auto a = static_cast<std::size_t>(order[static_cast<std::size_t>(i)]);
        v.str[a] = running;
        running *= e[a] + pad[a];
      }
      std::ostringstream s;
      s << "permuted (" << order[0] << order[1] << order[2] << order[3] << ") padded (" << pad[0] << pad[1] << pad[2]
        << pad[3] << ")";
      if (kind == 3) {
        const std::uint64_t flip = r.take(n[3], 16, 5);
        for (std::size_t a = 0; a < 4; ++a)
          if (flip >> a & 1) v.str[a] = -v.str[a];
        s << " flipped (mask " << flip << ")";
      }
      v.layout = s.str();
      break;
    }
    case 4: {
      const auto axis = static_cast<std::size_t>(r.take(n[4], 4, 2));
      index_t running = 1;
      for (int a = 3; a >= 0; --a) {
        if (static_cast<std::size_t>(a) == axis) continue;
        v.str[static_cast<std::size_t>(a)] = running;
        running *= e[static_cast<std::size_t>(a)];
      }
      v.str[axis] = 0;
      v.layout = "broadcast along axis " + std::to_string(axis);
      break;
    }
    case 5:
      for (auto& s : v.str) s = static_cast<index_t>(r.take(n[5], 13, 7)) - 6;
      v.layout = "raw strides";
      break;
    case 6:
      bhsd();
      v.null = true;
      v.layout = "bhsd";
      if (!v.empty()) c.fault(std::string(v.name) + " has null data with a non-zero size");
      break;
    case 7: {
      bhsd();
      const auto axis = static_cast<std::size_t>(r.take(n[4], 4, 2));
      static const index_t huge[5] = {index_t(1) << 55, -(index_t(1) << 55), i64_max, i64_min, index_t(1) << 61};
      v.str[axis] = pick(r, n[5], huge, 0);
      v.layout = "huge stride along axis " + std::to_string(axis);
      if (!v.empty() && e[axis] > 1) {
        v.honest = false;
        c.fault(std::string(v.name) + " spans more than 2^56 bytes (stride " + fmt(v.str[axis]) + ")");
      }
      break;
    }
    default:
      v.how = 1;
      bhsd();
      v.layout = "bhsd";
  }
  if (!v.honest || v.empty()) return;
  v.compute_span();
  if (writable && !v.null) {
    const int so = self_overlap(v);
    if (so == 2) c.fault(std::string(v.name) + " has elements that share memory");
    if (so == 1) c.maybe(std::string(v.name) + "'s axes interleave (no element shared)");
  }
}

// ---------------------------------------------------------------------------------------------
// merge_states: no reference in the library; the expected result is computed here in double.

namespace {

template <class T>
void run_merge(fuzz_case& c, index_t B, index_t H, index_t N, index_t Dv) {
  reader& r = c.r;
  c.note(std::string("type: ") + type_name<T>());
  vspec a, b;
  a.name = "out_a", b.name = "out_b";
  a.esize = b.esize = sizeof(T);
  a.ext = b.ext = {B, H, N, Dv};
  bool impossible = false;
  const int fault = static_cast<int>(r.take("m_fault", 8, 0));
  switch (fault) {
    case 1: b.ext[2] = N + 1; c.fault("out_b.seq() != out_a.seq()"); break;
    case 2:  // (with batch 0 the views are empty, and valid)
      a.ext[2] = b.ext[2] = pow2_62, impossible = true;
      if (B != 0) c.fault("seq 2^62");
      break;
    case 3: a.ext = b.ext = {3, 1, third_of_2_64, 1}, impossible = true; c.fault("(2^64 + 2) / 3 * 3 elements"); break;
    case 6: a.ext = b.ext = {index_t(1) << 16, index_t(1) << 16, index_t(1) << 16, index_t(1) << 16}, impossible = true;
      c.fault("every extent 2^16");
      break;
    case 7: a.ext[3] = b.ext[3] = -1; c.fault("dim -1"); break;
    default: break;
  }
  const int via = static_cast<int>(r.take("impossible_via", 2, 0));
  if (impossible && via == 1 && c.faults.empty()) {  // batch 0: only view_bhsd's own stride products can fail
    index_t sd = 0, hsd = 0;
    if (__builtin_mul_overflow(a.ext[2], a.ext[3], &sd) || __builtin_mul_overflow(a.ext[1], sd, &hsd))
      c.fault("view_bhsd's strides overflow");
  }
  for (vspec* v : {&a, &b}) {
    bool dishonest = impossible;
    for (index_t e : v->ext) dishonest = dishonest || e < 0;
    if (dishonest) {
      v->honest = false;
      v->str = wrapped_bhsd_strides(v->ext);
      v->how = via;
      v->layout = "contiguous";
    } else {
      decode_layout(c, *v, v == &a ? 4 : 5, v == &a);
    }
  }
  const std::uint64_t rows_u = static_cast<std::uint64_t>(a.ext[0]) * static_cast<std::uint64_t>(a.ext[1]) *
                               static_cast<std::uint64_t>(a.ext[2]);
  const index_t rows = static_cast<index_t>(rows_u);
  const bool honest = a.honest && b.honest && rows >= 0 && rows <= (index_t(1) << 20);
  const bool null_a = fault == 4, null_b = fault == 5;
  if ((null_a || null_b) && rows > 0) c.fault(std::string(null_a ? "lse_a" : "lse_b") + " is null");
  static const char* const lse_names[8] = {"U(-5,5)", "all -inf", "U(-5,5) and -inf", "U(-5,5), lse[0] = +inf",
                                           "U(-5,5), lse[0] = NaN", "3e38 / -3e38 / -inf / 0", "all 0",
                                           "80 / -80 / 1e-44 / 88.7 / -inf / 0 / -88.7 / 1e30"};
  static const char* const val_names[5] = {"U(-1,1)", "U(-10,10)", "3e38", "+-3e38", "U(-1,1) with NaN"};
  const int lse_a_mode = static_cast<int>(r.take("m_lse_a", 8, 0)), lse_b_mode = static_cast<int>(r.take("m_lse_b", 8, 0));
  const int val_a = static_cast<int>(r.take("m_vals_a", 5, 0)), val_b = static_cast<int>(r.take("m_vals_b", 5, 0));
  std::uint64_t seed = r.take("seed", 0, 1);
  for (int m : {lse_a_mode, lse_b_mode})
    if ((m == 3 || m == 4) && rows > 0 && !(null_a || null_b)) c.fault(std::string("an lse entry is ") + (m == 3 ? "+inf" : "NaN"));
  c.note(std::string("lse_a ") + lse_names[lse_a_mode] + ", lse_b " + lse_names[lse_b_mode] + "; out_a " + val_names[val_a] +
         ", out_b " + val_names[val_b] + "; seed " + std::to_string(seed));
  memory mem;
  for (vspec* v : {&a, &b}) {
    if (v->null) continue;
    if (!v->honest || v->empty()) {
      v->region = mem.add(64);
      continue;
    }
    v->region = mem.add(v->span_bytes());
    v->offset = -v->min_off * static_cast<std::ptrdiff_t>(v->esize);
  }
  vspec la, lb;
  for (vspec* l : {&la, &lb}) {
    l->name = l == &la ? "lse_a" : "lse_b";
    l->ext = {1, 1, 1, honest ? rows : 0};
    l->str = {0, 0, 0, 1};
    l->min_off = 0, l->max_off = honest ? rows - 1 : -1;
    l->honest = honest;
    l->layout = "contiguous";
    l->null = l == &la ? null_a : null_b;
    if (!l->null) l->region = mem.add(honest && rows > 0 ? static_cast<std::size_t>(rows) * 4 : 64);
  }
  for (const vspec* v : {&a, &b, &la, &lb}) c.note(v->describe());
  if (mem.total() > max_buffer_bytes) throw skip_input{};
  c.regime = "comparison with merge in double";
  if (c.dry_run) return;

  mem.allocate(0xA5);
  auto next = [&seed]() {
    std::uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  auto uniform = [&](double lo, double hi) { return lo + (hi - lo) * double(next() >> 11) * 0x1p-53; };
  const double neg_inf = -HUGE_VAL;
  for (const vspec* l : {&la, &lb}) {
    if (l->null || !honest) continue;
    const int mode = l == &la ? lse_a_mode : lse_b_mode;
    for (index_t i = 0; i < rows; ++i) {
      static const double big[4] = {3e38, -3e38, -HUGE_VAL, 0};
      static const double mixed[8] = {80, -80, 1e-44, 88.7, -HUGE_VAL, 0, -88.7, 1e30};
      double x = 0;
      switch (mode) {
        case 1: x = neg_inf; break;
        case 2: x = next() % 3 == 0 ? neg_inf : uniform(-5, 5); break;
        case 5: x = big[next() % 4]; break;
        case 6: x = 0; break;
        case 7: x = mixed[next() % 8]; break;
        default: x = uniform(-5, 5);
      }
      if (i == 0 && mode == 3) x = HUGE_VAL;
      if (i == 0 && mode == 4) x = std::nan("");
      store<float>(mem.at(l->region, i * 4), x);
    }
  }
  for (const vspec* v : {&a, &b}) {
    if (!v->honest || v->null || v->empty()) continue;
    const int mode = v == &a ? val_a : val_b;
    v->for_each([&](index_t o, index_t, index_t, index_t, index_t) {
      double x = 0;
      switch (mode) {
        case 1: x = uniform(-10, 10); break;
        case 2: x = 3e38; break;
        case 3: x = next() % 2 ? 3e38 : -3e38; break;
        case 4: x = next() % 16 == 0 ? std::nan("") : uniform(-1, 1); break;
        default: x = uniform(-1, 1);
      }
      store<T>(mem.at(v->region, v->offset + o * static_cast<std::ptrdiff_t>(sizeof(T))), x);
    });
  }
  const memory initial = mem.clone();
  memory fast = initial.clone();
  const outcome fa = capture([&] {
    float* lse_a = la.null ? nullptr : reinterpret_cast<float*>(fast.at(la.region, 0));
    const float* lse_b = lb.null ? nullptr : reinterpret_cast<const float*>(fast.at(lb.region, 0));
    // (out_b as a const view: clang-14 does not convert a writable one, since Space is deduced
    // from out_b too.)
    attnkit::merge_states(make_view<T>(a, fast), lse_a, attnkit::tensor_view<const T>(make_view<T>(b, fast)), lse_b);
  });
  if (verbose())
    std::printf("  %s: %s%s\n", c.policy.c_str(), kind_name(fa.kind), fa.kind == outcome::error ? (" (" + fa.what + ")").c_str() : "");
  if (fa.kind == outcome::other) report(c, "merge_states threw " + fa.what);
  const bool valid = c.faults.empty() && c.unsure.empty();
  if (fa.kind == outcome::error) {
    const std::string where = first_difference(initial, fast);
    if (!where.empty()) report(c, "attnkit::error (" + fa.what + ") thrown after writing memory (" + where + ")");
    if (valid) report(c, "rejected a valid input: " + fa.what);
    return;
  }
  if (!c.faults.empty()) report(c, "merge_states accepted an invalid input");
  writable_mask wm;
  wm.add(initial, a);
  if (!la.null) wm.add(initial, la);
  const std::string where = wm.first_change(initial, fast);
  if (!where.empty()) report(c, "merge_states wrote outside out_a and lse_a (" + where + ")");
  if (!valid || !honest || a.empty()) return;

  std::string bad;
  a.for_each([&](index_t o, index_t bi, index_t h, index_t s, index_t d) {
    if (!bad.empty()) return;
    const index_t row = (bi * a.ext[1] + h) * a.ext[2] + s;
    const double l1 = load<float>(initial.at(la.region, row * 4)), l2 = load<float>(initial.at(lb.region, row * 4));
    const std::ptrdiff_t at_a = a.offset + o * static_cast<std::ptrdiff_t>(sizeof(T));
    const std::ptrdiff_t at_b = b.offset + (bi * b.str[0] + h * b.str[1] + s * b.str[2] + d * b.str[3]) *
                                               static_cast<std::ptrdiff_t>(sizeof(T));
    const double x1 = load<T>(initial.at(a.region, at_a)), x2 = load<T>(initial.at(b.region, at_b));
    const double got = load<T>(fast.at(a.region, at_a));
    const double m = std::max(l1, l2);
    double want = 0, w1 = 0, w2 = 0;
    if (m != neg_inf) {
      w1 = std::exp(l1 - m), w2 = std::exp(l2 - m);
      want = (w1 * x1 + w2 * x2) / (w1 + w2);
    }
    const std::string pos = "out_a(" + fmt(bi) + ", " + fmt(h) + ", " + fmt(s) + ", " + fmt(d) + ")";
    if (!std::isfinite(x1) || !std::isfinite(x2)) return;  // NaN / inf inputs propagate
    if (std::isnan(got)) {
      bad = pos + " is NaN from finite inputs";
      return;
    }
    if (!close(got, want, 4e-6 * std::max(std::fabs(x1), std::fabs(x2)) + 1e-37, out_rel<T>(), false, type_max<T>()))
      bad = pos + " = " + fmt(got) + ", expected " + fmt(want) + " (lse " + fmt(l1) + ", " + fmt(l2) + "; values " +
            fmt(x1) + ", " + fmt(x2) + ")";
  });
  if (!bad.empty()) report(c, bad);
  if (la.null) return;
  for (index_t i = 0; i < rows; ++i) {
    const double l1 = load<float>(initial.at(la.region, i * 4)), l2 = load<float>(initial.at(lb.region, i * 4));
    const double got = load<float>(fast.at(la.region, i * 4));
    const double m = std::max(l1, l2);
    const double want = m == neg_inf ? neg_inf : m + std::log(std::exp(l1 - m) + std::exp(l2 - m));
    if (!close(got, want, 2e-6, 2e-6, false, double(flt_max)))
      report(c, "lse_a[" + fmt(i) + "] = " + fmt(got) + ", expected " + fmt(want) + " (from " + fmt(l1) + ", " + fmt(l2) + ")");
  }
}

}  // namespace

void decode_merge_states(fuzz_case& c) {
  reader& r = c.r;
  const index_t B = static_cast<index_t>(r.take("batch", 4, 1)), H = 1 + static_cast<index_t>(r.take("kv_heads", 3, 0));
  const index_t N = static_cast<index_t>(r.take("n", 65, 8)), Dv = 1 + static_cast<index_t>(r.take("dv", 16, 3));
  c.policy = "merge_states, out [" + fmt(B) + ", " + fmt(H) + ", " + fmt(N) + ", " + fmt(Dv) + "]";
  switch (r.take("types", 3, 0)) {
    case 1: return run_merge<bf16>(c, B, H, N, Dv);
    case 2: return run_merge<f16>(c, B, H, N, Dv);
    default: return run_merge<float>(c, B, H, N, Dv);
  }
}

// ---------------------------------------------------------------------------------------------
// One input.

bool run_case(fuzz_case& c) {
  std::uint64_t slot = c.r.take("policy", policy_slots, 0);
  if (slot == policy_slots - 1) slot += c.r.take("policy_more", more_slots, 0);
  if (slot >= std::size(policy_table)) return false;
  try {
    policy_table[slot].decode(c);
  } catch (const skip_input&) {
    return false;
  }
  return true;
}

void check_input(const std::uint8_t* data, std::size_t size) {
  reader r(data, size);
  fuzz_case c(r);
  attnkit_fuzz::run_case(c);
}

}  // namespace attnkit_fuzz

#ifdef ATTNKIT_LIBFUZZER

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  attnkit_fuzz::check_input(data, size);
  return 0;
}

#else  // the replay program

namespace {

namespace fs = std::filesystem;
using attnkit_fuzz::overrides;

/// The seed corpus: one input per policy and feature, written by naming the decisions that
/// differ from the defaults (reader::take). The default input is a valid softmax call:
/// B 1, Hq = Hkv = 1, N 8, D = Dv = 4, float, bhsd, one thread, no lse.
struct seed {
  const char* name;
  overrides decisions;
};

std::vector<seed> seeds() {
  return {
      // softmax
      {"softmax-default", {}},
      {"softmax-causal-gqa", {{"causal", {1}}, {"kv_heads", {1}}, {"group", {2}}, {"n", {33}}}},
      {"softmax-causal-nq-lt-nk", {{"seq_mode", {1}}, {"nq", {5}}, {"nk", {40}}, {"causal", {1}}, {"lse", {1}}}},
      {"softmax-empty-rows-nq-gt-nk", {{"seq_mode", {1}}, {"nq", {20}}, {"nk", {5}}, {"causal", {1}}, {"lse", {1}}}},
      {"softmax-sliding-window",
       {{"n", {40}}, {"window_left", {1}}, {"window_left_n", {3}}, {"window_right", {1}}, {"window_right_n", {0}}}},
      {"softmax-softcap-alibi", {{"softcap", {2}}, {"alibi", {1}}, {"kv_heads", {1}}, {"group", {1}}, {"n", {24}}}},
      {"softmax-varlen",
       {{"batch", {3}}, {"n", {32}}, {"causal", {1}}, {"key_lens", {1}}, {"key_len", {9, 30, 200}},
        {"query_lens", {1}}, {"query_len", {40, 7, 3}}, {"lse", {2}}}},
      {"softmax-decode-split-keys",
       {{"seq_mode", {2}}, {"nk_long", {2048}}, {"group", {3}}, {"lse", {1}}, {"threads", {2}}}},
      {"softmax-layouts-bshd-flipped-padded",
       {{"layout_q", {1}}, {"layout_k", {3}}, {"perm_k", {7}}, {"pad_k", {1, 0, 2, 0}}, {"flip_k", {5}},
        {"layout_v", {2}}, {"perm_v", {13}}, {"pad_v", {0, 3, 0, 1}}, {"layout_out", {3}}, {"perm_out", {20}},
        {"flip_out", {15}}, {"batch", {2}}, {"kv_heads", {1}}}},
      {"softmax-broadcast-k-and-v-in-k", {{"layout_k", {4}}, {"axis_k", {2}}, {"alias", {1}}}},
      {"softmax-overlapping-input-strides", {{"layout_q", {5}}, {"stride_q", {6, 6, 7, 7}}, {"layout_v", {5}}, {"stride_v", {6, 9, 5, 7}}}},
      {"softmax-qkv-one-buffer", {{"alias", {9}}, {"alias_shift", {3}}}},
      {"softmax-error-out-aliases-q", {{"alias", {3}}, {"alias_shift", {0}}}},
      {"softmax-error-lse-in-out", {{"lse", {1}}, {"alias", {6}}, {"alias_shift", {2}}}},
      {"softmax-error-out-zero-stride", {{"layout_out", {4}}, {"axis_out", {2}}}},
      {"softmax-error-null-q", {{"layout_q", {6}}}},
      {"softmax-null-empty-batch0", {{"batch", {0}}, {"layout_q", {6}}, {"layout_out", {6}}, {"lse", {1}}}},
      {"softmax-bf16-causal-lse", {{"types", {1}}, {"n", {40}}, {"causal", {1}}, {"lse", {1}}, {"bf16dot", {2}}}},
      {"softmax-f16-softcap", {{"types", {2}}, {"softcap", {3}}, {"n", {17}}, {"dim_kind", {5}}}},
      {"softmax-mixed-types-alibi", {{"types", {3}}, {"alibi", {2}}, {"kv_heads", {2}}, {"slope", {100, 140, 200}}}},
      {"softmax-window-int64-max", {{"window_left", {2}}, {"window_right", {2}}, {"seq_mode", {1}}, {"nq", {7}}, {"nk", {20}}, {"lse", {1}}}},
      {"softmax-window-third-of-2-64", {{"window_left", {5}}, {"window_right", {3}}, {"causal", {1}}, {"seq_mode", {1}}, {"nq", {30}}, {"nk", {9}}}},
      {"softmax-error-softcap-3e38", {{"softcap", {8}}}},
      {"softmax-error-softcap-1e-44", {{"softcap", {6}}}},
      {"softmax-softcap-2-pow-minus-126", {{"softcap", {5}}, {"lse", {1}}}},
      {"softmax-error-scale-3e38", {{"scale", {6}}}},
      {"softmax-error-scale-1e-44", {{"scale", {8}}, {"scale_tiny", {1}}}},
      {"softmax-scale-2-pow-minus-126-q-k-minus-3e38",
       {{"scale", {8}}, {"scale_tiny", {0}}, {"vals_q", {3}}, {"x_q", {8}}, {"vals_k", {3}}, {"x_k", {8}}, {"lse", {1}}}},
      {"softmax-scale-2-pow-127-integer-inputs", {{"scale", {4}}, {"vals_q", {2}}, {"vals_k", {2}}, {"lse", {1}}}},
      {"softmax-error-slope-3e38", {{"alibi", {3}}, {"slope_x", {4}}}},
      {"softmax-slope-minus-1e38", {{"alibi", {3}}, {"slope_x", {1}}, {"n", {16}}, {"lse", {1}}}},
      {"softmax-q-k-1e20", {{"vals_q", {3}}, {"x_q", {5}}, {"vals_k", {3}}, {"x_k", {5}}, {"lse", {1}}}},
      {"softmax-d1-q-3e38-k-0", {{"dim_kind", {1}}, {"vals_q", {3}}, {"x_q", {7}}, {"vals_k", {3}}, {"x_k", {1}}, {"lse", {1}}}},
      {"softmax-decode-v-plus-minus-3e38",
       {{"seq_mode", {2}}, {"nk_long", {2048}}, {"vals_q", {3}}, {"x_q", {0}}, {"vals_k", {3}}, {"x_k", {1}},
        {"vals_v", {6}}, {"x_v", {7}}, {"lse", {1}}, {"threads", {2}}}},
      {"softmax-v-1e38", {{"vals_v", {3}}, {"x_v", {9}}, {"lse", {1}}}},
      {"softmax-nan-input", {{"vals_q", {5}}, {"threads", {0}}, {"n", {30}}}},
      {"softmax-threads-3-lse-size", {{"threads", {3}}, {"lse", {2}}, {"n", {64}}, {"kv_heads", {2}}}},
      {"softmax-error-every-extent-2-pow-16", {{"shape_fault", {9}}}},
      {"softmax-error-seq-2-pow-62", {{"shape_fault", {10}}}},
      {"softmax-error-count-wraps-third-of-2-64", {{"shape_fault", {11}}}},
      {"softmax-error-dim-65537", {{"shape_fault", {14}}}},
      {"softmax-dim-65536", {{"shape_fault", {15}}, {"lse", {1}}}},
      {"softmax-error-view-bhsd-stride-overflow", {{"shape_fault", {16}}}},
      {"softmax-error-huge-stride", {{"layout_k", {7}}, {"axis_k", {2}}, {"stride_k", {2}}}},
      // neighborhood
      {"neighborhood1-dilation-stride-causal",
       {{"policy", {1}}, {"nb_shape", {31}}, {"nb_kernel", {6}}, {"nb_dilation", {1}}, {"nb_stride", {2}}, {"nb_causal", {1}}}},
      {"neighborhood2-3x5-f16",
       {{"policy", {2}}, {"nb_shape", {7, 7}}, {"nb_kernel", {2, 4}}, {"nb_dilation", {1, 0}}, {"nb_stride", {1, 2}}, {"types", {1}}}},
      {"neighborhood3-causal-time",
       {{"policy", {3}}, {"nb_shape", {3, 3, 3}}, {"nb_kernel", {1, 2, 1}}, {"nb_causal", {1, 0, 0}}, {"lse", {1}}}},
      {"neighborhood2-error-kernel-2-pow-62-dilation-4", {{"policy", {2}}, {"nb_fault", {1}}}},
      {"neighborhood2-error-shape-product-overflows", {{"policy", {2}}, {"nb_fault", {5}}}},
      {"neighborhood3-error-shape-product-wraps-to-2", {{"policy", {3}}, {"nb_fault", {6}}}},
      // power
      {"power-block-4", {{"policy", {4}}, {"n", {48}}, {"lse", {1}}}},
      {"power-sink-blocks-2-pow-62", {{"policy", {4}}, {"sink_blocks", {4}}, {"n", {32}}}},
      {"power-max-power-62-noncausal", {{"policy", {4}}, {"max_power", {7}}, {"block_size", {1}}, {"n", {64}}, {"power_causal", {0}}}},
      {"power-f16-nq-lt-nk", {{"policy", {4}}, {"seq_mode", {1}}, {"nq", {9}}, {"nk", {30}}, {"block_size", {3}}, {"types", {1}}}},
      // radial
      {"radial-token", {{"policy", {5}}, {"frames", {3}}, {"tokens_per_frame", {7}}, {"global_tokens", {2}}}},
      {"radial-official-blocks",
       {{"policy", {5}}, {"radial_mode", {1}}, {"frames", {3}}, {"tokens_per_frame", {15}}, {"radial_block_size", {4}}, {"types", {1}}}},
      {"radial-error-frames-overflow", {{"policy", {5}}, {"radial_fault", {1}}}},
      {"radial-error-official-block-size-above-n", {{"policy", {5}}, {"radial_mode", {1}}, {"radial_block_size", {7}}}},
      // custom
      {"custom-keep-causal", {{"policy", {6}}, {"keep", {1}}, {"n", {40}}}},
      {"custom-band-affine-score-exact-block", {{"policy", {6}}, {"keep", {4}}, {"score", {2}}, {"block", {1}}, {"n", {64}}, {"cb_param", {8}}}},
      {"custom-nested-keep-threads-2",
       {{"policy", {6}}, {"keep", {7}}, {"threads", {2}}, {"inner_threads", {2}}, {"n", {24}}, {"kv_heads", {1}}}},
      {"custom-nested-score-and-block", {{"policy", {6}}, {"keep", {1}}, {"score", {6}}, {"block", {3}}, {"n", {20}}, {"threads", {0}}}},
      {"custom-throwing-keep", {{"policy", {6}}, {"keep", {8}}, {"threads", {2}}, {"n", {20}}}},
      {"custom-throwing-score", {{"policy", {6}}, {"score", {7}}, {"block", {2}}, {"n", {20}}}},
      {"custom-all-minus-inf-scores", {{"policy", {6}}, {"score", {8}}, {"lse", {1}}}},
      {"custom-documents-distance-bias-f16",
       {{"policy", {6}}, {"keep", {9}}, {"score", {5}}, {"block", {1}}, {"batch", {2}}, {"kv_heads", {1}}, {"group", {1}}, {"n", {30}}, {"types", {1}}}},
      // dense_mask (after the attention call of the same input)
      {"softmax-dense-mask-error-third-of-2-64-by-3", {{"causal", {1}}, {"dense_mask", {2}}}},
      {"power-dense-mask-error-2-pow-32-squared", {{"policy", {4}}, {"dense_mask", {3}}}},
      {"custom-dense-mask-error-2-pow-32-squared", {{"policy", {6}}, {"keep", {1}}, {"dense_mask", {3}}}},
      {"radial-official-dense-mask", {{"policy", {5}}, {"radial_mode", {1}}, {"dense_mask", {1}}}},
      {"neighborhood2-dense-mask", {{"policy", {2}}, {"dense_mask", {1}}}},
      // hip
      {"hip-causal-block-4", {{"policy", {8}}, {"n", {48}}, {"lse", {1}}}},
      {"hip-sink-window-strides-gqa",
       {{"policy", {8}}, {"n", {64}}, {"sink", {2}}, {"window", {2}}, {"hip_stride_q", {1}}, {"block_k", {2}}, {"hip_stride_k", {1}},
        {"kv_heads", {1}}, {"group", {2}}, {"lse", {1}}}},
      {"hip-noncausal-integer-inputs", {{"policy", {8}}, {"n", {60}}, {"hip_causal", {0}}, {"vals_q", {2}}, {"vals_k", {2}}}},
      {"hip-decode-bf16", {{"policy", {8}}, {"seq_mode", {2}}, {"nk_long", {2048}}, {"types", {1}}, {"lse", {1}}}},
      {"hip-nq-gt-nk-window-2-pow-62", {{"policy", {8}}, {"seq_mode", {1}}, {"nq", {20}}, {"nk", {5}}, {"window", {5}}, {"lse", {1}}}},
      {"hip-error-stride-q-above-block", {{"policy", {8}}, {"hip_stride_q", {3}}}},
      {"hip-error-block-k-2-pow-32", {{"policy", {8}}, {"block_k", {6}}}},
      // routing
      {"routing-balanced", {{"policy", {9}}, {"n", {40}}, {"lse", {1}}}},
      {"routing-argmax-causal-l2-gqa",
       {{"policy", {9}}, {"n", {50}}, {"assignment", {1}}, {"routing_norm", {1}}, {"routing_causal", {1}}, {"kv_heads", {1}},
        {"group", {2}}, {"lse", {1}}}},
      {"routing-windows-nq-lt-nk-f16", {{"policy", {9}}, {"seq_mode", {1}}, {"nq", {9}}, {"nk", {40}}, {"window_q", {2}}, {"window_k", {3}}, {"types", {2}}}},
      {"routing-error-null-centroids", {{"policy", {9}}, {"centroids", {1}}}},
      {"routing-error-nan-centroid", {{"policy", {9}}, {"centroids", {2}}}},
      {"routing-error-clusters-2-pow-32", {{"policy", {9}}, {"num_clusters", {7}}}},
      // linear
      {"linear-elu-causal", {{"policy", {10}}, {"n", {40}}, {"linear_causal", {1}}, {"lse", {1}}}},
      {"linear-favor-gqa-bf16", {{"policy", {10}}, {"feature_map", {2}}, {"kv_heads", {1}}, {"group", {2}}, {"types", {1}}, {"lse", {1}}}},
      {"linear-relu-chunk-3-nq-gt-nk",
       {{"policy", {10}}, {"feature_map", {1}}, {"feature_eps", {1}}, {"chunk", {2}}, {"linear_causal", {1}}, {"seq_mode", {1}}, {"nq", {20}}, {"nk", {5}}}},
      {"linear-favor-hyperbolic-decode", {{"policy", {10}}, {"feature_map", {2}}, {"favor_features", {4}}, {"favor_hyperbolic", {1}}, {"seq_mode", {2}}, {"nk_long", {2048}}}},
      {"linear-error-favor-features-0", {{"policy", {10}}, {"feature_map", {2}}, {"favor_features", {5}}}},
      {"linear-error-eps-nan", {{"policy", {10}}, {"eps", {4}}}},
      // kernelized_rpe
      {"kernelized-favor-bias", {{"policy", {11}}, {"feature_map", {2}}, {"n", {33}}, {"lse", {1}}}},
      {"kernelized-elu-causal-nq-gt-nk", {{"policy", {11}}, {"rpe_causal", {1}}, {"seq_mode", {1}}, {"nq", {20}}, {"nk", {5}}, {"lse", {1}}}},
      {"kernelized-bias-fn-gqa", {{"policy", {11}}, {"bias", {7}}, {"kv_heads", {1}}, {"group", {2}}}},
      {"kernelized-minus-inf-biases-bf16", {{"policy", {11}}, {"bias", {3}}, {"types", {1}}, {"normalize_qk", {0}}}},
      {"kernelized-error-nan-bias", {{"policy", {11}}, {"bias", {5}}}},
      {"kernelized-error-bias-fn-nan", {{"policy", {11}}, {"bias", {8}}}},
      // probabilistic
      {"probabilistic-zonkey-ratio", {{"policy", {12}}, {"n", {24}}, {"lse", {1}}}},
      {"probabilistic-key-logprob-causal-gqa",
       {{"policy", {12}}, {"prob_mode", {1}}, {"causal", {1}}, {"kv_heads", {1}}, {"group", {1}}, {"n", {33}}, {"lse", {1}}}},
      {"probabilistic-log-space-tiny", {{"policy", {12}}, {"log_space", {1}}, {"key_prob", {3}}, {"n", {20}}, {"lse", {1}}}},
      {"probabilistic-zeros-and-ones-varlen",
       {{"policy", {12}}, {"key_prob", {2}}, {"batch", {2}}, {"n", {16}}, {"key_lens", {1}}, {"key_len", {5, 12}}, {"lse", {1}}}},
      {"probabilistic-cross-query-prob-nq-lt-nk",
       {{"policy", {12}}, {"seq_mode", {1}}, {"nq", {5}}, {"nk", {20}}, {"query_prob", {0}}, {"lse", {1}}}},
      {"probabilistic-tiny-query-prob-log-space",
       {{"policy", {12}}, {"log_space", {1}}, {"query_prob", {3}}, {"n", {30}}, {"lse", {1}}}},
      {"probabilistic-existence-from-continue-bf16", {{"policy", {12}}, {"key_prob", {4}}, {"n", {40}}, {"types", {1}}, {"lse", {1}}}},
      {"probabilistic-existence-from-continue-end-no-clamp",
       {{"policy", {12}}, {"key_prob", {4}}, {"cont_clamp", {0}}, {"cont_end", {2}}, {"n", {20}}, {"lse", {1}}}},
      {"probabilistic-window-softcap-alibi",
       {{"policy", {12}}, {"n", {40}}, {"window_left", {1}}, {"window_left_n", {3}}, {"softcap", {2}}, {"alibi", {1}},
        {"kv_heads", {1}}, {"group", {1}}}},
      {"probabilistic-all-zero-keys", {{"policy", {12}}, {"key_prob", {5}}, {"lse", {1}}}},
      {"probabilistic-decode-split-keys",
       {{"policy", {12}}, {"seq_mode", {2}}, {"nk_long", {2048}}, {"query_prob", {0}}, {"threads", {2}}, {"lse", {1}}}},
      {"probabilistic-error-key-prob-nan", {{"policy", {12}}, {"key_prob", {6}}, {"prob_bad", {0}}}},
      {"probabilistic-error-key-prob-above-1", {{"policy", {12}}, {"key_prob", {6}}, {"prob_bad", {1}}, {"prob_bad_at", {5}}}},
      {"probabilistic-error-log-space-positive", {{"policy", {12}}, {"log_space", {1}}, {"key_prob", {6}}, {"prob_bad", {5}}}},
      {"probabilistic-log-space-minus-inf-key", {{"policy", {12}}, {"log_space", {1}}, {"key_prob", {6}}, {"prob_bad", {4}}, {"lse", {1}}}},
      {"probabilistic-error-query-prob-minus-0-5", {{"policy", {12}}, {"query_prob", {6}}, {"prob_bad", {6}}}},
      {"probabilistic-error-null-key-prob", {{"policy", {12}}, {"key_prob", {7}}}},
      {"probabilistic-null-key-prob-batch-0", {{"policy", {12}}, {"key_prob", {7}}, {"batch", {0}}}},
      {"probabilistic-error-null-query-prob-nq-ne-nk", {{"policy", {12}}, {"seq_mode", {1}}, {"nq", {5}}, {"nk", {9}}}},
      {"probabilistic-error-mode-7", {{"policy", {12}}, {"prob_mode", {2}}}},
      {"probabilistic-existence-from-continue-error-nan-b", {{"policy", {12}}, {"cont_bad", {1}}}},
      {"probabilistic-existence-from-continue-error-size-overflow", {{"policy", {12}}, {"cont_bad", {4}}}},
      // softplus
      {"softplus-lssa", {{"policy", {13}}, {"n", {24}}, {"lse", {1}}}},
      {"softplus-lssar-power-2-causal", {{"policy", {13}}, {"sp_power", {1}}, {"causal", {1}}, {"n", {40}}, {"lse", {1}}}},
      {"softplus-lssar-threshold-two-pass-gqa",
       {{"policy", {13}}, {"sp_threshold", {1}}, {"sp_power", {1}}, {"kv_heads", {1}}, {"group", {1}}, {"n", {30}}, {"lse", {1}}}},
      {"softplus-threshold-1-power-0-5", {{"policy", {13}}, {"sp_threshold", {2}}, {"sp_power", {2}}, {"n", {17}}, {"lse", {1}}}},
      {"softplus-no-length-scale-window-varlen",
       {{"policy", {13}}, {"length_scale", {0}}, {"window_left", {1}}, {"window_left_n", {4}}, {"batch", {2}}, {"n", {20}},
        {"query_lens", {1}}, {"query_len", {7, 20}}, {"lse", {1}}}},
      {"softplus-min-len-1-nq-gt-nk",
       {{"policy", {13}}, {"sp_min_len", {1}}, {"seq_mode", {1}}, {"nq", {20}}, {"nk", {5}}, {"causal", {1}}}},
      {"softplus-decode-split-keys", {{"policy", {13}}, {"seq_mode", {2}}, {"nk_long", {2048}}, {"threads", {2}}, {"lse", {1}}}},
      {"softplus-alpha-2-pow-64", {{"policy", {13}}, {"sp_alpha", {4}}, {"lse", {1}}}},
      {"softplus-power-1024-q-10-k-minus-1", {{"policy", {13}}, {"sp_power", {5}}, {"vals_q", {3}}, {"x_q", {4}}, {"vals_k", {3}}, {"x_k", {2}}, {"lse", {1}}}},
      {"softplus-error-alpha-0", {{"policy", {13}}, {"sp_alpha", {8}}}},
      {"softplus-error-alpha-above-2-pow-64", {{"policy", {13}}, {"sp_alpha", {7}}}},
      {"softplus-error-min-len-0", {{"policy", {13}}, {"sp_min_len", {5}}}},
      {"softplus-error-power-nan", {{"policy", {13}}, {"sp_power", {13}}}},
      {"softplus-error-power-above-1024", {{"policy", {13}}, {"sp_power", {9}}}},
      {"softplus-error-threshold-negative", {{"policy", {13}}, {"sp_threshold", {10}}}},
      // affine_scaled
      {"affine-defaults-softmax", {{"policy", {14}}, {"lse", {1}}}},
      {"affine-alpha-gate-complement-causal",
       {{"policy", {14}}, {"beta_mode", {1}}, {"af_alpha", {1}}, {"causal", {1}}, {"n", {40}}, {"lse", {1}}}},
      {"affine-given-beta-window-gqa",
       {{"policy", {14}}, {"beta_mode", {2}}, {"af_beta", {1}}, {"af_alpha", {2}}, {"window_left", {1}}, {"window_left_n", {5}},
        {"kv_heads", {1}}, {"group", {1}}, {"n", {64}}, {"lse", {1}}}},
      {"affine-given-long-keys-prefix-sums",
       {{"policy", {14}}, {"beta_mode", {2}}, {"af_beta", {6}}, {"seq_mode", {1}}, {"nq", {40}}, {"nk", {64}}, {"causal", {1}},
        {"window_left", {1}}, {"window_left_n", {8}}}},
      {"affine-huge-alpha-beta", {{"policy", {14}}, {"beta_mode", {2}}, {"af_beta", {3}}, {"af_alpha", {4}}}},
      {"affine-complement-alpha-0-decode",
       {{"policy", {14}}, {"beta_mode", {1}}, {"af_alpha", {3}}, {"seq_mode", {2}}, {"nk_long", {2048}}, {"threads", {2}}}},
      {"affine-softcap-alibi-varlen",
       {{"policy", {14}}, {"af_alpha", {1}}, {"softcap", {2}}, {"alibi", {1}}, {"batch", {2}}, {"n", {12}}, {"key_lens", {1}},
        {"key_len", {3, 12}}, {"lse", {1}}}},
      {"affine-error-given-without-beta", {{"policy", {14}}, {"beta_mode", {2}}}},
      {"affine-error-beta-with-zero-mode", {{"policy", {14}}, {"af_beta", {1}}}},
      {"affine-error-alpha-nan", {{"policy", {14}}, {"af_alpha", {6}}}},
      {"affine-error-beta-above-2-pow-32", {{"policy", {14}}, {"beta_mode", {2}}, {"af_beta", {4}}, {"af_beta_bad", {3}}}},
      {"affine-error-beta-mode-7", {{"policy", {14}}, {"beta_mode", {3}}}},
      // gaussian_adaptive (policy 15, policy_more 0)
      {"gaussian-adaptive-dim", {{"policy", {15}}, {"policy_more", {0}}}},
      {"gaussian-adaptive-seq-chunks-gaussians",
       {{"policy", {15}}, {"policy_more", {0}}, {"ga_axis", {1}}, {"ga_n", {11}}, {"ga_chunks", {2}}, {"ga_gaussians", {2}},
        {"ga_offsets", {2}}, {"ga_scales", {2}}}},
      {"gaussian-adaptive-dim-residual-biased-f16",
       {{"policy", {15}}, {"policy_more", {0}}, {"dv_kind", {5}}, {"ga_chunks", {3}}, {"unbiased", {0}}, {"residual", {1}},
        {"ga_offsets", {3}}, {"ga_scales", {2}}, {"types", {2}}}},
      {"gaussian-adaptive-seq-bf16-odd-dim",
       {{"policy", {15}}, {"policy_more", {0}}, {"ga_axis", {1}}, {"ga_n", {8}}, {"dv_kind", {7}}, {"types", {1}}, {"threads", {2}}}},
      {"gaussian-adaptive-seq-mixed-types-strided",
       {{"policy", {15}}, {"policy_more", {0}}, {"ga_axis", {1}}, {"ga_n", {9}}, {"types", {3}}, {"layout_v", {3}},
        {"perm_v", {5}}, {"pad_v", {1, 0, 1, 2}}, {"layout_out", {1}}}},
      {"gaussian-adaptive-constant-eps-0", {{"policy", {15}}, {"policy_more", {0}}, {"ga_eps", {1}}, {"vals_v", {3}}, {"x_v", {0}}}},
      {"gaussian-adaptive-extreme-values-sharp",
       {{"policy", {15}}, {"policy_more", {0}}, {"dv_kind", {4}}, {"vals_v", {4}}, {"ga_scales", {5}}, {"ga_offsets", {4}}}},
      {"gaussian-adaptive-values-1e20-halves",
       {{"policy", {15}}, {"policy_more", {0}}, {"ga_axis", {1}}, {"vals_v", {6}}, {"x_v", {5}}, {"ga_eps", {4}}}},
      {"gaussian-adaptive-gaussians-2-pow-62-empty",
       {{"policy", {15}}, {"policy_more", {0}}, {"ga_gaussians", {5}}, {"batch", {0}}}},
      {"gaussian-adaptive-error-gqa", {{"policy", {15}}, {"policy_more", {0}}, {"kv_heads", {1}}, {"group", {1}}}},
      {"gaussian-adaptive-error-seq-mismatch", {{"policy", {15}}, {"policy_more", {0}}, {"ga_seq_fault", {1}}}},
      {"gaussian-adaptive-error-chunks-above-axis", {{"policy", {15}}, {"policy_more", {0}}, {"ga_chunks", {6}}}},
      {"gaussian-adaptive-error-unbiased-chunk-length-1", {{"policy", {15}}, {"policy_more", {0}}, {"ga_chunks", {5}}}},
      {"gaussian-adaptive-chunks-2-pow-31-minus-1-empty-seq",
       {{"policy", {15}}, {"policy_more", {0}}, {"ga_axis", {1}}, {"ga_n", {1}}, {"ga_chunks", {9}}}},
      {"gaussian-adaptive-error-gaussians-0", {{"policy", {15}}, {"policy_more", {0}}, {"ga_gaussians", {7}}}},
      {"gaussian-adaptive-error-chunks-times-gaussians-overflows",
       {{"policy", {15}}, {"policy_more", {0}}, {"ga_chunks", {1}}, {"ga_gaussians", {6}}}},
      {"gaussian-adaptive-error-params-above-2-pow-54", {{"policy", {15}}, {"policy_more", {0}}, {"ga_gaussians", {5}}, {"ga_offsets", {1}}}},
      {"gaussian-adaptive-error-scale-0", {{"policy", {15}}, {"policy_more", {0}}, {"ga_scales", {7}}}},
      {"gaussian-adaptive-error-scale-minus-0", {{"policy", {15}}, {"policy_more", {0}}, {"ga_scales", {11}}}},
      {"gaussian-adaptive-error-offset-nan", {{"policy", {15}}, {"policy_more", {0}}, {"ga_offsets", {6}}}},
      {"gaussian-adaptive-error-eps-negative", {{"policy", {15}}, {"policy_more", {0}}, {"ga_eps", {6}}}},
      {"gaussian-adaptive-error-axis-5", {{"policy", {15}}, {"policy_more", {0}}, {"ga_axis", {2}}}},
      // local_linear (policy 15, policy_more 1)
      {"local-linear", {{"policy", {15}}, {"policy_more", {1}}, {"lse", {1}}}},
      {"local-linear-causal-gqa-ridge-1",
       {{"policy", {15}}, {"policy_more", {1}}, {"ridge", {2}}, {"causal", {1}}, {"kv_heads", {1}}, {"group", {1}}, {"n", {24}}, {"lse", {1}}}},
      {"local-linear-ridge-0-fewer-keys-than-dim", {{"policy", {15}}, {"policy_more", {1}}, {"ridge", {1}}, {"n", {3}}, {"lse", {1}}}},
      {"local-linear-window-varlen-f16",
       {{"policy", {15}}, {"policy_more", {1}}, {"window_left", {1}}, {"window_left_n", {2}}, {"batch", {2}}, {"n", {20}},
        {"key_lens", {1}}, {"key_len", {9, 20}}, {"types", {1}}}},
      {"local-linear-ridge-flt-max", {{"policy", {15}}, {"policy_more", {1}}, {"ridge", {6}}, {"lse", {1}}}},
      {"local-linear-nq-gt-nk-causal-threads-2",
       {{"policy", {15}}, {"policy_more", {1}}, {"seq_mode", {1}}, {"nq", {20}}, {"nk", {5}}, {"causal", {1}}, {"threads", {2}}, {"lse", {1}}}},
      {"local-linear-error-ridge-negative", {{"policy", {15}}, {"policy_more", {1}}, {"ridge", {9}}}},
      {"local-linear-error-ridge-nan", {{"policy", {15}}, {"policy_more", {1}}, {"ridge", {10}}}},
      // merge_states
      {"merge-states", {{"policy", {7}}}},
      {"merge-states-minus-inf", {{"policy", {7}}, {"m_lse_a", {2}}, {"m_lse_b", {1}}}},
      {"merge-states-error-plus-inf-lse", {{"policy", {7}}, {"m_lse_a", {3}}}},
      {"merge-states-error-nan-lse", {{"policy", {7}}, {"m_lse_b", {4}}}},
      {"merge-states-3e38-equal-lse", {{"policy", {7}}, {"m_vals_a", {2}}, {"m_vals_b", {3}}, {"m_lse_a", {6}}, {"m_lse_b", {6}}}},
      {"merge-states-bf16-strided", {{"policy", {7}}, {"types", {1}}, {"layout_out_a", {3}}, {"layout_out_b", {4}}}},
  };
}

int generate(const fs::path& dir) {
  fs::create_directories(dir);
  int errors = 0;
  for (const seed& s : seeds()) {
    attnkit_fuzz::reader r(&s.decisions);
    attnkit_fuzz::fuzz_case c(r);
    c.dry_run = true;
    if (!attnkit_fuzz::run_case(c)) {
      std::fprintf(stderr, "seed %s: skipped (over the harness's budget)\n", s.name);
      ++errors;
      continue;
    }
    const auto unused = r.unused_overrides();
    if (!unused.empty()) {
      std::fprintf(stderr, "seed %s: decisions never taken: %s ...\n", s.name, unused.front().c_str());
      ++errors;
      continue;
    }
    std::ofstream out(dir / s.name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(r.bytes().data()), static_cast<std::streamsize>(r.bytes().size()));
    std::printf("%s (%zu bytes)\n%s", s.name, r.bytes().size(), c.describe().c_str());
  }
  return errors ? 1 : 0;
}

std::vector<std::uint8_t> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

const char* current_file = "";
extern "C" void on_alarm(int) {
  const char msg[] = "\nfuzz_replay: time limit exceeded (a hang) on ";
  ssize_t ignored = write(2, msg, sizeof msg - 1);
  ignored = write(2, current_file, std::strlen(current_file));
  ignored = write(2, "\n", 1);
  (void)ignored;
  _exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  attnkit_fuzz::abort_on_finding() = false;
  if (argc >= 2 && std::string_view(argv[1]) == "-v") {
    attnkit_fuzz::verbose() = true;
    --argc, ++argv;
  }
  if (argc == 3 && std::string_view(argv[1]) == "--generate") return generate(argv[2]);
  if (argc >= 3 && std::string_view(argv[1]) == "--describe") {
    for (int i = 2; i < argc; ++i) {
      const std::vector<std::uint8_t> bytes = read_file(argv[i]);
      attnkit_fuzz::reader r(bytes.data(), bytes.size());
      attnkit_fuzz::fuzz_case c(r);
      c.dry_run = true;
      const bool ran = attnkit_fuzz::run_case(c);
      std::printf("%s:%s\n%s", argv[i], ran ? "" : " (skipped)", c.describe().c_str());
    }
    return 0;
  }
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PATH...   (files or directories of fuzz inputs)\n"
                         "       %s --describe FILE...\n       %s --generate DIR\n", argv[0], argv[0], argv[0]);
    return 2;
  }
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path p = argv[i];
    if (fs::is_directory(p)) {
      std::vector<fs::path> in_dir;
      for (const auto& e : fs::directory_iterator(p)) {
        const std::string name = e.path().filename().string();
        if (e.is_regular_file() && name[0] != '.' && e.path().extension() != ".md") in_dir.push_back(e.path());
      }
      std::sort(in_dir.begin(), in_dir.end());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else if (fs::is_regular_file(p)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "fuzz_replay: %s: no such file or directory\n", argv[i]);
      return 2;
    }
  }
  std::signal(SIGALRM, on_alarm);
  int failures = 0;
  for (const fs::path& f : files) {
    const std::string name = f.string();
    current_file = name.c_str();
    const std::vector<std::uint8_t> bytes = read_file(f);
    if (attnkit_fuzz::verbose()) std::printf("%s\n", name.c_str());
    alarm(60);
    try {
      attnkit_fuzz::check_input(bytes.data(), bytes.size());
    } catch (const attnkit_fuzz::finding_error& e) {
      std::printf("FAIL %s\n%s\n", name.c_str(), e.what());
      ++failures;
    }
    alarm(0);
  }
  std::printf("fuzz_replay: %zu inputs, %d finding(s)\n", files.size(), failures);
  return failures ? 1 : 0;
}

#endif
