"""Pooling against torch.nn.functional and torch.autograd, on every backend testable here
(helpers.targets_for): forward values, indices, gradients, memory formats, errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import cnnkernels
import cnnkernels.models
import cnnkernels.functional as F
from cnnkernels._layout import memory_format_of
from cnnkernels.ops import pool as pool_ops
from helpers import assert_close, message_names, operator_raises, raises_like_torch, targets_for

CL = torch.channels_last
TARGETS = targets_for(pool_ops.IMPLEMENTED)


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


def _leaf(t, device):
    return t.detach().to(device).requires_grad_()


def check_against_torch(ours_fn, torch_fn, x, target, dtype, exact=False, with_indices=False):
    """Runs ours on target's device and torch on the CPU (fp32 for fp16/bf16 inputs); compares
    values, indices, layouts and input gradients; torch raising means ours must raise alike."""
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    xr = _leaf(x.to(ref_dtype), "cpu")
    try:
        ref = torch_fn(xr)
    except Exception as e:  # an argument combination torch rejects: we reject it too
        with pytest.raises(type(e)):
            ours_fn(_leaf(x, target.device))
        return
    xo = _leaf(x, target.device)
    out = ours_fn(xo)
    if with_indices:
        (out, idx), (ref, ref_idx) = out, ref
        assert torch.equal(idx.cpu(), ref_idx), "indices differ from torch's"
        assert idx.stride() == ref_idx.stride() or idx.numel() <= 1
    assert out.dtype == dtype
    assert out.shape == ref.shape
    if exact:
        torch.testing.assert_close(out.cpu().to(ref_dtype), ref.detach(), rtol=0, atol=0, equal_nan=True)
    else:
        assert_close(out.cpu(), ref.detach(), dtype)
    assert out.is_contiguous(memory_format=CL) == ref.is_contiguous(memory_format=CL)
    g = torch.randn(ref.shape, dtype=dtype)
    (gx,) = torch.autograd.grad(out, xo, g.to(target.device))
    (ref_gx,) = torch.autograd.grad(ref, xr, g.to(ref_dtype))
    assert gx.shape == x.shape
    assert_close(gx.cpu(), ref_gx, dtype)


def _input(shape=(2, 3, 7, 9), dtype=torch.float64, ties=False, channels_last=False):
    # Small integers make many ties (torch keeps the first in window order).
    x = torch.randint(-3, 4, shape).to(dtype) if ties else torch.randn(shape, dtype=dtype)
    return x.contiguous(memory_format=CL) if channels_last else x


# ---- max pooling ---------------------------------------------------------------------------

MAX_GRID = list(itertools.product([2, 3, (3, 2)], [None, 1, (2, 1), 3], [0, 1], [1, 2], [False, True]))


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", MAX_GRID, ids=str)
def test_max_pool2d_grid(kernel, stride, padding, dilation, ceil_mode, target):
    args = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                return_indices=True)
    check_against_torch(lambda x: F.max_pool2d(x, backend=target.backend, **args), lambda x: TF.max_pool2d(x, **args),
            _input(ties=True, dtype=torch.float32), target, torch.float32, exact=True, with_indices=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool2d_dtypes_and_layouts(dtype, channels_last, target):
    if dtype == torch.float64 and target.backend != "cpu" and target.device != "cpu":
        pytest.skip("float64 is a CPU dtype for the GPU backends")
    args = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, return_indices=True)
    check_against_torch(lambda x: F.max_pool2d(x, backend=target.backend, **args), lambda x: TF.max_pool2d(x, **args),
            _input((2, 5, 9, 8), dtype, channels_last=channels_last), target, dtype, exact=True, with_indices=True)


def test_max_pool2d_windows_entirely_in_the_padding(target):
    # Height 1, two taps 2 rows apart, one row of padding: every window's taps fall on rows -1
    # and 1. torch returns -inf with an index past the window (its clamped first tap). The
    # gradient follows torch's CUDA gather, in which no input element lies in such a window:
    # 0. (torch's CPU backward scatters to that index instead, here past the plane's end: it
    # corrupts the heap, so it cannot serve as the reference.)
    x = torch.randn(2, 3, 1, 7)
    args = dict(kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(2, 1), return_indices=True)
    ref, ref_idx = TF.max_pool2d(x, **args)
    xo = x.to(target.device).requires_grad_()
    out, idx = F.max_pool2d(xo, backend=target.backend, **args)
    assert torch.isneginf(ref).all() and (ref_idx >= x.shape[2] * x.shape[3]).any()
    assert torch.equal(out.cpu(), ref) and torch.equal(idx.cpu(), ref_idx)
    (gx,) = torch.autograd.grad(out, xo, torch.ones_like(out))
    assert torch.equal(gx.cpu(), torch.zeros_like(x))


@pytest.mark.parametrize("fill", ["nan", "-inf", "nan-and-inf"])
def test_max_pool2d_nan_and_inf(fill, target):
    x = torch.randn(1, 2, 6, 6)
    if fill in ("nan", "nan-and-inf"):
        x[0, 0, 1, 1] = x[0, 0, 2, 3] = x[0, 1, 4, 4] = float("nan")
    if fill in ("-inf", "nan-and-inf"):
        x[0, 1, :3, :3] = float("-inf")
        x[0, 0, 4:, 4:] = float("-inf")
    args = dict(kernel_size=3, stride=2, padding=1, return_indices=True)
    out, idx = F.max_pool2d(x.to(target.device), backend=target.backend, **args)
    ref, ref_idx = TF.max_pool2d(x, **args)
    torch.testing.assert_close(out.cpu(), ref, equal_nan=True)
    assert torch.equal(idx.cpu(), ref_idx)


# ---- average pooling -----------------------------------------------------------------------

AVG_GRID = list(itertools.product([2, 3, (3, 2)], [None, 1, (2, 3)], [0, 1], [False, True], [True, False], [None, 5, -2]))


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, count_include_pad, divisor", AVG_GRID, ids=str)
def test_avg_pool2d_grid(kernel, stride, padding, ceil_mode, count_include_pad, divisor, target):
    args = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                count_include_pad=count_include_pad, divisor_override=divisor)
    check_against_torch(lambda x: F.avg_pool2d(x, backend=target.backend, **args), lambda x: TF.avg_pool2d(x, **args),
            _input(dtype=torch.float32), target, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_avg_pool2d_dtypes_channels_last(dtype, target):
    if dtype == torch.float64 and target.device != "cpu":
        pytest.skip("float64 is a CPU dtype for the GPU backends")
    args = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    check_against_torch(lambda x: F.avg_pool2d(x, backend=target.backend, **args), lambda x: TF.avg_pool2d(x, **args),
            _input((2, 6, 11, 10), dtype, channels_last=True), target, dtype)


# ---- adaptive pooling ----------------------------------------------------------------------

ADAPTIVE_SIZES = [1, (3, 2), (5, 7), (7, None), (9, 11), (2, 1)]


@pytest.mark.parametrize("size", ADAPTIVE_SIZES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_adaptive_avg_pool2d(size, channels_last, target):
    check_against_torch(lambda x: F.adaptive_avg_pool2d(x, size, backend=target.backend),
            lambda x: TF.adaptive_avg_pool2d(x, size), _input(channels_last=channels_last), target, torch.float64)


@pytest.mark.parametrize("size", ADAPTIVE_SIZES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_adaptive_max_pool2d(size, channels_last, target):
    check_against_torch(lambda x: F.adaptive_max_pool2d(x, size, return_indices=True, backend=target.backend),
            lambda x: TF.adaptive_max_pool2d(x, size, return_indices=True),
            _input(ties=True, channels_last=channels_last), target, torch.float64, exact=True, with_indices=True)


# ---- max unpooling -------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, stride, padding, output_size",
                         [(2, None, 0, None), (3, 2, 1, (8, 10)), (2, 2, 0, (9, 11)), (3, 3, 1, [2, 3, 8, 10])], ids=str)
def test_max_unpool2d(kernel, stride, padding, output_size, target):
    x = torch.randn(2, 3, 8, 10, dtype=torch.float64)
    pooled, idx = TF.max_pool2d(x, kernel, stride, padding, return_indices=True)
    ref_in = pooled.detach().requires_grad_()
    ref = TF.max_unpool2d(ref_in, idx, kernel, stride, padding, output_size)
    ours_in = pooled.detach().to(target.device).requires_grad_()
    out = F.max_unpool2d(ours_in, idx.to(target.device), kernel, stride, padding, output_size, backend=target.backend)
    torch.testing.assert_close(out.cpu(), ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, ours_in, g.to(target.device))[0].cpu(),
                               torch.autograd.grad(ref, ref_in, g)[0])


def test_max_unpool2d_module_round_trip(target):
    pool = cnnkernels.nn.MaxPool2d(2, return_indices=True, backend=target.backend)
    unpool = cnnkernels.nn.MaxUnpool2d(2, backend=target.backend)
    x = torch.rand(1, 2, 6, 6, device=target.device) + 0.1  # positive: the zeros never win
    out, idx = pool(x)
    restored = unpool(out, idx)
    # Every window keeps exactly its maximum, in place.
    assert torch.equal((restored != 0).sum().cpu(), torch.tensor(2 * 9))
    torch.testing.assert_close(TF.max_pool2d(restored.cpu(), 2), out.cpu())


def test_max_unpool2d_rejects_invalid_indices():
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="invalid max index"):
        F.max_unpool2d(x, torch.full((1, 1, 2, 2), 99, dtype=torch.long), 2, backend="cpu")


# ---- unbatched, gradcheck, opcheck, modules ------------------------------------------------


def test_unbatched(target):
    x = torch.randn(3, 7, 9, device=target.device)
    torch.testing.assert_close(F.max_pool2d(x, 3, 2, backend=target.backend).cpu(), TF.max_pool2d(x.cpu(), 3, 2))
    torch.testing.assert_close(F.avg_pool2d(x, 2, backend=target.backend).cpu(), TF.avg_pool2d(x.cpu(), 2))
    torch.testing.assert_close(F.adaptive_avg_pool2d(x, 2, backend=target.backend).cpu(),
                               TF.adaptive_avg_pool2d(x.cpu(), 2))


@pytest.mark.parametrize("fn", ["max", "avg", "adaptive_avg", "adaptive_max"])
def test_gradcheck(fn, target):
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, device=target.device, requires_grad=True)
    b = target.backend
    f = {
        "max": lambda x: F.max_pool2d(x, 3, 2, 1, dilation=(1, 2), backend=b),
        "avg": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False, backend=b),
        "adaptive_avg": lambda x: F.adaptive_avg_pool2d(x, (4, 3), backend=b),
        "adaptive_max": lambda x: F.adaptive_max_pool2d(x, (4, 3), backend=b),
    }[fn]
    assert torch.autograd.gradcheck(f, (x,), fast_mode=target.backend == "triton")


@pytest.mark.parametrize("fn", ["max", "avg", "avg_divisor", "adaptive_avg", "adaptive_max", "unpool"])
def test_gradgradcheck(fn, target):
    """Second derivatives: the backward operators' own autograd formulas."""
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, device=target.device, requires_grad=True)
    b = target.backend

    def unpool(x):
        out, indices = F.max_pool2d(x.detach(), 2, return_indices=True, backend=b)
        return F.max_unpool2d(out + x[..., :3, :3], indices, 2, output_size=(6, 7), backend=b)

    f = {
        "max": lambda x: F.max_pool2d(x, 3, 2, 1, dilation=(1, 2), backend=b),
        "avg": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False, backend=b),
        "avg_divisor": lambda x: F.avg_pool2d(x, 2, 1, divisor_override=3, backend=b),
        "adaptive_avg": lambda x: F.adaptive_avg_pool2d(x, (4, 3), backend=b),
        "adaptive_max": lambda x: F.adaptive_max_pool2d(x, (4, 3), backend=b),
        "unpool": unpool,
    }[fn]
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=target.backend == "triton")


