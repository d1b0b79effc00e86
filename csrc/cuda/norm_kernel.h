// Launchers of the normalisation CUDA kernels. Torch-free: included by norm_kernel.cu (nvcc) and
// by norm.cpp (the host side, which checks arguments, puts tensors in the layout the kernels
// read and unpacks them into pointers and sizes).
//
// Every tensor here is dense: an (N, C, *) tensor is read as (N, C, L), NCHW-contiguous
// (element (n, c, l) at (n*C + c)*L + l) or channels_last ((n*L + l)*C + c). Element tensors
// (input, residual, grad_output, output, grad_input, grad_residual) have the input's dtype;
// everything else (weight, bias, statistics, running statistics, parameter gradients, the
// workspace) is acc_t: float32, float64 for a float64 input. A null pointer marks an absent
// optional tensor. Callers return early for empty tensors: the launchers expect numel > 0.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cnnkernels/common.h"
#include "cnnkernels/norm.h"

namespace cnnkernels {

// The (N, C, L) view of a batch/group norm operand.
struct NormGeometry {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t inner = 1;
  bool channels_last = false;
  // 0: batch norm (statistics per channel, C of them); G > 0: group norm (per (n, g), N*G).
  int64_t groups = 0;
};

// Batch norm / group norm forward.
struct NormForwardArgs {
  NormGeometry g;
  const void* input = nullptr;
  const void* residual = nullptr;  // optional, added to z before the activation
  void* output = nullptr;
  const void* weight = nullptr;  // optional, C
  const void* bias = nullptr;    // optional, C
  void* save_mean = nullptr;     // C (batch norm) or N*G (group norm)
  void* save_rstd = nullptr;
  // Batch norm only. training=false: running_mean/running_var are required and normalise; the
  // new_* outputs are not written. training=true: when running_mean is given, new_running_mean
  // and new_running_var receive the updated running statistics.
  bool training = true;
  const void* running_mean = nullptr;
  const void* running_var = nullptr;
  void* new_running_mean = nullptr;
  void* new_running_var = nullptr;
  double momentum = 0.1;
  double eps = 1e-5;
  Activation activation = Activation::None;
  void* workspace = nullptr;  // norm_forward_workspace() acc_t elements
};

// Batch norm / group norm backward.
struct NormBackwardArgs {
  NormGeometry g;
  const void* grad_output = nullptr;
  const void* input = nullptr;
  const void* residual = nullptr;  // optional
  const void* weight = nullptr;    // optional, C
  const void* bias = nullptr;      // optional, C
  const void* save_mean = nullptr;
  const void* save_rstd = nullptr;
  void* grad_input = nullptr;
  void* grad_residual = nullptr;  // written (= dz) when residual is given
  void* grad_weight = nullptr;    // C, always written
  void* grad_bias = nullptr;      // C, always written
  bool training = true;           // batch norm only; group norm always uses its batch statistics
  Activation activation = Activation::None;
  void* workspace = nullptr;  // norm_backward_workspace() acc_t elements
};

int64_t norm_forward_workspace(DType dtype, const NormGeometry& g);
int64_t norm_backward_workspace(DType dtype, const NormGeometry& g);
cudaError_t launch_norm_forward(DType dtype, const NormForwardArgs& a, cudaStream_t stream);
cudaError_t launch_norm_backward(DType dtype, const NormBackwardArgs& a, cudaStream_t stream);

// RMS norm over contiguous rows of `dim` elements.
struct RmsNormArgs {
  int64_t rows = 0;
  int64_t dim = 0;
  const void* input = nullptr;
  const void* weight = nullptr;       // optional, dim acc_t values
  const void* grad_output = nullptr;  // backward
  void* output = nullptr;             // forward: output; backward: grad_input
  void* rstd = nullptr;               // forward writes, backward reads (rows)
  void* grad_weight = nullptr;        // backward, optional (dim)
  double eps = 1e-6;
  void* workspace = nullptr;  // rms_norm_backward_workspace() acc_t elements
};

int64_t rms_norm_backward_workspace(DType dtype, int64_t rows, int64_t dim);
cudaError_t launch_rms_norm(DType dtype, const RmsNormArgs& a, cudaStream_t stream);
cudaError_t launch_rms_norm_backward(DType dtype, const RmsNormArgs& a, cudaStream_t stream);

// Local response normalisation across channels of an (N, C, L) tensor.
struct LrnArgs {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t inner = 1;
  bool channels_last = false;
  const void* input = nullptr;
  const void* grad_output = nullptr;  // backward
  void* output = nullptr;             // forward: output; backward: grad_input
  int64_t size = 1;
  double alpha = 1e-4;
  double beta = 0.75;
  double k = 1.0;
};

cudaError_t launch_local_response_norm(DType dtype, const LrnArgs& a, cudaStream_t stream);
cudaError_t launch_local_response_norm_backward(DType dtype, const LrnArgs& a, cudaStream_t stream);

}  // namespace cnnkernels
