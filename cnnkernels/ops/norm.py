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

# The activations a norm can fuse, by the name the schemas take, with torch's function of each
# (the reference the second derivatives are taken through).
ACTIVATIONS = {"none": lambda z: z, "relu": torch.relu, "silu": torch.nn.functional.silu,
               "gelu": torch.nn.functional.gelu}


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


# ---- second derivatives --------------------------------------------------------------------
# A backward operator computes the vector-Jacobian product  g = (df/dp)^T dy  of its forward f
# at the differentiable operands p = (input, weight, bias, residual). Unlike conv's and
# pooling's backward operators it is not linear in the input, so its own derivative (what double
# backward needs: gradient penalties, MAML through batch norm) is taken by torch's autograd
# through a composite reference of f, as torch builds its own norm double backward from
# composite ATen ops: rebuild g with create_graph, then differentiate it with respect to dy and
# p. Training statistics are functions of the input there (torch's fused double backward
# treats them as constants when differentiated once more: its third derivatives are wrong or
# refused), so third and higher derivatives come out right too.


def _rstd(mean_square, save_rstd):
    """1 / sqrt(mean_square + eps) as a function of mean_square (a variance, or RMS norm's mean of
    squares). The backward operators do not take eps: it is the saved rstd's (rstd^-2 -
    mean_square), which also keeps the value the saved one."""
    eps = (save_rstd.reshape(mean_square.shape).pow(-2) - mean_square).detach()
    return torch.rsqrt(mean_square + eps)


def _normalise(x, dims, save_mean, save_rstd, recompute: bool):
    """(x - mean) * rstd with statistics over `dims`: the saved values as constants, or, when
    `recompute`, the statistics of x itself."""
    shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
    if not recompute:
        return (x - save_mean.reshape(shape)) * save_rstd.reshape(shape)
    centred = x - x.mean(dims, keepdim=True)
    return centred * _rstd(centred.square().mean(dims, keepdim=True), save_rstd)


def _per_channel(t, x):
    """A per-channel parameter shaped to broadcast over x (N, C, *)."""
    return t.reshape(1, -1, *(1,) * (x.dim() - 2))


def _affine_activation(xhat, weight, bias, residual, activation: str):
    z = xhat
    if weight is not None:
        z = z * _per_channel(weight, xhat)
    if bias is not None:
        z = z + _per_channel(bias, xhat)
    if residual is not None:
        z = z + residual
    return ACTIVATIONS[activation](z)


def _batch_norm_reference(args, x, weight, bias, residual):
    save_mean, save_rstd, training, activation = args
    dims = [d for d in range(x.dim()) if d != 1]
    return _affine_activation(_normalise(x, dims, save_mean, save_rstd, training), weight, bias, residual, activation)


def _group_norm_reference(args, x, weight, bias):
    save_mean, save_rstd, num_groups, activation = args
    groups = x.reshape(x.shape[0], num_groups, -1)
    xhat = _normalise(groups, [2], save_mean, save_rstd, True).reshape(x.shape)
    return _affine_activation(xhat, weight, bias, None, activation)


def _rms_norm_reference(args, x, weight):
    save_rstd, normalized_ndim = args
    dims = list(range(x.dim() - normalized_ndim, x.dim()))
    out = x * _rstd(x.square().mean(dims, keepdim=True), save_rstd)
    return out if weight is None else out * weight.reshape(x.shape[x.dim() - normalized_ndim:])


def _lrn_reference(args, x):
    size, alpha, beta, k = args
    squares, window = x.square(), torch.zeros_like(x)
    channels = x.shape[1]
    for d in range(-(size // 2), (size - 1) // 2 + 1):  # channel c sums the squares of c + d
        lo, hi = max(0, -d), min(channels, channels - d)
        if lo < hi:
            window[:, lo:hi] += squares[:, lo + d:hi + d]
    return x / (k + alpha / size * window).pow(beta)


def _setup_second_order(ctx, inputs, output):
    """Saves a backward operator's arguments: the tensors (absent optional ones included) through
    save_for_backward, the rest (flags, sizes) as they are."""
    ctx.is_tensor = [isinstance(a, torch.Tensor) or a is None for a in inputs]
    ctx.save_for_backward(*(a for a, t in zip(inputs, ctx.is_tensor) if t))
    ctx.others = [None if t else a for a, t in zip(inputs, ctx.is_tensor)]


def _second_order(reference, arity: int):
    """The autograd formula of a backward operator whose forward is reference(constants, *p) with
    `arity` operands p: the operator's arguments are (grad_output, *p, *constants) and its
    results the gradients of p (an empty tensor for an absent operand)."""

    def backward(ctx, *grads):
        saved = iter(ctx.saved_tensors)
        args = [next(saved) if t else a for a, t in zip(ctx.others, ctx.is_tensor)]
        grad_output, primals, constants = args[0], args[1:1 + arity], args[1 + arity:]
        acc = acc_dtype(primals[0])
        create_graph = torch.is_grad_enabled()  # autograd runs a backward in grad mode iff create_graph
        with torch.enable_grad():
            # Separate handles (a view when the tensor is part of a graph, a fresh leaf when not):
            # the same tensor may come in twice (residual = input) and each slot gets its own gradient.
            handles = [None if t is None else t.view_as(t) if t.requires_grad else t.detach().requires_grad_()
                       for t in (grad_output, *primals)]
            dy, p = handles[0], [h for h in handles[1:] if h is not None]
            out = reference(constants, *(None if h is None else h.to(acc) for h in handles[1:]))
            first = torch.autograd.grad(out, p, dy.to(acc), create_graph=True)
            cotangents = [g for g, h in zip(grads, handles[1:]) if h is not None]
            second = torch.autograd.grad(first, [dy, *p], cotangents, allow_unused=True,
                                         create_graph=create_graph)
        it = iter(second)
        results = tuple(None if h is None else next(it) for h in handles)
        return results + (None,) * (len(args) - len(results))

    return backward


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
        "batch_norm_backward": (_second_order(_batch_norm_reference, 4), _setup_second_order),
        "group_norm_backward": (_second_order(_group_norm_reference, 3), _setup_second_order),
        "rms_norm_backward": (_second_order(_rms_norm_reference, 2), _setup_second_order),
        "local_response_norm_backward": (_second_order(_lrn_reference, 1), _setup_second_order),
    }


_registry.register(BACKEND_OPS, _FAKES, _make_backwards)


def ops_for(op: str, input: torch.Tensor, backend: str | None) -> NormOps:
    """The operator set of the backend chosen for this call."""
    return _registry.ops_for(BACKEND_OPS, op, input, backend)