def _opcheck_cases(ops):
    x = torch.randn(2, 3, 7, 9)
    xc = x.contiguous(memory_format=CL)
    out, idx = ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
    g = torch.randn_like(out)
    a_out, a_idx = ops.adaptive_max_pool2d(x, [3, 4])
    ag = torch.randn_like(a_out)
    return [
        (ops.max_pool2d, (x.clone().requires_grad_(), [3, 3], [2, 2], [1, 1], [1, 1], True)),
        (ops.max_pool2d, (xc, [2, 3], [1, 2], [1, 0], [2, 1], False)),
        (ops.max_pool2d_backward, (g, idx, list(x.shape), [3, 3], [2, 2], [1, 1], [1, 1])),
        (ops.avg_pool2d, (x.clone().requires_grad_(), [3, 2], [2, 2], [1, 1], True, False, None)),
        (ops.avg_pool2d, (xc, [3, 3], [1, 2], [0, 1], False, True, 4)),
        (ops.avg_pool2d_backward, (g, list(x.shape), [3, 3], [2, 2], [1, 1], True, None)),
        (ops.adaptive_avg_pool2d, (x.clone().requires_grad_(), [3, 4])),
        (ops.adaptive_avg_pool2d_backward, (ag, list(x.shape))),
        (ops.adaptive_max_pool2d, (xc.clone().requires_grad_(), [3, 4])),
        (ops.adaptive_max_pool2d_backward, (ag, a_idx, list(x.shape))),
        (ops.max_unpool2d, (out.detach().clone().requires_grad_(), idx, [7, 9])),
        (ops.max_unpool2d_backward, (torch.randn(2, 3, 7, 9), idx)),
    ]


