/// \file
/// Fuzz decoder of attnkit::make_custom: a keep predicate, an optional score transform and an
/// optional block predicate from a small family (tests/fuzz/harness.hpp, struct callbacks),
/// including callbacks that call attnkit::attention (re-entrancy) and callbacks that throw.
#include "harness.hpp"

namespace attnkit_fuzz {

void decode_custom(fuzz_case& c) {
  reader& r = c.r;
  static const char* const keep_names[10] = {"all", "causal", "modular", "none", "band", "prefix LM", "per head",
                                             "nested attention", "throws", "documents"};
  static const char* const score_names[9] = {"none", "identity", "affine", "tanh cap 20", "-inf on a pattern",
                                             "distance bias", "nested attention", "throws", "all -inf"};
  static const char* const block_names[5] = {"none", "exact", "always partial", "nested attention + exact",
                                             "throws + exact"};
  // Not movable (atomics, mutex): the lambdas below keep a pointer to it.
  const auto cb = std::make_unique<callbacks>();
  cb->keep = static_cast<int>(r.take("keep", 10, 0));
  const int score = static_cast<int>(r.take("score", 9, 0));
  const int block = static_cast<int>(r.take("block", 5, 0));
  cb->score = score - 1;
  cb->block = block - 1;
  cb->param = static_cast<index_t>(r.take("cb_param", 17, 4));
  cb->mod = 1 + static_cast<index_t>(r.take("cb_mod", 5, 2));
  cb->rem = static_cast<index_t>(r.take("cb_rem", 5, 0)) % cb->mod;
  cb->inner_threads = static_cast<int>(r.take("inner_threads", 4, 1));
  const float scale = decode_scale(c);
  const problem pb = decode_problem(c, {});
  cb->nq = pb.ext[0][2];
  cb->nk = pb.ext[1][2];
  c.cb = cb.get();
  c.throws = cb->keep == 8 || cb->score == 6 || cb->block == 3;
  c.nested = cb->keep == 7 || cb->score == 5 || cb->block == 2;
  c.lf.scale = scale;
  c.lf.score = cb->score >= 1;
  const double span = double(std::max<index_t>(cb->nq, 0) + std::max<index_t>(cb->nk, 0));
  c.lf.score_add = cb->score == 1 ? 0.5 : cb->score == 2 ? 20 : cb->score == 4 ? 0.0625 * span : cb->score == 5 ? span / 128 : 0;
  c.policy = std::string("custom{keep=") + keep_names[cb->keep] + ", score=" + score_names[score] +
             ", block=" + block_names[block] + ", param=" + fmt(cb->param) + ", mod=" + fmt(cb->mod) +
             ", rem=" + fmt(cb->rem) + ", inner threads=" + std::to_string(cb->inner_threads) +
             ", scale=" + fmt(double(scale)) + "}";

  const callbacks* k = cb.get();
  auto keep = [k](index_t b, index_t h, index_t i, index_t j) { return k->keep_fn(b, h, i, j); };
  if (score == 0 && block == 0) {
    run_policy(c, attnkit::make_custom(keep, scale), pb, type_set::float_only);
    return;
  }
  // One type for every other combination: "no score" and "no block predicate" are then the
  // identity and "partial" at run time.
  auto score_fn = [k](auto s, index_t b, index_t h, index_t i, index_t j) {
    return k->score < 0 ? s : k->score_fn(s, b, h, i, j);
  };
  auto block_fn = [k](index_t b, index_t h, index_t q0, index_t q1, index_t k0, index_t k1) {
    return k->block < 0 ? attnkit::block_kind::partial : k->block_fn(b, h, q0, q1, k0, k1);
  };
  run_policy(c, attnkit::make_custom(keep, score_fn, block_fn, scale), pb, type_set::float_f16);
}

}  // namespace attnkit_fuzz
