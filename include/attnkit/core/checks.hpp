/// \file
/// Shape, size, pointer and aliasing checks shared by attention() and reference::attention():
/// everything a caller passes is checked here, with overflow-safe arithmetic, before anything
/// is written.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "checked.hpp"
#include "error.hpp"
#include "options.hpp"
#include "tensor_view.hpp"

namespace attnkit::detail {

/// Longest q or k sequence: positions inside a tile are 32-bit.
inline constexpr index_t max_sequence = std::numeric_limits<std::int32_t>::max();
/// Largest head dimension (D or Dv): each worker's scratch holds a few tiles of it.
inline constexpr index_t max_head_dim = 65536;
/// Most bytes one view may span: the largest user address space of any 64-bit system
/// (57-bit virtual addresses) is half of 2^57. A larger view cannot point to real memory.
inline constexpr index_t max_view_bytes = index_t(1) << 56;

/// Largest magnitude of a multiplier of scores (scale, softcap, ALiBi slopes): times log2(e),
/// the engine's base-2 units, it stays finite.
inline constexpr float max_multiplier = 0x1p127f;

/// Checks `scale`, the multiplier of q.k every policy has: 0 (1/sqrt(D)) or finite with
/// 2^-126 <= |scale| <= 2^127. Below 2^-126, scale * log2(e) (the engines' base-2 units) is a
/// subnormal float with a few bits left: scale 1e-44 put lse 1% off the reference.
inline void validate_scale(const char* policy, float scale) {
  require(scale == 0 || (std::isfinite(scale) && std::fabs(scale) >= 0x1p-126f && std::fabs(scale) <= max_multiplier),
          policy, ": scale = ", scale, ", expected 0 (1/sqrt(D)) or a finite value of magnitude in [2^-126, 2^127]");
}

/// Bytes of a dense_mask(p, nq, nk): nq and nk in [0, 2^31 - 1], their product checked.
inline std::size_t mask_elements(index_t nq, index_t nk) {
  require(nq >= 0 && nk >= 0, "dense_mask: nq = ", nq, ", nk = ", nk, ", expected >= 0");
  require(nq <= max_sequence && nk <= max_sequence, "dense_mask: nq = ", nq, ", nk = ", nk,
          ", expected at most 2^31 - 1");
  return static_cast<std::size_t>(checked_mul(nq, nk, "dense_mask: nq * nk = ", nq, " * ", nk));
}

/// The elements of a view as offsets from data(): every element lies in [lowest, highest].
struct element_span {
  index_t lowest = 0, highest = 0;
};

/// The span of a view whose extents and strides are known to fit (check_view passed).
template <class T, class Space>
element_span span_of(const tensor_view<T, Space>& t) {
  element_span s;
  for (int a = 0; a < 4; ++a) {
    const index_t reach = (t.extent(a) - 1) * t.stride(a);
    (reach < 0 ? s.lowest : s.highest) += reach;
  }
  return s;
}

/// Checks that a view's extents are >= 0, that its element count and the byte range it
/// addresses fit in 64 bits and in an address space, and that its data is not null unless
/// it is empty. `fn` and `name` start the messages ("attention", "q").
template <class T, class Space>
void check_view(const char* fn, const char* name, const tensor_view<T, Space>& t) {
  for (int a = 0; a < 4; ++a)
    require(t.extent(a) >= 0, fn, ": ", name, " extent(", a, ") = ", t.extent(a), ", expected >= 0");
  if (t.empty()) return;  // nothing is read or written through an empty view
  index_t count = 1;
  for (int a = 0; a < 4; ++a)
    count = checked_mul(count, t.extent(a), fn, ": ", name, "'s element count (batch * heads * seq * dim = ",
                        t.batch(), " * ", t.heads(), " * ", t.seq(), " * ", t.dim(), ")");
  require(t.data() != nullptr, fn, ": ", name, " has null data with a non-zero size ", count);
  index_t lowest = 0, highest = 0;
  for (int a = 0; a < 4; ++a) {
    const index_t reach = checked_mul(t.extent(a) - 1, t.stride(a), fn, ": ", name, "'s extent(", a, ") - 1 = ",
                                      t.extent(a) - 1, " times stride(", a, ") = ", t.stride(a));
    if (reach < 0)
      lowest = checked_add(lowest, reach, fn, ": ", name, "'s lowest element offset");
    else
      highest = checked_add(highest, reach, fn, ": ", name, "'s highest element offset");
  }
  const index_t elements = checked_add(
      checked_add(highest, checked_mul(lowest, -1, fn, ": ", name, "'s address range"), fn, ": ", name,
                  "'s address range"),
      1, fn, ": ", name, "'s address range");
  const index_t bytes = checked_mul(elements, static_cast<index_t>(sizeof(T)), fn, ": ", name, "'s address range");
  require(bytes <= max_view_bytes, fn, ": ", name, " spans ", bytes, " bytes, expected at most 2^56 (no address space holds more)");
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(t.data());
  const std::uintptr_t below = static_cast<std::uintptr_t>(-lowest) * sizeof(T);
  const std::uintptr_t above = static_cast<std::uintptr_t>(highest) * sizeof(T);
  require(address >= below && address <= std::numeric_limits<std::uintptr_t>::max() - above - sizeof(T), fn, ": ",
          name, "'s elements would wrap around the address space");
}

/// The bytes [lo, hi) a checked, non-empty view may touch.
struct byte_range {
  std::uintptr_t lo, hi;
};

template <class T, class Space>
byte_range bytes_of(const tensor_view<T, Space>& t) {
  const element_span s = span_of(t);
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(t.data());
  return {address - static_cast<std::uintptr_t>(-s.lowest) * sizeof(T),
          address + static_cast<std::uintptr_t>(s.highest) * sizeof(T) + sizeof(T)};
}

/// Rows (b, h, s) that the exact aliasing tests enumerate at most; beyond, views whose address
/// ranges intersect are taken to overlap.
inline constexpr index_t max_rows_compared = index_t(1) << 22;

/// The byte range of every row (b, h, s, :) of a checked, non-empty view, or false when it
/// has more rows than max_rows_compared.
template <class T, class Space>
bool row_ranges(const tensor_view<T, Space>& t, std::vector<byte_range>& rows) {
  const index_t n = t.batch() * t.heads() * t.seq();
  if (n > max_rows_compared) return false;
  const index_t reach = (t.dim() - 1) * t.stride(dim_axis);
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(t.data()), size = sizeof(T);
  rows.clear();
  rows.reserve(static_cast<std::size_t>(n));
  for (index_t b = 0; b < t.batch(); ++b)
    for (index_t h = 0; h < t.heads(); ++h)
      for (index_t s = 0; s < t.seq(); ++s) {
        // Unsigned arithmetic wraps like the addresses themselves; the true values are in range.
        const std::uintptr_t start = address + static_cast<std::uintptr_t>(t.offset(b, h, s, 0)) * size;
        const std::uintptr_t lo = start + static_cast<std::uintptr_t>(std::min<index_t>(reach, 0)) * size;
        const std::uintptr_t hi = start + static_cast<std::uintptr_t>(std::max<index_t>(reach, 0)) * size + size;
        rows.push_back({lo, hi});
      }
  return true;
}

/// Can two checked views touch a common byte? Exact when their address ranges are disjoint
/// or their rows are (the usual layouts, including a buffer that interleaves them row by
/// row); conservative (true) when rows themselves interleave element by element.
template <class A, class B, class Space>
bool share_memory(const tensor_view<A, Space>& a, const tensor_view<B, Space>& b) {
  if (a.empty() || b.empty()) return false;
  const byte_range ra = bytes_of(a), rb = bytes_of(b);
  if (ra.hi <= rb.lo || rb.hi <= ra.lo) return false;
  std::vector<byte_range> rows_a, rows_b;
  if (!row_ranges(a, rows_a) || !row_ranges(b, rows_b)) return true;
  std::sort(rows_b.begin(), rows_b.end(), [](const byte_range& x, const byte_range& y) { return x.lo < y.lo; });
  std::vector<std::uintptr_t> reach(rows_b.size());  // furthest hi among rows_b[0..i]
  std::uintptr_t furthest = 0;
  for (std::size_t i = 0; i < rows_b.size(); ++i) reach[i] = furthest = std::max(furthest, rows_b[i].hi);
  for (const byte_range& r : rows_a) {
    // rows of b starting before r ends; one of them reaching past r's start overlaps it
    const auto end = std::lower_bound(rows_b.begin(), rows_b.end(), r.hi,
                                      [](const byte_range& x, std::uintptr_t v) { return x.lo < v; });
    if (end != rows_b.begin() && reach[static_cast<std::size_t>(end - rows_b.begin() - 1)] > r.lo) return true;
  }
  return false;
}

/// Do two elements of a checked view share a byte? Exact for views whose axes, ordered by
/// stride, each step past everything the smaller ones reach (every dense or padded layout),
/// and for views whose rows are disjoint; conservative (true) otherwise.
template <class T, class Space>
bool overlaps_itself(const tensor_view<T, Space>& t) {
  if (t.empty()) return false;
  std::array<std::pair<index_t, index_t>, 4> axes{};  // (|stride|, extent)
  for (int a = 0; a < 4; ++a) {
    if (t.extent(a) == 1) continue;  // an axis of one element adds no address (any stride, INT64_MIN too)
    if (t.stride(a) == 0) return true;
    // check_view bounds (extent - 1) * |stride|, so the magnitude fits
    axes[static_cast<std::size_t>(a)] = {t.stride(a) < 0 ? -t.stride(a) : t.stride(a), t.extent(a)};
  }
  std::sort(axes.begin(), axes.end());
  index_t reach = 0;
  bool nested = true;
  for (const auto& [stride, extent] : axes) {
    if (extent <= 1) continue;
    nested = nested && stride > reach;
    reach += stride * (extent - 1);
  }
  if (nested) return false;
  std::vector<byte_range> rows;  // rows are not self-overlapping (dim stride != 0)
  if (!row_ranges(t, rows)) return true;
  std::sort(rows.begin(), rows.end(), [](const byte_range& x, const byte_range& y) { return x.lo < y.lo; });
  std::uintptr_t furthest = 0;
  for (const byte_range& r : rows) {
    if (r.lo < furthest) return true;
    furthest = std::max(furthest, r.hi);
  }
  return false;
}

/// q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], out [B, Hq, Nq, Dv], Hq % Hkv == 0;
/// out shares no memory with q, k, v or the lse output, nor with itself.
template <class Q, class K, class V, class O, class Space>
void check_shapes(const tensor_view<Q, Space>& q, const tensor_view<K, Space>& k,
                  const tensor_view<V, Space>& v, const tensor_view<O, Space>& out, const options& o) {
  static_assert(is_element_v<Q> && is_element_v<K> && is_element_v<V> && is_element_v<O>,
                "attnkit: q, k, v and out must hold float, bf16 or f16");
  static_assert(!std::is_const_v<O>, "attnkit: out must be a view of writable (non-const) elements");
  check_view("attention", "q", q);
  check_view("attention", "k", k);
  check_view("attention", "v", v);
  check_view("attention", "out", out);
  require(k.batch() == q.batch(), "attention: k.batch() = ", k.batch(), ", expected q.batch() = ", q.batch());
  require(v.batch() == q.batch(), "attention: v.batch() = ", v.batch(), ", expected q.batch() = ", q.batch());
  require(out.batch() == q.batch(), "attention: out.batch() = ", out.batch(), ", expected q.batch() = ",
          q.batch());
  require(q.dim() >= 1, "attention: q.dim() = ", q.dim(), ", expected >= 1");
  require(v.dim() >= 1, "attention: v.dim() = ", v.dim(), ", expected >= 1");
  require(q.dim() <= max_head_dim, "attention: q.dim() = ", q.dim(), ", expected at most ", max_head_dim);
  require(v.dim() <= max_head_dim, "attention: v.dim() = ", v.dim(), ", expected at most ", max_head_dim);
  require(k.dim() == q.dim(), "attention: k.dim() = ", k.dim(), ", expected q.dim() = ", q.dim());
  require(k.heads() >= 1, "attention: k.heads() = ", k.heads(), ", expected >= 1");
  require(q.heads() >= 1, "attention: q.heads() = ", q.heads(), ", expected >= 1");
  require(v.heads() == k.heads(), "attention: v.heads() = ", v.heads(), ", expected k.heads() = ", k.heads());
  require(q.heads() % k.heads() == 0, "attention: q.heads() = ", q.heads(),
          ", expected a multiple of k.heads() = ", k.heads());
  require(q.seq() <= max_sequence, "attention: q.seq() = ", q.seq(), ", expected at most 2^31 - 1");
  require(k.seq() <= max_sequence, "attention: k.seq() = ", k.seq(), ", expected at most 2^31 - 1");
  require(v.seq() == k.seq(), "attention: v.seq() = ", v.seq(), ", expected k.seq() = ", k.seq());
  require(out.heads() == q.heads(), "attention: out.heads() = ", out.heads(), ", expected q.heads() = ",
          q.heads());
  require(out.seq() == q.seq(), "attention: out.seq() = ", out.seq(), ", expected q.seq() = ", q.seq());
  require(out.dim() == v.dim(), "attention: out.dim() = ", out.dim(), ", expected v.dim() = ", v.dim());
  const index_t rows = q.batch() * q.heads() * q.seq();  // q's element count fits, so this does
  require(o.lse_size < 0 || o.lse_size == rows, "attention: options::lse_size = ", o.lse_size,
          ", expected batch * q.heads() * q.seq() = ", rows);
  require(o.lse != nullptr || o.lse_size <= 0, "attention: options::lse is null but lse_size = ", o.lse_size);
  require(o.threads >= 0, "attention: options::threads = ", o.threads, ", expected >= 0");

  // Outputs written while inputs are still being read: no shared memory (not even in place).
  require(!overlaps_itself(out), "attention: out has elements that share memory (a zero or overlapping stride)");
  require(!share_memory(out, q), "attention: out shares memory with q (in-place attention is not supported)");
  require(!share_memory(out, k), "attention: out shares memory with k");
  require(!share_memory(out, v), "attention: out shares memory with v");
  if (o.lse != nullptr && rows > 0) {
    const tensor_view<float, Space> lse(o.lse, {1, 1, 1, rows}, {rows, rows, rows, 1});
    check_view("attention", "options::lse", lse);
    require(!share_memory(lse, out), "attention: options::lse shares memory with out");
    require(!share_memory(lse, q), "attention: options::lse shares memory with q");
    require(!share_memory(lse, k), "attention: options::lse shares memory with k");
    require(!share_memory(lse, v), "attention: options::lse shares memory with v");
  }
}

}  // namespace attnkit::detail