# CPU tensors: the cpu backend, and triton where the interpreter is on (cuda: test_pool_cuda).
@pytest.mark.parametrize("backend", [t.values[0].backend for t in TARGETS if t.values[0].device == "cpu"])
def test_opcheck(backend):
    for op, args in _opcheck_cases(pool_ops.BACKEND_OPS[backend]):
        torch.library.opcheck(op, args)


def test_modules_match_torch(target):
    x = torch.randn(2, 3, 9, 8)
    pairs = [
        (cnnkernels.nn.MaxPool2d(3, 2, 1, ceil_mode=True, backend=target.backend), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        (cnnkernels.nn.AvgPool2d(2, count_include_pad=False, backend=target.backend), torch.nn.AvgPool2d(2, count_include_pad=False)),
        (cnnkernels.nn.AdaptiveAvgPool2d((1, 1), backend=target.backend), torch.nn.AdaptiveAvgPool2d((1, 1))),
        (cnnkernels.nn.AdaptiveMaxPool2d(2, backend=target.backend), torch.nn.AdaptiveMaxPool2d(2)),
    ]
    for ours, theirs in pairs:
        assert repr(theirs) in repr(ours) or type(theirs).__name__ in repr(ours)
        torch.testing.assert_close(ours(x.to(target.device)).cpu(), theirs(x))


# ---- bad input -----------------------------------------------------------------------------

XP = torch.randn(2, 3, 5, 5)

BAD_CALLS = {
    "pad_more_than_half": ("max_pool2d", (XP, 3), dict(padding=2), message_names("pad should be at most half")),
    "negative_pad": ("max_pool2d", (XP, 2), dict(padding=-1), "pad must be non-negative"),
    "zero_kernel": ("max_pool2d", (XP, 0), {}, "stride should not be zero"),
    "zero_stride": ("max_pool2d", (XP, 3), dict(stride=0), "stride should not be zero"),
    "zero_dilation": ("max_pool2d", (XP, 3), dict(dilation=0), "dilation should be greater than zero"),
    "output_too_small": ("max_pool2d", (XP, 6), {}, "Output size is too small"),
    "rank_2": ("max_pool2d", (torch.randn(5, 5), 2), {}, "3D or 4D"),
    "zero_channels": ("max_pool2d", (torch.randn(2, 0, 5, 5), 2), {}, "3D or 4D"),
    "pad_vs_undilated_kernel": ("max_pool2d", (torch.randn(1, 1, 9, 9), 3), dict(dilation=2, padding=2),
                                "pad should be smaller than or equal to half of kernel size"),
    "avg_pad": ("avg_pool2d", (XP, 3), dict(padding=2), "pad should be at most half"),
    "avg_too_small": ("avg_pool2d", (XP, 6), {}, "Output size is too small"),
    "avg_divisor_zero": ("avg_pool2d", (XP, 2), dict(divisor_override=0), "divisor must be not zero"),
    "adaptive_negative": ("adaptive_avg_pool2d", (XP, (2, -1)), {}, "greater than or equal to 0"),
    "adaptive_max_negative": ("adaptive_max_pool2d", (XP, (-1, 2)), {}, "greater than or equal to 0"),
    # torch keeps the window arguments in 32-bit ints; a stride or dilation past that would
    # otherwise still give a well-defined (one-window) result.
    "stride_past_int32": ("max_pool2d", (XP, 2), dict(stride=2**31), "cannot be converted to type int"),
    "dilation_past_int32": ("max_pool2d", (XP, 1), dict(dilation=(1, 2**62)), "cannot be converted to type int"),
    "avg_stride_past_int32": ("avg_pool2d", (XP, 2), dict(stride=(2**31, 1)), "cannot be converted to type int"),
    # Scalar arguments torch's argument parser refuses: a bool must be a bool, an int an int.
    "ceil_mode_int": ("max_pool2d", (XP, 2), dict(ceil_mode=1), message_names("'ceil_mode'", "bool", "int")),
    "avg_ceil_mode_none": ("avg_pool2d", (XP, 2), dict(ceil_mode=None), message_names("'ceil_mode'", "NoneType")),
    "count_include_pad_int": ("avg_pool2d", (XP, 2), dict(count_include_pad=1), "'count_include_pad'"),
    "divisor_override_float": ("avg_pool2d", (XP, 2), dict(divisor_override=2.0), "'divisor_override'"),
    "adaptive_float_size": ("adaptive_avg_pool2d", (XP, (2.0, 2)), {}, message_names("'output_size'", "(2.0, 2)")),
    "adaptive_bool_size": ("adaptive_max_pool2d", (XP, (True, 2)), {}, "'output_size'"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_arguments_raise_like_torch(name):
    fn, args, kwargs, match = BAD_CALLS[name]
    raises_like_torch(lambda: getattr(F, fn)(*args, **kwargs), lambda: getattr(TF, fn)(*args, **kwargs), match)


def test_integer_like_sizes_are_taken_like_torch():
    # NumPy integers and 0-d integer tensors count as ints, as in torch's argument parser.
    for size in ((np.int64(2), np.int32(3)), (torch.tensor(2), 3)):
        torch.testing.assert_close(F.adaptive_avg_pool2d(XP, size), TF.adaptive_avg_pool2d(XP, size))
    torch.testing.assert_close(F.avg_pool2d(XP, 2, divisor_override=np.int64(3)),
                               TF.avg_pool2d(XP, 2, divisor_override=np.int64(3)))
    pooled, indices = TF.max_pool2d(XP, 2, return_indices=True)
    with pytest.raises(TypeError, match=message_names("max_unpool2d", "'output_size'", "[4.0, 5]")):
        F.max_unpool2d(pooled, indices, 2, output_size=[4.0, 5])


@pytest.mark.parametrize("fn", ["max_pool2d", "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d"])
def test_global_pooling_keeps_the_input_gradient_channels_last(fn, target):
    # A global pooling's (N, C, 1, 1) output, and the plain contiguous gradient a flatten and a
    # linear layer hand back, are laid out alike in both formats, and torch's contiguous() keeps
    # NCHW strides: the input gradient must still come back channels_last, as torch's does
    # (adaptive_avg_pool2d's too, where torch's own goes through mean() and comes back NCHW).
    pools = {"max_pool2d": lambda f, x: f.max_pool2d(x, 4), "avg_pool2d": lambda f, x: f.avg_pool2d(x, 4),
             "adaptive_max_pool2d": lambda f, x: f.adaptive_max_pool2d(x, 1),
             "adaptive_avg_pool2d": lambda f, x: f.adaptive_avg_pool2d(x, 1)}
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=CL)
    grad = torch.randn(2, 8, 1, 1)
    ref = _leaf(x, "cpu")
    (expected,) = torch.autograd.grad(pools[fn](TF, ref), ref, grad)
    ours = _leaf(x, target.device)
    with cnnkernels.backend(target.backend):
        (actual,) = torch.autograd.grad(pools[fn](F, ours), ours, grad.to(target.device))
    assert memory_format_of(actual) == CL
    torch.testing.assert_close(actual.cpu(), expected)


# Direct operator calls whose tensors disagree in size, or whose arguments the functional would
# have refused: every backend's operator raises (the C++ host checks, and their Python mirrors in
# _pool_geometry for the Triton launchers), rather than gathering past the end of a tensor.
_G, _I = torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2, dtype=torch.long)
BAD_OPERATOR_CALLS = {
    "max_backward_planes": ("max_pool2d_backward", (_G, _I, [4, 3, 4, 4], [2, 2], [2, 2], [0, 0], [1, 1]),
                            "does not match the input size"),
    "max_backward_indices": ("max_pool2d_backward", (_G, _I[:, :, :1], [1, 3, 4, 4], [2, 2], [2, 2], [0, 0], [1, 1]),
                             "expected int64 indices"),
    "max_zero_kernel": ("max_pool2d", (XP, [0, 2], [1, 1], [0, 0], [1, 1], False), "kernel size should be greater"),
    "max_backward_pad": ("max_pool2d_backward", (_G, _I, [1, 3, 4, 4], [2, 2], [2, 2], [2, 0], [1, 1]),
                         "pad should be at most half"),
    "avg_zero_stride": ("avg_pool2d", (XP, [2, 2], [0, 1], [0, 0], False, True, None), "stride should not be zero"),
    "avg_zero_divisor": ("avg_pool2d", (XP, [2, 2], [1, 1], [0, 0], False, True, 0), "divisor must be not zero"),
    "avg_backward_planes": ("avg_pool2d_backward", (_G, [1, 4, 4, 4], [2, 2], [2, 2], [0, 0], True, None),
                            "does not match the input size"),
    "adaptive_negative": ("adaptive_avg_pool2d", (XP, [2, -1]), "greater than or equal to 0"),
    "adaptive_backward_planes": ("adaptive_avg_pool2d_backward", (_G, [4, 3, 4, 4]), "does not match the input size"),
    "adaptive_max_backward_indices": ("adaptive_max_pool2d_backward", (_G, _I.int(), [1, 3, 4, 4]),
                                      "expected int64 indices"),
    "unpool_indices": ("max_unpool2d", (torch.randn(2, 3, 2, 2), _I, [4, 4]), "expected int64 indices"),
    "unpool_backward_planes": ("max_unpool2d_backward", (torch.randn(1, 3, 4, 4), _I.expand(4, 3, 2, 2)),
                               "do not match grad_output"),
}


@pytest.mark.parametrize("name", list(BAD_OPERATOR_CALLS))
def test_operators_check_their_arguments(name, target):
    operator_raises(pool_ops.BACKEND_OPS, target, BAD_OPERATOR_CALLS[name])


def test_operators_reject_window_arguments_past_int32():
    # The C++ host checks (csrc/host/pool.h, the cpu and cuda backends' both), reached without
    # the functional's: the schema's int[2] arguments are 64-bit, and torch takes 32-bit ones.
    ops = pool_ops.BACKEND_OPS["cpu"]
    with pytest.raises(RuntimeError, match="cannot be converted to type int"):
        ops.max_pool2d(XP, [2, 2], [2**31, 1], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="cannot be converted to type int"):
        ops.max_pool2d_backward(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.long), list(XP.shape),
                                [2, 2], [1, 1], [0, 0], [1, 2**40])


