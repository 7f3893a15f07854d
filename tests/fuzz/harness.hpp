/// \file
/// The attnkit fuzz harness (issue 17): bytes -> one attnkit::attention (or merge_states) call,
/// checked against the library's contract. One harness, two builds:
///   fuzz_attention  libFuzzer target (clang, ASan + UBSan), -DATTNKIT_LIBFUZZER
///   fuzz_replay     plain program (any compiler): runs files (tests/fuzz/corpus/, regressions/)
///                   through the same check, and writes the seed corpus (--generate DIR).
///
/// Decoding. Every decision is one reader::take(name, n, default): a value in [0, n) read from
/// the next 1, 2 or 8 bytes (by the size of n), or `default` once the input is used up. So the
/// empty input is a small valid softmax call, and a seed can be written by naming the decisions
/// that differ from the defaults (the generator in fuzz_attention.cpp).
///
/// Checks (see check_outcomes()):
///   - attnkit::error: nothing in any buffer changed (out and lse are filled with a sentinel);
///     the reference rejects the input too; the input was not known to be valid.
///   - success: the input was not known to be invalid; the reference succeeds too; nothing
///     outside out's elements and lse's entries changed; no NaN from finite inputs and valid
///     fields; the result equals attnkit::reference::attention where the comparison is well
///     conditioned; bitwise the same result with options::threads = 1.
///   - a callback decoded to throw: that very exception (or success), nothing outside out/lse
///     written. Any other exception type, a crash, a hang or a sanitizer report is a finding.
/// Views never claim memory the harness did not allocate, except on purpose with a size that
/// no memory can have (element count or byte span overflowing, or above 2^56 bytes): those
/// calls must throw attnkit::error.
#pragma once

#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace attnkit_fuzz {

using attnkit::bf16;
using attnkit::f16;
using attnkit::index_t;

// ---------------------------------------------------------------------------------------------
// Constants: the extremes the decoders pick from.

inline constexpr index_t i64_max = std::numeric_limits<index_t>::max();
inline constexpr index_t i64_min = std::numeric_limits<index_t>::min();
inline constexpr index_t third_of_2_64 = static_cast<index_t>(6148914691236517206ULL);  // (2^64 + 2) / 3
inline constexpr index_t pow2_62 = index_t(1) << 62;
inline constexpr index_t pow2_32 = index_t(1) << 32;
inline constexpr float flt_max = std::numeric_limits<float>::max();
inline constexpr float f_inf = std::numeric_limits<float>::infinity();
inline const float f_nan = std::numeric_limits<float>::quiet_NaN();
inline const float pow2_127 = std::ldexp(1.0f, 127);
inline const float pow2_m126 = std::ldexp(1.0f, -126);

/// Limits of one input: total bytes of all buffers, and the reference's work.
inline constexpr std::size_t max_buffer_bytes = std::size_t(8) << 20;
inline constexpr double max_reference_work = 4.0e6;  // B * Hq * Nq * Nk * (D + Dv)
inline constexpr double max_nested_keep_calls = 16384;

// ---------------------------------------------------------------------------------------------
// Reader: decisions from bytes (fuzzing, replay) or from named overrides (seed generation).

using overrides = std::map<std::string, std::vector<std::uint64_t>>;

class reader {
 public:
  reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  /// Generator mode: each take() returns the next override of its name (else the default) and
  /// appends the bytes that decode to it.
  explicit reader(const overrides* o) : overrides_(o) {}

  /// A value in [0, n) (n == 0: any 64-bit value), or `dflt` once the input is used up.
  std::uint64_t take(const char* name, std::uint64_t n, std::uint64_t dflt = 0) {
    const std::size_t width = n == 0 ? 8 : n <= 256 ? 1 : n <= 65536 ? 2 : 8;
    std::uint64_t v = dflt;
    if (overrides_) {
      const auto it = overrides_->find(name);
      std::size_t& used = used_[name];
      if (it != overrides_->end() && used < it->second.size()) v = it->second[used++];
      if (n != 0 && v >= n) {
        std::fprintf(stderr, "seed generator: %s = %llu is out of range [0, %llu)\n", name,
                     static_cast<unsigned long long>(v), static_cast<unsigned long long>(n));
        std::abort();
      }
      for (std::size_t b = 0; b < width; ++b) bytes_.push_back(static_cast<std::uint8_t>(v >> (8 * b)));
    } else if (pos_ + width <= size_) {
      v = 0;
      for (std::size_t b = 0; b < width; ++b) v |= std::uint64_t(data_[pos_ + b]) << (8 * b);
      pos_ += width;
      if (n != 0) v %= n;
    } else {
      pos_ = size_;  // used up: defaults from here on
    }
    log_.emplace_back(name, v);
    return v;
  }
  bool flag(const char* name, bool dflt = false) { return take(name, 2, dflt ? 1 : 0) != 0; }

  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  const std::vector<std::pair<const char*, std::uint64_t>>& log() const { return log_; }
  /// Names the overrides gave that no take() asked for (a seed that no longer decodes as meant).
  std::vector<std::string> unused_overrides() const {
    std::vector<std::string> out;
    if (!overrides_) return out;
    for (const auto& [name, values] : *overrides_) {
      const auto it = used_.find(name);
      const std::size_t used = it == used_.end() ? 0 : it->second;
      if (used < values.size()) out.push_back(name);
    }
    return out;
  }

 private:
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0, pos_ = 0;
  const overrides* overrides_ = nullptr;
  std::map<std::string, std::size_t> used_;
  std::vector<std::uint8_t> bytes_;
  std::vector<std::pair<const char*, std::uint64_t>> log_;
};

/// Picks table[take(name, size, dflt)].
template <class T, std::size_t N>
T pick(reader& r, const char* name, const T (&table)[N], std::size_t dflt = 0) {
  return table[r.take(name, N, dflt)];
}

inline std::string fmt(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}
inline std::string fmt(index_t x) { return std::to_string(x); }

// ---------------------------------------------------------------------------------------------
// Findings.

/// Replay mode throws this; fuzzing mode prints and aborts (libFuzzer saves the input).
struct finding_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
/// An input outside the harness's budget (too large, too slow): not run.
struct skip_input {};

/// fuzz_replay -v: one line per input (policy, outcome, result check).
inline bool& verbose() {
  static bool v = false;
  return v;
}

inline bool& abort_on_finding() {
  static bool a = true;
  return a;
}

/// The exception a callback decoded to throw on purpose.
struct fuzz_thrown {
  int tag;
};
inline constexpr int thrown_tag = 0x5eed;

