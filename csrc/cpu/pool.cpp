// Pooling on the CPU: max, average and adaptive pooling with their backward operators, and max
// unpooling. The kernels read and write through the tensors' strides, so NCHW, channels_last
// and the expanded gradients autograd hands over need no copies.
//
// A tensor is walked as a grid of pixels (PixelGrid): channels_last tensors as N images whose
// pixels are runs of C channels at unit stride, so that every per-window loop runs over the
// channels and vectorises; anything else as N * C planes of single-element pixels. The forward
// kernels reduce each output's window (a product of two Spans, one per axis). The average
// backward is a gather: each input pixel collects from the windows that cover it (Covers), in
// increasing window order. The max backward is the ordered scatter that sums the same terms in
// the same order (see max_pool_backward). Both are deterministic and need no atomics: a result
// depends on the problem alone, never on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cnnkernels/conv.h"
#include "cnnkernels/pool.h"
#include "host/alloc.h"
#include "host/dtypes.h"
#include "host/parallel.h"
#include "host/pool.h"

namespace cnnkernels {
namespace {

// ---- pixel grids -----------------------------------------------------------------------------

// The pixels of one group (an image, or one channel plane of it): pixel (h, w) starts at
// at(h, w), and its lanes() lanes follow at unit stride. The planar walk's lane count is the
// constant 1, so its lane loops vanish at compile time.
template <typename T, bool kInterleaved>
struct GroupPixels {
  T* base;
  int64_t stride_h, stride_w, channels;
  T* at(int64_t h, int64_t w) const { return base + h * stride_h + w * stride_w; }
  int64_t lanes() const { return kInterleaved ? channels : 1; }
};

// A 4-D (N, C, H, W) tensor as groups of H x W pixels. Interleaved (channels at unit stride):
// N groups of C lanes. Planar (any other strides): N * C groups of one lane.
template <typename T, bool kInterleaved>
struct PixelGrid {
  T* data;
  int64_t channels, stride_n, stride_c, stride_h, stride_w;

  PixelGrid(const at::Tensor& t, T* ptr)
      : data(ptr), channels(t.size(1)), stride_n(t.stride(0)), stride_c(t.stride(1)), stride_h(t.stride(2)),
        stride_w(t.stride(3)) {}

  int64_t lanes() const { return kInterleaved ? channels : 1; }
  GroupPixels<T, kInterleaved> group(int64_t g) const {
    const int64_t offset = kInterleaved ? g * stride_n : (g / channels) * stride_n + (g % channels) * stride_c;
    return {data + offset, stride_h, stride_w, channels};
  }
};

template <bool kInterleaved>
int64_t group_count(int64_t batch, int64_t channels) {
  return kInterleaved ? batch : batch * channels;
}

// The interleaved walk serves tensors whose channels all sit at unit stride (channels_last, or
// NCHW with 1x1 planes); planar serves every layout.
bool channels_interleaved(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t->size(1) < 2 || t->stride(1) != 1) return false;
  }
  return true;
}

// Calls fn(std::integral_constant<bool, interleaved>) so that each kernel is compiled once per
// walk, with the lane count of the planar walk a constant 1.
template <class Fn>
void with_walk(bool interleaved, const Fn& fn) {
  if (interleaved) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

template <typename scalar_t, bool kInterleaved>
PixelGrid<const scalar_t, kInterleaved> grid_reader(const at::Tensor& t) {
  return {t, t.const_data_ptr<scalar_t>()};
}
template <typename scalar_t, bool kInterleaved>
PixelGrid<scalar_t, kInterleaved> grid_writer(at::Tensor& t) {
  return {t, t.mutable_data_ptr<scalar_t>()};
}

// A pixel's per-lane running values (sums, maxima): a buffer of one per channel for the
// interleaved walk, a single value, which stays in a register, for the planar one.
template <typename T, bool kInterleaved>
struct LaneValues {
  std::vector<T> buffer;
  T single{};
  explicit LaneValues(int64_t lanes) : buffer(kInterleaved ? static_cast<size_t>(lanes) : 0) {}
  T* data() { return kInterleaved ? buffer.data() : &single; }
};

// Runs fn(g, row) for every row of every group, in parallel; `row_cost` is a row's work.
template <class Fn>
void for_each_row(int64_t groups, int64_t rows, int64_t row_cost, const Fn& fn) {
  at::parallel_for(0, groups * rows, grain_for(row_cost), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i / rows, i % rows);
  });
}

