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
