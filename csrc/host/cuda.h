// Host-side helpers for the CUDA backend: tensor dtype -> kernel dtype, launch status checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "cnnkernels/common.h"

// The dispatch key the CUDA host functions register under. The host-emulator build of the tests
// (tests/cuda_emulator) compiles them with -DCNNK_CUDA_DISPATCH_KEY=CPU to run them on CPU tensors.
#ifndef CNNK_CUDA_DISPATCH_KEY
#define CNNK_CUDA_DISPATCH_KEY CUDA
#endif

namespace cnnkernels {

inline DType kernel_dtype(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK(false, op, ": the cuda backend supports float32, float64, float16 and bfloat16, got ",
                  t.scalar_type());
  }
}

inline void check_launch(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

}  // namespace cnnkernels
