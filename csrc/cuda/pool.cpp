// Pooling on CUDA, host side: argument checks (host/pool.h, shared with the CPU backend),
// allocation in the memory format the operator contract gives, device guard, current stream;
// the kernels are in pool_kernel.cu. Tensors are passed by pointer and element strides, so
// any layout works (NCHW, channels_last, expanded or transposed gradients).
//
// Memory formats (the fake kernels in cnnkernels/ops/pool.py give the same): forward outputs
// and indices, and max_unpool2d's output, follow the input; the backward gathers follow
// grad_output (autograd hands it over in the input's format); max_unpool2d_backward follows
// the indices.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "host/alloc.h"
#include "host/cuda.h"
#include "host/pool.h"
#include "pool_kernel.h"

namespace cnnkernels {
namespace {

StridedTensor reads(const at::Tensor& t) {
  StridedTensor s;
  s.data = const_cast<void*>(t.const_data_ptr());
  for (int d = 0; d < 4; ++d) s.stride[d] = t.stride(d);
  return s;
}

StridedTensor writes(at::Tensor& t) {
  StridedTensor s;
  s.data = t.mutable_data_ptr();
  for (int d = 0; d < 4; ++d) s.stride[d] = t.stride(d);
  return s;
}

bool is_channels_last(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The kernels' operands of a pooling forward: the input read, the pooled output (and the
// indices) written; the output's layout is the one the kernel indexes by.
Pool2dTensors pooling_operands(const at::Tensor& input, at::Tensor& out, at::Tensor* indices = nullptr) {
  Pool2dTensors t;
  t.input = reads(input);
  t.output = writes(out);
  if (indices != nullptr) t.indices = writes(*indices);
  t.channels_last = is_channels_last(out);
  return t;
}

// The operands of a backward gather: grad_output (and the indices) read, grad_input written.
Pool2dTensors gather_operands(at::Tensor& grad_input, const at::Tensor& grad_output,
                              const at::Tensor* indices = nullptr) {
  Pool2dTensors t;
  t.input = writes(grad_input);
  t.output = reads(grad_output);
  if (indices != nullptr) t.indices = reads(*indices);
  t.channels_last = is_channels_last(grad_input);
  return t;
}

// A backward gather's result: the input's sizes in grad_output's memory format.
at::Tensor new_grad_input(at::IntArrayRef input_size, const at::Tensor& grad_output) {
  return new_buffer(input_size, grad_output.options(), grad_output.suggest_memory_format());
}

// max_unpool2d in pooling terms: the unpooled tensor is the (H, W) side the indices point into,
// the pooled tensor the (P, Q) side (see pool_kernel.h).
Pool2dParams unpool_params(int64_t batch, int64_t channels, int64_t unpooled_h, int64_t unpooled_w,
                           int64_t pooled_h, int64_t pooled_w) {
  Pool2dParams p{};
  p.batch = batch;
  p.channels = channels;
  p.in_h = unpooled_h;
  p.in_w = unpooled_w;
  p.out_h = pooled_h;
  p.out_w = pooled_w;
  p.kernel_h = p.kernel_w = p.stride_h = p.stride_w = p.dilation_h = p.dilation_w = 1;
  return p;
}

// ---- max pooling ---------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode) {
  const char* op = "cnnkernels::max_pool2d";
  const DType dtype = kernel_dtype(op, input);
  const Pool2dParams p = make_pool2d_params(op, input, kernel_size, stride, padding, dilation, ceil_mode);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  at::Tensor indices = new_pool_output(input, p, at::kLong);
  if (out.numel() == 0) return {out, indices};
  const Pool2dTensors t = pooling_operands(input, out, &indices);
  check_launch(op, launch_max_pool2d(dtype, p, t, current_stream()));
  return {out, indices};
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                    at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "cnnkernels::max_pool2d_backward";
  const DType dtype = kernel_dtype(op, grad_output);
  const Pool2dParams p =
      make_pool2d_backward_params(op, grad_output, input_size, kernel_size, stride, padding, dilation);
  check_pool_indices(op, indices, grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = new_grad_input(input_size, grad_output);
  if (grad_input.numel() == 0) return grad_input;
  const Pool2dTensors t = gather_operands(grad_input, grad_output, &indices);
  check_launch(op, launch_max_pool2d_backward(dtype, p, t, current_stream()));
  return grad_input;
}

// ---- average pooling -----------------------------------------------------------------------

at::Tensor avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           c10::optional<int64_t> divisor_override) {
  const char* op = "cnnkernels::avg_pool2d";
  const DType dtype = kernel_dtype(op, input);
  const int64_t no_dilation[2] = {1, 1};
  const Pool2dParams p = make_pool2d_params(op, input, kernel_size, stride, padding, no_dilation, ceil_mode);
  const int64_t divisor = check_divisor_override(op, divisor_override);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  if (out.numel() == 0) return out;
  const Pool2dTensors t = pooling_operands(input, out);
  check_launch(op, launch_avg_pool2d(dtype, p, t, count_include_pad, divisor, current_stream()));
  return out;
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    bool count_include_pad, c10::optional<int64_t> divisor_override) {
  const char* op = "cnnkernels::avg_pool2d_backward";
  const DType dtype = kernel_dtype(op, grad_output);
  const int64_t no_dilation[2] = {1, 1};
  const Pool2dParams p =
      make_pool2d_backward_params(op, grad_output, input_size, kernel_size, stride, padding, no_dilation);
  const int64_t divisor = check_divisor_override(op, divisor_override);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = new_grad_input(input_size, grad_output);
  if (grad_input.numel() == 0) return grad_input;
  const Pool2dTensors t = gather_operands(grad_input, grad_output);
  check_launch(op, launch_avg_pool2d_backward(dtype, p, t, count_include_pad, divisor, current_stream()));
  return grad_input;
}

// ---- adaptive pooling ----------------------------------------------------------------------

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::adaptive_avg_pool2d";
  const DType dtype = kernel_dtype(op, input);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input.sizes(), output_size);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  if (out.numel() == 0) return out;
  const Pool2dTensors t = pooling_operands(input, out);
  check_launch(op, launch_adaptive_avg_pool2d(dtype, p, t, current_stream()));
  return out;
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  const char* op = "cnnkernels::adaptive_avg_pool2d_backward";
  const DType dtype = kernel_dtype(op, grad_output);
  check_grad_output_planes(op, grad_output, input_size);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input_size, grad_output.sizes().slice(2));
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = new_grad_input(input_size, grad_output);
  if (grad_input.numel() == 0) return grad_input;
  // An empty grad_output (output_size 0) needs no special case: no window covers anything,
  // and every element of grad_input is written 0.
  const Pool2dTensors t = gather_operands(grad_input, grad_output);
  check_launch(op, launch_adaptive_avg_pool2d_backward(dtype, p, t, current_stream()));
  return grad_input;
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::adaptive_max_pool2d";
  const DType dtype = kernel_dtype(op, input);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input.sizes(), output_size);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  at::Tensor indices = new_pool_output(input, p, at::kLong);
  if (out.numel() == 0) return {out, indices};
  const Pool2dTensors t = pooling_operands(input, out, &indices);
  check_launch(op, launch_adaptive_max_pool2d(dtype, p, t, current_stream()));
  return {out, indices};
}

