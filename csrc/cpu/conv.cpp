// conv2d on the CPU: forward, backward-input (flipped-kernel convolution), backward-weight and
// the bias gradient. Hand-written loops, parallel with at::parallel_for.
//
// Layout strategy: activations are read channels-innermost (NHWC; NCHW inputs are repacked
// once, which costs one pass over the tensor against C*R*S passes of arithmetic) and the
// weight is repacked so that the innermost loop of every kernel runs over a contiguous run
// of output (or input) channels: an axpy the compiler vectorises without reassociating sums.
// Results are written through the output tensor's strides, so any memory format works.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cnnkernels/conv.h"
#include "host/alloc.h"
#include "host/dtypes.h"
#include "host/conv.h"

namespace cnnkernels {
namespace {

// Output pixels computed together in the forward kernel: each weight vector loaded from cache
// feeds this many accumulators.
constexpr int64_t kForwardPixelBlock = 4;
// Pixels per partial sum in the reductions over N*P*Q (weight and bias gradients). The split
// depends only on the problem size, never on the thread count, so results are reproducible.
constexpr int64_t kReductionChunk = 1024;
constexpr int64_t kMaxReductionChunks = 64;
// Cap on the fp32/fp64 partial buffer of the weight gradient, in elements.
constexpr int64_t kMaxPartialElements = int64_t{1} << 24;

// The sums' type. Integer convolutions (forward only: integer tensors have no gradients) wrap
// modulo 2^bits of the element type, as torch's do; unsigned 64-bit arithmetic wraps without
// undefined behaviour and its low bits are exactly that result. Complex ones sum in their own
// type; the kernels never conjugate (the autograd formulas pass conjugated operands).
template <typename scalar_t>
using conv_acc_t =
    std::conditional_t<std::is_integral_v<scalar_t>, uint64_t,
                       std::conditional_t<c10::is_complex<scalar_t>::value, scalar_t, acc_t<scalar_t>>>;

template <typename acc_t>
inline void axpy(acc_t* __restrict__ y, acc_t a, const acc_t* __restrict__ x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// The forward's step for a block of pixels whose taps all lie inside the input: the accumulator
// rows y0..y3 (one per pixel) each gain a_b * w. One pass over w feeds all four. Kept out of line
// on purpose: inlined into the loop nest, the same loop's registers (its bound spilled to the
// stack) depended on what else the file instantiates, and measured 25-35% slower after the
// integer and complex instantiations were added.
static_assert(kForwardPixelBlock == 4, "axpy4 takes one accumulator row per pixel of the block");
template <typename acc_t>
[[gnu::noinline]] void axpy4(acc_t* __restrict__ y0, acc_t* __restrict__ y1, acc_t* __restrict__ y2,
                             acc_t* __restrict__ y3, const acc_t (&a)[4], const acc_t* __restrict__ w, int64_t n) {
  const acc_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t wi = w[i];
    y0[i] += a0 * wi;
    y1[i] += a1 * wi;
    y2[i] += a2 * wi;
    y3[i] += a3 * wi;
  }
}

// Depthwise steps (one channel per group): y[g] += a[g] * b[g] over one pixel's channels, the
// operands contiguous (forward: input x weight at a tap; weight gradient: dy x input). Out of
// line, like axpy4.
template <typename acc_t, typename A, typename B>
[[gnu::noinline]] void add_products(acc_t* __restrict__ y, const A* __restrict__ a, const B* __restrict__ b,
                                    int64_t channels) {
#pragma omp simd
  for (int64_t g = 0; g < channels; ++g) y[g] += static_cast<acc_t>(a[g]) * static_cast<acc_t>(b[g]);
}

inline int64_t reduction_chunks(int64_t pixels, int64_t partial_size) {
  const int64_t by_work = std::max<int64_t>(1, ceil_div(pixels, kReductionChunk));
  const int64_t by_memory = std::max<int64_t>(1, kMaxPartialElements / std::max<int64_t>(1, partial_size));
  return std::min({by_work, by_memory, kMaxReductionChunks});
}

// The weight (K, Cg, R, S) repacked per group and tap as a [Cg][Kg] matrix (kInputMajor: the
// forward, where one input value meets a contiguous run of output channels) or a [Kg][Cg]
// matrix (kOutputMajor: the backward-input's channel swap), converted to the accumulator type:
// packed[g][r][s][a][b].
enum class WeightOrder { kInputMajor, kOutputMajor };

template <typename scalar_t>
std::vector<conv_acc_t<scalar_t>> pack_weight(const at::Tensor& weight, const Conv2dParams& p, WeightOrder order) {
  const int64_t G = p.groups, Cg = p.in_per_group(), Kg = p.out_per_group(), R = p.kernel_h, S = p.kernel_w;
  std::vector<conv_acc_t<scalar_t>> packed(static_cast<size_t>(G * R * S * Cg * Kg));
  const auto w = weight.accessor<scalar_t, 4>();
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) {
        conv_acc_t<scalar_t>* tap = packed.data() + ((g * R + r) * S + s) * Cg * Kg;
        for (int64_t k = 0; k < Kg; ++k)
          for (int64_t c = 0; c < Cg; ++c)
            tap[order == WeightOrder::kInputMajor ? c * Kg + k : k * Cg + c] =
                static_cast<conv_acc_t<scalar_t>>(w[g * Kg + k][c][r][s]);
      }
  return packed;
}

// ---- forward -------------------------------------------------------------------------------
// out[n,k,p,q] = bias[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*sh - pt + r*dh, q*sw - pl + s*dw]
template <typename scalar_t>
void conv2d_forward_cpu(const at::Tensor& x_nhwc, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, at::Tensor& out,
                        const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  const int64_t G = p.groups, Cg = p.in_per_group(), Kg = p.out_per_group(), K = p.out_channels;
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w;

  // For one input value, the Kg weights it meets are contiguous. (Depthwise, the groups then sit
  // R*S apart; w_by_tap holds them with the taps outermost, groups contiguous.)
  const std::vector<acc> wp = pack_weight<scalar_t>(weight, p, WeightOrder::kInputMajor);
  const bool depthwise = p.depthwise();
  std::vector<acc> w_by_tap;
  if (depthwise) {
    w_by_tap.resize(static_cast<size_t>(R * S * G));
    for (int64_t g = 0; g < G; ++g)
      for (int64_t rs = 0; rs < R * S; ++rs) w_by_tap[rs * G + g] = wp[g * R * S + rs];
  }

  std::vector<acc> bias_acc(static_cast<size_t>(K), acc(0));
  if (bias.has_value()) {
    const auto b = bias->accessor<scalar_t, 1>();
    for (int64_t k = 0; k < K; ++k) bias_acc[k] = static_cast<acc>(b[k]);
  }

  const scalar_t* x = x_nhwc.const_data_ptr<scalar_t>();
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  const int64_t ys_n = out.stride(0), ys_k = out.stride(1), ys_p = out.stride(2), ys_q = out.stride(3);
  const int64_t row_cost = p.out_w * K * Cg * R * S;

  // One task per output row (n, oh); each row is split into blocks of kForwardPixelBlock pixels.
  at::parallel_for(0, p.batch * p.out_h, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_cost)),
                   [&](int64_t begin, int64_t end) {
    constexpr int64_t B = kForwardPixelBlock;
    std::vector<acc> accum(static_cast<size_t>(B * K));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.out_h, oh = row % p.out_h;
      for (int64_t ow0 = 0; ow0 < p.out_w; ow0 += B) {
        const int64_t nb = std::min(B, p.out_w - ow0);
        for (int64_t b = 0; b < B; ++b) std::copy(bias_acc.begin(), bias_acc.end(), accum.begin() + b * K);
        for (int64_t r = 0; r < R; ++r) {
          const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_top, p.dilation_h);
          if (ih < 0 || ih >= p.in_h) continue;
          for (int64_t s = 0; s < S; ++s) {
            // Input rows of the block's pixels; a pixel whose tap falls in the padding reads zeros.
            const scalar_t* xin[B];
            bool any = false;
            for (int64_t b = 0; b < B; ++b) {
              const int64_t iw = conv_in_coord(ow0 + b, s, p.stride_w, p.pad_left, p.dilation_w);
              const bool inside = b < nb && iw >= 0 && iw < p.in_w;
              xin[b] = inside ? x + ((n * p.in_h + ih) * p.in_w + iw) * C : nullptr;
              any = any || inside;
            }
            if (!any) continue;
            if (depthwise) {
              for (int64_t b = 0; b < B; ++b)
                if (xin[b] != nullptr) add_products(accum.data() + b * K, xin[b], w_by_tap.data() + (r * S + s) * G, G);
              continue;
            }
            const bool all = xin[0] != nullptr && xin[1] != nullptr && xin[2] != nullptr && xin[3] != nullptr;
            for (int64_t g = 0; g < G; ++g) {
              const acc* wtap = wp.data() + ((g * R + r) * S + s) * Cg * Kg;
              acc* y0 = accum.data() + g * Kg;
              for (int64_t c = 0; c < Cg; ++c) {
                const acc* wrow = wtap + c * Kg;
                if (all) {
                  const acc a[B] = {static_cast<acc>(xin[0][g * Cg + c]), static_cast<acc>(xin[1][g * Cg + c]),
                                    static_cast<acc>(xin[2][g * Cg + c]), static_cast<acc>(xin[3][g * Cg + c])};
                  axpy4(y0, y0 + K, y0 + 2 * K, y0 + 3 * K, a, wrow, Kg);
                  continue;
                }
                for (int64_t b = 0; b < B; ++b) {
                  if (xin[b] == nullptr) continue;
                  axpy(y0 + b * K, static_cast<acc>(xin[b][g * Cg + c]), wrow, Kg);
                }
              }
            }
          }
        }
        for (int64_t b = 0; b < nb; ++b) {
          scalar_t* yp = y + n * ys_n + oh * ys_p + (ow0 + b) * ys_q;
          for (int64_t k = 0; k < K; ++k) yp[k * ys_k] = static_cast<scalar_t>(accum[b * K + k]);
        }
      }
    }
  });
}

