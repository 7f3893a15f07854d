/// \file
/// The executor: runs `n` independent work items on a small library-owned thread pool
/// (or OpenMP when the consumer links attnkit::openmp). Items never share output, so the
/// results do not depend on which thread ran which item.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "config.hpp"

#if defined(ATTNKIT_USE_OPENMP)
#include <omp.h>
#endif
#if defined(__unix__)
#include <unistd.h>
#endif

namespace attnkit {

/// Hardware threads the library uses when options::threads is 0.
inline int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

namespace detail {

/// Bytes of L2 cache per core, as the C library reports it (1 MiB where it does not). The
/// strip path picks the width of the bands whose key lines it keeps from it.
inline std::size_t l2_cache_bytes() {
  static const std::size_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (reported > 0) return static_cast<std::size_t>(reported);
#endif
    return std::size_t(1) << 20;
  }();
  return bytes;
}

/// One parallel_for call: items are claimed with an atomic counter by the caller and by
/// any pool worker that joins, up to `max_workers` threads in all. The first exception an
/// item throws stops the claiming and is rethrown to the caller.
struct job {
  void (*run)(void* context, index_t item) = nullptr;
  void* context = nullptr;
  index_t items = 0;
  int max_workers = 1;
  std::atomic<index_t> next{0};
  int joined = 1;  // the caller; guarded by the pool mutex
  std::exception_ptr failure;  // guarded by failure_mutex
  std::mutex failure_mutex;

  void drain() {
    for (index_t i = next.fetch_add(1, std::memory_order_relaxed); i < items;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      try {
        run(context, i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
        next.store(items, std::memory_order_relaxed);
      }
    }
  }
};

/// A fixed pool of hardware_threads() - 1 workers. Several user threads may submit jobs at
/// once: each caller also works on its own job, so every job finishes even when the
/// workers are busy elsewhere.
class thread_pool {
 public:
  static thread_pool& instance() {
    static thread_pool pool(hardware_threads() - 1);
    return pool;
  }

  void run(job& j) {
    if (j.max_workers > 1 && !workers_.empty()) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(&j);
      }
      wake_.notify_all();
    }
    j.drain();
    std::unique_lock<std::mutex> lock(mutex_);
    queue_.erase(std::remove(queue_.begin(), queue_.end(), &j), queue_.end());
    done_.wait(lock, [&] { return j.joined == 1; });
    if (j.failure) std::rethrow_exception(j.failure);
  }

  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  ~thread_pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

 private:
  explicit thread_pool(int workers) {
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { work(); });
  }

  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      // Take the job the wake-up condition found: asking again could find none, since the
      // claim counter moves without the mutex.
      job* j = nullptr;
      wake_.wait(lock, [&] { return stopping_ || (j = open_job()) != nullptr; });
      if (stopping_) return;
      ++j->joined;
      lock.unlock();
      j->drain();
      lock.lock();
      --j->joined;
      if (j->joined == 1) done_.notify_all();
    }
  }

  // A queued job that still has items and room for one more thread (mutex held).
  job* open_job() {
    for (job* j : queue_)
      if (j->joined < j->max_workers && j->next.load(std::memory_order_relaxed) < j->items) return j;
    return nullptr;
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::deque<job*> queue_;
  std::vector<std::thread> workers_;
  bool stopping_ = false;
};

/// Threads a call may use: `requested` (0 = all hardware threads), never more than items.
inline int worker_count(int requested, index_t items) {
  const int limit = requested > 0 ? requested : hardware_threads();
  return static_cast<int>(std::max<index_t>(1, std::min<index_t>(limit, items)));
}

/// Runs f(item) for item in [0, items) on up to `threads` threads (0 = all); returns when
/// all are done. Items are claimed dynamically, so expensive items should come first.
template <class F>
void parallel_for(index_t items, int threads, F&& f) {
  if (items <= 0) return;
  const int workers = worker_count(threads, items);
  if (workers == 1) {
    for (index_t i = 0; i < items; ++i) f(i);
    return;
  }
#if defined(ATTNKIT_USE_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(workers)
  for (index_t i = 0; i < items; ++i) f(i);
#else
  using fn_t = std::remove_reference_t<F>;
  job j;
  j.run = [](void* context, index_t i) { (*static_cast<fn_t*>(context))(i); };
  j.context = const_cast<void*>(static_cast<const void*>(&f));
  j.items = items;
  j.max_workers = workers;
  thread_pool::instance().run(j);
#endif
}

}  // namespace detail
}  // namespace attnkit
