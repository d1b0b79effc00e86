// Pooling on the CPU: max, average and adaptive pooling with their backward gathers, and max
// unpooling. Each (n, c) plane is independent: the kernels run parallel over planes and read
// and write through the tensors' strides, so NCHW and channels_last need no copies.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "cnnkernels/conv.h"
#include "cnnkernels/pool.h"
#include "host/alloc.h"
#include "host/dtypes.h"
#include "host/pool.h"

namespace cnnkernels {
namespace {

// A 4-D tensor's data seen through its strides.
template <typename T>
struct Strided4 {
  T* data;
  int64_t s[4];
  Strided4(const at::Tensor& t, T* ptr) : data(ptr) {
    for (int d = 0; d < 4; ++d) s[d] = t.stride(d);
  }
  T& operator()(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return data[n * s[0] + c * s[1] + h * s[2] + w * s[3]];
  }
};

template <typename T>
Strided4<const T> reader(const at::Tensor& t) {
  return Strided4<const T>(t, t.const_data_ptr<T>());
}
template <typename T>
Strided4<T> writer(at::Tensor& t) {
  return Strided4<T>(t, t.mutable_data_ptr<T>());
}

// Runs fn(n, c) for every plane, in parallel.
template <class Fn>
void for_each_plane(int64_t batch, int64_t channels, int64_t plane_cost, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_cost));
  at::parallel_for(0, batch * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i / channels, i % channels);
  });
}

// A window's starting maximum: -inf (torch's rule), or the lowest value of an integer type; a
// window whose taps all equal it keeps its first tap.
template <typename acc>
constexpr acc max_pool_start() {
  return std::numeric_limits<acc>::has_infinity ? -std::numeric_limits<acc>::infinity()
                                                : std::numeric_limits<acc>::lowest();
}

// For every input coordinate along one axis, the output coordinates whose window reaches it
// (input i: out[begin[i] .. begin[i+1])), listed once per call, so that the backward gathers do
// no index arithmetic per element.
struct Covers {
  std::vector<int64_t> begin{0};
  std::vector<int64_t> out;

  void close_input() { begin.push_back(static_cast<int64_t>(out.size())); }
  const int64_t* first(int64_t i) const { return out.data() + begin[i]; }
  const int64_t* last(int64_t i) const { return out.data() + begin[i + 1]; }
};

// Pooling windows (kernel, stride, padding, dilation): those input i is a tap of, in
// increasing order (the same arithmetic as the convolution's input gradient, conv.h).
Covers window_covers(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
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

// Adaptive windows: the outputs o whose [adaptive_start, adaptive_end) holds i, in order.
Covers adaptive_covers(int64_t in, int64_t out) {
  Covers c;
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t o = adaptive_first_covering(i, out, in); o <= adaptive_last_covering(i, out, in); ++o)
      if (adaptive_start(o, out, in) <= i && i < adaptive_end(o, out, in)) c.out.push_back(o);
    c.close_input();
  }
  return c;
}

// ---- max pooling ---------------------------------------------------------------------------

// The window of output (oh, ow): its first in-bounds tap starts as the maximum at -inf (torch's
// rule), and every tap that max_pool_takes replaces it.
template <typename scalar_t>
void max_pool2d_cpu(const at::Tensor& input, at::Tensor& out, at::Tensor& indices, const Pool2dParams& p) {
  using acc = acc_t<scalar_t>;
  const auto x = reader<scalar_t>(input);
  const auto y = writer<scalar_t>(out);
  const auto idx = writer<int64_t>(indices);
  for_each_plane(p.batch, p.channels, p.out_h * p.out_w * p.kernel_h * p.kernel_w, [&](int64_t n, int64_t c) {
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        int64_t h0 = oh * p.stride_h - p.pad_h, w0 = ow * p.stride_w - p.pad_w;
        while (h0 < 0) h0 += p.dilation_h;
        while (w0 < 0) w0 += p.dilation_w;
        acc best = max_pool_start<acc>();
        int64_t best_index = h0 * p.in_w + w0;
        for (int64_t r = 0; r < p.kernel_h; ++r) {
          const int64_t ih = conv_in_coord(oh, r, p.stride_h, p.pad_h, p.dilation_h);
          if (ih < 0 || ih >= p.in_h) continue;
          for (int64_t s = 0; s < p.kernel_w; ++s) {
            const int64_t iw = conv_in_coord(ow, s, p.stride_w, p.pad_w, p.dilation_w);
            if (iw < 0 || iw >= p.in_w) continue;
            const acc v = static_cast<acc>(x(n, c, ih, iw));
            if (max_pool_takes(v, best)) {
              best = v;
              best_index = ih * p.in_w + iw;
            }
          }
        }
        y(n, c, oh, ow) = static_cast<scalar_t>(best);
        idx(n, c, oh, ow) = best_index;
      }
    }
  });
}

