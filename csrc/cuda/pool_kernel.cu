// Pooling CUDA kernels. Includes no torch header (see pool_kernel.h).
//
// Every kernel is a gather over the tensor it writes: the forward kernels per output element (a
// reduction over its window), the backward kernels per input element (over the windows that
// reach it, so no two threads write the same element: no atomics, and the result does not
// depend on scheduling). The per-element rules (window extents, torch's max comparison, average
// divisors) are the ones the CPU backend uses, from cnnkernels/pool.h and cnnkernels/conv.h.
//
// A thread takes one spatial position of the tensor it writes and a run of up to kChannels of
// its channels. Everything but the loads and the arithmetic on values depends on the position
// alone: the decomposition of the thread index, the window (or, for a gather, the windows that
// reach the position and the taps through which they do), the average divisors. Done once per
// run instead of once per element, that integer work (the division above all) no longer costs
// more than the memory traffic: with a thread per element, the max-pooling gather spent about
// four times as long as torch's kernel on it.
//
// Pooling is bound by memory traffic otherwise, so a warp must touch consecutive addresses: the
// thread index is decomposed with the innermost dimension of the written tensor's layout first.
// For channels_last that is the channels: a warp's lanes take consecutive channels, and a
// thread's run strides by the lanes (channels c, c + lanes, ...), so each of its loads is one
// coalesced row of the warp. Otherwise it is the columns: a warp's lanes take consecutive
// columns, and a thread's run is consecutive channels (planes) of its position. Reads go
// through arbitrary strides; in either dense layout the window reads of neighbouring threads
// are then neighbours too.
//
// Coordinates are computed in a type G, int32_t whenever the problem allows
// (coordinates_fit_int32) and int64_t otherwise: a 64-bit division is a call to a software
// routine several times longer than the 32-bit one.
#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cnnkernels/common.h"
#include "cnnkernels/conv.h"
#include "cnnkernels/cuda_types.cuh"
#include "cnnkernels/pool.h"
#include "pool_kernel.h"

// Test hook: the host-emulator build lowers this to reach the 64-bit coordinate path on small
// problems. The default is what ships.
#ifndef CNNK_POOL_INDEX32_LIMIT
#define CNNK_POOL_INDEX32_LIMIT (int64_t{1} << 31)
#endif

namespace cnnkernels {
namespace {

// ---- one thread per position and run of channels ------------------------------------------

constexpr int kThreads = 256;
// Grid-stride loop beyond this many blocks (far more than any GPU keeps resident).
constexpr int64_t kMaxBlocks = int64_t{1} << 20;
// Channels per thread: enough to amortise the position's integer work, few enough that their
// accumulators stay in registers and small problems still give every SM work.
constexpr int kChannels = 4;
// channels_last: the lanes a warp spreads over a position's channels (fewer when there are fewer
// channels, the rest of the warp taking the next positions).
constexpr int64_t kChannelLanes = 32;

// The channels of one thread: first, first + step, ... (count of them, 1 <= count <= kChannels).
struct ChannelRun {
  int64_t first, step;
  int count;
};

// Calls f(k) for the k-th channel of the run, k < run.count; unrolled, so per-channel arrays
// indexed by k stay in registers.
template <class F>
__device__ __forceinline__ void for_each_channel(const ChannelRun& run, F&& f) {
#pragma unroll
  for (int k = 0; k < kChannels; ++k) {
    if (k < run.count) f(k);
  }
}

// One view's planes of a run: element `offset` (h*s2 + w*s3) of the run's k-th channel.
template <typename T>
struct RunPlanes {
  T* first;
  int64_t apart;
  __device__ __forceinline__ T& operator()(int k, int64_t offset) const { return first[k * apart + offset]; }
};

// A typed 4-D view: element (n, c, h, w) at data[n*s0 + c*s1 + h*s2 + w*s3]. Offsets are
// 64-bit (a plane's rows can be far apart in channels_last) whatever the coordinate type.
template <typename T>
struct View {
  T* data;
  int64_t s0, s1, s2, s3;