// ---- backward-input ------------------------------------------------------------------------

// One input pixel's accumulators gain one output-gradient pixel's contribution through one tap,
// for every group: accum[g*Cg + c] += sum_k dy[g*Kg + k] * w[g][k][c] (w: the tap's channel-
// swapped weight, groups `group_stride` apart). Four k at a time, so that each accumulator row is
// loaded and stored once per four. Out of line, like axpy4.
template <typename acc_t, typename scalar_t>
[[gnu::noinline]] void backward_input_tap(acc_t* __restrict__ accum, const scalar_t* __restrict__ dyrow,
                                          const acc_t* __restrict__ wtap, int64_t group_stride, int64_t G,
                                          int64_t Kg, int64_t Cg) {
  if (Kg == 1 && Cg == 1) {  // depthwise: one product per group, no inner loops to set up
    for (int64_t g = 0; g < G; ++g) accum[g] += static_cast<acc_t>(dyrow[g]) * wtap[g * group_stride];
    return;
  }
  for (int64_t g = 0; g < G; ++g) {
    acc_t* __restrict__ y = accum + g * Cg;
    const scalar_t* d = dyrow + g * Kg;
    const acc_t* w = wtap + g * group_stride;
    int64_t k = 0;
    for (; k + 4 <= Kg; k += 4) {
      const acc_t d0 = static_cast<acc_t>(d[k]), d1 = static_cast<acc_t>(d[k + 1]),
                  d2 = static_cast<acc_t>(d[k + 2]), d3 = static_cast<acc_t>(d[k + 3]);
      const acc_t *w0 = w + k * Cg, *w1 = w0 + Cg, *w2 = w1 + Cg, *w3 = w2 + Cg;
#pragma omp simd
      for (int64_t c = 0; c < Cg; ++c) y[c] += d0 * w0[c] + d1 * w1[c] + d2 * w2[c] + d3 * w3[c];
    }
    for (; k < Kg; ++k) axpy(y, static_cast<acc_t>(d[k]), w + k * Cg, Cg);
  }
}
// The flipped-kernel convolution, as a gather: each input position collects, through the taps
// of its stride phase only (backward_input_taps), the output gradients it contributed to:
//   dx[n,c,i,j] = sum_{k,r,s} w[k,c,r,s] * dy[n, k, (i+pt-r*dh)/sh, (j+pl-s*dw)/sw]
// Walking the taps r = first, first+step, ... visits the rotated kernel backwards; the packed
// weight swaps input and output channels.
template <typename scalar_t>
void conv2d_backward_input_cpu(const at::Tensor& dy_nhwc, const at::Tensor& weight, at::Tensor& dx,
                               const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  const int64_t G = p.groups, Cg = p.in_per_group(), Kg = p.out_per_group(), K = p.out_channels;
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w;

  // Channel-swapped: for one output-gradient value, the Cg weights it meets are contiguous.
  const std::vector<acc> wt = pack_weight<scalar_t>(weight, p, WeightOrder::kOutputMajor);

  const scalar_t* dy = dy_nhwc.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
  const int64_t xs_n = dx.stride(0), xs_c = dx.stride(1), xs_h = dx.stride(2), xs_w = dx.stride(3);
  const int64_t row_cost = p.in_w * C * Kg * ceil_div(R, p.stride_h) * ceil_div(S, p.stride_w);

  at::parallel_for(0, p.batch * p.in_h, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_cost)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc> accum(static_cast<size_t>(C));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.in_h, ih = row % p.in_h;
      const TapProgression rt = backward_input_taps(ih + p.pad_top, R, p.stride_h, p.dilation_h);
      for (int64_t iw = 0; iw < p.in_w; ++iw) {
        std::fill(accum.begin(), accum.end(), acc(0));
        const TapProgression st = backward_input_taps(iw + p.pad_left, S, p.stride_w, p.dilation_w);
        for (int64_t r = rt.first; r < R; r += rt.step) {
          const int64_t oh = backward_input_out_coord(ih + p.pad_top, r, p.stride_h, p.dilation_h);
          if (oh < 0 || oh >= p.out_h) continue;
          for (int64_t s = st.first; s < S; s += st.step) {
            const int64_t ow = backward_input_out_coord(iw + p.pad_left, s, p.stride_w, p.dilation_w);
            if (ow < 0 || ow >= p.out_w) continue;
            const scalar_t* dyrow = dy + ((n * p.out_h + oh) * p.out_w + ow) * K;
            backward_input_tap(accum.data(), dyrow, wt.data() + (r * S + s) * Kg * Cg, R * S * Kg * Cg, G, Kg, Cg);
          }
        }
        scalar_t* xp = dxp + n * xs_n + ih * xs_h + iw * xs_w;
        for (int64_t c = 0; c < C; ++c) xp[c * xs_c] = static_cast<scalar_t>(accum[c]);
      }
    }
  });
}

