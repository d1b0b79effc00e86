"""Drop-in replacements for torch.nn.functional, running on cnnkernels' own kernels.

Each function has the signature, defaults and errors of its torch.nn.functional namesake, plus
a keyword-only ``backend=`` ("cpu", "cuda", "triton" or "auto"; see cnnkernels.backend).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from cnnkernels._conv_geometry import conv2d_output_shape
from cnnkernels.ops import conv as _conv

__all__ = ["conv2d"]


def _pair(value, name: str) -> list[int]:
    """An int or a sequence of one or two ints -> two ints, with torch's errors."""
    if isinstance(value, bool) or not isinstance(value, (int, Sequence, torch.SymInt)):
        raise TypeError(f"conv2d(): argument '{name}' must be an int or a tuple of ints, not {type(value).__name__}")
    values = [value, value] if not isinstance(value, Sequence) else list(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={list(value)}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
            raise TypeError(f"conv2d(): argument '{name}' must be an int or a tuple of ints, got {value!r}")
    return values


def _conv2d_padding(padding, weight: torch.Tensor, stride: list[int], dilation: list[int]) -> list[int]:
    """padding as (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding != "same":
            raise RuntimeError(f"Invalid padding string: '{padding}'")
        if any(s != 1 for s in stride):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        result = []
        for d, k in zip(dilation, weight.shape[2:]):
            # The window's dilated extent minus one, split with the odd element at the end,
            # as torch does for even kernels.
            total = d * (k - 1)
            result += [total // 2, total - total // 2]
        return result
    top, left = _pair(padding, "padding")
    return [top, top, left, left]


def _check_tensor(value, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"conv2d(): argument '{name}' must be Tensor, not {type(value).__name__}")


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    input (N, C, H, W) or unbatched (C, H, W); weight (K, C/groups, kH, kW); bias (K,) or None;
    stride, dilation: int or (h, w); padding: int, (h, w), "valid" or "same" (stride 1 only;
    even kernels pad one more at the bottom/right, as torch does); groups divides C and K.
    The output is channels_last when input or weight is, like torch's.
    """
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    if bias is not None:
        _check_tensor(bias, "bias")
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(input.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(
            f"conv2d: expected a 4-D (out_channels, in_channels/groups, kH, kW) weight, "
            f"but got weight of size: {list(weight.shape)}"
        )
    if isinstance(groups, bool) or not isinstance(groups, (int, torch.SymInt)):
        raise TypeError(f"conv2d(): argument 'groups' must be int, not {type(groups).__name__}")
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    padding = _conv2d_padding(padding, weight, stride, dilation)
    for other, name in ((weight, "weight"), (bias, "bias")):
        if other is None:
            continue
        if other.dtype != input.dtype:
            raise RuntimeError(f"Input type ({input.dtype}) and {name} type ({other.dtype}) should be the same")
        if other.device != input.device:
            raise RuntimeError(
                f"Input and {name} should be on the same device, but got input on {input.device} "
                f"and {name} on {other.device}"
            )
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"conv2d: expected a floating-point input, but got {input.dtype}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
            f"{weight.shape[0]} elements, but got bias of size {list(bias.shape)} instead"
        )

    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    conv2d_output_shape(x.shape, weight.shape, stride, padding, dilation, groups)
    out = _conv.conv2d(x, weight, bias, stride, padding, dilation, groups, backend)
    return out.squeeze(0) if unbatched else out