# ---- integer inputs and integer-like arguments -------------------------------------------
# torch's CPU max pooling takes every integer type and its average pooling int64 (the quotient
# truncated toward zero); the cpu backend takes the same, and exact integers must match exactly.

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
INTEGER_WINDOWS = {
    "2x2": dict(kernel_size=2),
    "3x3s2p1-ceil": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    "2x3-dilated": dict(kernel_size=(2, 3), stride=1, padding=(1, 1), dilation=2),
}


def _integer_input(dtype, values: str, channels_last: bool, seed: int) -> torch.Tensor:
    info = torch.iinfo(dtype)
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3, 7, 8)
    if values == "full-range":
        x = torch.randint(max(info.min, -(2**40)), min(info.max, 2**40), shape, generator=gen)
    elif values == "ties":
        x = torch.randint(0, 3, shape, generator=gen)
    else:  # "minimum": most windows hold only the type's lowest value; their index is the first tap
        x = torch.full(shape, info.min).masked_fill(torch.rand(shape, generator=gen) < 0.1, info.max)
    x = x.to(dtype)
    return x.contiguous(memory_format=CL) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("values", ["full-range", "ties", "minimum"])
@pytest.mark.parametrize("window", list(INTEGER_WINDOWS))
@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_integer_max_pool_matches_torch(dtype, window, values, channels_last):
    x = _integer_input(dtype, values, channels_last, seed=len(window))
    kwargs = INTEGER_WINDOWS[window]
    out, idx = F.max_pool2d(x, return_indices=True, backend="cpu", **kwargs)
    ref, ref_idx = TF.max_pool2d(x, return_indices=True, **kwargs)
    assert out.dtype == dtype
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    assert out.stride() == ref.stride()


