// conv2d CUDA kernels. Includes no torch header (see conv_kernel.h).
//
// The three convolutions are implicit GEMMs: a tile kernel multiplies a rows x depth operand A
// by a depth x cols operand B, and a "problem" object says what A[m][k], B[k][n] and C[m][n]
// are in terms of the tensors, so that nothing is ever materialised (no im2col, no zero-
// inserted gradient):
//   forward          A = input patches (pixels x (r, s, c)), B = weight, C = output
//   backward-input   per stride phase: A = grad_output at the phase's useful taps
//                    (pixels x (tap, k)), B = weight (channels swapped), C = grad_input
//   backward-weight  per tap and reduction chunk: A = grad_output^T (k x pixels),
//                    B = input at the tap (pixels x c), C = a partial weight gradient
// Two tile kernels: SIMT in the accumulator type for fp32/fp64, and tensor cores (WMMA,
// fp32 accumulate) for fp16/bf16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "cnnkernels/common.h"
#include "cnnkernels/conv.h"
#include "cnnkernels/cuda_types.cuh"
#include "conv_kernel.h"

namespace cnnkernels {
namespace {

__device__ __forceinline__ int64_t offset4(const int64_t stride[4], int64_t i0, int64_t i1, int64_t i2,
                                           int64_t i3) {
  return i0 * stride[0] + i1 * stride[1] + i2 * stride[2] + i3 * stride[3];
}

// ---- the three problems --------------------------------------------------------------------
// Each provides rows(), cols(), depth() for the instance chosen by select(), a(m, k) and
// b(k, n) (callers guarantee m < rows, n < cols, k < depth) and store(m, n, value).

template <typename T>
struct ForwardProblem {
  Conv2dParams p;
  Conv2dTensors t;
  int64_t g = 0;

  __device__ void select(int64_t instance, int64_t) { g = instance; }
  __device__ int64_t rows() const { return p.batch * p.out_h * p.out_w; }
  __device__ int64_t cols() const { return p.out_per_group(); }
  __device__ int64_t depth() const { return p.kernel_h * p.kernel_w * p.in_per_group(); }

  // Reduction index k = (r*S + s)*Cg + c: channels innermost, so channels_last loads coalesce.
  __device__ T a(int64_t m, int64_t k) const {
    const int64_t Cg = p.in_per_group();
    const int64_t c = k % Cg, s = (k / Cg) % p.kernel_w, r = k / (Cg * p.kernel_w);
    const int64_t q = m % p.out_w, oh = (m / p.out_w) % p.out_h, n = m / (p.out_w * p.out_h);
    const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_top, p.dilation_h);
    const int64_t iw = conv_in_coord(q, s, p.stride_w, p.pad_left, p.dilation_w);
    if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) return zero<T>();
    return static_cast<const T*>(t.input)[offset4(t.input_stride, n, g * Cg + c, ih, iw)];
  }
  __device__ T b(int64_t k, int64_t n) const {
    const int64_t Cg = p.in_per_group();
    const int64_t c = k % Cg, s = (k / Cg) % p.kernel_w, r = k / (Cg * p.kernel_w);
    return static_cast<const T*>(t.weight)[offset4(t.weight_stride, g * p.out_per_group() + n, c, r, s)];
  }
  __device__ void store(int64_t m, int64_t n, acc_t<T> v) const {
    const int64_t k = g * p.out_per_group() + n;
    if (t.bias != nullptr) v += to_acc(static_cast<const T*>(t.bias)[k]);
    const int64_t q = m % p.out_w, oh = (m / p.out_w) % p.out_h, img = m / (p.out_w * p.out_h);
    static_cast<T*>(t.output)[offset4(t.output_stride, img, k, oh, q)] = from_acc<T>(v);
  }
};

template <typename T>
struct BackwardInputProblem {
  Conv2dParams p;
  Conv2dTensors t;
  int64_t g = 0;
  int64_t ih0 = 0, iw0 = 0, hp = 0, wp = 0;  // the phase's first input row/column and extent
  TapProgression taps_h{}, taps_w{};
  int64_t ntaps_h = 0, ntaps_w = 0;