// ---- windows along one axis ------------------------------------------------------------------

// The in-bounds taps of one output's window along an axis: coordinates begin, begin + step, ...
// (count of them). origin is the coordinate the window's maximum starts at, torch's rule: its
// first tap at or past 0, even when that lies past the input (a window all in the padding).
struct Span {
  int64_t begin, step, count, origin;
};

// The most taps a window has along the axis (the work estimate).
int64_t longest(const std::vector<Span>& spans) {
  int64_t most = 1;
  for (const Span& s : spans) most = std::max(most, s.count);
  return most;
}

// Sliding windows (kernel, stride, padding, dilation): output o's taps o * stride - pad +
// t * dilation for t < kernel, cut to [0, in).
std::vector<Span> sliding_spans(int64_t out, int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                int64_t dilation) {
  std::vector<Span> spans(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    const int64_t start = o * stride - pad;
    const int64_t first = start < 0 ? ceil_div(-start, dilation) : 0;  // first tap at or past 0
    const int64_t end = std::min(kernel, in > start ? ceil_div(in - start, dilation) : int64_t{0});
    const int64_t origin = start + first * dilation;
    spans[o] = {origin, dilation, std::max<int64_t>(0, end - first), origin};
  }
  return spans;
}

// Adaptive windows: output o covers [adaptive_start, adaptive_end).
std::vector<Span> adaptive_spans(int64_t out, int64_t in) {
  std::vector<Span> spans(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    const int64_t start = adaptive_start(o, out, in);
    spans[o] = {start, 1, adaptive_end(o, out, in) - start, start};
  }
  return spans;
}

// Average pooling's divisor of every window (avg_pool_divisor), row-major over the outputs.
std::vector<int64_t> avg_pool_divisors(const Pool2dParams& p, bool count_include_pad, int64_t divisor_override) {
  std::vector<int64_t> divisors(static_cast<size_t>(p.out_h * p.out_w));
  for (int64_t oh = 0; oh < p.out_h; ++oh)
    for (int64_t ow = 0; ow < p.out_w; ++ow)
      divisors[oh * p.out_w + ow] = avg_pool_divisor(p, oh, ow, count_include_pad, divisor_override);
  return divisors;
}

// Adaptive average pooling's divisor: the number of taps of every window.
std::vector<int64_t> window_sizes(const std::vector<Span>& rows, const std::vector<Span>& cols) {
  std::vector<int64_t> sizes(rows.size() * cols.size());
  for (size_t oh = 0; oh < rows.size(); ++oh)
    for (size_t ow = 0; ow < cols.size(); ++ow) sizes[oh * cols.size() + ow] = rows[oh].count * cols[ow].count;
  return sizes;
}

// For every input coordinate along one axis, the output coordinates whose window reaches it
// (input i: out[begin[i] .. begin[i+1])), in increasing order, listed once per call so that the
// gathers do no index arithmetic per element.
struct Covers {
  std::vector<int64_t> begin{0};
  std::vector<int64_t> out;

  void close_input() { begin.push_back(static_cast<int64_t>(out.size())); }
  const int64_t* first(int64_t i) const { return out.data() + begin[i]; }
  const int64_t* last(int64_t i) const { return out.data() + begin[i + 1]; }
  int64_t most() const {
    int64_t m = 0;
    for (size_t i = 0; i + 1 < begin.size(); ++i) m = std::max(m, begin[i + 1] - begin[i]);
    return m;
  }
};

// Sliding windows that input i is a tap of (the same arithmetic as the convolution's input
// gradient, conv.h).
Covers sliding_covers(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  Covers c;
  const BackwardInputSteps<int64_t> steps = backward_input_steps(stride, dilation);
  for (int64_t i = 0; i < in; ++i) {
    const OutputRange<int64_t> windows = backward_input_outputs(i, kernel, stride, pad, dilation, steps);
    for (int64_t o = windows.first; o <= windows.last; o += windows.step) {
      if (o >= 0 && o < out) c.out.push_back(o);
    }
    c.close_input();
  }
  return c;
}

