// conv2d on the CPU: forward, backward-input (flipped-kernel convolution), backward-weight and
// the bias gradient. Hand-written loops, parallel with at::parallel_for.
//
// Each of the three convolutions is a matrix product over patches, done a block of pixels at a
// time: the block's operand rows are gathered into a small buffer in the accumulator type (the
// input's patches for the forward and the weight gradient, the output gradient's for the
// backward-input), then multiplied 4 rows by one cache line of columns at a time by
// multiply_add_tile, which keeps that tile in registers while the reduction streams past.
// Activations are read channels-innermost (NHWC; NCHW tensors are repacked once, one pass over
// the tensor against C*R*S passes of arithmetic); results are written through the output's
// strides, so any memory format works. Depthwise layers (one channel per group) have no
// product to tile and keep per-pixel loops vectorised across the groups.
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
#include "host/parallel.h"

// multiply_add_tile is compiled twice on x86-64 with GCC, for the baseline ISA (SSE2) and for
// x86-64-v3 (AVX2 + FMA), and the loader picks the one the CPU runs (an ifunc), so a build made
// anywhere uses the vector units of the machine it runs on. fp-contract=fast lets the v3 clone
// fuse the multiply-adds: -std=c++20 turns contraction off by default.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CNNK_TILE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define CNNK_TILE_CLONES
#endif

