// attnkit mask gallery: draws which keys each query attends to, one PNG per pattern.
//
// Usage: mask_gallery [output-dir]        (default: the current directory)
//
// Every picture comes from attnkit::dense_mask(policy, nq, nk): the row-major nq x nk byte
// mask (1 = query i attends to key j), i.e. the pattern's definition that the kernels are
// tested against. Two views:
//   - whole matrix (1-D patterns): row i = query i, column j = key j; kept = dark blue,
//     masked = white; light lines at block boundaries, darker lines at frames / documents.
//   - per query (2-D / 3-D neighborhoods): the token grid, drawn once per chosen query; the
//     query is orange, its keys dark blue, and an orange dot marks every other query that
//     attends to exactly the same keys (windows shifted at the borders, GNA stride groups).
// The images use a handful of flat colours, which PNG compresses to a few KB each.
//
// Needs stb_image_write (Debian/Ubuntu: libstb-dev). Standalone build:
//   g++ -std=c++17 -O2 -I include examples/mask_gallery.cpp -o mask_gallery
#include <attnkit/attention.hpp>
#include <attnkit/variants/custom.hpp>
#include <attnkit/variants/hip.hpp>
#include <attnkit/variants/neighborhood.hpp>
#include <attnkit/variants/power.hpp>
#include <attnkit/variants/probabilistic.hpp>
#include <attnkit/variants/radial.hpp>
#include <attnkit/variants/routing.hpp>
#include <attnkit/variants/softmax.hpp>

// stb is C written for -Wall; -Wextra flags its partial struct initialisers when the header is
// not found in a system include directory (CMake adds it as SYSTEM; a plain -I does not).
#define STB_IMAGE_WRITE_IMPLEMENTATION
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <vector>

namespace {

using attnkit::index_t;
using mask_t = std::vector<std::uint8_t>;

struct rgb {
  std::uint8_t r, g, b;
};

constexpr rgb kWhite{255, 255, 255};      // masked pair / background
constexpr rgb kKept{31, 58, 107};         // kept pair / key of the drawn query
constexpr rgb kBlockLine{214, 219, 227};  // block boundaries (and grid cells)
constexpr rgb kGroupLine{140, 150, 165};  // frame / document / global-token boundaries
constexpr rgb kFrame{90, 90, 90};         // outline of a panel
constexpr rgb kQuery{235, 120, 20};       // the query of a per-query panel

// An RGB image with the few operations the painters need, saved with stb_image_write.
struct image {
  int width, height;
  std::vector<std::uint8_t> pixels;  // row-major, 3 bytes per pixel

  image(int w, int h, rgb background = kWhite)
      : width(w), height(h), pixels(static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * 3) {
    fill(0, 0, w, h, background);
  }

  void put(int x, int y, rgb c) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;  // painters may overhang; clip
    std::uint8_t* p = &pixels[at(x, y)];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }

  void fill(int x, int y, int w, int h, rgb c) {
    for (int yy = y; yy < y + h; ++yy)
      for (int xx = x; xx < x + w; ++xx) put(xx, yy, c);
  }

  void outline(rgb c) {
    fill(0, 0, width, 1, c), fill(0, height - 1, width, 1, c);
    fill(0, 0, 1, height, c), fill(width - 1, 0, 1, height, c);
  }

  void paste(const image& src, int x0, int y0) {
    for (int y = 0; y < src.height; ++y)
      for (int x = 0; x < src.width; ++x) {
        const std::uint8_t* p = &src.pixels[src.at(x, y)];
        put(x0 + x, y0 + y, rgb{p[0], p[1], p[2]});
      }
  }

  std::size_t at(int x, int y) const {  // index of pixel (x, y)'s red byte
    return (static_cast<std::size_t>(y) * static_cast<std::size_t>(width) + static_cast<std::size_t>(x)) * 3;
  }

  bool save(const std::string& path) const {
    return stbi_write_png(path.c_str(), width, height, 3, pixels.data(), width * 3) != 0;
  }
};

// Panels side by side, top-aligned, with a white gap between them.
image side_by_side(const std::vector<image>& panels, int gap = 16) {
  int width = 0, height = 0;
  for (const image& p : panels) width += p.width + gap, height = std::max(height, p.height);
  image out(std::max(width - gap, 1), std::max(height, 1));
  int x = 0;
  for (const image& p : panels) out.paste(p, x, 0), x += p.width + gap;
  return out;
}

// Token indices step, 2 * step, ... below n: where the blocks of a blocked pattern start.
std::vector<index_t> every(index_t step, index_t n) {
  std::vector<index_t> at;
  for (index_t t = step; t < n; t += step) at.push_back(t);
  return at;
}

