"""conv2d against torch.nn.functional.conv2d and torch.autograd, on every backend testable here
(helpers.TARGETS): cpu; triton in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set
by conftest when there is no GPU); cuda and triton on a GPU. The reference is always torch on
the CPU, in the same dtype (fp32 for fp16/bf16 inputs)."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import cnnkernels
import cnnkernels.functional as F
from cnnkernels.ops import conv as _conv_ops
from helpers import TARGETS, assert_close, message_names, operator_raises, raises_like_torch, same_layout

CL = torch.channels_last


def _run(conv, x, w, b, grad, **kwargs):
    """Output and (input, weight, bias) gradients of `conv` for the given output gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w)] + ([b.detach().clone().requires_grad_()] if b is not None else [])
    leaves[0] = leaves[0].contiguous(memory_format=CL) if x.dim() == 4 and x.is_contiguous(memory_format=CL) and not x.is_contiguous() else leaves[0]
    out = conv(leaves[0], leaves[1], leaves[2] if b is not None else None, **kwargs)
    grads = torch.autograd.grad(out, leaves, grad)
    return out, grads


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


def check_against_torch(x, w, b, dtype, target, **kwargs):
    """Forward value and layout, and every gradient, against torch on the same inputs."""
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    with torch.no_grad():
        ref_out = TF.conv2d(x.to(ref_dtype), w.to(ref_dtype), None if b is None else b.to(ref_dtype), **kwargs)
    grad = torch.randn(ref_out.shape, dtype=dtype)
    on_device = [None if t is None else t.to(target.device) for t in (x, w, b, grad)]
    out, grads = _run(functools.partial(F.conv2d, backend=target.backend), *on_device, **kwargs)
    out, grads = out.cpu(), [g.cpu() for g in grads]
    ref_out, ref_grads = _run(TF.conv2d, x.to(ref_dtype), w.to(ref_dtype), None if b is None else b.to(ref_dtype),
                              grad.to(ref_dtype), **kwargs)
    # Gradients sum over many products: scale the absolute tolerance with the reduction length.
    scale = max(1.0, (x.shape[-1] * x.shape[-2] * x.shape[0] / 64) ** 0.5)
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype)
    assert same_layout(out, ref_out), (out.stride(), ref_out.stride())
    for ours, theirs in zip(grads, ref_grads):
        assert ours.dtype == dtype
        assert_close(ours, theirs, dtype, scale)
        assert same_layout(ours, theirs), (ours.stride(), theirs.stride())


# ---- the argument grid ---------------------------------------------------------------------

KERNELS = [(1, 1), (3, 3), (2, 4)]
STRIDES = [1, (2, 3)]
PADDINGS = [0, (1, 2), "same", "valid"]
DILATIONS = [1, (2, 1)]
GROUPS = [1, 2]
GRID = [
    c for c in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, GROUPS, [True, False])
    if not (c[2] == "same" and c[1] != 1)
]


def _grid_id(case):
    k, s, p, d, g, b = case
    return f"k{k[0]}x{k[1]}-s{s}-p{p}-d{d}-g{g}-{'bias' if b else 'nobias'}"