namespace cnnkernels {
namespace {

// Pixels gathered per block: 64 rows of patches stay in L2 for any layer of the classic nets.
constexpr int64_t kBlockPixels = 64;
// Pixels per partial sum in the reductions over N*P*Q (weight and bias gradients): a multiple of
// kBlockPixels. The split depends only on the problem size, never on the thread count, so
// results are reproducible.
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

// ---- the tile product ----------------------------------------------------------------------
// A tile is kTileRows rows by one 64-byte cache line of columns (16 floats, 8 doubles): with
// AVX2 its 4 x 64 bytes are eight vector registers, leaving room for one row of b and the
// broadcast a. The b operands are packed with their column count rounded up to a whole line.
constexpr int64_t kTileRows = 4;
template <typename acc_t>
constexpr int64_t kTileCols = std::max<int64_t>(1, 64 / sizeof(acc_t));

//   c[i*ldc + j] += sum_{p < depth} a[i*a_row + p*a_step] * b[p*b_step + j]
// for i < kTileRows, j < kTileCols. The sums start from zero in registers and are added to c at
// the end, so c may be a partial sum that many calls extend in a fixed order.
template <typename acc_t>
CNNK_TILE_CLONES void multiply_add_tile(acc_t* __restrict__ c, int64_t ldc, int64_t depth,
                                        const acc_t* __restrict__ a, int64_t a_row, int64_t a_step,
                                        const acc_t* __restrict__ b, int64_t b_step) {
  static_assert(kTileRows == 4, "one accumulator row per tile row below");
  constexpr int64_t n = kTileCols<acc_t>;
  acc_t c0[n] = {}, c1[n] = {}, c2[n] = {}, c3[n] = {};
  for (int64_t k = 0; k < depth; ++k) {
    const acc_t* bk = b + k * b_step;
    const acc_t* ak = a + k * a_step;
    const acc_t a0 = ak[0], a1 = ak[a_row], a2 = ak[2 * a_row], a3 = ak[3 * a_row];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      c0[j] += a0 * bk[j];
      c1[j] += a1 * bk[j];
      c2[j] += a2 * bk[j];
      c3[j] += a3 * bk[j];
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    c[j] += c0[j];
    c[ldc + j] += c1[j];
    c[2 * ldc + j] += c2[j];
    c[3 * ldc + j] += c3[j];
  }
}

// A row of `count` elements converted to the accumulator type.
template <typename acc_t, typename scalar_t>
inline void load_row(acc_t* dst, const scalar_t* src, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<acc_t>(src[i]);
}

// One kernel row's part of a gathered row: `slots` runs of `width` values (one per tap), slot t
// read from base + offset + t * step for begin <= t < end and zero elsewhere; all zero when base
// is null (the kernel row lies outside the tensor). When step == width the slots in range are
// one run of memory, converted in one pass.
template <typename acc_t, typename scalar_t>
void gather_kernel_row(acc_t* dst, const scalar_t* base, int64_t offset, int64_t step, int64_t width, int64_t slots,
                       int64_t begin, int64_t end) {
  if (base == nullptr) {
    std::fill(dst, dst + slots * width, acc_t(0));
    return;
  }
  std::fill(dst, dst + begin * width, acc_t(0));
  if (step == width) {
    load_row(dst + begin * width, base + (offset + begin * step), (end - begin) * width);
  } else {
    for (int64_t t = begin; t < end; ++t) load_row(dst + t * width, base + (offset + t * step), width);
  }
  std::fill(dst + end * width, dst + slots * width, acc_t(0));
}

// An output pixel m = (n * P + oh) * Q + ow, decomposed once per block (no divisions per tile).
struct Pixel {
  int64_t n, oh, ow;
};

inline void decompose_pixels(Pixel* pixels, int64_t m0, int64_t count, const Conv2dParams& p) {
  Pixel at{m0 / (p.out_w * p.out_h), (m0 / p.out_w) % p.out_h, m0 % p.out_w};
  for (int64_t i = 0; i < count; ++i) {
    pixels[i] = at;
    if (++at.ow == p.out_w) {
      at.ow = 0;
      if (++at.oh == p.out_h) {
        at.oh = 0;
        ++at.n;
      }
    }
  }
}

// The im2col rows of `count` output pixels for group g: row i holds, for every tap (r, s) and
// every input channel c of the group, x[n, g*Cg + c, ih, iw] of pixels[i] (zero where the tap lies
// in the padding), in (r, s, c) order, which is the packed weight's order; columns R*S*Cg .. ld-1
// are zero. Rows count .. rows-1 are zero too (a partial last tile).
template <typename acc_t, typename scalar_t>
void gather_patches(acc_t* col, int64_t ld, const scalar_t* x_nhwc, const Conv2dParams& p, int64_t g,
                    const Pixel* pixels, int64_t count, int64_t rows) {
  const int64_t Cg = p.in_per_group(), C = p.in_channels, R = p.kernel_h, S = p.kernel_w, dw = p.dilation_w;
  for (int64_t i = 0; i < rows; ++i) {
    acc_t* row = col + i * ld;
    if (i >= count) {
      std::fill(row, row + ld, acc_t(0));
      continue;
    }
    const Pixel px = pixels[i];
    const scalar_t* image = x_nhwc + px.n * p.in_h * p.in_w * C + g * Cg;
    // The taps s whose column lies inside the input: s_begin <= s < s_end.
    const int64_t iw0 = conv_in_coord(px.ow, 0, p.stride_w, p.pad_left, dw);
    const int64_t s_begin = std::min(S, iw0 >= 0 ? int64_t{0} : ceil_div(-iw0, dw));
    const int64_t s_end = std::clamp(floor_div(p.in_w - 1 - iw0, dw) + 1, s_begin, S);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t ih = conv_in_coord(px.oh, r, p.stride_h, p.pad_top, p.dilation_h);
      const bool inside = ih >= 0 && ih < p.in_h;
      gather_kernel_row(row + r * S * Cg, inside ? image + ih * p.in_w * C : nullptr, iw0 * C, dw * C, Cg, S, s_begin,
                        s_end);
    }
    std::fill(row + R * S * Cg, row + ld, acc_t(0));
  }
}

// Depthwise steps (one channel per group): y[g] += a[g] * b[g] over one pixel's channels, the
// operands contiguous (forward: input x weight at a tap; weight gradient: dy x input). Out of
// line: inlined into the callers' loop nests it measured slower, its loop's registers depending
// on what else the file instantiates.
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

// The weight (K, Cg, R, S) as the forward's right-hand operand: per group, a [R*S*Cg][ld] matrix
// whose row (r, s, c) holds the Kg output channels, converted to the accumulator type and
// zero-padded to ld columns: packed[g][r][s][c][ld].
template <typename scalar_t>
std::vector<conv_acc_t<scalar_t>> pack_weight(const at::Tensor& weight, const Conv2dParams& p, int64_t ld) {
  const int64_t G = p.groups, Cg = p.in_per_group(), Kg = p.out_per_group(), R = p.kernel_h, S = p.kernel_w;
  std::vector<conv_acc_t<scalar_t>> packed(static_cast<size_t>(G * R * S * Cg * ld));
  const auto w = weight.accessor<scalar_t, 4>();
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) {
        conv_acc_t<scalar_t>* tap = packed.data() + ((g * R + r) * S + s) * Cg * ld;
        for (int64_t k = 0; k < Kg; ++k)
          for (int64_t c = 0; c < Cg; ++c) tap[c * ld + k] = static_cast<conv_acc_t<scalar_t>>(w[g * Kg + k][c][r][s]);
      }
  return packed;
}

