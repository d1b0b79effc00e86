"""The CUDA backend (csrc/cuda: host code and kernels) run on the CPU by the host emulator in
tests/cuda_emulator, against torch.nn.functional and torch.autograd. The emulated build registers
the CUDA host functions as CPU kernels of the operator library cnnkernels_emu, so
torch.ops.cnnkernels_emu.conv2d(cpu_tensor, ...) runs csrc/cuda/conv.cpp and the kernels of
conv_kernel.cu, thread by thread. A fault the emulator detects (invalid launch, divergent barrier
or warp operation, misaligned access, ...) reaches the host code as a launch error, which it turns
into an exception; one that the host code does not check fails the test afterwards. The build takes
under a minute on 2 cores and is cached in pytest's cache directory."""
from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF

from cuda_emulator.build import build, missing_toolchain
from helpers import assert_close, same_layout

CL = torch.channels_last
HALF = (torch.float16, torch.bfloat16)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def emulator(request):
    reason = missing_toolchain()
    if reason is not None:
        pytest.skip(f"the CUDA host emulator cannot be built here: {reason}")
    cache = getattr(request.config, "cache", None)
    build_dir = Path(cache.mkdir("cnnkernels-cuda-emulator") if cache else tempfile.mkdtemp(prefix="cnnk-emu-"))
    start = time.perf_counter()
    module = build(build_dir)
    print(f"\nemulated CUDA backend built in {time.perf_counter() - start:.1f} s ({build_dir})")
    module.take_unreported_errors()
    return module


@pytest.fixture(autouse=True)
def emu(emulator):
    """The emulator module; fails the test on a fault that the host code did not report."""
    emulator.set_conv_test_hooks()
    emulator.set_pool_test_hooks()
    emulator.reset_stats()
    yield emulator
    emulator.set_conv_test_hooks()
    emulator.set_pool_test_hooks()
    errors = emulator.take_unreported_errors()
    assert not errors, "unchecked kernel faults:\n" + "\n".join(errors)


def ops():
    return torch.ops.cnnkernels_emu


def ref_dtype(dtype):
    """torch's reference runs in fp32 for fp16/bf16 inputs (ours accumulates in fp32)."""
    return torch.float32 if dtype in HALF else dtype


def launched(emu, *words):
    """Whether some launch since the test began names every one of `words`."""
    return any(all(w in name for w in words) for name in emu.launches())


# ---- conv2d --------------------------------------------------------------------------------


def check_conv(x, w, b, stride, padding, dilation, groups, grad=None):
    """Forward, backward-input, backward-weight and backward-bias against torch's conv2d and its
    autograd on the same inputs; padding is (top, bottom, left, right), applied for torch by an
    explicit pad. Layouts: channels_last whenever an operand is, as torch's convolution."""
    dtype = x.dtype
    rd = ref_dtype(dtype)
    xr, wr = x.detach().to(rd).requires_grad_(), w.detach().to(rd).requires_grad_()
    br = None if b is None else b.detach().to(rd).requires_grad_()
    top, bottom, left, right = padding
    ref = TF.conv2d(TF.pad(xr, (left, right, top, bottom)), wr, br, stride, 0, dilation, groups)
    cl = x.is_contiguous(memory_format=CL) and not x.is_contiguous() or w.is_contiguous(memory_format=CL) and not w.is_contiguous()
    layout = CL if cl else torch.contiguous_format
    if grad is None:
        grad = torch.randn(ref.shape, dtype=dtype).contiguous(memory_format=layout)
    leaves = [xr, wr] + ([br] if b is not None else [])
    ref_grads = torch.autograd.grad(ref, leaves, grad.to(rd))

    conv = (list(stride), list(padding), list(dilation), groups)
    out = ops().conv2d(x, w, b, *conv)
    dx = ops().conv2d_backward_input(grad, w, list(x.shape), *conv)
    dw = ops().conv2d_backward_weight(grad, x, list(w.shape), *conv)
    ours = [dx, dw] + ([ops().conv2d_backward_bias(grad)] if b is not None else [])
    # Gradients sum over many products: the absolute tolerance grows with the reduction length.
    scale = max(1.0, (x.shape[0] * x.shape[2] * x.shape[3] / 64) ** 0.5)
    assert_close(out, ref.detach(), dtype, scale=max(1.0, (w[0].numel() / 64) ** 0.5))
    for name, a, e in zip(["grad_input", "grad_weight", "grad_bias"], ours, ref_grads):
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, scale)
    for t in (out, dx, dw):
        assert same_layout(t, torch.empty(t.shape).contiguous(memory_format=layout)), (t.shape, t.stride())


