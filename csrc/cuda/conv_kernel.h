// Launchers of the conv2d CUDA kernels. Torch-free: included by conv_kernel.cu (nvcc) and by
// conv.cpp (the host side, which unpacks tensors into pointers, sizes and strides).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cnnkernels/common.h"
#include "cnnkernels/conv.h"

namespace cnnkernels {

// Pointers and element strides of one conv2d call. Which tensors are read and which written
// depends on the operator: forward reads input/weight/bias and writes output; backward-input
// reads output (= grad_output) and weight and writes input (= grad_input); backward-weight
// reads output (= grad_output) and input and writes fp32/fp64 partial sums.
struct Conv2dTensors {
  void* input = nullptr;  // (N, C, H, W)
  int64_t input_stride[4] = {};
  void* weight = nullptr;  // (K, C/groups, R, S)
  int64_t weight_stride[4] = {};
  void* output = nullptr;  // (N, K, P, Q)
  int64_t output_stride[4] = {};
  const void* bias = nullptr;  // (K,), forward only; may be null
  void* partials = nullptr;    // backward-weight: [splits][K][C/groups][R][S] accumulator type
};

// The N*P*Q reductions (weight and bias gradients) are split into chunks of whole pixels
// whose count depends only on the problem size, and the partial sums are added in chunk
// order: the result is reproducible run to run.
constexpr int64_t kReductionTargetBlocks = 512;
constexpr int64_t kReductionMinPixels = 1024;
constexpr int64_t kReductionMaxSplits = 1024;

inline int64_t reduction_splits(int64_t pixels, int64_t blocks_per_split) {
  int64_t splits = (kReductionTargetBlocks + blocks_per_split - 1) / blocks_per_split;
  const int64_t by_work = (pixels + kReductionMinPixels - 1) / kReductionMinPixels;
  if (splits > by_work) splits = by_work;
  if (splits > kReductionMaxSplits) splits = kReductionMaxSplits;
  return splits < 1 ? 1 : splits;
}

// An operand's channels (dimension 1) are read in 16-byte runs where its layout allows (unit
// stride, aligned: vectorisable() in conv_kernel.cu) and its channels per group fill whole runs.
// fp64 is always read element by element (2-element runs gain little and would double its
// kernels).
constexpr int64_t kVectorBytes = 16;
inline bool channel_runs_fit(int64_t element_bytes, int64_t channels_per_group) {
  return element_bytes < 8 && channels_per_group % (kVectorBytes / element_bytes) == 0;
}

// The large output tile of the implicit-GEMM kernels (rows x columns); the backward-weight split
// count is sized with it (the kernels may pick a smaller tile for small problems).
constexpr int64_t kGemmTileRows = 128;
constexpr int64_t kGemmTileCols = 128;

// Backward-weight's GEMM columns are a group's input channels, one GEMM per tap. With fewer
// channels per group than this (an RGB stem's 3, a depthwise layer's 1) most of a tile's columns
// would be masked off, so a column is then a (channel, tap) pair instead: Cg*R*S columns, taps
// innermost, in one GEMM per group. (The Triton kernels' FEW_CHANNELS makes the same choice.)
constexpr int64_t kFewChannels = 16;
inline bool backward_weight_taps_in_columns(const Conv2dParams& p) { return p.in_per_group() < kFewChannels; }

// Output tiles of one backward-weight split (the count the split heuristic divides the work by).
inline int64_t backward_weight_tiles(const Conv2dParams& p) {
  const int64_t taps = p.kernel_h * p.kernel_w, row_tiles = (p.out_per_group() + kGemmTileRows - 1) / kGemmTileRows;
  if (backward_weight_taps_in_columns(p)) {
    return row_tiles * ((p.in_per_group() * taps + kGemmTileCols - 1) / kGemmTileCols) * p.groups;
  }
  return row_tiles * ((p.in_per_group() + kGemmTileCols - 1) / kGemmTileCols) * p.groups * taps;
}

// How many times, about, the GEMM kernels read each element of an operand. conv.cpp gives the
// kernels a channels_last copy of an NCHW operand only where this reaches kCopyMinReads: the copy
// costs two passes over the tensor (a read and a write) once, the loads it speeds up come once
// per read. Read element by element, an operand costs the large tiles 0.6-0.7 more warp
// instructions per element than in 16-byte runs (their sm_90 loops, NCHW against
// channels_last: bf16 1,082 against 341 instructions per warp and 32-deep slice, fp32 934
// against 785 per 8-deep one). On an H100 (about 900 G warp instructions/s, 2.5-3 TB/s) one
// read's saving is worth about half the copy's time for bf16 and a fifth for fp32 (break-even
// at 2 and 5 reads): an estimate, not a measurement. A stride-1 3x3 layer (nine reads) takes the
// copy, a 1x1 one (one read per tile of 128 output channels; a quarter at stride 2) does not.
constexpr int64_t kCopyMinReads = 3;

// The input (forward's A, backward-weight's B): once per (output pixel, tap) pair that reaches
// it, per tile of the group's output channels.
inline int64_t input_reads(const Conv2dParams& p) {
  const int64_t pairs = p.out_h * p.out_w * p.kernel_h * p.kernel_w, area = p.in_h * p.in_w;
  return area == 0 ? 0 : pairs * ceil_div(p.out_per_group(), kGemmTileCols) / area;  // 0 x W: no channels (checked)
}
// grad_output (backward-input's A, backward-weight's A): once per tap and tile of the group's
// input channels, or, with (channel, tap) pairs as columns, once per tile of those.
inline int64_t grad_output_reads(const Conv2dParams& p, bool taps_in_columns) {
  const int64_t taps = p.kernel_h * p.kernel_w;
  return taps_in_columns ? ceil_div(p.in_per_group() * taps, kGemmTileCols)
                         : taps * ceil_div(p.in_per_group(), kGemmTileCols);
}
// The weight: once per tile of output pixels.
inline int64_t weight_reads(const Conv2dParams& p) { return ceil_div(p.batch * p.out_h * p.out_w, kGemmTileRows); }

cudaError_t launch_conv2d_forward(DType dtype, const Conv2dParams& p, const Conv2dTensors& t,
                                  cudaStream_t stream);
cudaError_t launch_conv2d_backward_input(DType dtype, const Conv2dParams& p, const Conv2dTensors& t,
                                         cudaStream_t stream);
// Writes `splits` partial sums over consecutive chunks of `chunk` pixels into t.partials.
cudaError_t launch_conv2d_backward_weight(DType dtype, const Conv2dParams& p, const Conv2dTensors& t,
                                          int64_t splits, int64_t chunk, cudaStream_t stream);

// grad_output viewed as (N, K, P*Q) with element strides (stride_n, stride_k, stride_pq);
// `partials` holds splits*K accumulator-type elements.
cudaError_t launch_conv2d_backward_bias(DType dtype, const void* grad_output, int64_t batch,
                                        int64_t channels, int64_t pixels_per_image, int64_t stride_n,
                                        int64_t stride_k, int64_t stride_pq, int64_t splits,
                                        void* partials, void* grad_bias, cudaStream_t stream);

// out[i0,i1,i2,i3] = sum over s of partials[s][i0][i1][i2][i3], in s order, converted to
// `dtype` and written through out's strides. `partials` is accumulator-typed.
cudaError_t launch_sum_partials(DType dtype, const void* partials, int64_t splits, const int64_t sizes[4],
                                void* out, const int64_t out_stride[4], cudaStream_t stream);

}  // namespace cnnkernels