// A depthwise weight (C, 1, R, S) with the taps outermost and the channels contiguous:
// by_tap[(r*S + s)*C + c], in the accumulator type.
template <typename scalar_t>
std::vector<conv_acc_t<scalar_t>> depthwise_weight_by_tap(const at::Tensor& weight, const Conv2dParams& p) {
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w;
  std::vector<conv_acc_t<scalar_t>> by_tap(static_cast<size_t>(R * S * C));
  const auto w = weight.accessor<scalar_t, 4>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) by_tap[(r * S + s) * C + c] = static_cast<conv_acc_t<scalar_t>>(w[c][0][r][s]);
  return by_tap;
}

// ---- forward -------------------------------------------------------------------------------
// out[n,k,p,q] = bias[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*sh - pt + r*dh, q*sw - pl + s*dw]

// Per group, the product of the block's patch rows [pixels][R*S*Cg] and the packed weight
// [R*S*Cg][Kg rounded up to a tile].
template <typename scalar_t>
void conv2d_forward_tiled(const at::Tensor& x_nhwc, const at::Tensor& weight,
                          const std::vector<conv_acc_t<scalar_t>>& bias, at::Tensor& out, const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  constexpr int64_t TC = kTileCols<acc>;
  const int64_t G = p.groups, Kg = p.out_per_group();
  const int64_t J = p.kernel_h * p.kernel_w * p.in_per_group(), Kp = round_up(Kg, TC);
  const std::vector<acc> w = pack_weight<scalar_t>(weight, p, Kp);

  const scalar_t* x = x_nhwc.const_data_ptr<scalar_t>();
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  const int64_t ys_n = out.stride(0), ys_k = out.stride(1), ys_p = out.stride(2), ys_q = out.stride(3);
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  const int64_t blocks = ceil_div(pixels, kBlockPixels);
  at::parallel_for(0, blocks, grain_for(kBlockPixels * G * J * Kp), [&](int64_t begin, int64_t end) {
    std::vector<acc> patches(static_cast<size_t>(kBlockPixels * J));
    Pixel block_pixels[kBlockPixels];
    int64_t y_offset[kBlockPixels];
    acc tile[kTileRows][TC];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t m0 = block * kBlockPixels, count = std::min(kBlockPixels, pixels - m0);
      const int64_t rows = round_up(count, kTileRows);
      decompose_pixels(block_pixels, m0, count, p);
      for (int64_t i = 0; i < count; ++i)
        y_offset[i] = block_pixels[i].n * ys_n + block_pixels[i].oh * ys_p + block_pixels[i].ow * ys_q;
      for (int64_t g = 0; g < G; ++g) {
        gather_patches(patches.data(), J, x, p, g, block_pixels, count, rows);
        for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
          for (int64_t k0 = 0; k0 < Kg; k0 += TC) {
            std::fill(&tile[0][0], &tile[0][0] + kTileRows * TC, acc(0));
            multiply_add_tile(&tile[0][0], TC, J, patches.data() + i0 * J, J, 1, w.data() + g * J * Kp + k0, Kp);
            for (int64_t i = 0; i < std::min(kTileRows, count - i0); ++i) {
              scalar_t* yp = y + y_offset[i0 + i];
              for (int64_t j = 0; j < std::min(TC, Kg - k0); ++j) {
                const int64_t k = g * Kg + k0 + j;
                yp[k * ys_k] = static_cast<scalar_t>(tile[i][j] + bias[k]);
              }
            }
          }
        }
      }
    }
  });
}

