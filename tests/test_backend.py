"""Backend selection: argument > `with backend()` > CNNKERNELS_BACKEND > "auto"."""
from __future__ import annotations

import sys

import pytest
import torch

import cnnkernels
import cnnkernels.functional as F
from cnnkernels.backend import ENV_VAR, FASTEST_ON_GPU, BackendError, requested, select

X = torch.randn(1, 2, 5, 5)
W = torch.randn(3, 2, 3, 3)


def test_precedence(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert requested() == "auto"
    monkeypatch.setenv(ENV_VAR, "triton")
    assert requested() == "triton"
    with cnnkernels.backend("cuda"):
        assert requested() == "cuda"
        with cnnkernels.backend("cpu"):
            assert requested() == "cpu"
            assert requested("triton") == "triton"
        assert requested() == "cuda"
    assert requested() == "triton"


def test_context_is_restored_after_an_exception(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ZeroDivisionError):
        with cnnkernels.backend("cuda"):
            1 / 0
    assert requested() == "auto"


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(BackendError, match="unknown backend 'gpu'"):
        F.conv2d(X, W, backend="gpu")
    with pytest.raises(BackendError, match="unknown backend"):
        with cnnkernels.backend("cudnn"):
            pass
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(BackendError, match=ENV_VAR):
        F.conv2d(X, W)


def test_auto_and_cpu_run_on_cpu_tensors(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    ref = torch.nn.functional.conv2d(X, W)
    torch.testing.assert_close(F.conv2d(X, W), ref)
    torch.testing.assert_close(F.conv2d(X, W, backend="cpu"), ref)
    monkeypatch.setenv(ENV_VAR, "cpu")
    torch.testing.assert_close(F.conv2d(X, W), ref)


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_gpu_backends_refuse_cpu_tensors_without_falling_back(name, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match=f"{name} backend runs on CUDA tensors"):
        F.conv2d(X, W, backend=name)
    with cnnkernels.backend(name):
        with pytest.raises(BackendError):
            F.conv2d(X, W)


def test_an_unimplemented_backend_is_named(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendError, match="triton backend does not implement this operator"):
        select("conv2d", torch.device("cpu"), ("cpu",), "triton")


def test_auto_on_gpu_uses_an_implemented_gpu_backend():
    assert select("op", torch.device("cuda"), ("cpu", "triton")) == "triton"
    with pytest.raises(BackendError, match="no GPU backend"):
        select("op", torch.device("cuda"), ("cpu",))


def test_auto_on_gpu_takes_the_measured_fastest_backend(monkeypatch):
    # The choice, not the device: every backend counts as able to run here.
    monkeypatch.setattr(sys.modules[select.__module__], "_device_problem", lambda name, device: None)
    gpu = torch.device("cuda")
    for op, name in FASTEST_ON_GPU.items():
        # Every entry names a functional operator (the name its backend lookup uses) and a GPU backend.
        assert op in F.__all__ and name in ("cuda", "triton")
        assert select(op, gpu, ("cpu", "cuda", "triton")) == name
        # A measured preference never overrides an explicit choice, nor picks an absent backend.
        other = "triton" if name == "cuda" else "cuda"
        assert select(op, gpu, ("cpu", "cuda", "triton"), other) == other
        with pytest.raises(BackendError, match="does not implement"):
            select(op, gpu, ("cpu", other))
