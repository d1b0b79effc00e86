"""The extension's build report and its error when missing."""
from __future__ import annotations

import subprocess
import sys

import torch

import cnnkernels


def test_build_info_reports_cuda_consistently():
    info = cnnkernels.build_info()
    assert set(info) == {"cuda", "cuda_archs", "cpu_parallel"}
    assert info["cuda"] == bool(info["cuda_archs"])


def test_cpu_kernels_are_built_to_run_on_torchs_threads():
    # Without -fopenmp, at::parallel_for compiles to a serial loop: the kernels stay correct and
    # deterministic, only every one of them runs on a single thread.
    assert cnnkernels.build_info()["cpu_parallel"]


def test_every_operator_is_registered():
    for name in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias"):
        assert hasattr(torch.ops.cnnkernels, name), name


def test_missing_extension_gives_build_instructions():
    code = (
        "import sys; sys.modules['cnnkernels._C'] = None\n"
        "try:\n    import cnnkernels\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "cnnkernels._C could not be loaded" in out
    assert "make build" in out


def test_cuda_backend_without_cuda_kernels_says_how_to_rebuild(monkeypatch):
    from cnnkernels import _extension

    monkeypatch.setattr(_extension, "has_cuda", lambda: False)
    from cnnkernels.backend import BackendError, select

    try:
        select("conv2d", torch.device("cuda"), ("cuda",), "cuda")
    except BackendError as e:
        assert "built without CUDA" in str(e) and "CNNKERNELS_CUDA=1" in str(e)
    else:
        raise AssertionError("expected a BackendError")
