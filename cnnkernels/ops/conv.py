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

The three backward operators are linear in each operand, and their own gradients are the
family's operators again (see _make_autograd), so second derivatives work: a gradient penalty,
or a Hessian-vector product through a network.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from cnnkernels import _extension
from cnnkernels._conv_geometry import conv2d_output_shape
from cnnkernels._layout import in_memory_format, memory_format_of
from cnnkernels.ops import _registry

_extension.load()  # registers the C++ schemas and kernels

try:  # the Triton operators exist where triton does (torch's CUDA builds ship it)
    from cnnkernels.triton import conv as _triton_conv  # noqa: F401  (registers cnnkernels_triton ops)
except ImportError:
    _triton_conv = None


class Conv2dOps(NamedTuple):
    """The four operators of one implementation of the family."""

    forward: Callable
    backward_input: Callable
    backward_weight: Callable
    backward_bias: Callable


OP_NAMES = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias")
BACKEND_OPS: dict[str, Conv2dOps] = _registry.backend_ops(Conv2dOps, _triton_conv is not None, OP_NAMES)
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


_FAKES = {"forward": _conv2d_fake, "backward_input": _conv2d_backward_input_fake,
          "backward_weight": _conv2d_backward_weight_fake, "backward_bias": _conv2d_backward_bias_fake}


# ---- autograd ------------------------------------------------------------------------------
# With y = conv(x, w) + b and dy the gradient of y:
#   forward          dx = backward_input(dy, w)    dw = backward_weight(dy, x)    db = backward_bias(dy)
# and, since each of these is linear in each operand, with g the gradient of their result:
#   backward_input   d(dy) = conv(g, w)            d(w) = backward_weight(dy, g)
#   backward_weight  d(dy) = conv(x, g)            d(x) = backward_input(dy, g)
#   backward_bias    d(dy) = g broadcast over (N, H, W)
# For complex tensors (cpu backend) every formula is the same with the saved operand conjugated:
# for a holomorphic bilinear map, torch's gradient convention gives d(a) = the real formula's
# adjoint applied to g and conj(b). The kernels never conjugate.


def _saved_conjugated(ctx) -> tuple[torch.Tensor, ...]:
    """The saved operands, conjugated (for real tensors, the tensors themselves) and resolved:
    the kernels read memory and would ignore a lazy conjugation."""
    return tuple(t.conj().resolve_conj() for t in ctx.saved_tensors)


def _setup(ctx, inputs, output):
    """Saves the two tensor operands and the geometry (stride, padding, dilation, groups)."""
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.conv_args = inputs[-4:]
    ctx.memory_format = memory_format_of(inputs[0], inputs[1])


def _setup_forward(ctx, inputs, output):
    _setup(ctx, inputs, output)
    ctx.has_bias = inputs[2] is not None


def _setup_bias(ctx, inputs, output):
    ctx.grad_shape = inputs[0].shape


def _make_autograd(ops: Conv2dOps) -> dict[str, tuple[Callable, Callable]]:
    def forward(ctx, grad_output):
        input, weight = _saved_conjugated(ctx)
        fmt = ctx.memory_format
        # Autograd may hand over an expanded or transposed gradient; give the kernels the layout
        # of the forward output (a no-op in the common case), and return each gradient in the
        # layout torch's convolution gives it.
        grad_output = in_memory_format(grad_output, fmt)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = ops.backward_input(grad_output, weight, list(input.shape), *ctx.conv_args)
            grad_input = grad_input.contiguous(memory_format=fmt)
        if ctx.needs_input_grad[1]:
            grad_weight = ops.backward_weight(grad_output, input, list(weight.shape), *ctx.conv_args)
            grad_weight = grad_weight.contiguous(memory_format=fmt)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = ops.backward_bias(grad_output)
        return grad_input, grad_weight, grad_bias, None, None, None, None

    def backward_input(ctx, grad):
        grad_output, weight = _saved_conjugated(ctx)
        grad = in_memory_format(grad, ctx.memory_format)
        d_grad_output = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_output = ops.forward(grad, weight, None, *ctx.conv_args)
        if ctx.needs_input_grad[1]:
            d_weight = ops.backward_weight(grad_output, grad, list(weight.shape), *ctx.conv_args)
        return d_grad_output, d_weight, None, None, None, None, None

    def backward_weight(ctx, grad):
        grad_output, input = _saved_conjugated(ctx)
        grad = in_memory_format(grad, ctx.memory_format)
        d_grad_output = d_input = None
        if ctx.needs_input_grad[0]:
            d_grad_output = ops.forward(input, grad, None, *ctx.conv_args)
        if ctx.needs_input_grad[1]:
            d_input = ops.backward_input(grad_output, grad, list(input.shape), *ctx.conv_args)
        return d_grad_output, d_input, None, None, None, None, None

    def backward_bias(ctx, grad):
        return grad.view(1, -1, 1, 1).expand(ctx.grad_shape)

    return {"forward": (forward, _setup_forward), "backward_input": (backward_input, _setup),
            "backward_weight": (backward_weight, _setup), "backward_bias": (backward_bias, _setup_bias)}


_registry.register(BACKEND_OPS, _FAKES, _make_autograd)


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
    ops = _registry.ops_for(BACKEND_OPS, "conv2d", input, backend)
    return ops.forward(input, weight, bias, list(stride), list(padding), list(dilation), groups)