  // Instance = (group, phase_h, phase_w), phase = (i + pad) mod stride.
  __device__ void select(int64_t instance, int64_t) {
    const int64_t phases = p.stride_h * p.stride_w;
    g = instance / phases;
    const int64_t phase_h = (instance % phases) / p.stride_w, phase_w = instance % p.stride_w;
    ih0 = (phase_h - p.pad_top % p.stride_h + p.stride_h) % p.stride_h;
    iw0 = (phase_w - p.pad_left % p.stride_w + p.stride_w) % p.stride_w;
    hp = ih0 < p.in_h ? ceil_div(p.in_h - ih0, p.stride_h) : 0;
    wp = iw0 < p.in_w ? ceil_div(p.in_w - iw0, p.stride_w) : 0;
    taps_h = backward_input_taps(phase_h, p.kernel_h, p.stride_h, p.dilation_h);
    taps_w = backward_input_taps(phase_w, p.kernel_w, p.stride_w, p.dilation_w);
    ntaps_h = taps_h.first < p.kernel_h ? ceil_div(p.kernel_h - taps_h.first, taps_h.step) : 0;
    ntaps_w = taps_w.first < p.kernel_w ? ceil_div(p.kernel_w - taps_w.first, taps_w.step) : 0;
  }
  __device__ int64_t rows() const { return p.batch * hp * wp; }
  __device__ int64_t cols() const { return p.in_per_group(); }
  // Only the useful taps: a phase whose taps all miss has depth 0 and stores zeros.
  __device__ int64_t depth() const { return ntaps_h * ntaps_w * p.out_per_group(); }

  __device__ T a(int64_t m, int64_t k) const {
    const int64_t Kg = p.out_per_group();
    const int64_t kk = k % Kg, tw = (k / Kg) % ntaps_w, th = k / (Kg * ntaps_w);
    const int64_t r = taps_h.first + th * taps_h.step, s = taps_w.first + tw * taps_w.step;
    const int64_t ih = ih0 + ((m / wp) % hp) * p.stride_h, iw = iw0 + (m % wp) * p.stride_w;
    const int64_t n = m / (wp * hp);
    const int64_t oh = backward_input_out_coord(ih + p.pad_top, r, p.stride_h, p.dilation_h);
    const int64_t ow = backward_input_out_coord(iw + p.pad_left, s, p.stride_w, p.dilation_w);
    if (oh < 0 || oh >= p.out_h || ow < 0 || ow >= p.out_w) return zero<T>();
    return static_cast<const T*>(t.output)[offset4(t.output_stride, n, g * Kg + kk, oh, ow)];
  }
  __device__ T b(int64_t k, int64_t c) const {
    const int64_t Kg = p.out_per_group();
    const int64_t kk = k % Kg, tw = (k / Kg) % ntaps_w, th = k / (Kg * ntaps_w);
    const int64_t r = taps_h.first + th * taps_h.step, s = taps_w.first + tw * taps_w.step;
    return static_cast<const T*>(t.weight)[offset4(t.weight_stride, g * Kg + kk, c, r, s)];
  }
  __device__ void store(int64_t m, int64_t c, acc_t<T> v) const {
    const int64_t ih = ih0 + ((m / wp) % hp) * p.stride_h, iw = iw0 + (m % wp) * p.stride_w;
    const int64_t n = m / (wp * hp);
    static_cast<T*>(t.input)[offset4(t.input_stride, n, g * p.in_per_group() + c, ih, iw)] = from_acc<T>(v);
  }
};

template <typename T>
struct BackwardWeightProblem {
  Conv2dParams p;
  Conv2dTensors t;
  int64_t chunk = 0;
  int64_t g = 0, r = 0, s = 0, split = 0, m_begin = 0, m_count = 0;

