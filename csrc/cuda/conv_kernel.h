// Launchers of the conv2d CUDA kernels. Torch-free: included by conv_kernel.cu (nvcc) and by
// conv.cpp (the host side, which unpacks tensors into pointers, sizes and strides).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cnnkernels/common.h"

namespace cnnkernels {

// Pixels (elements of N*P*Q) summed by one block of the bias-gradient reduction. The number of
// partials depends only on the problem size, so the result is reproducible run to run.
constexpr int64_t kBiasGradChunk = 2048;
constexpr int64_t kBiasGradMaxChunks = 1024;

inline int64_t conv2d_bias_grad_chunks(int64_t pixels) {
  const int64_t chunks = (pixels + kBiasGradChunk - 1) / kBiasGradChunk;
  return chunks < 1 ? 1 : (chunks > kBiasGradMaxChunks ? kBiasGradMaxChunks : chunks);
}

// grad_output viewed as (N, K, P*Q) with element strides (stride_n, stride_k, stride_pq).
// `partials` holds chunks*K accumulator-type elements (fp64 for fp64, else fp32); `grad_bias`
// receives K elements of `dtype`. Returns the launch status.
cudaError_t launch_conv2d_backward_bias(DType dtype, const void* grad_output, int64_t batch,
                                        int64_t channels, int64_t pixels_per_image, int64_t stride_n,
                                        int64_t stride_k, int64_t stride_pq, int64_t chunks,
                                        void* partials, void* grad_bias, cudaStream_t stream);

}  // namespace cnnkernels
