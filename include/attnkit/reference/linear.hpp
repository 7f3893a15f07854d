/// \file
/// Float64 reference of linear attention and its feature maps (elu+1, relu, FAVOR+), written
/// from spec/linear.md ("Projection matrix W", "Feature maps", "Reference algorithm"). It
/// shares no code with the fast path: the projection matrix has its own SplitMix64 /
/// Box-Muller stream and orthonormalises with classical Gram-Schmidt (the fast path uses
/// modified Gram-Schmidt), and the features are computed in double without stabilisers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/checks.hpp"
#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/feature_maps.hpp"
#include "../variants/linear.hpp"

namespace attnkit::reference {

namespace detail {

/// Standard normals of spec/linear.md step 1: SplitMix64 outputs u, U = ((u >> 11) + 1) 2^-53,
/// Box-Muller pairs consumed cos first, then sin. One stream serves every matrix of a call.
class projection_normals {
 public:
  explicit projection_normals(std::uint64_t seed) : state_(seed) {}

  double operator()() {
    if (has_sin_) {
      has_sin_ = false;
      return sin_;
    }
    const double u1 = uniform(), u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * 3.14159265358979323846 * u2;
    sin_ = r * std::sin(angle);
    has_sin_ = true;
    return r * std::cos(angle);
  }

 private:
  double uniform() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<double>((z >> 11) + 1) * 0x1p-53;
  }

  std::uint64_t state_;
  double sin_ = 0;
  bool has_sin_ = false;
};

/// Orthonormalises the first `rows` rows of the row-major d x d matrix g in order by classical
/// Gram-Schmidt (row i depends on the rows before it only): every projection uses the original
/// row (the fast path's modified Gram-Schmidt uses the partially reduced one), so the two agree
/// only up to round-off.
inline void classical_gram_schmidt(std::vector<double>& g, index_t d, index_t rows) {
  const std::vector<double> original = g;
  std::vector<double> dots(static_cast<std::size_t>(d));
  for (index_t i = 0; i < rows; ++i) {
    const double* gi = original.data() + i * d;
    double* ei = g.data() + i * d;
    for (index_t j = 0; j < i; ++j) {
      const double* ej = g.data() + j * d;
      double dot = 0;
      for (index_t c = 0; c < d; ++c) dot += gi[c] * ej[c];
      dots[static_cast<std::size_t>(j)] = dot;
    }
    for (index_t j = 0; j < i; ++j) {
      const double* ej = g.data() + j * d;
      for (index_t c = 0; c < d; ++c) ei[c] -= dots[static_cast<std::size_t>(j)] * ej[c];
    }
    double norm = 0;
    for (index_t c = 0; c < d; ++c) norm += ei[c] * ei[c];
    norm = std::sqrt(norm);
    for (index_t c = 0; c < d; ++c) ei[c] /= norm;
  }
}

}  // namespace detail

/// The FAVOR+ projection matrix for rows of d values, row-major float64, f.features rows
/// (f.features / 2 with hyperbolic), from f.seed as spec/linear.md "Projection matrix W" says.
/// Independent of attnkit::favor_projection: iid agrees bitwise, ORF to round-off (classical
/// Gram-Schmidt loses orthogonality like eps cond(G)^2: ~1e-13 of the row norm at d = 64,
/// ~1e-10 at d = 256).
inline std::vector<double> favor_projection(const attnkit::favor_plus& f, index_t d) {
  attnkit::detail::validate_feature_map("reference::favor_projection", f);
  attnkit::detail::require(d >= 1 && d <= attnkit::detail::max_head_dim, "reference::favor_projection: d = ", d,
                           ", expected in [1, ", attnkit::detail::max_head_dim, "]");
  attnkit::detail::validate_favor_size("reference::favor_projection", f, d);
  const index_t rows = f.hyperbolic ? f.features / 2 : f.features;
  detail::projection_normals normal(f.seed);
  std::vector<double> w(static_cast<std::size_t>(rows * d));
  if (!f.orthogonal) {
    for (double& x : w) x = normal();
    return w;
  }
  std::vector<double> block(static_cast<std::size_t>(d * d));
  for (index_t first = 0; first < rows; first += d) {
    for (double& x : block) x = normal();
    const index_t taken = rows - first < d ? rows - first : d;
    detail::classical_gram_schmidt(block, d, taken);
    for (index_t t = 0; t < taken * d; ++t)
      w[static_cast<std::size_t>(first * d + t)] = block[static_cast<std::size_t>(t)];
  }
  // The row norms come after all blocks, from the same stream.
  for (index_t r = 0; r < rows; ++r) {
    double norm = 0;
    if (f.norm_scaling == 0) {
      for (index_t c = 0; c < d; ++c) {
        const double g = normal();
        norm += g * g;
      }
      norm = std::sqrt(norm);
    } else {
      norm = std::sqrt(static_cast<double>(d));
    }
    for (index_t c = 0; c < d; ++c) w[static_cast<std::size_t>(r * d + c)] *= norm;
  }
  return w;
}

