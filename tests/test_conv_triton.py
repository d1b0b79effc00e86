"""The Triton conv2d operators beyond the shared grid of test_conv.py: every tuning
configuration, opcheck, torch.compile, determinism. On CPU tensors in Triton's interpreter
where there is no GPU, on CUDA tensors where there is one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import cnnkernels
from cnnkernels._conv_geometry import conv2d_output_shape
from cnnkernels.backend import triton_interpreted
from cnnkernels.ops import conv as conv_ops

if "triton" not in conv_ops.IMPLEMENTED:
    pytest.skip("triton is not installed", allow_module_level=True)

from cnnkernels.triton import _common as triton_common  # noqa: E402
from cnnkernels.triton import conv as T  # noqa: E402

DEVICE = "cpu" if triton_interpreted() else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("the triton backend needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

# Problems that exercise the edges of every tile: groups, stride, dilation, asymmetric padding,
# channel counts that fill no tile evenly. The first has 3 channels per group, which the
# forward and backward-weight kernels reduce over taps and channels together (as for an RGB
# stem); the second has enough channels for their tap-by-tap loop.
X_SHAPE, W_SHAPE = (3, 6, 11, 13), (10, 3, 3, 2)
CONV = ([2, 1], [1, 2, 0, 1], [1, 2], 2)
PROBLEMS = {
    "few_channels": (X_SHAPE, W_SHAPE, CONV),
    "per_tap": ((2, 40, 9, 10), (12, 20, 3, 2), ([2, 1], [1, 2, 0, 1], [1, 2], 2)),  # not square: R != S
    # 1x1, stride 1, no padding: the backward-weight kernel reads the input by pixel index alone.
    "pointwise": ((2, 24, 5, 7), (20, 24, 1, 1), ([1, 1], [0, 0, 0, 0], [1, 1], 1)),
}


def _problem(name="few_channels"):
    x_shape, w_shape, conv = PROBLEMS[name]
    x = torch.randn(x_shape, device=DEVICE)
    w = torch.randn(w_shape, device=DEVICE)
    y_shape = torch.ops.cnnkernels.conv2d(x.cpu(), w.cpu(), None, *conv).shape
    return x, w, torch.randn(y_shape, device=DEVICE), conv


def _reference(x, w, g, conv):
    """Our float64 CPU operators, which test_conv.py checks against torch on every argument
    (torch itself has no asymmetric padding to compare with directly)."""
    ops = torch.ops.cnnkernels
    xd, wd, gd = (t.cpu().double() for t in (x, w, g))
    return (ops.conv2d(xd, wd, None, *conv), ops.conv2d_backward_input(gd, wd, list(x.shape), *conv),
            ops.conv2d_backward_weight(gd, xd, list(w.shape), *conv))


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("index", range(len(T.FORWARD_CONFIGS)))
def test_every_forward_config(index, problem):
    x, w, g, conv = _problem(problem)
    ref = _reference(x, w, g, conv)[0]
    out = T.conv2d_forward(x, w, None, *conv, config=T.FORWARD_CONFIGS[index])
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("index", range(len(T.BACKWARD_INPUT_CONFIGS)))
def test_every_backward_input_config(index, problem):
    x, w, g, conv = _problem(problem)
    ref = _reference(x, w, g, conv)[1]
    out = T.conv2d_backward_input(g, w, list(x.shape), *conv, config=T.BACKWARD_INPUT_CONFIGS[index])
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("index", range(len(T.BACKWARD_WEIGHT_CONFIGS)))
def test_every_backward_weight_config(index, problem):
    x, w, g, conv = _problem(problem)
    ref = _reference(x, w, g, conv)[2]
    out = T.conv2d_backward_weight(g, x, list(w.shape), *conv, config=T.BACKWARD_WEIGHT_CONFIGS[index])
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_64_bit_offsets(problem, monkeypatch):
    """The int64 offset path, which real tensors take only past 2^31 elements (the GPU test
    test_conv_cuda.py::test_more_than_2_pow_31_elements covers that size), forced on small ones.
    The plans the other tests made for these problems hold int32: set aside, or this would
    test those again."""
    asked = []
    monkeypatch.setattr(T, "_offset_dtype", lambda *tensors, extent=0: asked.append(extent) or T.tl.int64)
    monkeypatch.setattr(triton_common, "_PLANS", {})
    x, w, g, conv = _problem(problem)
    ref = _reference(x, w, g, conv)
    out = (T.conv2d_forward(x, w, None, *conv), T.conv2d_backward_input(g, w, list(x.shape), *conv),
           T.conv2d_backward_weight(g, x, list(w.shape), *conv))
    assert len(asked) == 3  # a plan per operator
    for got, want in zip(out, ref):
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-3)


def test_opcheck():
    x, w, g, _ = _problem()
    b = torch.randn(W_SHAPE[0], device=DEVICE)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), *CONV)
    torch.library.opcheck(T.conv2d, args)
    torch.library.opcheck(T.conv2d_backward_input_op, (g, w.detach(), list(x.shape), *CONV))
    torch.library.opcheck(T.conv2d_backward_weight_op, (g, x.detach(), list(w.shape), *CONV))
    torch.library.opcheck(T.conv2d_backward_bias_op, (g,))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    net = torch.nn.Sequential(
        cnnkernels.nn.Conv2d(3, 8, 3, padding=1, backend="triton"),
        torch.nn.ReLU(),
        cnnkernels.nn.Conv2d(8, 4, 3, stride=2, groups=2, backend="triton"),
    ).to(DEVICE)
    x = torch.randn(2, 3, 10, 10, device=DEVICE)
    out = torch.compile(net, fullgraph=True)(x)
    ref = net(x)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    torch.testing.assert_close(grads, ref_grads)


def test_weight_and_bias_gradients_are_deterministic():
    x = torch.randn(4, 8, 24, 24, device=DEVICE)
    g = torch.randn(4, 8, 24, 24, device=DEVICE)
    conv = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    first_w = T.conv2d_backward_weight(g, x, [8, 8, 3, 3], *conv)
    first_b = T.conv2d_backward_bias(g)
    for _ in range(2):
        assert torch.equal(T.conv2d_backward_weight(g, x, [8, 8, 3, 3], *conv), first_w)
        assert torch.equal(T.conv2d_backward_bias(g), first_b)
    torch.testing.assert_close(first_b, g.sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, one_split", [(1, True), (8, False)])
def test_weight_and_bias_gradients_with_one_split_and_several(batch, one_split, dtype):
    """One split: the programs write the (channels_last, here) gradient in its own dtype; several:
    fp32 partials that a second kernel adds. Both against torch's autograd in float64."""
    x = torch.randn(batch, 8, 12, 12, device=DEVICE).to(dtype, memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, device=DEVICE).to(dtype, memory_format=torch.channels_last)
    g = torch.randn(batch, 16, 12, 12, device=DEVICE).to(dtype, memory_format=torch.channels_last)
    conv = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    assert (T._backward_weight_plan(g, x, [16, 8, 3, 3], *conv).splits == 1) == one_split
    assert (T._backward_bias_plan(g).splits == 1) == one_split
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    b = torch.zeros(16, dtype=torch.float64, device=DEVICE, requires_grad=True)
    TF.conv2d(xd, wd, b, padding=1).backward(g.double())
    dw, db = T.conv2d_backward_weight(g, x, [16, 8, 3, 3], *conv), T.conv2d_backward_bias(g)
    assert dw.dtype == db.dtype == dtype and dw.is_contiguous(memory_format=torch.channels_last)
    tolerance = dict(rtol=2e-2, atol=2e-1) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dw.double(), wd.grad, **tolerance)
    torch.testing.assert_close(db.double(), b.grad, **tolerance)


