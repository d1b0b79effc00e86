// 2-D pooling: problem description and the per-element rules shared by every backend
// (the CPU kernels, the CUDA kernels, and, mirrored in Python, the Triton kernels).
#pragma once

#include <cstdint>

#include "cnnkernels/common.h"

namespace cnnkernels {

// One pooling problem over planes (N*C of them) of H x W inputs and P x Q outputs.
struct Pool2dParams {
  int64_t batch, channels;
  int64_t in_h, in_w;
  int64_t out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dilation_h, dilation_w;
};

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
// (row-major) wins.
template <typename acc>
CNNK_HOST_DEVICE bool max_pool_takes(acc value, acc current) {
  return value > current || value != value;
}

// Average pooling's divisor for the window of output (oh, ow), torch's rule: the window is cut
// at the end of the padded input; count_include_pad counts the padding it still covers,
// otherwise only the input elements; a non-zero divisor_override replaces both (0: none).
CNNK_HOST_DEVICE int64_t avg_pool_divisor(const Pool2dParams& p, int64_t oh, int64_t ow,
                                          bool count_include_pad, int64_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  int64_t h0 = oh * p.stride_h - p.pad_h, w0 = ow * p.stride_w - p.pad_w;
  int64_t h1 = h0 + p.kernel_h < p.in_h + p.pad_h ? h0 + p.kernel_h : p.in_h + p.pad_h;
  int64_t w1 = w0 + p.kernel_w < p.in_w + p.pad_w ? w0 + p.kernel_w : p.in_w + p.pad_w;
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < p.in_h ? h1 : p.in_h;
  w1 = w1 < p.in_w ? w1 : p.in_w;
  return (h1 - h0) * (w1 - w0);
}

// The output windows whose (undilated) span covers input coordinate i: o in [first, last].
// Used by the average-pooling backward gather.
CNNK_HOST_DEVICE int64_t window_first_covering(int64_t i, int64_t kernel, int64_t pad, int64_t stride) {
  const int64_t o = floor_div(i + pad - kernel, stride) + 1;
  return o > 0 ? o : 0;
}
CNNK_HOST_DEVICE int64_t window_last_covering(int64_t i, int64_t pad, int64_t stride, int64_t out) {
  const int64_t o = floor_div(i + pad, stride);
  return o < out - 1 ? o : out - 1;
}

// Adaptive pooling: output o of `out` averages or maximises input [start, end) of `in`.
CNNK_HOST_DEVICE int64_t adaptive_start(int64_t o, int64_t out, int64_t in) { return (o * in) / out; }
CNNK_HOST_DEVICE int64_t adaptive_end(int64_t o, int64_t out, int64_t in) {
  return ((o + 1) * in + out - 1) / out;
}
// The adaptive outputs whose window contains input i are within [first, last] (check each).
CNNK_HOST_DEVICE int64_t adaptive_first_covering(int64_t i, int64_t out, int64_t in) {
  const int64_t o = (i * out) / in;  // adaptive_start(o) <= i for this o; earlier ones may too
  return o > 0 ? o - 1 : 0;
}
CNNK_HOST_DEVICE int64_t adaptive_last_covering(int64_t i, int64_t out, int64_t in) {
  const int64_t o = ((i + 1) * out + in - 1) / in;
  return o < out - 1 ? o : out - 1;
}

}  // namespace cnnkernels