// Depthwise: each tap of an output pixel adds x * w over all the channels at once.
template <typename scalar_t>
void conv2d_forward_depthwise(const at::Tensor& x_nhwc, const at::Tensor& weight,
                              const std::vector<conv_acc_t<scalar_t>>& bias, at::Tensor& out, const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w;
  const std::vector<acc> w_by_tap = depthwise_weight_by_tap<scalar_t>(weight, p);

  const scalar_t* x = x_nhwc.const_data_ptr<scalar_t>();
  scalar_t* y = out.mutable_data_ptr<scalar_t>();
  const int64_t ys_n = out.stride(0), ys_k = out.stride(1), ys_p = out.stride(2), ys_q = out.stride(3);
  const int64_t row_cost = p.out_w * C * R * S;
  at::parallel_for(0, p.batch * p.out_h, grain_for(row_cost),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc> accum(static_cast<size_t>(C));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.out_h, oh = row % p.out_h;
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        std::copy(bias.begin(), bias.end(), accum.begin());
        for (int64_t r = 0; r < R; ++r) {
          const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_top, p.dilation_h);
          if (ih < 0 || ih >= p.in_h) continue;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t iw = conv_in_coord(ow, s, p.stride_w, p.pad_left, p.dilation_w);
            if (iw < 0 || iw >= p.in_w) continue;
            add_products(accum.data(), x + ((n * p.in_h + ih) * p.in_w + iw) * C, w_by_tap.data() + (r * S + s) * C, C);
          }
        }
        scalar_t* yp = y + n * ys_n + oh * ys_p + ow * ys_q;
        for (int64_t k = 0; k < C; ++k) yp[k * ys_k] = static_cast<scalar_t>(accum[k]);
      }
    }
  });
}

template <typename scalar_t>
void conv2d_forward_cpu(const at::Tensor& x_nhwc, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        at::Tensor& out, const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  std::vector<acc> bias_acc(static_cast<size_t>(p.out_channels), acc(0));
  if (bias.has_value()) {
    const auto b = bias->accessor<scalar_t, 1>();
    for (int64_t k = 0; k < p.out_channels; ++k) bias_acc[k] = static_cast<acc>(b[k]);
  }
  if (p.depthwise()) {
    conv2d_forward_depthwise<scalar_t>(x_nhwc, weight, bias_acc, out, p);
  } else {
    conv2d_forward_tiled<scalar_t>(x_nhwc, weight, bias_acc, out, p);
  }
}

// ---- backward-input ------------------------------------------------------------------------
// The flipped-kernel convolution, as a gather: each input position collects, through the taps
// of its stride phase only (backward_input_taps), the output gradients it contributed to:
//   dx[n,c,i,j] = sum_{k,r,s} w[k,c,r,s] * dy[n, k, (i+pt-r*dh)/sh, (j+pl-s*dw)/sw]
// The taps of a phase are a progression whose members depend only on (i + pt) mod sh and
// (j + pl) mod sw, so the input pixels of one row and one column phase share their taps: the
// block's rows gather dy at those taps ([pixels][taps * Kg], zero where the output position lies
// outside the gradient) and multiply the weight's rows for the same taps, channel-swapped.

// The taps of the progression for phase `phase` of one dimension.
inline std::vector<int64_t> phase_taps(int64_t phase, int64_t kernel, int64_t stride, int64_t dilation) {
  std::vector<int64_t> taps;
  const TapProgression<int64_t> t = backward_input_taps(phase, kernel, stride, dilation);
  for (int64_t tap = t.first; tap < kernel; tap += t.step) taps.push_back(tap);
  return taps;
}