// Adaptive windows whose [adaptive_start, adaptive_end) holds i.
Covers adaptive_covers(int64_t in, int64_t out) {
  Covers c;
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t o = adaptive_first_covering(i, out, in); o <= adaptive_last_covering(i, out, in); ++o)
      if (adaptive_start(o, out, in) <= i && i < adaptive_end(o, out, in)) c.out.push_back(o);
    c.close_input();
  }
  return c;
}

// A window's starting maximum: -inf (torch's rule), or the lowest value of an integer type; a
// window whose taps all equal it keeps its first tap.
template <typename acc>
constexpr acc max_pool_start() {
  return std::numeric_limits<acc>::has_infinity ? -std::numeric_limits<acc>::infinity()
                                                : std::numeric_limits<acc>::lowest();
}

// ---- forward: a reduction over each output's window ------------------------------------------

// Max and adaptive max pooling: each lane's maximum over the window (max_pool_takes: NaN
// propagates, the first of equal values wins) and its flat index h * W + w in the plane.
template <typename scalar_t, bool kInterleaved>
void max_pool_forward(const at::Tensor& input, at::Tensor& out, at::Tensor& indices, const std::vector<Span>& rows,
                      const std::vector<Span>& cols) {
  using acc = acc_t<scalar_t>;
  const auto x = grid_reader<scalar_t, kInterleaved>(input);
  const auto y = grid_writer<scalar_t, kInterleaved>(out);
  const auto idx = grid_writer<int64_t, kInterleaved>(indices);
  const int64_t in_w = input.size(3), out_w = out.size(3), window_taps = longest(rows) * longest(cols);
  for_each_row(group_count<kInterleaved>(input.size(0), input.size(1)), out.size(2), out_w * window_taps * x.lanes(),
               [&](int64_t g, int64_t oh) {
    const auto xg = x.group(g);
    const auto yg = y.group(g);
    const auto ig = idx.group(g);
    const Span r = rows[oh];
    LaneValues<acc, kInterleaved> best_values(xg.lanes());
    LaneValues<int32_t, kInterleaved> tap_values(xg.lanes());
    acc* __restrict best = best_values.data();
    int32_t* __restrict tap = tap_values.data();  // the maximum's tap, numbered row-major in the window
    std::vector<int64_t> tap_offset(kInterleaved ? static_cast<size_t>(window_taps) : 0);  // [0] stays 0
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const Span c = cols[ow];
      for (int64_t l = 0; l < xg.lanes(); ++l) {
        best[l] = max_pool_start<acc>();
        tap[l] = 0;
      }
      int32_t t = 0;
      for (int64_t i = 0, ih = r.begin; i < r.count; ++i, ih += r.step) {
        for (int64_t j = 0, iw = c.begin; j < c.count; ++j, iw += c.step, ++t) {
          const scalar_t* __restrict px = xg.at(ih, iw);
          // Selects of 32-bit values (value and tap), which GCC vectorises across the lanes.
          for (int64_t l = 0; l < xg.lanes(); ++l) {
            const acc v = static_cast<acc>(px[l]);
            const bool takes = max_pool_takes(v, best[l]);
            best[l] = takes ? v : best[l];
            tap[l] = takes ? t : tap[l];
          }
        }
      }
      // Tap t's flat index: t = i * c.count + j is at (r.begin + i * r.step, c.begin + j * c.step).
      // Tap 0 is the origin when the window has taps; an empty window points at its origin.
      const int64_t origin = r.origin * in_w + c.origin;
      if constexpr (kInterleaved) {  // a table, rather than a division for every lane
        for (int64_t i = 0; i < r.count; ++i)
          for (int64_t j = 0; j < c.count; ++j) tap_offset[i * c.count + j] = i * r.step * in_w + j * c.step;
      }
      scalar_t* __restrict y_out = yg.at(oh, ow);
      int64_t* __restrict idx_out = ig.at(oh, ow);
      for (int64_t l = 0; l < xg.lanes(); ++l) {
        y_out[l] = static_cast<scalar_t>(best[l]);
        if constexpr (kInterleaved) {
          idx_out[l] = origin + tap_offset[tap[l]];
        } else {
          const int64_t columns = std::max<int64_t>(c.count, 1);
          idx_out[l] = origin + tap[l] / columns * r.step * in_w + tap[l] % columns * c.step;
        }
      }
    }
  });
}

