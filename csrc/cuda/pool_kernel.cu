// Pooling CUDA kernels. Includes no torch header (see pool_kernel.h).
//
// Every kernel is one thread per element of the tensor it writes: the forward kernels per
// output element (a reduction over its window), the backward kernels per input element (a
// gather over the windows that reach it, so no two threads write the same element: no
// atomics, and the result does not depend on scheduling). The per-element rules (window
// extents, torch's max comparison, average divisors) are the ones the CPU backend uses, from
// cnnkernels/pool.h and cnnkernels/conv.h.
//
// Pooling is bound by memory traffic, so the one thing that matters for speed is that a warp
// touches consecutive addresses: the linear thread index is decomposed with the innermost
// dimension of the written tensor's layout first (channels for channels_last, columns
// otherwise). Reads go through arbitrary strides; in either dense layout the window reads of
// neighbouring threads are then neighbours too.
#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>
#include <cstdint>

#include "cnnkernels/common.h"
#include "cnnkernels/conv.h"
#include "cnnkernels/cuda_types.cuh"
#include "cnnkernels/pool.h"
#include "pool_kernel.h"

namespace cnnkernels {
namespace {

// A typed 4-D view: element (n, c, h, w) at data[n*s0 + c*s1 + h*s2 + w*s3].
template <typename T>
struct View {
  T* data;
  int64_t s0, s1, s2, s3;

  // The (n, c) plane, so that loops over a window add only h*s2 + w*s3.
  __device__ __forceinline__ T* plane(int64_t n, int64_t c) const { return data + n * s0 + c * s1; }
  __device__ __forceinline__ T& operator()(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return plane(n, c)[h * s2 + w * s3];
  }
};

template <typename T>
View<T> view(const StridedTensor& t) {
  return {static_cast<T*>(t.data), t.stride[0], t.stride[1], t.stride[2], t.stride[3]};
}

template <typename acc>
__device__ __forceinline__ acc negative_infinity() {
  return static_cast<acc>(-CUDART_INF);
}

// ---- one thread per element ----------------------------------------------------------------

constexpr int kThreads = 256;
// Grid-stride loop beyond this many blocks (far more than any GPU keeps resident).
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// Calls op(n, c, h, w) for every element of an (N, C, H, W) tensor. Index is the type the
// linear index is decomposed in: 32-bit whenever the tensor allows, because 64-bit integer
// division is emulated by several times as many instructions.
template <typename Index, bool kChannelsLast, class Op>
__global__ void __launch_bounds__(kThreads)
    per_element_kernel(Op op, Index channels, Index height, Index width, int64_t numel) {
  const int64_t step = int64_t{gridDim.x} * kThreads;
  for (int64_t i = int64_t{blockIdx.x} * kThreads + threadIdx.x; i < numel; i += step) {
    Index j = static_cast<Index>(i), n, c, h, w;
    if constexpr (kChannelsLast) {
      c = j % channels;
      j /= channels;
      w = j % width;
      j /= width;
      h = j % height;
      n = j / height;
    } else {
      w = j % width;
      j /= width;
      h = j % height;
      j /= height;
      c = j % channels;
      n = j / channels;
    }
    op(static_cast<int64_t>(n), static_cast<int64_t>(c), static_cast<int64_t>(h), static_cast<int64_t>(w));
  }
}

template <typename Index, class Op>
void launch_per_element(const Op& op, int64_t channels, int64_t height, int64_t width, int64_t numel,
                        bool channels_last, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(std::min(ceil_div<int64_t>(numel, kThreads), kMaxBlocks));
  const auto C = static_cast<Index>(channels), H = static_cast<Index>(height), W = static_cast<Index>(width);
  if (channels_last) {
    per_element_kernel<Index, true><<<blocks, kThreads, 0, stream>>>(op, C, H, W, numel);
  } else {
    per_element_kernel<Index, false><<<blocks, kThreads, 0, stream>>>(op, C, H, W, numel);
  }
}

template <class Op>
cudaError_t for_each_element(const Op& op, int64_t batch, int64_t channels, int64_t height, int64_t width,
                             bool channels_last, cudaStream_t stream) {
  const int64_t numel = batch * channels * height * width;
  if (numel == 0) return cudaSuccess;
  if (numel <= int64_t{UINT32_MAX}) {
    launch_per_element<uint32_t>(op, channels, height, width, numel, channels_last, stream);
  } else {
    launch_per_element<uint64_t>(op, channels, height, width, numel, channels_last, stream);
  }
  return cudaGetLastError();
}

// ---- max pooling ---------------------------------------------------------------------------

// The first tap at or after the window's origin that is not in the leading padding (torch
// starts its maximum there, even when that tap is past the end of the input).
__device__ __forceinline__ int64_t first_nonnegative_tap(int64_t origin, int64_t dilation) {
  return origin >= 0 ? origin : origin + ceil_div(-origin, dilation) * dilation;
}

// Output (oh, ow): torch's rule, a maximum starting at -inf with the index of the window's
// first in-bounds tap, replaced by every tap that max_pool_takes (larger, or NaN).
template <typename T>
struct MaxPool2d {
  Pool2dParams p;
  View<const T> in;
  View<T> out;
  View<int64_t> idx;