  // Instance = (group, r, s); the third grid dimension picks the chunk of pixels.
  __device__ void select(int64_t instance, int64_t split_index) {
    s = instance % p.kernel_w;
    r = (instance / p.kernel_w) % p.kernel_h;
    g = instance / (p.kernel_w * p.kernel_h);
    split = split_index;
    const int64_t pixels = p.batch * p.out_h * p.out_w;
    m_begin = split * chunk;
    m_count = m_begin < pixels ? (pixels - m_begin < chunk ? pixels - m_begin : chunk) : 0;
  }
  __device__ int64_t rows() const { return p.out_per_group(); }
  __device__ int64_t cols() const { return p.in_per_group(); }
  __device__ int64_t depth() const { return m_count; }

  __device__ T a(int64_t k, int64_t j) const {
    const int64_t m = m_begin + j;
    const int64_t q = m % p.out_w, oh = (m / p.out_w) % p.out_h, n = m / (p.out_w * p.out_h);
    return static_cast<const T*>(t.output)[offset4(t.output_stride, n, g * p.out_per_group() + k, oh, q)];
  }
  __device__ T b(int64_t j, int64_t c) const {
    const int64_t m = m_begin + j;
    const int64_t q = m % p.out_w, oh = (m / p.out_w) % p.out_h, n = m / (p.out_w * p.out_h);
    const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_top, p.dilation_h);
    const int64_t iw = conv_in_coord(q, s, p.stride_w, p.pad_left, p.dilation_w);
    if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) return zero<T>();
    return static_cast<const T*>(t.input)[offset4(t.input_stride, n, g * p.in_per_group() + c, ih, iw)];
  }
  __device__ void store(int64_t k, int64_t c, acc_t<T> v) const {
    const int64_t Cg = p.in_per_group(), R = p.kernel_h, S = p.kernel_w;
    const int64_t weight_numel = p.out_channels * Cg * R * S;
    const int64_t kk = g * p.out_per_group() + k;
    static_cast<acc_t<T>*>(t.partials)[split * weight_numel + ((kk * Cg + c) * R + r) * S + s] = v;
  }
};

// ---- tile kernels --------------------------------------------------------------------------
// Grid: x = (row tile, column tile), y = problem instance (counted from first_instance: see
// run_gemm), z = reduction split.

constexpr int kTileM = static_cast<int>(kGemmTileRows);
constexpr int kTileN = static_cast<int>(kGemmTileCols);

template <class Problem>
__device__ __forceinline__ bool tile_origin(Problem& prob, int64_t first_instance, int64_t& m0, int64_t& n0) {
  prob.select(first_instance + blockIdx.y, blockIdx.z);
  const int64_t tiles_n = ceil_div<int64_t>(prob.cols(), kTileN);
  m0 = (int64_t{blockIdx.x} / tiles_n) * kTileM;
  n0 = (int64_t{blockIdx.x} % tiles_n) * kTileN;
  return m0 < prob.rows();  // instances differ in rows (stride phases); the grid fits the largest
}

// SIMT: 256 threads, each accumulating a 4x4 block of the 64x64 tile in the accumulator type.
constexpr int kSimtThreads = 256;
constexpr int kSimtDepth = 16;

