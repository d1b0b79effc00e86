"""Normalisation against torch.nn.functional and torch.autograd, on every backend testable here
(helpers.targets_for): outputs, input/parameter/residual gradients, running statistics, memory
formats, errors. Inputs are mean-shifted (1000 + randn) unless a test says otherwise: they break
any E[x^2] - E[x]^2 variance."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import cnnkernels.functional as F
import cnnkernels.nn as cnn
from cnnkernels._layout import memory_format_of
from cnnkernels.ops import norm as norm_ops
from helpers import (assert_behaves_like_torch, assert_close, message_names, operator_raises, raises_like_torch,
                     targets_for)

CL = torch.channels_last
TARGETS = targets_for(norm_ops.IMPLEMENTED)
HALF = (torch.float16, torch.bfloat16)
TORCH_ACT = {"none": lambda z: z, "relu": torch.relu, "silu": TF.silu, "gelu": TF.gelu}

# (shape, channels_last): (N, C), (N, C, L), NCHW and channels_last, N = 1, H*W = 1.
SHAPES = [((5, 3), False), ((2, 3, 5), False), ((2, 4, 3, 5), False), ((2, 4, 3, 5), True), ((1, 4, 2, 3), True),
          ((3, 4, 1, 1), False)]


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


def shifted(shape, dtype=torch.float64, channels_last=False, shift=1000.0):
    x = (shift + torch.randn(shape, dtype=torch.float64)).to(dtype)
    return x.contiguous(memory_format=CL) if channels_last else x


def param(n, dtype=torch.float64, grad=True):
    return (1 + 0.5 * torch.randn(n, dtype=torch.float64)).to(dtype).requires_grad_(grad)


def assert_like_torch(ours_fn, torch_fn, tensors, target, dtype, scale=1.0):
    """Runs ours on target's device and torch on the CPU in float64 on the same inputs (rounded
    to `dtype`), so the reference is exact to the tolerance; compares the output, its layout,
    and the gradient of every tensor that requires one (None entries pass through)."""
    ref_dtype = torch.float64

    def leaves(device, dt):  # both sides see the inputs rounded to `dtype`
        return [None if t is None else t.detach().to(dtype).to(device, dt).requires_grad_(t.requires_grad)
                for t in tensors]

    ref_in, our_in = leaves("cpu", ref_dtype), leaves(target.device, dtype)
    try:
        ref = torch_fn(*ref_in)
    except Exception as e:  # an argument combination torch rejects: we reject it too
        with pytest.raises(type(e)):
            ours_fn(*our_in)
        return None
    out = ours_fn(*our_in)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out.cpu(), ref.detach(), dtype, scale)
    assert out.is_contiguous(memory_format=CL) == ref.is_contiguous(memory_format=CL)
    assert out.is_contiguous() == ref.is_contiguous()
    wrt = [i for i, t in enumerate(tensors) if t is not None and t.requires_grad]
    g = torch.randn(ref.shape, dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(out, [our_in[i] for i in wrt], g.to(target.device, dtype))
    ref_grads = torch.autograd.grad(ref, [ref_in[i] for i in wrt], g.to(ref_dtype))
    for i, ours, theirs in zip(wrt, grads, ref_grads):
        assert ours.shape == theirs.shape, f"gradient of argument {i}"
        assert_close(ours.cpu(), theirs, dtype, scale)
    return out


# ---- batch norm ----------------------------------------------------------------------------

BN_GRID = list(itertools.product(SHAPES, [True, False], ["none", "relu", "add_relu"]))


def _bn_pair(activation, training, momentum=0.1, eps=1e-5):
    """(ours, torch's) batch norm with the given tail, as functions of (x, w, b, residual, rm, rv)."""
    def ours(x, w, b, r, rm, rv, backend):
        if activation == "add_relu":
            return F.batch_norm_add_relu(x, r, rm, rv, w, b, training, momentum, eps, backend=backend)
        fn = F.batch_norm_relu if activation == "relu" else F.batch_norm
        return fn(x, rm, rv, w, b, training, momentum, eps, backend=backend)

    def theirs(x, w, b, r, rm, rv):
        z = TF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
        if activation == "add_relu":
            return torch.relu(z + r)
        return TORCH_ACT[activation](z)

    return ours, theirs


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("shape_cl, affine, activation", BN_GRID, ids=str)
def test_batch_norm(shape_cl, affine, activation, training, target):
    shape, channels_last = shape_cl
    channels = shape[1]
    x = shifted(shape, channels_last=channels_last).requires_grad_()
    w, b = (param(channels), param(channels)) if affine else (None, None)
    r = torch.randn(shape, dtype=torch.float64).requires_grad_() if activation == "add_relu" else None
    ours, theirs = _bn_pair(activation, training)
    # Running statistics: updated in training, used (and left alone) in eval.
    stats = [1000 + torch.randn(channels, dtype=torch.float64), 1 + torch.rand(channels, dtype=torch.float64)]
    ours_stats, torch_stats = [s.clone().to(target.device) for s in stats], [s.clone() for s in stats]
    assert_like_torch(lambda x, w, b, r: ours(x, w, b, r, *ours_stats, target.backend),
            lambda x, w, b, r: theirs(x, w, b, r, *torch_stats), [x, w, b, r], target, torch.float64)
    for a, e in zip(ours_stats, torch_stats):
        assert_close(a.cpu(), e, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["none", "add_relu"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_dtypes(dtype, activation, channels_last, target):
    shape = (4, 8, 5, 6)
    x = shifted(shape, channels_last=channels_last).requires_grad_()
    r = torch.randn(shape, dtype=torch.float64).requires_grad_() if activation == "add_relu" else None
    ours, theirs = _bn_pair(activation, training=True)
    # fp32 inputs near 1000 carry 6e-5 of rounding each; both sides see the same rounded input,
    # but their mean's last bits differ, which moves x - mean by up to ~1e-4.
    assert_like_torch(lambda x, w, b, r: ours(x, w, b, r, None, None, target.backend), lambda x, w, b, r: theirs(x, w, b, r, None, None),
            [x, param(8), param(8), r], target, dtype, scale=10.0)


def test_batch_norm_module_steps(target):
    """Several training steps (exponential and cumulative momentum), then eval: the modules'
    outputs, gradients and every buffer follow torch's."""
    for momentum in (0.1, None):
        ours = cnn.BatchNorm2d(4, momentum=momentum, backend=target.backend, dtype=torch.float64).to(target.device)
        theirs = torch.nn.BatchNorm2d(4, momentum=momentum, dtype=torch.float64)
        for step in range(3):
            x = shifted((3, 4, 5, 2), shift=10.0 * step)
            assert_close(ours(x.to(target.device)).cpu(), theirs(x), torch.float64)
        mine = ours.state_dict()
        assert list(mine) == list(theirs.state_dict())
        for key, value in theirs.state_dict().items():
            if value.is_floating_point():
                assert_close(mine[key].cpu(), value, torch.float64)
            else:  # num_batches_tracked
                assert torch.equal(mine[key].cpu(), value)
        ours.eval()
        theirs.eval()
        x = shifted((2, 4, 3, 3), shift=15.0)
        assert_like_torch(lambda x: ours(x), lambda x: theirs(x), [x.requires_grad_()], target, torch.float64)


def test_batch_norm_fused_modules(target):
    """BatchNormReLU2d and BatchNormAddReLU2d: BatchNorm2d's state_dict keys, the fused
    result, and no running statistics kept when track_running_stats=False."""
    bn = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    fused = cnn.BatchNormAddReLU2d(4, backend=target.backend, dtype=torch.float64).to(target.device)
    assert list(fused.state_dict()) == list(bn.state_dict())
    x, r = shifted((2, 4, 3, 3)), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert_close(fused(x.to(target.device), r.to(target.device)).cpu(), torch.relu(bn(x) + r), torch.float64)
    relu = cnn.BatchNormReLU2d(4, track_running_stats=False, backend=target.backend, dtype=torch.float64)
    relu = relu.to(target.device).eval()
    assert relu.running_mean is None
    assert_close(relu(x.to(target.device)).cpu(), torch.relu(TF.batch_norm(x, None, None, training=True)),
                 torch.float64)


def test_fused_relu_passes_no_gradient_where_it_is_off(target):
    """An infinite gradient where the fused ReLU's input is <= 0 contributes nothing, as torch's
    threshold_backward (a multiply by the derivative 0 would make it NaN and spread it through
    the BatchNorm sums to the whole channel)."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    w, b = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    ref_x = x.clone().requires_grad_()
    ref_y = torch.relu(TF.batch_norm(ref_x, None, None, w, b, training=True))
    g = torch.where(ref_y > 0, torch.randn_like(x), torch.full_like(x, float("inf")))
    ref_grad = torch.autograd.grad(ref_y, ref_x, g)[0]
    ours_x = x.to(target.device).requires_grad_()
    ours_y = F.batch_norm_relu(ours_x, None, None, w.to(target.device), b.to(target.device), training=True,
                               backend=target.backend)
    ours_grad = torch.autograd.grad(ours_y, ours_x, g.to(target.device))[0].cpu()
    assert torch.isfinite(ref_grad).all()
    assert_close(ours_grad, ref_grad, torch.float64)


# ---- group norm and layer norm --------------------------------------------------------------

GN_GRID = list(itertools.product(
    [((2, 6), False), ((2, 6, 5), False), ((2, 6, 3, 4), False), ((2, 6, 3, 4), True), ((1, 6, 1, 1), True)],
    [1, 2, 6], [True, False], ["none", "relu", "silu", "gelu"]))


def torch_group_norm(x, groups, w, b):
    """torch's group norm, computed on the NCHW copy and given back in x's layout: torch's CPU
    kernel for channels_last inputs takes the variance as E[x^2] - E[x]^2 (off by 0.6 in float32,
    5e-10 in float64 on 1000 + randn), its NCHW kernel does not."""
    return TF.group_norm(x.contiguous(), groups, w, b, 1e-5).contiguous(memory_format=memory_format_of(x))


@pytest.mark.parametrize("shape_cl, groups, affine, activation", GN_GRID, ids=str)
def test_group_norm(shape_cl, groups, affine, activation, target):
    shape, channels_last = shape_cl
    x = shifted(shape, channels_last=channels_last).requires_grad_()
    w, b = (param(6), param(6)) if affine else (None, None)
    assert_like_torch(lambda x, w, b: F.group_norm(x, groups, w, b, 1e-5, activation=None if activation == "none" else activation,
                                         backend=target.backend),
            lambda x, w, b: TORCH_ACT[activation](torch_group_norm(x, groups, w, b)), [x, w, b], target, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_dtypes(dtype, channels_last, target):
    x = shifted((2, 8, 4, 5), channels_last=channels_last).requires_grad_()
    assert_like_torch(lambda x, w, b: F.group_norm(x, 4, w, b, activation="silu", backend=target.backend),
            lambda x, w, b: TF.silu(torch_group_norm(x, 4, w, b)), [x, param(8), param(8)], target, dtype, scale=10.0)


@pytest.mark.parametrize("shape, normalized", [((3, 7), (7,)), ((2, 3, 5), (5,)), ((2, 3, 5), (3, 5)),
                                               ((2, 3, 4, 5), (5,)), ((2, 3, 4, 5), (3, 4, 5))], ids=str)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_norm(shape, normalized, affine, channels_last, target):
    x = shifted(shape, channels_last=channels_last and len(shape) == 4).requires_grad_()
    w = param(normalized) if affine != "none" else None
    b = param(normalized) if affine == "both" else None
    assert_like_torch(lambda x, w, b: F.layer_norm(x, normalized, w, b, 1e-5, backend=target.backend),
            lambda x, w, b: TF.layer_norm(x, normalized, w, b, 1e-5), [x, w, b], target, torch.float64)


# ---- instance norm -------------------------------------------------------------------------


@pytest.mark.parametrize("shape, channels_last", [((2, 3, 5), False), ((2, 3, 4, 5), False), ((2, 3, 4, 5), True),
                                                  ((1, 3, 2, 2), False)], ids=str)
# Without input statistics torch requires running ones (test_errors checks that error).
@pytest.mark.parametrize("running, use_input_stats", [(False, True), (True, True), (True, False)])
def test_instance_norm(shape, channels_last, running, use_input_stats, target):
    x = shifted(shape, channels_last=channels_last).requires_grad_()
    w, b = param(3), param(3)
    stats = [1000 + torch.randn(3, dtype=torch.float64), 1 + torch.rand(3, dtype=torch.float64)] if running else [None, None]
    ours_stats = [None if s is None else s.clone().to(target.device) for s in stats]
    torch_stats = [None if s is None else s.clone() for s in stats]
    assert_like_torch(lambda x, w, b: F.instance_norm(x, *ours_stats, w, b, use_input_stats, 0.2, 1e-5, backend=target.backend),
            lambda x, w, b: TF.instance_norm(x, *torch_stats, w, b, use_input_stats, 0.2, 1e-5), [x, w, b], target,
            torch.float64)
    for a, e in zip(ours_stats, torch_stats):
        if e is not None:
            assert_close(a.cpu(), e, torch.float64)


def test_instance_norm_module(target):
    ours = cnn.InstanceNorm2d(3, affine=True, track_running_stats=True, backend=target.backend, dtype=torch.float64)
    theirs = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True, dtype=torch.float64)
    ours.to(target.device)
    for _ in range(2):
        x = shifted((2, 3, 4, 4))
        assert_close(ours(x.to(target.device)).cpu(), theirs(x), torch.float64)
    x = shifted((3, 4, 4))  # unbatched
    ours.eval()
    theirs.eval()
    assert_close(ours(x.to(target.device)).cpu(), theirs(x), torch.float64)
    assert_close(ours.running_var.cpu(), theirs.running_var, torch.float64)


# ---- RMS norm ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, normalized, channels_last", [((6, 16), (16,), False), ((2, 3, 5), (3, 5), False),
                                                             ((2, 3, 4, 5), (5,), True), ((2, 4, 3, 3), (4, 3, 3), True),
                                                             ((7, 1), (1,), False)], ids=str)
@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm(shape, normalized, channels_last, weight, eps, target):
    x = shifted(shape, channels_last=channels_last, shift=3.0).requires_grad_()
    w = param(normalized) if weight else None
    assert_like_torch(lambda x, w: F.rms_norm(x, normalized, w, eps, backend=target.backend),
            lambda x, w: TF.rms_norm(x, normalized, w, eps), [x, w], target, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rms_norm_dtypes(dtype, target):
    x = torch.randn(12, 64, dtype=torch.float64).requires_grad_()
    assert_like_torch(lambda x, w: F.rms_norm(x, (64,), w, backend=target.backend), lambda x, w: TF.rms_norm(x, (64,), w),
            [x, param(64)], target, dtype)


# ---- local response normalisation ----------------------------------------------------------


@pytest.mark.parametrize("shape, channels_last", [((2, 7, 5), False), ((2, 7, 3, 4), False), ((2, 7, 3, 4), True),
                                                  ((1, 3, 2, 2, 2), False)], ids=str)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 9])
def test_local_response_norm(shape, channels_last, size, target):
    x = shifted(shape, channels_last=channels_last, shift=0.0).requires_grad_()
    assert_like_torch(lambda x: F.local_response_norm(x, size, 1e-2, 0.75, 2.0, backend=target.backend),
            lambda x: TF.local_response_norm(x, size, 1e-2, 0.75, 2.0), [x], target, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_local_response_norm_dtypes(dtype, target):
    x = (3 * torch.randn(2, 16, 4, 4, dtype=torch.float64)).contiguous(memory_format=CL).requires_grad_()
    assert_like_torch(lambda x: F.local_response_norm(x, 5, 1e-1, backend=target.backend),
            lambda x: TF.local_response_norm(x, 5, 1e-1), [x], target, dtype)


# ---- the operators themselves: gradcheck, opcheck, empty inputs, determinism --------------


def _op_cases(target):
    """(name, operator, args) for every forward operator, small float64 inputs on target's device."""
    dev = target.device
    ops = norm_ops.BACKEND_OPS[target.backend]
    x = shifted((2, 4, 3, 3), shift=5.0).to(dev).requires_grad_()
    xc = shifted((2, 4, 3, 3), shift=5.0, channels_last=True).to(dev).requires_grad_()
    w, b = param(4).to(dev).detach().requires_grad_(), param(4).to(dev).detach().requires_grad_()
    r = torch.randn(2, 4, 3, 3, dtype=torch.float64, device=dev).requires_grad_()
    rm, rv = torch.zeros(4, dtype=torch.float64, device=dev), torch.ones(4, dtype=torch.float64, device=dev)
    return [
        ("batch_norm", ops.batch_norm, (x, w, b, None, rm, rv, True, 0.1, 1e-5, "none")),
        ("batch_norm_add_relu", ops.batch_norm, (xc, w, b, r, None, None, True, 0.1, 1e-5, "relu")),
        ("batch_norm_eval", ops.batch_norm, (x, w, b, None, rm, rv, False, 0.1, 1e-5, "relu")),
        ("group_norm_silu", ops.group_norm, (xc, w, b, 2, 1e-5, "silu")),
        ("group_norm_gelu", ops.group_norm, (x, None, b, 4, 1e-5, "gelu")),
        ("rms_norm", ops.rms_norm, (x, param(9).to(dev).detach().requires_grad_(), 2, 1e-5)),
        ("local_response_norm", ops.local_response_norm, (xc, 3, 0.1, 0.75, 1.0)),
    ]


def _first_output(op, args):
    def fn(*tensors):
        out = op(*tensors, *args[len(tensors):])
        return out[0] if isinstance(out, tuple) else out
    return fn


@pytest.mark.parametrize("case", range(7))
def test_gradcheck(case, target):
    name, op, args = _op_cases(target)[case]
    n = max(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad) + 1
    # fast_mode checks one random projection of the Jacobian; enough to catch a wrong formula.
    assert torch.autograd.gradcheck(_first_output(op, args), args[:n], fast_mode=True, atol=1e-6), name


@pytest.mark.parametrize("case", range(7))
def test_opcheck(case, target):
    name, op, args = _op_cases(target)[case]
    torch.library.opcheck(op, args)


def test_opcheck_backward_operators(target):
    """The backward operators on their own (autograd calls them with saved statistics); their
    operands require grad, so opcheck also exercises the backward operators' own autograd."""
    ops = norm_ops.BACKEND_OPS[target.backend]
    dev = target.device
    x = shifted((2, 4, 3, 3), shift=5.0, channels_last=True).to(dev)
    w, b, r, g = param(4, grad=False).to(dev), param(4, grad=False).to(dev), torch.randn_like(x), torch.randn_like(x)
    _, mean, rstd, _, _ = ops.batch_norm(x, w, b, r, None, None, True, 0.1, 1e-5, "relu")
    x, w, b, r, g = (t.requires_grad_() for t in (x, w, b, r, g))
    torch.library.opcheck(ops.batch_norm_backward, (g, x, w, b, r, mean, rstd, True, "relu"))
    _, mean, rstd = ops.group_norm(x, w, None, 2, 1e-5, "gelu")
    torch.library.opcheck(ops.group_norm_backward, (g, x, w, None, mean, rstd, 2, "gelu"))
    _, rstd = ops.rms_norm(x, None, 2, 1e-5)
    torch.library.opcheck(ops.rms_norm_backward, (g, x, None, rstd, 2))
    torch.library.opcheck(ops.local_response_norm_backward, (g, x, 3, 0.1, 0.75, 1.0))


# ---- second derivatives: the backward operators' own autograd ------------------------------


def _normalise(x, dims, mean=None, var=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over `dims`, written in torch's elementary operators: the twin
    for third derivatives, which torch's fused batch norm refuses and its layer norm gets wrong
    (its double backward treats the saved statistics as constants: pytorch/pytorch#175754), and
    for group norm without a weight, whose double backward fails in torch 2.11."""
    if mean is None:
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _per_channel(x, weight, bias):
    view = (1, -1, *(1,) * (x.dim() - 2))
    return x * (1 if weight is None else weight.view(view)) + (0 if bias is None else bias.view(view))


def _batch_norm_formula(x, weight=None, bias=None, running_mean=None, running_var=None):
    stats = [None if t is None else t.view(1, -1, *(1,) * (x.dim() - 2)) for t in (running_mean, running_var)]
    return _per_channel(_normalise(x, [d for d in range(x.dim()) if d != 1], *stats), weight, bias)


def _group_norm_formula(x, groups, weight=None, bias=None):
    return _per_channel(_normalise(x.reshape(x.shape[0], groups, -1), [2]).reshape(x.shape), weight, bias)


def _second_order_cases(target):
    """name -> (function of float64 tensors through cnnkernels.functional, torch's twin, inputs)."""
    dev, b = target.device, target.backend
    x = shifted((2, 4, 3, 3), shift=3.0).to(dev).requires_grad_()
    xc = shifted((2, 4, 3, 3), shift=3.0, channels_last=True).to(dev).requires_grad_()
    w, bias = param(4).to(dev).detach().requires_grad_(), param(4).to(dev).detach().requires_grad_()
    r = torch.randn(2, 4, 3, 3, dtype=torch.float64, device=dev).requires_grad_()
    rm, rv = torch.randn(4, dtype=torch.float64, device=dev), torch.rand(4, dtype=torch.float64, device=dev) + 0.5
    g = param(9).to(dev).detach().requires_grad_()
    return {
        "batch_norm": (lambda x, w, bias: F.batch_norm(x, None, None, w, bias, True, backend=b),
                       _batch_norm_formula, (x, w, bias)),
        "batch_norm_eval_relu": (lambda x, w: F.batch_norm_relu(x, rm, rv, w, None, False, backend=b),
                                 lambda x, w: torch.relu(_batch_norm_formula(x, w, None, rm, rv)), (x, w)),
        "batch_norm_add_relu": (lambda x, r, w: F.batch_norm_add_relu(x, r, None, None, w, None, True, backend=b),
                                lambda x, r, w: torch.relu(_batch_norm_formula(x, w) + r),
                                (xc, r, w)),
        "residual_is_input": (lambda x: F.batch_norm_add_relu(x, x, None, None, None, None, True, backend=b),
                              lambda x: torch.relu(_batch_norm_formula(x) + x), (x,)),
        "instance_norm": (lambda x: F.instance_norm(x, backend=b), lambda x: _normalise(x, [2, 3]), (x,)),
        "group_norm_silu": (lambda x, w, bias: F.group_norm(x, 2, w, bias, activation="silu", backend=b),
                            lambda x, w, bias: TF.silu(_group_norm_formula(x, 2, w, bias)), (xc, w, bias)),
        "group_norm_gelu": (lambda x, bias: F.group_norm(x, 4, None, bias, activation="gelu", backend=b),
                            lambda x, bias: TF.gelu(_group_norm_formula(x, 4, None, bias)), (x, bias)),
        "layer_norm": (lambda x: F.layer_norm(x, (3, 3), backend=b), lambda x: _normalise(x, [2, 3]), (x,)),
        "rms_norm": (lambda x, g: F.rms_norm(x, (3, 3), g.view(3, 3), 1e-3, backend=b),
                     lambda x, g: TF.rms_norm(x, (3, 3), g.view(3, 3), 1e-3), (x, g)),
        "local_response_norm": (lambda x: F.local_response_norm(x, 3, 0.1, 0.75, 1.0, backend=b),
                                lambda x: TF.local_response_norm(x, 3, 0.1, 0.75, 1.0), (xc,)),
        "local_response_norm_wide": (lambda x: F.local_response_norm(x, 9, 0.3, 0.75, 2.0, backend=b),
                                     lambda x: TF.local_response_norm(x, 9, 0.3, 0.75, 2.0), (x,)),
    }


SECOND_ORDER = ("batch_norm", "batch_norm_eval_relu", "batch_norm_add_relu", "residual_is_input", "instance_norm",
                "group_norm_silu", "group_norm_gelu", "layer_norm", "rms_norm", "local_response_norm",
                "local_response_norm_wide")


@pytest.mark.parametrize("case", SECOND_ORDER)
def test_gradgradcheck(case, target):
    """Second derivatives, numerically: the backward operators' autograd formulas."""
    ours, _, inputs = _second_order_cases(target)[case]
    # Under Triton's interpreter every call costs a fraction of a second: one random projection.
    assert torch.autograd.gradgradcheck(ours, inputs, fast_mode=target.backend == "triton")


@pytest.mark.parametrize("case", SECOND_ORDER)
def test_gradient_penalty_matches_torch(case, target):
    """A gradient penalty's gradients, and one order up the third derivatives, against torch's
    autograd of the same function."""
    ours, reference, inputs = _second_order_cases(target)[case]

    def derivatives(fn):
        out = fn(*inputs).sin().sum()
        grads = torch.autograd.grad(out, inputs, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        second = torch.autograd.grad(penalty, inputs, create_graph=True)
        third = torch.autograd.grad(sum(s.cos().sum() for s in second), inputs[0])
        return [*grads, *second, *third]

    for got, want in zip(derivatives(ours), derivatives(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


EMPTY_CALLS = {
    "batch_norm": lambda f, x, **kw: f.batch_norm(x, torch.zeros(4), torch.ones(4), training=False, **kw),
    "group_norm": lambda f, x, **kw: f.group_norm(x, 2, **kw),
    "layer_norm": lambda f, x, **kw: f.layer_norm(x, (4, 3, 3), **kw),
    "rms_norm": lambda f, x, **kw: f.rms_norm(x, (3,), **kw),
    "local_response_norm": lambda f, x, **kw: f.local_response_norm(x, 2, **kw),
}


@pytest.mark.parametrize("fn", list(EMPTY_CALLS))
def test_empty_input(fn, target):
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    ref = EMPTY_CALLS[fn](TF, x)
    xo = x.detach().to(target.device).requires_grad_()
    with torch.device(target.device):
        out = EMPTY_CALLS[fn](F, xo, backend=target.backend)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    (grad,) = torch.autograd.grad(out.sum(), xo)
    assert grad.shape == x.shape


def test_deterministic(target):
    """Statistics and parameter gradients are reduced in a fixed order: repeated calls (with
    another thread count on the CPU) agree bitwise."""
    x = shifted((8, 16, 9, 9), dtype=torch.float32, channels_last=True).to(target.device).requires_grad_()
    w = param(16, torch.float32).to(target.device).detach().requires_grad_()
    results = []
    threads = torch.get_num_threads()
    for n in (1, threads if threads > 1 else 2):
        torch.set_num_threads(n)
        try:
            out = F.batch_norm_relu(x, None, None, w, None, True, backend=target.backend)
            grads = torch.autograd.grad(out, [x, w], torch.ones_like(out))
            results.append([out, *grads])
        finally:
            torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_compile(target):
    """torch.compile(fullgraph=True) traces the fused operators, the running-statistic update
    included."""
    bn = cnn.BatchNormAddReLU2d(4, backend=target.backend).to(target.device)
    gn = cnn.GroupNorm(2, 4, activation="silu", backend=target.backend).to(target.device)
    ref_bn, ref_gn = torch.nn.BatchNorm2d(4), torch.nn.GroupNorm(2, 4)
    x, r = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)

    def block(x, r):
        return gn(bn(x, r))

    out = torch.compile(block, fullgraph=True)(x.to(target.device), r.to(target.device))
    assert_close(out.cpu(), TF.silu(ref_gn(torch.relu(ref_bn(x) + r))), torch.float32)
    assert_close(bn.running_mean.cpu(), ref_bn.running_mean, torch.float32)


# ---- errors --------------------------------------------------------------------------------


def test_errors():
    x = torch.randn(2, 4, 3, 3)
    cases = [
        (lambda f: f.batch_norm(torch.randn(1, 4), None, None, training=True), ("more than 1 value per channel",)),
        (lambda f: f.batch_norm(x, torch.zeros(3), torch.ones(3), training=True), ("running_mean", "4", "3")),
        (lambda f: f.batch_norm(x, None, None, training=False), ("running_mean", "evaluation")),
        (lambda f: f.batch_norm(x, torch.zeros(4), None, training=True), ("running_mean", "running_var")),
        (lambda f: f.batch_norm(x, None, None, weight=torch.ones(3), training=True), ("weight", "4", "3")),
        (lambda f: f.group_norm(x, 3), ("divisible", "num_groups")),
        (lambda f: f.group_norm(torch.randn(4), 2), ("at least 2 dimensions",)),
        (lambda f: f.group_norm(x, 2, torch.ones(3)), ("weight", "number of channels")),
        (lambda f: f.layer_norm(x, (4,)), ("normalized_shape", "expected input with shape")),
        (lambda f: f.layer_norm(x, (3,), torch.ones(4)), ("weight", "normalized_shape")),
        (lambda f: f.layer_norm(x, ()), ("at least 1-dimensional",)),
        (lambda f: f.rms_norm(x, (4,)), ("normalized_shape",)),
        (lambda f: f.instance_norm(torch.randn(2, 4, 1)), ("more than 1 spatial element",)),
        (lambda f: f.instance_norm(x, use_input_stats=False), ("running_mean", "running_var")),
        (lambda f: f.instance_norm(x, torch.zeros(3), torch.ones(3)), ("running_mean", "elements")),
        (lambda f: f.local_response_norm(torch.randn(2, 4), 2), ("3D or higher",)),
        (lambda f: f.local_response_norm(x, 0), ("greater than zero",)),
    ]
    for call, words in cases:
        raises_like_torch(lambda: call(F), lambda: call(TF), message_names(*words))


def test_batch_norm_gradient_with_odd_strides_on_size_one_dimensions(target):
    # A (1, 2, 3, 1) gradient with strides (6, 1, 2, 1): channels_last by torch's rule (the size-1
    # dimensions' strides carry no layout), but not the strides contiguous() would give it. torch's
    # own CPU batch_norm backward gets this wrong (0.71 off), so the reference is the formula's
    # autograd.
    x = torch.randn(1, 2, 3, 1, dtype=torch.float64)
    grad = torch.randn(6, dtype=torch.float64).as_strided((1, 2, 3, 1), (6, 1, 2, 1))
    ref = x.clone().requires_grad_()
    mean, var = ref.mean((0, 2, 3), keepdim=True), ref.var((0, 2, 3), unbiased=False, keepdim=True)
    (expected,) = torch.autograd.grad((ref - mean) / (var + 1e-5).sqrt(), ref, grad)
    ours = x.to(target.device).requires_grad_()
    out = F.batch_norm(ours, None, None, training=True, backend=target.backend)
    (actual,) = torch.autograd.grad(out, ours, grad.to(target.device))
    assert_close(actual.cpu(), expected, torch.float64)


# Scalar arguments as torch's argument parser takes them: NumPy numbers and 0-d tensors where it
# does, its TypeError for the rest (the operators' schemas would raise a RuntimeError instead, or
# take a bool where torch wants an int). Fresh running statistics per call: training updates them.
_XS = torch.randn(2, 4, 3, 3)


def _stats():
    return torch.zeros(4), torch.ones(4)


SCALAR_CALLS = {
    "bn_momentum_none": lambda f: f.batch_norm(_XS, *_stats(), training=True, momentum=None),
    "bn_momentum_numpy": lambda f: f.batch_norm(_XS, *_stats(), training=True, momentum=np.float32(0.3)),
    "bn_momentum_0d_tensor": lambda f: f.batch_norm(_XS, *_stats(), training=True, momentum=torch.tensor(0.3)),
    "bn_momentum_1d_tensor": lambda f: f.batch_norm(_XS, *_stats(), training=True, momentum=torch.tensor([0.3])),
    "bn_momentum_int": lambda f: f.batch_norm(_XS, *_stats(), training=True, momentum=1),
    "bn_momentum_complex": lambda f: f.batch_norm(_XS, *_stats(), training=True, momentum=0.1j),
    "bn_eps_str": lambda f: f.batch_norm(_XS, *_stats(), eps="1e-5"),
    "bn_training_int": lambda f: f.batch_norm(_XS, *_stats(), training=1),
    "bn_training_none": lambda f: f.batch_norm(_XS, *_stats(), training=None),
    "gn_groups_float": lambda f: f.group_norm(_XS, 2.0),
    "gn_groups_bool": lambda f: f.group_norm(_XS, True),
    "gn_groups_numpy": lambda f: f.group_norm(_XS, np.int64(2)),
    "gn_groups_0d_tensor": lambda f: f.group_norm(_XS, torch.tensor(2)),
    "gn_groups_float_tensor": lambda f: f.group_norm(_XS, torch.tensor(2.0)),
    "gn_eps_none": lambda f: f.group_norm(_XS, 2, eps=None),
    "ln_shape_floats": lambda f: f.layer_norm(_XS, (3.0,)),
    "ln_shape_numpy": lambda f: f.layer_norm(_XS, (np.int64(3), 3)),
    "ln_eps_none": lambda f: f.layer_norm(_XS, [3], eps=None),
    "rms_eps_str": lambda f: f.rms_norm(_XS, [3], eps="a"),
    "rms_eps_numpy": lambda f: f.rms_norm(_XS, [3], eps=np.float64(1e-3)),
    "in_use_input_stats_int": lambda f: f.instance_norm(_XS, use_input_stats=1),
    "in_momentum_none": lambda f: f.instance_norm(_XS, *_stats(), momentum=None),
    "in_eps_numpy": lambda f: f.instance_norm(_XS, eps=np.float32(1e-3)),
    "lrn_size_float": lambda f: f.local_response_norm(_XS, 2.0),
    "lrn_size_bool": lambda f: f.local_response_norm(_XS, True),
    "lrn_size_numpy": lambda f: f.local_response_norm(_XS, np.int64(3)),
    "lrn_size_0d_tensor": lambda f: f.local_response_norm(_XS, torch.tensor(3)),
    "lrn_alpha_none": lambda f: f.local_response_norm(_XS, 2, alpha=None),
    "lrn_k_0d_tensor": lambda f: f.local_response_norm(_XS, 2, k=torch.tensor(2.0)),
}


@pytest.mark.parametrize("name", list(SCALAR_CALLS))
def test_scalar_arguments_are_taken_like_torch(name):
    call = SCALAR_CALLS[name]
    assert_behaves_like_torch(lambda: call(F), lambda: call(TF))


def test_scalar_argument_errors_name_the_argument():
    rm, rv = _stats()
    with pytest.raises(TypeError, match=message_names("batch_norm_add_relu()", "'momentum'", "position 8",
                                                     "float", "NoneType")):
        F.batch_norm_add_relu(_XS, _XS, rm, rv, training=True, momentum=None)
    with pytest.raises(TypeError, match=message_names("'num_groups'", "position 2", "int", "numpy.float64")):
        F.group_norm(_XS, np.float64(2))


# torch's mixed-precision rule for a normalisation's parameters and running statistics: one dtype
# for all of them, the input's, or float32 under a float16 / bfloat16 input.
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("input_dtype,parameter_dtype", list(itertools.product(_DTYPES, _DTYPES)))
@pytest.mark.parametrize("fn", ["batch_norm", "group_norm", "layer_norm", "instance_norm"])
def test_parameter_dtypes_follow_torchs_mixed_precision_rule(fn, input_dtype, parameter_dtype):
    x = torch.randn(2, 4, 3, 3).to(input_dtype)
    width = 3 if fn == "layer_norm" else 4
    weight, bias = torch.randn(2, width).to(parameter_dtype)
    calls = {
        "batch_norm": lambda f: f.batch_norm(x, *(t.to(parameter_dtype) for t in _stats()), weight, bias, training=True),
        "group_norm": lambda f: f.group_norm(x, 2, weight, bias),
        "layer_norm": lambda f: f.layer_norm(x, [3], weight, bias),
        "instance_norm": lambda f: f.instance_norm(x, None, None, weight, bias),
    }
    assert_behaves_like_torch(lambda: calls[fn](F), lambda: calls[fn](TF))


def test_parameters_of_two_dtypes_are_rejected_like_torch():
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)
    weight, bias = torch.randn(4), torch.randn(4, dtype=torch.bfloat16)
    raises_like_torch(lambda: F.group_norm(x, 2, weight, bias), lambda: TF.group_norm(x, 2, weight, bias),
                      message_names("group_norm", "weight torch.float32", "bias torch.bfloat16"))


def test_batch_norm_eps_must_be_positive_in_training():
    # torch >= 2.14 raises this too; older versions normalise with rstd = inf.
    with pytest.raises(ValueError, match=message_names("eps", "positive")):
        F.batch_norm(torch.randn(2, 4, 3), None, None, training=True, eps=0.0)


_XN = torch.randn(2, 4, 5, 5)
# Saved statistics of the wrong length, handed to every backend's backward operators directly:
# each raises (the C++ host checks; the Triton launchers' mirrors) rather than reading past them.
BAD_STATISTICS_CALLS = {
    "batch_norm_save_mean": ("batch_norm_backward",
                             (_XN, _XN, None, None, None, torch.randn(2), torch.randn(4), True, "none"), "save_mean"),
    "group_norm_save_rstd": ("group_norm_backward",
                             (_XN, _XN, None, None, torch.randn(4), torch.randn(1), 2, "none"), "save_rstd"),
    "rms_norm_save_rstd": ("rms_norm_backward", (_XN, _XN, None, torch.randn(3), 1), "save_rstd"),
}


@pytest.mark.parametrize("name", list(BAD_STATISTICS_CALLS))
def test_backward_operators_check_the_saved_statistics(name, target):
    operator_raises(norm_ops.BACKEND_OPS, target, BAD_STATISTICS_CALLS[name])


def test_bad_activation():
    with pytest.raises(ValueError, match="activation"):
        F.group_norm(torch.randn(2, 4), 2, activation="tanh")
    with pytest.raises(RuntimeError, match="activation"):
        torch.ops.cnnkernels.group_norm(torch.randn(2, 4), None, None, 2, 1e-5, "tanh")


# ---- every Triton configuration, and GPU-sized problems ------------------------------------

TRITON_TARGETS = [t for t in TARGETS if t.values[0].backend == "triton"]


@pytest.mark.parametrize("target", TRITON_TARGETS)
def test_triton_every_config(target):
    """Each entry of every Triton config list (config=i picks entry i of each list a launcher
    uses) gives the cpu backend's result; the shapes split every reduction into several chunks."""
    from cnnkernels.triton import norm as triton_norm

    cpu = norm_ops.BACKEND_OPS["cpu"]
    x = shifted((4, 8, 9, 9), channels_last=True)
    r, g = torch.randn_like(x), torch.randn_like(x)
    w, b = param(8, grad=False), param(8, grad=False)
    rows, row_w = shifted((40, 72), shift=3.0), param(72, grad=False)
    dev = target.device
    on = (lambda *ts: [None if t is None else t.to(dev) for t in ts])
    for config in range(triton_norm.NUM_CONFIGS):
        bn = triton_norm.batch_norm_forward(*on(x, w, b, r, None, None), True, 0.1, 1e-5, "relu", config=config)
        bn_ref = cpu.batch_norm(x, w, b, r, None, None, True, 0.1, 1e-5, "relu")
        bn_grad = triton_norm.batch_norm_backward(*on(g, x, w, b, r, *bn_ref[1:3]), True, "relu", config=config)
        bn_grad_ref = cpu.batch_norm_backward(g, x, w, b, r, *bn_ref[1:3], True, "relu")
        gn = triton_norm.group_norm_forward(*on(x, w, b), 4, 1e-5, "silu", config=config)
        gn_ref = cpu.group_norm(x, w, b, 4, 1e-5, "silu")
        gn_grad = triton_norm.group_norm_backward(*on(g, x, w, b, *gn_ref[1:]), 4, "silu", config=config)
        gn_grad_ref = cpu.group_norm_backward(g, x, w, b, *gn_ref[1:], 4, "silu")
        rms = triton_norm.rms_norm_forward(*on(rows, row_w), 1, 1e-6, config=config)
        rms_ref = cpu.rms_norm(rows, row_w, 1, 1e-6)
        rms_grad = triton_norm.rms_norm_backward(*on(rows, rows, row_w, rms_ref[1]), 1, config=config)
        rms_grad_ref = cpu.rms_norm_backward(rows, rows, row_w, rms_ref[1], 1)
        lrn = triton_norm.local_response_norm_forward(*on(r), 5, 0.1, 0.75, 1.0, config=config)
        lrn_grad = triton_norm.local_response_norm_backward(*on(g, r), 5, 0.1, 0.75, 1.0, config=config)
        lrn_ref = cpu.local_response_norm(r, 5, 0.1, 0.75, 1.0)
        lrn_grad_ref = cpu.local_response_norm_backward(g, r, 5, 0.1, 0.75, 1.0)
        results = [*bn[:3], *bn_grad, *gn, *gn_grad, *rms, *rms_grad, lrn, lrn_grad]
        refs = [*bn_ref[:3], *bn_grad_ref, *gn_ref, *gn_grad_ref, *rms_ref, *rms_grad_ref, lrn_ref, lrn_grad_ref]
        for i, (ours, ref) in enumerate(zip(results, refs)):
            assert ours.shape == ref.shape, f"config {config}, result {i}"
            assert_close(ours.cpu(), ref, torch.float64)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_resnet_sized(backend):
    """ResNet-50 activations in bf16 channels_last (layer1's 256 x 56 x 56 at batch 16): the
    fused BN+add+ReLU and GroupNorm(32)+SiLU, RMS norm over channels, AlexNet's LRN, forward and
    backward, against torch in float32 on the same bf16 inputs."""
    x = torch.randn(16, 256, 56, 56, device="cuda").to(torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
    r = torch.randn_like(x).requires_grad_()
    w, b = (1 + 0.1 * torch.randn(256, device="cuda")).requires_grad_(), torch.randn(256, device="cuda").requires_grad_()
    cases = [
        (lambda x, r, w, b: F.batch_norm_add_relu(x, r, None, None, w, b, True, backend=backend),
         lambda x, r, w, b: torch.relu(TF.batch_norm(x, None, None, w, b, True) + r), [x, r, w, b]),
        (lambda x, w, b: F.group_norm(x, 32, w, b, activation="silu", backend=backend),
         lambda x, w, b: TF.silu(TF.group_norm(x, 32, w, b)), [x, w, b]),
        (lambda x, w: F.rms_norm(x.permute(0, 2, 3, 1), (256,), w, backend=backend),
         lambda x, w: TF.rms_norm(x.permute(0, 2, 3, 1), (256,), w), [x, w]),
        (lambda x: F.local_response_norm(x, 5, k=2.0, backend=backend),
         lambda x: TF.local_response_norm(x, 5, k=2.0), [x]),
    ]
    for ours_fn, torch_fn, tensors in cases:
        ref_in = [t.detach().float().requires_grad_() for t in tensors]
        our_in = [t.detach().requires_grad_() for t in tensors]
        ref, out = torch_fn(*ref_in), ours_fn(*our_in)
        assert out.dtype == x.dtype
        # The layout torch gives on the CPU (the grid tests compare with it): torch's CUDA
        # group_norm alone returns NCHW for channels_last input (torch 2.11, H100, 2026-11-24).
        cpu_ref = torch_fn(*[t.detach().cpu()[:1] if t.dim() == 4 else t.detach().cpu() for t in ref_in])
        assert out.is_contiguous(memory_format=CL) == cpu_ref.is_contiguous(memory_format=CL)
        assert_close(out.float(), ref, torch.bfloat16)
        g = torch.randn_like(ref)
        grads = torch.autograd.grad(out, our_in, g.to(out.dtype))
        ref_grads = torch.autograd.grad(ref, ref_in, g)
        for ours, theirs in zip(grads, ref_grads):
            # parameter gradients sum 800k products: compare relative to their size
            assert_close(ours.float(), theirs, torch.bfloat16, scale=max(1.0, theirs.abs().max().item() / 10))
