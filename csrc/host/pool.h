// Host-side argument checking and allocation for the pooling operators, shared by the CPU and
// CUDA backends (cpu/pool.cpp, cuda/pool.cpp). Messages follow torch's own pooling checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "cnnkernels/pool.h"
#include "host/alloc.h"

namespace cnnkernels {

inline void check_pool_input(const char* op, at::IntArrayRef sizes) {
  TORCH_CHECK(sizes.size() == 4 && sizes[1] > 0 && sizes[2] > 0 && sizes[3] > 0, op,
              ": expected a 4-D (N, C, H, W) input with non-zero C, H and W (N may be 0), got sizes ", sizes);
}

// Window geometry shared by max and average pooling; the output extent comes from the input
// (forward, with ceil_mode) or is given (backward: the gradient's extent).
inline Pool2dParams pool2d_geometry(const char* op, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_pool_input(op, input_size);
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": expected kernel_size, stride, padding and dilation of 2 values each");
  // torch's pooling holds these in 32-bit ints and rejects larger ones before its other checks;
  // the bound also keeps the window arithmetic below (effective kernel, output size) from overflowing.
  for (const at::IntArrayRef values : {kernel_size, stride, padding, dilation}) {
    for (const int64_t v : values) {
      TORCH_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(), op,
                  ": value cannot be converted to type int without overflow (got ", v, ")");
    }
  }
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, op,
              ": kernel size should be greater than zero, but got kH: ", kernel_size[0], " kW: ", kernel_size[1]);
  TORCH_CHECK(stride[0] != 0 && stride[1] != 0, op, ": stride should not be zero");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, ": stride should be greater than zero, but got dH: ", stride[0],
              " dW: ", stride[1]);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, ": dilation should be greater than zero, but got dilationH: ",
              dilation[0], " dilationW: ", dilation[1]);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(padding[d] >= 0, op, ": pad must be non-negative, but got pad: ", padding[d]);
    const int64_t effective = (kernel_size[d] - 1) * dilation[d] + 1;
    TORCH_CHECK(padding[d] <= effective / 2, op, ": pad should be at most half of effective kernel size, but got pad=",
                padding[d], ", kernel_size=", kernel_size[d], " and dilation=", dilation[d]);
  }
  // torch checks this after the dilated (effective) kernel bound above.
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
              ": pad should be smaller than or equal to half of kernel size, but got padW = ", padding[1],
              ", padH = ", padding[0], ", kW = ", kernel_size[1], ", kH = ", kernel_size[0]);
  Pool2dParams p{};
  p.batch = input_size[0];
  p.channels = input_size[1];
  p.in_h = input_size[2];
  p.in_w = input_size[3];
  p.kernel_h = kernel_size[0];
  p.kernel_w = kernel_size[1];
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dilation_h = dilation[0];
  p.dilation_w = dilation[1];
  return p;
}

// The backward gathers index grad_output (and indices) by the input's (n, c): they must agree,
// or the kernels would read past the end of grad_output.
inline void check_grad_output_planes(const char* op, const at::Tensor& grad_output, at::IntArrayRef input_size) {
  TORCH_CHECK(grad_output.dim() == 4 && input_size.size() == 4 && grad_output.size(0) == input_size[0] &&
                  grad_output.size(1) == input_size[1],
              op, ": grad_output of size ", grad_output.sizes(), " does not match the input size ", input_size);
}

inline Pool2dParams make_pool2d_params(const char* op, const at::Tensor& input, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       bool ceil_mode) {
  Pool2dParams p = pool2d_geometry(op, input.sizes(), kernel_size, stride, padding, dilation);
  p.out_h = pool_out_size(p.in_h, p.kernel_h, p.pad_h, p.stride_h, p.dilation_h, ceil_mode);
  p.out_w = pool_out_size(p.in_w, p.kernel_w, p.pad_w, p.stride_w, p.dilation_w, ceil_mode);
  TORCH_CHECK(p.out_h >= 1 && p.out_w >= 1, op, ": Given input size: (", p.channels, "x", p.in_h, "x", p.in_w,
              "). Calculated output size: (", p.channels, "x", p.out_h, "x", p.out_w, "). Output size is too small");
  return p;
}

