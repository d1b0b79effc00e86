"""cnnkernels.nn modules against their torch.nn counterparts."""
from __future__ import annotations

import pytest
import torch

import cnnkernels


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same", "valid"])
def test_conv2d_module_matches_torch(padding_mode, padding):
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding=padding, padding_mode=padding_mode,
                  dilation=(1, 2), groups=2, dtype=torch.float64)
    ours = cnnkernels.nn.Conv2d(**kwargs)
    theirs = torch.nn.Conv2d(**kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    out, ref = ours(x), theirs(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, [x, *ours.parameters()], g),
                               torch.autograd.grad(ref, [x, *theirs.parameters()], g))


def test_conv2d_module_state_dict_round_trip():
    theirs = torch.nn.Conv2d(3, 8, 5, stride=2, padding=2, bias=True)
    ours = cnnkernels.nn.Conv2d(3, 8, 5, stride=2, padding=2, bias=True)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.Conv2d(3, 8, 5, stride=2, padding=2)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(back(x), theirs(x))


def test_conv2d_module_without_bias_and_unbatched():
    ours = cnnkernels.nn.Conv2d(3, 4, 3, bias=False)
    theirs = torch.nn.Conv2d(3, 4, 3, bias=False)
    theirs.load_state_dict(ours.state_dict())
    assert ours.bias is None
    x = torch.randn(3, 7, 7)
    torch.testing.assert_close(ours(x), theirs(x))


def test_conv2d_module_initialisation_matches_torch():
    # Same constructor, same parameter initialisation (kaiming-uniform with a = sqrt(5)).
    torch.manual_seed(1)
    ours = cnnkernels.nn.Conv2d(16, 32, 3)
    torch.manual_seed(1)
    theirs = torch.nn.Conv2d(16, 32, 3)
    torch.testing.assert_close(ours.weight, theirs.weight)
    torch.testing.assert_close(ours.bias, theirs.bias)


def test_conv2d_module_rejects_what_torch_rejects():
    for kwargs in (dict(groups=3), dict(padding="same", stride=2), dict(padding_mode="mirror")):
        with pytest.raises(ValueError):
            torch.nn.Conv2d(4, 6, 3, **kwargs)
        with pytest.raises(ValueError):
            cnnkernels.nn.Conv2d(4, 6, 3, **kwargs)


def test_conv2d_module_backend_pin():
    layer = cnnkernels.nn.Conv2d(2, 2, 1, backend="cuda")
    assert "backend='cuda'" in repr(layer)
    with pytest.raises(cnnkernels.BackendError, match="cuda backend runs on CUDA tensors"):
        layer(torch.randn(1, 2, 3, 3))


# Normalisation modules: (name, constructor args, input shape); the same arguments build torch's.
NORM_MODULES = [
    ("BatchNorm1d", dict(num_features=4), (5, 4, 3)),
    ("BatchNorm1d", dict(num_features=4, affine=False, momentum=None), (6, 4)),
    ("BatchNorm2d", dict(num_features=4, track_running_stats=False), (2, 4, 3, 3)),
    ("GroupNorm", dict(num_groups=2, num_channels=4), (2, 4, 3, 3)),
    ("GroupNorm", dict(num_groups=4, num_channels=4, affine=False), (2, 4, 5)),
    ("LayerNorm", dict(normalized_shape=(3, 3)), (2, 4, 3, 3)),
    ("LayerNorm", dict(normalized_shape=5, bias=False), (2, 5)),
    ("InstanceNorm1d", dict(num_features=4, affine=True), (2, 4, 6)),
    ("InstanceNorm2d", dict(num_features=4, track_running_stats=True), (2, 4, 3, 3)),
    ("RMSNorm", dict(normalized_shape=3), (2, 4, 3)),
    ("RMSNorm", dict(normalized_shape=(4, 3), eps=1e-3, elementwise_affine=False), (2, 4, 3)),
    ("LocalResponseNorm", dict(size=3, k=2.0), (2, 5, 3, 3)),
]


@pytest.mark.parametrize("name, kwargs, shape", NORM_MODULES, ids=lambda v: str(v))
def test_norm_module_matches_torch(name, kwargs, shape):
    """Same constructor, parameters, buffers and state_dict keys as torch.nn's module; the same
    outputs, gradients and buffers over two training steps and one evaluation step."""
    if name != "LocalResponseNorm":  # the one without parameters (and without a dtype argument)
        kwargs = kwargs | {"dtype": torch.float64}
    torch.manual_seed(1)
    ours = getattr(cnnkernels.nn, name)(**kwargs)
    torch.manual_seed(1)
    theirs = getattr(torch.nn, name)(**kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for param in ours.parameters():  # move off torch's ones/zeros init so the affine part is checked
        param.data.add_(0.1 * torch.randn_like(param))
    theirs.load_state_dict(ours.state_dict())
    for step, training in enumerate([True, True, False]):
        ours.train(training)
        theirs.train(training)
        x = (10 * step + torch.randn(shape, dtype=torch.float64)).requires_grad_()
        out, ref = ours(x), theirs(x)
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(out, [x, *ours.parameters()], g),
                                   torch.autograd.grad(ref, [x, *theirs.parameters()], g))
        for (key, mine), theirs_value in zip(ours.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(mine, theirs_value, msg=key)