template <typename T, class Problem>
__global__ void __launch_bounds__(kSimtThreads) gemm_simt_kernel(Problem prob, int64_t first_instance) {
  using acc = acc_t<T>;
  int64_t m0, n0;
  if (!tile_origin(prob, first_instance, m0, n0)) return;
  const int64_t rows = prob.rows(), cols = prob.cols(), depth = prob.depth();
  __shared__ acc As[kSimtDepth][kTileM];
  __shared__ acc Bs[kSimtDepth][kTileN];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  acc sum[4][4] = {};

  for (int64_t k0 = 0; k0 < depth; k0 += kSimtDepth) {
    // Consecutive threads take consecutive reduction indices (channels, for the convolutions
    // with channels innermost) of one row.
    for (int e = threadIdx.x; e < kTileM * kSimtDepth; e += kSimtThreads) {
      const int i = e / kSimtDepth, kk = e % kSimtDepth;
      const int64_t m = m0 + i, k = k0 + kk;
      As[kk][i] = (m < rows && k < depth) ? to_acc(prob.a(m, k)) : acc(0);
    }
    for (int e = threadIdx.x; e < kSimtDepth * kTileN; e += kSimtThreads) {
      const int kk = e / kTileN, j = e % kTileN;
      const int64_t n = n0 + j, k = k0 + kk;
      Bs[kk][j] = (n < cols && k < depth) ? to_acc(prob.b(k, n)) : acc(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtDepth; ++kk) {
      acc av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) sum[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < rows && n < cols) prob.store(m, n, sum[i][j]);
    }
}

// Tensor cores: 4 warps in a 2x2 arrangement, each computing 32x32 of the 64x64 tile as 2x2
// WMMA 16x16x16 fragments with fp32 accumulators. Rows of the shared tiles are padded by 8
// elements (keeps fragment pointers 32-byte aligned and spreads banks).
constexpr int kWmmaThreads = 128;
constexpr int kWmmaDepth = 32;
constexpr int kPad = 8;

template <typename T, class Problem>
__global__ void __launch_bounds__(kWmmaThreads) gemm_wmma_kernel(Problem prob, int64_t first_instance) {
  namespace wmma = nvcuda::wmma;
  int64_t m0, n0;
  if (!tile_origin(prob, first_instance, m0, n0)) return;
  const int64_t rows = prob.rows(), cols = prob.cols(), depth = prob.depth();
  __shared__ __align__(32) T As[kTileM][kWmmaDepth + kPad];
  __shared__ __align__(32) T Bs[kWmmaDepth][kTileN + kPad];
  __shared__ __align__(32) float Cs[kTileM][kTileN + kPad];
  const int warp = threadIdx.x / 32, warp_m = warp / 2, warp_n = warp % 2;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(frag_c[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < depth; k0 += kWmmaDepth) {
    for (int e = threadIdx.x; e < kTileM * kWmmaDepth; e += kWmmaThreads) {
      const int i = e / kWmmaDepth, kk = e % kWmmaDepth;
      const int64_t m = m0 + i, k = k0 + kk;
      As[i][kk] = (m < rows && k < depth) ? prob.a(m, k) : zero<T>();
    }
    for (int e = threadIdx.x; e < kWmmaDepth * kTileN; e += kWmmaThreads) {
      const int kk = e / kTileN, j = e % kTileN;
      const int64_t n = n0 + j, k = k0 + kk;
      Bs[kk][j] = (n < cols && k < depth) ? prob.b(k, n) : zero<T>();
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kWmmaDepth; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> frag_a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> frag_b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(frag_a[i], &As[warp_m * 32 + i * 16][ks], kWmmaDepth + kPad);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(frag_b[j], &Bs[ks][warp_n * 32 + j * 16], kTileN + kPad);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(frag_c[i][j], frag_a[i], frag_b[j], frag_c[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[warp_m * 32 + i * 16][warp_n * 32 + j * 16], frag_c[i][j], kTileN + kPad,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTileM * kTileN; e += kWmmaThreads) {
    const int i = e / kTileN, j = e % kTileN;
    const int64_t m = m0 + i, n = n0 + j;
    if (m < rows && n < cols) prob.store(m, n, Cs[i][j]);
  }
}

template <typename T>
struct UsesTensorCores {
  static constexpr bool value = false;
};
template <>
struct UsesTensorCores<__half> {
  static constexpr bool value = true;
};
template <>
struct UsesTensorCores<__nv_bfloat16> {
  static constexpr bool value = true;
};

constexpr int64_t kMaxGridY = 65535;  // the largest grid.y (and grid.z)

template <typename T, class Problem>
cudaError_t run_gemm(const Problem& prob, int64_t max_rows, int64_t cols, int64_t instances, int64_t splits,
                     cudaStream_t stream) {
  const int64_t tiles = ceil_div<int64_t>(max_rows, kTileM) * ceil_div<int64_t>(cols, kTileN);
  if (tiles == 0 || instances == 0 || splits == 0) return cudaSuccess;
  if (tiles > 0x7fffffff || splits > kMaxGridY) return cudaErrorInvalidConfiguration;
  // grid.y holds at most 65535 instances; more (a depthwise backward-weight has groups*R*S, e.g.
  // 1536*7*7) take one launch per slice of instances.
  for (int64_t first = 0; first < instances; first += kMaxGridY) {
    const int64_t count = instances - first < kMaxGridY ? instances - first : kMaxGridY;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(count), static_cast<unsigned>(splits));
    if constexpr (UsesTensorCores<T>::value) {
      gemm_wmma_kernel<T><<<grid, kWmmaThreads, 0, stream>>>(prob, first);
    } else {
      gemm_simt_kernel<T><<<grid, kSimtThreads, 0, stream>>>(prob, first);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t forward(const Conv2dParams& p, const Conv2dTensors& t, cudaStream_t stream) {
  ForwardProblem<T> prob{p, t};
  return run_gemm<T>(prob, p.batch * p.out_h * p.out_w, p.out_per_group(), p.groups, 1, stream);
}

template <typename T>
cudaError_t backward_input(const Conv2dParams& p, const Conv2dTensors& t, cudaStream_t stream) {
  BackwardInputProblem<T> prob{p, t};
  const int64_t largest_phase = p.batch * ceil_div(p.in_h, p.stride_h) * ceil_div(p.in_w, p.stride_w);
  return run_gemm<T>(prob, largest_phase, p.in_per_group(), p.groups * p.stride_h * p.stride_w, 1, stream);
}

template <typename T>
cudaError_t backward_weight(const Conv2dParams& p, const Conv2dTensors& t, int64_t splits, int64_t chunk,
                            cudaStream_t stream) {
  BackwardWeightProblem<T> prob{p, t, chunk};
  return run_gemm<T>(prob, p.out_per_group(), p.in_per_group(), p.groups * p.kernel_h * p.kernel_w, splits,
                     stream);
}

// ---- bias gradient -------------------------------------------------------------------------
// Block (channel tile, split) sums its chunk of pixels for kChannelLanes channels. 256 threads
// = kChannelLanes x kPixelLanes. When channels are innermost in memory (channels_last)
// neighbouring lanes take neighbouring channels, otherwise neighbouring pixels, so loads
// coalesce in both layouts. The lanes of a channel are combined by a fixed shared-memory tree.
constexpr int kBiasThreads = 256;

template <typename T, int kChannelLanes>
__global__ void __launch_bounds__(kBiasThreads)
    bias_grad_partials_kernel(const T* __restrict__ grad, int64_t channels, int64_t pixels_per_image,
                              int64_t pixels, int64_t stride_n, int64_t stride_k, int64_t stride_pq,
                              int64_t chunk, acc_t<T>* __restrict__ partials) {
  constexpr int kPixelLanes = kBiasThreads / kChannelLanes;
  __shared__ acc_t<T> sums[kChannelLanes][kPixelLanes];
  const int ch_lane = kChannelLanes == 32 ? threadIdx.x % 32 : threadIdx.x / kPixelLanes;
  const int pix_lane = kChannelLanes == 32 ? threadIdx.x / 32 : threadIdx.x % kPixelLanes;
  const int64_t k = int64_t{blockIdx.x} * kChannelLanes + ch_lane;
  const int64_t split = blockIdx.y;
  const int64_t m_begin = split * chunk;
  const int64_t m_end = min(pixels, m_begin + chunk);

  acc_t<T> sum = 0;
  if (k < channels) {
    for (int64_t m = m_begin + pix_lane; m < m_end; m += kPixelLanes) {
      const int64_t n = m / pixels_per_image, pq = m - n * pixels_per_image;
      sum += to_acc(grad[n * stride_n + k * stride_k + pq * stride_pq]);
    }
  }
  sums[ch_lane][pix_lane] = sum;
  __syncthreads();
  for (int half = kPixelLanes / 2; half > 0; half /= 2) {
    if (pix_lane < half) sums[ch_lane][pix_lane] += sums[ch_lane][pix_lane + half];
    __syncthreads();
  }
  if (pix_lane == 0 && k < channels) partials[split * channels + k] = sums[ch_lane][0];
}

template <typename T>
cudaError_t bias_grad(const void* grad, int64_t batch, int64_t channels, int64_t pixels_per_image,
                      int64_t stride_n, int64_t stride_k, int64_t stride_pq, int64_t splits, void* partials,
                      cudaStream_t stream) {
  const int64_t pixels = batch * pixels_per_image;
  const int64_t chunk = ceil_div(pixels, splits);
  auto* part = static_cast<acc_t<T>*>(partials);
  const T* g = static_cast<const T*>(grad);
  if (stride_k == 1) {
    constexpr int kLanes = 32;
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(channels, kLanes)), static_cast<unsigned>(splits));
    bias_grad_partials_kernel<T, kLanes><<<grid, kBiasThreads, 0, stream>>>(
        g, channels, pixels_per_image, pixels, stride_n, stride_k, stride_pq, chunk, part);
  } else {
    constexpr int kLanes = 8;
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(channels, kLanes)), static_cast<unsigned>(splits));
    bias_grad_partials_kernel<T, kLanes><<<grid, kBiasThreads, 0, stream>>>(
        g, channels, pixels_per_image, pixels, stride_n, stride_k, stride_pq, chunk, part);
  }
  return cudaGetLastError();
}

// ---- partial sums --------------------------------------------------------------------------

template <typename T>
__global__ void sum_partials_kernel(const acc_t<T>* __restrict__ partials, int64_t splits, int64_t d1, int64_t d2,
                                    int64_t d3, int64_t numel, T* __restrict__ out, int64_t s0, int64_t s1,
                                    int64_t s2, int64_t s3) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= numel) return;
  acc_t<T> total = 0;
  for (int64_t s = 0; s < splits; ++s) total += partials[s * numel + i];
  const int64_t i3 = i % d3, i2 = (i / d3) % d2, i1 = (i / (d3 * d2)) % d1, i0 = i / (d3 * d2 * d1);
  out[i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3] = from_acc<T>(total);
}

template <typename T>
cudaError_t sum_partials(const void* partials, int64_t splits, const int64_t sizes[4], void* out,
                         const int64_t stride[4], cudaStream_t stream) {
  const int64_t numel = sizes[0] * sizes[1] * sizes[2] * sizes[3];
  if (numel == 0) return cudaSuccess;
  constexpr int threads = 256;
  sum_partials_kernel<T><<<static_cast<unsigned>(ceil_div<int64_t>(numel, threads)), threads, 0, stream>>>(
      static_cast<const acc_t<T>*>(partials), splits, sizes[1], sizes[2], sizes[3], numel, static_cast<T*>(out),
      stride[0], stride[1], stride[2], stride[3]);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv2d_forward(DType dtype, const Conv2dParams& p, const Conv2dTensors& t, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return forward<decltype(tag)>(p, t, stream); });
}

