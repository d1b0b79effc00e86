"""Pooling operators: fake (meta) kernels, autograd, and routing to the backends.

Ten operators (schemas in csrc/ops.cpp), all on 4-D (N, C, H, W) tensors: max, average,
adaptive-average and adaptive-max pooling with their backward operators, and max unpooling
with its backward. Every backward is a gather (each input element collects from the windows
that reach it): deterministic, no atomics. Outputs keep the input's memory format.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from cnnkernels import _extension
from cnnkernels._layout import in_memory_format, memory_format_of
from cnnkernels._pool_geometry import adaptive_output_shape, check_pool_input, pool2d_output_shape
from cnnkernels.ops import _registry

_extension.load()  # registers the C++ schemas and kernels

try:  # the Triton operators exist where triton does
    from cnnkernels.triton import pool as _triton_pool  # noqa: F401  (registers cnnkernels_triton ops)
except ImportError:
    _triton_pool = None


class PoolOps(NamedTuple):
    """The ten operators of one implementation of the family."""

    max_pool2d: object
    max_pool2d_backward: object
    avg_pool2d: object
    avg_pool2d_backward: object
    adaptive_avg_pool2d: object
    adaptive_avg_pool2d_backward: object
    adaptive_max_pool2d: object
    adaptive_max_pool2d_backward: object
    max_unpool2d: object
    max_unpool2d_backward: object


BACKEND_OPS: dict[str, PoolOps] = _registry.backend_ops(PoolOps, _triton_pool is not None)
IMPLEMENTED = tuple(BACKEND_OPS)


# ---- fake (meta) kernels -------------------------------------------------------------------


def _like(input: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    return input.new_empty(shape, dtype=dtype or input.dtype).contiguous(memory_format=memory_format_of(input))


def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = pool2d_output_shape("max_pool2d", input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return _like(input, shape), _like(input, shape, torch.int64)


def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    shape = pool2d_output_shape("avg_pool2d", input.shape, kernel_size, stride, padding, [1, 1], ceil_mode)
    return _like(input, shape)


def _adaptive_avg_pool2d_fake(input, output_size):
    return _like(input, adaptive_output_shape("adaptive_avg_pool2d", input.shape, output_size))


def _adaptive_max_pool2d_fake(input, output_size):
    shape = adaptive_output_shape("adaptive_max_pool2d", input.shape, output_size)
    return _like(input, shape), _like(input, shape, torch.int64)


def _max_unpool2d_fake(input, indices, output_size):
    return _like(input, [input.shape[0], input.shape[1], *output_size])


def _gather_fake(grad_output, input_size):
    """Every pooling backward: a tensor of the input's size in the gradient's memory format."""
    check_pool_input("pooling backward", input_size)
    return _like(grad_output, input_size)


def _unpool_backward_fake(grad_output, indices):
    return _like(indices, indices.shape, grad_output.dtype)


# ---- autograd ------------------------------------------------------------------------------
# Each forward saves what its gather needs; gradients are returned in the input's layout.


def _setup(ctx, inputs, output):
    ctx.input_shape = list(inputs[0].shape)
    ctx.memory_format = memory_format_of(inputs[0])
    ctx.args = inputs[1:]
    if isinstance(output, tuple):  # (values, indices)
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])


def _setup_unpool(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _setup_gather(ctx, inputs, output):
    """max_pool2d_backward / adaptive_max_pool2d_backward (grad, indices, ...)."""
    ctx.save_for_backward(inputs[1])
    ctx.memory_format = memory_format_of(inputs[0])
    ctx.operands = len(inputs)


def _setup_grad_size(ctx, inputs, output):
    ctx.grad_size = list(inputs[0].shape[-2:])


def _setup_avg_backward(ctx, inputs, output):
    grad, input_size, kernel_size, stride, padding = inputs[:5]
    ctx.args = inputs[2:]
    # The backward operator has no ceil_mode: it is whichever reproduces the gradient's size.
    floor_shape = pool2d_output_shape("avg_pool2d", input_size, kernel_size, stride, padding, [1, 1], False)
    ctx.ceil_mode = list(floor_shape) != list(grad.shape)


def _setup_unpool_backward(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    _setup_grad_size(ctx, inputs, output)


def _make_backwards(ops: PoolOps):
    def grad_in(ctx, grad):
        return in_memory_format(grad, ctx.memory_format)

    def max_pool2d(ctx, grad, _):
        kernel_size, stride, padding, dilation, _ceil = ctx.args
        (indices,) = ctx.saved_tensors
        return (ops.max_pool2d_backward(grad_in(ctx, grad), indices, ctx.input_shape, kernel_size, stride, padding,
                                        dilation),) + (None,) * 5

    def avg_pool2d(ctx, grad):
        kernel_size, stride, padding, _ceil, count_include_pad, divisor_override = ctx.args
        return (ops.avg_pool2d_backward(grad_in(ctx, grad), ctx.input_shape, kernel_size, stride, padding,
                                        count_include_pad, divisor_override),) + (None,) * 6

    def adaptive_avg_pool2d(ctx, grad):
        return ops.adaptive_avg_pool2d_backward(grad_in(ctx, grad), ctx.input_shape), None

    def adaptive_max_pool2d(ctx, grad, _):
        (indices,) = ctx.saved_tensors
        return ops.adaptive_max_pool2d_backward(grad_in(ctx, grad), indices, ctx.input_shape), None

    def max_unpool2d(ctx, grad):
        (indices,) = ctx.saved_tensors
        return ops.max_unpool2d_backward(grad, indices), None, None

    # Second derivatives. Each backward operator is linear in its gradient operand, and its own
    # gradient is the forward operator it undoes, read the other way: the max-pooling
    # backwards scatter to the chosen positions, so their adjoint gathers from them (what
    # max_unpool2d_backward does); averaging's adjoint is averaging; unpooling's gather is
    # undone by unpooling's scatter.
    def gather_at_indices(ctx, grad):
        (indices,) = ctx.saved_tensors
        d_grad = ops.max_unpool2d_backward(in_memory_format(grad, ctx.memory_format), indices)
        return (d_grad,) + (None,) * (ctx.operands - 1)

    def avg_pool2d_backward(ctx, grad):
        kernel_size, stride, padding, count_include_pad, divisor_override = ctx.args
        return (ops.avg_pool2d(grad, kernel_size, stride, padding, ctx.ceil_mode, count_include_pad, divisor_override),
                ) + (None,) * 6

    def adaptive_avg_pool2d_backward(ctx, grad):
        return ops.adaptive_avg_pool2d(grad, ctx.grad_size), None

    def max_unpool2d_backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return ops.max_unpool2d(grad, indices, ctx.grad_size), None

    return {"max_pool2d": (max_pool2d, _setup), "avg_pool2d": (avg_pool2d, _setup),
            "adaptive_avg_pool2d": (adaptive_avg_pool2d, _setup), "adaptive_max_pool2d": (adaptive_max_pool2d, _setup),
            "max_unpool2d": (max_unpool2d, _setup_unpool),
            "max_pool2d_backward": (gather_at_indices, _setup_gather),
            "adaptive_max_pool2d_backward": (gather_at_indices, _setup_gather),
            "avg_pool2d_backward": (avg_pool2d_backward, _setup_avg_backward),
            "adaptive_avg_pool2d_backward": (adaptive_avg_pool2d_backward, _setup_grad_size),
            "max_unpool2d_backward": (max_unpool2d_backward, _setup_unpool_backward)}


_FAKES = {
    "max_pool2d": _max_pool2d_fake, "avg_pool2d": _avg_pool2d_fake, "adaptive_avg_pool2d": _adaptive_avg_pool2d_fake,
    "adaptive_max_pool2d": _adaptive_max_pool2d_fake, "max_unpool2d": _max_unpool2d_fake,
    "max_pool2d_backward": lambda grad, indices, input_size, *geometry: _gather_fake(grad, input_size),
    "avg_pool2d_backward": lambda grad, input_size, *geometry: _gather_fake(grad, input_size),
    "adaptive_avg_pool2d_backward": _gather_fake,
    "adaptive_max_pool2d_backward": lambda grad, indices, input_size: _gather_fake(grad, input_size),
    "max_unpool2d_backward": _unpool_backward_fake,
}

_registry.register(BACKEND_OPS, _FAKES, _make_backwards)


# ---- routing -------------------------------------------------------------------------------


def ops_for(op: str, input: torch.Tensor, backend: str | None) -> PoolOps:
    """The operator set of the backend chosen for this call."""
    return _registry.ops_for(BACKEND_OPS, op, input, backend)