// Average and adaptive average pooling: each lane's sum over the window, in row-major tap
// order, divided by the window's divisor (divisors[oh * out_w + ow]).
template <typename scalar_t, bool kInterleaved>
void avg_pool_forward(const at::Tensor& input, at::Tensor& out, const std::vector<Span>& rows,
                      const std::vector<Span>& cols, const std::vector<int64_t>& divisors) {
  using acc = acc_t<scalar_t>;
  const auto x = grid_reader<scalar_t, kInterleaved>(input);
  const auto y = grid_writer<scalar_t, kInterleaved>(out);
  const int64_t out_w = out.size(3);
  for_each_row(group_count<kInterleaved>(input.size(0), input.size(1)), out.size(2),
               out_w * longest(rows) * longest(cols) * x.lanes(), [&](int64_t g, int64_t oh) {
    const auto xg = x.group(g);
    const auto yg = y.group(g);
    const Span r = rows[oh];
    LaneValues<acc, kInterleaved> sums(xg.lanes());
    acc* __restrict s = sums.data();
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const Span c = cols[ow];
      for (int64_t l = 0; l < xg.lanes(); ++l) s[l] = 0;
      for (int64_t i = 0, ih = r.begin; i < r.count; ++i, ih += r.step) {
        for (int64_t j = 0, iw = c.begin; j < c.count; ++j, iw += c.step) {
          const scalar_t* __restrict px = xg.at(ih, iw);
          for (int64_t l = 0; l < xg.lanes(); ++l) s[l] += static_cast<acc>(px[l]);
        }
      }
      const acc divisor = static_cast<acc>(divisors[oh * out_w + ow]);
      scalar_t* __restrict dst = yg.at(oh, ow);
      for (int64_t l = 0; l < xg.lanes(); ++l) dst[l] = static_cast<scalar_t>(s[l] / divisor);
    }
  });
}

// ---- backward: gathers over the covering windows ---------------------------------------------

// dx(ih, iw) = the sum, over the windows (oh, ow) covering it in increasing order, of their
// terms for it. window_terms(g) gives group g's adder: add(oh, ow, self, sum) adds window
// (oh, ow)'s terms for the pixel at flat index self = ih * W + iw to its lane sums.
template <typename scalar_t, bool kInterleaved, class WindowTerms>
void gather_windows(at::Tensor& grad_input, const Covers& rows, const Covers& cols, const WindowTerms& window_terms) {
  using acc = acc_t<scalar_t>;
  const auto dx = grid_writer<scalar_t, kInterleaved>(grad_input);
  const int64_t in_w = grad_input.size(3);
  for_each_row(group_count<kInterleaved>(grad_input.size(0), grad_input.size(1)), grad_input.size(2),
               in_w * rows.most() * cols.most() * dx.lanes(), [&](int64_t g, int64_t ih) {
    const auto dxg = dx.group(g);
    const auto add = window_terms(g);
    LaneValues<acc, kInterleaved> sums(dxg.lanes());
    acc* __restrict sum = sums.data();
    for (int64_t iw = 0; iw < in_w; ++iw) {
      for (int64_t l = 0; l < dxg.lanes(); ++l) sum[l] = 0;
      for (const int64_t* oh = rows.first(ih); oh != rows.last(ih); ++oh)
        for (const int64_t* ow = cols.first(iw); ow != cols.last(iw); ++ow) add(*oh, *ow, ih * in_w + iw, sum);
      scalar_t* __restrict dst = dxg.at(ih, iw);
      for (int64_t l = 0; l < dxg.lanes(); ++l) dst[l] = static_cast<scalar_t>(sum[l]);
    }
  });
}