/// What one run of a policy needs to know about its logits (tolerances, well-conditioned cases).
struct logit_facts {
  float scale = 0;             ///< the policy's scale field
  double cap = 0;              ///< softmax softcap (0: off)
  bool alibi = false;          ///< slopes present
  bool alibi_nonzero = false;  ///< some slope != 0
  double slope_max = 0;        ///< max |slope|
  bool slopes_equal = false;   ///< every head has the same slope
  double slope_value = 0;      ///< that slope
  bool score = false;          ///< custom score transform that changes scores
  double score_add = 0;        ///< bound on |score(s) - s| terms that do not scale with s
  /// Linear and kernelized attention (out = sum_j w_j v_j / (sum_j w_j + eps), weights from
  /// feature maps): compared with the reference only when |q|, |k| <= feature_input_max (0:
  /// never: the decoder found the features ill-conditioned), within feature_tol (1 + max |v|).
  bool feature_sums = false;
  double feature_input_max = 0;
  double feature_tol = 0;
  /// Their work: the reference's per (query, key) pair, the fast path's per token (features,
  /// state or FFT columns); 0: softmax's D + Dv per pair.
  double work_per_pair = 0, work_per_token = 0;
  /// With feature_sums: the largest |v| compared (GAAM's weights do not depend on the values'
  /// scale, so it is compared up to 1e30).
  double feature_value_max = 10;
  /// Equal scores need not give equal weights: the policy adds a bias of its own per key
  /// (probabilistic) or re-weights against a threshold (softplus): no exact-ties comparison.
  bool inexact_ties = false;
  /// Outputs that are a softmax-like result times up to out_gain plus sums of values
  /// (affine_scaled: alpha_i out_i + beta_i sum_j v_j): the output tolerance is multiplied by
  /// out_gain, and out_extra (1 + max |v|) is added for the rounding of the value sums.
  double out_gain = 1, out_extra = 0;
};

struct callbacks;

/// One decoded input: the notes that describe it and what it is expected to do.
struct fuzz_case {
  explicit fuzz_case(reader& r_) : r(r_) {}
  reader& r;
  bool dry_run = false;               ///< decode only (seed generation, --describe)
  std::string policy;                 ///< e.g. "softmax{causal=1, ...}"
  std::vector<std::string> notes;     ///< shapes, layouts, values, options
  std::vector<std::string> faults;    ///< reasons the call must throw attnkit::error
  std::vector<std::string> unsure;    ///< reasons neither outcome is predicted
  bool throws = false;                ///< a callback may throw fuzz_thrown
  bool nested = false;                ///< a callback calls attnkit::attention
  callbacks* cb = nullptr;
  logit_facts lf;
  std::string regime;                 ///< which result check applies

  void note(std::string s) { notes.push_back(std::move(s)); }
  void fault(std::string s) { faults.push_back(std::move(s)); }
  void maybe(std::string s) { unsure.push_back(std::move(s)); }

  std::string describe() const {
    std::ostringstream s;
    s << "  policy: " << policy << "\n";
    for (const auto& n : notes) s << "  " << n << "\n";
    s << "  expected: ";
    if (!faults.empty()) {
      s << "attnkit::error (";
      for (std::size_t i = 0; i < faults.size(); ++i) s << (i ? "; " : "") << faults[i];
      s << ")";
    } else if (!unsure.empty()) {
      s << "either outcome (";
      for (std::size_t i = 0; i < unsure.size(); ++i) s << (i ? "; " : "") << unsure[i];
      s << ")";
    } else {
      s << (throws ? "success or the callback's exception" : "success");
    }
    s << "\n  result check: " << (regime.empty() ? "-" : regime) << "\n  decisions:";
    for (const auto& [name, v] : r.log()) s << " " << name << "=" << v;
    s << "\n";
    return s.str();
  }
};

[[noreturn]] inline void report(const fuzz_case& c, const std::string& what) {
  const std::string msg = "attnkit fuzz finding: " + what + "\n" + c.describe();
  if (abort_on_finding()) {
    std::fprintf(stderr, "\n%s\n", msg.c_str());
    std::fflush(stderr);
    std::abort();
  }
  throw finding_error(msg);
}

// ---------------------------------------------------------------------------------------------
// Custom-policy callbacks: one small family, chosen at run time, so that the policy types
// (and the engine instantiations) stay few. keep/score/block must agree with each other
// (a block predicate's "full" or "skip" is a promise about keep): the block predicates here
// classify a tile by calling keep on all of it.

struct callbacks {
  int keep = 0;    ///< 0 all, 1 causal, 2 modular, 3 none, 4 band, 5 prefix LM, 6 per head, 7 nested, 8 throws, 9 documents
  int score = -1;  ///< -1 none; 0 identity, 1 affine, 2 tanh cap, 3 -inf on a pattern, 4 distance bias, 5 nested, 6 throws, 7 all -inf
  int block = -1;  ///< -1 none; 0 exact, 1 always partial, 2 nested + exact, 3 throws + exact
  index_t nq = 0, nk = 0, param = 4, mod = 3, rem = 0;
  int inner_threads = 1;
  mutable std::atomic<int> failures{0};
  mutable std::mutex mutex;
  mutable std::string first_failure;

  index_t pos(index_t i) const { return i + nk - nq; }
  static bool sampled(index_t b, index_t h, index_t i, index_t j) { return (i * 7 + j * 13 + h * 5 + b * 3) % 61 == 0; }

  void fail(const std::string& what) const {
    if (failures.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(mutex);
      first_failure = what;
    }
  }

  /// (i + j) / 2 through a nested attention call (q = k = 0: two tied keys with values i, j).
  /// Returns the exact value whatever the call does (a wrong answer is recorded, so the outer
  /// call's result stays comparable).
  float nested(index_t i, index_t j) const {
    float q[1] = {0.f}, k[2] = {0.f, 0.f}, v[2] = {static_cast<float>(i), static_cast<float>(j)};
    float o[1] = {-1.f}, lse[1] = {0.f};
    const float want = 0.5f * static_cast<float>(i + j);
    try {
      attnkit::options opt;
      opt.threads = inner_threads;
      opt.lse = lse;
      attnkit::attention(attnkit::softmax{}, attnkit::view_bhsd(q, 1, 1, 1, 1), attnkit::view_bhsd(k, 1, 1, 2, 1),
                         attnkit::view_bhsd(v, 1, 1, 2, 1), attnkit::view_bhsd(o, 1, 1, 1, 1), opt);
      if (!(std::fabs(o[0] - want) <= 1e-5f * (1.f + std::fabs(want))) || !(std::fabs(lse[0] - 0.69314718f) <= 1e-5f))
        fail("nested attention(" + fmt(index_t(i)) + ", " + fmt(index_t(j)) + ") gave out " + fmt(double(o[0])) +
             " (want " + fmt(double(want)) + "), lse " + fmt(double(lse[0])) + " (want log 2)");
    } catch (const std::exception& e) {
      fail(std::string("nested attention threw ") + typeid(e).name() + ": " + e.what());
    } catch (...) {
      fail("nested attention threw an exception of unknown type");
    }
    return want;
  }
  index_t sum_ij(index_t b, index_t h, index_t i, index_t j, bool allow_nested) const {
    if (!allow_nested || !sampled(b, h, i, j)) return i + j;
    return static_cast<index_t>(std::lround(2.0 * static_cast<double>(nested(i, j))));
  }

