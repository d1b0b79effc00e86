"""conv2d operators: fake (meta) kernels, autograd, and routing to the backends.

Four operators (schemas in csrc/ops.cpp), all on 4-D (N, C, H, W) tensors, with padding given as
(top, bottom, left, right):

- ``conv2d``                  forward cross-correlation with optional bias;
- ``conv2d_backward_input``   the flipped-kernel convolution of the output gradient;
- ``conv2d_backward_weight``  the convolution of the input with the output gradient;
- ``conv2d_backward_bias``    the output gradient summed per channel.

The bias gradient is its own operator rather than a second output of backward_weight: it is a
different reduction (no input involved), autograd skips it when there is no bias, and the
depthwise and linear families reuse it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnkernels import _extension
from cnnkernels.backend import select as select_backend
from cnnkernels.ops._common import memory_format_of

_extension.load()  # registers the schemas and the C++ kernels

_ops = torch.ops.cnnkernels
# Backends that implement the conv2d forward and backward operators.
IMPLEMENTED = ("cpu",)


def conv2d_output_shape(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> list[int]:
    """Validates a conv2d problem like torch.nn.functional.conv2d does and returns the output
    shape (N, K, P, Q). Raises RuntimeError naming the offending argument."""
    if len(input_shape) != 4:
        raise RuntimeError(f"conv2d: expected a 4-D (N, C, H, W) input, but got input of size: {list(input_shape)}")
    if len(weight_shape) != 4:
        raise RuntimeError(
            f"conv2d: expected a 4-D (out_channels, in_channels/groups, kH, kW) weight, "
            f"but got weight of size: {list(weight_shape)}"
        )
    if any(s <= 0 for s in stride):
        raise RuntimeError("conv2d: non-positive stride is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError("conv2d: non-positive dilation is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("conv2d: negative padding is not supported")
    if groups <= 0:
        raise RuntimeError("conv2d: non-positive groups is not supported")
    n, c, h, w = input_shape
    k, c_per_group, r, s = weight_shape
    if k <= 0 or k % groups != 0:
        raise RuntimeError(
            f"conv2d: given groups={groups}, expected weight to be at least 1 and divisible by {groups} "
            f"at dimension 0, but got weight of size {list(weight_shape)} instead"
        )
    if r <= 0 or s <= 0:
        raise RuntimeError(f"conv2d: kernel size must be positive, but got weight of size {list(weight_shape)}")
    if c != c_per_group * groups:
        raise RuntimeError(
            f"conv2d: given groups={groups}, weight of size {list(weight_shape)}, expected input{list(input_shape)} "
            f"to have {c_per_group * groups} channels, but got {c} channels instead"
        )
    padded_h, padded_w = h + padding[0] + padding[1], w + padding[2] + padding[3]
    extent_h, extent_w = dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1
    if extent_h > padded_h or extent_w > padded_w:
        raise RuntimeError(
            f"conv2d: calculated padded input size per channel: ({padded_h} x {padded_w}). "
            f"Kernel size: ({extent_h} x {extent_w}). Kernel size can't be greater than actual input size"
        )
    return [n, k, (padded_h - extent_h) // stride[0] + 1, (padded_w - extent_w) // stride[1] + 1]


# ---- fake (meta) kernels: shapes, dtypes and memory formats without computing ----------------


@torch.library.register_fake("cnnkernels::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    shape = conv2d_output_shape(input.shape, weight.shape, stride, padding, dilation, groups)
    return input.new_empty(shape).contiguous(memory_format=memory_format_of(input, weight))


@torch.library.register_fake("cnnkernels::conv2d_backward_input")
def _conv2d_backward_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    conv2d_output_shape(input_size, weight.shape, stride, padding, dilation, groups)
    return grad_output.new_empty(input_size).contiguous(memory_format=memory_format_of(grad_output, weight))


@torch.library.register_fake("cnnkernels::conv2d_backward_weight")
def _conv2d_backward_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups):
    conv2d_output_shape(input.shape, weight_size, stride, padding, dilation, groups)
    return grad_output.new_empty(weight_size).contiguous(memory_format=memory_format_of(grad_output, input))


@torch.library.register_fake("cnnkernels::conv2d_backward_bias")
def _conv2d_backward_bias_fake(grad_output):
    if grad_output.dim() != 4:
        raise RuntimeError(f"conv2d_backward_bias: expected a 4-D grad_output, got size {list(grad_output.shape)}")
    return grad_output.new_empty(grad_output.shape[1])


# ---- autograd ------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None
    ctx.memory_format = memory_format_of(input, weight)


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    fmt = ctx.memory_format
    # Autograd may hand over an expanded or transposed gradient; give the kernels the layout of
    # the forward output (a no-op in the common case), and return each gradient in the layout
    # torch's convolution gives it.
    grad_output = grad_output.contiguous(memory_format=fmt)
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = _ops.conv2d_backward_input(grad_output, weight, input.shape, stride, padding, dilation, groups)
        grad_input = grad_input.contiguous(memory_format=fmt)
    if ctx.needs_input_grad[1]:
        grad_weight = _ops.conv2d_backward_weight(grad_output, input, weight.shape, stride, padding, dilation, groups)
        grad_weight = grad_weight.contiguous(memory_format=fmt)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = _ops.conv2d_backward_bias(grad_output)
    return grad_input, grad_weight, grad_bias, None, None, None, None


torch.library.register_autograd("cnnkernels::conv2d", _conv2d_backward, setup_context=_setup_context)


# ---- routing -------------------------------------------------------------------------------


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    backend: str | None = None,
) -> torch.Tensor:
    """conv2d on normalised arguments (4-D input, 4-entry padding) through the chosen backend."""
    select_backend("conv2d", input.device, IMPLEMENTED, backend)
    # Every backend in IMPLEMENTED is a dispatch key of the one registered operator.
    return _ops.conv2d(input, weight, bias, list(stride), list(padding), list(dilation), groups)