@pytest.mark.parametrize(
    "kwargs",
    [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     dict(kernel_size=3, padding=1, divisor_override=4), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))],
    ids=["2x2", "exclude-pad-ceil", "divisor-override", "asymmetric"],
)
@pytest.mark.parametrize("magnitude", [1000, 2**50])
def test_int64_avg_pool_matches_torch(kwargs, magnitude):
    # Negative sums check the truncation toward zero; 2^50 checks the sum stays in int64.
    x = torch.randint(-magnitude, magnitude, (2, 3, 7, 6), generator=torch.Generator().manual_seed(magnitude % 97))
    out = F.avg_pool2d(x, backend="cpu", **kwargs)
    ref = TF.avg_pool2d(x, **kwargs)
    assert out.dtype == torch.int64 and torch.equal(out, ref)


INTEGER_REJECTED = {
    "avg_pool_int32": ("avg_pool2d", (XP.int(), 2)),
    "adaptive_avg_int64": ("adaptive_avg_pool2d", (XP.long(), 2)),
    "adaptive_max_int64": ("adaptive_max_pool2d", (XP.long(), 2)),
    "max_pool_bool": ("max_pool2d", (XP > 0, 2)),
    "unpool_int64": ("max_unpool2d", (XP.long()[:, :, :2, :2], torch.zeros(2, 3, 2, 2, dtype=torch.long), 2)),
}