  bool keep_fn(index_t b, index_t h, index_t i, index_t j, bool allow_nested = true) const {
    switch (keep) {
      case 0: return true;
      case 1: return j <= pos(i);
      case 2: return (i + 2 * j + b + h) % mod != rem;
      case 3: return false;
      case 4: { const index_t d = pos(i) - j; return d <= param && -d <= param; }
      case 5: return j <= pos(i) || j < param;
      case 6: return (j + h) % 2 == 0;
      case 7: return sum_ij(b, h, i, j, allow_nested) % 3 != 0;
      case 8:
        if ((i + 2 * j + h) % mod == rem) throw fuzz_thrown{thrown_tag};
        return (i + j) % 2 == 0;
      default: { const index_t len = 3 + b + param; return i / len == j / len && j <= i; }
    }
  }

  template <class S>
  S score_fn(S s, index_t b, index_t h, index_t i, index_t j) const {
    switch (score) {
      case 0: return s;
      case 1: return s * S(0.5) + S(0.125) * static_cast<S>((i + h) % 5);
      case 2: return S(20) * std::tanh(s / S(20));
      case 3: return (i + j) % 4 == 1 ? -std::numeric_limits<S>::infinity() : s;
      case 4: { const index_t d = pos(i) - j; return s - S(0.0625) * static_cast<S>(d < 0 ? -d : d); }
      case 5: return s + S(0.0078125) * static_cast<S>(sum_ij(b, h, i, j, true));
      case 6:
        if ((i + j + h) % mod == rem) throw fuzz_thrown{thrown_tag};
        return s;
      default: return -std::numeric_limits<S>::infinity();
    }
  }

