/// \file
/// Per-thread scratch memory: grown outside the hot loops, reused across calls.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <deque>
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

/// Scratch memory of one work item: the calling thread's arena for the current nesting level.
/// A lease holds its arena until it ends; an attention() call made meanwhile on the same
/// thread (from a user callback) leases the next level's arena, so it never reuses or frees
/// the memory its caller is working in.
class scratch_lease {
 public:
  scratch_lease() : level_(depth()++) {
    std::deque<arena>& levels = arenas();
    while (levels.size() <= level_) levels.emplace_back();  // a deque: arenas never move
    arena_ = &levels[level_];
  }
  ~scratch_lease() { --depth(); }
  scratch_lease(const scratch_lease&) = delete;
  scratch_lease& operator=(const scratch_lease&) = delete;

  /// `bytes` of 64-byte aligned memory, valid until the lease ends or reserves again.
  void* reserve(std::size_t bytes) { return arena_->reserve(bytes); }

 private:
  // Kept per thread between calls, so repeated calls reuse their pages.
  static std::size_t& depth() {
    thread_local std::size_t level = 0;
    return level;
  }
  static std::deque<arena>& arenas() {
    thread_local std::deque<arena> levels;
    return levels;
  }
  std::size_t level_;
  arena* arena_;
};

}  // namespace attnkit::detail