  __device__ __forceinline__ RunPlanes<T> planes(int64_t n, const ChannelRun& run) const {
    return {data + n * s0 + run.first * s1, run.step * s1};
  }
  __device__ __forceinline__ int64_t offset(int64_t h, int64_t w) const { return h * s2 + w * s3; }
};

template <typename T>
View<T> view(const StridedTensor& t) {
  return {static_cast<T*>(t.data), t.stride[0], t.stride[1], t.stride[2], t.stride[3]};
}

template <typename acc>
__device__ __forceinline__ acc negative_infinity() {
  return static_cast<acc>(-CUDART_INF);
}

// How the threads cover an (N, C, H, W) tensor: `groups` runs of channels per position, each
// spread over `lanes` threads (channels_last; 1 otherwise).
struct Coverage {
  int64_t lanes, groups, items;
};

Coverage coverage(int64_t batch, int64_t channels, int64_t height, int64_t width, bool channels_last) {
  const int64_t lanes = channels_last ? std::min(channels, kChannelLanes) : 1;
  const int64_t groups = ceil_div<int64_t>(channels, lanes * kChannels);
  // At most the element count, so the thread index fits in G wherever the elements do: groups *
  // lanes <= channels, as lanes <= channels when there is one group, and with more groups
  // (channels > 32 * kChannels) groups * lanes < channels / kChannels + lanes < channels.
  return {lanes, groups, batch * height * width * groups * lanes};
}

// Calls op(n, run, h, w) for every position (n, h, w) of an (N, C, H, W) tensor and run of its
// channels, h and w in the op's coordinate type G; the thread index is decomposed in G's
// unsigned counterpart.
template <bool kChannelsLast, class Op>
__global__ void __launch_bounds__(kThreads)
    per_position_kernel(Op op, typename Op::Coord channels, typename Op::Coord height, typename Op::Coord width,
                        typename Op::Coord lanes, typename Op::Coord groups, int64_t items) {
  using G = typename Op::Coord;
  using Index = std::make_unsigned_t<G>;
  const int64_t step = int64_t{gridDim.x} * kThreads;
  for (int64_t i = int64_t{blockIdx.x} * kThreads + threadIdx.x; i < items; i += step) {
    Index j = static_cast<Index>(i), n, group, h, w;
    ChannelRun run;
    if constexpr (kChannelsLast) {  // items (n, h, w, group, lane)
      const Index lane = j % lanes;
      j /= lanes;
      group = j % groups;
      j /= groups;
      w = j % width;
      j /= width;
      h = j % height;
      n = j / height;
      run = {static_cast<int64_t>(group * lanes * kChannels + lane), lanes, 0};
    } else {  // items (n, group, h, w)
      w = j % width;
      j /= width;
      h = j % height;
      j /= height;
      group = j % groups;
      n = j / groups;
      run = {static_cast<int64_t>(group * kChannels), 1, 0};
    }
#pragma unroll
    for (int k = 0; k < kChannels; ++k) run.count += run.first + k * run.step < channels;
    if (run.count > 0) op(static_cast<int64_t>(n), run, static_cast<G>(h), static_cast<G>(w));
  }
}

template <class Op>
cudaError_t for_each_position(const Op& op, int64_t batch, int64_t channels, int64_t height, int64_t width,
                              bool channels_last, cudaStream_t stream) {
  const Coverage cover = coverage(batch, channels, height, width, channels_last);
  if (cover.items == 0) return cudaSuccess;
  using G = typename Op::Coord;
  const auto blocks = static_cast<unsigned>(std::min(ceil_div<int64_t>(cover.items, kThreads), kMaxBlocks));
  const auto C = static_cast<G>(channels), H = static_cast<G>(height), W = static_cast<G>(width);
  const auto lanes = static_cast<G>(cover.lanes), groups = static_cast<G>(cover.groups);
  if (channels_last) {
    per_position_kernel<true><<<blocks, kThreads, 0, stream>>>(op, C, H, W, lanes, groups, cover.items);
  } else {
    per_position_kernel<false><<<blocks, kThreads, 0, stream>>>(op, C, H, W, lanes, groups, cover.items);
  }
  return cudaGetLastError();
}

// Whether every coordinate and count of a problem fits in int32_t: the element count of the
// tensor written (the thread index), flat positions within a plane (h*W + w), window origins and
// taps (-pad .. in + pad + kernel*dilation), output positions times the stride, the adaptive
// windows' products (o+1)*in and (i+1)*out, and the average divisor's window area.
bool coordinates_fit_int32(const Pool2dParams& p, int64_t numel) {
  const int64_t limit = CNNK_POOL_INDEX32_LIMIT;
  auto axis = [](int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
    return std::max(in + 2 * pad + kernel * dilation + (out + 1) * stride, (in + 1) * (out + 1));
  };
  return numel < limit && p.batch < limit && p.channels < limit && p.in_h * p.in_w < limit &&
         p.out_h * p.out_w < limit && p.kernel_h * p.kernel_w < limit &&
         axis(p.in_h, p.out_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h) < limit &&
         axis(p.in_w, p.out_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w) < limit;
}

// ---- max pooling ---------------------------------------------------------------------------

// The first tap at or after the window's origin that is not in the leading padding (torch
// starts its maximum there, even when that tap is past the end of the input).
template <typename G>
__device__ __forceinline__ G first_nonnegative_tap(G origin, G dilation) {
  return origin >= 0 ? origin : origin + ceil_div(-origin, dilation) * dilation;
}

// The taps of a window along one axis: first, first + step, ... below end.
template <typename G>
struct Taps {
  G first, end, step;
};

// Output (oh, ow) of each channel of the run: the maximum of the input over rows x cols and its
// flat index, by torch's rule: starting at -inf with the index of the first tap, replaced by
// every tap that max_pool_takes (larger, or NaN). Max pooling and adaptive max pooling.
template <typename T, typename G>
__device__ __forceinline__ void window_max(const ChannelRun& run, int64_t n, const View<const T>& in, G in_w,
                                           Taps<G> rows, Taps<G> cols, const View<T>& out,
                                           const View<int64_t>& idx, G oh, G ow) {
  using acc = acc_t<T>;
  const RunPlanes<const T> x = in.planes(n, run);
  acc best[kChannels];
  G best_index[kChannels];
#pragma unroll
  for (int k = 0; k < kChannels; ++k) {
    best[k] = negative_infinity<acc>();
    best_index[k] = rows.first * in_w + cols.first;
  }
  for (G ih = rows.first; ih < rows.end; ih += rows.step) {
    for (G iw = cols.first; iw < cols.end; iw += cols.step) {
      const int64_t at = in.offset(ih, iw);
      const G here = ih * in_w + iw;
      for_each_channel(run, [&](int k) {
        const acc v = to_acc(x(k, at));
        if (max_pool_takes(v, best[k])) {
          best[k] = v;
          best_index[k] = here;
        }
      });
    }
  }
  const RunPlanes<T> y = out.planes(n, run);
  const RunPlanes<int64_t> chosen = idx.planes(n, run);
  for_each_channel(run, [&](int k) {
    y(k, out.offset(oh, ow)) = from_acc<T>(best[k]);
    chosen(k, idx.offset(oh, ow)) = best_index[k];
  });
}

// Output (oh, ow): the maximum over the window's in-bounds taps (window_max), the first of them
// at or after the top/left edge.
template <typename T, typename G>
struct MaxPool2d {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> in;
  View<T> out;
  View<int64_t> idx;