// Gather: input (ih, iw) is a tap of the windows window_covers lists (the same phase
// arithmetic as the convolution's input gradient); it collects the gradient of those that
// chose it, in increasing window order, the order torch's gather sums them in.
template <typename scalar_t>
void max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices, at::Tensor& grad_input,
                             const Pool2dParams& p) {
  using acc = acc_t<scalar_t>;
  const auto dy = reader<scalar_t>(grad_output);
  const auto idx = reader<int64_t>(indices);
  const auto dx = writer<scalar_t>(grad_input);
  const Covers rows = window_covers(p.in_h, p.out_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  const Covers cols = window_covers(p.in_w, p.out_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
  for_each_plane(p.batch, p.channels, p.in_h * p.in_w * p.kernel_h * p.kernel_w, [&](int64_t n, int64_t c) {
    for (int64_t ih = 0; ih < p.in_h; ++ih) {
      for (int64_t iw = 0; iw < p.in_w; ++iw) {
        const int64_t self = ih * p.in_w + iw;
        acc sum = 0;
        for (const int64_t* oh = rows.first(ih); oh != rows.last(ih); ++oh)
          for (const int64_t* ow = cols.first(iw); ow != cols.last(iw); ++ow)
            if (idx(n, c, *oh, *ow) == self) sum += static_cast<acc>(dy(n, c, *oh, *ow));
        dx(n, c, ih, iw) = static_cast<scalar_t>(sum);
      }
    }
  });
}

// ---- average pooling -----------------------------------------------------------------------

template <typename scalar_t>
void avg_pool2d_cpu(const at::Tensor& input, at::Tensor& out, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override) {
  using acc = acc_t<scalar_t>;
  const auto x = reader<scalar_t>(input);
  const auto y = writer<scalar_t>(out);
  for_each_plane(p.batch, p.channels, p.out_h * p.out_w * p.kernel_h * p.kernel_w, [&](int64_t n, int64_t c) {
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      const int64_t h0 = std::max<int64_t>(oh * p.stride_h - p.pad_h, 0);
      const int64_t h1 = std::min(oh * p.stride_h - p.pad_h + p.kernel_h, p.in_h);
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        const int64_t w0 = std::max<int64_t>(ow * p.stride_w - p.pad_w, 0);
        const int64_t w1 = std::min(ow * p.stride_w - p.pad_w + p.kernel_w, p.in_w);
        acc sum = 0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) sum += static_cast<acc>(x(n, c, ih, iw));
        const int64_t divisor = avg_pool_divisor(p, oh, ow, count_include_pad, divisor_override);
        y(n, c, oh, ow) = static_cast<scalar_t>(sum / static_cast<acc>(divisor));
      }
    }
  });
}

// Gather: input (ih, iw) collects grad/divisor from every window that covers it.
template <typename scalar_t>
void avg_pool2d_backward_cpu(const at::Tensor& grad_output, at::Tensor& grad_input, const Pool2dParams& p,
                             bool count_include_pad, int64_t divisor_override) {
  using acc = acc_t<scalar_t>;
  const auto dy = reader<scalar_t>(grad_output);
  const auto dx = writer<scalar_t>(grad_input);
  for_each_plane(p.batch, p.channels, p.in_h * p.in_w * p.kernel_h * p.kernel_w, [&](int64_t n, int64_t c) {
    for (int64_t ih = 0; ih < p.in_h; ++ih) {
      const int64_t oh0 = window_first_covering(ih, p.kernel_h, p.pad_h, p.stride_h);
      const int64_t oh1 = window_last_covering(ih, p.pad_h, p.stride_h, p.out_h);
      for (int64_t iw = 0; iw < p.in_w; ++iw) {
        const int64_t ow0 = window_first_covering(iw, p.kernel_w, p.pad_w, p.stride_w);
        const int64_t ow1 = window_last_covering(iw, p.pad_w, p.stride_w, p.out_w);
        acc sum = 0;
        for (int64_t oh = oh0; oh <= oh1; ++oh)
          for (int64_t ow = ow0; ow <= ow1; ++ow)
            sum += static_cast<acc>(dy(n, c, oh, ow)) /
                   static_cast<acc>(avg_pool_divisor(p, oh, ow, count_include_pad, divisor_override));
        dx(n, c, ih, iw) = static_cast<scalar_t>(sum);
      }
    }
  });
}

