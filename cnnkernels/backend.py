"""Backend selection.

Every operator call picks one backend, by precedence:

1. an explicit ``backend=`` argument;
2. the innermost ``with cnnkernels.backend(name):`` block;
3. the ``CNNKERNELS_BACKEND`` environment variable;
4. ``"auto"``.

Backends: ``"cpu"`` (C++ kernels, CPU tensors), ``"cuda"`` (CUDA C++ kernels, CUDA tensors),
``"triton"`` (Triton kernels: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1``), and
``"auto"``: ``"cpu"`` for CPU tensors, and for CUDA tensors the backend measured fastest for the
operator (``FASTEST_ON_GPU``, from ``benchmarks/results/``). A backend that cannot run the call
raises :class:`BackendError`; nothing ever falls back silently to torch's own kernels.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator

import torch

BACKENDS = ("cpu", "cuda", "triton")
CHOICES = BACKENDS + ("auto",)
ENV_VAR = "CNNKERNELS_BACKEND"

# Operator -> the GPU backend measured fastest for it, from benchmarks/results/ (H100,
# 2026-11-22); an operator without an entry takes the first GPU backend it implements, in the
# order below. conv2d: triton at 0.35-0.39 of cuDNN against cuda's 0.16-0.23 (geometric means
# over ResNet-50's 23 layers, bf16 channels_last, batch 128, each of the three operators).
# BatchNorm+ReLU: cuda at 0.39 of torch's eager forward+backward against triton's 0.18 (only
# ResNet-50's first BatchNorm was measured, bf16 and fp16 at batch 32); the plain and
# add+ReLU variants run the same kernels.
FASTEST_ON_GPU: dict[str, str] = {
    "conv2d": "triton",
    "batch_norm": "cuda", "batch_norm_relu": "cuda", "batch_norm_add_relu": "cuda",
}
_GPU_PREFERENCE = ("triton", "cuda")

# The active `with backend(...)` blocks, innermost last. A plain list (rather than a
# ContextVar) so that torch.compile can trace the lookup without a graph break.
_stack: list[str] = []


class BackendError(RuntimeError):
    """The requested backend does not exist, cannot run on the tensor's device, or does not
    implement the operator."""


def _validate(name: str, source: str) -> str:
    if name not in CHOICES:
        raise BackendError(f"unknown backend {name!r} from {source}; choose one of {', '.join(CHOICES)}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Runs the enclosed operator calls on backend `name` (unless a call names its own)."""
    _stack.append(_validate(name, "cnnkernels.backend()"))
    try:
        yield
    finally:
        _stack.pop()


def requested(explicit: str | None = None) -> str:
    """The backend name in force for a call, before "auto" is resolved."""
    if explicit is not None:
        return _validate(explicit, "the backend argument")
    if _stack:
        return _stack[-1]
    env = os.environ.get(ENV_VAR)
    if env:
        return _validate(env, f"the {ENV_VAR} environment variable")
    return "auto"


def triton_interpreted() -> bool:
    """True when Triton runs its kernels on the CPU (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _device_problem(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device`, or None when it can."""
    if name == "cpu" and device.type != "cpu":
        return f"the cpu backend runs on CPU tensors, got a {device.type} tensor"
    if name == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor"
        from cnnkernels import _extension

        if not _extension.has_cuda():
            return "cnnkernels._C was built without CUDA kernels (rebuild with CNNKERNELS_CUDA=1)"
    if name == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreted()):
        return f"the triton backend runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got a {device.type} tensor"
    return None


def select(op: str, device: torch.device, implemented: Collection[str], explicit: str | None = None) -> str:
    """Resolves the backend for one call of operator `op` on tensors on `device`.

    `implemented` lists the backends that provide `op`.
    """
    name = requested(explicit)
    if name == "auto":
        if device.type == "cpu":
            name = "cpu"
        elif device.type == "cuda":
            gpu = [b for b in _GPU_PREFERENCE if b in implemented]
            if not gpu:
                raise BackendError(f"{op}: no GPU backend implements this operator yet (available: {', '.join(implemented)})")
            name = FASTEST_ON_GPU.get(op, gpu[0])
        else:
            raise BackendError(f"{op}: no backend runs on {device.type} tensors")
    problem = _device_problem(name, device)
    if problem is not None:
        raise BackendError(f"{op}: {problem}")
    if name not in implemented:
        raise BackendError(f"{op}: the {name} backend does not implement this operator (available: {', '.join(implemented)})")
    return name
