/// \file
/// Helpers shared by the sparse-variant tests (neighborhood, power, radial, custom): comparing
/// two float64 results, the generic float64 masked softmax over a dense mask, checks of empty
/// rows and of rejected policies.
#pragma once

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "test_helpers.hpp"

namespace attnkit_test {

/// Row i of a dense mask as a sorted key list.
inline std::vector<index_t> mask_row(const std::vector<std::uint8_t>& mask, index_t nk, index_t i) {
  std::vector<index_t> keys;
  for (index_t j = 0; j < nk; ++j)
    if (mask[static_cast<std::size_t>(i * nk + j)]) keys.push_back(j);
  return keys;
}

/// Two float64 results of the same math (possibly summed in another order) agree to ~1e-6.
inline void check_same_math(const result<float>& got, const result<float>& want) {
  const auto [ok, msg] = compare_out(got.out, want.out, 1e-6, 1e-6);
  INFO(msg);
  CHECK(ok);
  const index_t rows = got.out.ext[0] * got.out.ext[1] * got.out.ext[2];
  const auto [okl, msgl] = compare_lse(got.lse_mem, want.lse_mem, rows, 1e-6, 1e-6);
  INFO(msgl);
  CHECK(okl);
}

/// The generic float64 masked softmax (reference/masked.hpp) over the keys of a dense mask.
template <class T>
result<float> masked_reference(const std::vector<std::uint8_t>& mask, float scale, const qkv<T>& in) {
  problem s{in.q.ext[0], in.q.ext[1], in.k.ext[1], in.q.ext[2], in.k.ext[2], in.q.ext[3], in.v.ext[3]};
  result<float> r = make_result<float>(s, layout::bhsd);
  attnkit::options o;
  o.lse = r.lse_ptr();
  const index_t nk = s.Nk;
  attnkit::reference::detail::run_masked(
      scale, [&](index_t, index_t, index_t i, index_t j) { return mask[static_cast<std::size_t>(i * nk + j)] != 0; },
      attnkit::reference::detail::keep_score{}, in.q.cview(), in.k.cview(), in.v.cview(), r.out.view, o);
  return r;
}

/// Rows for which is_empty(b, h, i) holds are zeros with lse -inf; the others have a finite lse.
template <class O, class F>
void check_empty_rows(const result<O>& r, F&& is_empty) {
  const auto& e = r.out.ext;
  index_t wrong = 0, empty = 0;
  std::string first;
  for (index_t b = 0; b < e[0]; ++b)
    for (index_t h = 0; h < e[1]; ++h)
      for (index_t i = 0; i < e[2]; ++i) {
        const float lse = r.lse((b * e[1] + h) * e[2] + i);
        bool ok = std::isfinite(lse);
        if (is_empty(b, h, i)) {
          ++empty;
          ok = lse == -std::numeric_limits<float>::infinity();
          for (index_t d = 0; d < e[3]; ++d) ok = ok && r.out.get(b, h, i, d) == 0.f;
        }
        if (!ok && wrong++ == 0) first = "b=" + std::to_string(b) + " h=" + std::to_string(h) + " i=" + std::to_string(i);
      }
  INFO("rows with the wrong emptiness: " << wrong << ", first " << first);
  CHECK(wrong == 0);
  CHECK(empty > 0);
}

/// attention (Fast) or reference::attention of p on fresh random inputs of shape s throws
/// attnkit::error mentioning `what`, and leaves out and lse untouched.
template <bool Fast, class P>
void check_rejected(const P& p, const problem& s, const std::string& what, std::mt19937& gen) {
  const auto in = random_qkv<float>(s, gen);
  auto out = output_tensor<float>(s.o_ext(), layout::bhsd);
  const auto before = out;
  std::vector<float> lse(static_cast<std::size_t>(s.rows()), -777.f);
  const auto lse_before = lse;
  attnkit::options o;
  o.lse = lse.data();
  auto call = [&] {
    if constexpr (Fast)
      attnkit::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view, o);
    else
      attnkit::reference::attention(p, in.q.cview(), in.k.cview(), in.v.cview(), out.view, o);
  };
  CHECK_THROWS_AS(call(), attnkit::error);
  CHECK_THROWS_WITH(call(), Catch::Contains(what));
  CHECK(same_bits(before, out));
  CHECK(same_bits(lse_before, lse));
}

}  // namespace attnkit_test