@pytest.mark.parametrize("name", list(INTEGER_REJECTED))
def test_integer_inputs_torch_rejects_are_rejected(name):
    fn, args = INTEGER_REJECTED[name]
    raises_like_torch(lambda: getattr(F, fn)(*args, backend="cpu"), lambda: getattr(TF, fn)(*args), "got")


@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0].backend != "cpu"])
def test_integer_input_on_the_gpu_backends_is_rejected(target):
    with pytest.raises(RuntimeError, match="float32"):
        F.max_pool2d(XP.int().to(target.device), 2, backend=target.backend)


INT_LIKE_POOL_CALLS = {
    "tensor_kernel": ("max_pool2d", (torch.tensor(3),), dict(stride=(np.int64(2), torch.tensor(1)))),
    "numpy_padding": ("max_pool2d", (3,), dict(padding=np.int32(1), dilation=torch.tensor(1))),
    "avg_tensor_divisor": ("avg_pool2d", ((torch.tensor(2), 3),), dict(divisor_override=torch.tensor(5))),
}


@pytest.mark.parametrize("name", list(INT_LIKE_POOL_CALLS))
def test_integer_like_arguments_are_taken_like_torch(name):
    fn, args, kwargs = INT_LIKE_POOL_CALLS[name]
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(getattr(F, fn)(x, *args, backend="cpu", **kwargs), getattr(TF, fn)(x, *args, **kwargs))