  MaxPool2d(const Pool2dParams& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.input)), out(view<T>(t.output)), idx(view<int64_t>(t.indices)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t oh, int64_t ow) const {
    using acc = acc_t<T>;
    const int64_t origin_h = oh * p.stride_h - p.pad_h, origin_w = ow * p.stride_w - p.pad_w;
    const int64_t h_end = min(origin_h + (p.kernel_h - 1) * p.dilation_h + 1, p.in_h);
    const int64_t w_end = min(origin_w + (p.kernel_w - 1) * p.dilation_w + 1, p.in_w);
    const int64_t h0 = first_nonnegative_tap(origin_h, p.dilation_h);
    const int64_t w0 = first_nonnegative_tap(origin_w, p.dilation_w);
    const T* x = in.plane(n, c);
    acc best = negative_infinity<acc>();
    int64_t best_index = h0 * p.in_w + w0;
    for (int64_t ih = h0; ih < h_end; ih += p.dilation_h) {
      for (int64_t iw = w0; iw < w_end; iw += p.dilation_w) {
        const acc v = to_acc(x[ih * in.s2 + iw * in.s3]);
        if (max_pool_takes(v, best)) {
          best = v;
          best_index = ih * p.in_w + iw;
        }
      }
    }
    out(n, c, oh, ow) = from_acc<T>(best);
    idx(n, c, oh, ow) = best_index;
  }
};

// The last useful tap of a progression (call only when it has one: first < kernel).
__device__ __forceinline__ int64_t last_tap(const TapProgression& taps, int64_t kernel) {
  return taps.first + (kernel - 1 - taps.first) / taps.step * taps.step;
}

// Input (ih, iw) is a tap of exactly the windows that backward_input_taps finds (the phase
// arithmetic of the convolution's input gradient, dilation and stride included); it collects
// the gradient of those among them that chose it. Taps are walked from the last one down, so
// the windows come in increasing order, the order torch's gather sums them in.
template <typename T>
struct MaxPool2dBackward {
  Pool2dParams p;
  View<const T> grad_out;
  View<const int64_t> idx;
  View<T> grad_in;

  MaxPool2dBackward(const Pool2dParams& p, const Pool2dTensors& t)
      : p(p), grad_out(view<const T>(t.output)), idx(view<const int64_t>(t.indices)), grad_in(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t ih, int64_t iw) const {
    using acc = acc_t<T>;
    const int64_t self = ih * p.in_w + iw;
    const TapProgression taps_h = backward_input_taps(ih + p.pad_h, p.kernel_h, p.stride_h, p.dilation_h);
    const TapProgression taps_w = backward_input_taps(iw + p.pad_w, p.kernel_w, p.stride_w, p.dilation_w);
    acc sum = 0;
    if (taps_h.first < p.kernel_h && taps_w.first < p.kernel_w) {
      const T* dy = grad_out.plane(n, c);
      const int64_t* chosen = idx.plane(n, c);
      for (int64_t r = last_tap(taps_h, p.kernel_h); r >= taps_h.first; r -= taps_h.step) {
        const int64_t oh = backward_input_out_coord(ih + p.pad_h, r, p.stride_h, p.dilation_h);
        if (oh < 0) continue;
        if (oh >= p.out_h) break;
        for (int64_t s = last_tap(taps_w, p.kernel_w); s >= taps_w.first; s -= taps_w.step) {
          const int64_t ow = backward_input_out_coord(iw + p.pad_w, s, p.stride_w, p.dilation_w);
          if (ow < 0) continue;
          if (ow >= p.out_w) break;
          if (chosen[oh * idx.s2 + ow * idx.s3] == self) sum += to_acc(dy[oh * grad_out.s2 + ow * grad_out.s3]);
        }
      }
    }
    grad_in(n, c, ih, iw) = from_acc<T>(sum);
  }
};

// ---- average pooling -----------------------------------------------------------------------

template <typename T>
struct AvgPool2d {
  Pool2dParams p;
  View<const T> in;
  View<T> out;
  bool count_include_pad;
  int64_t divisor_override;

