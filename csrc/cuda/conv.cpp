// conv2d on CUDA, host side: argument checks, allocation, device guard, current stream; the
// kernels are in conv_kernel.cu. Tensors are passed by pointer and element strides, so any
// layout works (NCHW, channels_last, expanded or transposed gradients); where an operand's
// layout is all that keeps the kernels from 16-byte loads, they get a channels_last copy.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "conv_kernel.h"
#include "host/alloc.h"
#include "host/conv.h"
#include "host/cuda.h"

namespace cnnkernels {
namespace {

void copy_strides(const at::Tensor& t, int64_t (&out)[4]) {
  for (int d = 0; d < 4; ++d) out[d] = t.stride(d);
}

at::ScalarType accumulator_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// A GEMM operand as the kernels had best read it. With its channels H*W apart (NCHW) every
// element is a scalar load with its own address and mask; where the channels per group fill
// 16-byte runs and the kernels read each element often enough to repay the copy (`reads`, see
// kCopyMinReads), a channels_last copy (on the current stream) lets them load runs instead,
// through cp.async on tensor cores. The operator's result keeps the caller's layout (its buffer
// is allocated before, from the original operands). The Triton backend makes the same choice
// (_channels_innermost in cnnkernels/triton/conv.py).
at::Tensor channels_innermost(const at::Tensor& t, int64_t channels_per_group, int64_t reads) {
  if (t.stride(1) == 1 || t.size(1) == 1 || !channel_runs_fit(t.element_size(), channels_per_group) ||
      reads < kCopyMinReads) {
    return t;
  }
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "cnnkernels::conv2d";
  const DType dtype = kernel_dtype(op, input);
  const Conv2dParams p = check_conv2d_forward(op, input, weight, bias, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_buffer({p.batch, p.out_channels, p.out_h, p.out_w}, input.options(),
                              conv2d_memory_format(input, weight));
  if (out.numel() == 0) return out;
  const at::Tensor x = channels_innermost(input, p.in_per_group(), input_reads(p));
  const at::Tensor w = channels_innermost(weight, p.in_per_group(), weight_reads(p));
  Conv2dTensors t;
  t.input = const_cast<void*>(x.const_data_ptr());
  copy_strides(x, t.input_stride);
  t.weight = const_cast<void*>(w.const_data_ptr());
  copy_strides(w, t.weight_stride);
  t.output = out.mutable_data_ptr();
  copy_strides(out, t.output_stride);
  // A bias is read with unit stride.
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  t.bias = b.defined() ? b.const_data_ptr() : nullptr;
  check_launch(op, launch_conv2d_forward(dtype, p, t, current_stream()));
  return out;
}

at::Tensor conv2d_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                      at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups) {
  const char* op = "cnnkernels::conv2d_backward_input";
  const DType dtype = kernel_dtype(op, grad_output);
  const Conv2dParams p =
      check_conv2d_backward_input(op, grad_output, weight, input_size, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor dx = new_buffer(input_size, grad_output.options(), conv2d_memory_format(grad_output, weight));
  if (dx.numel() == 0) return dx;
  // Every element of dx is written: positions no tap reaches get an empty sum, 0.
  const at::Tensor dy = channels_innermost(grad_output, p.out_per_group(), grad_output_reads(p, false));
  const at::Tensor w = channels_innermost(weight, p.in_per_group(), weight_reads(p));
  Conv2dTensors t;
  t.input = dx.mutable_data_ptr();
  copy_strides(dx, t.input_stride);
  t.weight = const_cast<void*>(w.const_data_ptr());
  copy_strides(w, t.weight_stride);
  t.output = const_cast<void*>(dy.const_data_ptr());
  copy_strides(dy, t.output_stride);
  check_launch(op, launch_conv2d_backward_input(dtype, p, t, current_stream()));
  return dx;
}

at::Tensor conv2d_backward_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                       at::IntArrayRef weight_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, int64_t groups) {
  const char* op = "cnnkernels::conv2d_backward_weight";
  const DType dtype = kernel_dtype(op, grad_output);
  const Conv2dParams p =
      check_conv2d_backward_weight(op, grad_output, input, weight_size, stride, padding, dilation, groups);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor dw = new_buffer(weight_size, grad_output.options(), conv2d_memory_format(grad_output, input));
  if (dw.numel() == 0) return dw;
  if (grad_output.numel() == 0) return dw.zero_();
  // Split count from the shape alone (tiles of the nominal size), never from the device.
  const int64_t pixels = p.batch * p.out_h * p.out_w;
  const int64_t splits = reduction_splits(pixels, backward_weight_tiles(p));
  const int64_t chunk = ceil_div(pixels, splits);
  const at::Tensor partials =
      new_buffer({splits, dw.numel()}, grad_output.options().dtype(accumulator_type(grad_output)));
  // With (channel, tap) pairs as its GEMM columns, the input is read element by element in any
  // layout: a copy would buy nothing.
  const bool taps_in_columns = backward_weight_taps_in_columns(p);
  const at::Tensor dy = channels_innermost(grad_output, p.out_per_group(), grad_output_reads(p, taps_in_columns));
  const at::Tensor x = taps_in_columns ? input : channels_innermost(input, p.in_per_group(), input_reads(p));
  Conv2dTensors t;
  t.input = const_cast<void*>(x.const_data_ptr());
  copy_strides(x, t.input_stride);
  t.output = const_cast<void*>(dy.const_data_ptr());
  copy_strides(dy, t.output_stride);
  t.partials = partials.mutable_data_ptr();
  const cudaStream_t stream = current_stream();
  check_launch(op, launch_conv2d_backward_weight(dtype, p, t, splits, chunk, stream));
  const int64_t sizes[4] = {dw.size(0), dw.size(1), dw.size(2), dw.size(3)};
  int64_t strides[4];
  copy_strides(dw, strides);
  check_launch(op, launch_sum_partials(dtype, partials.const_data_ptr(), splits, sizes, dw.mutable_data_ptr(),
                                       strides, stream));
  return dw;
}

at::Tensor conv2d_backward_bias_cuda(const at::Tensor& grad_output) {
  const char* op = "cnnkernels::conv2d_backward_bias";
  const DType dtype = kernel_dtype(op, grad_output);
  TORCH_CHECK(grad_output.dim() == 4, op, ": expected a 4-D grad_output, got sizes ", grad_output.sizes());
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t channels = grad_output.size(1);
  at::Tensor grad_bias = new_buffer({channels}, grad_output.options());
  if (grad_bias.numel() == 0) return grad_bias;
  if (grad_output.numel() == 0) return grad_bias.zero_();

  // In either dense layout (H, W) collapse into one pixel index; the strides follow from the
  // layout (a size-1 dimension may carry any stride, so they are not read off the tensor).
  const bool channels_last = grad_output.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const at::Tensor grad = grad_output.contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous);
  const int64_t pixels_per_image = grad.size(2) * grad.size(3);
  const int64_t stride_n = channels * pixels_per_image;
  const int64_t stride_k = channels_last ? 1 : pixels_per_image;
  const int64_t stride_pq = channels_last ? channels : 1;
  const int64_t splits = reduction_splits(grad.size(0) * pixels_per_image, ceil_div<int64_t>(channels, 32));
  const at::Tensor partials = new_buffer({splits, channels}, grad.options().dtype(accumulator_type(grad)));
  check_launch(op, launch_conv2d_backward_bias(dtype, grad.const_data_ptr(), grad.size(0), channels,
                                               pixels_per_image, stride_n, stride_k, stride_pq, splits,
                                               partials.mutable_data_ptr(), grad_bias.mutable_data_ptr(),
                                               current_stream()));
  return grad_bias;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkernels, CNNK_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_backward_input", &conv2d_backward_input_cuda);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_cuda);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_cuda);
}

}  // namespace cnnkernels
