// conv2d CUDA kernels. Includes no torch header (see conv_kernel.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cnnkernels/common.h"
#include "conv_kernel.h"

namespace cnnkernels {
namespace {

template <typename T>
__device__ __forceinline__ acc_t<T> load_acc(const T* p) {
  return static_cast<acc_t<T>>(*p);
}
template <>
__device__ __forceinline__ float load_acc<__half>(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float load_acc<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

// ---- bias gradient -------------------------------------------------------------------------
// Stage 1: block (channel tile, chunk) sums its chunk of pixels for kChannelLanes channels.
// 256 threads = kChannelLanes x kPixelLanes. When channels are innermost in memory
// (channels_last) neighbouring lanes take neighbouring channels; otherwise neighbouring
// pixels, so loads coalesce in both layouts. The lanes of a channel are combined by a fixed
// shared-memory tree: deterministic.
constexpr int kBlockThreads = 256;

template <typename T, int kChannelLanes>
__global__ void __launch_bounds__(kBlockThreads)
    bias_grad_partials_kernel(const T* __restrict__ grad, int64_t channels, int64_t pixels_per_image,
                              int64_t pixels, int64_t stride_n, int64_t stride_k, int64_t stride_pq,
                              int64_t chunk_len, acc_t<T>* __restrict__ partials) {
  constexpr int kPixelLanes = kBlockThreads / kChannelLanes;
  __shared__ acc_t<T> sums[kChannelLanes][kPixelLanes];
  // Lane assignment: the fast-varying thread index walks the contiguous dimension.
  const int ch_lane = kChannelLanes == 32 ? threadIdx.x % 32 : threadIdx.x / kPixelLanes;
  const int pix_lane = kChannelLanes == 32 ? threadIdx.x / 32 : threadIdx.x % kPixelLanes;
  const int64_t k = int64_t{blockIdx.x} * kChannelLanes + ch_lane;
  const int64_t chunk = blockIdx.y;
  const int64_t m_begin = chunk * chunk_len;
  const int64_t m_end = min(pixels, m_begin + chunk_len);

  acc_t<T> sum = 0;
  if (k < channels) {
    for (int64_t m = m_begin + pix_lane; m < m_end; m += kPixelLanes) {
      const int64_t n = m / pixels_per_image, pq = m - n * pixels_per_image;
      sum += load_acc(grad + n * stride_n + k * stride_k + pq * stride_pq);
    }
  }
  sums[ch_lane][pix_lane] = sum;
  __syncthreads();
  for (int half = kPixelLanes / 2; half > 0; half /= 2) {
    if (pix_lane < half) sums[ch_lane][pix_lane] += sums[ch_lane][pix_lane + half];
    __syncthreads();
  }
  if (pix_lane == 0 && k < channels) partials[chunk * channels + k] = sums[ch_lane][0];
}

// Stage 2: one thread per channel adds the partials in chunk order.
template <typename T>
__global__ void bias_grad_finish_kernel(const acc_t<T>* __restrict__ partials, int64_t chunks,
                                        int64_t channels, T* __restrict__ grad_bias) {
  const int64_t k = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (k >= channels) return;
  acc_t<T> total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partials[c * channels + k];
  grad_bias[k] = from_acc<T>(total);
}

template <typename T>
cudaError_t bias_grad(const void* grad, int64_t batch, int64_t channels, int64_t pixels_per_image,
                      int64_t stride_n, int64_t stride_k, int64_t stride_pq, int64_t chunks,
                      void* partials, void* grad_bias, cudaStream_t stream) {
  const int64_t pixels = batch * pixels_per_image;
  const int64_t chunk_len = ceil_div(pixels, chunks);
  auto* part = static_cast<acc_t<T>*>(partials);
  const T* g = static_cast<const T*>(grad);
  if (stride_k == 1) {
    constexpr int kLanes = 32;
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(channels, kLanes)), static_cast<unsigned>(chunks));
    bias_grad_partials_kernel<T, kLanes><<<grid, kBlockThreads, 0, stream>>>(
        g, channels, pixels_per_image, pixels, stride_n, stride_k, stride_pq, chunk_len, part);
  } else {
    constexpr int kLanes = 8;
    const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(channels, kLanes)), static_cast<unsigned>(chunks));
    bias_grad_partials_kernel<T, kLanes><<<grid, kBlockThreads, 0, stream>>>(
        g, channels, pixels_per_image, pixels, stride_n, stride_k, stride_pq, chunk_len, part);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int threads = 256;
  bias_grad_finish_kernel<T><<<static_cast<unsigned>(ceil_div<int64_t>(channels, threads)), threads, 0, stream>>>(
      part, chunks, channels, static_cast<T*>(grad_bias));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv2d_backward_bias(DType dtype, const void* grad_output, int64_t batch,
                                        int64_t channels, int64_t pixels_per_image, int64_t stride_n,
                                        int64_t stride_k, int64_t stride_pq, int64_t chunks,
                                        void* partials, void* grad_bias, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32:
      return bias_grad<float>(grad_output, batch, channels, pixels_per_image, stride_n, stride_k,
                              stride_pq, chunks, partials, grad_bias, stream);
    case DType::Float64:
      return bias_grad<double>(grad_output, batch, channels, pixels_per_image, stride_n, stride_k,
                               stride_pq, chunks, partials, grad_bias, stream);
    case DType::Float16:
      return bias_grad<__half>(grad_output, batch, channels, pixels_per_image, stride_n, stride_k,
                               stride_pq, chunks, partials, grad_bias, stream);
    case DType::BFloat16:
      return bias_grad<__nv_bfloat16>(grad_output, batch, channels, pixels_per_image, stride_n,
                                      stride_k, stride_pq, chunks, partials, grad_bias, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cnnkernels