def _inputs(kernel, groups, bias, dtype, batch=2, in_ch=4, out_ch=6, size=(9, 11)):
    x = torch.randn(batch, in_ch, *size, dtype=dtype)
    w = torch.randn(out_ch, in_ch // groups, *kernel, dtype=dtype)
    b = torch.randn(out_ch, dtype=dtype) if bias else None
    return x, w, b


# float64 is a CPU dtype (and gradcheck's); the GPU backends cover float32, float16, bfloat16.
TARGET_DTYPES = [
    pytest.param(t.values[0], d, marks=t.marks, id=f"{t.id}-{str(d).replace('torch.', '')}")
    for t in TARGETS for d in (torch.float64, torch.float32) if t.values[0].backend == "cpu" or d != torch.float64
]


@pytest.mark.parametrize("target, dtype", TARGET_DTYPES)
@pytest.mark.parametrize("case", GRID, ids=_grid_id)
def test_grid_nchw(case, dtype, target):
    kernel, stride, padding, dilation, groups, bias = case
    x, w, b = _inputs(kernel, groups, bias, dtype)
    check_against_torch(x, w, b, dtype, target=target, stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("kernel", [(1, 1), (3, 3)])
def test_a_strided_bias(kernel, target):
    """A bias that is every other element of a longer tensor, as slicing a packed parameter gives
    (the channels_last 1x1 layer is one the triton backend runs on tensor descriptors)."""
    x, w, _ = _inputs(kernel, 1, False, torch.float32, in_ch=8, out_ch=8)
    x = x.contiguous(memory_format=CL)
    packed = torch.randn(16)
    out = F.conv2d(x.to(target.device), w.to(target.device), packed.to(target.device)[::2], padding=kernel[0] // 2,
                   backend=target.backend)
    assert_close(out.cpu(), TF.conv2d(x, w, packed[::2], padding=kernel[0] // 2), torch.float32)


@pytest.mark.parametrize("layout", ["input_cl", "weight_cl", "both_cl"])
@pytest.mark.parametrize("case", GRID[::5], ids=_grid_id)
def test_grid_channels_last(case, layout, target):
    kernel, stride, padding, dilation, groups, bias = case
    x, w, b = _inputs(kernel, groups, bias, torch.float32)
    if layout in ("input_cl", "both_cl"):
        x = x.contiguous(memory_format=CL)
    if layout in ("weight_cl", "both_cl"):
        w = w.contiguous(memory_format=CL)
    check_against_torch(x, w, b, torch.float32, target=target, stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize(
    "shape",
    [
        # (N, C, H, W, K, kernel, stride, padding, dilation, groups)
        (1, 1, 1, 1, 1, (1, 1), 1, 0, 1, 1),  # everything 1
        (3, 3, 7, 5, 5, (7, 5), 1, 0, 1, 1),  # kernel covers the whole input: 1x1 output
        (2, 3, 5, 13, 2, (5, 1), (1, 4), (0, 3), 1, 1),  # tall kernel, wide stride
        (1, 6, 8, 8, 9, (3, 3), 3, 1, 1, 3),  # stride equal to kernel
        (2, 6, 10, 9, 6, (3, 3), (3, 2), 2, (2, 3), 6),  # depthwise, stride and dilation mixed
        (1, 8, 6, 6, 4, (2, 2), 2, 0, 1, 1),  # non-overlapping windows
        (2, 4, 5, 6, 6, (4, 4), 1, "same", (1, 2), 2),  # even kernel, 'same', dilation
        (1, 2, 4, 4, 3, (3, 3), 4, 2, 1, 1),  # stride larger than kernel: taps miss rows
        (1, 16, 14, 14, 32, (3, 3), 1, 1, 1, 1),  # wider channels (vector loops, pixel blocks)
        (2, 5, 17, 3, 7, (3, 2), (2, 1), (1, 0), (3, 1), 1),  # odd everything
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_odd_shapes(shape, bias, target):
    n, c, h, w, k, kernel, stride, padding, dilation, groups = shape
    x, wt, b = _inputs(kernel, groups, bias, torch.float64, batch=n, in_ch=c, out_ch=k, size=(h, w))
    check_against_torch(x, wt, b, torch.float64, target=target, stride=stride, padding=padding, dilation=dilation, groups=groups)


# More groups than channels per group: depthwise, depthwise with a channel multiplier, ResNeXt-
# like groups, where every tile of the GPU kernels holds one or a few channels of a group.
SMALL_GROUPS = [(8, 8, 8), (8, 16, 8), (16, 16, 8), (16, 8, 8), (12, 12, 4)]  # (C, K, groups)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("geometry", [((3, 3), 1, 1, 1), ((2, 4), (2, 3), (1, 2), (2, 1))], ids=["3x3", "odd"])
@pytest.mark.parametrize("channels", SMALL_GROUPS, ids=lambda c: f"C{c[0]}-K{c[1]}-g{c[2]}")
def test_small_groups(channels, geometry, channels_last, target):
    (c, k, groups), (kernel, stride, padding, dilation) = channels, geometry
    x, w, b = _inputs(kernel, groups, True, torch.float32, in_ch=c, out_ch=k)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    check_against_torch(x, w, b, torch.float32, target=target, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision(dtype, channels_last, target):
    x, w, b = _inputs((3, 3), 1, True, dtype, batch=2, in_ch=8, out_ch=8, size=(10, 10))
    if channels_last:
        x = x.contiguous(memory_format=CL)
    check_against_torch(x, w, b, dtype, target=target, stride=2, padding=1)


def test_unbatched_input(target):
    x, w, b = _inputs((3, 3), 1, True, torch.float64, batch=1)
    check_against_torch(x[0], w, b, torch.float64, target=target, padding=1, stride=2)


def test_resnet_sized_layer(target):
    x, w, b = _inputs((3, 3), 1, False, torch.float32, batch=2, in_ch=64, out_ch=64, size=(28, 28))
    check_against_torch(x.contiguous(memory_format=CL), w, b, torch.float32, target=target, padding=1)


def test_non_contiguous_arguments(target):
    # Views with gaps, transposed weights and an expanded (stride-0) output gradient.
    dtype = torch.float64 if target.backend == "cpu" else torch.float32
    base = torch.randn(2, 8, 12, 14, dtype=dtype)
    x = base[:, 1::3, 1:, ::2]
    w = torch.randn(3, 5, 4, 6, dtype=dtype).transpose(0, 1)
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    base_dev = base.to(target.device)
    xo = base_dev[:, 1::3, 1:, ::2].detach().requires_grad_()
    wo = w.to(target.device).detach().requires_grad_()
    ref = TF.conv2d(xr, wr, stride=2, padding=1)
    out = F.conv2d(xo, wo, stride=2, padding=1, backend=target.backend)
    assert_close(out.cpu(), ref, dtype)
    grad = torch.ones(1, dtype=dtype, device=target.device).expand(ref.shape)
    ours = torch.autograd.grad(out, (xo, wo), grad)
    theirs = torch.autograd.grad(ref, (xr, wr), grad.cpu())
    for a, b in zip(ours, theirs):
        assert_close(a.cpu(), b, dtype, scale=4.0)


def test_empty_batch(target):
    x, w, b = (torch.randn(0, 4, 9, 9, device=target.device), torch.randn(6, 4, 3, 3, device=target.device),
               torch.randn(6, device=target.device))
    leaves = [t.requires_grad_() for t in (x, w, b)]
    out = F.conv2d(*leaves, backend=target.backend)
    ref = TF.conv2d(*[t.detach() for t in (x, w, b)])
    assert out.shape == ref.shape
    grads = torch.autograd.grad(out.sum(), leaves)
    # No output elements: the weight and bias gradients are sums over nothing.
    assert grads[0].shape == x.shape
    torch.testing.assert_close(grads[1], torch.zeros_like(w))
    torch.testing.assert_close(grads[2], torch.zeros_like(b))


def test_zero_input_channels(target):
    # A sum over no input channels: the output is the bias, broadcast. (torch returns an empty
    # (N, 0, P, Q) tensor here whatever the weight's K; we return the mathematical result.)
    x, w, b = (torch.randn(2, 0, 9, 9, device=target.device), torch.randn(6, 0, 3, 3, device=target.device),
               torch.randn(6, device=target.device))
    leaves = [t.requires_grad_() for t in (x, w, b)]
    out = F.conv2d(*leaves, backend=target.backend)
    torch.testing.assert_close(out, b.detach().view(1, 6, 1, 1).expand(2, 6, 7, 7))
    grads = torch.autograd.grad(out.sum(), leaves)
    assert grads[0].shape == x.shape and grads[1].shape == w.shape
    torch.testing.assert_close(grads[2], torch.full_like(b, 2 * 7 * 7))


# ---- gradcheck, opcheck, compile -----------------------------------------------------------

GRADCHECK_CASES = [
    dict(stride=1, padding=1, dilation=1, groups=1),
    dict(stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2),
    dict(stride=1, padding="same", dilation=2, groups=1),
    dict(stride=3, padding=0, dilation=1, groups=4),
]


def _gradcheck_problem(kwargs, target, batch):
    """conv2d as a function of (x, w, b) in float64, its inputs, and whether to use gradcheck's
    fast mode: in Triton's interpreter every call costs a fraction of a second, so there the
    Jacobian is checked through random projections instead of column by column."""
    dev, groups = target.device, kwargs["groups"]
    x = torch.randn(batch, 4, 7, 8, dtype=torch.float64, device=dev, requires_grad=True)
    w = torch.randn(4, 4 // groups, 2, 3, dtype=torch.float64, device=dev, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=dev, requires_grad=True)
    return (lambda x, w, b: F.conv2d(x, w, b, backend=target.backend, **kwargs)), (x, w, b), target == ("triton", "cpu")


@pytest.mark.parametrize("kwargs", GRADCHECK_CASES, ids=str)
def test_gradcheck(kwargs, target):
    f, inputs, fast = _gradcheck_problem(kwargs, target, batch=2)
    assert torch.autograd.gradcheck(f, inputs, fast_mode=fast)


@pytest.mark.parametrize("kwargs", GRADCHECK_CASES[:2], ids=str)
def test_gradgradcheck(kwargs, target):
    """Second derivatives: the backward operators' own autograd formulas."""
    f, inputs, fast = _gradcheck_problem(kwargs, target, batch=1)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=fast)


def test_gradient_penalty_matches_torch(target):
    """A WGAN-GP style penalty, |d loss / d input|^2, differentiated again: every second-order
    path (through backward-input, backward-weight and the bias gradient) against torch's."""
    x = torch.randn(2, 4, 9, 9)
    w = torch.randn(6, 2, 3, 3)
    b = torch.randn(6)
    kwargs = dict(stride=2, padding=1, groups=2)

    def penalty_grads(conv, x, w, b):
        x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
        out = conv(x, w, b, **kwargs)
        (gx,) = torch.autograd.grad((out.square() * out.sum()).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), (x, w, b))

    ours = penalty_grads(functools.partial(F.conv2d, backend=target.backend), *(t.to(target.device) for t in (x, w, b)))
    theirs = penalty_grads(TF.conv2d, x, w, b)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-3 * want.abs().max().item())


def _opcheck_samples():
    x = torch.randn(2, 4, 9, 11)
    w = torch.randn(6, 2, 3, 4)
    b = torch.randn(6)
    yield (x, w, b, [1, 1], [0, 0, 0, 0], [1, 1], 2)
    yield (x.contiguous(memory_format=CL), w, None, [2, 3], [1, 2, 0, 1], [2, 1], 2)
    yield (x, w.contiguous(memory_format=CL), b, [1, 2], [2, 2, 1, 1], [1, 1], 2)
    yield (x[0:1].double(), w.double(), b.double(), [3, 1], [0, 1, 3, 0], [1, 2], 2)


@pytest.mark.parametrize("sample", range(4))
def test_opcheck(sample):
    x, w, b, stride, padding, dilation, groups = list(_opcheck_samples())[sample]
    y = torch.ops.cnnkernels.conv2d(x, w, b, stride, padding, dilation, groups)
    g = torch.randn_like(y)
    args = [x.requires_grad_(), w.requires_grad_(), None if b is None else b.requires_grad_(), stride, padding, dilation, groups]
    torch.library.opcheck(torch.ops.cnnkernels.conv2d.default, tuple(args))
    conv = (stride, padding, dilation, groups)
    # Operands that require grad: opcheck also exercises the backward operators' own autograd.
    g, w, x = (t.detach().requires_grad_() for t in (g, w, x))
    torch.library.opcheck(torch.ops.cnnkernels.conv2d_backward_input.default, (g, w, list(x.shape), *conv))
    torch.library.opcheck(torch.ops.cnnkernels.conv2d_backward_weight.default, (g, x, list(w.shape), *conv))
    torch.library.opcheck(torch.ops.cnnkernels.conv2d_backward_bias.default, (g,))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    net = torch.nn.Sequential(
        cnnkernels.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        cnnkernels.nn.Conv2d(8, 8, 3, stride=2, groups=2, padding="valid", bias=False),
        torch.nn.ReLU(),
        cnnkernels.nn.Conv2d(8, 4, 2, padding="same", padding_mode="reflect"),
    )
    x = torch.randn(2, 3, 12, 12)
    compiled = torch.compile(net, fullgraph=True)
    out = compiled(x)
    ref = net(x)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# ---- determinism ---------------------------------------------------------------------------


def test_weight_and_bias_gradients_are_deterministic_across_thread_counts():
    x = torch.randn(4, 16, 40, 40)
    g = torch.randn(4, 8, 40, 40)
    args = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            results.append((torch.ops.cnnkernels.conv2d_backward_weight(g, x, [8, 16, 3, 3], *args),
                            torch.ops.cnnkernels.conv2d_backward_bias(g)))
    finally:
        torch.set_num_threads(threads)
    for dw, db in results[1:]:
        assert torch.equal(dw, results[0][0])
        assert torch.equal(db, results[0][1])


# ---- bad input -----------------------------------------------------------------------------

X = torch.randn(2, 4, 9, 9)
W = torch.randn(6, 4, 3, 3)

BAD_CALLS = {
    "input_rank_2": ((torch.randn(9, 9), W), {}, message_names("3D", "4D", "[9, 9]")),
    "input_rank_5": ((torch.randn(1, 2, 4, 9, 9), W), {}, message_names("3D", "4D")),
    "weight_rank_3": ((X, torch.randn(6, 4, 3)), {}, "weight"),
    "channel_mismatch": ((X, torch.randn(6, 5, 3, 3)), {}, message_names("5 channels", "got 4")),
    "groups_channel_mismatch": ((X, torch.randn(6, 2, 3, 3)), {"groups": 3}, message_names("groups=3", "channels")),
    "groups_not_dividing_out": ((X, torch.randn(5, 2, 3, 3)), {"groups": 2}, message_names("divisible by 2")),
    "groups_zero": ((X, torch.randn(6, 2, 3, 3)), {"groups": 0}, "non-positive groups"),
    "kernel_too_large": ((X, torch.randn(6, 4, 13, 3)), {}, message_names("Kernel size", "(13 x 3)")),
    "kernel_larger_than_padded": ((X, torch.randn(6, 4, 12, 3)), {"padding": 1}, message_names("(11 x 11)", "Kernel size")),
    "negative_padding": ((X, W), {"padding": -1}, "negative padding"),
    "zero_stride": ((X, W), {"stride": 0}, "non-positive stride"),
    "zero_dilation": ((X, W), {"dilation": (1, 0)}, "non-positive dilation"),
    "stride_3_values": ((X, W), {"stride": (1, 2, 3)}, message_names("stride", "2 values")),
    "padding_3_values": ((X, W), {"padding": (1, 2, 3)}, message_names("padding", "2 values")),
    "same_with_stride": ((X, W), {"padding": "same", "stride": 2}, "'same' is not supported for strided"),
    "bad_padding_string": ((X, W), {"padding": "full"}, "Invalid padding string: 'full'"),
    "float_stride": ((X, W), {"stride": 1.5}, "stride"),
    "float_groups": ((X, W), {"groups": 1.0}, "groups"),
    "bool_groups": ((X, W), {"groups": True}, "groups"),
    "weight_dtype": ((X, W.double()), {}, message_names("weight", "same")),
    "bias_dtype": ((X, W, torch.randn(6).double()), {}, message_names("bias", "same")),
    "bias_size": ((X, W, torch.randn(5)), {}, message_names("bias", "6 elements", "[5]")),
    "bias_rank": ((X, W, torch.randn(6, 1)), {}, message_names("bias", "1-dimensional")),
    "input_not_tensor": (([[1.0]], W), {}, "input"),
    "empty_image": ((torch.randn(2, 4, 0, 9), W), {"padding": 1}, message_names("zero batch or zero channel", "[2, 4, 0, 9]")),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_like_torch(name):
    args, kwargs, match = BAD_CALLS[name]
    raises_like_torch(lambda: F.conv2d(*args, **kwargs), lambda: TF.conv2d(*args, **kwargs), match)


def test_device_mismatch_is_rejected():
    # torch raises for a CPU/CUDA mix; without a GPU, the meta device stands in for the other device.
    with pytest.raises(RuntimeError, match=message_names("weight", "same device", "meta")):
        F.conv2d(X, W.to("meta"))


INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _integers(shape, dtype, generator):
    """Values over the dtype's whole range (int64: up to 2^40), so sums and products overflow."""
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**40)), min(info.max, 2**40)
    return torch.randint(low, high, shape, dtype=torch.int64, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs",
    [
        ((2, 3, 7, 6), (4, 3, 3, 3), dict(bias=True)),
        ((2, 4, 9, 8), (6, 2, 3, 2), dict(stride=2, padding=(1, 2), dilation=(2, 1), groups=2, bias=True)),
        ((1, 4, 6, 6), (4, 1, 3, 3), dict(padding="same", groups=4)),
        ((5, 4, 6), (2, 5, 1, 1), dict(bias=True)),  # unbatched
        ((2, 8, 5, 7), (4, 8, 2, 3), dict(stride=(1, 2), channels_last=True)),
    ],
    ids=["bias", "strided-dilated-groups", "depthwise-same", "unbatched", "channels_last"],
)
def test_integer_conv_matches_torch(dtype, x_shape, w_shape, kwargs):
    # torch's CPU convolution takes integer tensors, and its sums wrap modulo 2^bits: exact
    # integers, so ours must equal them bit for bit.
    kwargs = dict(kwargs)
    gen = torch.Generator().manual_seed(len(x_shape) + w_shape[0])
    x, w = _integers(x_shape, dtype, gen), _integers(w_shape, dtype, gen)
    if kwargs.pop("channels_last", False):
        x = x.contiguous(memory_format=CL)
    bias = _integers((w_shape[0],), dtype, gen) if kwargs.pop("bias", False) else None
    ours = F.conv2d(x, w, bias, backend="cpu", **kwargs)
    try:
        ref = TF.conv2d(x, w, bias, **kwargs)
    except NotImplementedError:  # torch's dilated kernel lacks uint8: its int64 result, wrapped
        ref = TF.conv2d(x.long(), w.long(), None if bias is None else bias.long(), **kwargs).to(dtype)
    assert ours.dtype == dtype
    assert torch.equal(ours, ref)
    assert ours.stride() == ref.stride()


COMPLEX_DTYPES = (torch.complex64, torch.complex128)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("kwargs", GRADCHECK_CASES, ids=str)
@pytest.mark.parametrize("dtype", COMPLEX_DTYPES, ids=str)
def test_complex_conv_matches_torch(dtype, kwargs, channels_last):
    # torch's CPU convolution takes complex tensors (sum of w * x, nothing conjugated) and
    # differentiates them by its convention for holomorphic functions (conjugated operands).
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 7, 8, dtype=dtype, generator=gen)
    w = torch.randn(4, 4 // kwargs["groups"], 2, 3, dtype=dtype, generator=gen)
    b = torch.randn(4, dtype=dtype, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    grad = torch.randn(TF.conv2d(x, w, b, **kwargs).shape, dtype=dtype, generator=gen)
    out, grads = _run(functools.partial(F.conv2d, backend="cpu"), x, w, b, grad, **kwargs)
    ref_out, ref_grads = _run(TF.conv2d, x, w, b, grad, **kwargs)
    tol = 1e-4 if dtype == torch.complex64 else 1e-10
    for ours, theirs in zip((out, *grads), (ref_out, *ref_grads)):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    # The layout rule of real tensors (torch's complex path, three real convolutions, returns NCHW).
    assert out.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("kwargs", GRADCHECK_CASES[:2], ids=str)
def test_complex_gradcheck_and_gradgradcheck(kwargs):
    """Complex gradcheck checks both Wirtinger derivatives; gradgradcheck the backward
    operators' own (conjugated) formulas."""
    x = torch.randn(1, 4, 6, 7, dtype=torch.complex128, requires_grad=True)
    w = torch.randn(4, 4 // kwargs["groups"], 2, 3, dtype=torch.complex128, requires_grad=True)
    b = torch.randn(4, dtype=torch.complex128, requires_grad=True)

    def f(x, w, b):
        return F.conv2d(x, w, b, backend="cpu", **kwargs)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64], ids=str)
@pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0].backend != "cpu"])
def test_integer_and_complex_inputs_on_the_gpu_backends_are_rejected(target, dtype):
    # Integer and complex convolutions are the cpu backend's.
    with pytest.raises(RuntimeError, match="float32"):
        F.conv2d(X.to(dtype).to(target.device), W.to(dtype).to(target.device), backend=target.backend)


def test_unsupported_dtypes_are_rejected_with_the_supported_list():
    with pytest.raises(NotImplementedError, match="int64"):
        F.conv2d(X.bool(), W.bool(), backend="cpu")
    with pytest.raises(NotImplementedError, match="complex128"):
        F.conv2d(X.to(torch.complex32), W.to(torch.complex32), backend="cpu")


INT_LIKE_ARGUMENTS = {
    "tensor_stride": dict(stride=torch.tensor(2)),
    "numpy_padding": dict(padding=np.int64(1)),
    "mixed_tuple": dict(stride=(torch.tensor(1), np.int32(2)), dilation=(2, torch.tensor(1))),
    "tensor_groups": dict(groups=torch.tensor(2)),
}


@pytest.mark.parametrize("name", list(INT_LIKE_ARGUMENTS))
def test_integer_like_arguments_are_taken_like_torch(name):
    # torch takes anything with __index__ (0-d integer tensors, NumPy integers) as an int.
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 2, 3, 3)
    kwargs = INT_LIKE_ARGUMENTS[name]
    if "groups" not in kwargs:
        w = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(F.conv2d(x, w, backend="cpu", **kwargs), TF.conv2d(x, w, **kwargs))


@pytest.mark.parametrize("value", [torch.tensor([1, 1]), torch.tensor(1.0), 1.0, True], ids=repr)
def test_non_integer_arguments_raise_like_torch(value):
    raises_like_torch(lambda: F.conv2d(X, W, stride=value), lambda: TF.conv2d(X, W, stride=value), "stride")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: torch.ops.cnnkernels.conv2d(X, W, None, [1, 1], [0, 0], [1, 1], 1), "padding"),
        (lambda: torch.ops.cnnkernels.conv2d(X, W, None, [1, 1], [0, 0, -1, 0], [1, 1], 1), "negative padding"),
        (lambda: torch.ops.cnnkernels.conv2d(X[0], W, None, [1, 1], [0, 0, 0, 0], [1, 1], 1), "4-D"),
        (lambda: torch.ops.cnnkernels.conv2d(X[:, :, :0], W, None, [1, 1], [2, 2, 1, 1], [1, 1], 1), "zero batch"),
        (lambda: torch.ops.cnnkernels.conv2d(X, W[:, :2], None, [1, 1], [0, 0, 0, 0], [1, 1], 1), "channels"),
        (lambda: torch.ops.cnnkernels.conv2d(X.bool(), W.bool(), None, [1, 1], [0, 0, 0, 0], [1, 1], 1), "float32"),
        (lambda: torch.ops.cnnkernels.conv2d_backward_input(torch.ones(2, 6, 7, 7, dtype=torch.int32), W.int(), [2, 4, 9, 9], [1, 1], [0, 0, 0, 0], [1, 1], 1), "float32"),
        (lambda: torch.ops.cnnkernels.conv2d_backward_input(torch.randn(2, 6, 5, 5), W, [2, 4, 9, 9], [1, 1], [0, 0, 0, 0], [1, 1], 1), "grad_output"),
        (lambda: torch.ops.cnnkernels.conv2d_backward_weight(torch.randn(2, 6, 7, 7), X, [6, 4, 3, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1), "grad_output"),
        (lambda: torch.ops.cnnkernels.conv2d_backward_bias(torch.randn(6, 7)), "4-D"),
    ],
)
def test_operators_check_their_arguments(call, match):
    # The registered operators are public too (torch.ops.cnnkernels.*): they validate on their own.
    with pytest.raises(RuntimeError, match=match):
        call()