  MaxPool2d(const BasicPool2dParams<G>& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.input)), out(view<T>(t.output)), idx(view<int64_t>(t.indices)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G oh, G ow) const {
    const G origin_h = oh * p.stride_h - p.pad_h, origin_w = ow * p.stride_w - p.pad_w;
    const G h_end = min(origin_h + (p.kernel_h - 1) * p.dilation_h + 1, p.in_h);
    const G w_end = min(origin_w + (p.kernel_w - 1) * p.dilation_w + 1, p.in_w);
    const G h0 = first_nonnegative_tap(origin_h, p.dilation_h);
    const G w0 = first_nonnegative_tap(origin_w, p.dilation_w);
    window_max(run, n, in, p.in_w, {h0, h_end, p.dilation_h}, {w0, w_end, p.dilation_w}, out, idx, oh, ow);
  }
};

// The max-pooling gathers' step for one window: sum[k] += its gradient where the window chose
// position `self` in channel k. The indices are all loaded before any is compared, so their
// loads are in flight together rather than one after another.
template <typename T, typename G, typename acc>
__device__ __forceinline__ void accumulate_chosen(const ChannelRun& run, const RunPlanes<const int64_t>& chosen,
                                                  int64_t at_chosen, const RunPlanes<const T>& grad,
                                                  int64_t at_grad, G self, acc (&sum)[kChannels]) {
  int64_t picked[kChannels];
  for_each_channel(run, [&](int k) { picked[k] = chosen(k, at_chosen); });
  for_each_channel(run, [&](int k) {
    if (picked[k] == self) sum[k] += to_acc(grad(k, at_grad));
  });
}

// Input (ih, iw) is a tap of the windows backward_input_outputs finds along each axis (the
// phase arithmetic of the convolution's input gradient); it collects the gradient of those that
// chose it, in increasing window order: the order torch's gather sums them in.
template <typename T, typename G>
struct MaxPool2dBackward {
  using Coord = G;
  BasicPool2dParams<G> p;
  BackwardInputSteps<G> steps_h, steps_w;  // the problem's, computed once on the host
  View<const T> grad_out;
  View<const int64_t> idx;
  View<T> grad_in;

