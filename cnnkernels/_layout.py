"""Memory formats and output allocation shared by the operator families and the backends."""
from __future__ import annotations

import os

import torch
from torch._prims_common import suggest_memory_format


def is_channels_last(t: torch.Tensor) -> bool:
    """torch's own rule (Tensor::suggest_memory_format in C++) for a 4-D tensor's layout."""
    return t.dim() == 4 and suggest_memory_format(t) == torch.channels_last


def memory_format_of(*tensors: torch.Tensor) -> torch.memory_format:
    """channels_last when any operand is channels_last, as torch's convolution and the C++
    operators decide the layout of what they return."""
    return torch.channels_last if any(is_channels_last(t) for t in tensors) else torch.contiguous_format


def new_buffer(shape, like: torch.Tensor, dtype: torch.dtype | None = None,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """An uninitialised tensor on `like`'s device. With CNNKERNELS_POISON_ALLOCATIONS=1 (set by
    the test suite) it starts as NaN (-1 for integer tensors), like the C++ operators' buffers (csrc/host/alloc.h)."""
    t = torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)
    if os.environ.get("CNNKERNELS_POISON_ALLOCATIONS") == "1" and t.numel() > 0:
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t
