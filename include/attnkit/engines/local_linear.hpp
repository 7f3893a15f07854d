/// \file
/// Local linear attention on the CPU (Zuo et al., "Local Linear Attention: An Optimal
/// Interpolation of Linear and Softmax Attention For Test-Time Regression", arXiv 2510.01450;
/// spec/extra_variants.md section 3). Query i fits values on keys by kernel-weighted least
/// squares with weights pi_ij = softmax_j(scale q_i . k_j) over its visible keys and returns the
/// fit at q_i: out_i = nu_i + C_i S_i^+ (q_i - mu_i).
///
/// Moments. Blockwise over key tiles with online-softmax rescaling, every query keeps the running
/// moments of its visible keys in double: sum w, sum w d, sum w e, sum w d d^T (upper blocks
/// only) and sum w e d^T, with d = k - key_ref, e = v - value_ref and w = exp(s - running max).
/// The reference point is the highest-scoring key seen so far (with its value): when a tile
/// raises the running max, the moments are rescaled and moved to the new reference exactly
/// (M' = M - s1 delta^T - delta s1^T + Z delta delta^T). About that point the uncentred moments
/// do not cancel: the covariance's rounding is eps * E|k - key_ref|^2 and the highest-weight key
/// lies within sqrt(n) standard deviations of the weighted mean, so the weighted key covariance
/// keeps its relative accuracy even when the weights are concentrated on one key (where
/// moments about the origin or about a shared tile mean would lose all of it). The products
/// sum_j x_j w_j d_j^T are a register-blocked rank update of the query's moment matrix over the
/// tile's keys (xsimd batches of double). Theta(Nq Nk D (D/2 + Dv)) work, as the spec says.
///
/// Solve. With ridge = 0 (or a ridge below rounding), S is singular whenever the visible keys
/// span fewer than D directions (n_i <= D, n_i = 1, repeated keys). Definition used:
///   out_i = nu_i + C_i S_i^+ (q_i - mu_i),   S^+ the Moore-Penrose pseudo-inverse,
/// where eigenvalues of S at most rank_tolerance * trace(S) count as zero (the rounding of the
/// covariance sits several orders of magnitude below). Why this one: it is the limit
/// ridge -> 0+ of the regularised answer (C annihilates every direction without key variance,
/// so the 1/ridge terms vanish); it makes the output unique when q_i - mu_i leaves the keys'
/// span (no key says how the values change along the rest, which is ignored); with two visible
/// keys it gives the linear interpolation along their segment whatever their weights; and it
/// needs no choice of regularisation the caller did not make. The cut is on eigenvalues, not on
/// pivots: a pivoted Cholesky truncated at the same level keeps a different subspace when the
/// spectrum is spread over many decades (concentrated weights), and the answer depends on it.
/// So: when ridge alone exceeds the tolerance, no eigenvalue can fall below it and S is solved
/// by Cholesky; otherwise S is diagonalised (Householder tridiagonalisation, implicit QL) and
/// x = sum over kept eigenpairs of u (u . r) / lambda. The float64 reference reaches the same
/// S^+ by another route (cyclic Jacobi, the same tolerance).
///
/// lse: log sum_{visible j} exp(scale q_i . k_j), the softmax lse of the kernel logits (-inf when
/// no key is visible). Rows without visible keys get 0.
///
/// Threads run items of (batch, query head, block of queries), heaviest first; each query's
/// result depends only on its own keys and on the global key tiling, so it is bitwise the same
/// for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../core/arena.hpp"
#include "../core/checked.hpp"
#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/executor.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../simd/arch.hpp"
#include "../variants/local_linear.hpp"
#include "../variants/softmax.hpp"