// The rows of the backward-input's product for `count` input pixels of row ih at columns
// iw = first_iw + i * sw (one column phase): row i holds, for every useful tap (r in rs, s in ss)
// and output channel k of group g, dy[n, g*Kg + k, oh, ow] where the tap meets it, zero where
// (oh, ow) lies outside the gradient. Rows count .. rows-1 are zero (a partial last tile).
// ss is in descending order, so the output column ow = o + t * out_step of tap number t ascends.
template <typename acc_t, typename scalar_t>
void gather_output_gradients(acc_t* col, const scalar_t* dy_nhwc, const Conv2dParams& p, int64_t g, int64_t n,
                             int64_t ih, int64_t first_iw, const std::vector<int64_t>& rs,
                             const std::vector<int64_t>& ss, int64_t count, int64_t rows) {
  const int64_t Kg = p.out_per_group(), K = p.out_channels, sw = p.stride_w, dw = p.dilation_w;
  const int64_t T = static_cast<int64_t>(ss.size()), depth = static_cast<int64_t>(rs.size()) * T * Kg;
  const int64_t out_step = backward_input_steps(sw, dw).out;
  const int64_t o0 = backward_input_out_coord(first_iw + p.pad_left, ss.front(), sw, dw);
  for (int64_t i = 0; i < rows; ++i) {
    acc_t* row = col + i * depth;
    if (i >= count) {
      std::fill(row, row + depth, acc_t(0));
      continue;
    }
    // The taps t whose output column lies inside the gradient: t_begin <= t < t_end.
    const int64_t o = o0 + i;
    const int64_t t_begin = std::min(T, o >= 0 ? int64_t{0} : ceil_div(-o, out_step));
    const int64_t t_end = std::clamp(floor_div(p.out_w - 1 - o, out_step) + 1, t_begin, T);
    for (int64_t r : rs) {
      const int64_t oh = backward_input_out_coord(ih + p.pad_top, r, p.stride_h, p.dilation_h);
      const bool inside = oh >= 0 && oh < p.out_h;
      gather_kernel_row(row, inside ? dy_nhwc + (n * p.out_h + oh) * p.out_w * K + g * Kg : nullptr, o * K,
                        out_step * K, Kg, T, t_begin, t_end);
      row += T * Kg;
    }
  }
}