  MaxPool2dBackward(const BasicPool2dParams<G>& p, const Pool2dTensors& t)
      : p(p),
        steps_h(backward_input_steps(p.stride_h, p.dilation_h)),
        steps_w(backward_input_steps(p.stride_w, p.dilation_w)),
        grad_out(view<const T>(t.output)),
        idx(view<const int64_t>(t.indices)),
        grad_in(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G ih, G iw) const {
    using acc = acc_t<T>;
    const G self = ih * p.in_w + iw;
    const OutputRange<G> rows = backward_input_outputs(ih, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h, steps_h);
    const OutputRange<G> cols = backward_input_outputs(iw, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w, steps_w);
    const RunPlanes<const T> dy = grad_out.planes(n, run);
    const RunPlanes<const int64_t> chosen = idx.planes(n, run);
    acc sum[kChannels] = {};
    for (G oh = rows.first; oh <= rows.last; oh += rows.step) {
      if (oh < 0) continue;
      if (oh >= p.out_h) break;
      for (G ow = cols.first; ow <= cols.last; ow += cols.step) {
        if (ow < 0) continue;
        if (ow >= p.out_w) break;
        accumulate_chosen(run, chosen, idx.offset(oh, ow), dy, grad_out.offset(oh, ow), self, sum);
      }
    }
    const RunPlanes<T> dx = grad_in.planes(n, run);
    for_each_channel(run, [&](int k) { dx(k, grad_in.offset(ih, iw)) = from_acc<T>(sum[k]); });
  }
};

// ---- average pooling -----------------------------------------------------------------------

// Output (oh, ow) of each channel of the run: the sum of the input over rows [h0, h1) x
// columns [w0, w1), divided by `divisor`. Average and adaptive average pooling.
template <typename T, typename G>
__device__ __forceinline__ void window_mean(const ChannelRun& run, int64_t n, const View<const T>& in, G h0, G h1,
                                            G w0, G w1, int64_t divisor, const View<T>& out, G oh, G ow) {
  using acc = acc_t<T>;
  const RunPlanes<const T> x = in.planes(n, run);
  acc sum[kChannels] = {};
  for (G ih = h0; ih < h1; ++ih) {
    for (G iw = w0; iw < w1; ++iw) {
      const int64_t at = in.offset(ih, iw);
      for_each_channel(run, [&](int k) { sum[k] += to_acc(x(k, at)); });
    }
  }
  const RunPlanes<T> y = out.planes(n, run);
  for_each_channel(run, [&](int k) { y(k, out.offset(oh, ow)) = from_acc<T>(sum[k] / static_cast<acc>(divisor)); });
}

template <typename T, typename G>
struct AvgPool2d {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> in;
  View<T> out;
  bool count_include_pad;
  int64_t divisor_override;