namespace attnkit::detail::local_linear_engine {

using dvec = xsimd::batch<double, simd::wide_arch>;
inline constexpr index_t lanes = static_cast<index_t>(dvec::size);
/// Rows of the moment matrix per register block (broadcast operands).
inline constexpr index_t block_rows = 4;
/// Vectors of columns per register block: 4 x 4 accumulators with 32 registers, 4 x 2 with 16.
inline constexpr int block_vectors = simd::registers<simd::wide_arch> >= 32 ? 4 : 2;
/// Keys per tile: tiles are aligned to multiples of it, the same for every query.
inline constexpr index_t key_tile = 64;
/// Queries per work item, fewer when their moment matrices would not fit in about 2 MiB.
inline constexpr index_t max_block_queries = 8;
inline constexpr std::size_t block_state_bytes = std::size_t(2) << 20;
/// Eigenvalues of S at most this times trace(S) count as zero (variants/local_linear.hpp).
inline constexpr double rank_tolerance = local_linear_rank_tolerance;
/// Largest scratch one work item may ask for (D or Dv in the thousands already need hundreds
/// of MiB: each query holds a (D + Dv) x D moment matrix, the solve two D x D ones).
inline constexpr std::size_t max_item_bytes = std::size_t(1) << 32;

inline constexpr double neg_inf = -std::numeric_limits<double>::infinity();

/// The solve's vectors of dp doubles each (layout::vectors_off).
enum solve_vector : index_t {
  y_vector, eig_vector, off_vector, work_vector, work_vector_2, mean_k_vector, rhs_vector, x_vector, vector_count
};

inline index_t round_up(index_t n, index_t to) { return (n + to - 1) / to * to; }

/// A double rounded to float; magnitudes past float's range become +-inf explicitly (the fit can
/// extrapolate beyond the values it saw, unlike softmax's convex combinations).
inline float narrow(double x) {
  constexpr double overflow = static_cast<double>(std::numeric_limits<float>::max()) + 0x1p103;  // + half an ulp
  if (x >= overflow) return std::numeric_limits<float>::infinity();
  if (x <= -overflow) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(x);
}

/// sum_l a[l] b[l] in a fixed order (vector lanes, then the lanes added, then the tail).
inline double dot(const double* a, const double* b, index_t n) {
  dvec acc(0.0);
  index_t l = 0;
  for (; l + lanes <= n; l += lanes) acc = xsimd::fma(dvec::load_unaligned(a + l), dvec::load_unaligned(b + l), acc);
  alignas(64) double part[lanes];  // lanes added in order (xsimd::hadd trips GCC 12 bug 105593)
  acc.store_aligned(part);
  double sum = 0;
  for (index_t e = 0; e < lanes; ++e) sum += part[e];
  for (; l < n; ++l) sum += a[l] * b[l];
  return sum;
}

/// dst[l] = a[l] - b[l] for l < n, n a multiple of lanes (padded arrays).
inline void subtract(double* dst, const double* a, const double* b, index_t n) {
  for (index_t l = 0; l < n; l += lanes)
    (dvec::load_unaligned(a + l) - dvec::load_unaligned(b + l)).store_unaligned(dst + l);
}

/// y[l] += f * x[l] for l < n.
inline void add_scaled(double* ATTNKIT_RESTRICT y, double f, const double* ATTNKIT_RESTRICT x, index_t n) {
  const dvec fv(f);
  index_t l = 0;
  for (; l + lanes <= n; l += lanes)
    xsimd::fma(fv, dvec::load_unaligned(x + l), dvec::load_unaligned(y + l)).store_unaligned(y + l);
  for (; l < n; ++l) y[l] += f * x[l];
}

/// Sizes of one call and the layout of one work item's scratch (in doubles; every array starts
/// on a 64-byte boundary).
struct layout {
  index_t d = 0, dv = 0;
  index_t dp = 0, dvp = 0;   // d and dv rounded up to whole vectors (padding holds zeros)
  index_t rows = 0;          // moment rows: keys' dp, then values' dvp, rounded up to block_rows
  index_t block_queries = 1;
  // Offsets, in doubles, of the per-query arrays (query q's start at q * per_query) and of the
  // shared ones after them.
  index_t per_query = 0;
  index_t q_off = 0, key_ref_off = 0, value_ref_off = 0, key_sum_off = 0, value_sum_off = 0, moments_off = 0;
  index_t keys_off = 0, values_off = 0, scores_off = 0, centred_off = 0, weighted_off = 0, delta_off = 0;
  index_t gram_off = 0, factor_off = 0, vectors_off = 0;
  index_t total = 0;