template <typename scalar_t>
void conv2d_backward_input_tiled(const at::Tensor& dy_nhwc, const at::Tensor& weight, at::Tensor& dx,
                                 const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  constexpr int64_t TC = kTileCols<acc>;
  const int64_t G = p.groups, Cg = p.in_per_group(), Kg = p.out_per_group();
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w, sh = p.stride_h, sw = p.stride_w;
  const int64_t Cp = round_up(Cg, TC);

  // Per phase pair (ph, pw) and group, the channel-swapped weight rows of the phase's taps in
  // (r, s, k) order: [taps * Kg][Cp]. Every tap belongs to exactly one phase pair.
  std::vector<std::vector<int64_t>> r_taps(sh), s_taps(sw);
  for (int64_t ph = 0; ph < sh; ++ph) r_taps[ph] = phase_taps(ph, R, sh, p.dilation_h);
  for (int64_t pw = 0; pw < sw; ++pw) {
    s_taps[pw] = phase_taps(pw, S, sw, p.dilation_w);
    std::reverse(s_taps[pw].begin(), s_taps[pw].end());  // see gather_output_gradients
  }
  std::vector<acc> w_phase(static_cast<size_t>(G * R * S * Kg * Cp));
  std::vector<int64_t> phase_offset(static_cast<size_t>(sh * sw * G));
  const auto w = weight.accessor<scalar_t, 4>();
  int64_t filled = 0;
  for (int64_t ph = 0; ph < sh; ++ph)
    for (int64_t pw = 0; pw < sw; ++pw)
      for (int64_t g = 0; g < G; ++g) {
        phase_offset[(ph * sw + pw) * G + g] = filled;
        for (int64_t r : r_taps[ph])
          for (int64_t s : s_taps[pw])
            for (int64_t k = 0; k < Kg; ++k, filled += Cp)
              for (int64_t c = 0; c < Cg; ++c) w_phase[filled + c] = static_cast<acc>(w[g * Kg + k][c][r][s]);
      }

  const scalar_t* dy = dy_nhwc.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
  const int64_t xs_n = dx.stride(0), xs_c = dx.stride(1), xs_h = dx.stride(2), xs_w = dx.stride(3);
  const int64_t row_cost = p.in_w * C * Kg * ceil_div(R, sh) * ceil_div(S, sw);

  at::parallel_for(0, p.batch * p.in_h, grain_for(row_cost),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc> gathered(static_cast<size_t>(kBlockPixels * R * S * Kg));
    acc tile[kTileRows][TC];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.in_h, ih = row % p.in_h, ph = (ih + p.pad_top) % sh;
      const std::vector<int64_t>& rs = r_taps[ph];
      // Columns j = first, first + sw, ... share their column phase.
      for (int64_t first = 0; first < std::min(sw, p.in_w); ++first) {
        const int64_t pw = (first + p.pad_left) % sw;
        const std::vector<int64_t>& ss = s_taps[pw];
        const int64_t depth = static_cast<int64_t>(rs.size() * ss.size()) * Kg;
        const int64_t columns = ceil_div(p.in_w - first, sw);
        for (int64_t b0 = 0; b0 < columns; b0 += kBlockPixels) {
          const int64_t count = std::min(kBlockPixels, columns - b0), rows = round_up(count, kTileRows);
          auto dx_at = [&](int64_t i, int64_t c) -> scalar_t& {
            return dxp[n * xs_n + c * xs_c + ih * xs_h + (first + (b0 + i) * sw) * xs_w];
          };
          if (depth == 0) {  // no tap of this phase meets a real gradient element
            for (int64_t i = 0; i < count; ++i)
              for (int64_t c = 0; c < C; ++c) dx_at(i, c) = scalar_t(0);
            continue;
          }
          for (int64_t g = 0; g < G; ++g) {
            gather_output_gradients(gathered.data(), dy, p, g, n, ih, first + b0 * sw, rs, ss, count, rows);
            const acc* w = w_phase.data() + phase_offset[(ph * sw + pw) * G + g];
            for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
              for (int64_t c0 = 0; c0 < Cg; c0 += TC) {
                std::fill(&tile[0][0], &tile[0][0] + kTileRows * TC, acc(0));
                multiply_add_tile(&tile[0][0], TC, depth, gathered.data() + i0 * depth, depth, 1, w + c0, Cp);
                for (int64_t i = 0; i < std::min(kTileRows, count - i0); ++i)
                  for (int64_t j = 0; j < std::min(TC, Cg - c0); ++j)
                    dx_at(i0 + i, g * Cg + c0 + j) = static_cast<scalar_t>(tile[i][j]);
              }
            }
          }
        }
      }
    }
  });
}

// Depthwise: one product per tap and channel, vectorised across the channels.
template <typename scalar_t>
void conv2d_backward_input_depthwise(const at::Tensor& dy_nhwc, const at::Tensor& weight, at::Tensor& dx,
                                     const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w;
  const std::vector<acc> w_by_tap = depthwise_weight_by_tap<scalar_t>(weight, p);

  const scalar_t* dy = dy_nhwc.const_data_ptr<scalar_t>();
  scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
  const int64_t xs_n = dx.stride(0), xs_c = dx.stride(1), xs_h = dx.stride(2), xs_w = dx.stride(3);
  const int64_t row_cost = p.in_w * C * ceil_div(R, p.stride_h) * ceil_div(S, p.stride_w);
  at::parallel_for(0, p.batch * p.in_h, grain_for(row_cost),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc> accum(static_cast<size_t>(C));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.in_h, ih = row % p.in_h;
      const TapProgression<int64_t> rt = backward_input_taps(ih + p.pad_top, R, p.stride_h, p.dilation_h);
      for (int64_t iw = 0; iw < p.in_w; ++iw) {
        std::fill(accum.begin(), accum.end(), acc(0));
        const TapProgression<int64_t> st = backward_input_taps(iw + p.pad_left, S, p.stride_w, p.dilation_w);
        for (int64_t r = rt.first; r < R; r += rt.step) {
          const int64_t oh = backward_input_out_coord(ih + p.pad_top, r, p.stride_h, p.dilation_h);
          if (oh < 0 || oh >= p.out_h) continue;
          for (int64_t s = st.first; s < S; s += st.step) {
            const int64_t ow = backward_input_out_coord(iw + p.pad_left, s, p.stride_w, p.dilation_w);
            if (ow < 0 || ow >= p.out_w) continue;
            add_products(accum.data(), dy + ((n * p.out_h + oh) * p.out_w + ow) * C,
                         w_by_tap.data() + (r * S + s) * C, C);
          }
        }
        scalar_t* xp = dxp + n * xs_n + ih * xs_h + iw * xs_w;
        for (int64_t c = 0; c < C; ++c) xp[c * xs_c] = static_cast<scalar_t>(accum[c]);
      }
    }
  });
}