  AvgPool2d(const Pool2dParams& p, const Pool2dTensors& t, bool count_include_pad, int64_t divisor_override)
      : p(p),
        in(view<const T>(t.input)),
        out(view<T>(t.output)),
        count_include_pad(count_include_pad),
        divisor_override(divisor_override) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t oh, int64_t ow) const {
    using acc = acc_t<T>;
    const int64_t origin_h = oh * p.stride_h - p.pad_h, origin_w = ow * p.stride_w - p.pad_w;
    const int64_t h0 = max(origin_h, int64_t{0}), h1 = min(origin_h + p.kernel_h, p.in_h);
    const int64_t w0 = max(origin_w, int64_t{0}), w1 = min(origin_w + p.kernel_w, p.in_w);
    // A window entirely in the padding cannot occur with the checked arguments (pad <= kernel/2,
    // the ceil_mode rule); the guard keeps a direct caller from a zero divisor.
    if (h0 >= h1 || w0 >= w1) {
      out(n, c, oh, ow) = zero<T>();
      return;
    }
    const T* x = in.plane(n, c);
    acc sum = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) sum += to_acc(x[ih * in.s2 + iw * in.s3]);
    const int64_t divisor = avg_pool_divisor(p, oh, ow, count_include_pad, divisor_override);
    out(n, c, oh, ow) = from_acc<T>(sum / static_cast<acc>(divisor));
  }
};

// Input (ih, iw) collects grad/divisor from every window whose span covers it.
template <typename T>
struct AvgPool2dBackward {
  Pool2dParams p;
  View<const T> grad_out;
  View<T> grad_in;
  bool count_include_pad;
  int64_t divisor_override;

  AvgPool2dBackward(const Pool2dParams& p, const Pool2dTensors& t, bool count_include_pad, int64_t divisor_override)
      : p(p),
        grad_out(view<const T>(t.output)),
        grad_in(view<T>(t.input)),
        count_include_pad(count_include_pad),
        divisor_override(divisor_override) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t ih, int64_t iw) const {
    using acc = acc_t<T>;
    const int64_t oh0 = window_first_covering(ih, p.kernel_h, p.pad_h, p.stride_h);
    const int64_t oh1 = window_last_covering(ih, p.pad_h, p.stride_h, p.out_h);
    const int64_t ow0 = window_first_covering(iw, p.kernel_w, p.pad_w, p.stride_w);
    const int64_t ow1 = window_last_covering(iw, p.pad_w, p.stride_w, p.out_w);
    const T* dy = grad_out.plane(n, c);
    acc sum = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow)
        sum += to_acc(dy[oh * grad_out.s2 + ow * grad_out.s3]) /
               static_cast<acc>(avg_pool_divisor(p, oh, ow, count_include_pad, divisor_override));
    grad_in(n, c, ih, iw) = from_acc<T>(sum);
  }
};

// ---- adaptive pooling ----------------------------------------------------------------------
// Output (oh, ow) reduces input rows [adaptive_start, adaptive_end) x the same for columns;
// the windows are never empty (input extents are checked > 0).

template <typename T>
struct AdaptiveAvgPool2d {
  Pool2dParams p;
  View<const T> in;
  View<T> out;

