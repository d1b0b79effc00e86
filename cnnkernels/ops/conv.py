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

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from cnnkernels import _extension
from cnnkernels.backend import select as select_backend
from cnnkernels._conv_geometry import conv2d_output_shape
from cnnkernels._layout import memory_format_of

_extension.load()  # registers the C++ schemas and kernels

try:  # the Triton operators exist where triton does (torch's CUDA builds ship it)
    from cnnkernels.triton import conv as _triton_conv
except ImportError:
    _triton_conv = None


class Conv2dOps(NamedTuple):
    """The four operators of one implementation of the family."""

    forward: Callable
    backward_input: Callable
    backward_weight: Callable
    backward_bias: Callable


# The C++ operators serve both the cpu and the cuda backend (one operator, a kernel per
# dispatch key); the Triton operators are their own custom ops with the same contract.
_CPP = Conv2dOps(torch.ops.cnnkernels.conv2d.default, torch.ops.cnnkernels.conv2d_backward_input.default,
                 torch.ops.cnnkernels.conv2d_backward_weight.default, torch.ops.cnnkernels.conv2d_backward_bias.default)
BACKEND_OPS: dict[str, Conv2dOps] = {"cpu": _CPP}
if _extension.has_cuda():
    BACKEND_OPS["cuda"] = _CPP
if _triton_conv is not None:
    BACKEND_OPS["triton"] = Conv2dOps(_triton_conv.conv2d, _triton_conv.conv2d_backward_input_op,
                                      _triton_conv.conv2d_backward_weight_op, _triton_conv.conv2d_backward_bias_op)
# Backends that implement the whole family (forward and every backward operator).
IMPLEMENTED = tuple(BACKEND_OPS)


# ---- fake (meta) kernels: shapes, dtypes and memory formats without computing ----------------


def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    shape = conv2d_output_shape(input.shape, weight.shape, stride, padding, dilation, groups)
    return input.new_empty(shape).contiguous(memory_format=memory_format_of(input, weight))


def _conv2d_backward_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    conv2d_output_shape(input_size, weight.shape, stride, padding, dilation, groups)
    return grad_output.new_empty(input_size).contiguous(memory_format=memory_format_of(grad_output, weight))


def _conv2d_backward_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups):
    conv2d_output_shape(input.shape, weight_size, stride, padding, dilation, groups)
    return grad_output.new_empty(weight_size).contiguous(memory_format=memory_format_of(grad_output, input))


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


def _make_backward(ops: Conv2dOps):
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        fmt = ctx.memory_format
        # Autograd may hand over an expanded or transposed gradient; give the kernels the layout
        # of the forward output (a no-op in the common case), and return each gradient in the
        # layout torch's convolution gives it.
        grad_output = grad_output.contiguous(memory_format=fmt)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.backward_input(grad_output, weight, list(input.shape), stride, padding, dilation, groups)
            grad_input = grad_input.contiguous(memory_format=fmt)
        if ctx.needs_input_grad[1]:
            grad_weight = ops.backward_weight(grad_output, input, list(weight.shape), stride, padding, dilation, groups)
            grad_weight = grad_weight.contiguous(memory_format=fmt)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = ops.backward_bias(grad_output)
        return grad_input, grad_weight, grad_bias, None, None, None, None

    return backward


for _ops in {id(o): o for o in BACKEND_OPS.values()}.values():
    torch.library.register_fake(_ops.forward, _conv2d_fake)
    torch.library.register_fake(_ops.backward_input, _conv2d_backward_input_fake)
    torch.library.register_fake(_ops.backward_weight, _conv2d_backward_weight_fake)
    torch.library.register_fake(_ops.backward_bias, _conv2d_backward_bias_fake)
    torch.library.register_autograd(_ops.forward, _make_backward(_ops), setup_context=_setup_context)


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
    name = select_backend("conv2d", input.device, IMPLEMENTED, backend)
    return BACKEND_OPS[name].forward(input, weight, bias, list(stride), list(padding), list(dilation), groups)