cudaError_t launch_conv2d_backward_input(DType dtype, const Conv2dParams& p, const Conv2dTensors& t,
                                         cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return backward_input<decltype(tag)>(p, t, stream); });
}

cudaError_t launch_conv2d_backward_weight(DType dtype, const Conv2dParams& p, const Conv2dTensors& t,
                                          int64_t splits, int64_t chunk, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return backward_weight<decltype(tag)>(p, t, splits, chunk, stream); });
}

cudaError_t launch_conv2d_backward_bias(DType dtype, const void* grad_output, int64_t batch, int64_t channels,
                                        int64_t pixels_per_image, int64_t stride_n, int64_t stride_k,
                                        int64_t stride_pq, int64_t splits, void* partials, void* grad_bias,
                                        cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    cudaError_t err = bias_grad<T>(grad_output, batch, channels, pixels_per_image, stride_n, stride_k, stride_pq,
                                   splits, partials, stream);
    if (err != cudaSuccess) return err;
    const int64_t sizes[4] = {channels, 1, 1, 1};
    const int64_t stride[4] = {1, 0, 0, 0};
    return sum_partials<T>(partials, splits, sizes, grad_bias, stride, stream);
  });
}

cudaError_t launch_sum_partials(DType dtype, const void* partials, int64_t splits, const int64_t sizes[4], void* out,
                                const int64_t out_stride[4], cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) { return sum_partials<decltype(tag)>(partials, splits, sizes, out, out_stride, stream); });
}

}  // namespace cnnkernels
