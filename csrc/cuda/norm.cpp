// Normalisation on CUDA, host side: argument checks (host/norm.h, shared with the CPU backend),
// layouts, allocation, device guard, current stream; the kernels are in norm_kernel.cu.
//
// The kernels read dense (N, C, L) tensors, NCHW-contiguous or channels_last (norm_layout copies
// anything else into the nearer of the two), and acc_t parameter vectors (norm_param). Partial
// results of the reductions go to a workspace whose size the kernel side computes from the
// shape. Empty tensors launch nothing; their statistics are written here (mean 0, rstd
// 1/sqrt(eps), parameter gradients 0).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "host/alloc.h"
#include "host/cuda.h"
#include "host/norm.h"
#include "norm_kernel.h"

namespace cnnkernels {
namespace {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* mutable_ptr_or_null(at::Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; }

at::Tensor workspace(int64_t elems, const at::Tensor& input) {
  return at::empty({std::max<int64_t>(elems, 1)}, input.options().dtype(norm_acc_dtype(input)));
}

// Copies the (N, C, L) view and layout of s into the kernel arguments (NormGeometry, LrnArgs).
template <typename Args>
void set_view(Args& a, const NormShape& s) {
  a.batch = s.batch;
  a.channels = s.channels;
  a.inner = s.inner;
  a.channels_last = s.channels_last;
}

NormGeometry geometry(const NormShape& s, int64_t groups) {
  NormGeometry g;
  set_view(g, s);
  g.groups = groups;
  return g;
}

// A saved statistic handed back to a backward operator: `count` acc_t values.
at::Tensor saved_stat(const char* op, const char* name, const at::Tensor& t, int64_t count, const at::Tensor& input) {
  return norm_param(op, name, std::optional<at::Tensor>(t), count, input);
}

at::Tensor empty_acc(const at::Tensor& input) { return new_acc_buffer({0}, input); }

// ---- batch norm and group norm: shared argument handling -------------------------------------

// norm_shape, and check_groups for group norm (num_groups given).
NormShape checked_norm_shape(const char* op, const at::Tensor& input, std::optional<int64_t> num_groups) {
  const NormShape s = norm_shape(op, input);
  if (num_groups.has_value()) check_norm_groups(op, s, *num_groups);
  return s;
}

// What every batch/group norm operator starts with, in this order: the checks of the shape,
// activation and dtype, the device guard, the input in a kernel layout, grad_output (backward
// operators: grad_output non-null) and the acc_t weight and bias (undefined when absent).
struct NormOperands {
  NormOperands(const char* op, const at::Tensor& input, const at::Tensor* grad_output,
               const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
               c10::string_view activation, std::optional<int64_t> num_groups)
      : s(checked_norm_shape(op, input, num_groups)),
        act(parse_activation(op, activation)),
        dtype(kernel_dtype(op, input)),
        guard(input.device()),
        x(norm_layout(input, s)),
        dy(grad_output != nullptr ? norm_operand(op, "grad_output", *grad_output, input, s) : at::Tensor()),
        w(norm_param(op, "weight", weight, s.channels, input)),
        b(norm_param(op, "bias", bias, s.channels, input)) {}