def conv_inputs(n, c, h, w, k, kernel, groups, dtype=torch.float32, bias=True, channels_last=False):
    x = torch.randn(n, c, h, w, dtype=torch.float64).to(dtype)
    wt = torch.randn(k, c // groups, *kernel, dtype=torch.float64).to(dtype)
    b = torch.randn(k, dtype=torch.float64).to(dtype) if bias else None
    if channels_last:
        x, wt = x.contiguous(memory_format=CL), wt.contiguous(memory_format=CL)
    return x, wt, b


# (N, C, H, W, K, kernel, stride, padding (t, b, l, r), dilation, groups)
CONV_CASES = {
    "3x3-pad1": (2, 4, 9, 11, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "1x1": (2, 8, 5, 7, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "stride-2x3": (2, 4, 9, 11, 6, (2, 4), (2, 3), (1, 2, 0, 1), (1, 1), 1),
    "asymmetric-same-even": (1, 4, 6, 7, 5, (4, 4), (1, 1), (1, 2, 1, 2), (1, 1), 1),
    "dilation": (2, 3, 10, 9, 4, (3, 2), (1, 2), (2, 2, 1, 0), (2, 3), 1),
    "groups-2": (2, 6, 8, 8, 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 2),
    "depthwise": (2, 8, 7, 9, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8),
    "depthwise-multiplier-stride": (1, 4, 9, 8, 8, (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 4),
    "stride-past-kernel": (1, 2, 8, 8, 3, (3, 3), (4, 4), (2, 2, 2, 2), (1, 1), 1),
    "whole-input-kernel": (3, 3, 7, 5, 5, (7, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv2d(case, channels_last):
    n, c, h, w, k, kernel, stride, padding, dilation, groups = case
    x, wt, b = conv_inputs(n, c, h, w, k, kernel, groups, channels_last=channels_last)
    check_conv(x, wt, b, stride, padding, dilation, groups)


# Channels in multiples of 8: both layouts take the 16-byte vector loads (cp.async on the
# tensor-core engine; NCHW operands through channels_last copies, see NCHW_COPY_CASES), fp64 the
# scalar ones; fp16/bf16 run on WMMA, fp32/fp64 on the SIMT engine.
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv2d_dtypes(dtype, channels_last, emu):
    x, wt, b = conv_inputs(2, 16, 12, 12, 24, (3, 3), 1, dtype, channels_last=channels_last)
    check_conv(x, wt, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    engine = "WmmaEngine" if dtype in HALF else "SimtEngine"
    assert launched(emu, engine, "ForwardProblem", "false, false" if dtype == torch.float64 else "true, true")


# (dtype, channels = output channels, kernel, stride, groups) -> the load modes (A, B) each problem
# launches with, on a 12x11 NCHW input (264 output pixels at stride 1: the weight is read by 3 row
# tiles). NCHW operands reach the kernels as channels_last copies where their channels per group
# fill 16-byte runs (8 fp16/bf16 elements, 4 fp32) and the kernels read each element at least
# kCopyMinReads = 3 times (conv_kernel.h): a 3x3 layer's activations 9 times, a 1x1 stride-2
# layer's input a quarter of a time and its grad_output once. Backward-weight's input is never
# copied when its columns are (channel, tap) pairs (fewer than 16 channels per group): it is read
# element by element there in any layout.
RUNS, SCALAR = "true, true", "false, false"
PROBLEMS = ("ForwardProblem", "BackwardInputProblem", "BackwardWeightProblem")
NCHW_COPY_CASES = {  # the modes in PROBLEMS' order
    "bf16-16": (torch.bfloat16, 16, 3, 1, 1, (RUNS, RUNS, RUNS)),
    "bf16-20": (torch.bfloat16, 20, 3, 1, 1, (SCALAR, SCALAR, SCALAR)),
    "fp32-20": (torch.float32, 20, 3, 1, 1, (RUNS, RUNS, RUNS)),
    "fp32-18": (torch.float32, 18, 3, 1, 1, (SCALAR, SCALAR, SCALAR)),
    # Backward-weight reads grad_output once per tile of (channel, tap) columns, here 72: once.
    "bf16-8-few-channels": (torch.bfloat16, 8, 3, 1, 1, (RUNS, RUNS, SCALAR)),
    "bf16-32-groups-2": (torch.bfloat16, 32, 3, 1, 2, (RUNS, RUNS, RUNS)),
    "bf16-24-groups-2": (torch.bfloat16, 24, 3, 1, 2, (SCALAR, SCALAR, SCALAR)),
    # The 1x1 weight (K, C, 1, 1) is channel-contiguous in NCHW already.
    "bf16-16-1x1-stride-2": (torch.bfloat16, 16, 1, 2, 1, ("false, true", "false, true", SCALAR)),
}


@pytest.mark.parametrize("case", NCHW_COPY_CASES.values(), ids=NCHW_COPY_CASES.keys())
def test_conv2d_nchw_operands_load_runs_where_copies_pay(case, emu):
    """NCHW operands in, NCHW results out (check_conv checks the layouts), and each GEMM operand
    loaded in the mode the copy rule gives it."""
    dtype, channels, kernel, stride, groups, modes = case
    x, wt, b = conv_inputs(2, channels, 12, 11, channels, (kernel, kernel), groups, dtype)
    check_conv(x, wt, b, (stride, stride), (kernel // 2,) * 4, (1, 1), groups)
    for problem, mode in zip(PROBLEMS, modes):
        assert launched(emu, problem, mode), (problem, mode, list(emu.launches()))


@pytest.mark.parametrize("channels", [8, 64, 96, 128, 160, 288])
def test_conv2d_pipeline_depths(channels, emu):
    """The four-stage cp.async pipeline (tensor cores, 16-byte loads for both operands) over
    reductions of 1 to 9 slices of 32: fewer slices than stages, exactly as many, and more. The
    emulator holds each copy group back until its wait retires it, so a stage multiplied before
    its copies were waited for would hold stale data. The 1x1 weight has torch's strides
    (C, 1, 1, 1), whose size-1 dimensions' strides do not stop its vector loads."""
    x, wt, b = conv_inputs(2, channels, 5, 6, 24, (1, 1), 1, torch.bfloat16, channels_last=True)
    assert wt.stride() == (channels, 1, 1, 1)
    check_conv(x, wt, b, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    for problem in ("ForwardProblem", "BackwardInputProblem"):
        assert launched(emu, "WmmaEngine", problem, "true, true"), (problem, list(emu.launches()))


def test_conv2d_size_one_dimensions_with_any_stride(emu):
    """A dimension of size 1 may have any stride; being indexed at 0 only, it does not stop the
    16-byte loads (which the emulator faults on when misaligned) nor change the result."""
    x = torch.randn(1, 16, 6, 5, dtype=torch.float16).contiguous(memory_format=CL)
    x = x.as_strided(x.shape, (481, 1, 5 * 16, 16))  # batch 1, an odd stride
    wt = torch.randn(24, 16, 1, 1, dtype=torch.float16)
    wt = wt.as_strided(wt.shape, (16, 1, 3, 5))
    check_conv(x, wt, None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    for problem in ("ForwardProblem", "BackwardInputProblem"):
        assert launched(emu, "WmmaEngine", problem, "true, true"), (problem, list(emu.launches()))


@pytest.mark.parametrize("channels", [8, 16], ids=["channel_tap_columns", "channel_columns"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("path", ["large-tile", "small-tile", "narrow-tile", "index64"])
def test_conv2d_test_hooks(path, dtype, channels, emu):
    """The paths a small problem does not take by itself: 128x128 tiles, 16-column tiles over
    several column tiles, 64-bit offsets; each with backward-weight's columns as (channel, tap)
    pairs (fewer than 16 channels) and as channels."""
    emu.set_conv_test_hooks(**{"large-tile": dict(force_tile=1), "small-tile": dict(force_tile=2),
                               "narrow-tile": dict(force_tile=3), "index64": dict(index32_limit=1)}[path])
    x, wt, b = conv_inputs(2, channels, 9, 7, 24, (3, 2), 1, dtype, channels_last=True)
    check_conv(x, wt, b, (2, 1), (1, 0, 1, 1), (1, 2), 1)
    engine = "WmmaEngine" if dtype in HALF else "SimtEngine"
    narrow = "64, 16" if dtype in HALF else "64, 64"  # the SIMT engine has no narrow tile
    size = {"large-tile": "128, 128", "small-tile": "64, 64", "narrow-tile": narrow, "index64": "64, 64"}[path]
    index = "long int>" if path == "index64" else "int>"
    for problem in ("ForwardProblem", "BackwardInputProblem", "BackwardWeightProblem"):
        assert launched(emu, engine, size, problem, index), (problem, list(emu.launches()))


def test_conv2d_few_columns_take_the_narrow_tile(emu):
    """fp16/bf16 GEMMs of at most 16 columns (here backward-input's 3 input channels, forward's
    12 output channels) run 16-column tiles; wider ones do not."""
    x, wt, b = conv_inputs(2, 3, 9, 8, 12, (3, 3), 1, torch.bfloat16, channels_last=True)
    check_conv(x, wt, b, (2, 2), (1, 1, 1, 1), (1, 1), 1)
    for problem in ("ForwardProblem", "BackwardInputProblem"):
        assert launched(emu, "WmmaEngine", "64, 16", problem), (problem, list(emu.launches()))
    assert not launched(emu, "WmmaEngine", "64, 16", "BackwardWeightProblem")  # 27 (channel, tap) columns


def test_conv2d_strided_operands():
    """Autograd hands backward expanded (stride-0) gradients; operands may be any view."""
    x = torch.randn(2, 5, 11, 8).transpose(2, 3)  # (2, 5, 8, 11), non-dense strides
    wt = torch.randn(3, 7, 5, 3)[:, 1:6]
    b = torch.randn(3)
    out_shape = (2, 3, 8, 11)
    grad = torch.randn(1, 3, 1, 1).expand(out_shape)
    check_conv(x, wt, b, (1, 1), (2, 2, 1, 1), (1, 1), 1, grad=grad)


def test_conv2d_empty():
    x, wt, b = conv_inputs(0, 4, 5, 5, 6, (3, 3), 1)
    out = ops().conv2d(x, wt, b, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    assert out.shape == (0, 6, 5, 5)
    grad = torch.randn(0, 6, 5, 5)
    assert torch.equal(ops().conv2d_backward_weight(grad, x, list(wt.shape), [1, 1], [1, 1, 1, 1], [1, 1], 1),
                       torch.zeros_like(wt))
    assert torch.equal(ops().conv2d_backward_bias(grad), torch.zeros(6))


def offset_view(t):
    """t's values in t's layout, at a data pointer one element past a 16-byte boundary."""
    view = torch.empty(t.numel() + 1, dtype=t.dtype)[1:].as_strided(t.shape, t.stride())
    return view.copy_(t).requires_grad_(t.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_misaligned_tensors(dtype):
    """Dense tensors whose data does not start on a 16-byte boundary: 16-byte vector accesses
    would be misaligned (the emulator faults on any), so the host code must choose scalar ones."""
    x, wt, b = conv_inputs(2, 16, 6, 7, 8, (3, 3), 1, dtype, channels_last=True)
    grad = offset_view(torch.randn(2, 8, 6, 7, dtype=dtype).contiguous(memory_format=CL))
    check_conv(offset_view(x), offset_view(wt), b, (1, 1), (1, 1, 1, 1), (1, 1), 1, grad=grad)
    x = offset_view(norm_input((2, 16, 3, 5), dtype, channels_last=True))
    w, b = norm_param(16, dtype), norm_param(16, dtype)
    check_norm(lambda x, w, b: ops().group_norm(x, w, b, 4, 1e-5, "none"),
               lambda grad, saved: ops().group_norm_backward(offset_view(grad), x, w, b, *saved, 4, "none"),
               lambda x, w, b: TF.group_norm(x.contiguous(), 4, w, b, 1e-5), [x, w, b], dtype, _tolerance_scale(dtype))
    x = offset_view((torch.randn(6, 32, dtype=torch.float64) * 3).to(dtype).requires_grad_())
    w = norm_param(32, dtype)
    check_norm(lambda x, w: ops().rms_norm(x, w, 1, 1e-6),
               lambda grad, saved: ops().rms_norm_backward(offset_view(grad), x, w, *saved, 1),
               lambda x, w: TF.rms_norm(x, (32,), w, 1e-6), [x, w], dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("kernel, stride, dilation, groups",
                         list(itertools.product([(1, 1), (3, 3), (2, 4)], [(1, 1), (2, 3)], [(1, 1), (2, 1)], [1, 2, 8])))
def test_conv2d_sweep(kernel, stride, dilation, groups, channels_last, dtype):
    x, wt, b = conv_inputs(2, 8, 9, 10, 16, kernel, groups, dtype, channels_last=channels_last)
    check_conv(x, wt, b, stride, (1, 0, 2, 1), dilation, groups)


# ---- pooling -------------------------------------------------------------------------------


def check_pool(ours, theirs, backward, x, with_indices=False):
    """Forward (and indices, exactly) and the input gradient against torch's function and
    autograd; `backward(grad, out_and_indices)` calls our backward operator."""
    dtype = x.dtype
    xr = x.detach().to(ref_dtype(dtype)).requires_grad_()
    ref = theirs(xr)
    out = ours(x)
    if with_indices:
        (out, idx), (ref, ref_idx) = out, ref
        assert torch.equal(idx, ref_idx), "indices differ from torch's"
        assert idx.is_contiguous(memory_format=CL) == ref_idx.is_contiguous(memory_format=CL)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref.detach(), dtype)
    assert out.is_contiguous(memory_format=CL) == ref.is_contiguous(memory_format=CL)
    # In the output's layout, as autograd hands it over; the input gradient then keeps it.
    grad = torch.randn(ref.shape, dtype=dtype).contiguous(memory_format=CL if out.dim() == 4 and
                                                          x.is_contiguous(memory_format=CL) else torch.contiguous_format)
    (ref_gx,) = torch.autograd.grad(ref, xr, grad.to(xr.dtype))
    gx = backward(grad, idx if with_indices else None)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_close(gx, ref_gx, dtype)
    assert gx.is_contiguous(memory_format=CL) == x.is_contiguous(memory_format=CL)


def pool_input(shape=(2, 3, 9, 10), dtype=torch.float32, channels_last=False, ties=False):
    x = torch.randint(-3, 4, shape).to(dtype) if ties else torch.randn(shape, dtype=torch.float64).to(dtype)
    return x.contiguous(memory_format=CL) if channels_last else x


LAYOUT_DTYPES = [(dtype, cl) for dtype in DTYPES for cl in (False, True)]


def _layout_dtype_id(case):
    return f"{str(case[0]).replace('torch.', '')}-{'channels_last' if case[1] else 'nchw'}"


@pytest.mark.parametrize("dtype, channels_last", LAYOUT_DTYPES, ids=map(_layout_dtype_id, LAYOUT_DTYPES))
@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode",
                         [((3, 3), (2, 2), (1, 1), (1, 1), True), ((2, 3), (1, 2), (0, 1), (2, 1), False)], ids=str)
def test_max_pool2d(kernel, stride, padding, dilation, ceil_mode, dtype, channels_last):
    x = pool_input(dtype=dtype, channels_last=channels_last, ties=True)
    geometry = (list(kernel), list(stride), list(padding), list(dilation))
    check_pool(lambda x: ops().max_pool2d(x, *geometry, ceil_mode),
               lambda x: TF.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True),
               lambda g, idx: ops().max_pool2d_backward(g, idx, list(x.shape), *geometry), x, with_indices=True)


def test_max_pool2d_nan_and_inf():
    x = pool_input((1, 2, 6, 6))
    x[0, 0, 1, 1] = x[0, 1, 4, 4] = float("nan")
    x[0, 1, :3, :3] = float("-inf")
    out, idx = ops().max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    ref, ref_idx = TF.max_pool2d(x, 3, 2, 1, return_indices=True)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert torch.equal(idx, ref_idx)


def test_max_pool2d_windows_entirely_in_the_padding():
    # Every window's two taps fall on rows -1 and 1 of a 1-row input (test_pool.py has the
    # reasoning): -inf with torch's index, and a zero gradient.
    x = pool_input((2, 3, 1, 7))
    out, idx = ops().max_pool2d(x, [2, 3], [1, 2], [1, 1], [2, 1], False)
    ref, ref_idx = TF.max_pool2d(x, (2, 3), (1, 2), 1, (2, 1), return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    gx = ops().max_pool2d_backward(torch.ones_like(out), idx, list(x.shape), [2, 3], [1, 2], [1, 1], [2, 1])
    assert torch.equal(gx, torch.zeros_like(x))


@pytest.mark.parametrize("dtype, channels_last", LAYOUT_DTYPES, ids=map(_layout_dtype_id, LAYOUT_DTYPES))
@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, count_include_pad, divisor",
                         [((3, 3), (2, 2), (1, 1), True, False, None), ((2, 3), (1, 2), (1, 0), False, True, None),
                          ((3, 2), (2, 1), (1, 1), True, True, 5)], ids=str)
def test_avg_pool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor, dtype, channels_last):
    x = pool_input(dtype=dtype, channels_last=channels_last)
    args = (list(kernel), list(stride), list(padding))
    check_pool(lambda x: ops().avg_pool2d(x, *args, ceil_mode, count_include_pad, divisor),
               lambda x: TF.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor),
               lambda g, _: ops().avg_pool2d_backward(g, list(x.shape), *args, count_include_pad, divisor), x)


ADAPTIVE = [(dtype, cl, size) for (dtype, cl), size in zip(LAYOUT_DTYPES, itertools.cycle([(1, 1), (4, 3), (5, 7), (9, 10)]))]


@pytest.mark.parametrize("dtype, channels_last, size", ADAPTIVE, ids=str)
def test_adaptive_pool2d(dtype, channels_last, size):
    x = pool_input(dtype=dtype, channels_last=channels_last, ties=True)
    check_pool(lambda x: ops().adaptive_avg_pool2d(x, list(size)), lambda x: TF.adaptive_avg_pool2d(x, size),
               lambda g, _: ops().adaptive_avg_pool2d_backward(g, list(x.shape)), x)
    check_pool(lambda x: ops().adaptive_max_pool2d(x, list(size)),
               lambda x: TF.adaptive_max_pool2d(x, size, return_indices=True),
               lambda g, idx: ops().adaptive_max_pool2d_backward(g, idx, list(x.shape)), x, with_indices=True)


@pytest.mark.parametrize("dtype, channels_last", LAYOUT_DTYPES[::3], ids=map(_layout_dtype_id, LAYOUT_DTYPES[::3]))
def test_max_unpool2d(dtype, channels_last):
    x = pool_input((2, 3, 8, 10), dtype, channels_last)
    pooled, idx = TF.max_pool2d(x.to(ref_dtype(dtype)), 3, 2, 1, return_indices=True)
    pooled = pooled.to(dtype)
    out = ops().max_unpool2d(pooled, idx, [8, 10])
    ref_in = pooled.to(ref_dtype(dtype)).requires_grad_()
    ref = TF.max_unpool2d(ref_in, idx, 3, 2, 1, output_size=(8, 10))
    assert_close(out, ref.detach(), dtype)
    assert out.is_contiguous(memory_format=CL) == channels_last
    grad = torch.randn(ref.shape, dtype=dtype)
    (ref_g,) = torch.autograd.grad(ref, ref_in, grad.to(ref_in.dtype))
    assert_close(ops().max_unpool2d_backward(grad, idx), ref_g, dtype)


@pytest.mark.parametrize("coordinates", ["int32", "int64"])
@pytest.mark.parametrize("kernel, stride, padding, dilation",
                         [((3, 3), (3, 2), (1, 1), (2, 2)), ((5, 4), (2, 3), (2, 1), (2, 3))], ids=str)
def test_pool2d_coordinate_types(kernel, stride, padding, dilation, coordinates, emu):
    """Every pooling kernel in both coordinate types (32-bit wherever a problem fits, which small
    ones always do; 64-bit reached through the test hook), on windows whose strides and dilations
    share a factor, so the gather's tap and window steps (conv.h) differ from 1 and each other."""
    if coordinates == "int64":
        emu.set_pool_test_hooks(index32_limit=1)
    x = pool_input((2, 3, 13, 11), channels_last=True, ties=True)
    geometry = (list(kernel), list(stride), list(padding), list(dilation))
    check_pool(lambda x: ops().max_pool2d(x, *geometry, True),
               lambda x: TF.max_pool2d(x, kernel, stride, padding, dilation, True, return_indices=True),
               lambda g, idx: ops().max_pool2d_backward(g, idx, list(x.shape), *geometry), x, with_indices=True)
    avg = (list(kernel), list(stride), list(padding))
    check_pool(lambda x: ops().avg_pool2d(x, *avg, True, False, None),
               lambda x: TF.avg_pool2d(x, kernel, stride, padding, True, False, None),
               lambda g, _: ops().avg_pool2d_backward(g, list(x.shape), *avg, False, None), x)
    check_pool(lambda x: ops().adaptive_max_pool2d(x, [5, 4]),
               lambda x: TF.adaptive_max_pool2d(x, (5, 4), return_indices=True),
               lambda g, idx: ops().adaptive_max_pool2d_backward(g, idx, list(x.shape)), x, with_indices=True)
    pooled, idx = TF.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(ops().max_unpool2d(pooled, idx, [13, 11]), TF.max_unpool2d(pooled, idx, 3, 2, 1, (13, 11)))
    g = "long int" if coordinates == "int64" else "int"  # as GCC spells the functors' types
    for functor in ("MaxPool2d", "MaxPool2dBackward", "AvgPool2d", "AvgPool2dBackward", "AdaptiveMaxPool2d",
                    "MaxUnpool2d"):
        assert launched(emu, f"<{functor}<float, {g}>"), (functor, list(emu.launches()))
    assert launched(emu, f"<AdaptivePool2dBackward<float, {g}, true>"), list(emu.launches())


@pytest.mark.parametrize("coordinates", ["int32", "int64"])
@pytest.mark.parametrize("channels", [6, 37, 133])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_pool2d_channel_runs(channels, channels_last, coordinates, emu):
    """A thread handles up to 4 channels of one position (pool_kernel.cu): channels 0-3, 4-7, ...
    in NCHW, and in channels_last c, c + 32, ... over 32 lanes (fewer lanes below 32 channels).
    6, 37 and 133 channels leave runs of every length and lanes with no channel at all; in both
    coordinate types, as the thread index decomposes in either."""
    if coordinates == "int64":
        emu.set_pool_test_hooks(index32_limit=1)
    x = pool_input((2, channels, 7, 6), channels_last=channels_last, ties=True)
    check_pool(lambda x: ops().max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True),
               lambda x: TF.max_pool2d(x, 3, 2, 1, 1, True, return_indices=True),
               lambda g, idx: ops().max_pool2d_backward(g, idx, list(x.shape), [3, 3], [2, 2], [1, 1], [1, 1]), x,
               with_indices=True)
    check_pool(lambda x: ops().avg_pool2d(x, [3, 2], [2, 1], [1, 1], False, False, None),
               lambda x: TF.avg_pool2d(x, (3, 2), (2, 1), 1, False, False),
               lambda g, _: ops().avg_pool2d_backward(g, list(x.shape), [3, 2], [2, 1], [1, 1], False, None), x)
    check_pool(lambda x: ops().adaptive_avg_pool2d(x, [3, 4]), lambda x: TF.adaptive_avg_pool2d(x, (3, 4)),
               lambda g, _: ops().adaptive_avg_pool2d_backward(g, list(x.shape)), x)
    check_pool(lambda x: ops().adaptive_max_pool2d(x, [3, 4]),
               lambda x: TF.adaptive_max_pool2d(x, (3, 4), return_indices=True),
               lambda g, idx: ops().adaptive_max_pool2d_backward(g, idx, list(x.shape)), x, with_indices=True)
    pooled, idx = TF.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(ops().max_unpool2d(pooled, idx, [7, 6]), TF.max_unpool2d(pooled, idx, 2, 2, output_size=(7, 6)))
    grad = torch.randn(x.shape).contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    assert torch.equal(ops().max_unpool2d_backward(grad, idx), grad.flatten(2).gather(2, idx.flatten(2)).view_as(idx))


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode",
                         list(itertools.product([(2, 2), (3, 3), (3, 2)], [(1, 1), (2, 1), (3, 3)], [(0, 0), (1, 1)],
                                                [(1, 1), (2, 2)], [False, True])))
def test_pool2d_sweep(kernel, stride, padding, dilation, ceil_mode, channels_last):
    x = pool_input(dtype=torch.float64, channels_last=channels_last, ties=True)
    geometry = (list(kernel), list(stride), list(padding), list(dilation))
    check_pool(lambda x: ops().max_pool2d(x, *geometry, ceil_mode),
               lambda x: TF.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True),
               lambda g, idx: ops().max_pool2d_backward(g, idx, list(x.shape), *geometry), x, with_indices=True)
    if dilation == (1, 1):
        args = (list(kernel), list(stride), list(padding))
        check_pool(lambda x: ops().avg_pool2d(x, *args, ceil_mode, False, None),
                   lambda x: TF.avg_pool2d(x, kernel, stride, padding, ceil_mode, False),
                   lambda g, _: ops().avg_pool2d_backward(g, list(x.shape), *args, False, None), x)


# ---- normalisation -------------------------------------------------------------------------

ACTIVATIONS = {"none": lambda z: z, "relu": torch.relu, "silu": TF.silu, "gelu": TF.gelu}
# Mean-shifted inputs break any E[x^2] - E[x]^2 variance; fp16/bf16 near 1000 would leave too
# few mantissa bits for the normalised values to mean anything, so they get a smaller shift.
SHIFT = {torch.float64: 1000.0, torch.float32: 1000.0, torch.float16: 10.0, torch.bfloat16: 10.0}
# (shape, channels_last): (N, C), (N, C, L), NCHW and channels_last with C a multiple of the
# 16-byte vector (the "rows" path's vector loads) or not; N = 40 puts work on every lane of the
# warp reductions (a lane per sample).
NORM_SHAPES = [((40, 5), False), ((2, 3, 7), False), ((2, 8, 3, 5), False), ((2, 8, 3, 5), True),
               ((3, 6, 2, 3), True)]


def check_norm(forward, backward, reference, tensors, dtype, scale=1.0):
    """`forward(*tensors)` -> (output, *saved), `backward(grad, saved)` -> a gradient per tensor
    (an empty one for an absent tensor); against `reference` (torch) in float64 and its autograd.
    4-D outputs and input gradients keep the input's layout."""
    ref_in = [None if t is None else t.detach().to(torch.float64).requires_grad_(t.requires_grad) for t in tensors]
    ref = reference(*ref_in)
    out, *saved = forward(*tensors)
    x = tensors[0]
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out, ref.detach(), dtype, scale)
    grad = torch.randn(ref.shape, dtype=torch.float64).to(dtype)
    wrt = [t for t in ref_in if t is not None and t.requires_grad]
    ref_grads = torch.autograd.grad(ref, wrt, grad.to(torch.float64))
    grads = backward(grad, saved)
    for t, g in zip(tensors, grads):
        if t is None:
            assert g.shape == (0,)
    grads = [g for t, g in zip(tensors, grads) if t is not None and t.requires_grad]
    assert len(grads) == len(ref_grads)
    for ours, theirs in zip(grads, ref_grads):
        assert ours.shape == theirs.shape
        assert_close(ours, theirs, dtype, scale)
    if x.dim() == 4:
        for t in (out, grads[0]):
            assert t.is_contiguous(memory_format=CL) == x.is_contiguous(memory_format=CL)
            assert t.is_contiguous() == x.is_contiguous()
    return saved


def norm_input(shape, dtype, channels_last=False, shift=None):
    x = ((SHIFT[dtype] if shift is None else shift) + torch.randn(shape, dtype=torch.float64)).to(dtype)
    return (x.contiguous(memory_format=CL) if channels_last else x).requires_grad_()


def norm_param(n, dtype):
    return (1 + 0.5 * torch.randn(n, dtype=torch.float64)).to(dtype).requires_grad_()


def _tolerance_scale(dtype, count=1):
    """fp32 inputs near 1000 carry 6e-5 of rounding: x - mean's last bits differ from torch's, by
    the same amount across a statistic, so parameter gradients summing `count` terms drift by
    about sqrt(count) times that."""
    return 10.0 * max(1.0, (count / 128) ** 0.5) if dtype == torch.float32 else 1.0


BN_CASES = list(itertools.product(NORM_SHAPES, [True, False], ["none", "relu", "add_relu", "silu"]))[::2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape_cl, training, activation", BN_CASES, ids=str)
def test_batch_norm(shape_cl, training, activation, dtype):
    shape, channels_last = shape_cl
    _check_batch_norm(shape, channels_last, training, activation, dtype, affine=True)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape_cl", NORM_SHAPES[2:], ids=str)
def test_batch_norm_half(shape_cl, dtype):
    shape, channels_last = shape_cl
    _check_batch_norm(shape, channels_last, True, "add_relu", dtype, affine=True)
    _check_batch_norm(shape, channels_last, False, "none", dtype, affine=False)


def _check_batch_norm(shape, channels_last, training, activation, dtype, affine, momentum=0.1, eps=1e-5, shift=None):
    c = shape[1]
    x = norm_input(shape, dtype, channels_last, shift)
    w, b = (norm_param(c, dtype), norm_param(c, dtype)) if affine else (None, None)
    r = torch.randn(shape, dtype=torch.float64).to(dtype).requires_grad_() if activation == "add_relu" else None
    act = "relu" if activation == "add_relu" else activation
    stats = [SHIFT[dtype] + torch.randn(c, dtype=torch.float64), 1 + torch.rand(c, dtype=torch.float64)]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    ours_stats, torch_stats = [s.to(acc) for s in stats], [s.clone() for s in stats]
    new_stats = []

    def forward(x, w, b, r):
        out, mean, rstd, new_mean, new_var = ops().batch_norm(x, w, b, r, *ours_stats, training, momentum, eps, act)
        new_stats.extend([new_mean, new_var])
        return out, mean, rstd

    def backward(grad, saved):
        return ops().batch_norm_backward(grad, x, w, b, r, *saved, training, act)

    def reference(x, w, b, r):
        z = TF.batch_norm(x, *torch_stats, w, b, training, momentum, eps)
        return ACTIVATIONS[act](z if r is None else z + r)

    scale = _tolerance_scale(dtype, x.numel() // c)
    check_norm(forward, backward, reference, [x, w, b, r], dtype, scale)
    if training:
        for ours, theirs in zip(new_stats, torch_stats):
            assert_close(ours, theirs, acc, scale)


GN_CASES = [((2, 8, 3, 5), False, 4, "none"), ((2, 8, 3, 5), True, 2, "silu"), ((3, 6, 7), False, 3, "gelu"),
            ((2, 6, 2, 3), True, 6, "relu"), ((4, 40), False, 1, "none")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, channels_last, groups, activation", GN_CASES, ids=str)
def test_group_norm(shape, channels_last, groups, activation, dtype, eps=1e-5):
    c = shape[1]
    x = norm_input(shape, dtype, channels_last)
    w, b = norm_param(c, dtype), norm_param(c, dtype)
    check_norm(lambda x, w, b: ops().group_norm(x, w, b, groups, eps, activation),
               lambda grad, saved: ops().group_norm_backward(grad, x, w, b, *saved, groups, activation),
               # torch's CPU group_norm on channels_last input computes E[x^2] - E[x]^2 (README):
               # the reference runs on the NCHW copy.
               lambda x, w, b: ACTIVATIONS[activation](TF.group_norm(x.contiguous(), groups, w, b, eps)),
               [x, w, b], dtype, _tolerance_scale(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, ndim, affine", [((6, 40), 1, True), ((2, 3, 5, 9), 2, True), ((4, 13), 1, False),
                                                 ((3, 4, 16), 1, True)], ids=str)
def test_rms_norm(shape, ndim, affine, dtype, eps=1e-6):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    w = norm_param(shape[-ndim:], dtype) if affine else None
    check_norm(lambda x, w: ops().rms_norm(x, w, ndim, eps),
               lambda grad, saved: ops().rms_norm_backward(grad, x, w, *saved, ndim),
               lambda x, w: TF.rms_norm(x, shape[-ndim:], w, eps), [x, w], dtype)


@pytest.mark.parametrize("dtype, channels_last", LAYOUT_DTYPES[::2] + [(torch.float32, True)],
                         ids=map(_layout_dtype_id, LAYOUT_DTYPES[::2] + [(torch.float32, True)]))
@pytest.mark.parametrize("size", [3, 4, 11])
def test_local_response_norm(size, dtype, channels_last, alpha=1e-2, beta=0.75, k=2.0):
    x = (torch.randn(2, 7, 4, 5, dtype=torch.float64) * 3).to(dtype)
    x = (x.contiguous(memory_format=CL) if channels_last else x).requires_grad_()
    check_norm(lambda x: (ops().local_response_norm(x, size, alpha, beta, k),),
               lambda grad, _: [ops().local_response_norm_backward(grad, x, size, alpha, beta, k)],
               lambda x: TF.local_response_norm(x, size, alpha, beta, k), [x], dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, channels_last", [((16, 32, 9, 9), False), ((16, 32, 9, 9), True), ((64, 40), False),
                                                  ((5, 24, 300), False)], ids=str)
def test_norm_sweep(shape, channels_last, dtype):
    """Larger reductions: several chunks per statistic, merged across blocks. (A smaller shift:
    fp32's rounding of 1000 + randn over thousands of elements would hide in the tolerance.)"""
    for training, activation in itertools.product([True, False], ["none", "add_relu", "gelu"]):
        _check_batch_norm(shape, channels_last, training, activation, dtype, affine=True, shift=10.0)
    x = norm_input(shape, dtype, channels_last, shift=10.0)
    w, b = norm_param(shape[1], dtype), norm_param(shape[1], dtype)
    check_norm(lambda x, w, b: ops().group_norm(x, w, b, 8, 1e-5, "silu"),
               lambda grad, saved: ops().group_norm_backward(grad, x, w, b, *saved, 8, "silu"),
               lambda x, w, b: TF.silu(TF.group_norm(x.contiguous(), 8, w, b, 1e-5)), [x, w, b], dtype,
               _tolerance_scale(dtype, x.numel() // shape[1]))