// Whether flat index i is one of the taps of the window with spans r (rows) and c (columns):
// the row that puts i's column inside c is i's row, as c lies within [0, in_w).
bool window_holds(const Span& r, const Span& c, int64_t in_w, int64_t i) {
  // i's row: a double division is exact for |i| < 2^53 and, unlike a loop over the window's rows,
  // has no data-dependent branch.
  const int64_t ih = static_cast<int64_t>(static_cast<double>(i) / static_cast<double>(in_w));
  const int64_t dh = ih - r.begin, dw = i - ih * in_w - c.begin;
  return dh >= 0 && dh < r.count * r.step && (r.step == 1 || dh % r.step == 0) && dw >= 0 &&
         dw < c.count * c.step && (c.step == 1 || dw % c.step == 0);
}

// Channels per task of the max pooling backward's interleaved walk.
constexpr int64_t kLaneBlock = 64;

// Max and adaptive max pooling, the "upsample": each window hands its gradient to the pixel its
// index names, if that pixel is one of its taps (as the GPU backends' gathers read it). One task
// owns a group's lanes [l0, l1) and visits the windows in row-major order, so every input sums
// its windows' gradients in the order of a gather over them (deterministic, no atomics), at one
// index read per output instead of one per covering window for each input.
template <typename scalar_t, bool kInterleaved>
void max_pool_backward(const at::Tensor& grad_output, const at::Tensor& indices, at::Tensor& grad_input,
                       const std::vector<Span>& rows, const std::vector<Span>& cols) {
  using acc = acc_t<scalar_t>;
  const auto dy = grid_reader<scalar_t, kInterleaved>(grad_output);
  const auto idx = grid_reader<int64_t, kInterleaved>(indices);
  const auto dx = grid_writer<scalar_t, kInterleaved>(grad_input);
  const int64_t in_h = grad_input.size(2), in_w = grad_input.size(3);
  const int64_t out_h = grad_output.size(2), out_w = grad_output.size(3);
  const int64_t lanes = dx.lanes(), block = std::min(lanes, kLaneBlock), blocks = ceil_div(lanes, block);
  const int64_t groups = group_count<kInterleaved>(grad_input.size(0), grad_input.size(1));
  // grad_input is ours, dense: pixel i = ih * W + iw of a group starts at i * stride_w.
  TORCH_INTERNAL_ASSERT(grad_input.stride(2) == in_w * grad_input.stride(3));
  at::parallel_for(0, groups * blocks, grain_for((in_h * in_w + out_h * out_w) * block), [&](int64_t begin, int64_t end) {
    std::vector<acc> sums(static_cast<size_t>(in_h * in_w * block));  // pixel-major, `block` lanes each
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / blocks, l0 = task % blocks * block;
      const int64_t len = kInterleaved ? std::min(block, lanes - l0) : 1;
      const auto dyg = dy.group(g);
      const auto ig = idx.group(g);
      std::fill(sums.begin(), sums.end(), acc(0));
      for (int64_t oh = 0; oh < out_h; ++oh) {
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const scalar_t* d = dyg.at(oh, ow) + l0;
          const int64_t* chosen = ig.at(oh, ow) + l0;
          for (int64_t l = 0; l < len; ++l) {
            if (window_holds(rows[oh], cols[ow], in_w, chosen[l])) sums[chosen[l] * block + l] += static_cast<acc>(d[l]);
          }
        }
      }
      scalar_t* __restrict dst = dx.group(g).base + l0;
      const acc* __restrict src = sums.data();
      const int64_t pixel_stride = grad_input.stride(3);
      for (int64_t i = 0; i < in_h * in_w; ++i)
        for (int64_t l = 0; l < len; ++l) dst[i * pixel_stride + l] = static_cast<scalar_t>(src[i * block + l]);
    }
  });
}

// Average and adaptive average pooling: a window spreads gradient / divisor over its taps.
template <typename scalar_t, bool kInterleaved>
void avg_pool_backward(const at::Tensor& grad_output, at::Tensor& grad_input, const Covers& rows,
                       const Covers& cols, const std::vector<int64_t>& divisors) {
  using acc = acc_t<scalar_t>;
  const auto dy = grid_reader<scalar_t, kInterleaved>(grad_output);
  const int64_t out_w = grad_output.size(3);
  const int64_t* divisor = divisors.data();
  gather_windows<scalar_t, kInterleaved>(grad_input, rows, cols, [&](int64_t g) {
    const auto dyg = dy.group(g);
    return [=](int64_t oh, int64_t ow, int64_t, acc* __restrict sum) {
      const scalar_t* __restrict d = dyg.at(oh, ow);
      const acc div = static_cast<acc>(divisor[oh * out_w + ow]);
      for (int64_t l = 0; l < dyg.lanes(); ++l) sum[l] += static_cast<acc>(d[l]) / div;
    };
  });
}

