// 2-D convolution: problem description and the index math shared by every backend.
// Torch-free, so the CPU kernels and the CUDA kernels (.cu) include the same definitions.
#pragma once

#include <cstdint>

#include "cnnkernels/common.h"

namespace cnnkernels {

// One conv2d problem. Sizes follow torch's names: input (N, C, H, W), weight (K, C/groups, R, S),
// output (N, K, P, Q). Only the leading padding (top, left) is needed to index; the trailing
// padding (which differs from the leading one for padding='same' with an even kernel) only
// enters the output extent, which is stored here already.
struct Conv2dParams {
  int64_t batch;         // N
  int64_t in_channels;   // C
  int64_t in_h, in_w;    // H, W
  int64_t out_channels;  // K
  int64_t out_h, out_w;  // P, Q
  int64_t kernel_h, kernel_w;  // R, S
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_left;
  int64_t dilation_h, dilation_w;
  int64_t groups;

  CNNK_HOST_DEVICE int64_t in_per_group() const { return in_channels / groups; }
  CNNK_HOST_DEVICE int64_t out_per_group() const { return out_channels / groups; }
  // One input and one output channel per group (MobileNet's depthwise layers).
  CNNK_HOST_DEVICE bool depthwise() const { return in_per_group() == 1 && out_per_group() == 1; }
};

// Output extent along one spatial dimension: the number of window positions, stepping by
// `stride`, of a window of dilated extent dilation*(kernel-1)+1 inside the padded input.
CNNK_HOST_DEVICE int64_t conv_out_size(int64_t in, int64_t pad_begin, int64_t pad_end, int64_t kernel,
                                       int64_t stride, int64_t dilation) {
  return (in + pad_begin + pad_end - dilation * (kernel - 1) - 1) / stride + 1;
}

// The input coordinate that output position `o` reads through kernel tap `t`
// (negative or >= the input extent when it falls into the zero padding).
CNNK_HOST_DEVICE int64_t conv_in_coord(int64_t o, int64_t t, int64_t stride, int64_t pad,
                                       int64_t dilation) {
  return o * stride - pad + t * dilation;
}

template <typename I>
CNNK_HOST_DEVICE I gcd(I a, I b) {
  while (b != 0) {
    const I r = a % b;
    a = b;
    b = r;
  }
  return a;
}

// Backward-input taps along one dimension.
//
// The input gradient is the output gradient, zero-inserted (stride-1 zeros between elements),
// padded, and convolved with the kernel rotated by 180 degrees. Written as a gather, input
// coordinate i receives from output position o through tap t exactly when
//     o * stride == i + pad - t * dilation,
// so only the taps with (i + pad - t*dilation) divisible by stride meet a real gradient
// element; every other tap would multiply an inserted zero. Those taps form the arithmetic
// progression first, first + step, ... with step = stride / gcd(stride, dilation), and they
// depend only on the phase (i + pad) mod stride: the stride*stride phases of the input
// gradient are each a stride-1 convolution over their own subset of taps.
template <typename I = int64_t>
struct TapProgression {
  I first;  // smallest useful tap, or `kernel` when this phase has none
  I step;
};

// The problem's steps, the same for every coordinate: between useful taps (the progression's
// step, stride / gcd(stride, dilation)) and between the outputs they reach (dilation / gcd).
template <typename I>
struct BackwardInputSteps {
  I tap, out;
};

template <typename I>
CNNK_HOST_DEVICE BackwardInputSteps<I> backward_input_steps(I stride, I dilation) {
  const I g = gcd(stride, dilation);
  return {stride / g, dilation / g};
}

template <typename I>
CNNK_HOST_DEVICE I backward_input_first_tap(I i_plus_pad, I kernel, I stride, I dilation, I tap_step) {
  for (I t = 0; t < tap_step && t < kernel; ++t) {
    if ((i_plus_pad - t * dilation) % stride == 0) return t;
  }
  return kernel;
}

template <typename I>
CNNK_HOST_DEVICE TapProgression<I> backward_input_taps(I i_plus_pad, I kernel, I stride, I dilation) {
  const I step = backward_input_steps(stride, dilation).tap;
  return {backward_input_first_tap(i_plus_pad, kernel, stride, dilation, step), step};
}

// The same gather seen from the output side, for code that needs only the outputs input
// coordinate i reaches, not the taps (the pooling backward): first, first + step, ..., last in
// increasing order (none when first > last), not yet clipped to [0, out extent). The smallest
// useful tap reaches `last`, each further one the output steps.out before. With the steps
// computed once per problem, a coordinate costs its first-tap search and two divisions instead
// of a division per output.
template <typename I>
struct OutputRange {
  I first, last, step;
};

template <typename I>
CNNK_HOST_DEVICE OutputRange<I> backward_input_outputs(I i, I kernel, I stride, I pad, I dilation,
                                                       BackwardInputSteps<I> steps) {
  const I tap = backward_input_first_tap(i + pad, kernel, stride, dilation, steps.tap);
  if (tap >= kernel) return {I{1}, I{0}, I{1}};
  const I last = (i + pad - tap * dilation) / stride;
  return {last - (kernel - 1 - tap) / steps.tap * steps.out, last, steps.out};
}

// Output position reached from input coordinate i through a useful tap t (see above); the
// caller still checks 0 <= o < out extent.
template <typename I>
CNNK_HOST_DEVICE I backward_input_out_coord(I i_plus_pad, I t, I stride, I dilation) {
  return (i_plus_pad - t * dilation) / stride;
}

}  // namespace cnnkernels
