// Every operator schema of the package, in one library. Kernels are registered per dispatch
// key next to their implementation (cpu/<family>.cpp, cuda/<family>.cpp); autograd and fake
// (meta) kernels are registered from Python (cnnkernels/ops/<family>.py).
#include <torch/library.h>

TORCH_LIBRARY(cnnkernels, m) {
  // ---- conv2d family -------------------------------------------------------------------------
  // Tensors are 4-D (N, C, H, W); padding is (top, bottom, left, right) so that padding='same'
  // with an even kernel needs no extra copy. Every returned tensor is channels_last when either
  // tensor operand is, as with torch's convolution.
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
      "int[2] dilation, int groups) -> Tensor");
  // Input gradient: the flipped-kernel convolution of grad_output.
  m.def(
      "conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
      "int[2] stride, int[4] padding, int[2] dilation, int groups) -> Tensor");
  // Weight gradient: the convolution of the layer input with grad_output; deterministic.
  m.def(
      "conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
      "int[2] stride, int[4] padding, int[2] dilation, int groups) -> Tensor");
  // Bias gradient: grad_output summed over (N, P, Q) per channel, in a fixed order.
  m.def("conv2d_backward_bias(Tensor grad_output) -> Tensor");

  // ---- pooling family ------------------------------------------------------------------------
  // Tensors are 4-D (N, C, H, W); outputs keep the input's memory format (indices too).
  // Indices are int64 flat positions h*W + w within each (n, c) plane, as torch returns them.
  // Backward operators are gathers: each input element collects from the windows that reach
  // it, so they are deterministic without atomics.
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
      "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size, int[2] kernel_size, "
      "int[2] stride, int[2] padding, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size) -> Tensor");
  m.def("adaptive_max_pool2d(Tensor input, int[2] output_size) -> (Tensor, Tensor)");
  m.def(
      "adaptive_max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size) -> Tensor");
  // Position restore as a forward operator: out[n, c, indices[n, c, i]] = input[n, c, i], zeros
  // elsewhere; its backward gathers grad_output at the indices.
  m.def("max_unpool2d(Tensor input, Tensor indices, int[2] output_size) -> Tensor");
  m.def("max_unpool2d_backward(Tensor grad_output, Tensor indices) -> Tensor");

  // ---- normalisation family ------------------------------------------------------------------
  // z = (x - mean) * rstd * weight + bias (+ residual), output = activation(z), with activation
  // one of 'none', 'relu', 'silu', 'gelu' (exact). Inputs are (N, C, *) unless said otherwise;
  // outputs keep the input's layout (channels_last for a 4-D channels_last input, contiguous
  // otherwise). Saved statistics (mean, rstd = 1/sqrt(var + eps)) are float32 (float64 for a
  // float64 input). Parameter gradients are reduced through fixed-order partials
  // (deterministic) and returned in the parameter's dtype; a gradient of an absent parameter,
  // and a running statistic that is not tracked, is an empty (0,) tensor.
  //
  // Batch norm: statistics per channel over N and every spatial position. training=True uses
  // the batch's statistics and, when running_mean/running_var are given, returns their new
  // values (running + momentum * (batch - running), the variance unbiased) for the caller to
  // copy in; training=False normalises with the running statistics (and returns them as the
  // saved statistics). Returns (output, save_mean (C,), save_rstd (C,), new_running_mean,
  // new_running_var). One fused pass writes output from x (and residual).
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, Tensor? running_mean, "
      "Tensor? running_var, bool training, float momentum, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Recomputes z from input (and residual) for the activation's derivative, so neither z nor
  // the output is saved. Returns (grad_input, grad_weight, grad_bias, grad_residual); the
  // residual's gradient is the gradient at z.
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, "
      "Tensor save_mean, Tensor save_rstd, bool training, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  // Group norm: statistics per (sample, group of C / num_groups channels). Layer norm is
  // num_groups = 1 over a (rows, D) view, instance norm runs through batch_norm on a
  // (1, N*C, *) view. Returns (output, save_mean (N, G), save_rstd (N, G)).
  m.def(
      "group_norm(Tensor input, Tensor? weight, Tensor? bias, int num_groups, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, Tensor save_mean, "
      "Tensor save_rstd, int num_groups, str activation) -> (Tensor, Tensor, Tensor)");
  // RMS norm over the trailing `normalized_ndim` dimensions (rows of D elements, any leading
  // shape): output = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps). weight has D elements.
  // Returns (output, save_rstd (rows,)) and, backward, (grad_input, grad_weight).
  m.def("rms_norm(Tensor input, Tensor? weight, int normalized_ndim, float eps) -> (Tensor, Tensor)");
  m.def(
      "rms_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor save_rstd, int normalized_ndim) "
      "-> (Tensor, Tensor)");
  // Local response normalisation across channels (AlexNet), torch's formula: input (N, C, *),
  // b_c = a_c / (k + alpha/size * sum of a_j^2 over channels j in [c - size/2, c + (size-1)/2])^beta.
  // The backward recomputes the denominators from the input.
  m.def("local_response_norm(Tensor input, int size, float alpha, float beta, float k) -> Tensor");
  m.def(
      "local_response_norm_backward(Tensor grad_output, Tensor input, int size, float alpha, float beta, float k) "
      "-> Tensor");
}