// ---- max unpooling ---------------------------------------------------------------------------

// Each input element goes to the output position its index names; the rest of the output is 0.
// A group's scatter stays in one task, so repeated indices keep the last element, every time.
template <typename scalar_t, bool kInterleaved>
void max_unpool_forward(const at::Tensor& input, const at::Tensor& indices, at::Tensor& out) {
  const auto x = grid_reader<scalar_t, kInterleaved>(input);
  const auto idx = grid_reader<int64_t, kInterleaved>(indices);
  const auto y = grid_writer<scalar_t, kInterleaved>(out);
  const int64_t H = input.size(2), W = input.size(3), OH = out.size(2), OW = out.size(3);
  const int64_t groups = group_count<kInterleaved>(input.size(0), input.size(1));
  const int64_t cost = (H * W + OH * OW) * x.lanes();
  at::parallel_for(0, groups, grain_for(cost), [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const auto xg = x.group(g);
      const auto ig = idx.group(g);
      const auto yg = y.group(g);
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) std::fill_n(yg.at(oh, ow), yg.lanes(), scalar_t(0));
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) {
          const scalar_t* px = xg.at(h, w);
          const int64_t* at = ig.at(h, w);
          for (int64_t l = 0; l < xg.lanes(); ++l) {
            const int64_t i = at[l];
            TORCH_CHECK(i >= 0 && i < OH * OW, "max_unpool2d: found an invalid max index ", i,
                        " (output planes are of size ", OH, "x", OW, ")");
            yg.at(i / OW, i % OW)[l] = px[l];
          }
        }
    }
  });
}

// The gradient of unpooling: each input element reads the output gradient at its index (0 for
// an index outside the plane).
template <typename scalar_t, bool kInterleaved>
void max_unpool_backward(const at::Tensor& grad_output, const at::Tensor& indices, at::Tensor& grad_input) {
  const auto dy = grid_reader<scalar_t, kInterleaved>(grad_output);
  const auto idx = grid_reader<int64_t, kInterleaved>(indices);
  const auto dx = grid_writer<scalar_t, kInterleaved>(grad_input);
  const int64_t W = indices.size(3), OW = grad_output.size(3), plane = grad_output.size(2) * OW;
  for_each_row(group_count<kInterleaved>(indices.size(0), indices.size(1)), indices.size(2), W * dx.lanes(),
               [&](int64_t g, int64_t h) {
    const auto dyg = dy.group(g);
    const auto ig = idx.group(g);
    const auto dxg = dx.group(g);
    for (int64_t w = 0; w < W; ++w) {
      const int64_t* at = ig.at(h, w);
      scalar_t* dst = dxg.at(h, w);
      for (int64_t l = 0; l < dxg.lanes(); ++l) {
        const int64_t i = at[l];
        dst[l] = (i >= 0 && i < plane) ? dyg.at(i / OW, i % OW)[l] : scalar_t(0);
      }
    }
  });
}

// ---- operator entry points -----------------------------------------------------------------