// ---- backward-weight -----------------------------------------------------------------------
// Writes dw[k, c, r, s] = the sum over chunks, in chunk order, of part[chunk * chunk_stride +
// at(k, c, r, s)]: the weight gradient's partials reduced the same way for any number of threads.
template <typename scalar_t, typename acc_t, typename Offset>
void sum_partials_in_chunk_order(at::Tensor& dw, const acc_t* part, int64_t chunks, int64_t chunk_stride,
                                 const Offset& at) {
  scalar_t* dwp = dw.mutable_data_ptr<scalar_t>();
  const int64_t C = dw.size(1), R = dw.size(2), S = dw.size(3);
  const int64_t ws_k = dw.stride(0), ws_c = dw.stride(1), ws_r = dw.stride(2), ws_s = dw.stride(3);
  at::parallel_for(0, dw.size(0), grain_for(C * R * S * chunks), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s) {
            const int64_t offset = at(k, c, r, s);
            acc_t sum = 0;
            for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += part[chunk * chunk_stride + offset];
            dwp[k * ws_k + c * ws_c + r * ws_r + s * ws_s] = static_cast<scalar_t>(sum);
          }
  });
}

// dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*sh - pt + r*dh, q*sw - pl + s*dw]
// The N*P*Q reduction is split into fixed chunks; each (chunk, group) task accumulates a
// [R*S*Cg][Kg] partial as the product of the transposed patch rows and the output-gradient rows
// of its pixels, a block at a time, and the partials are summed in chunk order.
template <typename scalar_t>
void conv2d_backward_weight_tiled(const at::Tensor& dy_nhwc, const at::Tensor& x_nhwc, at::Tensor& dw,
                                  const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  constexpr int64_t TC = kTileCols<acc>;
  const int64_t G = p.groups, Cg = p.in_per_group(), Kg = p.out_per_group(), K = p.out_channels;
  const int64_t R = p.kernel_h, S = p.kernel_w;
  const int64_t J = R * S * Cg, Jp = round_up(J, kTileRows), Kp = round_up(Kg, TC);
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  const int64_t partial_size = G * Jp * Kp;
  const int64_t chunks = reduction_chunks(pixels, partial_size);
  const int64_t chunk_len = round_up(ceil_div(pixels, chunks), kBlockPixels);

  // partial[chunk][g][j][k], j = (r, s, c)
  const at::Tensor partial = new_buffer({chunks * partial_size},
                                        x_nhwc.options().dtype(c10::CppTypeToScalarType<acc>::value));
  acc* part = partial.mutable_data_ptr<acc>();
  const scalar_t* dy = dy_nhwc.const_data_ptr<scalar_t>();
  const scalar_t* x = x_nhwc.const_data_ptr<scalar_t>();

  at::parallel_for(0, chunks * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> patches(static_cast<size_t>(kBlockPixels * Jp));
    std::vector<acc> grads(static_cast<size_t>(kBlockPixels * Kp));
    Pixel block_pixels[kBlockPixels];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task % G, chunk = task / G;
      acc* t = part + task * Jp * Kp;
      std::fill(t, t + Jp * Kp, acc(0));
      const int64_t m_end = std::min(pixels, (chunk + 1) * chunk_len);
      for (int64_t m0 = chunk * chunk_len; m0 < m_end; m0 += kBlockPixels) {
        const int64_t count = std::min(kBlockPixels, m_end - m0);
        decompose_pixels(block_pixels, m0, count, p);
        gather_patches(patches.data(), Jp, x, p, g, block_pixels, count, count);
        for (int64_t i = 0; i < count; ++i) {
          load_row(grads.data() + i * Kp, dy + (m0 + i) * K + g * Kg, Kg);
          std::fill(grads.begin() + i * Kp + Kg, grads.begin() + (i + 1) * Kp, acc(0));
        }
        for (int64_t j0 = 0; j0 < Jp; j0 += kTileRows)
          for (int64_t k0 = 0; k0 < Kg; k0 += TC)
            multiply_add_tile(t + j0 * Kp + k0, Kp, count, patches.data() + j0, 1, Jp, grads.data() + k0, Kp);
      }
    }
  });

  sum_partials_in_chunk_order<scalar_t>(dw, part, chunks, partial_size,
                                        [&](int64_t k, int64_t c, int64_t r, int64_t s) {
                                          const int64_t g = k / Kg;
                                          return (g * Jp + (r * S + s) * Cg + c) * Kp + k % Kg;
                                        });
}

