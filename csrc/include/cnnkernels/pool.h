// 2-D pooling: problem description and the per-element rules shared by every backend
// (the CPU kernels, the CUDA kernels, and, mirrored in Python, the Triton kernels).
#pragma once

#include <cstdint>

#include "cnnkernels/common.h"

namespace cnnkernels {

// One pooling problem over planes (N*C of them) of H x W inputs and P x Q outputs, in an
// integer type I: int64_t as the host describes it (Pool2dParams), int32_t where the GPU kernels
// find that every coordinate fits (32-bit division is several times cheaper there).
template <typename I>
struct BasicPool2dParams {
  I batch, channels;
  I in_h, in_w;
  I out_h, out_w;
  I kernel_h, kernel_w;
  I stride_h, stride_w;
  I pad_h, pad_w;
  I dilation_h, dilation_w;

  template <typename J>
  BasicPool2dParams<J> as() const {
    return {J(batch),    J(channels), J(in_h),     J(in_w),  J(out_h), J(out_w),      J(kernel_h),
            J(kernel_w), J(stride_h), J(stride_w), J(pad_h), J(pad_w), J(dilation_h), J(dilation_w)};
  }
};
using Pool2dParams = BasicPool2dParams<int64_t>;

// torch's output extent of a window sweep. With ceil_mode a last, partial window is kept only
// if it starts inside the input or its leading padding.
CNNK_HOST_DEVICE int64_t pool_out_size(int64_t in, int64_t kernel, int64_t pad, int64_t stride,
                                       int64_t dilation, bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = floor_div(span, stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// Max pooling's comparison, torch's rule: a larger value or a NaN takes the place of the
// current maximum, so NaN propagates and, among equal values, the first one in window order
// (row-major) wins. Both tests are evaluated (no short circuit), so that loops over it vectorise.
template <typename acc>
CNNK_HOST_DEVICE bool max_pool_takes(acc value, acc current) {
  return (value > current) | (value != value);
}

// Average pooling's divisor for the window of output (oh, ow), torch's rule: the window is cut
// at the end of the padded input; count_include_pad counts the padding it still covers,
// otherwise only the input elements; a non-zero divisor_override replaces both (0: none).
template <typename I>
CNNK_HOST_DEVICE int64_t avg_pool_divisor(const BasicPool2dParams<I>& p, I oh, I ow, bool count_include_pad,
                                          int64_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  I h0 = oh * p.stride_h - p.pad_h, w0 = ow * p.stride_w - p.pad_w;
  I h1 = h0 + p.kernel_h < p.in_h + p.pad_h ? h0 + p.kernel_h : p.in_h + p.pad_h;
  I w1 = w0 + p.kernel_w < p.in_w + p.pad_w ? w0 + p.kernel_w : p.in_w + p.pad_w;
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < p.in_h ? h1 : p.in_h;
  w1 = w1 < p.in_w ? w1 : p.in_w;
  return (h1 - h0) * (w1 - w0);
}

// The output windows whose (undilated) span covers input coordinate i: o in [first, last].
// Used by the average-pooling backward gather.
template <typename I>
CNNK_HOST_DEVICE I window_first_covering(I i, I kernel, I pad, I stride) {
  const I o = floor_div(i + pad - kernel, stride) + 1;
  return o > 0 ? o : 0;
}
template <typename I>
CNNK_HOST_DEVICE I window_last_covering(I i, I pad, I stride, I out) {
  const I o = floor_div(i + pad, stride);
  return o < out - 1 ? o : out - 1;
}

// Adaptive pooling: output o of `out` averages or maximises input [start, end) of `in`.
template <typename I>
CNNK_HOST_DEVICE I adaptive_start(I o, I out, I in) { return (o * in) / out; }
template <typename I>
CNNK_HOST_DEVICE I adaptive_end(I o, I out, I in) {
  return ((o + 1) * in + out - 1) / out;
}
// The adaptive outputs whose window contains input i are within [first, last] (check each).
template <typename I>
CNNK_HOST_DEVICE I adaptive_first_covering(I i, I out, I in) {
  const I o = (i * out) / in;  // adaptive_start(o) <= i for this o; earlier ones may too
  return o > 0 ? o - 1 : 0;
}
template <typename I>
CNNK_HOST_DEVICE I adaptive_last_covering(I i, I out, I in) {
  const I o = ((i + 1) * out + in - 1) / in;
  return o < out - 1 ? o : out - 1;
}

}  // namespace cnnkernels
