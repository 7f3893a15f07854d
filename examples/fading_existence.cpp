// attnkit example: variable-length sequences whose tails fade out (Zonkey's existence
// probabilities, attnkit::probabilistic) instead of ending at a hard EOS token.
//
// A batch of two sequences of 96 token slots. Each slot carries the probability p that it
// exists, made from per-position "a new segment begins here" probabilities b with
// attnkit::existence_from_continue (p_t = prod_{1 <= s <= t} (1 - b_s), so p_0 = 1).
//
// 1. Hard ends (b = 1 at position 40 of sequence 0 and 72 of sequence 1, so p is 1 then 0):
//    probabilistic attention equals softmax attention with padding masks (key_lens and
//    query_lens), bit for bit up to float rounding. The program prints the difference and
//    exits with status 1 if it exceeds 1e-6.
// 2. Soft ends (b rising smoothly near the same positions): the tail fades out gradually.
//    For the first token, the program prints how much attention goes to the slots past the
//    hard end, and how the last tokens' outputs move as their own existence fades.
#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using attnkit::index_t;

constexpr index_t B = 2, H = 4, N = 96, D = 64;
constexpr index_t ends[B] = {40, 72};  // tokens that exist in each sequence (hard case)

std::vector<float> run(const attnkit::probabilistic& p, const std::vector<float>& q, const std::vector<float>& k,
                       const std::vector<float>& v) {
  std::vector<float> out(q.size());
  attnkit::attention(p, attnkit::view_bhsd(q.data(), B, H, N, D), attnkit::view_bhsd(k.data(), B, H, N, D),
                     attnkit::view_bhsd(v.data(), B, H, N, D), attnkit::view_bhsd(out.data(), B, H, N, D));
  return out;
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> q(static_cast<std::size_t>(B * H * N * D)), k(q.size()), v(q.size());
  for (float& x : q) x = normal(rng);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);

  // ---- 1. Hard ends: existence 1 up to the end, 0 after.
  std::vector<float> begin_hard(static_cast<std::size_t>(B * N), 0.f);
  for (index_t b = 0; b < B; ++b) begin_hard[static_cast<std::size_t>(b * N + ends[b])] = 1.f;  // the first missing slot
  const std::vector<float> p_hard = attnkit::existence_from_continue(begin_hard.data(), B, N, /*clamp=*/false);

  attnkit::probabilistic fade;
  fade.key_prob = p_hard.data();  // self-attention: the queries' probabilities are the keys'
  const std::vector<float> out_hard = run(fade, q, k, v);

  attnkit::softmax padded;
  const std::int32_t lens[B] = {static_cast<std::int32_t>(ends[0]), static_cast<std::int32_t>(ends[1])};
  padded.key_lens = lens, padded.query_lens = lens;
  std::vector<float> out_padded(q.size());
  attnkit::attention(padded, attnkit::view_bhsd(q.data(), B, H, N, D), attnkit::view_bhsd(k.data(), B, H, N, D),
                     attnkit::view_bhsd(v.data(), B, H, N, D), attnkit::view_bhsd(out_padded.data(), B, H, N, D));
  double diff = 0;
  for (std::size_t e = 0; e < out_hard.size(); ++e) diff = std::max(diff, std::fabs(double(out_hard[e]) - out_padded[e]));
  std::printf("existence 0/1 vs padding masks (lengths %ld, %ld): max |difference| = %.3g\n", long(ends[0]),
              long(ends[1]), diff);

  // ---- 2. Soft ends: the end-of-segment probability rises over 16 slots around each end.
  std::vector<float> begin_soft(static_cast<std::size_t>(B * N), 0.f);
  for (index_t b = 0; b < B; ++b)
    for (index_t t = ends[b] - 8; t < std::min(N, ends[b] + 8); ++t)
      begin_soft[static_cast<std::size_t>(b * N + t)] = 0.5f * float(t - (ends[b] - 8) + 1) / 16.f;
  const std::vector<float> p_soft = attnkit::existence_from_continue(begin_soft.data(), B, N);
  fade.key_prob = p_soft.data();
  const std::vector<float> out_soft = run(fade, q, k, v);

  std::printf("\nsoft ends: existence of slots end-8 .. end+7\n");
  for (index_t b = 0; b < B; ++b) {
    std::printf("  sequence %ld:", long(b));
    for (index_t t = ends[b] - 8; t < std::min(N, ends[b] + 8); ++t) std::printf(" %.2f", p_soft[static_cast<std::size_t>(b * N + t)]);
    std::printf("\n");
  }
  // Attention mass of query 0 (head 0) on the slots past the hard end: its weights, read off
  // by attending with values = one-hot slot indicators (Dv = N).
  std::vector<float> onehot(static_cast<std::size_t>(B * H * N * N), 0.f), weights(static_cast<std::size_t>(B * H * N * N));
  for (index_t bh = 0; bh < B * H; ++bh)
    for (index_t j = 0; j < N; ++j) onehot[static_cast<std::size_t>((bh * N + j) * N + j)] = 1.f;
  attnkit::attention(fade, attnkit::view_bhsd(q.data(), B, H, N, D), attnkit::view_bhsd(k.data(), B, H, N, D),
                     attnkit::view_bhsd(onehot.data(), B, H, N, N), attnkit::view_bhsd(weights.data(), B, H, N, N));
  for (index_t b = 0; b < B; ++b) {
    const float* w = weights.data() + (b * H * N + 0) * N;  // head 0, query 0
    double past = 0;
    for (index_t j = ends[b]; j < N; ++j) past += w[j];
    std::printf("  sequence %ld: query 0 gives %.4f of its attention to the %ld slots past position %ld (hard end: 0)\n",
                long(b), past, long(N - ends[b]), long(ends[b] - 1));
  }
  double moved = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < ends[b] - 8; ++i)
        for (index_t c = 0; c < D; ++c) {
          const auto e = static_cast<std::size_t>(((b * H + h) * N + i) * D + c);
          moved = std::max(moved, std::fabs(double(out_soft[e]) - out_hard[e]));
        }
  std::printf("  outputs of tokens before the fade moved by at most %.3g from the hard-end result\n", moved);
  return diff <= 1e-6 ? 0 : 1;
}