#define CNNK_DISPATCH_POOL(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode) {
  const char* op = "cnnkernels::max_pool2d";
  check_cpu_dtype(op, input, kIntegerTypes);
  const Pool2dParams p = make_pool2d_params(op, input, kernel_size, stride, padding, dilation, ceil_mode);
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  at::Tensor indices = new_pool_output(input, p, at::kLong);
  if (out.numel() == 0) return {out, indices};
  const auto rows = sliding_spans(p.out_h, p.in_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  const auto cols = sliding_spans(p.out_w, p.in_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_cpu", [&] {
    with_walk(channels_interleaved({&input, &out, &indices}), [&](auto interleaved) {
      max_pool_forward<scalar_t, decltype(interleaved)::value>(input, out, indices, rows, cols);
    });
  });
  return {out, indices};
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices, at::IntArrayRef input_size,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
  const char* op = "cnnkernels::max_pool2d_backward";
  check_cpu_dtype(op, grad_output);
  const Pool2dParams p = make_pool2d_backward_params(op, grad_output, input_size, kernel_size, stride, padding, dilation);
  check_pool_indices(op, indices, grad_output);
  at::Tensor dx = new_buffer(input_size, grad_output.options(), grad_output.suggest_memory_format());
  if (dx.numel() == 0) return dx;
  const auto rows = sliding_spans(p.out_h, p.in_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  const auto cols = sliding_spans(p.out_w, p.in_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "max_pool2d_backward_cpu", [&] {
    with_walk(channels_interleaved({&grad_output, &indices, &dx}), [&](auto interleaved) {
      max_pool_backward<scalar_t, decltype(interleaved)::value>(grad_output, indices, dx, rows, cols);
    });
  });
  return dx;
}

at::Tensor avg_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      c10::optional<int64_t> divisor_override) {
  const char* op = "cnnkernels::avg_pool2d";
  check_cpu_dtype(op, input, kInt64Type);  // its quotient then truncates, as torch's
  const int64_t one[2] = {1, 1};
  const Pool2dParams p = make_pool2d_params(op, input, kernel_size, stride, padding, one, ceil_mode);
  const int64_t divisor = check_divisor_override(op, divisor_override);
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  if (out.numel() == 0) return out;
  const auto rows = sliding_spans(p.out_h, p.in_h, p.kernel_h, p.stride_h, p.pad_h, 1);
  const auto cols = sliding_spans(p.out_w, p.in_w, p.kernel_w, p.stride_w, p.pad_w, 1);
  const auto divisors = avg_pool_divisors(p, count_include_pad, divisor);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kLong, input.scalar_type(), "avg_pool2d_cpu", [&] {
    with_walk(channels_interleaved({&input, &out}), [&](auto interleaved) {
      avg_pool_forward<scalar_t, decltype(interleaved)::value>(input, out, rows, cols, divisors);
    });
  });
  return out;
}

at::Tensor avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool count_include_pad,
                               c10::optional<int64_t> divisor_override) {
  const char* op = "cnnkernels::avg_pool2d_backward";
  check_cpu_dtype(op, grad_output);
  const int64_t one[2] = {1, 1};
  const Pool2dParams p = make_pool2d_backward_params(op, grad_output, input_size, kernel_size, stride, padding, one);
  const int64_t divisor = check_divisor_override(op, divisor_override);
  at::Tensor dx = new_buffer(input_size, grad_output.options(), grad_output.suggest_memory_format());
  if (dx.numel() == 0) return dx;
  const Covers rows = sliding_covers(p.in_h, p.out_h, p.kernel_h, p.stride_h, p.pad_h, 1);
  const Covers cols = sliding_covers(p.in_w, p.out_w, p.kernel_w, p.stride_w, p.pad_w, 1);
  const auto divisors = avg_pool_divisors(p, count_include_pad, divisor);
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "avg_pool2d_backward_cpu", [&] {
    with_walk(channels_interleaved({&grad_output, &dx}), [&](auto interleaved) {
      avg_pool_backward<scalar_t, decltype(interleaved)::value>(grad_output, dx, rows, cols, divisors);
    });
  });
  return dx;
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::adaptive_avg_pool2d";
  check_cpu_dtype(op, input);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input.sizes(), output_size);
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  if (out.numel() == 0) return out;
  const auto rows = adaptive_spans(p.out_h, p.in_h), cols = adaptive_spans(p.out_w, p.in_w);
  CNNK_DISPATCH_POOL(input.scalar_type(), "adaptive_avg_pool2d_cpu", [&] {
    with_walk(channels_interleaved({&input, &out}), [&](auto interleaved) {
      avg_pool_forward<scalar_t, decltype(interleaved)::value>(input, out, rows, cols, window_sizes(rows, cols));
    });
  });
  return out;
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  const char* op = "cnnkernels::adaptive_avg_pool2d_backward";
  check_cpu_dtype(op, grad_output);
  check_grad_output_planes(op, grad_output, input_size);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input_size, grad_output.sizes().slice(2));
  at::Tensor dx = new_buffer(input_size, grad_output.options(), grad_output.suggest_memory_format());
  if (dx.numel() == 0) return dx;
  const auto divisors = window_sizes(adaptive_spans(p.out_h, p.in_h), adaptive_spans(p.out_w, p.in_w));
  const Covers rows = adaptive_covers(p.in_h, p.out_h), cols = adaptive_covers(p.in_w, p.out_w);
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "adaptive_avg_pool2d_backward_cpu", [&] {
    with_walk(channels_interleaved({&grad_output, &dx}), [&](auto interleaved) {
      avg_pool_backward<scalar_t, decltype(interleaved)::value>(grad_output, dx, rows, cols, divisors);
    });
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::adaptive_max_pool2d";
  check_cpu_dtype(op, input);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input.sizes(), output_size);
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  at::Tensor indices = new_pool_output(input, p, at::kLong);
  if (out.numel() == 0) return {out, indices};
  const auto rows = adaptive_spans(p.out_h, p.in_h), cols = adaptive_spans(p.out_w, p.in_w);
  CNNK_DISPATCH_POOL(input.scalar_type(), "adaptive_max_pool2d_cpu", [&] {
    with_walk(channels_interleaved({&input, &out, &indices}), [&](auto interleaved) {
      max_pool_forward<scalar_t, decltype(interleaved)::value>(input, out, indices, rows, cols);
    });
  });
  return {out, indices};
}