  attnkit::block_kind classify(index_t b, index_t h, index_t q0, index_t q1, index_t k0, index_t k1) const {
    bool any = false, all = true;
    for (index_t i = q0; i <= q1; ++i)
      for (index_t j = k0; j <= k1; ++j) {
        const bool kept = keep_fn(b, h, i, j, false);
        any = any || kept;
        all = all && kept;
      }
    return !any ? attnkit::block_kind::skip : all ? attnkit::block_kind::full : attnkit::block_kind::partial;
  }
  attnkit::block_kind block_fn(index_t b, index_t h, index_t q0, index_t q1, index_t k0, index_t k1) const {
    switch (block) {
      case 1: return attnkit::block_kind::partial;
      case 2: (void)nested(q0, k0); return classify(b, h, q0, q1, k0, k1);
      case 3:
        if ((q0 + k0 / 64 + h) % mod == rem) throw fuzz_thrown{thrown_tag};
        return classify(b, h, q0, q1, k0, k1);
      default: return classify(b, h, q0, q1, k0, k1);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Memory: one exactly sized heap buffer per region (so ASan sees any read past a view's
// memory); views that alias share a region.

class memory {
 public:
  int add(std::size_t bytes) {
    bufs_.emplace_back(new unsigned char[bytes ? bytes : 1]);
    sizes_.push_back(bytes ? bytes : 1);
    return static_cast<int>(bufs_.size()) - 1;
  }
  void grow(int region, std::size_t bytes) {  // before allocation only
    sizes_[static_cast<std::size_t>(region)] = std::max(sizes_[static_cast<std::size_t>(region)], bytes);
  }
  memory clone() const {
    memory m;
    for (std::size_t i = 0; i < bufs_.size(); ++i) {
      m.bufs_.emplace_back(new unsigned char[sizes_[i]]);
      m.sizes_.push_back(sizes_[i]);
      std::memcpy(m.bufs_.back().get(), bufs_[i].get(), sizes_[i]);
    }
    return m;
  }
  /// Reallocates every region at its final size (planning grows them) and fills it.
  void allocate(unsigned char fill) {
    for (std::size_t i = 0; i < bufs_.size(); ++i) {
      bufs_[i].reset(new unsigned char[sizes_[i]]);
      std::memset(bufs_[i].get(), fill, sizes_[i]);
    }
  }
  unsigned char* at(int region, std::ptrdiff_t offset) const { return bufs_[static_cast<std::size_t>(region)].get() + offset; }
  std::size_t size(int region) const { return sizes_[static_cast<std::size_t>(region)]; }
  std::size_t regions() const { return bufs_.size(); }
  std::size_t total() const {
    std::size_t t = 0;
    for (std::size_t s : sizes_) t += s;
    return t;
  }

 private:
  std::vector<std::unique_ptr<unsigned char[]>> bufs_;
  std::vector<std::size_t> sizes_;
};

// ---------------------------------------------------------------------------------------------
// View specifications.

struct vspec {
  const char* name = "";
  std::array<index_t, 4> ext{}, str{};
  int how = 0;            ///< 0 tensor_view constructor, 1 view_bhsd, 2 view_bshd
  bool null = false;      ///< data() == nullptr
  bool honest = true;     ///< addresses only memory of its own region
  int region = -1;
  std::ptrdiff_t offset = 0;  ///< bytes from the region start to data()
  std::size_t esize = 4;
  index_t min_off = 0, max_off = -1;  ///< element offsets of the lowest and highest element
  std::string layout;

  bool empty() const {
    for (index_t e : ext)
      if (e == 0) return true;
    return false;
  }
  /// Bytes from the lowest to the end of the highest element (honest, non-empty views).
  std::size_t span_bytes() const { return static_cast<std::size_t>(max_off - min_off + 1) * esize; }
  std::string describe() const {
    std::ostringstream s;
    s << name << ": extents [" << ext[0] << ", " << ext[1] << ", " << ext[2] << ", " << ext[3] << "] strides ["
      << str[0] << ", " << str[1] << ", " << str[2] << ", " << str[3] << "] " << layout
      << (how == 1 ? " (view_bhsd)" : how == 2 ? " (view_bshd)" : "") << (null ? " null data" : "")
      << (honest ? "" : " impossible size (real small pointer)");
    if (region >= 0 && !null) s << " region " << region << " +" << offset << " B";
    return s.str();
  }
  /// Calls f(element offset) for every element, in (b, h, s, d) order (honest views).
  template <class F>
  void for_each(F&& f) const {
    for (index_t b = 0; b < ext[0]; ++b)
      for (index_t h = 0; h < ext[1]; ++h)
        for (index_t s = 0; s < ext[2]; ++s)
          for (index_t d = 0; d < ext[3]; ++d) f(b * str[0] + h * str[1] + s * str[2] + d * str[3], b, h, s, d);
  }
  void compute_span() {
    min_off = max_off = 0;
    for (int a = 0; a < 4; ++a) {
      const index_t reach = (ext[static_cast<std::size_t>(a)] - 1) * str[static_cast<std::size_t>(a)];
      (reach < 0 ? min_off : max_off) += reach;
    }
  }
};

template <class T>
attnkit::tensor_view<T> make_view(const vspec& s, const memory& m) {
  T* p = s.null ? nullptr : reinterpret_cast<T*>(m.at(s.region, s.offset));
  if (s.how == 1) return attnkit::view_bhsd(p, s.ext[0], s.ext[1], s.ext[2], s.ext[3]);
  if (s.how == 2) return attnkit::view_bshd(p, s.ext[0], s.ext[2], s.ext[1], s.ext[3]);
  return attnkit::tensor_view<T>(p, s.ext, s.str);
}

template <class T>
double load(const unsigned char* p) {
  T x;
  std::memcpy(&x, p, sizeof x);
  return static_cast<double>(attnkit::detail::to_float(x));
}
template <class T>
void store(unsigned char* p, double v) {
  const T x = attnkit::detail::from_float<T>(static_cast<float>(v));
  std::memcpy(p, &x, sizeof x);
}

template <class T> const char* type_name();
template <> inline const char* type_name<float>() { return "float"; }
template <> inline const char* type_name<bf16>() { return "bf16"; }
template <> inline const char* type_name<f16>() { return "f16"; }

/// Element types at run time, for the harness's own loops (fuzz_attention.cpp, built optimised
/// whatever the build type, so that a fuzzer built without optimisation spends its time in the
/// library).
enum class etype { f32, bf16, f16 };
template <class T>
constexpr etype etype_of() {
  return std::is_same_v<T, bf16> ? etype::bf16 : std::is_same_v<T, f16> ? etype::f16 : etype::f32;
}
double load_as(etype t, const unsigned char* p);
void store_as(etype t, unsigned char* p, double v);

/// Contiguous [B, H, S, D] strides with wrapping arithmetic (for views of impossible size).
inline std::array<index_t, 4> wrapped_bhsd_strides(const std::array<index_t, 4>& e) {
  const std::uint64_t d = static_cast<std::uint64_t>(e[3]), s = static_cast<std::uint64_t>(e[2]) * d,
                      h = static_cast<std::uint64_t>(e[1]) * s;
  return {static_cast<index_t>(h), static_cast<index_t>(s), static_cast<index_t>(d), 1};
}

/// Does a view map two of its elements to one address? 0 no (and its axes nest: every layout
/// a library can recognise), 1 no but its axes interleave, 2 yes.
int self_overlap(const vspec& v);
/// Do two views in one region share a byte? 0 their byte ranges are disjoint, 1 the ranges
/// intersect but no byte is shared (interleaved), 2 a byte is shared.
int shared_bytes(const vspec& a, const vspec& b);

/// Decodes the layout of an honest view (extents already set). `t` names the decisions.
void decode_layout(fuzz_case& c, vspec& v, int t, bool writable);

// ---------------------------------------------------------------------------------------------
// The problem: shapes (with on-purpose faults) shared by the attention policies.

struct seq_rule {
  index_t nq = -1, nk = -1;  ///< fixed sequence lengths (neighborhood, radial); -1: decoded
};

struct problem {
  index_t B = 1, Hq = 1, Hkv = 1, Nq = 8, Nk = 8, D = 4, Dv = 4;
  std::array<std::array<index_t, 4>, 4> ext{};  ///< q, k, v, out
  std::array<bool, 4> impossible{};             ///< built with a size no memory can have
  int via = 0;                                  ///< impossible views: 0 constructor, 1 view_bhsd
};

problem decode_problem(fuzz_case& c, const seq_rule& rule);

/// Decoders of policy fields shared by several policies.
float decode_scale(fuzz_case& c);

/// softmax's fields, shared by the policies built on its masks (probabilistic, softplus,
/// affine_scaled, local_linear): decode_softmax_fields (policies_softmax.cpp) takes them in
/// decode_softmax's order: scale, causal, window_left, window_right, then with `scores` the
/// soft-cap and ALiBi slopes (filling c.lf's ALiBi facts), then key_lens and query_lens.
struct softmax_fields {
  float scale = 0;
  bool causal = false;
  index_t window_left = -1, window_right = -1;
  float softcap = 0;
  int alibi = 0;                    ///< decision alibi (0: none)
  std::vector<float> slopes;        ///< one per query head when alibi != 0
  std::vector<std::int32_t> key_lens, query_lens;  ///< empty: null
  std::string text;                 ///< "scale=..., causal=..., ..., query_lens=[...]"

  /// Sets scale, causal, windows and lengths of a policy (pointers into this object).
  template <class P>
  void set_masks(P& p) const {
    p.scale = scale;
    p.causal = causal;
    p.window_left = window_left;
    p.window_right = window_right;
    p.key_lens = key_lens.empty() ? nullptr : key_lens.data();
    p.query_lens = query_lens.empty() ? nullptr : query_lens.data();
  }
  /// Sets softcap and alibi_slopes too.
  template <class P>
  void set_all(P& p) const {
    set_masks(p);
    p.softcap = softcap;
    p.alibi_slopes = alibi != 0 ? slopes.data() : nullptr;
  }
};
softmax_fields decode_softmax_fields(fuzz_case& c, const problem& pb, bool scores);

/// A policy field from table[i] (decision `name`); entries at or after `first_bad` are faults.
inline index_t pick_field(fuzz_case& c, const char* name, std::initializer_list<index_t> table, std::size_t first_bad) {
  const std::size_t i = static_cast<std::size_t>(c.r.take(name, table.size(), 0));
  const index_t v = table.begin()[i];
  if (i >= first_bad) c.fault(std::string(name) + " = " + fmt(v));
  return v;
}

// ---------------------------------------------------------------------------------------------
// Running one call and checking it.

struct outcome {
  enum kind_t { ok, error, thrown, other } kind = ok;
  std::string what;
};

template <class F>
outcome capture(F&& f) {
  try {
    f();
    return {};
  } catch (const attnkit::error& e) {
    return {outcome::error, e.what()};
  } catch (const fuzz_thrown& t) {
    if (t.tag == thrown_tag) return {outcome::thrown, "fuzz_thrown"};
    return {outcome::other, "fuzz_thrown with a wrong tag"};
  } catch (const finding_error&) {
    throw;
  } catch (const std::exception& e) {
    return {outcome::other, std::string(typeid(e).name()) + ": " + e.what()};
  } catch (...) {
    return {outcome::other, "an exception of unknown type"};
  }
}

inline const char* kind_name(outcome::kind_t k) {
  switch (k) {
    case outcome::ok: return "success";
    case outcome::error: return "attnkit::error";
    case outcome::thrown: return "the callback's exception";
    default: return "another exception";
  }
}

/// Statistics of the stored (converted) values of one input view.
struct value_stats {
  bool finite = true, constant = true, integral = true;
  double max_abs = 0, row_abs_sum = 0, first = 0;
  bool seen = false;
};

value_stats stats_of(const vspec& v, const memory& m, etype t);

/// Writes the values of one input view: mode (see run_typed's mode_names), X, and the
/// generator state `seed`.
void fill_values(const vspec& v, const memory& m, etype t, int mode, double x, std::uint64_t& seed);
/// The next value of the harness's generator (splitmix64), and a uniform value in [lo, hi).
std::uint64_t next_random(std::uint64_t& seed);
double uniform_random(std::uint64_t& seed, double lo, double hi);

/// Bytes that a successful call may write: out's elements and lse's entries.
class writable_mask {
 public:
  void add(const memory& m, const vspec& v);
  /// The first changed byte outside the mask, as "region r + offset", or "".
  std::string first_change(const memory& before, const memory& after) const;

 private:
  std::map<int, std::vector<std::uint8_t>> masks_;
};

inline std::string first_difference(const memory& a, const memory& b) {
  return writable_mask{}.first_change(a, b);
}

/// |got - want| within atol + rtol |want|; infinities must match exactly, except that
/// `lenient` accepts an infinity against a value within 1% of the type's largest finite one
/// (values at the edge of the range round either way).
inline bool close(double got, double want, double atol, double rtol, bool lenient, double type_max) {
  if (std::isnan(want) || std::isnan(got)) return false;
  if (std::isinf(want) || std::isinf(got)) {
    if (got == want) return true;
    if (!lenient) return false;
    const double finite = std::isinf(want) ? got : want, inf = std::isinf(want) ? want : got;
    return std::fabs(finite) >= 0.99 * type_max && std::signbit(finite) == std::signbit(inf);
  }
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

/// The first element of view `v` (out, or lse as a [1, 1, 1, rows] view) that is NaN (when
/// `nan_check`) or, when `compare`, differs between `fast` and `ref` beyond the tolerance; "".
std::string check_results(const vspec& v, etype t, const memory& fast, const memory& ref, bool nan_check, bool compare,
                          double atol, double rtol, bool lenient, double type_max);

template <class T>
double type_max() {
  if constexpr (std::is_same_v<T, f16>) return 65504.0;
  else return static_cast<double>(flt_max);
}
template <class T>
double out_rel() {  // the output type's rounding (either neighbour may come out)
  if constexpr (std::is_same_v<T, bf16>) return 8e-3;
  else if constexpr (std::is_same_v<T, f16>) return 1e-3;
  else return 1e-5;
}

/// Content-based policies (HiP, routing) choose keys from q and k: the fast path in float, the
/// reference in double, so a near tie may go either way and then the outputs differ for good
/// reason. Returns where the two choices differ ("" when they agree, and for every other
/// policy).
template <class Policy, class Q, class K>
std::string choices_differ(const Policy&, const attnkit::tensor_view<const Q>&, const attnkit::tensor_view<const K>&) {
  return {};
}
template <class Q, class K>
std::string choices_differ(const attnkit::hip& p, const attnkit::tensor_view<const Q>& q,
                           const attnkit::tensor_view<const K>& k) {
  for (index_t b = 0; b < q.batch(); ++b)
    for (index_t h = 0; h < q.heads(); ++h)
      if (attnkit::dense_mask(p, q, k, b, h) != attnkit::reference::hip_mask(p, q, k, b, h))
        return "HiP's kept keys of b = " + fmt(b) + ", h = " + fmt(h);
  return {};
}
template <class Q, class K>
std::string choices_differ(const attnkit::routing& p, const attnkit::tensor_view<const Q>& q,
                           const attnkit::tensor_view<const K>& k) {
  for (index_t b = 0; b < q.batch(); ++b)
    for (index_t h = 0; h < q.heads(); ++h) {
      const auto fast = attnkit::routing_membership(p, q, k, b, h);
      const auto ref = attnkit::reference::routing_membership(p, q, k, b, h);
      if (fast.queries != ref.queries || fast.keys != ref.keys) return "routing's clusters of b = " + fmt(b) + ", h = " + fmt(h);
    }
  return {};
}
/// HiP scores blocks by raw dot products: with integer q and k of magnitude <= 10 they are
/// exact in float, so its choice must equal the reference's, ties included.
template <class Policy>
constexpr bool exact_on_integers = std::is_same_v<Policy, attnkit::hip>;

/// The element-type and layout part of one attention run: decodes views, lse, options,
/// aliasing and values, then runs the fast path, the reference and (for determinism) the fast
/// path on one thread, and checks the outcomes.
template <class Policy, class Q, class K, class V, class O>
void run_typed(fuzz_case& c, const Policy& p, const problem& pb) {
  reader& r = c.r;
  c.note(std::string("types: q ") + type_name<Q>() + ", k " + type_name<K>() + ", v " + type_name<V>() + ", out " +
         type_name<O>());
  static const char* const names[4] = {"q", "k", "v", "out"};
  const std::size_t esizes[4] = {sizeof(Q), sizeof(K), sizeof(V), sizeof(O)};
  std::array<vspec, 4> vs;
  for (int t = 0; t < 4; ++t) {
    vspec& v = vs[static_cast<std::size_t>(t)];
    v.name = names[t];
    v.ext = pb.ext[static_cast<std::size_t>(t)];
    v.esize = esizes[t];
    bool dishonest = pb.impossible[static_cast<std::size_t>(t)];
    for (index_t e : v.ext) dishonest = dishonest || e < 0;
    if (dishonest) {
      v.honest = false;
      v.str = wrapped_bhsd_strides(v.ext);
      v.how = pb.via;
      v.layout = "contiguous";
    } else {
      decode_layout(c, v, t, t == 3);
    }
  }

  // lse and options.
  const std::uint64_t rows_u = static_cast<std::uint64_t>(vs[0].ext[0]) * static_cast<std::uint64_t>(vs[0].ext[1]) *
                               static_cast<std::uint64_t>(vs[0].ext[2]);
  const index_t rows = static_cast<index_t>(rows_u);
  bool all_honest = true;
  for (const vspec& v : vs) all_honest = all_honest && v.honest;
  const int lse_mode = static_cast<int>(r.take("lse", 5, 0));  // 0 none, 1 lse, 2 lse + lse_size, 3 wrong lse_size, 4 null + lse_size
  vspec lse;
  lse.name = "lse";
  lse.esize = 4;
  lse.ext = {1, 1, 1, rows};
  lse.str = {0, 0, 0, 1};
  lse.layout = "contiguous [B, Hq, Nq]";
  lse.null = lse_mode == 0 || lse_mode == 4;
  lse.honest = all_honest && rows >= 0 && rows <= (index_t(1) << 20);
  index_t lse_size = -1;
  if (lse_mode == 2) lse_size = rows;
  if (lse_mode == 3) {
    lse_size = static_cast<index_t>(rows_u + 1);
    c.fault("options::lse_size = " + fmt(lse_size) + " != B * Hq * Nq = " + fmt(rows));
  }
  if (lse_mode == 4) {
    lse_size = 1;
    c.fault("options::lse is null but lse_size = 1");
  }
  int threads = static_cast<int>(r.take("threads", 5, 1));
  if (threads == 4) {
    threads = -1;
    c.fault("options::threads = -1");
  }
  const int bf16_way = static_cast<int>(r.take("bf16dot", 3, 0)) - 1;  // -1 by CPU, 0 widen, 1 dot product
  c.note("options: threads " + std::to_string(threads) + ", lse " +
         (lse_mode == 0 ? std::string("none") : lse.null ? std::string("null") : std::string("on")) +
         ", lse_size " + fmt(lse_size) + ", bf16dot choice " + std::to_string(bf16_way));

  // Memory plan: a region per honest non-empty view, then the aliasing.
  memory mem;
  for (vspec& v : vs) {
    if (v.null) continue;
    if (!v.honest || v.empty()) {
      v.region = mem.add(64);
      v.offset = 0;
      continue;
    }
    v.region = mem.add(v.span_bytes());
    v.offset = -v.min_off * static_cast<std::ptrdiff_t>(v.esize);
  }
  if (!lse.null) {
    lse.min_off = 0;
    lse.max_off = lse.honest ? rows - 1 : -1;
    lse.region = mem.add(lse.honest && rows > 0 ? static_cast<std::size_t>(rows) * 4 : 64);
    if (!lse.honest) lse.ext = {1, 1, 1, 0};  // not enumerated
  }
  const int alias = static_cast<int>(r.take("alias", 10, 0));
  const std::ptrdiff_t shift = 4 * static_cast<std::ptrdiff_t>(r.take("alias_shift", 16, 0));
  // share(a, b): b moves into a's region, `at` bytes after a's lowest element.
  auto share = [&](vspec& a, vspec& b, std::ptrdiff_t at) {
    if (a.null || b.null || !a.honest || !b.honest || a.empty() || b.empty()) return false;
    const std::ptrdiff_t a_lo = a.offset + a.min_off * static_cast<std::ptrdiff_t>(a.esize);
    b.region = a.region;
    b.offset = a_lo + at - b.min_off * static_cast<std::ptrdiff_t>(b.esize);
    mem.grow(a.region, static_cast<std::size_t>(a_lo + at) + b.span_bytes());
    return true;
  };
  static const char* const alias_names[10] = {"none", "v in k's memory", "k in q's memory", "out in q's memory",
                                              "out in k's memory", "out in v's memory", "lse in out's memory",
                                              "lse in q's memory", "lse in v's memory", "q, k, v in one buffer"};
  bool aliased = false;
  switch (alias) {
    case 1: aliased = share(vs[1], vs[2], 0); break;
    case 2: aliased = share(vs[0], vs[1], 0); break;
    case 3: aliased = share(vs[0], vs[3], shift); break;
    case 4: aliased = share(vs[1], vs[3], shift); break;
    case 5: aliased = share(vs[2], vs[3], shift); break;
    case 6: aliased = share(vs[3], lse, shift); break;
    case 7: aliased = share(vs[0], lse, shift); break;
    case 8: aliased = share(vs[2], lse, shift); break;
    case 9: aliased = share(vs[0], vs[1], 0) && share(vs[0], vs[2], shift); break;
    default: break;
  }
  if (alias != 0) c.note(std::string("aliasing: ") + alias_names[alias] + (aliased ? "" : " (not applicable)") +
                         ", shift " + std::to_string(shift) + " B");
  for (const vspec& v : vs) c.note(v.describe());
  if (!lse.null) c.note(lse.describe());
  if (mem.total() > max_buffer_bytes) throw skip_input{};

  // Expected outcome: aliasing of the outputs.
  if (all_honest) {
    for (int t = 0; t < 3; ++t) {
      const int s = shared_bytes(vs[3], vs[static_cast<std::size_t>(t)]);
      if (s == 2) c.fault(std::string("out shares memory with ") + names[t]);
      if (s == 1) c.maybe(std::string("out interleaves with ") + names[t] + " without sharing a byte");
    }
    if (!lse.null && lse.honest) {
      for (int t = 0; t < 4; ++t) {
        const int s = shared_bytes(lse, vs[static_cast<std::size_t>(t)]);
        if (s == 2) c.fault(std::string("lse shares memory with ") + names[t]);
        if (s == 1) c.maybe(std::string("lse interleaves with ") + names[t] + " without sharing a byte");
      }
    }
  }
  // Work budget.
  const double heads_rows = std::max(0.0, double(pb.ext[0][0])) * std::max(0.0, double(pb.ext[0][1]));
  const double nq = std::max(0.0, double(pb.ext[0][2])), nk = std::max(0.0, double(pb.ext[1][2]));
  const double per_pair = c.lf.work_per_pair > 0 ? c.lf.work_per_pair
                                                 : std::max(0.0, double(pb.ext[0][3])) + std::max(0.0, double(pb.ext[2][3]));
  const double work = heads_rows * (nq * nk * per_pair + (nq + nk) * c.lf.work_per_token);
  if (all_honest && work > max_reference_work) throw skip_input{};
  if (c.nested && all_honest &&
      double(pb.ext[0][0]) * double(pb.ext[0][1]) * double(pb.ext[0][2]) * double(pb.ext[1][2]) > max_nested_keep_calls)
    throw skip_input{};

  // Values.
  static const double extremes[13] = {1, 0, -1, 0.5, 10, 1e20, -1e20, 3e38, -3e38, 1e38, 65504, 1e-44, 2.5};
  static const char* const mode_names[9] = {"U(-1,1)", "U(-10,10)", "integers -3..3", "constant X", "extremes",
                                            "U(-1,1) with NaN/inf", "+X / -X halves along seq", "U(-4,4)",
                                            "U(-1,1), one token = X"};
  static const char* const vals_names[3] = {"vals_q", "vals_k", "vals_v"};
  static const char* const x_names[3] = {"x_q", "x_k", "x_v"};
  int modes[3];
  double xs[3];
  for (int t = 0; t < 3; ++t) {
    modes[t] = static_cast<int>(r.take(vals_names[t], 9, 0));
    xs[t] = pick(r, x_names[t], extremes, 0);
  }
  std::uint64_t seed = r.take("seed", 0, 1);
  c.note(std::string("values: q ") + mode_names[modes[0]] + " X=" + fmt(xs[0]) + "; k " + mode_names[modes[1]] +
         " X=" + fmt(xs[1]) + "; v " + mode_names[modes[2]] + " X=" + fmt(xs[2]) + "; seed " + std::to_string(seed));
  if (c.dry_run) return;

  mem.allocate(0xA5);  // the sentinel: out and lse must keep it on error
  fill_values(vs[0], mem, etype_of<Q>(), modes[0], xs[0], seed);
  fill_values(vs[1], mem, etype_of<K>(), modes[1], xs[1], seed);
  fill_values(vs[2], mem, etype_of<V>(), modes[2], xs[2], seed);
  const memory initial = mem.clone();
  const value_stats qs = stats_of(vs[0], initial, etype_of<Q>()), ks = stats_of(vs[1], initial, etype_of<K>()),
                    vst = stats_of(vs[2], initial, etype_of<V>());

  // Which result check applies.
  const logit_facts& lf = c.lf;
  const index_t D = pb.ext[0][3];
  const double scale_eff = lf.scale != 0 ? std::fabs(double(lf.scale)) : 1.0 / std::sqrt(double(std::max<index_t>(D, 1)));
  const double smax = scale_eff * qs.row_abs_sum * ks.max_abs;  // bound on |scale q.k|
  const bool finite_in = qs.finite && ks.finite && vst.finite;
  const bool valid = c.faults.empty() && c.unsure.empty();
  const bool moderate_in = finite_in && qs.max_abs <= 10 && ks.max_abs <= 10 && vst.max_abs <= 10;
  const bool features_moderate = finite_in && qs.max_abs <= lf.feature_input_max && ks.max_abs <= lf.feature_input_max &&
                                 vst.max_abs <= lf.feature_value_max;
  const bool tight = valid && (lf.feature_sums ? features_moderate
                                               : moderate_in && scale_eff <= 8 && (!lf.alibi || lf.slope_max <= 8));
  const bool ties = valid && finite_in && qs.constant && ks.constant && !lf.alibi_nonzero && !lf.score && !lf.feature_sums &&
                   !lf.inexact_ties;
  const bool alibi_dominant = valid && finite_in && lf.alibi && lf.slopes_equal && std::fabs(lf.slope_value) >= 1e30 &&
                              qs.max_abs <= 10 && ks.max_abs <= 10 && scale_eff <= 8;
  const bool nan_check = valid && finite_in && !(lf.score && smax > 1e37);
  c.regime = tight ? "tight comparison with the reference"
             : ties ? "exact ties (q and k constant): comparison with the reference"
             : alibi_dominant ? "one ALiBi slope >= 1e30 dominates: comparison with the reference"
             : nan_check ? "finite inputs: no NaN" : "none (outcome only)";
  const double n_keys = double(std::max<index_t>(pb.ext[1][2], 1));
  const double dist = double(std::max<index_t>(pb.ext[0][2], 0)) + n_keys;
  double ds = smax * (double(D) + 8) * 0x1p-24 + 1e-6;  // logit error of the float path
  if (lf.cap > 0) ds += 2e-6 * std::min(lf.cap, smax);
  if (lf.alibi && !alibi_dominant) ds += lf.slope_max * dist * 0x1p-22;
  ds += lf.score_add * 0x1p-22;
  const double vmax = vst.max_abs;
  const bool bf16_path = std::is_same_v<Q, bf16> && std::is_same_v<K, bf16> && std::is_same_v<V, bf16>;
  double out_atol = 0, out_rtol = out_rel<O>(), lse_atol = 0, lse_rtol = 2e-6;
  if (tight) {
    out_atol = 2e-5 * (1 + vmax) + 2.5 * ds * vmax;
    lse_atol = 1e-4 + 2 * ds;
  } else {
    out_atol = 2e-4 * vmax + 2e-5;
    lse_atol = 1e-4 + 2 * (alibi_dominant ? ds : smax * (double(D) + 8) * 0x1p-23);
    lse_rtol = 1e-5;
  }
  if (lf.feature_sums && tight) out_atol = lf.feature_tol * (1 + vmax), lse_atol = 10 * lf.feature_tol, lse_rtol = 1e-5;
  if (bf16_path) out_atol += 8e-3 * vmax, lse_atol += 8e-3;
  if (std::is_same_v<O, f16>) out_atol += 1e-7;
  out_atol = out_atol * lf.out_gain + lf.out_extra * (1 + vmax);

  // The runs.
  auto call = [&](const memory& m, bool reference, int nthreads) {
    return capture([&] {
      auto q = make_view<Q>(vs[0], m);
      auto k = make_view<K>(vs[1], m);
      auto v = make_view<V>(vs[2], m);
      auto out = make_view<O>(vs[3], m);
      attnkit::options o;
      o.lse = lse.null ? nullptr : reinterpret_cast<float*>(m.at(lse.region, lse.offset));
      o.threads = nthreads;
      o.lse_size = lse_size;
      if (reference) {
        attnkit::reference::attention(p, q, k, v, out, o);
      } else {
#if defined(__AVX512BF16__)
        struct restore {
          ~restore() { attnkit::detail::simd::bf16dot::choice() = -1; }
        } restore_choice;
        attnkit::detail::simd::bf16dot::choice() = bf16_way;
#endif
        attnkit::attention(p, q, k, v, out, o);
      }
    });
  };
  auto nested_failures = [&](const char* which) {
    if (c.cb && c.cb->failures.load() != 0) {
      std::lock_guard<std::mutex> lock(c.cb->mutex);
      report(c, std::string("a callback's nested attention call failed (") + which + "): " + c.cb->first_failure);
    }
  };
  memory fast = initial.clone();
  const outcome fa = call(fast, false, threads);
  nested_failures("fast path");
  memory ref = initial.clone();
  const outcome fr = call(ref, true, threads);
  nested_failures("reference");

  if (verbose())
    std::printf("  %s: fast path %s%s, reference %s; check: %s\n", c.policy.c_str(), kind_name(fa.kind),
                fa.kind == outcome::error ? (" (" + fa.what + ")").c_str() : "", kind_name(fr.kind), c.regime.c_str());
  if (fa.kind == outcome::other) report(c, "the fast path threw " + fa.what);
  if (fr.kind == outcome::other) report(c, "the reference threw " + fr.what);
  if (fa.kind == outcome::thrown && !c.throws) report(c, "the fast path threw fuzz_thrown, but no callback throws");
  if (fr.kind == outcome::error) {
    const std::string where = first_difference(initial, ref);
    if (!where.empty()) report(c, "the reference threw attnkit::error (" + fr.what + ") after writing (" + where + ")");
  }
  if (fa.kind == outcome::error) {
    const std::string where = first_difference(initial, fast);
    if (!where.empty()) report(c, "attnkit::error (" + fa.what + ") thrown after writing memory (" + where + ")");
    if (valid) report(c, "rejected a valid input: " + fa.what);
    if (fr.kind != outcome::error)
      report(c, "the fast path rejects (" + fa.what + "), the reference gives " + kind_name(fr.kind));
    return;
  }
  if (!c.faults.empty())
    report(c, std::string("accepted an invalid input (fast path: ") + kind_name(fa.kind) + ", reference: " +
                  kind_name(fr.kind) + (fr.kind == outcome::error ? " " + fr.what : std::string()) + ")");
  if (fr.kind == outcome::error)
    report(c, std::string("the fast path gives ") + kind_name(fa.kind) + ", the reference rejects: " + fr.what);

  writable_mask wm;
  wm.add(initial, vs[3]);
  if (!lse.null) wm.add(initial, lse);
  {
    const std::string where = wm.first_change(initial, fast);
    if (!where.empty()) report(c, std::string("the fast path (") + kind_name(fa.kind) + ") wrote outside out and lse (" + where + ")");
    const std::string where_ref = wm.first_change(initial, ref);
    if (!where_ref.empty() && fr.kind == outcome::ok) report(c, "the reference wrote outside out and lse (" + where_ref + ")");
  }
  if (fa.kind != outcome::ok) return;  // the callback's exception: out and lse may be partly written

  // Results.
  bool compare = fr.kind == outcome::ok && (tight || ties || alibi_dominant);
  if (compare) {
    const std::string differ = choices_differ(p, attnkit::tensor_view<const Q>(make_view<Q>(vs[0], initial)),
                                              attnkit::tensor_view<const K>(make_view<K>(vs[1], initial)));
    if (!differ.empty()) {
      if (exact_on_integers<Policy> && tight && qs.integral && ks.integral)
        report(c, "exact scores, yet the fast path and the reference choose different keys: " + differ);
      compare = false;
      c.regime = "a near tie chosen differently by float and double (" + differ + "): finite inputs: no NaN";
    }
  }
  const std::string bad_out = check_results(vs[3], etype_of<O>(), fast, ref, nan_check, compare, out_atol, out_rtol,
                                            !tight, type_max<O>());
  if (!bad_out.empty()) report(c, bad_out);
  if (!lse.null && lse.honest) {
    const std::string bad_lse = check_results(lse, etype::f32, fast, ref, nan_check, compare, lse_atol, lse_rtol, !tight,
                                              double(flt_max));
    if (!bad_lse.empty()) report(c, bad_lse);
  }
  // Bitwise the same on one thread.
  if (threads != 1 && !c.throws) {
    memory one = initial.clone();
    const outcome f1 = call(one, false, 1);
    nested_failures("fast path, one thread");
    if (f1.kind != outcome::ok) report(c, std::string("threads = 1 gives ") + kind_name(f1.kind) + " " + f1.what);
    const std::string where = first_difference(fast, one);
    if (!where.empty())
      report(c, "threads = " + std::to_string(threads) + " and threads = 1 differ (" + where + ")");
  }
}

/// dense_mask(p, nq, nk) (decision "dense_mask", taken last so that older inputs decode as
/// before): the problem's own lengths must work for a valid policy; (2^64 + 2) / 3 x 3 and
/// 2^32 x 2^32 must throw attnkit::error (contract: nq * nk overflowing, or nq, nk > 2^31 - 1).
template <class Policy>
void check_dense_mask(fuzz_case& c, const Policy& p, index_t nq, index_t nk) {
  const int mode = static_cast<int>(c.r.take("dense_mask", 4, 0));
  if (mode == 0 || c.dry_run) return;
  if (mode == 2) nq = third_of_2_64, nk = 3;
  if (mode == 3) nq = nk = pow2_32;
  if (mode == 1 && (nq < 0 || nk < 0 || double(nq) * double(nk) > (c.nested ? 4096.0 : double(1 << 22)))) return;
  const outcome o = capture([&] {
    const std::vector<std::uint8_t> m = attnkit::dense_mask(p, nq, nk);
    if (static_cast<index_t>(m.size()) != nq * nk) throw std::logic_error("dense_mask returned " + std::to_string(m.size()) + " bytes");
  });
  const std::string call = "dense_mask(policy, " + fmt(nq) + ", " + fmt(nk) + ")";
  if (o.kind == outcome::other) report(c, call + " threw " + o.what);
  if (mode >= 2 && o.kind != outcome::error) report(c, call + " gave " + kind_name(o.kind) + ", expected attnkit::error");
  if (mode == 1 && c.faults.empty() && o.kind == outcome::error) report(c, call + " rejected a valid policy: " + o.what);
}

/// Dispatches a policy to the element types its table lists (decision "types").
enum class type_set { softmax, float_only, float_bf16, float_f16 };

template <class Policy>
void run_types(fuzz_case& c, const Policy& p, const problem& pb, type_set set) {
  switch (set) {
    case type_set::softmax:
      switch (c.r.take("types", 4, 0)) {
        case 1: return run_typed<Policy, bf16, bf16, bf16, bf16>(c, p, pb);
        case 2: return run_typed<Policy, f16, f16, f16, f16>(c, p, pb);
        case 3: return run_typed<Policy, float, bf16, f16, float>(c, p, pb);
        default: return run_typed<Policy, float, float, float, float>(c, p, pb);
      }
    case type_set::float_bf16:
      if (c.r.take("types", 2, 0) == 1) return run_typed<Policy, bf16, bf16, bf16, bf16>(c, p, pb);
      return run_typed<Policy, float, float, float, float>(c, p, pb);
    case type_set::float_f16:
      if (c.r.take("types", 2, 0) == 1) return run_typed<Policy, f16, f16, f16, float>(c, p, pb);
      return run_typed<Policy, float, float, float, float>(c, p, pb);
    default:
      (void)c.r.take("types", 1, 0);
      return run_typed<Policy, float, float, float, float>(c, p, pb);
  }
}

/// Runs a decoded policy: the attention call (run_typed), then dense_mask.
template <class Policy>
void run_policy(fuzz_case& c, const Policy& p, const problem& pb, type_set set) {
  run_types(c, p, pb, set);
  check_dense_mask(c, p, pb.ext[0][2], pb.ext[1][2]);
}

// ---------------------------------------------------------------------------------------------
// The policy decoders: each decodes its policy's fields and a problem, then calls run_policy.
// A policy added to the library joins by one such function and one row of the table in
// fuzz_attention.cpp.

void decode_softmax(fuzz_case& c);
void decode_neighborhood1(fuzz_case& c);
void decode_neighborhood2(fuzz_case& c);
void decode_neighborhood3(fuzz_case& c);
void decode_power(fuzz_case& c);
void decode_radial(fuzz_case& c);
void decode_custom(fuzz_case& c);
void decode_merge_states(fuzz_case& c);
void decode_hip(fuzz_case& c);
void decode_routing(fuzz_case& c);
void decode_linear(fuzz_case& c);
void decode_kernelized_rpe(fuzz_case& c);
void decode_probabilistic(fuzz_case& c);
void decode_softplus(fuzz_case& c);
void decode_affine_scaled(fuzz_case& c);
void decode_gaussian_adaptive(fuzz_case& c);
void decode_local_linear(fuzz_case& c);

/// Decodes and runs one case; false when the input is skipped (an unused policy slot, or over
/// the harness's budget).
bool run_case(fuzz_case& c);
/// Decodes and checks one input (every finding goes through report()).
void check_input(const std::uint8_t* data, std::size_t size);

}  // namespace attnkit_fuzz
