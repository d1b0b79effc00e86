// Launchers of the pooling CUDA kernels. Torch-free: included by pool_kernel.cu (nvcc) and by
// pool.cpp (the host side, which checks arguments and unpacks tensors into pointers and strides).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cnnkernels/common.h"
#include "cnnkernels/pool.h"

namespace cnnkernels {

// A 4-D tensor as its data pointer and element strides (any layout, stride 0 included).
struct StridedTensor {
  void* data = nullptr;
  int64_t stride[4] = {};
};

// The tensors of one pooling call, named as in pooling: `input` is the (N, C, H, W) side and
// `output` / `indices` the (N, C, P, Q) side of Pool2dParams, whichever of them the operator
// reads or writes:
//   forward            reads input, writes output (and indices for max pooling)
//   backward (gather)  reads output (= grad_output) and indices, writes input (= grad_input)
//   max_unpool2d       reads output (= the pooled values) and indices, writes input (= the
//                      unpooled tensor, H x W = output_size)
//   its backward       reads input (= grad_output) and indices, writes output (= grad_input)
// `indices` hold int64 flat positions h*W + w within each (n, c) plane of `input`.
struct Pool2dTensors {
  StridedTensor input;
  StridedTensor output;
  StridedTensor indices;
  // Thread order: when the tensor a kernel writes is channels_last, consecutive threads take
  // consecutive channels (consecutive addresses), otherwise consecutive columns.
  bool channels_last = false;
};

// divisor_override: 0 for none (the schema's None), otherwise every window's divisor.
cudaError_t launch_max_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, cudaStream_t stream);
cudaError_t launch_max_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       cudaStream_t stream);
cudaError_t launch_avg_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, bool count_include_pad,
                              int64_t divisor_override, cudaStream_t stream);
cudaError_t launch_avg_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       bool count_include_pad, int64_t divisor_override, cudaStream_t stream);
cudaError_t launch_adaptive_avg_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       cudaStream_t stream);
cudaError_t launch_adaptive_avg_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                                cudaStream_t stream);
cudaError_t launch_adaptive_max_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       cudaStream_t stream);
cudaError_t launch_adaptive_max_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                                cudaStream_t stream);
// Zeroes t.input, then scatters each pooled value to its index; indices outside the plane are
// skipped (the CPU backend raises for them; a kernel cannot). Where two pooled values share an
// index, which one lands is unspecified, as in torch's CUDA kernel.
cudaError_t launch_max_unpool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, cudaStream_t stream);
// Gathers grad_output (t.input) at each index; 0 where the index lies outside the plane.
cudaError_t launch_max_unpool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                         cudaStream_t stream);

}  // namespace cnnkernels