// ---- adaptive pooling ----------------------------------------------------------------------

template <typename scalar_t, bool kMax>
void adaptive_pool2d_cpu(const at::Tensor& input, at::Tensor& out, at::Tensor* indices, const Pool2dParams& p) {
  using acc = acc_t<scalar_t>;
  const auto x = reader<scalar_t>(input);
  const auto y = writer<scalar_t>(out);
  for_each_plane(p.batch, p.channels, p.in_h * p.in_w, [&](int64_t n, int64_t c) {
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      const int64_t h0 = adaptive_start(oh, p.out_h, p.in_h), h1 = adaptive_end(oh, p.out_h, p.in_h);
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        const int64_t w0 = adaptive_start(ow, p.out_w, p.in_w), w1 = adaptive_end(ow, p.out_w, p.in_w);
        if constexpr (kMax) {
          acc best = max_pool_start<acc>();
          int64_t best_index = h0 * p.in_w + w0;
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) {
              const acc v = static_cast<acc>(x(n, c, ih, iw));
              if (max_pool_takes(v, best)) {
                best = v;
                best_index = ih * p.in_w + iw;
              }
            }
          y(n, c, oh, ow) = static_cast<scalar_t>(best);
          writer<int64_t>(*indices)(n, c, oh, ow) = best_index;
        } else {
          acc sum = 0;
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) sum += static_cast<acc>(x(n, c, ih, iw));
          y(n, c, oh, ow) = static_cast<scalar_t>(sum / static_cast<acc>((h1 - h0) * (w1 - w0)));
        }
      }
    }
  });
}

// Gather over the adaptive windows containing each input element (max: only where chosen).
template <typename scalar_t, bool kMax>
void adaptive_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor* indices, at::Tensor& grad_input,
                                  const Pool2dParams& p) {
  using acc = acc_t<scalar_t>;
  const auto dy = reader<scalar_t>(grad_output);
  const auto dx = writer<scalar_t>(grad_input);
  const Covers rows = adaptive_covers(p.in_h, p.out_h), cols = adaptive_covers(p.in_w, p.out_w);
  std::optional<Strided4<const int64_t>> idx;  // max: where each window's maximum is
  if constexpr (kMax) idx.emplace(reader<int64_t>(*indices));
  // Window extents, for the average's divisor.
  std::vector<int64_t> height(p.out_h), width(p.out_w);
  for (int64_t o = 0; o < p.out_h; ++o) height[o] = adaptive_end(o, p.out_h, p.in_h) - adaptive_start(o, p.out_h, p.in_h);
  for (int64_t o = 0; o < p.out_w; ++o) width[o] = adaptive_end(o, p.out_w, p.in_w) - adaptive_start(o, p.out_w, p.in_w);
  for_each_plane(p.batch, p.channels, p.in_h * p.in_w * 4, [&](int64_t n, int64_t c) {
    for (int64_t ih = 0; ih < p.in_h; ++ih) {
      for (int64_t iw = 0; iw < p.in_w; ++iw) {
        acc sum = 0;
        for (const int64_t* oh = rows.first(ih); oh != rows.last(ih); ++oh)
          for (const int64_t* ow = cols.first(iw); ow != cols.last(iw); ++ow) {
            if constexpr (kMax) {
              if ((*idx)(n, c, *oh, *ow) == ih * p.in_w + iw)
                sum += static_cast<acc>(dy(n, c, *oh, *ow));
            } else {
              sum += static_cast<acc>(dy(n, c, *oh, *ow)) / static_cast<acc>(height[*oh] * width[*ow]);
            }
          }
        dx(n, c, ih, iw) = static_cast<scalar_t>(sum);
      }
    }
  });
}

// ---- max unpooling -------------------------------------------------------------------------

template <typename scalar_t>
void max_unpool2d_cpu(const at::Tensor& input, const at::Tensor& indices, at::Tensor& out) {
  const auto x = reader<scalar_t>(input);
  const auto idx = reader<int64_t>(indices);
  const auto y = writer<scalar_t>(out);
  const int64_t H = input.size(2), W = input.size(3), OW = out.size(3), plane = out.size(2) * out.size(3);
  for_each_plane(input.size(0), input.size(1), H * W, [&](int64_t n, int64_t c) {
    for (int64_t oh = 0; oh < out.size(2); ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) y(n, c, oh, ow) = scalar_t(0);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const int64_t i = idx(n, c, h, w);
        TORCH_CHECK(i >= 0 && i < plane, "max_unpool2d: found an invalid max index ", i,
                    " (output planes are of size ", out.size(2), "x", OW, ")");
        y(n, c, i / OW, i % OW) = x(n, c, h, w);
      }
  });
}

