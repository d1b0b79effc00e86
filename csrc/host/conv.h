// Host-side argument checking for the conv2d operators, shared by the CPU and CUDA backends.
// The Python layer (cnnkernels/ops/conv.py) normalises and validates the user-facing
// arguments first; these checks make the operators themselves safe to call directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "cnnkernels/conv.h"

namespace cnnkernels {

// Memory format of every tensor a conv2d operator returns: channels_last when either tensor
// operand is channels_last, as torch's own convolution does.
inline at::MemoryFormat conv2d_memory_format(const at::Tensor& a, const at::Tensor& b) {
  const bool cl = a.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                  b.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline void check_same_dtype_device(const char* op, const at::Tensor& a, const char* a_name,
                                    const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", a_name, " and ", b_name,
              " to have the same dtype, but got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": expected ", a_name, " and ", b_name,
              " on the same device, but got ", a.device(), " and ", b.device());
}

// Builds the problem description from the operator arguments, rejecting anything the kernels
// cannot index safely. `padding` is (top, bottom, left, right).
inline Conv2dParams make_conv2d_params(const char* op, at::IntArrayRef input_size,
                                       at::IntArrayRef weight_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups) {
  TORCH_CHECK(input_size.size() == 4, op, ": expected a 4-D (N, C, H, W) input, got sizes ",
              input_size);
  TORCH_CHECK(weight_size.size() == 4, op, ": expected a 4-D (K, C/groups, R, S) weight, got sizes ",
              weight_size);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 4 && dilation.size() == 2, op,
              ": expected stride[2], padding[4] (top, bottom, left, right) and dilation[2]");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": non-positive stride is not supported");
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, ": non-positive dilation is not supported");
  for (int64_t p : padding) TORCH_CHECK(p >= 0, op, ": negative padding is not supported");
  TORCH_CHECK(groups > 0, op, ": non-positive groups is not supported");
  for (int64_t s : input_size) TORCH_CHECK(s >= 0, op, ": negative input size ", input_size);
  TORCH_CHECK(input_size[0] == 0 || input_size[1] == 0 || (input_size[2] > 0 && input_size[3] > 0), op,
              ": Only zero batch or zero channel inputs are supported, but got input shape: ", input_size);
  TORCH_CHECK(weight_size[0] > 0 && weight_size[0] % groups == 0, op, ": given groups=", groups,
              ", expected weight to be positive and divisible by ", groups,
              " at dimension 0, but got weight of size ", weight_size);
  TORCH_CHECK(weight_size[2] > 0 && weight_size[3] > 0, op, ": kernel size must be positive, got ",
              weight_size);
  TORCH_CHECK(input_size[1] == weight_size[1] * groups, op, ": given groups=", groups,
              ", weight of size ", weight_size, ", expected input", input_size, " to have ",
              weight_size[1] * groups, " channels, but got ", input_size[1], " channels instead");

  Conv2dParams p{};
  p.batch = input_size[0];
  p.in_channels = input_size[1];
  p.in_h = input_size[2];
  p.in_w = input_size[3];
  p.out_channels = weight_size[0];
  p.kernel_h = weight_size[2];
  p.kernel_w = weight_size[3];
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_top = padding[0];
  p.pad_left = padding[2];
  p.dilation_h = dilation[0];
  p.dilation_w = dilation[1];
  p.groups = groups;
  const int64_t padded_h = p.in_h + padding[0] + padding[1];
  const int64_t padded_w = p.in_w + padding[2] + padding[3];
  const int64_t extent_h = p.dilation_h * (p.kernel_h - 1) + 1;
  const int64_t extent_w = p.dilation_w * (p.kernel_w - 1) + 1;
  TORCH_CHECK(extent_h <= padded_h && extent_w <= padded_w, op,
              ": calculated padded input size per channel: (", padded_h, " x ", padded_w,
              "). Kernel size: (", extent_h, " x ", extent_w,
              "). Kernel size can't be greater than actual input size");
  p.out_h = conv_out_size(p.in_h, padding[0], padding[1], p.kernel_h, p.stride_h, p.dilation_h);
  p.out_w = conv_out_size(p.in_w, padding[2], padding[3], p.kernel_w, p.stride_w, p.dilation_w);
  return p;
}

// Checks that a gradient of the output has exactly the shape the forward would produce.
inline void check_grad_output(const char* op, const at::Tensor& grad_output, const Conv2dParams& p) {
  const bool ok = grad_output.dim() == 4 && grad_output.size(0) == p.batch &&
                  grad_output.size(1) == p.out_channels && grad_output.size(2) == p.out_h &&
                  grad_output.size(3) == p.out_w;
  TORCH_CHECK(ok, op, ": expected grad_output of size [", p.batch, ", ", p.out_channels, ", ",
              p.out_h, ", ", p.out_w, "], got ", grad_output.sizes());
}

// The checks every backend runs on its operator's arguments (its own dtype support aside).
inline Conv2dParams check_conv2d_forward(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  check_same_dtype_device(op, input, "input", weight, "weight");
  if (bias.has_value()) {
    check_same_dtype_device(op, input, "input", *bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": given weight of size ",
                weight.sizes(), ", expected bias to be 1-dimensional with ", weight.size(0),
                " elements, but got bias of size ", bias->sizes(), " instead");
  }
  return make_conv2d_params(op, input.sizes(), weight.sizes(), stride, padding, dilation, groups);
}

inline Conv2dParams check_conv2d_backward_input(const char* op, const at::Tensor& grad_output,
                                                const at::Tensor& weight, at::IntArrayRef input_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation, int64_t groups) {
  check_same_dtype_device(op, grad_output, "grad_output", weight, "weight");
  const Conv2dParams p = make_conv2d_params(op, input_size, weight.sizes(), stride, padding, dilation, groups);
  check_grad_output(op, grad_output, p);
  return p;
}

inline Conv2dParams check_conv2d_backward_weight(const char* op, const at::Tensor& grad_output,
                                                 const at::Tensor& input, at::IntArrayRef weight_size,
                                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                                 at::IntArrayRef dilation, int64_t groups) {
  check_same_dtype_device(op, grad_output, "grad_output", input, "input");
  const Conv2dParams p = make_conv2d_params(op, input.sizes(), weight_size, stride, padding, dilation, groups);
  check_grad_output(op, grad_output, p);
  return p;
}

}  // namespace cnnkernels