  AdaptiveAvgPool2d(const Pool2dParams& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.input)), out(view<T>(t.output)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t oh, int64_t ow) const {
    using acc = acc_t<T>;
    const int64_t h0 = adaptive_start(oh, p.out_h, p.in_h), h1 = adaptive_end(oh, p.out_h, p.in_h);
    const int64_t w0 = adaptive_start(ow, p.out_w, p.in_w), w1 = adaptive_end(ow, p.out_w, p.in_w);
    const T* x = in.plane(n, c);
    acc sum = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) sum += to_acc(x[ih * in.s2 + iw * in.s3]);
    out(n, c, oh, ow) = from_acc<T>(sum / static_cast<acc>((h1 - h0) * (w1 - w0)));
  }
};

template <typename T>
struct AdaptiveMaxPool2d {
  Pool2dParams p;
  View<const T> in;
  View<T> out;
  View<int64_t> idx;

  AdaptiveMaxPool2d(const Pool2dParams& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.input)), out(view<T>(t.output)), idx(view<int64_t>(t.indices)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t oh, int64_t ow) const {
    using acc = acc_t<T>;
    const int64_t h0 = adaptive_start(oh, p.out_h, p.in_h), h1 = adaptive_end(oh, p.out_h, p.in_h);
    const int64_t w0 = adaptive_start(ow, p.out_w, p.in_w), w1 = adaptive_end(ow, p.out_w, p.in_w);
    const T* x = in.plane(n, c);
    acc best = negative_infinity<acc>();
    int64_t best_index = h0 * p.in_w + w0;
    for (int64_t ih = h0; ih < h1; ++ih) {
      for (int64_t iw = w0; iw < w1; ++iw) {
        const acc v = to_acc(x[ih * in.s2 + iw * in.s3]);
        if (max_pool_takes(v, best)) {
          best = v;
          best_index = ih * p.in_w + iw;
        }
      }
    }
    out(n, c, oh, ow) = from_acc<T>(best);
    idx(n, c, oh, ow) = best_index;
  }
};

// Input (ih, iw) gathers over the adaptive windows that contain it: the candidates from
// adaptive_first/last_covering, each checked for membership. Average: grad / window area;
// max: grad where the window chose (ih, iw).
template <typename T, bool kMax>
struct AdaptivePool2dBackward {
  Pool2dParams p;
  View<const T> grad_out;
  View<const int64_t> idx;  // max only
  View<T> grad_in;

  AdaptivePool2dBackward(const Pool2dParams& p, const Pool2dTensors& t)
      : p(p), grad_out(view<const T>(t.output)), idx(view<const int64_t>(t.indices)), grad_in(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t ih, int64_t iw) const {
    using acc = acc_t<T>;
    const int64_t self = ih * p.in_w + iw;
    const int64_t oh_last = adaptive_last_covering(ih, p.out_h, p.in_h);
    const int64_t ow_first = adaptive_first_covering(iw, p.out_w, p.in_w);
    const int64_t ow_last = adaptive_last_covering(iw, p.out_w, p.in_w);
    const T* dy = grad_out.plane(n, c);
    acc sum = 0;
    for (int64_t oh = adaptive_first_covering(ih, p.out_h, p.in_h); oh <= oh_last; ++oh) {
      const int64_t h0 = adaptive_start(oh, p.out_h, p.in_h), h1 = adaptive_end(oh, p.out_h, p.in_h);
      if (ih < h0 || ih >= h1) continue;
      for (int64_t ow = ow_first; ow <= ow_last; ++ow) {
        const int64_t w0 = adaptive_start(ow, p.out_w, p.in_w), w1 = adaptive_end(ow, p.out_w, p.in_w);
        if (iw < w0 || iw >= w1) continue;
        const acc g = to_acc(dy[oh * grad_out.s2 + ow * grad_out.s3]);
        if constexpr (kMax) {
          if (idx(n, c, oh, ow) == self) sum += g;
        } else {
          sum += g / static_cast<acc>((h1 - h0) * (w1 - w0));
        }
      }
    }
    grad_in(n, c, ih, iw) = from_acc<T>(sum);
  }
};

template <typename T>
using AdaptiveAvgPool2dBackward = AdaptivePool2dBackward<T, false>;
template <typename T>
using AdaptiveMaxPool2dBackward = AdaptivePool2dBackward<T, true>;

// ---- max unpooling -------------------------------------------------------------------------
// In Pool2dParams terms the unpooled tensor is the (H, W) side: see pool_kernel.h.

template <typename T>
struct Fill0 {
  View<T> out;