@pytest.mark.parametrize("value", [torch.tensor([2, 2]), torch.tensor(2.0), 2.5], ids=repr)
def test_non_integer_kernel_sizes_raise_like_torch(value):
    raises_like_torch(lambda: F.max_pool2d(XP, value), lambda: TF.max_pool2d(XP, value), "kernel_size")


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_backward_ignores_indices_outside_their_window(channels_last, target):
    """A window gives its gradient only to a pixel that is one of its taps: an index elsewhere in
    the plane, past it or negative adds nothing (every backend alike, and never out of bounds)."""
    x = _input((2, 3, 7, 6), torch.float64, channels_last=channels_last)
    kernel, stride, padding, dilation = [3, 2], [2, 1], [1, 0], [1, 2]
    _, idx = TF.max_pool2d(x, kernel, stride, padding, dilation, return_indices=True)
    g = torch.randn(idx.shape, dtype=torch.float64)
    bad = torch.rand(idx.shape) < 0.4
    # Three rows down (cyclically) leaves a window's three rows; then past the plane, negative.
    strays = torch.stack([(idx + 3 * 6) % 42, torch.full_like(idx, 42), idx + 100, torch.full_like(idx, -1),
                          -idx - 7])
    wrong = torch.where(bad, strays.gather(0, torch.randint(0, 5, (1, *idx.shape))).squeeze(0), idx)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(
        g.masked_fill(bad, 0), x, kernel, stride, padding, dilation, False, idx)
    ops = pool_ops.ops_for("max_pool2d", x.to(target.device), target.backend)
    ours = ops.max_pool2d_backward(g.to(target.device), wrong.to(target.device), list(x.shape), kernel, stride,
                                   padding, dilation)
    assert_close(ours.cpu(), expected, torch.float64)


def test_empty_batch(target):
    x = torch.randn(0, 3, 6, 6, device=target.device, requires_grad=True)
    out = F.max_pool2d(x, 2, backend=target.backend)
    assert out.shape == (0, 3, 3, 3)
    assert torch.autograd.grad(out.sum(), x)[0].shape == x.shape


# ---- Triton tuning configurations and torch.compile ----------------------------------------

TRITON_DEVICE = next((t.values[0].device for t in TARGETS if t.values[0].backend == "triton"), None)


