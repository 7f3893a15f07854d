/// \file
/// Per-call options shared by every variant.
#pragma once

#include "config.hpp"

namespace attnkit {

struct options {
  /// Optional output: natural-log log-sum-exp per (batch, query head, query), contiguous
  /// [B, Hq, Nq]; -inf for a query that attends to nothing.
  float* lse = nullptr;
  /// Worker threads: 0 uses every hardware thread, 1 runs on the calling thread.
  int threads = 0;
  /// Elements behind `lse`, checked against B*Hq*Nq when >= 0; -1 trusts the caller.
  index_t lse_size = -1;
};

}  // namespace attnkit
