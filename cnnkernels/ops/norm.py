"""Normalisation operators: fake (meta) kernels, autograd, and routing to the backends.

Eight operators (schemas and their contracts in csrc/ops.cpp): batch norm and group norm, each
with an optional fused activation (batch norm also with a fused residual add, the tail of a
ResNet block), RMS norm and local response normalisation, each with its backward. Layer norm is
group norm with one group over a (rows, D) view and instance norm is batch norm over a
(1, N*C, *) view (cnnkernels.functional builds both). The backward operators recompute the
normalised input and the activation's pre-image from the input, so the forward saves only the
per-group statistics (float32; float64 for float64 inputs).

Running statistics: the operators are functional (autograd formulas exist only for those), so
batch_norm returns the new running mean and variance and the caller copies them into the
buffers (cnnkernels.functional does).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from cnnkernels import _extension
from cnnkernels._layout import memory_format_of
from cnnkernels.ops import _registry

_extension.load()  # registers the C++ schemas and kernels

try:  # the Triton operators exist where triton does
    from cnnkernels.triton import norm as _triton_norm  # noqa: F401  (registers cnnkernels_triton ops)
except ImportError:
    _triton_norm = None

ACTIVATIONS = ("none", "relu", "silu", "gelu")


class NormOps(NamedTuple):
    """The eight operators of one implementation of the family."""

    batch_norm: object
    batch_norm_backward: object
    group_norm: object
    group_norm_backward: object
    rms_norm: object
    rms_norm_backward: object
    local_response_norm: object
    local_response_norm_backward: object


BACKEND_OPS: dict[str, NormOps] = _registry.backend_ops(NormOps, _triton_norm is not None)
IMPLEMENTED = tuple(BACKEND_OPS)


# ---- fake (meta) kernels -------------------------------------------------------------------


def acc_dtype(input: torch.Tensor) -> torch.dtype:
    """The dtype statistics and parameter gradients are accumulated in."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _like(input: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(input, memory_format=memory_format_of(input))


def _acc(input: torch.Tensor, *shape) -> torch.Tensor:
    return input.new_empty(shape, dtype=acc_dtype(input))


def _param_grad(param, input):
    """A parameter's gradient: its shape and dtype, or an empty accumulator tensor when absent."""
    return _acc(input, 0) if param is None else torch.empty_like(param, memory_format=torch.contiguous_format)


def _batch_norm_fake(input, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation):
    channels = input.shape[1]
    tracked = training and running_mean is not None
    new_mean = _param_grad(running_mean, input) if tracked else _acc(input, 0)
    new_var = _param_grad(running_var, input) if tracked else _acc(input, 0)
    return _like(input), _acc(input, channels), _acc(input, channels), new_mean, new_var


def _batch_norm_backward_fake(grad_output, input, weight, bias, residual, save_mean, save_rstd, training, activation):
    grad_residual = _acc(input, 0) if residual is None else _like(input)
    return _like(input), _param_grad(weight, input), _param_grad(bias, input), grad_residual


def _group_norm_fake(input, weight, bias, num_groups, eps, activation):
    return _like(input), _acc(input, input.shape[0], num_groups), _acc(input, input.shape[0], num_groups)


def _group_norm_backward_fake(grad_output, input, weight, bias, save_mean, save_rstd, num_groups, activation):
    return _like(input), _param_grad(weight, input), _param_grad(bias, input)


def _rms_norm_fake(input, weight, normalized_ndim, eps):
    rows = math.prod(input.shape[: input.dim() - normalized_ndim])
    return _like(input), _acc(input, rows)


def _rms_norm_backward_fake(grad_output, input, weight, save_rstd, normalized_ndim):
    return _like(input), _param_grad(weight, input)


_FAKES = {
    "batch_norm": _batch_norm_fake,
    "batch_norm_backward": _batch_norm_backward_fake,
    "group_norm": _group_norm_fake,
    "group_norm_backward": _group_norm_backward_fake,
    "rms_norm": _rms_norm_fake,
    "rms_norm_backward": _rms_norm_backward_fake,
    "local_response_norm": lambda input, size, alpha, beta, k: _like(input),
    "local_response_norm_backward": lambda grad_output, input, size, alpha, beta, k: _like(input),
}


# ---- autograd ------------------------------------------------------------------------------
# Each forward saves its input (and parameters) and the statistics; the saved statistics and
# running-statistic outputs are not differentiable. A gradient for an absent parameter is None.


def _present(grad, param):
    return None if param is None else grad


def _setup_batch_norm(ctx, inputs, output):
    input, weight, bias, residual, _rm, _rv, training, _momentum, _eps, activation = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(input, weight, bias, residual, output[1], output[2])
    ctx.training, ctx.activation = training, activation


def _setup_group_norm(ctx, inputs, output):
    input, weight, bias, num_groups, _eps, activation = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(input, weight, bias, output[1], output[2])
    ctx.num_groups, ctx.activation = num_groups, activation


def _setup_rms_norm(ctx, inputs, output):
    input, weight, normalized_ndim, _eps = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(input, weight, output[1])
    ctx.normalized_ndim = normalized_ndim


def _setup_lrn(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:]


def _make_backwards(ops: NormOps):
    def batch_norm(ctx, grad, *_):
        input, weight, bias, residual, mean, rstd = ctx.saved_tensors
        gx, gw, gb, gr = ops.batch_norm_backward(grad, input, weight, bias, residual, mean, rstd, ctx.training,
                                                 ctx.activation)
        return (gx, _present(gw, weight), _present(gb, bias), _present(gr, residual)) + (None,) * 6

    def group_norm(ctx, grad, *_):
        input, weight, bias, mean, rstd = ctx.saved_tensors
        gx, gw, gb = ops.group_norm_backward(grad, input, weight, bias, mean, rstd, ctx.num_groups, ctx.activation)
        return gx, _present(gw, weight), _present(gb, bias), None, None, None

    def rms_norm(ctx, grad, _):
        input, weight, rstd = ctx.saved_tensors
        gx, gw = ops.rms_norm_backward(grad, input, weight, rstd, ctx.normalized_ndim)
        return gx, _present(gw, weight), None, None

    def local_response_norm(ctx, grad):
        (input,) = ctx.saved_tensors
        return (ops.local_response_norm_backward(grad, input, *ctx.args),) + (None,) * 4

    return {
        "batch_norm": (batch_norm, _setup_batch_norm),
        "group_norm": (group_norm, _setup_group_norm),
        "rms_norm": (rms_norm, _setup_rms_norm),
        "local_response_norm": (local_response_norm, _setup_lrn),
    }


_registry.register(BACKEND_OPS, _FAKES, _make_backwards)


def ops_for(op: str, input: torch.Tensor, backend: str | None) -> NormOps:
    """The operator set of the backend chosen for this call."""
    return _registry.ops_for(BACKEND_OPS, op, input, backend)