  Fill0(const Pool2dParams&, const Pool2dTensors& t) : out(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t h, int64_t w) const { out(n, c, h, w) = zero<T>(); }
};

// Scatter, one thread per pooled value. The only operator that is not a gather: its output
// positions come from data, and the values it scatters are what the forward selected.
template <typename T>
struct MaxUnpool2d {
  Pool2dParams p;
  View<const T> in;
  View<const int64_t> idx;
  View<T> out;

  MaxUnpool2d(const Pool2dParams& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.output)), idx(view<const int64_t>(t.indices)), out(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t h, int64_t w) const {
    const int64_t k = idx(n, c, h, w);
    if (k < 0 || k >= p.in_h * p.in_w) return;  // invalid index: skipped (see pool_kernel.h)
    out(n, c, k / p.in_w, k % p.in_w) = in(n, c, h, w);
  }
};

template <typename T>
struct MaxUnpool2dBackward {
  Pool2dParams p;
  View<const T> grad_out;
  View<const int64_t> idx;
  View<T> grad_in;

  MaxUnpool2dBackward(const Pool2dParams& p, const Pool2dTensors& t)
      : p(p), grad_out(view<const T>(t.input)), idx(view<const int64_t>(t.indices)), grad_in(view<T>(t.output)) {}

  __device__ void operator()(int64_t n, int64_t c, int64_t h, int64_t w) const {
    const int64_t k = idx(n, c, h, w);
    const bool valid = k >= 0 && k < p.in_h * p.in_w;
    grad_in(n, c, h, w) = valid ? grad_out(n, c, k / p.in_w, k % p.in_w) : zero<T>();
  }
};

// ---- launch --------------------------------------------------------------------------------

// Runs Op<T>(p, t, extra...) once per element of the (N, C, height, width) tensor it writes.
template <template <typename> class Op, class... Extra>
cudaError_t run(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, int64_t height, int64_t width,
                cudaStream_t stream, Extra... extra) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return for_each_element(Op<T>(p, t, extra...), p.batch, p.channels, height, width, t.channels_last, stream);
  });
}

}  // namespace

cudaError_t launch_max_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, cudaStream_t stream) {
  return run<MaxPool2d>(dtype, p, t, p.out_h, p.out_w, stream);
}

cudaError_t launch_max_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       cudaStream_t stream) {
  return run<MaxPool2dBackward>(dtype, p, t, p.in_h, p.in_w, stream);
}

cudaError_t launch_avg_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, bool count_include_pad,
                              int64_t divisor_override, cudaStream_t stream) {
  return run<AvgPool2d>(dtype, p, t, p.out_h, p.out_w, stream, count_include_pad, divisor_override);
}

cudaError_t launch_avg_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       bool count_include_pad, int64_t divisor_override, cudaStream_t stream) {
  return run<AvgPool2dBackward>(dtype, p, t, p.in_h, p.in_w, stream, count_include_pad, divisor_override);
}

cudaError_t launch_adaptive_avg_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       cudaStream_t stream) {
  return run<AdaptiveAvgPool2d>(dtype, p, t, p.out_h, p.out_w, stream);
}

cudaError_t launch_adaptive_avg_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                                cudaStream_t stream) {
  return run<AdaptiveAvgPool2dBackward>(dtype, p, t, p.in_h, p.in_w, stream);
}

cudaError_t launch_adaptive_max_pool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                       cudaStream_t stream) {
  return run<AdaptiveMaxPool2d>(dtype, p, t, p.out_h, p.out_w, stream);
}

cudaError_t launch_adaptive_max_pool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                                cudaStream_t stream) {
  return run<AdaptiveMaxPool2dBackward>(dtype, p, t, p.in_h, p.in_w, stream);
}

cudaError_t launch_max_unpool2d(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, cudaStream_t stream) {
  const cudaError_t status = run<Fill0>(dtype, p, t, p.in_h, p.in_w, stream);
  if (status != cudaSuccess) return status;
  return run<MaxUnpool2d>(dtype, p, t, p.out_h, p.out_w, stream);
}

cudaError_t launch_max_unpool2d_backward(DType dtype, const Pool2dParams& p, const Pool2dTensors& t,
                                         cudaStream_t stream) {
  return run<MaxUnpool2dBackward>(dtype, p, t, p.out_h, p.out_w, stream);
}

}  // namespace cnnkernels