  AvgPool2d(const BasicPool2dParams<G>& p, const Pool2dTensors& t, bool count_include_pad, int64_t divisor_override)
      : p(p),
        in(view<const T>(t.input)),
        out(view<T>(t.output)),
        count_include_pad(count_include_pad),
        divisor_override(divisor_override) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G oh, G ow) const {
    const G origin_h = oh * p.stride_h - p.pad_h, origin_w = ow * p.stride_w - p.pad_w;
    const G h0 = max(origin_h, G{0}), h1 = min(origin_h + p.kernel_h, p.in_h);
    const G w0 = max(origin_w, G{0}), w1 = min(origin_w + p.kernel_w, p.in_w);
    const RunPlanes<T> y = out.planes(n, run);
    // A window entirely in the padding cannot occur with the checked arguments (pad <= kernel/2,
    // the ceil_mode rule); the guard keeps a direct caller from a zero divisor.
    if (h0 >= h1 || w0 >= w1) {
      for_each_channel(run, [&](int k) { y(k, out.offset(oh, ow)) = zero<T>(); });
      return;
    }
    window_mean(run, n, in, h0, h1, w0, w1, avg_pool_divisor(p, oh, ow, count_include_pad, divisor_override), out,
                oh, ow);
  }
};

// Input (ih, iw) collects grad/divisor from every window whose span covers it.
template <typename T, typename G>
struct AvgPool2dBackward {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> grad_out;
  View<T> grad_in;
  bool count_include_pad;
  int64_t divisor_override;

  AvgPool2dBackward(const BasicPool2dParams<G>& p, const Pool2dTensors& t, bool count_include_pad,
                    int64_t divisor_override)
      : p(p),
        grad_out(view<const T>(t.output)),
        grad_in(view<T>(t.input)),
        count_include_pad(count_include_pad),
        divisor_override(divisor_override) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G ih, G iw) const {
    using acc = acc_t<T>;
    const G oh0 = window_first_covering(ih, p.kernel_h, p.pad_h, p.stride_h);
    const G oh1 = window_last_covering(ih, p.pad_h, p.stride_h, p.out_h);
    const G ow0 = window_first_covering(iw, p.kernel_w, p.pad_w, p.stride_w);
    const G ow1 = window_last_covering(iw, p.pad_w, p.stride_w, p.out_w);
    const RunPlanes<const T> dy = grad_out.planes(n, run);
    acc sum[kChannels] = {};
    for (G oh = oh0; oh <= oh1; ++oh) {
      for (G ow = ow0; ow <= ow1; ++ow) {
        const int64_t at = grad_out.offset(oh, ow);
        const auto divisor = static_cast<acc>(avg_pool_divisor(p, oh, ow, count_include_pad, divisor_override));
        for_each_channel(run, [&](int k) { sum[k] += to_acc(dy(k, at)) / divisor; });
      }
    }
    const RunPlanes<T> dx = grad_in.planes(n, run);
    for_each_channel(run, [&](int k) { dx(k, grad_in.offset(ih, iw)) = from_acc<T>(sum[k]); });
  }
};

// ---- adaptive pooling ----------------------------------------------------------------------
// Output (oh, ow) reduces input rows [adaptive_start, adaptive_end) x the same for columns;
// the windows are never empty (input extents are checked > 0).

