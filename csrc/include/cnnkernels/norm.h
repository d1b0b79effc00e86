// Shared, torch-free math of the normalisation family, used by the CPU kernels (cpu/norm.cpp) and
// the CUDA kernels (cuda/norm_kernel.cu); cnnkernels/triton/norm.py mirrors it.
//
// Every normalisation here is   z = (x - mean) * rstd * w + b (+ residual),   y = act(z)
// with mean/rstd per statistics group (batch norm: a channel over N and the spatial positions;
// group norm: a (sample, group of channels); rms norm: a row, with mean = 0) and w, b per channel.
// Statistics are accumulated in acc_t (fp32, fp64 for fp64) with Welford's update inside a
// thread or block and Chan's merge across them; never as E[x^2] - E[x]^2.
#pragma once

#include <cmath>

#include "cnnkernels/common.h"

namespace cnnkernels {

// The activation fused after a normalisation. The schemas take it as a string.
enum class Activation : int { None = 0, ReLU = 1, SiLU = 2, GELU = 3 };

// Running (count, mean, M2) of a set of values; M2 is the sum of squared deviations from the mean.
template <typename T>
struct Welford {
  T count = T(0);
  T mean = T(0);
  T m2 = T(0);
};

template <typename T>
CNNK_HOST_DEVICE void welford_add(Welford<T>& w, T x) {
  w.count += T(1);
  const T delta = x - w.mean;
  w.mean += delta / w.count;
  w.m2 += delta * (x - w.mean);
}

// Chan et al.'s merge of two disjoint sets' statistics. Merging in a fixed order makes the
// result independent of how many threads ran, as long as the partition is fixed by the shape.
template <typename T>
CNNK_HOST_DEVICE Welford<T> welford_merge(const Welford<T>& a, const Welford<T>& b) {
  if (b.count == T(0)) return a;
  if (a.count == T(0)) return b;
  Welford<T> r;
  r.count = a.count + b.count;
  const T delta = b.mean - a.mean;
  const T fb = b.count / r.count;
  r.mean = a.mean + delta * fb;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * fb;
  return r;
}

// Biased variance (the one normalisation uses); 0 for an empty set.
template <typename T>
CNNK_HOST_DEVICE T welford_variance(const Welford<T>& w) {
  return w.count > T(0) ? w.m2 / w.count : T(0);
}

template <typename T>
CNNK_HOST_DEVICE T rstd_from_variance(T var, T eps) {
  return T(1) / std::sqrt(var + eps);
}

// One step of a running average: (1 - momentum) * running + momentum * batch. Batch norm's
// running variance takes the unbiased batch variance: var * count / (count - 1).
template <typename T>
CNNK_HOST_DEVICE T running_update(T running, T batch, T momentum) {
  return running + momentum * (batch - running);
}

template <typename T>
CNNK_HOST_DEVICE T unbiased_variance(T var, T count) {
  return var * count / (count - T(1));
}

// ---- activations: value and derivative at the pre-activation z -----------------------------

template <typename T>
CNNK_HOST_DEVICE T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

// GELU is torch's default (exact, erf) form: z * Phi(z).
template <typename T>
CNNK_HOST_DEVICE T activation_forward(Activation act, T z) {
  switch (act) {
    case Activation::ReLU: return z > T(0) ? z : T(0);
    case Activation::SiLU: return z * sigmoid(z);
    case Activation::GELU: return T(0.5) * z * (T(1) + std::erf(z * T(0.70710678118654752440)));
    default: return z;
  }
}

// The gradient at z, dy * act'(z). ReLU selects: dy where z > 0, 0 elsewhere (its derivative at
// 0 is 0), as torch's threshold_backward does, so an infinite or NaN dy where z <= 0 gives 0
// rather than NaN. A select is also what GCC vectorises: a multiply by a 0/1 factor stayed a
// branch in the CPU backward loops, 5x slower.
template <typename T>
CNNK_HOST_DEVICE T activation_backward(Activation act, T dy, T z) {
  switch (act) {
    case Activation::ReLU: return z > T(0) ? dy : T(0);
    case Activation::SiLU: {
      const T s = sigmoid(z);
      return dy * (s * (T(1) + z * (T(1) - s)));
    }
    case Activation::GELU: {
      const T cdf = T(0.5) * (T(1) + std::erf(z * T(0.70710678118654752440)));
      const T pdf = std::exp(T(-0.5) * z * z) * T(0.39894228040143267794);
      return dy * (cdf + z * pdf);
    }
    default: return dy;
  }
}

// ---- the input gradient of a normalisation --------------------------------------------------
// With xhat = (x - mean) * rstd and dz the gradient at z (after the activation's derivative),
// the per-group sums over the group's `count` elements
//   sum_dy    = sum w * dz          sum_dy_xhat = sum w * dz * xhat
// give the input gradient when the statistics came from the batch (training):
//   dx = rstd * (w * dz - (sum_dy + xhat * sum_dy_xhat) / count)
// For rms norm (mean = 0, xhat = x * rstd) the sum_dy term is absent: pass sum_dy = 0.
// With fixed statistics (evaluation) both sums drop out: dx = rstd * w * dz.
template <typename T>
CNNK_HOST_DEVICE T norm_input_grad(T wdz, T xhat, T rstd, T sum_dy, T sum_dy_xhat, T inv_count) {
  return rstd * (wdz - (sum_dy + xhat * sum_dy_xhat) * inv_count);
}

// ---- local response normalisation ----------------------------------------------------------
// torch's convention: b_c = a_c / (k + alpha / size * sum_{j in window(c)} a_j^2)^beta, the window
// being channels [c - size/2, c + (size-1)/2] clipped to [0, C) (zero padding, divided by size
// regardless). Channel c's window therefore holds channel j exactly when j lies in
// [c - size/2, c + (size-1)/2], i.e. c in [j - (size-1)/2, j + size/2]: the backward gathers over
// that second range.
CNNK_HOST_DEVICE int64_t lrn_window_first(int64_t c, int64_t size) { return c - size / 2; }
CNNK_HOST_DEVICE int64_t lrn_window_last(int64_t c, int64_t size) { return c + (size - 1) / 2; }
CNNK_HOST_DEVICE int64_t lrn_users_first(int64_t j, int64_t size) { return j - (size - 1) / 2; }
CNNK_HOST_DEVICE int64_t lrn_users_last(int64_t j, int64_t size) { return j + size / 2; }

template <typename T>
CNNK_HOST_DEVICE T lrn_denominator(T sum_sq, T alpha_over_size, T k) {
  return k + alpha_over_size * sum_sq;
}

// Input gradient at channel j:
//   dx_j = dy_j * d_j^-beta - 2 * beta * alpha / size * x_j * sum_{c : j in window(c)} dy_c * x_c * d_c^(-beta-1)
// where d_c is lrn_denominator of channel c. lrn_backward_term gives one summand dy_c x_c d_c^(-beta-1).
template <typename T>
CNNK_HOST_DEVICE T lrn_backward_term(T dy, T x, T denominator, T beta) {
  return dy * x * std::pow(denominator, -beta - T(1));
}

}  // namespace cnnkernels