// Whole-matrix view. Small matrices are scaled up with nearest neighbour (each cell a square of
// up to 8 px) and large ones kept near 1024 px. Boundary lines are drawn before the cells, so
// they show through the masked area only and never hide a kept pair.
image paint_matrix(const mask_t& mask, index_t nq, index_t nk, const std::vector<index_t>& block_lines = {},
                   const std::vector<index_t>& group_lines = {}) {
  const int cell = std::clamp(static_cast<int>(1024 / std::max<index_t>({nq, nk, 1})), 1, 8);
  const int w = static_cast<int>(nk) * cell, h = static_cast<int>(nq) * cell;
  image img(w + 2, h + 2);  // + a 1-px outline; cell (i, j) starts at pixel (1 + j * cell, 1 + i * cell)
  auto lines = [&](const std::vector<index_t>& at, rgb c) {
    for (index_t t : at) {
      const int p = 1 + static_cast<int>(t) * cell;
      if (t < nk) img.fill(p, 1, 1, h, c);
      if (t < nq) img.fill(1, p, w, 1, c);
    }
  };
  lines(block_lines, kBlockLine);
  lines(group_lines, kGroupLine);
  for (index_t i = 0; i < nq; ++i)
    for (index_t j = 0; j < nk; ++j)
      if (mask[static_cast<std::size_t>(i * nk + j)])
        img.fill(1 + static_cast<int>(j) * cell, 1 + static_cast<int>(i) * cell, cell, cell, kKept);
  img.outline(kFrame);
  return img;
}

template <class Policy>
image matrix_view(const Policy& policy, index_t n, const std::vector<index_t>& block_lines = {},
                  const std::vector<index_t>& group_lines = {}) {
  return paint_matrix(attnkit::dense_mask(policy, n, n), n, n, block_lines, group_lines);
}

// Attention weights of an n x n self-attention (row-major), each cell shaded from white (0) to
// the kept colour (the row's largest weight), so that soft masks show their gradation.
image paint_weights(const std::vector<float>& weights, index_t n) {
  const int cell = std::clamp(static_cast<int>(512 / std::max<index_t>(n, 1)), 1, 8);
  image img(static_cast<int>(n) * cell + 2, static_cast<int>(n) * cell + 2);
  for (index_t i = 0; i < n; ++i) {
    const float* row = weights.data() + i * n;
    const float top = *std::max_element(row, row + n);
    for (index_t j = 0; j < n; ++j) {
      const float t = top > 0 ? row[j] / top : 0.f;
      const auto mix = [&](std::uint8_t to) { return static_cast<std::uint8_t>(std::lround(255.f + t * (float(to) - 255.f))); };
      img.fill(1 + static_cast<int>(j) * cell, 1 + static_cast<int>(i) * cell, cell, cell, rgb{mix(kKept.r), mix(kKept.g), mix(kKept.b)});
    }
  }
  img.outline(kFrame);
  return img;
}

// Per-query view of one 2-D slice of a token grid (an n-token self-attention mask): the slice's
// tokens are first + r * cols + c. Cells are separated by 1-px grid lines so they can be counted.
image paint_grid(const mask_t& mask, index_t n, index_t query, index_t first, index_t rows, index_t cols) {
  const auto row = [&](index_t t) { return mask.begin() + t * n; };
  const int pitch = std::max(6, static_cast<int>(240 / cols)), dot = pitch / 4;
  image img(static_cast<int>(cols) * pitch + 1, static_cast<int>(rows) * pitch + 1, kBlockLine);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const index_t t = first + r * cols + c;
      const int x = static_cast<int>(c) * pitch + 1, y = static_cast<int>(r) * pitch + 1;
      const bool key = mask[static_cast<std::size_t>(query * n + t)] != 0;
      img.fill(x, y, pitch - 1, pitch - 1, t == query ? kQuery : key ? kKept : kWhite);
      // Another query with exactly this key set: its row of the mask equals the query's row.
      if (t != query && std::equal(row(t), row(t) + n, row(query)))
        img.fill(x + dot, y + dot, pitch - 1 - 2 * dot, pitch - 1 - 2 * dot, kQuery);
    }
  img.outline(kFrame);
  return img;
}

// One per-query panel of a 2-D neighborhood: the whole grid for the query at (r, c).
image grid_view(const attnkit::neighborhood<2>& p, index_t r, index_t c) {
  const index_t n = p.shape[0] * p.shape[1];
  return paint_grid(attnkit::dense_mask(p, n, n), n, r * p.shape[1] + c, 0, p.shape[0], p.shape[1]);
}