template <typename T, typename G>
struct AdaptiveAvgPool2d {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> in;
  View<T> out;

  AdaptiveAvgPool2d(const BasicPool2dParams<G>& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.input)), out(view<T>(t.output)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G oh, G ow) const {
    const G h0 = adaptive_start(oh, p.out_h, p.in_h), h1 = adaptive_end(oh, p.out_h, p.in_h);
    const G w0 = adaptive_start(ow, p.out_w, p.in_w), w1 = adaptive_end(ow, p.out_w, p.in_w);
    window_mean(run, n, in, h0, h1, w0, w1, int64_t{(h1 - h0) * (w1 - w0)}, out, oh, ow);
  }
};

template <typename T, typename G>
struct AdaptiveMaxPool2d {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> in;
  View<T> out;
  View<int64_t> idx;

  AdaptiveMaxPool2d(const BasicPool2dParams<G>& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.input)), out(view<T>(t.output)), idx(view<int64_t>(t.indices)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G oh, G ow) const {
    const G h0 = adaptive_start(oh, p.out_h, p.in_h), h1 = adaptive_end(oh, p.out_h, p.in_h);
    const G w0 = adaptive_start(ow, p.out_w, p.in_w), w1 = adaptive_end(ow, p.out_w, p.in_w);
    window_max(run, n, in, p.in_w, {h0, h1, G{1}}, {w0, w1, G{1}}, out, idx, oh, ow);
  }
};

// Input (ih, iw) gathers over the adaptive windows that contain it: the candidates from
// adaptive_first/last_covering, each checked for membership. Average: grad / window area;
// max: grad where the window chose (ih, iw).
template <typename T, typename G, bool kMax>
struct AdaptivePool2dBackward {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> grad_out;
  View<const int64_t> idx;  // max only
  View<T> grad_in;

  AdaptivePool2dBackward(const BasicPool2dParams<G>& p, const Pool2dTensors& t)
      : p(p), grad_out(view<const T>(t.output)), idx(view<const int64_t>(t.indices)), grad_in(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G ih, G iw) const {
    using acc = acc_t<T>;
    const G self = ih * p.in_w + iw;
    const G oh_last = adaptive_last_covering(ih, p.out_h, p.in_h);
    const G ow_first = adaptive_first_covering(iw, p.out_w, p.in_w);
    const G ow_last = adaptive_last_covering(iw, p.out_w, p.in_w);
    const RunPlanes<const T> dy = grad_out.planes(n, run);
    const RunPlanes<const int64_t> chosen = idx.planes(n, run);
    acc sum[kChannels] = {};
    for (G oh = adaptive_first_covering(ih, p.out_h, p.in_h); oh <= oh_last; ++oh) {
      const G h0 = adaptive_start(oh, p.out_h, p.in_h), h1 = adaptive_end(oh, p.out_h, p.in_h);
      if (ih < h0 || ih >= h1) continue;
      for (G ow = ow_first; ow <= ow_last; ++ow) {
        const G w0 = adaptive_start(ow, p.out_w, p.in_w), w1 = adaptive_end(ow, p.out_w, p.in_w);
        if (iw < w0 || iw >= w1) continue;
        const int64_t at = grad_out.offset(oh, ow);
        if constexpr (kMax) {
          accumulate_chosen(run, chosen, idx.offset(oh, ow), dy, at, self, sum);
        } else {
          const auto area = static_cast<acc>((h1 - h0) * (w1 - w0));
          for_each_channel(run, [&](int k) { sum[k] += to_acc(dy(k, at)) / area; });
        }
      }
    }
    const RunPlanes<T> dx = grad_in.planes(n, run);
    for_each_channel(run, [&](int k) { dx(k, grad_in.offset(ih, iw)) = from_acc<T>(sum[k]); });
  }
};

template <typename T, typename G>
using AdaptiveAvgPool2dBackward = AdaptivePool2dBackward<T, G, false>;
template <typename T, typename G>
using AdaptiveMaxPool2dBackward = AdaptivePool2dBackward<T, G, true>;

