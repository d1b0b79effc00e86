"""What the Triton operator families share: tuning configurations, accumulator and index
dtypes, the autotuning switch, the device and dtype checks and the host's ceiling division."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from cnnkernels.backend import triton_interpreted


# Triton decides whether it interprets a kernel when it decorates it, at import, so the
# launchers' choices that depend on it follow that moment, not a later change of
# TRITON_INTERPRET; and they skip an environment read (~1 us) per launch.
INTERPRETED = triton_interpreted()


def _config(**meta):
    warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
    return triton.Config(meta, num_warps=warps, num_stages=stages)


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b), as triton.cdiv, for the host's launch arithmetic: triton.cdiv is a
    constexpr function, and calling one from Python costs ~3 us."""
    return (a + b - 1) // b


def _index_dtype(*counts: int):
    """Indices in int32 unless a count of elements (or pixels) can pass 2^31."""
    return tl.int64 if max(counts) >= 2**31 - 1 else tl.int32


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _autotune() -> bool:
    """Autotuning runs on a GPU unless CNNKERNELS_TRITON_AUTOTUNE=0 (the test suite sets it: it
    tests every config explicitly and would otherwise tune each of its hundreds of shapes)."""
    return not INTERPRETED and os.environ.get("CNNKERNELS_TRITON_AUTOTUNE", "1") != "0"


def _check_device(*tensors):
    for t in tensors:
        # is_cuda/is_cpu rather than t.device.type, which builds a torch.device on every call.
        if not t.is_cuda and not (t.is_cpu and triton_interpreted()):
            raise RuntimeError(
                f"cnnkernels_triton: tensors must be on a CUDA device (or on the CPU with TRITON_INTERPRET=1), got {t.device}"
            )


def _check_dtype(op: str, t: torch.Tensor) -> None:
    """The Triton kernels take the four floating types (integer tensors, which torch's CPU
    convolution and pooling take, are the cpu backend's)."""
    if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise NotImplementedError(f"{op}: expected a float32, float64, float16 or bfloat16 input, got {t.dtype}")