  /// Throws attnkit::error (nothing written yet) when one item's scratch is out of reach.
  static layout of(index_t d, index_t dv) {
    layout z;
    z.d = d, z.dv = dv;
    z.dp = round_up(d, lanes), z.dvp = round_up(dv, lanes);
    z.rows = round_up(z.dp + z.dvp, block_rows);
    const char* what = "local_linear: scratch for head dimensions D and Dv";
    const auto a64 = [](index_t n) { return round_up(n, 8); };
    index_t off = 0;
    const auto take = [&](index_t n) {
      const index_t at = off;
      off = checked_add(off, a64(n), what);
      return at;
    };
    z.q_off = take(z.dp), z.key_ref_off = take(z.dp), z.value_ref_off = take(z.dvp);
    z.key_sum_off = take(z.dp), z.value_sum_off = take(z.dvp);
    z.moments_off = take(checked_mul(z.rows, z.dp, what));
    z.per_query = off;
    const std::size_t state_bytes = static_cast<std::size_t>(z.per_query) * sizeof(double);
    z.block_queries = std::max<index_t>(
        1, std::min<index_t>(max_block_queries, static_cast<index_t>(block_state_bytes / state_bytes)));
    off = checked_mul(z.per_query, z.block_queries, what);
    z.keys_off = take(checked_mul(key_tile, z.dp, what));
    z.values_off = take(checked_mul(key_tile, z.dvp, what));
    z.scores_off = take(key_tile);
    z.centred_off = take(checked_mul(key_tile, z.rows, what));
    z.weighted_off = take(checked_mul(key_tile, z.dp, what));
    z.delta_off = take(z.dp + z.dvp);
    z.gram_off = take(checked_mul(d, d, what));
    z.factor_off = take(checked_mul(d, d, what));
    z.vectors_off = take(checked_mul(vector_count, z.dp, what));
    z.total = off;
    require(static_cast<std::size_t>(z.total) <= max_item_bytes / sizeof(double), "local_linear: D = ", d,
            ", Dv = ", dv, " need ", z.total * static_cast<index_t>(sizeof(double)),
            " bytes of scratch per work item, expected at most ", max_item_bytes,
            " (the moments of one query are (D + Dv) x D doubles)");
    return z;
  }
};

/// One query's running state inside a work item's scratch.
struct query_state {
  double* q = nullptr;          // dp: the query (padding 0)
  double* key_ref = nullptr;    // dp: the highest-scoring key so far
  double* value_ref = nullptr;  // dvp: its value
  double* key_sum = nullptr;    // dp: sum w (k - key_ref)
  double* value_sum = nullptr;  // dvp: sum w (v - value_ref)
  double* moments = nullptr;    // rows x dp: row a < d: sum w d_a d (upper blocks); row dp + c: sum w e_c d
  double max_score = neg_inf, weight_sum = 0;
  index_t lo = 0, hi = -1;  // visible keys