inline Pool2dParams make_pool2d_backward_params(const char* op, const at::Tensor& grad_output,
                                                at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation) {
  Pool2dParams p = pool2d_geometry(op, input_size, kernel_size, stride, padding, dilation);
  check_grad_output_planes(op, grad_output, input_size);
  p.out_h = grad_output.size(2);
  p.out_w = grad_output.size(3);
  return p;
}

// Adaptive pooling: only the input and output extents matter.
inline Pool2dParams make_adaptive_pool2d_params(const char* op, at::IntArrayRef input_size,
                                                at::IntArrayRef output_size) {
  check_pool_input(op, input_size);
  TORCH_CHECK(output_size.size() == 2 && output_size[0] >= 0 && output_size[1] >= 0, op,
              ": elements of output_size must be greater than or equal to 0, got ", output_size);
  Pool2dParams p{};
  p.batch = input_size[0];
  p.channels = input_size[1];
  p.in_h = input_size[2];
  p.in_w = input_size[3];
  p.out_h = output_size[0];
  p.out_w = output_size[1];
  return p;
}

inline void check_pool_indices(const char* op, const at::Tensor& indices, const at::Tensor& grad_output) {
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.sizes() == grad_output.sizes(), op,
              ": expected int64 indices of the gradient's size ", grad_output.sizes(), ", got ",
              indices.scalar_type(), " of size ", indices.sizes());
  TORCH_CHECK(indices.device() == grad_output.device(), op, ": indices and grad_output must be on the same device");
}

inline void check_unpool_backward_args(const char* op, const at::Tensor& grad_output, const at::Tensor& indices) {
  TORCH_CHECK(grad_output.dim() == 4, op, ": expected a 4-D grad_output, got sizes ", grad_output.sizes());
  TORCH_CHECK(indices.dim() == 4 && indices.scalar_type() == at::kLong, op,
              ": expected 4-D int64 indices, got ", indices.scalar_type(), " of size ", indices.sizes());
  TORCH_CHECK(indices.device() == grad_output.device(), op, ": indices and grad_output must be on the same device");
  TORCH_CHECK(indices.size(0) == grad_output.size(0) && indices.size(1) == grad_output.size(1), op,
              ": indices of size ", indices.sizes(), " do not match grad_output of size ", grad_output.sizes(),
              " in batch and channels");
}

// 0 stands for "no override" in the kernels.
inline int64_t check_divisor_override(const char* op, c10::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op, ": divisor must be not zero");
  return divisor_override.value_or(0);
}

inline void check_unpool_args(const char* op, const at::Tensor& input, const at::Tensor& indices,
                              at::IntArrayRef output_size) {
  TORCH_CHECK(input.dim() == 4, op, ": expected a 4-D input, got sizes ", input.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.sizes() == input.sizes(), op,
              ": expected int64 indices of the input's size ", input.sizes(), ", got ", indices.scalar_type(),
              " of size ", indices.sizes());
  TORCH_CHECK(indices.device() == input.device(), op, ": indices and input must be on the same device");
  TORCH_CHECK(output_size.size() == 2 && output_size[0] >= 0 && output_size[1] >= 0, op,
              ": expected output_size of 2 non-negative values, got ", output_size);
}

// Pooling outputs (values and indices) keep the input's memory format.
inline at::Tensor new_pool_output(const at::Tensor& input, const Pool2dParams& p, at::ScalarType dtype) {
  return new_buffer({p.batch, p.channels, p.out_h, p.out_w}, input.options().dtype(dtype),
                    input.suggest_memory_format());
}

}  // namespace cnnkernels