at::Tensor adaptive_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                        at::IntArrayRef input_size) {
  const char* op = "cnnkernels::adaptive_max_pool2d_backward";
  check_cpu_dtype(op, grad_output);
  check_grad_output_planes(op, grad_output, input_size);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input_size, grad_output.sizes().slice(2));
  check_pool_indices(op, indices, grad_output);
  at::Tensor dx = new_buffer(input_size, grad_output.options(), grad_output.suggest_memory_format());
  if (dx.numel() == 0) return dx;
  const auto rows = adaptive_spans(p.out_h, p.in_h), cols = adaptive_spans(p.out_w, p.in_w);
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "adaptive_max_pool2d_backward_cpu", [&] {
    with_walk(channels_interleaved({&grad_output, &indices, &dx}), [&](auto interleaved) {
      max_pool_backward<scalar_t, decltype(interleaved)::value>(grad_output, indices, dx, rows, cols);
    });
  });
  return dx;
}

at::Tensor max_unpool2d(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::max_unpool2d";
  check_cpu_dtype(op, input);
  check_unpool_args(op, input, indices, output_size);
  at::Tensor out = new_buffer({input.size(0), input.size(1), output_size[0], output_size[1]}, input.options(),
                              input.suggest_memory_format());
  if (out.numel() == 0) return out;
  CNNK_DISPATCH_POOL(input.scalar_type(), "max_unpool2d_cpu", [&] {
    with_walk(channels_interleaved({&input, &indices, &out}), [&](auto interleaved) {
      max_unpool_forward<scalar_t, decltype(interleaved)::value>(input, indices, out);
    });
  });
  return out;
}

at::Tensor max_unpool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices) {
  const char* op = "cnnkernels::max_unpool2d_backward";
  check_cpu_dtype(op, grad_output);
  check_unpool_backward_args(op, grad_output, indices);
  at::Tensor dx = new_buffer(indices.sizes(), grad_output.options(), indices.suggest_memory_format());
  if (dx.numel() == 0) return dx;
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "max_unpool2d_backward_cpu", [&] {
    with_walk(channels_interleaved({&grad_output, &indices, &dx}), [&](auto interleaved) {
      max_unpool_backward<scalar_t, decltype(interleaved)::value>(grad_output, indices, dx);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkernels, CPU, m) {
  m.impl("max_pool2d", &max_pool2d);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
  m.impl("avg_pool2d", &avg_pool2d);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward);
  m.impl("adaptive_max_pool2d", &adaptive_max_pool2d);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward);
  m.impl("max_unpool2d", &max_unpool2d);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward);
}

}  // namespace cnnkernels