// ---- max unpooling -------------------------------------------------------------------------
// In Pool2dParams terms the unpooled tensor is the (H, W) side: see pool_kernel.h.

template <typename T, typename G>
struct Fill0 {
  using Coord = G;
  View<T> out;

  Fill0(const BasicPool2dParams<G>&, const Pool2dTensors& t) : out(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G h, G w) const {
    const RunPlanes<T> y = out.planes(n, run);
    for_each_channel(run, [&](int k) { y(k, out.offset(h, w)) = zero<T>(); });
  }
};

// Scatter, one thread per pooled value. The only operator that is not a gather: its output
// positions come from data, and the values it scatters are what the forward selected.
// Whether flat position k lies in an (H, W) plane; it is then below 2^31 when G is 32-bit.
template <typename G>
__device__ __forceinline__ bool in_plane(int64_t k, const BasicPool2dParams<G>& p) {
  return k >= 0 && k < int64_t{p.in_h} * p.in_w;
}

template <typename T, typename G>
struct MaxUnpool2d {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> in;
  View<const int64_t> idx;
  View<T> out;

  MaxUnpool2d(const BasicPool2dParams<G>& p, const Pool2dTensors& t)
      : p(p), in(view<const T>(t.output)), idx(view<const int64_t>(t.indices)), out(view<T>(t.input)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G h, G w) const {
    const RunPlanes<const T> x = in.planes(n, run);
    const RunPlanes<const int64_t> chosen = idx.planes(n, run);
    const RunPlanes<T> y = out.planes(n, run);
    for_each_channel(run, [&](int k) {
      const int64_t to = chosen(k, idx.offset(h, w));
      if (!in_plane(to, p)) return;  // invalid index: skipped (see pool_kernel.h)
      const G flat = static_cast<G>(to);
      y(k, out.offset(flat / p.in_w, flat % p.in_w)) = x(k, in.offset(h, w));
    });
  }
};

template <typename T, typename G>
struct MaxUnpool2dBackward {
  using Coord = G;
  BasicPool2dParams<G> p;
  View<const T> grad_out;
  View<const int64_t> idx;
  View<T> grad_in;

  MaxUnpool2dBackward(const BasicPool2dParams<G>& p, const Pool2dTensors& t)
      : p(p), grad_out(view<const T>(t.input)), idx(view<const int64_t>(t.indices)), grad_in(view<T>(t.output)) {}

  __device__ void operator()(int64_t n, const ChannelRun& run, G h, G w) const {
    const RunPlanes<const T> dy = grad_out.planes(n, run);
    const RunPlanes<const int64_t> chosen = idx.planes(n, run);
    const RunPlanes<T> dx = grad_in.planes(n, run);
    for_each_channel(run, [&](int k) {
      const int64_t from = chosen(k, idx.offset(h, w));
      const G flat = static_cast<G>(from);
      dx(k, grad_in.offset(h, w)) =
          in_plane(from, p) ? dy(k, grad_out.offset(flat / p.in_w, flat % p.in_w)) : zero<T>();
    });
  }
};

// ---- launch --------------------------------------------------------------------------------

// Runs Op<T, G>(p, t, extra...) once per position and run of channels of the (N, C, height,
// width) tensor it writes, G = int32_t where the problem's coordinates fit, int64_t otherwise.
template <template <typename, typename> class Op, class... Extra>
cudaError_t run(DType dtype, const Pool2dParams& p, const Pool2dTensors& t, int64_t height, int64_t width,
                cudaStream_t stream, Extra... extra) {
  const int64_t numel = p.batch * p.channels * height * width;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (coordinates_fit_int32(p, numel)) {
      return for_each_position(Op<T, int32_t>(p.as<int32_t>(), t, extra...), p.batch, p.channels, height, width,
                               t.channels_last, stream);
    }
    return for_each_position(Op<T, int64_t>(p, t, extra...), p.batch, p.channels, height, width, t.channels_last,
                             stream);
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
