"""Shared test helpers: tolerances and comparison against torch."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from cnnkernels.ops import conv as _conv_ops

class Target(NamedTuple):
    """A backend and the device its tensors live on."""

    backend: str
    device: str


def targets_for(implemented) -> list:
    """Every (backend, device) this process can test among `implemented`: cpu; triton on CPU
    tensors in Triton's interpreter; cuda and triton on CUDA tensors where a GPU is present
    (marker `cuda`)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    targets = [pytest.param(Target("cpu", "cpu"), id="cpu")]
    if "triton" in implemented and interpreted:
        targets.append(pytest.param(Target("triton", "cpu"), id="triton-interpreter"))
    if torch.cuda.is_available() and not interpreted:
        for backend in ("cuda", "triton"):
            if backend in implemented:
                targets.append(pytest.param(Target(backend, "cuda"), id=f"{backend}-gpu", marks=pytest.mark.cuda))
    return targets


TARGETS = targets_for(_conv_ops.IMPLEMENTED)  # the conv2d family's


# (rtol, atol) of our result against torch's on the same inputs, per dtype. fp16/bf16 are
# compared against torch in fp32 on the same (rounded) inputs: our kernels accumulate in fp32
# and round once, so the error is a few units of the output's last place.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol * scale)


def same_layout(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Same shape and strides, ignoring the strides of size-1 dimensions (they carry no layout)."""
    if actual.shape != expected.shape:
        return False
    return all(a == e for a, e, n in zip(actual.stride(), expected.stride(), actual.shape) if n > 1)


def raises_like_torch(ours, theirs, match: str):
    """Our call raises the exception type torch's call raises, with a message matching `match`."""
    with pytest.raises(Exception) as torch_error:
        theirs()
    with pytest.raises(type(torch_error.value), match=match):
        ours()


def assert_behaves_like_torch(ours, theirs) -> None:
    """Our call and torch's both raise, an exception of the same type, or both return: a tensor
    of the same shape and dtype, and values within the dtype's tolerance."""
    try:
        expected = theirs()
    except Exception as torch_error:  # noqa: BLE001  (whichever torch raises, ours must too)
        with pytest.raises(type(torch_error)):
            ours()
        return
    actual = ours()
    assert (actual.shape, actual.dtype) == (expected.shape, expected.dtype)
    assert_close(actual, expected, expected.dtype)


def operator_raises(backend_ops: dict, target, call: tuple) -> None:
    """call = (operator name, arguments, message pattern): the target backend's operator, called
    directly on the arguments (tensors moved to the target's device), raises a RuntimeError
    matching the pattern."""
    fn, args, match = call
    args = [a.to(target.device) if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(RuntimeError, match=match):
        getattr(backend_ops[target.backend], fn)(*args)


def message_names(*words: str) -> str:
    """A regex that requires every word in the message, in any order."""
    return "".join(f"(?=[\\s\\S]*{re.escape(w)})" for w in words)


def run_probe(script: Path) -> dict:
    """The JSON object that a probe script (tests/*_probe.py: Triton compiling for sm_90 on a
    stand-in driver, which needs a process of its own) prints on its last line."""
    pytest.importorskip("triton")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