// ---- backward-weight -----------------------------------------------------------------------

// Output-gradient and input rows of up to four pixels (at one tap) waiting to be added.
template <typename scalar_t>
struct RowPairs {
  const scalar_t* dy[4];
  const scalar_t* x[4];
  int count = 0;
};

// t[k][c] += sum over the four pixels of dy[k] * x[c]: each row of the [Kg][Cg] partial is
// loaded and stored once for four pixels. Out of line, like axpy4.
template <typename acc_t, typename scalar_t>
[[gnu::noinline]] void outer_products4(acc_t* __restrict__ t, const RowPairs<scalar_t>& rows, int64_t Kg, int64_t Cg) {
  const scalar_t *x0 = rows.x[0], *x1 = rows.x[1], *x2 = rows.x[2], *x3 = rows.x[3];
  for (int64_t k = 0; k < Kg; ++k) {
    const acc_t d0 = static_cast<acc_t>(rows.dy[0][k]), d1 = static_cast<acc_t>(rows.dy[1][k]),
                d2 = static_cast<acc_t>(rows.dy[2][k]), d3 = static_cast<acc_t>(rows.dy[3][k]);
    acc_t* __restrict__ trow = t + k * Cg;
#pragma omp simd
    for (int64_t c = 0; c < Cg; ++c)
      trow[c] += d0 * static_cast<acc_t>(x0[c]) + d1 * static_cast<acc_t>(x1[c]) + d2 * static_cast<acc_t>(x2[c]) +
                 d3 * static_cast<acc_t>(x3[c]);
  }
}