namespace detail {

/// phi(x) = elu(x) + 1, m = d.
struct elu_plus_one_phi {
  index_t d;
  index_t features() const { return d; }
  void query(const double* x, double* phi) const {
    for (index_t c = 0; c < d; ++c) phi[c] = x[c] > 0 ? x[c] + 1 : std::exp(x[c]);
  }
  void key(const double* x, double* phi) const { query(x, phi); }
};

/// phi(x) = max(x, 0) + feature_eps, m = d.
struct relu_phi {
  index_t d;
  double feature_eps;
  index_t features() const { return d; }
  void query(const double* x, double* phi) const {
    for (index_t c = 0; c < d; ++c) phi[c] = (x[c] > 0 ? x[c] : 0.0) + feature_eps;
  }
  void key(const double* x, double* phi) const { query(x, phi); }
};

/// FAVOR+ positive random features, unstabilised: phi(x)_r = m^(-1/2) exp(w_r.x' - |x'|^2/2)
/// with x' = sqrt(scale) x, or the hyperbolic pair [exp(+w.x'), exp(-w.x')] (same m^(-1/2),
/// m = 2M). The spec's sqrt(scale) needs scale > 0; a negative scale is carried by the keys
/// (x'_k = -sqrt(-scale) k), which still estimates exp(scale q.k).
struct favor_plus_phi {
  index_t d;
  index_t m;
  bool hyperbolic;
  double query_factor, key_factor;
  std::vector<double> w;  // m x d, or m/2 x d with hyperbolic

  index_t features() const { return m; }
  void query(const double* x, double* phi) const { apply(x, query_factor, phi); }
  void key(const double* x, double* phi) const { apply(x, key_factor, phi); }

