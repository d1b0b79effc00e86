// conv2d on CUDA, host side: argument checks, allocation, device guard, current stream.
// The kernels live in conv_kernel.cu. So far this backend provides the bias gradient; the
// convolution kernels themselves are tracked by the GPU-backends issue.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "conv_kernel.h"
#include "host/alloc.h"
#include "host/cuda.h"

namespace cnnkernels {
namespace {

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
  const int64_t chunks = conv2d_bias_grad_chunks(grad.size(0) * pixels_per_image);
  const auto acc_dtype = dtype == DType::Float64 ? at::kDouble : at::kFloat;
  const at::Tensor partials = new_buffer({chunks, channels}, grad.options().dtype(acc_dtype));
  check_launch(op, launch_conv2d_backward_bias(dtype, grad.const_data_ptr(), grad.size(0), channels,
                                               pixels_per_image, stride_n, stride_k, stride_pq, chunks,
                                               partials.mutable_data_ptr(), grad_bias.mutable_data_ptr(),
                                               c10::cuda::getCurrentCUDAStream().stream()));
  return grad_bias;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkernels, CUDA, m) {
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_cuda);
}

}  // namespace cnnkernels