_GEOMETRY = ([1, 1], [0, 0, 0, 0], [1, 1], 1)
# Tensors whose sizes or dtypes disagree, handed to every backend's operators directly: each
# raises (the C++ host checks; the Triton plans' mirrors of them) rather than reading past the
# end of the smaller tensor.
BAD_OPERATOR_CALLS = {
    "padding_of_2": ("forward", (X, W, None, [1, 1], [0, 0], [1, 1], 1), "padding"),
    "bias_size": ("forward", (X, W, torch.randn(5), *_GEOMETRY), "bias"),
    "weight_dtype": ("forward", (X, W.double(), None, *_GEOMETRY), "same dtype"),
    "backward_input_batch": ("backward_input", (torch.randn(1, 6, 7, 7), W, [2, 4, 9, 9], *_GEOMETRY), "grad_output"),
    "backward_input_extent": ("backward_input", (torch.randn(2, 6, 7, 6), W, [2, 4, 9, 9], *_GEOMETRY),
                              "grad_output"),
    "backward_weight_channels": ("backward_weight", (torch.randn(2, 5, 7, 7), X, [6, 4, 3, 3], *_GEOMETRY),
                                 "grad_output"),
    "backward_weight_dtype": ("backward_weight", (torch.randn(2, 6, 7, 7).double(), X, [6, 4, 3, 3], *_GEOMETRY),
                              "same dtype"),
    "backward_bias_rank": ("backward_bias", (torch.randn(6, 7),), "4-D"),
}


@pytest.mark.parametrize("name", list(BAD_OPERATOR_CALLS))
def test_every_backends_operators_check_their_arguments(name, target):
    operator_raises(_conv_ops.BACKEND_OPS, target, BAD_OPERATOR_CALLS[name])