  const NormShape s;
  const Activation act;
  const DType dtype;
  const c10::cuda::CUDAGuard guard;
  const at::Tensor x, dy, w, b;
};

// The forward arguments batch norm and group norm (groups > 0) share; batch norm adds its own.
NormForwardArgs forward_args(const NormOperands& in, int64_t groups, at::Tensor& out, at::Tensor& save_mean,
                             at::Tensor& save_rstd, double eps) {
  NormForwardArgs a;
  a.g = geometry(in.s, groups);
  a.input = in.x.const_data_ptr();
  a.output = out.mutable_data_ptr();
  a.weight = ptr_or_null(in.w);
  a.bias = ptr_or_null(in.b);
  a.save_mean = save_mean.mutable_data_ptr();
  a.save_rstd = save_rstd.mutable_data_ptr();
  a.eps = eps;
  a.activation = in.act;
  return a;
}

// Launches the forward kernels, with a workspace when they compute batch statistics.
void launch_forward(const char* op, const NormOperands& in, NormForwardArgs a, const at::Tensor& input) {
  at::Tensor ws;
  if (a.g.groups != 0 || a.training) {
    ws = workspace(norm_forward_workspace(in.dtype, a.g), input);
    a.workspace = ws.mutable_data_ptr();
  }
  check_launch(op, launch_norm_forward(in.dtype, a, current_stream()));
}

// The backward arguments batch norm and group norm share; batch norm adds the residual.
NormBackwardArgs backward_args(const NormOperands& in, int64_t groups, const at::Tensor& mean,
                               const at::Tensor& rstd, at::Tensor& grad_input, at::Tensor& grad_w,
                               at::Tensor& grad_b) {
  NormBackwardArgs a;
  a.g = geometry(in.s, groups);
  a.grad_output = in.dy.const_data_ptr();
  a.input = in.x.const_data_ptr();
  a.weight = ptr_or_null(in.w);
  a.bias = ptr_or_null(in.b);
  a.save_mean = mean.const_data_ptr();
  a.save_rstd = rstd.const_data_ptr();
  a.grad_input = grad_input.mutable_data_ptr();
  a.grad_weight = grad_w.mutable_data_ptr();
  a.grad_bias = grad_b.mutable_data_ptr();
  a.activation = in.act;
  return a;
}

// grad_weight and grad_bias buffers (C acc_t values each); zeros for an input without elements.
std::pair<at::Tensor, at::Tensor> new_param_grads(const NormShape& s, const at::Tensor& input) {
  at::Tensor grad_w = new_acc_buffer({s.channels}, input);
  at::Tensor grad_b = new_acc_buffer({s.channels}, input);
  if (s.numel() == 0) {
    grad_w.zero_();
    grad_b.zero_();
  }
  return {grad_w, grad_b};
}

// Launches the backward kernels with their workspace.
void launch_backward(const char* op, const NormOperands& in, NormBackwardArgs a, const at::Tensor& input) {
  at::Tensor ws = workspace(norm_backward_workspace(in.dtype, a.g), input);
  a.workspace = ws.mutable_data_ptr();
  check_launch(op, launch_norm_backward(in.dtype, a, current_stream()));
}

// ---- batch norm ------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation) {
  const char* op = "cnnkernels::batch_norm";
  const NormOperands in(op, input, nullptr, weight, bias, activation, std::nullopt);
  const NormShape& s = in.s;
  const int64_t C = s.channels;
  const at::Tensor res = norm_optional_operand(op, "residual", residual, input, s);
  const at::Tensor rm = norm_param(op, "running_mean", running_mean, C, input);
  const at::Tensor rv = norm_param(op, "running_var", running_var, C, input);
  TORCH_CHECK(rm.defined() == rv.defined(), op, ": running_mean and running_var must be given together");
  TORCH_CHECK(training || rm.defined(), op, ": running_mean and running_var are required when training=False");
  const bool update = training && rm.defined();

  at::Tensor out = new_norm_output(input, s);
  at::Tensor save_mean = new_acc_buffer({C}, input);
  at::Tensor save_rstd = new_acc_buffer({C}, input);
  at::Tensor new_rm = update ? new_acc_buffer({C}, input) : at::Tensor();
  at::Tensor new_rv = update ? new_acc_buffer({C}, input) : at::Tensor();