@pytest.mark.skipif(TRITON_DEVICE is None, reason="triton needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_triton_config(channels_last):
    from cnnkernels.triton import pool as T

    dev = TRITON_DEVICE
    x = _input((2, 5, 9, 8), torch.float32, ties=True, channels_last=channels_last).to(dev)
    k, s, p, d = [3, 3], [2, 2], [1, 1], [1, 2]
    ref, ref_idx = TF.max_pool2d(x.cpu(), k, s, p, d, ceil_mode=True, return_indices=True)
    g = torch.randn(ref.shape).to(dev)
    ref_dx = torch.ops.aten.max_pool2d_with_indices_backward(g.cpu(), x.cpu(), k, s, p, d, True, ref_idx)
    ref_avg = TF.avg_pool2d(x.cpu(), k, s, p, ceil_mode=True, count_include_pad=False)
    g_avg = torch.randn(ref_avg.shape).to(dev)
    ref_avg_dx = torch.ops.aten.avg_pool2d_backward(g_avg.cpu(), x.cpu(), k, s, p, True, False, None)
    ref_ad = TF.adaptive_avg_pool2d(x.cpu(), (4, 3))
    ref_am, ref_am_idx = TF.adaptive_max_pool2d(x.cpu(), (4, 3), return_indices=True)
    for config in T.TILE_CONFIGS:
        out, idx = T.max_pool2d_forward(x, k, s, p, d, True, config=config)
        assert torch.equal(out.cpu(), ref) and torch.equal(idx.cpu(), ref_idx), config
        dx = T.max_pool2d_backward(g, idx, list(x.shape), k, s, p, d, config=config)
        torch.testing.assert_close(dx.cpu(), ref_dx, msg=str(config))
        avg = T.avg_pool2d_forward(x, k, s, p, True, False, None, config=config)
        torch.testing.assert_close(avg.cpu(), ref_avg, msg=str(config))
        avg_dx = T.avg_pool2d_backward(g_avg, list(x.shape), k, s, p, False, None, config=config)
        torch.testing.assert_close(avg_dx.cpu(), ref_avg_dx, msg=str(config))
        torch.testing.assert_close(T.adaptive_avg_pool2d_forward(x, [4, 3], config=config).cpu(), ref_ad)
        am, am_idx = T.adaptive_max_pool2d_forward(x, [4, 3], config=config)
        assert torch.equal(am.cpu(), ref_am) and torch.equal(am_idx.cpu(), ref_am_idx), config
        unpooled = T.max_unpool2d_forward(out, idx, [9, 8], config=config)
        torch.testing.assert_close(unpooled.cpu(), TF.max_unpool2d(ref, ref_idx, k, s, p, output_size=[9, 8]))


@pytest.mark.parametrize("kernel_name", ["_max_pool2d_kernel", "_max_pool2d_backward_kernel", "_avg_pool2d_kernel",
                                         "_avg_pool2d_backward_kernel", "_adaptive_avg_pool2d_kernel",
                                         "_adaptive_avg_pool2d_backward_kernel", "_adaptive_max_pool2d_kernel",
                                         "_adaptive_max_pool2d_backward_kernel", "_max_unpool2d_kernel",
                                         "_max_unpool2d_backward_kernel"])
def test_triton_autotune_prunes_configs_by_layout(kernel_name):
    """Each pooling kernel's autotuner tries only the tile configs for the layout its tensors
    share (every config when the layouts differ or one is ambiguous), reading the strides under
    the names the kernel really has."""
    pytest.importorskip("triton")
    from cnnkernels.triton import pool as T

    kernel = getattr(T, kernel_name)
    tuner = T._TUNED[kernel]
    read, written = ("sd", "sx") if "backward" in kernel_name else ("sx", "sy")
    strides = {"channels_last": {"c": 1, "w": 64}, "nchw": {"c": 90, "w": 1}, "one column": {"c": 9, "w": 9}}

    def kept(read_layout, written_layout):
        named = dict.fromkeys(kernel.arg_names, 7)
        for tensor, layout in ((read, read_layout), (written, written_layout)):
            assert f"{tensor}_c" in named and f"{tensor}_w" in named
            named.update({f"{tensor}_{d}": v for d, v in strides[layout].items()})
        return [T.TILE_CONFIGS.index(c) for c in tuner.early_config_prune(tuner.configs, named)]

    assert kept("channels_last", "channels_last") == [0, 1, 2]
    assert kept("nchw", "nchw") == [0, 3, 4, 5]
    assert kept("channels_last", "nchw") == kept("nchw", "one column") == list(range(len(T.TILE_CONFIGS)))


def test_torch_compile_fullgraph_lenet(target):
    torch._dynamo.reset()
    net = cnnkernels.models.get_model("lenet5").to(target.device)
    for m in net.modules():
        if hasattr(m, "backend"):
            m.backend = target.backend
    x = torch.randn(4, 1, 32, 32, device=target.device)
    out = torch.compile(net, fullgraph=True)(x)
    ref = net(x)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    torch.testing.assert_close(grads, ref_grads)