at::Tensor adaptive_max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                             at::IntArrayRef input_size) {
  const char* op = "cnnkernels::adaptive_max_pool2d_backward";
  const DType dtype = kernel_dtype(op, grad_output);
  check_grad_output_planes(op, grad_output, input_size);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input_size, grad_output.sizes().slice(2));
  check_pool_indices(op, indices, grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = new_grad_input(input_size, grad_output);
  if (grad_input.numel() == 0) return grad_input;
  const Pool2dTensors t = gather_operands(grad_input, grad_output, &indices);
  check_launch(op, launch_adaptive_max_pool2d_backward(dtype, p, t, current_stream()));
  return grad_input;
}

// ---- max unpooling -------------------------------------------------------------------------
// Unlike the CPU backend, an index outside the output plane does not raise here (a kernel
// cannot report it without a device synchronisation): the value is dropped in the forward
// and its gradient is 0.

at::Tensor max_unpool2d_cuda(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::max_unpool2d";
  const DType dtype = kernel_dtype(op, input);
  check_unpool_args(op, input, indices, output_size);
  const Pool2dParams p =
      unpool_params(input.size(0), input.size(1), output_size[0], output_size[1], input.size(2), input.size(3));
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = new_buffer({p.batch, p.channels, p.in_h, p.in_w}, input.options(), input.suggest_memory_format());
  if (out.numel() == 0) return out;
  Pool2dTensors t;
  t.input = writes(out);
  t.output = reads(input);
  t.indices = reads(indices);
  t.channels_last = is_channels_last(out);
  check_launch(op, launch_max_unpool2d(dtype, p, t, current_stream()));
  return out;
}

at::Tensor max_unpool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices) {
  const char* op = "cnnkernels::max_unpool2d_backward";
  const DType dtype = kernel_dtype(op, grad_output);
  check_unpool_backward_args(op, grad_output, indices);
  const Pool2dParams p = unpool_params(indices.size(0), indices.size(1), grad_output.size(2), grad_output.size(3),
                                       indices.size(2), indices.size(3));
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input = new_buffer(indices.sizes(), grad_output.options(), indices.suggest_memory_format());
  if (grad_input.numel() == 0) return grad_input;
  Pool2dTensors t;
  t.input = reads(grad_output);
  t.output = writes(grad_input);
  t.indices = reads(indices);
  t.channels_last = is_channels_last(grad_input);
  check_launch(op, launch_max_unpool2d_backward(dtype, p, t, current_stream()));
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkernels, CNNK_CUDA_DISPATCH_KEY, m) {
  m.impl("max_pool2d", &max_pool2d_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
  m.impl("avg_pool2d", &avg_pool2d_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cuda);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cuda);
  m.impl("adaptive_max_pool2d", &adaptive_max_pool2d_cuda);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_cuda);
  m.impl("max_unpool2d", &max_unpool2d_cuda);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cuda);
}

}  // namespace cnnkernels