# (input channels, kernel size) -> whether each launch's two GEMM operands reach the kernel with
# their channels innermost: (input, weight) forward, (grad_output, weight) backward-input,
# (grad_output, input) backward-weight. NCHW operands are copied where they have at least
# FEW_CHANNELS channels per group and the kernel reads each element at least COPY_MIN_READS
# times: a 3x3 layer's activations nine times; a 1x1 layer's once (its weight is
# channel-contiguous in NCHW anyway); the few-channel backward-weight's grad_output once per
# tile of (channel, tap) columns, here one.
NCHW_CASES = {
    "3x3": (T.FEW_CHANNELS, 3, ([True, True], [True, True], [True, True])),
    "3x3-few-channels": (6, 3, ([False, False], [True, False], [False, False])),
    "1x1": (T.FEW_CHANNELS, 1, ([False, True], [False, True], [False, False])),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", NCHW_CASES.values(), ids=NCHW_CASES.keys())
def test_nchw_operands_reach_the_kernels_channels_last_where_read_often(case, dtype, monkeypatch):
    """NCHW activations and weights reach the GEMM kernels as channels_last copies where
    _channels_innermost asks for them, and what the three launchers return keeps the callers'
    layout (NCHW) and matches torch's autograd either way."""
    channels, kernel, innermost = case
    launched = []
    launch = T._launch
    monkeypatch.setattr(T, "_launch", lambda kernel, grid, args, *rest, **kw: (
        launched.append([a for a in args if isinstance(a, torch.Tensor)]), launch(kernel, grid, args, *rest, **kw)))
    # 8*7*6 output pixels: the weight is read once per 128 of them, 3 times (COPY_MIN_READS).
    x = torch.randn(8, channels, 7, 6, device=DEVICE).to(dtype)
    w = torch.randn(T.FEW_CHANNELS + 3, channels, kernel, kernel, device=DEVICE).to(dtype)
    conv = ([1, 1], [kernel // 2] * 4, [1, 1], 1)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    ref = TF.conv2d(xd, wd, padding=kernel // 2)
    g = torch.randn(ref.shape, device=DEVICE).to(dtype)
    want_x, want_w = torch.autograd.grad(ref, (xd, wd), g.double())
    got = (T.conv2d_forward(x, w, None, *conv), T.conv2d_backward_input(g, w, list(x.shape), *conv),
           T.conv2d_backward_weight(g, x, list(w.shape), *conv))
    tolerance = dict(rtol=2e-2, atol=2e-1) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-3)
    for out, want in zip(got, (ref, want_x, want_w)):
        assert out.is_contiguous() and out.dtype == dtype
        torch.testing.assert_close(out.double(), want.detach(), **tolerance)
    operands = [[t.stride(1) == 1 for t in tensors[:2]] for tensors in launched[:3]]
    assert operands == list(innermost)


def _pixel_layouts(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """t's values in layouts whose pixels (n, h, w) lie evenly spaced (channels_last) or not
    (NCHW, whose images are C planes apart; a view into a wider and taller tensor)."""
    wide = torch.zeros(t.shape[0], t.shape[1], t.shape[2] + 1, t.shape[3] + 3, device=t.device)
    wide[:, :, 1:, 2:-1] = t
    return {"nchw": t.contiguous(), "channels_last": t.contiguous(memory_format=torch.channels_last),
            "view": wide[:, :, 1:, 2:-1]}


@pytest.mark.parametrize("x_layout", ["nchw", "channels_last", "view"])
@pytest.mark.parametrize("g_layout", ["nchw", "channels_last", "view", "expanded"])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("image", [(6, 7), (3, 2)])
def test_weight_and_bias_gradients_in_any_pixel_layout(image, kernel, g_layout, x_layout, monkeypatch):
    """The backward-weight and bias kernels address a tensor's pixels by pixel index where they
    lie evenly spaced, and by (n, p, q) otherwise; each path against torch's autograd. A 1x1
    convolution with stride 1 and no padding reads its input by pixel index too. Reduction
    blocks of 16 pixels, so (n, p, q) is carried from block to block across rows and, on the
    3x2 images, across whole images, and the splits start inside images."""
    monkeypatch.setattr(T, "WEIGHT_REDUCTION_BLOCK", 16)
    monkeypatch.setattr(triton_common, "_PLANS", {})  # plans made with the usual block size kept apart
    conv = ([1, 1], [kernel // 2] * 4, [1, 1], 1)
    x = _pixel_layouts(torch.randn(5, 12, *image, device=DEVICE))[x_layout]
    w = torch.randn(10, 12, kernel, kernel, device=DEVICE, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(10, device=DEVICE, dtype=torch.float64, requires_grad=True)
    xd = x.double().requires_grad_()
    ref = TF.conv2d(xd, w, b, padding=kernel // 2)
    g = (torch.ones(1, device=DEVICE).expand(ref.shape) if g_layout == "expanded"
         else _pixel_layouts(torch.randn(ref.shape, device=DEVICE))[g_layout])
    want_w, want_b = torch.autograd.grad(ref, (w, b), g.double())
    flags = T._backward_weight_plan(g, x, list(w.shape), *conv).constexprs
    assert flags["DY_FLAT"] == (g_layout in ("channels_last", "expanded"))
    assert flags["X_FLAT"] == (kernel == 1 and x_layout == "channels_last")
    assert T._backward_bias_plan(g).constexprs["DY_FLAT"] == flags["DY_FLAT"]
    torch.testing.assert_close(T.conv2d_backward_weight(g, x, list(w.shape), *conv).double(), want_w,
                               rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(T.conv2d_backward_bias(g).double(), want_b, rtol=1e-4, atol=1e-3)


def test_pixel_stride_finds_evenly_spaced_pixels():
    """_pixel_stride(t) = s means pixel (n, h, w) of t is at ((n*H + h)*W + w) * s; checked on
    every element, for layouts with and without such an s (size-1 dimensions with odd strides)."""
    base = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    cases = {**_pixel_layouts(base.float()), "expanded": torch.zeros(1).expand(2, 3, 4, 5),
             "one_row": torch.zeros(2, 3, 1, 5).as_strided((2, 3, 1, 5), (15, 1, 7, 3)),
             "transposed_hw": base.transpose(2, 3)}
    for name, t in cases.items():
        stride = T._pixel_stride(t)
        assert (stride is not None) == (name in ("channels_last", "expanded", "one_row")), name
        if stride is None:
            continue
        n, h, w = torch.meshgrid(*(torch.arange(size) for size in (t.shape[0], t.shape[2], t.shape[3])), indexing="ij")
        offsets = n * t.stride(0) + h * t.stride(2) + w * t.stride(3)
        assert torch.equal(offsets, ((n * t.shape[2] + h) * t.shape[3] + w) * stride), name


@pytest.mark.parametrize("extent", ["tall", "padded", "small"])
def test_window_coordinates_past_2_pow_29_take_64_bit_indices(extent):
    """The forward and backward-weight kernels mask a window row or tap off by moving its
    coordinate by 2^30 (_outside), which real coordinates must stay well below: an input
    2^29 rows tall, or padded by 2^28, takes the int64 path although its tensors hold fewer
    than 2^31 elements. Plans only (on storage-less tensors): such problems would take 1-2 GB."""
    H, pad = {"tall": (2**29, 1), "padded": (4, 2**28), "small": (2**20, 1)}[extent]
    x = torch.empty(1, 3, H, 1, device="meta")
    w = torch.empty(2, 3, 1, 1, device="meta")
    geometry = ([1, 1], [pad, pad, 0, 0], [1, 1], 1)
    y = torch.empty(conv2d_output_shape(x.shape, w.shape, *geometry), device="meta")
    assert max(t.numel() for t in (x, y)) < 2**31 - 2**16
    want = T.tl.int32 if extent == "small" else T.tl.int64
    assert T._forward_plan(x, w, None, *geometry).constexprs["INDEX"] == want
    assert T._backward_weight_plan(y, x, list(w.shape), *geometry).constexprs["INDEX"] == want


def test_reduction_split_covers_the_pixels_in_whole_blocks():
    splits, chunk = T._split(1 << 20, 1, T.WEIGHT_REDUCTION_BLOCK)
    assert splits > 1 and chunk % T.WEIGHT_REDUCTION_BLOCK == 0 and splits * chunk >= 1 << 20
    splits, chunk = T._split(100, 10_000, T.WEIGHT_REDUCTION_BLOCK)
    assert splits == 1 and chunk >= 100 and chunk % T.WEIGHT_REDUCTION_BLOCK == 0
    assert T._split(0, 1, T.WEIGHT_REDUCTION_BLOCK) == (1, T.WEIGHT_REDUCTION_BLOCK)


def test_refuses_tensors_it_cannot_run_on():
    if DEVICE == "cpu":
        x = torch.randn(1, 2, 5, 5, device="meta")
        with pytest.raises(RuntimeError, match="CUDA device"):
            T.conv2d_forward(x, torch.randn(2, 2, 3, 3, device="meta"), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)
    else:
        with pytest.raises(RuntimeError, match="CUDA device"):
            T.conv2d_forward(torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)


def test_matches_torch_on_a_strided_channels_last_layer():
    x = torch.randn(2, 16, 15, 15, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 16, 3, 3, device=DEVICE)
    b = torch.randn(24, device=DEVICE)
    out = cnnkernels.functional.conv2d(x, w, b, stride=2, padding=1, backend="triton")
    ref = TF.conv2d(x, w, b, stride=2, padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-3 if DEVICE == "cpu" else 3e-2  # on a GPU both sides use TF32 by default
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def test_size_one_dimensions_with_any_stride():
    """A dimension of size 1 may have any stride (torch gives a 1x1 weight (C, 1, 1, 1)); the
    launchers pass such strides as 0, which must not change the result of any operator."""
    x = torch.randn(1, 16, 6, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    x = x.as_strided(x.shape, (481, 1, 5 * 16, 16)).requires_grad_()  # batch 1, an odd stride
    w = torch.randn(24, 16, 1, 1, device=DEVICE)
    w = w.as_strided(w.shape, (16, 1, 3, 5)).requires_grad_()
    b = torch.randn(24, device=DEVICE, requires_grad=True)
    out = cnnkernels.functional.conv2d(x, w, b, backend="triton")
    ref = TF.conv2d(x, w, b)
    tol = 1e-3 if DEVICE == "cpu" else 3e-2
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    for ours, theirs in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)


# Pointwise problems (1x1, stride 1, no padding, one group) on channels_last operands run on the
# tensor-descriptor kernels: 70 pixels and 24 -> 40 channels fill no tile evenly; 800 pixels give
# the weight gradient several splits.
POINTWISE = ([1, 1], [0, 0, 0, 0], [1, 1], 1)


def _pointwise_operands(batch=2, image=(5, 7), dtype=torch.float32):
    def channels_last(*shape):
        return torch.randn(shape, device=DEVICE).to(dtype, memory_format=torch.channels_last)
    return channels_last(batch, 24, *image), torch.randn(40, 24, 1, 1, device=DEVICE).to(dtype), \
        channels_last(batch, 40, *image)


def _launched(monkeypatch) -> list[str]:
    """The names of the kernels the conv launchers launch from now on (the test's)."""
    names = []
    launch = T._launch
    monkeypatch.setattr(T, "_launch", lambda kernel, *args, **kwargs: names.append(kernel.__name__)
                        or launch(kernel, *args, **kwargs))
    return names


def _autograd_reference(x, w, b, g, conv=POINTWISE):
    """torch's output and gradients (input, weight) in float64 on the CPU, for a `conv` whose
    padding (top, bottom, left, right) is symmetric."""
    xd, wd = (t.detach().cpu().double().requires_grad_() for t in (x, w))
    stride, padding, dilation, groups = conv
    y = TF.conv2d(xd, wd, None if b is None else b.cpu().double(), stride, padding[::2], dilation, groups)
    y.backward(g.cpu().double())
    return y.detach(), xd.grad, wd.grad


@pytest.mark.parametrize("index", range(len(T.POINTWISE_CONFIGS)))
def test_every_pointwise_config(index, monkeypatch):
    x, w, g = _pointwise_operands()
    b = torch.randn(40, device=DEVICE)
    launched = _launched(monkeypatch)
    config = T.POINTWISE_CONFIGS[index]
    y = T.conv2d_forward(x, w, b, *POINTWISE, config=config)
    dx = T.conv2d_backward_input(g, w, list(x.shape), *POINTWISE, config=config)
    assert launched == ["_pointwise_gemm_kernel"] * 2
    for got, want in zip((y, dx), _autograd_reference(x, w, b, g)):
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch, image, splits", [(2, (5, 7), 1), (8, (10, 10), 2)])
@pytest.mark.parametrize("index", range(len(T.POINTWISE_WEIGHT_CONFIGS)))
def test_every_pointwise_weight_config(index, batch, image, splits, monkeypatch):
    x, w, g = _pointwise_operands(batch, image)
    assert T._backward_weight_plan(g, x, list(w.shape), *POINTWISE).splits == splits
    launched = _launched(monkeypatch)
    dw = T.conv2d_backward_weight(g, x, list(w.shape), *POINTWISE, config=T.POINTWISE_WEIGHT_CONFIGS[index])
    assert launched == ["_pointwise_weight_kernel"]
    torch.testing.assert_close(dw.cpu().double(), _autograd_reference(x, w, None, g)[2], rtol=1e-4, atol=1e-3)


def test_pointwise_kernels_in_16_bit_through_autograd(monkeypatch):
    """bfloat16 operands, the untuned default configs, the functional's autograd with a bias."""
    x, w, g = _pointwise_operands(dtype=torch.bfloat16)
    x, w = x.requires_grad_(), w.requires_grad_()
    b = torch.randn(40, device=DEVICE).to(torch.bfloat16).requires_grad_()
    launched = _launched(monkeypatch)
    y = cnnkernels.functional.conv2d(x, w, b, backend="triton")
    grads = torch.autograd.grad(y, (x, w, b), g)
    assert launched == ["_pointwise_gemm_kernel", "_pointwise_gemm_kernel", "_pointwise_weight_kernel"]
    y_ref, dx_ref, dw_ref = _autograd_reference(x, w, b, g)
    for got, want in zip((y, *grads[:2]), (y_ref, dx_ref, dw_ref)):
        torch.testing.assert_close(got.cpu().double(), want, rtol=2e-2, atol=2e-1)
    torch.testing.assert_close(grads[2].cpu().double(), g.double().sum(dim=(0, 2, 3)).cpu(), rtol=2e-2, atol=2e-1)


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values in a channels_last tensor one element into its storage (not 16-byte aligned)."""
    flat = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
    n, c, h, w = t.shape
    out = flat[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    out.copy_(t)
    return out


# Problems the tensor-descriptor kernels cannot address, and the kernels that run instead.
POINTER_CASES = {
    "nchw": lambda x, w, g: (x.contiguous(), w, g.contiguous(), POINTWISE),
    "stride_2": lambda x, w, g: (x, w, g[:, :, ::2, ::2].contiguous(memory_format=torch.channels_last),
                                 ([2, 2], [0, 0, 0, 0], [1, 1], 1)),
    "padded": lambda x, w, g: (x, w, TF.pad(g, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last),
                               ([1, 1], [1, 1, 1, 1], [1, 1], 1)),
    "groups": lambda x, w, g: (x, w[:, :12].contiguous(), g, ([1, 1], [0, 0, 0, 0], [1, 1], 2)),
    "float64": lambda x, w, g: (x.double(), w.double(), g.double(), POINTWISE),
    "rows_not_16_bytes": lambda x, w, g: (x[:, :6].to(torch.bfloat16, memory_format=torch.channels_last),
                                          w[:, :6].to(torch.bfloat16), g.to(torch.bfloat16), POINTWISE),
    "misaligned": lambda x, w, g: (_misaligned(x), w, _misaligned(g), POINTWISE),
}


@pytest.mark.parametrize("case", POINTER_CASES.values(), ids=POINTER_CASES.keys())
def test_pointwise_problems_the_descriptors_cannot_address_take_the_pointer_kernels(case, monkeypatch):
    x, w, g, conv = case(*_pointwise_operands())
    launched = _launched(monkeypatch)
    y = T.conv2d_forward(x, w, None, *conv)
    dx = T.conv2d_backward_input(g, w, list(x.shape), *conv)
    dw = T.conv2d_backward_weight(g, x, list(w.shape), *conv)
    assert launched == ["_conv2d_forward_kernel", "_conv2d_backward_input_kernel", "_conv2d_backward_weight_kernel"]
    tolerance = dict(rtol=2e-2, atol=2e-1) if x.dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-3)
    for got, want in zip((y, dx, dw), _autograd_reference(x, w, None, g, conv)):
        torch.testing.assert_close(got.cpu().double(), want, **tolerance)


def test_a_pointwise_config_named_for_a_call_on_the_pointer_kernels(monkeypatch):
    """Whether a pointwise problem runs on descriptors depends on the call (its addresses), so
    the launchers take either twin of a tile for either kind of kernel."""
    x, w, g = _pointwise_operands()
    x, g = _misaligned(x), _misaligned(g)
    launched = _launched(monkeypatch)
    y = T.conv2d_forward(x, w, None, *POINTWISE, config=T.POINTWISE_CONFIGS[2])
    dx = T.conv2d_backward_input(g, w, list(x.shape), *POINTWISE, config=T.POINTWISE_CONFIGS[2])
    dw = T.conv2d_backward_weight(g, x, list(w.shape), *POINTWISE, config=T.POINTWISE_WEIGHT_CONFIGS[2])
    assert launched == ["_conv2d_forward_kernel", "_conv2d_backward_input_kernel", "_conv2d_backward_weight_kernel"]
    for got, want in zip((y, dx, dw), _autograd_reference(x, w, None, g)):
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.cuda
def test_autotuned_launch_matches_torch(monkeypatch):
    monkeypatch.setenv("CNNKERNELS_TRITON_AUTOTUNE", "1")
    torch.backends.cudnn.allow_tf32 = False
    try:
        x = torch.randn(4, 32, 20, 20, device="cuda", requires_grad=True)
        w = torch.randn(48, 32, 3, 3, device="cuda", requires_grad=True)
        out = cnnkernels.functional.conv2d(x, w, stride=2, padding=1, backend="triton")
        ref = TF.conv2d(x, w, stride=2, padding=1)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g),
                                   rtol=1e-4, atol=1e-3)
    finally:
        torch.backends.cudnn.allow_tf32 = True


GEMM_KERNELS = [(T._conv2d_forward_kernel, "Kg", "x"), (T._conv2d_backward_input_kernel, "Cg", "dy")]


def _tried(kernel, dtype, **named):
    """Indices into the kernel's config list of the configs its autotuner tries, for GEMM
    operands of `dtype` and the other arguments `named` (7 where not given)."""
    tuner = T._TUNED[kernel]
    args = dict.fromkeys(kernel.arg_names, 7) | dict.fromkeys(["x", "dy"], torch.empty(0, dtype=dtype)) | named
    return [tuner.configs.index(c) for c in tuner.early_config_prune(tuner.configs, args)]


@pytest.mark.parametrize("kernel, columns_arg, operand_arg", GEMM_KERNELS, ids=["forward", "backward_input"])
def test_autotune_tries_narrow_tiles_for_few_columns(kernel, columns_arg, operand_arg):
    """The autotuner tries the 16-column tiles on GEMMs with at most 32 columns (the group's
    output channels in forward, input channels in backward-input) and the wider ones above 16,
    and an untuned launch takes the first it would try."""
    narrow = [i for i, c in enumerate(T.FORWARD_CONFIGS) if c.kwargs["BLOCK_N"] == T.NARROW_COLUMNS]
    wide = [i for i in range(len(T.FORWARD_CONFIGS)) if i not in narrow]
    assert narrow and wide

    def tried(columns):  # many input channels in the forward: the capped tile is tried among the wide
        return _tried(kernel, torch.bfloat16, **{"Cg": 512, columns_arg: columns})

    assert tried(3) == tried(16) == narrow
    assert tried(17) == tried(32) == wide + narrow
    assert tried(33) == tried(512) == wide
    x, w, g, conv = _problem("few_channels")  # 3 input and 5 output channels per group
    assert T._forward_plan(x, w, None, *conv).tiles[0] is T.FORWARD_CONFIGS[narrow[0]]
    assert T._backward_input_plan(g, w, list(x.shape), *conv).tiles[0] is T.FORWARD_CONFIGS[narrow[0]]


@pytest.mark.parametrize("kernel", [T._conv2d_forward_kernel, T._conv2d_backward_input_kernel,
                                    T._conv2d_backward_weight_kernel], ids=["forward", "backward_input", "backward_weight"])
def test_autotune_tries_register_capped_tiles_on_16_bit_operands_only(kernel):
    """The configs whose registers are capped (so that two programs share an SM) are tried on
    fp16 and bf16 operands, which fit the cap without spilling, and never on fp32 or fp64, nor on
    few-channel layers (an RGB stem), which would spill; every other config is tried on all of
    them (a wide GEMM's configs here). An untuned launch takes an uncapped config."""
    configs = T._TUNED[kernel].configs
    capped = {i for i, c in enumerate(configs) if c.maxnreg is not None}
    assert capped == {1} and configs[1].maxnreg == T.TWO_PROGRAMS_PER_SM
    assert all(c.maxnreg is None or c.num_warps * 32 * c.maxnreg * 2 <= 65536 for c in configs)
    wide = dict(Kg=512, Cg=512)
    for dtype in (torch.float16, torch.bfloat16):
        assert capped <= set(_tried(kernel, dtype, **wide))
    for dtype in (torch.float32, torch.float64):
        assert set(_tried(kernel, dtype, **wide)) == set(_tried(kernel, torch.bfloat16, **wide)) - capped
    for channels in (3, T.FEW_CHANNELS - 1):
        few = dict(Kg=512, Cg=channels)
        assert not capped & set(_tried(kernel, torch.bfloat16, **few)), channels
        assert set(_tried(kernel, torch.bfloat16, **few)) == set(_tried(kernel, torch.float32, **few))
    assert configs[0].maxnreg is None