attnkit::neighborhood<1> na1d(index_t n, index_t kernel) {
  attnkit::neighborhood<1> p;
  p.shape = {n};
  p.kernel = {kernel};
  return p;
}

attnkit::neighborhood<2> na2d(index_t rows, index_t cols, index_t kernel) {
  attnkit::neighborhood<2> p;
  p.shape = {rows, cols};
  p.kernel = {kernel, kernel};
  return p;
}

/// Rows of a [1, 1, n, d] tensor with local structure, as real sequences have: a slow random
/// walk along the sequence (neighbours correlated 0.97) plus `jumps` topic changes.
std::vector<float> walk(index_t n, index_t d, std::mt19937& gen, int jumps = 0) {
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<std::size_t>(n * d));
  const float rho = 0.97f, fresh = std::sqrt(1 - rho * rho);
  for (index_t i = 0; i < n; ++i)
    for (index_t c = 0; c < d; ++c) {
      const bool restart = i == 0 || (jumps > 0 && i % (n / (jumps + 1)) == 0);
      float& v = x[static_cast<std::size_t>(i * d + c)];
      v = restart ? normal(gen) : rho * x[static_cast<std::size_t>((i - 1) * d + c)] + fresh * normal(gen);
    }
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  const std::filesystem::path dir = argc > 1 ? argv[1] : ".";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);  // a failure shows up as a failed save below

  int failures = 0;
  auto save = [&](const image& img, const char* name) {
    const std::string path = (dir / name).string();
    if (img.save(path)) {
      std::printf("%s\n", path.c_str());
    } else {
      std::fprintf(stderr, "mask_gallery: cannot write %s\n", path.c_str());
      ++failures;
    }
  };

  try {
    // ---- Softmax: the dense baseline, causal with a sliding window of 16 keys (15 + itself).
    {
      attnkit::softmax p;
      p.causal = true;
      p.window_left = 15;
      save(matrix_view(p, 64), "softmax_causal_window.png");
    }

    // ---- 1-D neighborhood, N = 64, kernel 9: every query sees exactly 9 keys; the window
    // shifts inward at the borders instead of shrinking.
    {
      save(matrix_view(na1d(64, 9), 64), "neighborhood_1d.png");

      auto dilated = na1d(64, 9);  // every 2nd token: 9 keys spread over 17 positions
      dilated.dilation = {2};
      save(matrix_view(dilated, 64), "neighborhood_1d_dilation2.png");

      auto strided = na1d(64, 9);  // GNA: each group of 3 queries shares one window
      strided.stride = {3};
      save(matrix_view(strided, 64, every(3, 64)), "neighborhood_1d_stride3.png");

      auto causal = na1d(64, 9);  // the query and the 8 keys before it
      causal.causal = {true};
      save(matrix_view(causal, 64), "neighborhood_1d_causal.png");
    }

    // ---- PowerAttention: local window of W blocks, sink blocks, and blocks at power-of-two
    // block distances.
    {
      attnkit::power p;  // paper defaults W = 5, S = 1, causal; small blocks to fit 32 of them
      p.block_size = 8;
      save(matrix_view(p, 256, every(8, 256)), "power_block8.png");

      attnkit::power t;  // token level: query p sees p, p-1, p-2, p-4, p-8, ...
      t.block_size = 1;
      t.window_blocks = 1;
      t.sink_blocks = 0;
      save(matrix_view(t, 64), "power_token.png");
    }

    // ---- Radial attention (token mode, the paper's rule): 16 frames of 16 tokens, then 8
    // global (e.g. text) tokens. Frame pairs at distance 0-1 are dense and the diagonal band
    // halves each time the distance doubles (half-width 7, 3, 1 at distances 2-3, 4-7, 8-15);
    // frame 0 is the sink; global tokens see and are seen by everything.
    {
      attnkit::radial p;
      p.frames = 16;
      p.tokens_per_frame = 16;
      const index_t n = 16 * 16 + 8;
      save(matrix_view(p, n, {}, every(16, n)), "radial_token.png");
    }
    // The released block mask (official_blocks): bands coarsened to 16 x 16 tiles. Its frame
    // thinning uses a literal 128-token threshold, so frames need >= 128 tokens for frame
    // pairs at distance >= 1 to survive at all (with 64 only the diagonal frames and the sink
    // remain); 8 frames of 128 keep distances 0, 1, 2 and 4.
    {
      attnkit::radial p;
      p.frames = 8;
      p.tokens_per_frame = 128;
      p.mode = attnkit::radial::mode_kind::official_blocks;
      p.block_size = 16;
      save(matrix_view(p, 8 * 128, every(16, 8 * 128), every(128, 8 * 128)), "radial_official_blocks.png");
    }

    // ---- Custom masks from a keep(batch, head, query, key) predicate (FlexAttention style).
    {
      // Prefix LM: the first 24 tokens (the prompt) attend bidirectionally, the rest causally.
      const index_t prefix = 24;
      auto prefix_lm = attnkit::make_custom(
          [=](index_t, index_t, index_t qi, index_t kj) { return kj < prefix || kj <= qi; });
      save(matrix_view(prefix_lm, 64, {}, {prefix}), "custom_prefix_lm.png");

      // Packed documents: causal attention that never crosses a document boundary.
      const std::vector<index_t> starts = {20, 32};  // documents [0, 20), [20, 32), [32, 64)
      auto doc = [starts](index_t t) { return std::upper_bound(starts.begin(), starts.end(), t) - starts.begin(); };
      auto documents = attnkit::make_custom(
          [doc](index_t, index_t, index_t qi, index_t kj) { return kj <= qi && doc(kj) == doc(qi); });
      save(matrix_view(documents, 64, {}, starts), "custom_documents.png");
    }

    // ---- 2-D neighborhood on a 24 x 24 grid, 7 x 7 window: a center, a corner and an edge
    // query. Border windows shift inward, so the corner query shares its window with its
    // neighbours (the dots).
    {
      const auto p = na2d(24, 24, 7);
      save(side_by_side({grid_view(p, 12, 12), grid_view(p, 0, 0), grid_view(p, 12, 0)}), "neighborhood_2d.png");
    }
    // Options, each for the center query: dilation 2, GNA stride 2 (a 2 x 2 group of queries
    // shares one window, which is therefore not centred on every member), causal on both axes.
    {
      auto dilated = na2d(24, 24, 7);
      dilated.dilation = {2, 2};
      auto strided = na2d(24, 24, 7);
      strided.stride = {2, 2};
      auto causal = na2d(24, 24, 7);
      causal.causal = {true, true};
      save(side_by_side({grid_view(dilated, 12, 12), grid_view(strided, 12, 12), grid_view(causal, 12, 12)}),
           "neighborhood_2d_options.png");
    }

    // ---- 3-D neighborhood (e.g. video: time x height x width) on a 4 x 12 x 12 grid with a
    // 3 x 5 x 5 window, drawn as its 4 time slices for one query in slice 2.
    {
      attnkit::neighborhood<3> p;
      p.shape = {4, 12, 12};
      p.kernel = {3, 5, 5};
      const index_t n = 4 * 12 * 12, plane = 12 * 12;
      const index_t query = 2 * plane + 3 * 12 + 7;  // slice 2, row 3, column 7
      const mask_t mask = attnkit::dense_mask(p, n, n);
      std::vector<image> slices;
      for (index_t t = 0; t < p.shape[0]; ++t) slices.push_back(paint_grid(mask, n, query, t * plane, 12, 12));
      save(side_by_side(slices), "neighborhood_3d.png");
    }

    // ---- HiP picks its keys from q and k: here, sequences of 256 tokens with local structure
    // and three topic changes; top_k 32 (16 blocks of 2) per block of 16 queries, 4 sink
    // tokens and a window of 16, causal. Each query block's picks cluster where its scores
    // are high: recent tokens, and earlier tokens of similar content.
    {
      std::mt19937 gen(7);
      const index_t n = 256, d = 16;
      const std::vector<float> q = walk(n, d, gen, 3), k = walk(n, d, gen, 3);
      attnkit::hip p;
      p.top_k = 32, p.block_q = 16, p.block_k = 2, p.sink = 4, p.window = 16;
      const mask_t mask = attnkit::dense_mask(p, attnkit::view_bhsd(q.data(), 1, 1, n, d),
                                              attnkit::view_bhsd(k.data(), 1, 1, n, d));
      save(paint_matrix(mask, n, n, every(16, n), every(n / 4, n)), "hip_selected.png");
    }

    // ---- Routing: 96 tokens drawn around 4 topics, 4 centroids from kmeans_init, balanced
    // clusters of 24. Left: the pairs in token order; right: the same pairs with queries and
    // keys listed cluster by cluster (block diagonal; a token in several clusters repeats).
    {
      std::mt19937 gen(3);
      std::normal_distribution<float> normal;
      const index_t n = 96, d = 16, clusters = 4;
      std::vector<float> topics(static_cast<std::size_t>(clusters * d)), x(static_cast<std::size_t>(n * d));
      for (float& t : topics) t = normal(gen);
      for (index_t i = 0; i < n; ++i) {
        const index_t topic = static_cast<index_t>(gen() % clusters);
        for (index_t c = 0; c < d; ++c)
          x[static_cast<std::size_t>(i * d + c)] = topics[static_cast<std::size_t>(topic * d + c)] + 0.4f * normal(gen);
      }
      const auto view = attnkit::view_bhsd(x.data(), 1, 1, n, d);  // shared q = k, as the paper's models
      attnkit::routing p;
      p.num_clusters = clusters;
      std::vector<float> mu(static_cast<std::size_t>(clusters * d));
      const std::vector<float> vectors = attnkit::routing_vectors(p, view, view, 0);
      attnkit::kmeans_init(mu.data(), vectors.data(), static_cast<index_t>(vectors.size()) / d, d, clusters, 1);
      p.centroids = mu.data();
      const attnkit::routing_clusters rc = attnkit::routing_membership(p, view, view, 0, 0);
      mask_t by_token(static_cast<std::size_t>(n * n), 0);
      std::vector<index_t> rows, cols, row_lines, col_lines;
      for (std::size_t c = 0; c < rc.queries.size(); ++c) {
        for (const index_t i : rc.queries[c])
          for (const index_t j : rc.keys[c]) by_token[static_cast<std::size_t>(i * n + j)] = 1;
        rows.insert(rows.end(), rc.queries[c].begin(), rc.queries[c].end());
        cols.insert(cols.end(), rc.keys[c].begin(), rc.keys[c].end());
        row_lines.push_back(static_cast<index_t>(rows.size()));
      }
      const index_t nr = static_cast<index_t>(rows.size()), nc = static_cast<index_t>(cols.size());
      mask_t by_cluster(static_cast<std::size_t>(nr * nc), 0);
      index_t r0 = 0, c0 = 0;
      for (std::size_t c = 0; c < rc.queries.size(); ++c) {
        const index_t qn = static_cast<index_t>(rc.queries[c].size()), kn = static_cast<index_t>(rc.keys[c].size());
        for (index_t i = 0; i < qn; ++i)
          for (index_t j = 0; j < kn; ++j) by_cluster[static_cast<std::size_t>((r0 + i) * nc + c0 + j)] = 1;
        r0 += qn, c0 += kn;
      }
      row_lines.pop_back();
      save(side_by_side({paint_matrix(by_token, n, n), paint_matrix(by_cluster, nr, nc, {}, row_lines)}),
           "routing_clusters.png");
    }

    // ---- Probabilistic attention (Zonkey): 64 tokens whose existence fades over the last
    // third (end-of-segment probability rising from 0 to 1/2), with equal scores so that the
    // weights show the mask alone. zonkey_ratio (left): a key after the query weighs
    // P(key exists | query exists) = p_j / p_i, so tokens that exist for sure see the fade and
    // fading tokens see their own tail at full weight; key_logprob (right): every key weighs p_j.
    {
      const index_t n = 64;
      std::vector<float> end_prob(static_cast<std::size_t>(n), 0.f);
      for (index_t t = 2 * n / 3; t < n; ++t) end_prob[static_cast<std::size_t>(t)] = 0.5f * float(t - 2 * n / 3) / float(n / 3);
      const std::vector<float> p = attnkit::existence_from_continue(end_prob.data(), 1, n);
      const std::vector<float> zeros(static_cast<std::size_t>(n), 0.f);
      std::vector<float> identity(static_cast<std::size_t>(n * n), 0.f), weights(identity.size());
      for (index_t j = 0; j < n; ++j) identity[static_cast<std::size_t>(j * n + j)] = 1.f;
      std::vector<image> panels;
      for (const auto mode : {attnkit::probabilistic::mode_kind::zonkey_ratio, attnkit::probabilistic::mode_kind::key_logprob}) {
        attnkit::probabilistic policy;
        policy.key_prob = p.data();
        policy.mode = mode;
        // q = k = 0 (every score 0) and v = I: row i of the output is query i's weights.
        attnkit::attention(policy, attnkit::view_bhsd(zeros.data(), 1, 1, n, 1), attnkit::view_bhsd(zeros.data(), 1, 1, n, 1),
                           attnkit::view_bhsd(identity.data(), 1, 1, n, n), attnkit::view_bhsd(weights.data(), 1, 1, n, n));
        panels.push_back(paint_weights(weights, n));
      }
      save(side_by_side(panels), "probabilistic_fade.png");
    }
  } catch (const attnkit::error& e) {
    std::fprintf(stderr, "mask_gallery: %s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
