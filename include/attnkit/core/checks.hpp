/// \file
/// Shape and pointer checks shared by attention() and reference::attention().
#pragma once

#include <type_traits>

#include "error.hpp"
#include "options.hpp"
#include "tensor_view.hpp"

namespace attnkit::detail {

template <class T, class Space>
void check_view(const char* name, const tensor_view<T, Space>& t) {
  for (int a = 0; a < 4; ++a)
    require(t.extent(a) >= 0, "attention: ", name, " extent(", a, ") = ", t.extent(a), ", expected >= 0");
  require(t.data() != nullptr || t.empty(), "attention: ", name,
          " has null data with a non-zero size ", t.size());
}

/// q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], out [B, Hq, Nq, Dv], Hq % Hkv == 0.
template <class Q, class K, class V, class O, class Space>
void check_shapes(const tensor_view<Q, Space>& q, const tensor_view<K, Space>& k,
                  const tensor_view<V, Space>& v, const tensor_view<O, Space>& out, const options& o) {
  static_assert(is_element_v<Q> && is_element_v<K> && is_element_v<V> && is_element_v<O>,
                "attnkit: q, k, v and out must hold float, bf16 or f16");
  static_assert(!std::is_const_v<O>, "attnkit: out must be a view of writable (non-const) elements");
  check_view("q", q);
  check_view("k", k);
  check_view("v", v);
  check_view("out", out);
  require(k.batch() == q.batch(), "attention: k.batch() = ", k.batch(), ", expected q.batch() = ", q.batch());
  require(v.batch() == q.batch(), "attention: v.batch() = ", v.batch(), ", expected q.batch() = ", q.batch());
  require(out.batch() == q.batch(), "attention: out.batch() = ", out.batch(), ", expected q.batch() = ",
          q.batch());
  require(q.dim() >= 1, "attention: q.dim() = ", q.dim(), ", expected >= 1");
  require(v.dim() >= 1, "attention: v.dim() = ", v.dim(), ", expected >= 1");
  require(k.dim() == q.dim(), "attention: k.dim() = ", k.dim(), ", expected q.dim() = ", q.dim());
  require(k.heads() >= 1, "attention: k.heads() = ", k.heads(), ", expected >= 1");
  require(q.heads() >= 1, "attention: q.heads() = ", q.heads(), ", expected >= 1");
  require(v.heads() == k.heads(), "attention: v.heads() = ", v.heads(), ", expected k.heads() = ", k.heads());
  require(q.heads() % k.heads() == 0, "attention: q.heads() = ", q.heads(),
          ", expected a multiple of k.heads() = ", k.heads());
  require(v.seq() == k.seq(), "attention: v.seq() = ", v.seq(), ", expected k.seq() = ", k.seq());
  require(out.heads() == q.heads(), "attention: out.heads() = ", out.heads(), ", expected q.heads() = ",
          q.heads());
  require(out.seq() == q.seq(), "attention: out.seq() = ", out.seq(), ", expected q.seq() = ", q.seq());
  require(out.dim() == v.dim(), "attention: out.dim() = ", out.dim(), ", expected v.dim() = ", v.dim());
  const index_t rows = q.batch() * q.heads() * q.seq();
  require(o.lse_size < 0 || o.lse_size == rows, "attention: options::lse_size = ", o.lse_size,
          ", expected batch * q.heads() * q.seq() = ", rows);
  require(o.lse != nullptr || o.lse_size <= 0, "attention: options::lse is null but lse_size = ", o.lse_size);
  require(o.threads >= 0, "attention: options::threads = ", o.threads, ", expected >= 0");
}

}  // namespace attnkit::detail
