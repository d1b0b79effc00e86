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
}
