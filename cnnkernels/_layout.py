"""Memory formats and output allocation shared by the operator families and the backends."""
from __future__ import annotations

import os

import torch
from torch._prims_common import suggest_memory_format


def is_channels_last(t: torch.Tensor) -> bool:
    """torch's own rule for a 4-D tensor's layout (Tensor::suggest_memory_format in C++, which is
    c10's is_channels_last_strides_2d_s4): strided, no zero size, a nonzero channel stride, and
    strides that, walked over C, W, H, N, never fall below the previous stride times its size; an
    N stride equal to C's (an N111 tensor, ambiguous) counts as NCHW. In plain Python over the
    sizes and strides: torch's Python version goes through the symbolic-shape guard machinery,
    ~10 us a tensor, most of a small launch's host time."""
    if t.dim() != 4 or t.layout != torch.strided:
        return False
    if t._has_symbolic_sizes_strides:
        # Symbolic sizes (dynamic shapes under torch.compile or opcheck): torch's version answers
        # NCHW when an unbacked size leaves the rule undecided; comparing them here would raise.
        return suggest_memory_format(t) == torch.channels_last
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    min_stride = 0
    for d in (1, 3, 2, 0):
        size, stride = sizes[d], strides[d]
        if size == 0 or stride < min_stride:
            return False
        if d == 0 and min_stride == strides[1]:
            return False
        min_stride = stride * size
    return True


def memory_format_of(*tensors: torch.Tensor) -> torch.memory_format:
    """channels_last when any operand is channels_last, as torch's convolution and the C++
    operators decide the layout of what they return."""
    return torch.channels_last if any(is_channels_last(t) for t in tensors) else torch.contiguous_format


def in_memory_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """t.contiguous(memory_format=memory_format), with strides that say so. Where the two layouts
    order the elements alike (an (N, C, 1, 1) gradient of a global pooling, say), torch's
    contiguous() keeps NCHW strides, and an operator given the tensor, deciding its result's layout
    by torch's rule (is_channels_last), would return NCHW where channels_last was asked for.
    Giving such a tensor channels_last strides moves no data: every dimension whose stride
    changes has size 1."""
    t = t.contiguous(memory_format=memory_format)
    if memory_format == torch.channels_last and t.dim() == 4 and not is_channels_last(t):
        _, c, h, w = t.shape
        t = t.as_strided(t.shape, (h * w * c, 1, w * c, c))
    return t


# Read once, at import: a launcher allocates several buffers a call and os.environ.get costs
# ~1 us each when the variable is unset. The test suite sets it before importing cnnkernels.
_POISON_ALLOCATIONS = os.environ.get("CNNKERNELS_POISON_ALLOCATIONS") == "1"


def new_buffer(shape, like: torch.Tensor, dtype: torch.dtype | None = None,
               memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """An uninitialised tensor on `like`'s device. With CNNKERNELS_POISON_ALLOCATIONS=1 at import
    (the test suite sets it) it starts as NaN (-1 for integer tensors), like the C++ operators'
    buffers (csrc/host/alloc.h)."""
    t = torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)
    if _POISON_ALLOCATIONS and t.numel() > 0:
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t