// One pixel's t[k][c] += dy[k] * x[c] (the chunk's last pixels).
template <typename acc_t, typename scalar_t>
[[gnu::noinline]] void outer_product(acc_t* __restrict__ t, const scalar_t* dy, const scalar_t* x, int64_t Kg,
                                     int64_t Cg) {
  for (int64_t k = 0; k < Kg; ++k) {
    const acc_t d = static_cast<acc_t>(dy[k]);
    acc_t* __restrict__ trow = t + k * Cg;
#pragma omp simd
    for (int64_t c = 0; c < Cg; ++c) trow[c] += d * static_cast<acc_t>(x[c]);
  }
}

// dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*sh - pt + r*dh, q*sw - pl + s*dw]
// The N*P*Q reduction is split into fixed chunks; each (chunk, group, tap) task accumulates a
// [Kg][Cg] partial, and the partials are summed in chunk order.
template <typename scalar_t>
void conv2d_backward_weight_cpu(const at::Tensor& dy_nhwc, const at::Tensor& x_nhwc, at::Tensor& dw,
                                const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  const int64_t G = p.groups, Cg = p.in_per_group(), Kg = p.out_per_group(), K = p.out_channels;
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w;
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  const int64_t tile = Kg * Cg;
  const int64_t weight_size = G * R * S * tile;
  const int64_t chunks = reduction_chunks(pixels, weight_size);
  const int64_t chunk_len = ceil_div(pixels, chunks);

  // partial[chunk][g][r][s][k][c]
  const at::Tensor partial = new_buffer({chunks * weight_size},
                                        x_nhwc.options().dtype(c10::CppTypeToScalarType<acc>::value));
  acc* part = partial.mutable_data_ptr<acc>();
  const scalar_t* dy = dy_nhwc.const_data_ptr<scalar_t>();
  const scalar_t* x = x_nhwc.const_data_ptr<scalar_t>();

  if (p.depthwise()) {
    // Depthwise: one task per (chunk, tap) sums every channel at once, dy and x rows being
    // contiguous over the channels; each weight element still sums its chunk's pixels in order.
    at::parallel_for(0, chunks * R * S, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc> sums(static_cast<size_t>(G));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task % S, r = (task / S) % R, chunk = task / (S * R);
        std::fill(sums.begin(), sums.end(), acc(0));
        const int64_t m_end = std::min(pixels, (chunk + 1) * chunk_len);
        for (int64_t m = chunk * chunk_len; m < m_end; ++m) {
          const int64_t ow = m % p.out_w, oh = (m / p.out_w) % p.out_h, n = m / (p.out_w * p.out_h);
          const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_top, p.dilation_h);
          const int64_t iw = conv_in_coord(ow, s, p.stride_w, p.pad_left, p.dilation_w);
          if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) continue;
          add_products(sums.data(), dy + m * K, x + ((n * p.in_h + ih) * p.in_w + iw) * C, G);
        }
        for (int64_t g = 0; g < G; ++g) part[chunk * weight_size + (g * R + r) * S + s] = sums[g];
      }
    });
  } else {
    at::parallel_for(0, chunks * G * R * S, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task % S, r = (task / S) % R, g = (task / (S * R)) % G, chunk = task / (S * R * G);
        acc* t = part + chunk * weight_size + ((g * R + r) * S + s) * tile;
        std::fill(t, t + tile, acc(0));
        const int64_t m_end = std::min(pixels, (chunk + 1) * chunk_len);
        // The pixels whose tap lies inside the input, four at a time.
        RowPairs<scalar_t> rows;
        for (int64_t m = chunk * chunk_len; m < m_end; ++m) {
          const int64_t ow = m % p.out_w, oh = (m / p.out_w) % p.out_h, n = m / (p.out_w * p.out_h);
          const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_top, p.dilation_h);
          const int64_t iw = conv_in_coord(ow, s, p.stride_w, p.pad_left, p.dilation_w);
          if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) continue;
          rows.dy[rows.count] = dy + m * K + g * Kg;
          rows.x[rows.count] = x + ((n * p.in_h + ih) * p.in_w + iw) * C + g * Cg;
          if (++rows.count == 4) {
            outer_products4<acc>(t, rows, Kg, Cg);
            rows.count = 0;
          }
        }
        for (int q = 0; q < rows.count; ++q) outer_product<acc>(t, rows.dy[q], rows.x[q], Kg, Cg);
      }
    });
  }

  // Sum the partials in chunk order and write through dw's strides.
  scalar_t* dwp = dw.mutable_data_ptr<scalar_t>();
  const int64_t ws_k = dw.stride(0), ws_c = dw.stride(1), ws_r = dw.stride(2), ws_s = dw.stride(3);
  at::parallel_for(0, weight_size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += part[chunk * weight_size + i];
      const int64_t c = i % Cg, k = (i / Cg) % Kg, s = (i / tile) % S, r = (i / (tile * S)) % R,
                    g = i / (tile * S * R);
      dwp[(g * Kg + k) * ws_k + c * ws_c + r * ws_r + s * ws_s] = static_cast<scalar_t>(sum);
    }
  });
}