  /// Points the state at its part of the scratch (base: per_query doubles) and clears it.
  void attach(double* base, const layout& z) {
    q = base + z.q_off, key_ref = base + z.key_ref_off, value_ref = base + z.value_ref_off;
    key_sum = base + z.key_sum_off, value_sum = base + z.value_sum_off, moments = base + z.moments_off;
    std::fill(base, base + z.per_query, 0.0);
    max_score = neg_inf, weight_sum = 0;
  }
};

/// moments[r][b] += sum_j centred[j][r] * weighted[j][b] for rows [r0, r0 + block_rows) and the
/// Vectors * lanes columns from b0, keys in order (a rank-n update held in registers).
template <int Vectors>
ATTNKIT_ALWAYS_INLINE void update_block(const double* ATTNKIT_RESTRICT centred, const double* ATTNKIT_RESTRICT weighted,
                                        index_t n, const layout& z, double* ATTNKIT_RESTRICT moments, index_t r0,
                                        index_t b0) {
  const index_t rows = z.rows, dp = z.dp;
  double* at = moments + r0 * dp + b0;
  dvec acc[block_rows][Vectors];
  ATTNKIT_UNROLL for (index_t r = 0; r < block_rows; ++r)
    ATTNKIT_UNROLL for (int c = 0; c < Vectors; ++c) acc[r][c] = dvec::load_aligned(at + r * dp + c * lanes);
  const double* x = centred + r0;
  const double* w = weighted + b0;
  for (index_t j = 0; j < n; ++j, x += rows, w += dp) {
    dvec wv[Vectors];
    ATTNKIT_UNROLL for (int c = 0; c < Vectors; ++c) wv[c] = dvec::load_aligned(w + c * lanes);
    ATTNKIT_UNROLL for (index_t r = 0; r < block_rows; ++r) {
      const dvec xr(x[r]);
      ATTNKIT_UNROLL for (int c = 0; c < Vectors; ++c) acc[r][c] = xsimd::fma(xr, wv[c], acc[r][c]);
    }
  }
  ATTNKIT_UNROLL for (index_t r = 0; r < block_rows; ++r)
    ATTNKIT_UNROLL for (int c = 0; c < Vectors; ++c) acc[r][c].store_aligned(at + r * dp + c * lanes);
}

/// moments += centred^T weighted over n keys; rows of the symmetric key block skip the columns
/// left of their diagonal vector.
inline void update_moments(const double* centred, const double* weighted, index_t n, const layout& z,
                           double* moments) {
  constexpr index_t wide = block_vectors * lanes;
  for (index_t r0 = 0; r0 < z.rows; r0 += block_rows) {
    index_t b0 = r0 + block_rows <= z.dp ? r0 / lanes * lanes : 0;
    for (; b0 + wide <= z.dp; b0 += wide) update_block<block_vectors>(centred, weighted, n, z, moments, r0, b0);
    for (; b0 < z.dp; b0 += lanes) update_block<1>(centred, weighted, n, z, moments, r0, b0);
  }
}

/// Rescales the moments by f (the running max rose) and moves them to a new reference point
/// (key, value): with delta = key - key_ref, every sum over (k - key_ref) becomes one over
/// (k - key) exactly: M' = M - s delta^T - delta s^T + Z delta delta^T, and so on.
inline void move_reference(query_state& s, double f, const double* key, const double* value, const layout& z,
                           double* delta) {
  double* delta_v = delta + z.dp;
  s.weight_sum *= f;
  for (index_t a = 0; a < z.dp; ++a) s.key_sum[a] *= f;
  for (index_t c = 0; c < z.dvp; ++c) s.value_sum[c] *= f;
  subtract(delta, key, s.key_ref, z.dp);
  subtract(delta_v, value, s.value_ref, z.dvp);
  const double zw = s.weight_sum;
  const dvec fv(f);
  // Row a of the key block: f m - s_a delta - delta_a s + Z delta_a delta; row c of the value
  // block: f m - e_c delta - delta_v_c s + Z delta_v_c delta.
  const auto move_row = [&](double* m, double own_sum, double own_delta) {
    const dvec sum_v(-own_sum), delta_row(zw * own_delta), minus_delta(-own_delta);
    for (index_t b = 0; b < z.dp; b += lanes) {
      const dvec db = dvec::load_aligned(delta + b), sb = dvec::load_aligned(s.key_sum + b);
      dvec mv = fv * dvec::load_aligned(m + b);
      mv = xsimd::fma(sum_v, db, mv);
      mv = xsimd::fma(minus_delta, sb, mv);
      mv = xsimd::fma(delta_row, db, mv);
      mv.store_aligned(m + b);
    }
  };
  for (index_t a = 0; a < z.d; ++a) move_row(s.moments + a * z.dp, s.key_sum[a], delta[a]);
  for (index_t c = 0; c < z.dv; ++c) move_row(s.moments + (z.dp + c) * z.dp, s.value_sum[c], delta_v[c]);
  add_scaled(s.key_sum, -zw, delta, z.dp);
  add_scaled(s.value_sum, -zw, delta_v, z.dvp);
  std::copy(key, key + z.dp, s.key_ref);
  std::copy(value, value + z.dvp, s.value_ref);
}

/// Adds tile keys [ja, jb) (tile-local indices; keys and values in double) to one query.
inline void absorb(query_state& s, const double* keys, const double* values, index_t ja, index_t jb, double scale,
                   const layout& z, double* scratch) {
  double* scores = scratch + z.scores_off;
  double* centred = scratch + z.centred_off;
  double* weighted = scratch + z.weighted_off;
  const index_t n = jb - ja;
  double best = neg_inf;
  index_t best_j = ja;
  for (index_t t = 0; t < n; ++t) {
    const double sc = scale * dot(s.q, keys + (ja + t) * z.dp, z.dp);
    scores[t] = sc;
    if (sc > best) best = sc, best_j = ja + t;
  }
  if (!(best > neg_inf)) {  // every score NaN (NaN or infinite inputs): the row's output is NaN
    s.max_score = s.weight_sum = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  if (best > s.max_score) {
    if (s.max_score == neg_inf) {  // first keys: nothing to rescale or move
      std::copy(keys + best_j * z.dp, keys + (best_j + 1) * z.dp, s.key_ref);
      std::copy(values + best_j * z.dvp, values + (best_j + 1) * z.dvp, s.value_ref);
    } else {
      move_reference(s, std::exp(s.max_score - best), keys + best_j * z.dp, values + best_j * z.dvp, z,
                     scratch + z.delta_off);
    }
    s.max_score = best;
  }
  for (index_t t = 0; t < n; ++t) {
    const double w = std::exp(scores[t] - s.max_score);
    double* x = centred + t * z.rows;
    double* wx = weighted + t * z.dp;
    subtract(x, keys + (ja + t) * z.dp, s.key_ref, z.dp);  // padding: 0 - 0
    subtract(x + z.dp, values + (ja + t) * z.dvp, s.value_ref, z.dvp);
    const dvec wv(w);
    for (index_t a = 0; a < z.dp; a += lanes) (wv * dvec::load_aligned(x + a)).store_aligned(wx + a);
    s.weight_sum += w;
    add_scaled(s.key_sum, 1.0, wx, z.dp);
    add_scaled(s.value_sum, w, x + z.dp, z.dvp);
  }
  update_moments(centred, weighted, n, z, s.moments);
}

/// Cholesky factor of the d x d symmetric s (row-major, read only) into l's lower triangle;
/// false when a pivot is not positive (s not numerically positive definite).
inline bool cholesky(const double* s, index_t d, double* l) {
  for (index_t i = 0; i < d; ++i)
    for (index_t j = 0; j <= i; ++j) {
      const double rest = s[i * d + j] - dot(l + i * d, l + j * d, j);
      if (i == j) {
        if (!(rest > 0)) return false;
        l[i * d + i] = std::sqrt(rest);
      } else {
        l[i * d + j] = rest / l[j * d + j];
      }
    }
  return true;
}

/// Householder reduction of the symmetric n x n matrix a (row-major, both triangles; entries
/// of magnitude at most about 1) to tridiagonal form T = Q^T A Q: diag[i] = T_ii, off[i] =
/// T_{i-1,i} (off[0] = 0), and zt = Q^T (n x n). Column k is reduced by H_k = I - beta v v^T,
/// applied to the trailing block as A -= v w^T + w v^T (w = p - (beta/2)(p . v) v, p = beta A v):
/// every loop runs along rows. `work` holds 2 n doubles; a is destroyed (v is kept in row k).
inline void tridiagonalize(double* a, index_t n, double* diag, double* off, double* zt, double* work) {
  double* p = work;
  double* beta = work + n;
  off[0] = 0;
  for (index_t k = 0; k + 2 < n; ++k) {
    const index_t m = n - k - 1;  // the trailing block: rows and columns k + 1 .. n - 1
    double* x = a + k * n + k + 1;  // column k below the diagonal, read as row k by symmetry
    diag[k] = a[k * n + k];
    double top = 0;
    for (index_t i = 0; i < m; ++i) top = std::max(top, std::fabs(x[i]));
    if (top == 0) {  // already reduced
      off[k + 1] = 0, beta[k] = 0;
      continue;
    }
    double norm2 = 0;
    for (index_t i = 0; i < m; ++i) norm2 += (x[i] / top) * (x[i] / top);
    const double norm = top * std::sqrt(norm2), alpha = x[0] > 0 ? -norm : norm;
    // v = (x - alpha e1) / top, stored over x; beta = 2 / (v . v): O(1) whatever x's scale.
    x[0] -= alpha;
    for (index_t i = 0; i < m; ++i) x[i] /= top;
    beta[k] = 2 / dot(x, x, m);
    off[k + 1] = alpha;
    double* block = a + (k + 1) * n + k + 1;
    for (index_t i = 0; i < m; ++i) p[i] = beta[k] * dot(block + i * n, x, m);
    const double half = 0.5 * beta[k] * dot(p, x, m);
    for (index_t i = 0; i < m; ++i) p[i] -= half * x[i];  // p is w now
    for (index_t i = 0; i < m; ++i) {
      add_scaled(block + i * n, -x[i], p, m);
      add_scaled(block + i * n, -p[i], x, m);
    }
  }
  if (n >= 2) diag[n - 2] = a[(n - 2) * n + n - 2], off[n - 1] = a[(n - 1) * n + n - 2];
  diag[n - 1] = a[(n - 1) * n + n - 1];
  // Q^T = H_{n-3} ... H_0: H_k applied from the left to rows k + 1 .. n - 1.
  std::fill(zt, zt + n * n, 0.0);
  for (index_t i = 0; i < n; ++i) zt[i * n + i] = 1;
  for (index_t k = 0; k + 2 < n; ++k) {
    if (beta[k] == 0) continue;
    const index_t m = n - k - 1;
    const double* v = a + k * n + k + 1;
    double* rows = zt + (k + 1) * n;
    std::fill(p, p + n, 0.0);
    for (index_t i = 0; i < m; ++i) add_scaled(p, v[i], rows + i * n, n);  // p = v^T rows
    for (index_t i = 0; i < m; ++i) add_scaled(rows + i * n, -beta[k] * v[i], p, n);
  }
}

/// (lower, upper) = (c lower - s upper, s lower + c upper) over n entries.
inline void rotate_rows(double* ATTNKIT_RESTRICT lower, double* ATTNKIT_RESTRICT upper, index_t n, double c, double s) {
  const dvec cv(c), sv(s);
  index_t k = 0;
  for (; k + lanes <= n; k += lanes) {
    const dvec zl = dvec::load_unaligned(lower + k), zu = dvec::load_unaligned(upper + k);
    xsimd::fma(sv, zl, cv * zu).store_unaligned(upper + k);
    xsimd::fms(cv, zl, sv * zu).store_unaligned(lower + k);
  }
  for (; k < n; ++k) {
    const double zl = lower[k], zu = upper[k];
    upper[k] = s * zl + c * zu;
    lower[k] = c * zl - s * zu;
  }
}

/// Eigenvalues (into diag) and eigenvectors (rows of zt, which holds Q^T on entry) of the
/// tridiagonal matrix from tridiagonalize: implicit QL with Wilkinson shifts; deflation is
/// relative to the neighbouring diagonal entries, so small eigenvalues keep their accuracy.
/// Eigenvectors are rows so that each rotation updates two contiguous rows (vectorised).
inline void tridiagonal_ql(double* diag, double* off, index_t n, double* zt) {
  for (index_t i = 1; i < n; ++i) off[i - 1] = off[i];
  off[n - 1] = 0;
  constexpr double eps = std::numeric_limits<double>::epsilon();
  for (index_t l = 0; l < n; ++l) {
    for (int iteration = 0; iteration < 64; ++iteration) {  // 64: far past QL's usual 2 or 3
      index_t m = l;
      for (; m < n - 1; ++m)
        if (std::fabs(off[m]) <= eps * (std::fabs(diag[m]) + std::fabs(diag[m + 1]))) break;
      if (m == l) break;
      double g = (diag[l + 1] - diag[l]) / (2 * off[l]);
      double r = std::hypot(g, 1.0);
      g = diag[m] - diag[l] + off[l] / (g + (g >= 0 ? r : -r));
      double s = 1, c = 1, p = 0;
      index_t i = m - 1;
      bool underflow = false;
      for (; i >= l; --i) {
        const double f = s * off[i];
        const double b = c * off[i];
        off[i + 1] = r = std::sqrt(f * f + g * g);  // no overflow: S is scaled to trace 1
        if (r == 0) {  // a zero off-diagonal split the matrix: restart on the smaller part
          diag[i + 1] -= p;
          off[m] = 0;
          underflow = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = diag[i + 1] - p;
        r = (diag[i] - g) * s + 2 * c * b;
        p = s * r;
        diag[i + 1] = g + p;
        g = c * r - b;
        rotate_rows(zt + i * n, zt + (i + 1) * n, n, c, s);
      }
      if (underflow) continue;
      diag[l] -= p;
      off[l] = g;
      off[m] = 0;
    }
  }
}

/// x = S^+ r for the symmetric positive semi-definite d x d matrix s (row-major, destroyed),
/// eigenvalues at most rank_tolerance * trace(S) counting as zero (see the file comment). When
/// the ridge alone exceeds that tolerance no eigenvalue can fall below it, and Cholesky solves.
inline void pseudo_solve(double* s, double ridge, const double* r, double* x, const layout& z, double* scratch) {
  const index_t d = z.d;
  double* l = scratch + z.factor_off;
  double* vec = scratch + z.vectors_off;
  double* y = vec + y_vector * z.dp;
  double* eig = vec + eig_vector * z.dp;
  double* off = vec + off_vector * z.dp;
  double* work = vec + work_vector * z.dp;  // two vectors
  double trace = 0;
  for (index_t a = 0; a < d; ++a) trace += std::max(s[a * d + a], 0.0);
  const double tol = rank_tolerance * trace;
  std::fill(x, x + z.dp, 0.0);
  if (ridge > tol && cholesky(s, d, l)) {  // S = L L^T: two triangular solves
    for (index_t i = 0; i < d; ++i) y[i] = (r[i] - dot(l + i * d, y, i)) / l[i * d + i];
    for (index_t i = d - 1; i >= 0; --i) {
      double acc = y[i];
      for (index_t j = i + 1; j < d; ++j) acc -= l[j * d + i] * x[j];
      x[i] = acc / l[i * d + i];
    }
    return;
  }
  if (!(trace > 0)) return;  // no key variance at all: the fit is flat, out = nu
  // Scaled to trace 1: the eigenvalues scale with it and the QL's sqrt(f^2 + g^2) stays in
  // range (S's entries may be anywhere from 1e-300 to 1e80).
  for (index_t i = 0; i < d * d; ++i) s[i] /= trace;
  tridiagonalize(s, d, eig, off, l, work);
  tridiagonal_ql(eig, off, d, l);  // eigenvectors: the rows of l
  for (index_t e = 0; e < d; ++e) {
    if (!(eig[e] > rank_tolerance)) continue;  // no key variance along this eigenvector (or only rounding's)
    const double* u = l + e * d;
    const double coefficient = dot(u, r, d) / (eig[e] * trace);
    for (index_t i = 0; i < d; ++i) x[i] += u[i] * coefficient;
  }
}

/// Writes one query's output (and lse) from its final moments.
template <class O>
void finish(query_state& s, double ridge, const layout& z, double* scratch, const tensor_view<O>& out, index_t b,
            index_t h, index_t i, float* lse) {
  if (s.max_score == neg_inf) {  // no visible key (a NaN state goes on and gives NaN)
    for (index_t c = 0; c < z.dv; ++c) out(b, h, i, c) = from_float<O>(0.f);
    if (lse) *lse = -std::numeric_limits<float>::infinity();
    return;
  }
  const index_t d = z.d;
  const double zw = s.weight_sum;  // >= 1: the highest-scoring key has weight 1
  double* gram = scratch + z.gram_off;
  double* mean_k = scratch + z.vectors_off + mean_k_vector * z.dp;
  double* rhs = scratch + z.vectors_off + rhs_vector * z.dp;
  double* x = scratch + z.vectors_off + x_vector * z.dp;
  std::fill(mean_k, mean_k + z.dp, 0.0);
  for (index_t a = 0; a < d; ++a) mean_k[a] = s.key_sum[a] / zw;
  for (index_t a = 0; a < d; ++a) {
    const double* m = s.moments + a * z.dp;
    for (index_t b2 = a; b2 < d; ++b2) gram[a * d + b2] = gram[b2 * d + a] = m[b2] / zw - mean_k[a] * mean_k[b2];
    gram[a * d + a] += ridge;
  }
  // rhs = q - mu, with mu = key_ref + mean_k
  for (index_t a = 0; a < d; ++a) rhs[a] = (s.q[a] - s.key_ref[a]) - mean_k[a];
  pseudo_solve(gram, ridge, rhs, x, z, scratch);
  // out = nu + C x, C = E[e d^T] - mean_v mean_k^T: C x = (M_v x) / Z - mean_v (mean_k . x)
  const double mean_k_x = dot(mean_k, x, d);
  for (index_t c = 0; c < z.dv; ++c) {
    const double mean_v = s.value_sum[c] / zw;
    const double cx = dot(s.moments + (z.dp + c) * z.dp, x, d) / zw - mean_v * mean_k_x;
    out(b, h, i, c) = from_float<O>(narrow(s.value_ref[c] + mean_v + cx));
  }
  if (lse) *lse = narrow(s.max_score + std::log(zw));
}

template <class T>
void load_row(const tensor_view<const T>& t, index_t b, index_t h, index_t s, index_t n, double* dst) {
  const T* p = t.row(b, h, s);
  const index_t stride = t.stride(dim_axis);
  for (index_t d = 0; d < n; ++d) dst[d] = static_cast<double>(to_float(p[d * stride]));
}

template <class Q, class K, class V, class O>
void run(const local_linear& p, const tensor_view<const Q>& q, const tensor_view<const K>& k,
         const tensor_view<const V>& v, const tensor_view<O>& out, const options& o) {
  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Nk = k.seq(), Dv = v.dim(), group = Hq / k.heads();
  if (B == 0 || Nq == 0) return;
  const layout z = layout::of(D, Dv);  // may throw: before anything is written
  const softmax masks = softmax_fields(p);
  const double scale = p.scale != 0 ? static_cast<double>(p.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  const double ridge = static_cast<double>(p.ridge);
  const index_t blocks = ceil_div(Nq, z.block_queries), heads = B * Hq;

  parallel_for(blocks * heads, o.threads, [&](index_t item) {
    // Later query blocks see more keys under a causal mask: they are claimed first.
    const index_t block = blocks - 1 - item / heads, b = item % heads / Hq, h = item % Hq, hk = h / group;
    const index_t i0 = block * z.block_queries, rows = std::min(z.block_queries, Nq - i0);
    scratch_lease lease;
    double* scratch = static_cast<double*>(lease.reserve(static_cast<std::size_t>(z.total) * sizeof(double)));
    // The tiles' padding (columns past d and dv, rows past dp + dvp) must read as zeros.
    std::fill(scratch + z.keys_off, scratch + z.gram_off, 0.0);

    query_state st[max_block_queries];
    index_t union_lo = Nk, union_hi = -1;
    for (index_t r = 0; r < rows; ++r) {
      st[r].attach(scratch + r * z.per_query, z);
      const key_span span = softmax_span(masks, b, i0 + r, Nq, Nk);
      st[r].lo = span.lo, st[r].hi = span.hi;
      load_row(q, b, h, i0 + r, D, st[r].q);
      if (span.lo <= span.hi) union_lo = std::min(union_lo, span.lo), union_hi = std::max(union_hi, span.hi);
    }
    double* tile_keys = scratch + z.keys_off;
    double* tile_values = scratch + z.values_off;
    if (union_lo <= union_hi)
      for (index_t t0 = union_lo / key_tile * key_tile; t0 <= union_hi; t0 += key_tile) {
        const index_t ja = std::max(t0, union_lo), jb = std::min(t0 + key_tile - 1, union_hi);
        for (index_t j = ja; j <= jb; ++j) {
          load_row(k, b, hk, j, D, tile_keys + (j - t0) * z.dp);
          load_row(v, b, hk, j, Dv, tile_values + (j - t0) * z.dvp);
        }
        for (index_t r = 0; r < rows; ++r) {
          const index_t lo = std::max(st[r].lo, t0), hi = std::min(st[r].hi, t0 + key_tile - 1);
          if (lo <= hi) absorb(st[r], tile_keys, tile_values, lo - t0, hi - t0 + 1, scale, z, scratch);
        }
      }
    for (index_t r = 0; r < rows; ++r)
      finish(st[r], ridge, z, scratch, out, b, h, i0 + r, o.lse ? o.lse + (b * Hq + h) * Nq + i0 + r : nullptr);
  });
}

}  // namespace attnkit::detail::local_linear_engine