 private:
  void apply(const double* x, double factor, double* phi) const {
    double half_sq = 0;
    for (index_t c = 0; c < d; ++c) half_sq += (factor * x[c]) * (factor * x[c]);
    half_sq *= 0.5;
    const double norm = 1.0 / std::sqrt(static_cast<double>(m));
    const index_t rows = hyperbolic ? m / 2 : m;
    for (index_t r = 0; r < rows; ++r) {
      double proj = 0;
      for (index_t c = 0; c < d; ++c) proj += w[static_cast<std::size_t>(r * d + c)] * (factor * x[c]);
      phi[r] = norm * std::exp(proj - half_sq);
      if (hyperbolic) phi[rows + r] = norm * std::exp(-proj - half_sq);
    }
  }
};

/// The float64 feature map of a policy's map for rows of d values; `scale` (already resolved,
/// never 0) is used by FAVOR+ only.
inline elu_plus_one_phi make_phi(const attnkit::elu_plus_one&, index_t d, double) { return {d}; }
inline relu_phi make_phi(const attnkit::relu& f, index_t d, double) { return {d, static_cast<double>(f.feature_eps)}; }
inline favor_plus_phi make_phi(const attnkit::favor_plus& f, index_t d, double scale) {
  const double root = std::sqrt(std::fabs(scale));
  return {d, f.features, f.hyperbolic, root, scale < 0 ? -root : root, attnkit::reference::favor_projection(f, d)};
}

/// Rows 0..seq-1 of t[b, h] in double, optionally L2-normalised (a zero row stays zero),
/// row-major [seq x dim].
template <class T>
std::vector<double> rows_f64(tensor_view<const T> t, index_t b, index_t h, bool normalize) {
  const index_t n = t.seq(), d = t.dim();
  std::vector<double> x(static_cast<std::size_t>(n * d));
  for (index_t s = 0; s < n; ++s) {
    double* row = x.data() + s * d;
    double sq = 0;
    for (index_t c = 0; c < d; ++c) {
      row[c] = static_cast<double>(attnkit::detail::to_float(t(b, h, s, c)));
      sq += row[c] * row[c];
    }
    if (normalize && sq > 0) {
      const double inv = 1.0 / std::sqrt(sq);
      for (index_t c = 0; c < d; ++c) row[c] *= inv;
    }
  }
  return x;
}

/// phi.key of every row of x ([n x d] row-major): [n x m] row-major.
template <class Phi>
std::vector<double> key_features(const Phi& phi, const std::vector<double>& x, index_t n, index_t d) {
  const index_t m = phi.features();
  std::vector<double> f(static_cast<std::size_t>(n * m));
  for (index_t s = 0; s < n; ++s) phi.key(x.data() + s * d, f.data() + s * m);
  return f;
}

/// out[b, h, i, :] = num / (den + eps), 0 where den + eps == 0 (never 0/0), and
/// lse = log(den) + log_offset, -inf where den == 0.
template <class O>
void write_row(tensor_view<O> out, const options& o, index_t b, index_t h, index_t i, const std::vector<double>& num,
               double den, double eps, double log_offset) {
  using value = std::remove_const_t<O>;
  const double total = den + eps;
  for (index_t e = 0; e < out.dim(); ++e) {
    const double y = total == 0 ? 0.0 : num[static_cast<std::size_t>(e)] / total;
    out(b, h, i, e) = attnkit::detail::from_float<value>(static_cast<float>(y));
  }
  if (o.lse)
    o.lse[(b * out.heads() + h) * out.seq() + i] =
        den == 0 ? -std::numeric_limits<float>::infinity() : static_cast<float>(std::log(den) + log_offset);
}

/// Linear attention in float64, O(Nq Nk (m + Dv)): for each query, the visible keys
/// j <= i + Nk - Nq (causal) or all keys, weight phi(q_i) . phi(k_j), out = num / (den + eps).
/// phi(k) and v are converted once per (batch, kv head). Shapes are assumed checked.
template <class FeatureMap, class Q, class K, class V, class O>
void run(const attnkit::linear<FeatureMap>& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Nk = k.seq(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  const index_t group = Hq / Hkv;
  double favor_scale = 1.0 / std::sqrt(static_cast<double>(D));  // read by FAVOR+ only; its scale 0 means this
  if constexpr (std::is_same_v<FeatureMap, attnkit::favor_plus>)
    if (p.feature_map.scale != 0) favor_scale = static_cast<double>(p.feature_map.scale);
  const auto phi = make_phi(p.feature_map, D, favor_scale);
  const index_t m = phi.features();
  const double eps = static_cast<double>(p.eps);

  std::vector<double> qf(static_cast<std::size_t>(m)), num(static_cast<std::size_t>(Dv));
  for (index_t b = 0; b < B; ++b)
    for (index_t hk = 0; hk < Hkv; ++hk) {
      const std::vector<double> kf = key_features(phi, rows_f64(k, b, hk, false), Nk, D);
      const std::vector<double> vx = rows_f64(v, b, hk, false);
      for (index_t h = hk * group; h < (hk + 1) * group; ++h) {
        const std::vector<double> qx = rows_f64(q, b, h, false);
        for (index_t i = 0; i < Nq; ++i) {
          phi.query(qx.data() + i * D, qf.data());
          const index_t last = p.causal ? i + Nk - Nq : Nk - 1;  // last visible key
          std::fill(num.begin(), num.end(), 0.0);
          double den = 0;
          for (index_t j = 0; j <= last && j < Nk; ++j) {
            const double* kj = kf.data() + j * m;
            double a = 0;
            for (index_t r = 0; r < m; ++r) a += qf[static_cast<std::size_t>(r)] * kj[r];
            const double* vj = vx.data() + j * Dv;
            for (index_t e = 0; e < Dv; ++e) num[static_cast<std::size_t>(e)] += a * vj[e];
            den += a;
          }
          write_row(out, o, b, h, i, num, den, eps, 0.0);
        }
      }
    }
}

}  // namespace detail
}  // namespace attnkit::reference
