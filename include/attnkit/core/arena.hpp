/// \file
/// Per-thread scratch memory: grown outside the hot loops, reused across calls.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace attnkit::detail {

/// A 64-byte aligned buffer owned by one thread. `reserve` may allocate; pointers taken from
/// it stay valid until the next `reserve` that grows it.
class arena {
 public:
  arena() = default;
  arena(const arena&) = delete;
  arena& operator=(const arena&) = delete;
  ~arena() { std::free(data_); }

  void* reserve(std::size_t bytes) {
    if (bytes > capacity_) {
      const std::size_t rounded = (bytes + 4095) & ~std::size_t(4095);
      void* p = std::aligned_alloc(64, rounded);
      if (p == nullptr) throw std::bad_alloc();
      std::free(data_);
      data_ = p;
      capacity_ = rounded;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  std::size_t capacity_ = 0;
};

/// The calling thread's arena.
inline arena& thread_arena() {
  thread_local arena a;
  return a;
}

}  // namespace attnkit::detail