  if (C > 0 && s.numel() == 0) {
    // No elements: the batch statistics of an empty set are mean 0, variance 0.
    if (training) {
      save_mean.zero_();
      save_rstd.fill_(1.0 / std::sqrt(eps));
      if (update) {
        // running + momentum * (batch - running) with batch mean 0 and unbiased variance
        // 0 * 0 / (0 - 1) = -0.
        new_rm.copy_(rm.add(rm.neg().mul(momentum)));
        new_rv.copy_(rv.add(rv.neg().mul(momentum)));
      }
    } else {
      save_mean.copy_(rm);
      save_rstd.copy_(rv.add(eps).sqrt().reciprocal());
    }
  } else if (s.numel() > 0) {
    NormForwardArgs a = forward_args(in, 0, out, save_mean, save_rstd, eps);
    a.residual = ptr_or_null(res);
    a.training = training;
    a.running_mean = ptr_or_null(rm);
    a.running_var = ptr_or_null(rv);
    a.new_running_mean = mutable_ptr_or_null(new_rm);
    a.new_running_var = mutable_ptr_or_null(new_rv);
    a.momentum = momentum;
    launch_forward(op, in, a, input);
  }
  at::Tensor out_rm = update ? as_param_dtype(new_rm, running_mean, input) : empty_acc(input);
  at::Tensor out_rv = update ? as_param_dtype(new_rv, running_var, input) : empty_acc(input);
  return {out, save_mean, save_rstd, out_rm, out_rv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual, const at::Tensor& save_mean,
    const at::Tensor& save_rstd, bool training, c10::string_view activation) {
  const char* op = "cnnkernels::batch_norm_backward";
  const NormOperands in(op, input, &grad_output, weight, bias, activation, std::nullopt);
  const NormShape& s = in.s;
  const int64_t C = s.channels;
  const at::Tensor res = norm_optional_operand(op, "residual", residual, input, s);
  const bool has_res = res.defined();
  const at::Tensor mean = saved_stat(op, "save_mean", save_mean, C, input);
  const at::Tensor rstd = saved_stat(op, "save_rstd", save_rstd, C, input);

  at::Tensor grad_input = new_norm_output(input, s);
  at::Tensor grad_res = has_res ? new_norm_output(input, s) : empty_acc(input);
  auto [grad_w, grad_b] = new_param_grads(s, input);
  if (s.numel() > 0) {
    NormBackwardArgs a = backward_args(in, 0, mean, rstd, grad_input, grad_w, grad_b);
    a.residual = ptr_or_null(res);
    a.grad_residual = has_res ? grad_res.mutable_data_ptr() : nullptr;
    a.training = training;
    launch_backward(op, in, a, input);
  }
  return {grad_input, as_param_dtype(grad_w, weight, input), as_param_dtype(grad_b, bias, input), grad_res};
}

// ---- group norm ------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_cuda(const at::Tensor& input,
                                                               const std::optional<at::Tensor>& weight,
                                                               const std::optional<at::Tensor>& bias,
                                                               int64_t num_groups, double eps,
                                                               c10::string_view activation) {
  const char* op = "cnnkernels::group_norm";
  const NormOperands in(op, input, nullptr, weight, bias, activation, num_groups);
  const NormShape& s = in.s;
  const int64_t N = s.batch, G = num_groups;

  at::Tensor out = new_norm_output(input, s);
  at::Tensor save_mean = new_acc_buffer({N, G}, input);
  at::Tensor save_rstd = new_acc_buffer({N, G}, input);
  if (s.numel() == 0) {
    if (N * G > 0) {  // groups without elements (L == 0)
      save_mean.zero_();
      save_rstd.fill_(1.0 / std::sqrt(eps));
    }
  } else {
    NormForwardArgs a = forward_args(in, G, out, save_mean, save_rstd, eps);
    a.training = true;
    launch_forward(op, in, a, input);
  }
  return {out, save_mean, save_rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& save_mean, const at::Tensor& save_rstd,
    int64_t num_groups, c10::string_view activation) {
  const char* op = "cnnkernels::group_norm_backward";
  const NormOperands in(op, input, &grad_output, weight, bias, activation, num_groups);
  const NormShape& s = in.s;
  const int64_t N = s.batch, G = num_groups;
  const at::Tensor mean = saved_stat(op, "save_mean", save_mean, N * G, input);
  const at::Tensor rstd = saved_stat(op, "save_rstd", save_rstd, N * G, input);

  at::Tensor grad_input = new_norm_output(input, s);
  auto [grad_w, grad_b] = new_param_grads(s, input);
  if (s.numel() > 0) {
    NormBackwardArgs a = backward_args(in, G, mean, rstd, grad_input, grad_w, grad_b);
    a.training = true;
    launch_backward(op, in, a, input);
  }
  return {grad_input, as_param_dtype(grad_w, weight, input), as_param_dtype(grad_b, bias, input)};
}

// ---- rms norm --------------------------------------------------------------------------------

// rows x dim of the trailing `normalized_ndim` dimensions.
std::pair<int64_t, int64_t> rms_shape(const char* op, const at::Tensor& input, int64_t normalized_ndim) {
  check_norm_dtype(op, input);
  TORCH_CHECK(normalized_ndim >= 1 && normalized_ndim <= input.dim(), op,
              ": normalized_ndim must lie in [1, input.dim()] = [1, ", input.dim(), "], got ", normalized_ndim);
  int64_t rows = 1, dim = 1;
  for (int64_t d = 0; d < input.dim(); ++d) {
    (d < input.dim() - normalized_ndim ? rows : dim) *= input.size(d);
  }
  return {rows, dim};
}

// The arguments both RMS norm operators pass: rows x dim, the contiguous input, the weight.
RmsNormArgs rms_args(int64_t rows, int64_t dim, const at::Tensor& x, const at::Tensor& w) {
  RmsNormArgs a;
  a.rows = rows;
  a.dim = dim;
  a.input = x.const_data_ptr();
  a.weight = ptr_or_null(w);
  return a;
}

// The result of a row kernel (written contiguous) in the input's memory format.
at::Tensor in_input_format(const at::Tensor& contiguous_result, const at::Tensor& input) {
  if (norm_is_channels_last(input)) return contiguous_result.contiguous(at::MemoryFormat::ChannelsLast);
  return contiguous_result;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_cuda(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                 int64_t normalized_ndim, double eps) {
  const char* op = "cnnkernels::rms_norm";
  const auto [rows, dim] = rms_shape(op, input, normalized_ndim);
  const DType dtype = kernel_dtype(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor w = norm_param(op, "weight", weight, dim, input);
  at::Tensor out = new_buffer(input.sizes(), input.options());
  at::Tensor rstd = new_acc_buffer({rows}, input);
  if (rows > 0 && dim == 0) {
    rstd.fill_(1.0 / std::sqrt(eps));  // an empty row: mean(x^2) taken as 0
  } else if (rows > 0) {
    RmsNormArgs a = rms_args(rows, dim, x, w);
    a.output = out.mutable_data_ptr();
    a.rstd = rstd.mutable_data_ptr();
    a.eps = eps;
    check_launch(op, launch_rms_norm(dtype, a, current_stream()));
  }
  return {in_input_format(out, input), rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const std::optional<at::Tensor>& weight,
                                                          const at::Tensor& save_rstd, int64_t normalized_ndim) {
  const char* op = "cnnkernels::rms_norm_backward";
  const auto [rows, dim] = rms_shape(op, input, normalized_ndim);
  const DType dtype = kernel_dtype(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op, ": expected grad_output of size ", input.sizes(), ", got ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": expected grad_output of dtype ",
              input.scalar_type(), ", got ", grad_output.scalar_type());
  TORCH_CHECK(grad_output.device() == input.device(), op, ": expected grad_output on ", input.device(), ", got ",
              grad_output.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor w = norm_param(op, "weight", weight, dim, input);
  const at::Tensor rstd = saved_stat(op, "save_rstd", save_rstd, rows, input);
  at::Tensor grad_input = new_buffer(input.sizes(), input.options());
  at::Tensor grad_w = w.defined() ? new_acc_buffer({dim}, input) : at::Tensor();
  if (rows * dim == 0) {
    if (grad_w.defined()) grad_w.zero_();
  } else {
    at::Tensor ws;
    RmsNormArgs a = rms_args(rows, dim, x, w);
    a.grad_output = dy.const_data_ptr();
    a.output = grad_input.mutable_data_ptr();
    a.rstd = const_cast<void*>(rstd.const_data_ptr());
    if (grad_w.defined()) {
      a.grad_weight = grad_w.mutable_data_ptr();
      ws = workspace(rms_norm_backward_workspace(dtype, rows, dim), input);
      a.workspace = ws.mutable_data_ptr();
    }
    check_launch(op, launch_rms_norm_backward(dtype, a, current_stream()));
  }
  at::Tensor gw = grad_w.defined() ? as_param_dtype(grad_w, weight, input) : empty_acc(input);
  return {in_input_format(grad_input, input), gw};
}

// ---- local response norm ---------------------------------------------------------------------

void check_lrn_args(const char* op, int64_t size) {
  TORCH_CHECK(size > 0, op, ": size must be positive, got ", size);
}

LrnArgs lrn_args(const NormShape& s, int64_t size, double alpha, double beta, double k) {
  LrnArgs a;
  set_view(a, s);
  a.size = size;
  a.alpha = alpha;
  a.beta = beta;
  a.k = k;
  return a;
}

at::Tensor local_response_norm_cuda(const at::Tensor& input, int64_t size, double alpha, double beta, double k) {
  const char* op = "cnnkernels::local_response_norm";
  const NormShape s = norm_shape(op, input, 3);
  check_lrn_args(op, size);
  const DType dtype = kernel_dtype(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = norm_layout(input, s);
  at::Tensor out = new_norm_output(input, s);
  if (s.numel() == 0) return out;
  LrnArgs a = lrn_args(s, size, alpha, beta, k);
  a.input = x.const_data_ptr();
  a.output = out.mutable_data_ptr();
  check_launch(op, launch_local_response_norm(dtype, a, current_stream()));
  return out;
}

at::Tensor local_response_norm_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, int64_t size,
                                             double alpha, double beta, double k) {
  const char* op = "cnnkernels::local_response_norm_backward";
  const NormShape s = norm_shape(op, input, 3);
  check_lrn_args(op, size);
  const DType dtype = kernel_dtype(op, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = norm_layout(input, s);
  const at::Tensor dy = norm_operand(op, "grad_output", grad_output, input, s);
  at::Tensor grad_input = new_norm_output(input, s);
  if (s.numel() == 0) return grad_input;
  LrnArgs a = lrn_args(s, size, alpha, beta, k);
  a.input = x.const_data_ptr();
  a.grad_output = dy.const_data_ptr();
  a.output = grad_input.mutable_data_ptr();
  check_launch(op, launch_local_response_norm_backward(dtype, a, current_stream()));
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnkernels, CNNK_CUDA_DISPATCH_KEY, m) {
  m.impl("batch_norm", &batch_norm_cuda);
  m.impl("batch_norm_backward", &batch_norm_backward_cuda);
  m.impl("group_norm", &group_norm_cuda);
  m.impl("group_norm_backward", &group_norm_backward_cuda);
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("rms_norm_backward", &rms_norm_backward_cuda);
  m.impl("local_response_norm", &local_response_norm_cuda);
  m.impl("local_response_norm_backward", &local_response_norm_backward_cuda);
}

}  // namespace cnnkernels