// ---- bias gradient -------------------------------------------------------------------------
template <typename scalar_t>
void conv2d_backward_bias_cpu(const at::Tensor& dy_nhwc, at::Tensor& db) {
  using acc = conv_acc_t<scalar_t>;
  const int64_t K = dy_nhwc.size(1);
  const int64_t pixels = dy_nhwc.size(0) * dy_nhwc.size(2) * dy_nhwc.size(3);
  const int64_t chunks = reduction_chunks(pixels, K);
  const int64_t chunk_len = ceil_div(pixels, chunks);
  const at::Tensor partial = new_buffer({chunks, K}, dy_nhwc.options().dtype(c10::CppTypeToScalarType<acc>::value));
  acc* part = partial.mutable_data_ptr<acc>();
  const scalar_t* dy = dy_nhwc.const_data_ptr<scalar_t>();

  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      acc* sum = part + chunk * K;
      std::fill(sum, sum + K, acc(0));
      const int64_t m_end = std::min(pixels, (chunk + 1) * chunk_len);
      for (int64_t m = chunk * chunk_len; m < m_end; ++m) {
        const scalar_t* row = dy + m * K;
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) sum[k] += static_cast<acc>(row[k]);
      }
    }
  });
  scalar_t* out = db.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < K; ++k) {
    acc total = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) total += part[chunk * K + k];
    out[k] = static_cast<scalar_t>(total);
  }
}

