"""Helpers shared by the operator families' Python side."""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format


def is_channels_last(t: torch.Tensor) -> bool:
    """torch's own rule (Tensor::suggest_memory_format in C++) for a 4-D tensor's layout."""
    return t.dim() == 4 and suggest_memory_format(t) == torch.channels_last


def memory_format_of(*tensors: torch.Tensor) -> torch.memory_format:
    """channels_last when any operand is channels_last, as torch's convolution and the C++
    operators decide the layout of what they return."""
    return torch.channels_last if any(is_channels_last(t) for t in tensors) else torch.contiguous_format
