/// \file
/// tensor_view: a non-owning strided view with logical axes [batch, heads, seq, dim].
#pragma once

#include <array>
#include <type_traits>

#include "checked.hpp"
#include "config.hpp"
#include "types.hpp"

namespace attnkit {

/// Logical axes of every view.
enum axis : int { batch_axis = 0, heads_axis = 1, seq_axis = 2, dim_axis = 3 };

/// A view of a 4-D tensor [batch, heads, seq, dim] with element strides (any layout).
/// `tensor_view<const T>` is read-only; a `tensor_view<T>` converts to it implicitly.
template <class T, class Space = host>
class tensor_view {
 public:
  using element_type = T;
  using value_type = std::remove_const_t<T>;
  using space = Space;

  tensor_view() = default;
  tensor_view(T* data, const std::array<index_t, 4>& extents, const std::array<index_t, 4>& strides)
      : data_(data) {
    for (int a = 0; a < 4; ++a) extents_[a] = extents[static_cast<std::size_t>(a)], strides_[a] = strides[static_cast<std::size_t>(a)];
  }

  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  ATTNKIT_HOST_DEVICE tensor_view(const tensor_view<U, Space>& other)  // NOLINT: const conversion
      : data_(other.data()) {
    for (int a = 0; a < 4; ++a) extents_[a] = other.extent(a), strides_[a] = other.stride(a);
  }

  ATTNKIT_HOST_DEVICE T* data() const { return data_; }
  ATTNKIT_HOST_DEVICE index_t batch() const { return extents_[batch_axis]; }
  ATTNKIT_HOST_DEVICE index_t heads() const { return extents_[heads_axis]; }
  ATTNKIT_HOST_DEVICE index_t seq() const { return extents_[seq_axis]; }
  ATTNKIT_HOST_DEVICE index_t dim() const { return extents_[dim_axis]; }
  ATTNKIT_HOST_DEVICE index_t extent(int a) const { return extents_[a]; }
  ATTNKIT_HOST_DEVICE index_t stride(int a) const { return strides_[a]; }
  std::array<index_t, 4> extents() const { return {extents_[0], extents_[1], extents_[2], extents_[3]}; }
  std::array<index_t, 4> strides() const { return {strides_[0], strides_[1], strides_[2], strides_[3]}; }
  /// Elements viewed; attention() checks that this product fits in index_t before using it.
  ATTNKIT_HOST_DEVICE index_t size() const { return batch() * heads() * seq() * dim(); }
  ATTNKIT_HOST_DEVICE bool empty() const { return batch() == 0 || heads() == 0 || seq() == 0 || dim() == 0; }

  ATTNKIT_HOST_DEVICE index_t offset(index_t b, index_t h, index_t s, index_t d) const {
    return b * strides_[0] + h * strides_[1] + s * strides_[2] + d * strides_[3];
  }
  ATTNKIT_HOST_DEVICE T& operator()(index_t b, index_t h, index_t s, index_t d) const {
    return data_[offset(b, h, s, d)];
  }
  /// Pointer to element (b, h, s, 0): the start of one token's vector.
  ATTNKIT_HOST_DEVICE T* row(index_t b, index_t h, index_t s) const { return data_ + offset(b, h, s, 0); }

 private:
  T* data_ = nullptr;
  index_t extents_[4] = {};  // plain arrays: readable from device code without std::array
  index_t strides_[4] = {};
};

namespace detail {
/// Strides of a contiguous layout whose axes, slowest first, are `order` (logical axis
/// numbers): each stride is the product of the faster extents, checked for overflow.
inline std::array<index_t, 4> contiguous_strides(const char* maker, const std::array<index_t, 4>& extents,
                                                 const std::array<int, 4>& order) {
  std::array<index_t, 4> strides{};
  index_t stride = 1;
  for (int i = 3; i >= 0; --i) {
    const int a = order[static_cast<std::size_t>(i)];
    strides[static_cast<std::size_t>(a)] = stride;
    if (i > 0)
      stride = checked_mul(stride, extents[static_cast<std::size_t>(a)], maker, ": the stride of axis ",
                           order[static_cast<std::size_t>(i - 1)], " (", stride, " * ",
                           extents[static_cast<std::size_t>(a)], ")");
  }
  return strides;
}
}  // namespace detail

/// Contiguous [batch, heads, seq, dim] (PyTorch's usual layout for attention).
template <class T>
tensor_view<T> view_bhsd(T* p, index_t batch, index_t heads, index_t seq, index_t dim) {
  return tensor_view<T>(p, {batch, heads, seq, dim}, detail::contiguous_strides("view_bhsd", {batch, heads, seq, dim}, {0, 1, 2, 3}));
}

/// Contiguous [batch, seq, heads, dim] (FlashAttention's layout).
template <class T>
tensor_view<T> view_bshd(T* p, index_t batch, index_t seq, index_t heads, index_t dim) {
  return tensor_view<T>(p, {batch, heads, seq, dim}, detail::contiguous_strides("view_bshd", {batch, heads, seq, dim}, {0, 2, 1, 3}));
}

/// The same views over device memory.
template <class T>
tensor_view<T, cuda> view_bhsd_cuda(T* p, index_t batch, index_t heads, index_t seq, index_t dim) {
  return tensor_view<T, cuda>(p, {batch, heads, seq, dim},
                              detail::contiguous_strides("view_bhsd_cuda", {batch, heads, seq, dim}, {0, 1, 2, 3}));
}
template <class T>
tensor_view<T, cuda> view_bshd_cuda(T* p, index_t batch, index_t seq, index_t heads, index_t dim) {
  return tensor_view<T, cuda>(p, {batch, heads, seq, dim},
                              detail::contiguous_strides("view_bshd_cuda", {batch, heads, seq, dim}, {0, 2, 1, 3}));
}

}  // namespace attnkit