// ---- operator entry points -----------------------------------------------------------------

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "cnnkernels::conv2d";
  check_cpu_dtype(op, input, kIntegerTypes | kComplexTypes);
  const Conv2dParams p = check_conv2d_forward(op, input, weight, bias, stride, padding, dilation, groups);
  at::Tensor out = new_buffer({p.batch, p.out_channels, p.out_h, p.out_w}, input.options(),
                              conv2d_memory_format(input, weight));
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_ALL_TYPES_AND_COMPLEX_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_cpu", [&] {
    conv2d_forward_cpu<scalar_t>(x, weight, bias, out, p);
  });
  return out;
}

at::Tensor conv2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 at::IntArrayRef input_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "cnnkernels::conv2d_backward_input";
  check_cpu_dtype(op, grad_output, kComplexTypes);
  const Conv2dParams p = check_conv2d_backward_input(op, grad_output, weight, input_size, stride, padding, dilation, groups);
  at::Tensor dx = new_buffer(input_size, grad_output.options(), conv2d_memory_format(grad_output, weight));
  if (dx.numel() == 0) return dx;
  const at::Tensor dy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "conv2d_backward_input_cpu", [&] {
    conv2d_backward_input_cpu<scalar_t>(dy, weight, dx, p);
  });
  return dx;
}

at::Tensor conv2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  at::IntArrayRef weight_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "cnnkernels::conv2d_backward_weight";
  check_cpu_dtype(op, grad_output, kComplexTypes);
  const Conv2dParams p = check_conv2d_backward_weight(op, grad_output, input, weight_size, stride, padding, dilation, groups);
  at::Tensor dw = new_buffer(weight_size, grad_output.options(), conv2d_memory_format(grad_output, input));
  if (dw.numel() == 0) return dw;
  if (grad_output.numel() == 0) return dw.zero_();  // nothing to reduce over: the gradient is zero
  const at::Tensor dy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "conv2d_backward_weight_cpu", [&] {
    conv2d_backward_weight_cpu<scalar_t>(dy, x, dw, p);
  });
  return dw;
}

at::Tensor conv2d_backward_bias(const at::Tensor& grad_output) {
  const char* op = "cnnkernels::conv2d_backward_bias";
  check_cpu_dtype(op, grad_output, kComplexTypes);
  TORCH_CHECK(grad_output.dim() == 4, op, ": expected a 4-D grad_output, got sizes ", grad_output.sizes());
  at::Tensor db = new_buffer({grad_output.size(1)}, grad_output.options());
  if (db.numel() == 0) return db;
  if (grad_output.numel() == 0) return db.zero_();
  const at::Tensor dy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_AND_COMPLEX_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "conv2d_backward_bias_cpu", [&] {
    conv2d_backward_bias_cpu<scalar_t>(dy, db);
  });
  return db;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkernels, CPU, m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_backward_input", &conv2d_backward_input);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias);
}

}  // namespace cnnkernels