template <typename scalar_t>
void max_unpool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices, at::Tensor& grad_input) {
  const auto dy = reader<scalar_t>(grad_output);
  const auto idx = reader<int64_t>(indices);
  const auto dx = writer<scalar_t>(grad_input);
  const int64_t OW = grad_output.size(3), plane = grad_output.size(2) * OW;
  for_each_plane(indices.size(0), indices.size(1), indices.size(2) * indices.size(3), [&](int64_t n, int64_t c) {
    for (int64_t h = 0; h < indices.size(2); ++h)
      for (int64_t w = 0; w < indices.size(3); ++w) {
        const int64_t i = idx(n, c, h, w);
        dx(n, c, h, w) = (i >= 0 && i < plane) ? dy(n, c, i / OW, i % OW) : scalar_t(0);
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
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_cpu",
                             [&] { max_pool2d_cpu<scalar_t>(input, out, indices, p); });
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
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "max_pool2d_backward_cpu",
                     [&] { max_pool2d_backward_cpu<scalar_t>(grad_output, indices, dx, p); });
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
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kLong, input.scalar_type(), "avg_pool2d_cpu",
                                  [&] { avg_pool2d_cpu<scalar_t>(input, out, p, count_include_pad, divisor); });
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
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "avg_pool2d_backward_cpu",
                     [&] { avg_pool2d_backward_cpu<scalar_t>(grad_output, dx, p, count_include_pad, divisor); });
  return dx;
}

at::Tensor adaptive_avg_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::adaptive_avg_pool2d";
  check_cpu_dtype(op, input);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input.sizes(), output_size);
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  if (out.numel() == 0) return out;
  CNNK_DISPATCH_POOL(input.scalar_type(), "adaptive_avg_pool2d_cpu",
                     [&] { adaptive_pool2d_cpu<scalar_t, false>(input, out, nullptr, p); });
  return out;
}

at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& grad_output, at::IntArrayRef input_size) {
  const char* op = "cnnkernels::adaptive_avg_pool2d_backward";
  check_cpu_dtype(op, grad_output);
  check_grad_output_planes(op, grad_output, input_size);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input_size, grad_output.sizes().slice(2));
  at::Tensor dx = new_buffer(input_size, grad_output.options(), grad_output.suggest_memory_format());
  if (dx.numel() == 0) return dx;
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "adaptive_avg_pool2d_backward_cpu",
                     [&] { adaptive_pool2d_backward_cpu<scalar_t, false>(grad_output, nullptr, dx, p); });
  return dx;
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d(const at::Tensor& input, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::adaptive_max_pool2d";
  check_cpu_dtype(op, input);
  const Pool2dParams p = make_adaptive_pool2d_params(op, input.sizes(), output_size);
  at::Tensor out = new_pool_output(input, p, input.scalar_type());
  at::Tensor indices = new_pool_output(input, p, at::kLong);
  if (out.numel() == 0) return {out, indices};
  CNNK_DISPATCH_POOL(input.scalar_type(), "adaptive_max_pool2d_cpu",
                     [&] { adaptive_pool2d_cpu<scalar_t, true>(input, out, &indices, p); });
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
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "adaptive_max_pool2d_backward_cpu",
                     [&] { adaptive_pool2d_backward_cpu<scalar_t, true>(grad_output, &indices, dx, p); });
  return dx;
}

at::Tensor max_unpool2d(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size) {
  const char* op = "cnnkernels::max_unpool2d";
  check_cpu_dtype(op, input);
  check_unpool_args(op, input, indices, output_size);
  at::Tensor out = new_buffer({input.size(0), input.size(1), output_size[0], output_size[1]}, input.options(),
                              input.suggest_memory_format());
  if (out.numel() == 0) return out;
  CNNK_DISPATCH_POOL(input.scalar_type(), "max_unpool2d_cpu", [&] { max_unpool2d_cpu<scalar_t>(input, indices, out); });
  return out;
}

at::Tensor max_unpool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices) {
  const char* op = "cnnkernels::max_unpool2d_backward";
  check_cpu_dtype(op, grad_output);
  check_unpool_backward_args(op, grad_output, indices);
  at::Tensor dx = new_buffer(indices.sizes(), grad_output.options(), indices.suggest_memory_format());
  if (dx.numel() == 0) return dx;
  CNNK_DISPATCH_POOL(grad_output.scalar_type(), "max_unpool2d_backward_cpu",
                     [&] { max_unpool2d_backward_cpu<scalar_t>(grad_output, indices, dx); });
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
