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
}
