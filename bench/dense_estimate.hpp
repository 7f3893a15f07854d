/// \file
/// Dense softmax attention's time at sizes too long to run whole in a benchmark: the
/// reference line of the sparse and sub-quadratic benchmarks (bench_content, bench_linear).
#pragma once

#include <cstdint>

#include <attnkit/attnkit.hpp>

#include "bench_common.hpp"

namespace attnkit_bench {

/// Rows of the dense sample when the whole is too long.
constexpr std::int64_t kDenseRows = 1024;

/// Seconds of dense attention over all of q's rows: measured whole up to 32768 (causal) or
/// 8192 rows. Above, it is timed on the last kDenseRows query rows over all keys (every row of
/// non-causal attention costs the same) and scaled to the N rows, or to the N (N + 1) / 2
/// pairs of causal attention at that non-causal rate (which flatters dense: its causal tiles
/// run slower than full ones). Sets the counter dense_estimated (1 when scaled).
inline double dense_seconds(benchmark::State& state, const attnkit::tensor_view<float>& q,
                            const attnkit::tensor_view<float>& k, const attnkit::tensor_view<float>& v, float* out,
                            bool causal) {
  const std::int64_t n = q.seq(), nk = k.seq();
  attnkit::softmax dense;
  if (n <= (causal ? 32768 : 8192)) {
    dense.causal = causal;
    const auto o = attnkit::view_bhsd(out, q.batch(), q.heads(), n, v.dim());
    const auto t0 = clock_type::now();
    attnkit::attention(dense, q, k, v, o);
    state.counters["dense_estimated"] = 0;
    return seconds_since(t0);
  }
  const attnkit::tensor_view<float> last(q.row(0, 0, n - kDenseRows), {q.batch(), q.heads(), kDenseRows, q.dim()},
                                         q.strides());
  const auto o = attnkit::view_bhsd(out, q.batch(), q.heads(), kDenseRows, v.dim());
  const auto t0 = clock_type::now();
  attnkit::attention(dense, last, k, v, o);  // non-causal: each row over all keys
  const double rows = causal ? static_cast<double>(n) * static_cast<double>(n + 1) / 2 / static_cast<double>(nk)
                             : static_cast<double>(n);
  state.counters["dense_estimated"] = 1;
  return seconds_since(t0) * rows / kDenseRows;
}

}  // namespace attnkit_bench