// Depthwise: one task per (chunk, tap) sums every channel at once, dy and x rows being
// contiguous over the channels; each weight element still sums its chunk's pixels in order.
template <typename scalar_t>
void conv2d_backward_weight_depthwise(const at::Tensor& dy_nhwc, const at::Tensor& x_nhwc, at::Tensor& dw,
                                      const Conv2dParams& p) {
  using acc = conv_acc_t<scalar_t>;
  const int64_t C = p.in_channels, R = p.kernel_h, S = p.kernel_w;
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  const int64_t weight_size = C * R * S;
  const int64_t chunks = reduction_chunks(pixels, weight_size);
  const int64_t chunk_len = ceil_div(pixels, chunks);

  // partial[chunk][r][s][c]
  const at::Tensor partial = new_buffer({chunks * weight_size},
                                        x_nhwc.options().dtype(c10::CppTypeToScalarType<acc>::value));
  acc* part = partial.mutable_data_ptr<acc>();
  const scalar_t* dy = dy_nhwc.const_data_ptr<scalar_t>();
  const scalar_t* x = x_nhwc.const_data_ptr<scalar_t>();
  at::parallel_for(0, chunks * R * S, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task % S, r = (task / S) % R, chunk = task / (S * R);
      acc* sums = part + task * C;
      std::fill(sums, sums + C, acc(0));
      const int64_t m_end = std::min(pixels, (chunk + 1) * chunk_len);
      for (int64_t m = chunk * chunk_len; m < m_end; ++m) {
        const int64_t ow = m % p.out_w, oh = (m / p.out_w) % p.out_h, n = m / (p.out_w * p.out_h);
        const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_top, p.dilation_h);
        const int64_t iw = conv_in_coord(ow, s, p.stride_w, p.pad_left, p.dilation_w);
        if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) continue;
        add_products(sums, dy + m * C, x + ((n * p.in_h + ih) * p.in_w + iw) * C, C);
      }
    }
  });

  sum_partials_in_chunk_order<scalar_t>(dw, part, chunks, weight_size,
                                        [&](int64_t k, int64_t, int64_t r, int64_t s) { return (r * S + s) * C + k; });
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
    if (p.depthwise()) {
      conv2d_backward_input_depthwise<scalar_t>(dy, weight, dx, p);
    } else {
      conv2d_backward_input_tiled<scalar_t>(dy, weight, dx, p);
    }
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
    if (p.depthwise()) {
      conv2d_backward_weight_depthwise<scalar_t>(dy, x, dw, p);
    } else {
      conv2d_backward_weight_tiled<scalar_t>(dy, x, dw, p);
    }
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
