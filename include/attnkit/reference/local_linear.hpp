/// \file
/// Float64 reference of local linear attention (Zuo et al., arXiv 2510.01450), written from
/// spec/extra_variants.md section 3 without the engine's code: its own visibility test, the
/// moments in two passes (weighted means first, then moments about them) and its own solver, a
/// Jacobi eigen-decomposition of S.
///
/// Singular S (ridge 0 and keys spanning fewer than D directions): out = nu + C S^+ (q - mu)
/// with S^+ the pseudo-inverse, the limit ridge -> 0+ (engines/local_linear.hpp explains the
/// choice). Eigenvalues at most rank_tolerance * trace(S) count as zero, the engine's rule.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include "../core/checked.hpp"
#include "../core/checks.hpp"
#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/types.hpp"
#include "../variants/local_linear.hpp"

namespace attnkit::reference::detail {

using attnkit::detail::local_linear_rank_tolerance;  // the definition's cut for singular S

/// Is key j visible to query row i? (spec softmax.md step 4: padding, bottom-right causal,
/// windows around the row's position; `lq`, `lk` the valid lengths of the batch entry).
inline bool local_linear_visible(const attnkit::local_linear& p, index_t i, index_t j, index_t lq, index_t lk) {
  if (i >= lq || j >= lk) return false;
  const index_t pos = i + (lk - lq);
  if (p.causal && j > pos) return false;
  if (p.window_left >= 0 && j < attnkit::detail::saturating_add(pos, -p.window_left)) return false;
  if (p.window_right >= 0 && j > attnkit::detail::saturating_add(pos, p.window_right)) return false;
  return true;
}

/// x = S^+ r for the symmetric n x n matrix s (row-major, destroyed): cyclic Jacobi rotations
/// diagonalise it, S = U diag(lambda) U^T, then x = sum over lambda > tol of u (u . r) / lambda.
inline void local_linear_pseudo_solve(std::vector<double>& s, index_t n, const std::vector<double>& r,
                                      std::vector<double>& x) {
  const auto at = [n](index_t i, index_t j) { return static_cast<std::size_t>(i * n + j); };
  std::vector<double> u(static_cast<std::size_t>(n * n), 0.0);
  for (index_t i = 0; i < n; ++i) u[at(i, i)] = 1;
  double trace = 0;  // S's diagonal is >= 0 but for rounding
  for (index_t i = 0; i < n; ++i) trace += std::max(s[at(i, i)], 0.0);
  for (int sweep = 0; sweep < 100; ++sweep) {
    bool rotated = false;
    for (index_t p = 0; p < n; ++p)
      for (index_t q = p + 1; q < n; ++q) {
        const double apq = s[at(p, q)];
        if (apq == 0) continue;
        // An element below double rounding of both diagonal entries it couples changes neither
        // eigenvalue: it is set to zero (Jacobi's usual test, relative to those entries, so
        // small eigenvalues keep their relative accuracy).
        const double g = 100 * std::fabs(apq);
        if (sweep > 3 && std::fabs(s[at(p, p)]) + g == std::fabs(s[at(p, p)]) &&
            std::fabs(s[at(q, q)]) + g == std::fabs(s[at(q, q)])) {
          s[at(p, q)] = s[at(q, p)] = 0;
          continue;
        }
        rotated = true;
        // The rotation that zeroes s[p][q] (smaller angle): t = tan(phi).
        const double theta = (s[at(q, q)] - s[at(p, p)]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::hypot(theta, 1.0));
        const double c = 1 / std::sqrt(1 + t * t), sn = t * c;
        for (index_t k = 0; k < n; ++k) {  // columns p, q
          const double kp = s[at(k, p)], kq = s[at(k, q)];
          s[at(k, p)] = c * kp - sn * kq, s[at(k, q)] = sn * kp + c * kq;
        }
        for (index_t k = 0; k < n; ++k) {  // rows p, q
          const double pk = s[at(p, k)], qk = s[at(q, k)];
          s[at(p, k)] = c * pk - sn * qk, s[at(q, k)] = sn * pk + c * qk;
        }
        s[at(p, q)] = s[at(q, p)] = 0;  // what the rotation was chosen for (rounding aside)
        for (index_t k = 0; k < n; ++k) {  // eigenvectors: U = U J
          const double kp = u[at(k, p)], kq = u[at(k, q)];
          u[at(k, p)] = c * kp - sn * kq, u[at(k, q)] = sn * kp + c * kq;
        }
      }
    if (!rotated) break;
  }
  const double tol = local_linear_rank_tolerance * trace;
  std::fill(x.begin(), x.end(), 0.0);
  for (index_t e = 0; e < n; ++e) {
    const double lambda = s[at(e, e)];
    if (!(lambda > tol)) continue;  // no key variance along u_e (or only rounding's)
    double ur = 0;
    for (index_t i = 0; i < n; ++i) ur += u[at(i, e)] * r[static_cast<std::size_t>(i)];
    for (index_t i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] += u[at(i, e)] * (ur / lambda);
  }
}

/// A double as float, +-inf past float's range (a local linear fit can extrapolate beyond its
/// values; values within half an ulp of FLT_MAX round to it, as IEEE rounding does).
inline float local_linear_to_float(double x) {
  const double overflow = static_cast<double>(std::numeric_limits<float>::max()) + 0x1p103;
  if (x >= overflow) return std::numeric_limits<float>::infinity();
  if (x <= -overflow) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(x);
}

/// out[b, h, i, :] = nu + C S^+ (q - mu) in float64 per query row, with kernel weights
/// pi_j = softmax_j(scale q . k_j) over its visible keys; lse = log sum_j exp(scale q . k_j).
/// Rows with no visible key get zeros and lse = -inf. Shapes are assumed checked.
template <class Q, class K, class V, class O>
void run(const attnkit::local_linear& p, tensor_view<const Q> q, tensor_view<const K> k, tensor_view<const V> v,
         tensor_view<O> out, const options& o) {
  using attnkit::detail::from_float;
  using attnkit::detail::to_float;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  const index_t B = q.batch(), Hq = q.heads(), Nq = q.seq(), D = q.dim();
  const index_t Hkv = k.heads(), Nk = k.seq(), Dv = v.dim();
  if (B == 0 || Nq == 0) return;
  attnkit::detail::require(D <= 4096 && Dv <= 4096, "reference local_linear: D = ", D, ", Dv = ", Dv,
                           ", expected at most 4096 (the reference holds D x D and Dv x D matrices)");
  const index_t group = Hq / Hkv;
  const double scale = p.scale != 0 ? static_cast<double>(p.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  const double ridge = static_cast<double>(p.ridge);
  const auto sz = [](index_t n) { return static_cast<std::size_t>(n); };

  std::vector<index_t> keys;
  std::vector<double> logits, pi;
  std::vector<double> qd(sz(D)), mu(sz(D)), nu(sz(Dv)), kc(sz(D)), vc(sz(Dv)), rhs(sz(D)), x(sz(D));
  std::vector<double> S(sz(D * D)), C(sz(Dv * D));
  const auto key = [&](index_t b, index_t hk, index_t j, index_t d) {
    return static_cast<double>(to_float(k(b, hk, j, d)));
  };
  const auto value = [&](index_t b, index_t hk, index_t j, index_t c) {
    return static_cast<double>(to_float(v(b, hk, j, c)));
  };

  for (index_t b = 0; b < B; ++b) {
    const index_t lq = p.query_lens ? static_cast<index_t>(p.query_lens[b]) : Nq;
    const index_t lk = p.key_lens ? static_cast<index_t>(p.key_lens[b]) : Nk;
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < Nq; ++i) {
        for (index_t d = 0; d < D; ++d) qd[sz(d)] = static_cast<double>(to_float(q(b, h, i, d)));
        keys.clear();
        logits.clear();
        double m = neg_inf;
        index_t top = -1;  // the visible key of largest weight
        for (index_t j = 0; j < Nk; ++j) {
          if (!local_linear_visible(p, i, j, lq, lk)) continue;
          double dot = 0;
          for (index_t d = 0; d < D; ++d) dot += qd[sz(d)] * key(b, hk, j, d);
          keys.push_back(j);
          logits.push_back(scale * dot);
          if (scale * dot > m) m = scale * dot, top = j;
        }
        if (keys.empty()) {
          for (index_t c = 0; c < Dv; ++c) out(b, h, i, c) = from_float<std::remove_const_t<O>>(0.f);
          if (o.lse) o.lse[(b * Hq + h) * Nq + i] = -std::numeric_limits<float>::infinity();
          continue;
        }
        if (top < 0) {  // no logit above -inf: NaN (or infinite) inputs, a NaN row
          for (index_t c = 0; c < Dv; ++c)
            out(b, h, i, c) = from_float<std::remove_const_t<O>>(std::numeric_limits<float>::quiet_NaN());
          if (o.lse) o.lse[(b * Hq + h) * Nq + i] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        double l = 0;
        pi.resize(keys.size());
        for (std::size_t t = 0; t < keys.size(); ++t) l += (pi[t] = std::exp(logits[t] - m));
        for (double& w : pi) w /= l;

        // Pass 1: weighted means, accumulated as offsets from the largest-weight key so that
        // weights far below 1 are not rounded away against the key's own magnitude.
        std::fill(mu.begin(), mu.end(), 0.0);
        std::fill(nu.begin(), nu.end(), 0.0);
        for (std::size_t t = 0; t < keys.size(); ++t) {
          for (index_t d = 0; d < D; ++d) mu[sz(d)] += pi[t] * (key(b, hk, keys[t], d) - key(b, hk, top, d));
          for (index_t c = 0; c < Dv; ++c) nu[sz(c)] += pi[t] * (value(b, hk, keys[t], c) - value(b, hk, top, c));
        }
        // Pass 2: moments about the means, in the same offsets (k - mu = (k - top) - (mu - top)).
        std::fill(S.begin(), S.end(), 0.0);
        std::fill(C.begin(), C.end(), 0.0);
        for (std::size_t t = 0; t < keys.size(); ++t) {
          for (index_t d = 0; d < D; ++d) kc[sz(d)] = (key(b, hk, keys[t], d) - key(b, hk, top, d)) - mu[sz(d)];
          for (index_t c = 0; c < Dv; ++c) vc[sz(c)] = (value(b, hk, keys[t], c) - value(b, hk, top, c)) - nu[sz(c)];
          for (index_t a = 0; a < D; ++a)
            for (index_t d = 0; d < D; ++d) S[sz(a * D + d)] += pi[t] * kc[sz(a)] * kc[sz(d)];
          for (index_t c = 0; c < Dv; ++c)
            for (index_t d = 0; d < D; ++d) C[sz(c * D + d)] += pi[t] * vc[sz(c)] * kc[sz(d)];
        }
        for (index_t a = 0; a < D; ++a) S[sz(a * D + a)] += ridge;
        for (index_t d = 0; d < D; ++d) rhs[sz(d)] = (qd[sz(d)] - key(b, hk, top, d)) - mu[sz(d)];
        local_linear_pseudo_solve(S, D, rhs, x);
        for (index_t c = 0; c < Dv; ++c) {
          double cx = 0;
          for (index_t d = 0; d < D; ++d) cx += C[sz(c * D + d)] * x[sz(d)];
          const double o_c = value(b, hk, top, c) + nu[sz(c)] + cx;
          out(b, h, i, c) = from_float<std::remove_const_t<O>>(local_linear_to_float(o_c));
        }
        if (o.lse) o.lse[(b * Hq + h) * Nq + i] = local_linear_to_float(m + std::log(l));
      }
    }
  }
}

}  // namespace attnkit::reference::detail
