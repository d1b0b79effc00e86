"""Conv2d geometry: argument validation and output shapes, shared by the operator layer
(fake kernels, functional) and the Triton launchers, whose plans also run the operators' own
tensor checks (check_*, those of csrc/host/conv.h): a Triton operator called directly raises
where a C++ one does, rather than reading past a gradient of the wrong size."""
from __future__ import annotations

from collections.abc import Sequence


def conv2d_output_shape(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> list[int]:
    """Validates a conv2d problem like torch.nn.functional.conv2d does and returns the output
    shape (N, K, P, Q). Raises RuntimeError naming the offending argument."""
    if len(input_shape) != 4:
        raise RuntimeError(f"conv2d: expected a 4-D (N, C, H, W) input, but got input of size: {list(input_shape)}")
    if len(weight_shape) != 4:
        raise RuntimeError(
            f"conv2d: expected a 4-D (out_channels, in_channels/groups, kH, kW) weight, "
            f"but got weight of size: {list(weight_shape)}"
        )
    if len(stride) != 2 or len(padding) != 4 or len(dilation) != 2:
        raise RuntimeError("conv2d: expected stride[2], padding[4] (top, bottom, left, right) and dilation[2]")
    if any(s <= 0 for s in stride):
        raise RuntimeError("conv2d: non-positive stride is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError("conv2d: non-positive dilation is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("conv2d: negative padding is not supported")
    if groups <= 0:
        raise RuntimeError("conv2d: non-positive groups is not supported")
    n, c, h, w = input_shape
    k, c_per_group, r, s = weight_shape
    if n != 0 and c != 0 and (h == 0 or w == 0):
        raise RuntimeError(
            f"Only zero batch or zero channel inputs are supported, but got input shape: {list(input_shape)}")
    if k <= 0 or k % groups != 0:
        raise RuntimeError(
            f"conv2d: given groups={groups}, expected weight to be at least 1 and divisible by {groups} "
            f"at dimension 0, but got weight of size {list(weight_shape)} instead"
        )
    if r <= 0 or s <= 0:
        raise RuntimeError(f"conv2d: kernel size must be positive, but got weight of size {list(weight_shape)}")
    if c != c_per_group * groups:
        raise RuntimeError(
            f"conv2d: given groups={groups}, weight of size {list(weight_shape)}, expected input{list(input_shape)} "
            f"to have {c_per_group * groups} channels, but got {c} channels instead"
        )
    padded_h, padded_w = h + padding[0] + padding[1], w + padding[2] + padding[3]
    extent_h, extent_w = dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1
    if extent_h > padded_h or extent_w > padded_w:
        raise RuntimeError(
            f"conv2d: calculated padded input size per channel: ({padded_h} x {padded_w}). "
            f"Kernel size: ({extent_h} x {extent_w}). Kernel size can't be greater than actual input size"
        )
    return [n, k, (padded_h - extent_h) // stride[0] + 1, (padded_w - extent_w) // stride[1] + 1]


def check_same_dtype(op: str, a, a_name: str, b, b_name: str) -> None:
    if a.dtype != b.dtype:
        raise RuntimeError(f"{op}: expected {a_name} and {b_name} to have the same dtype, but got {a.dtype} and {b.dtype}")


def check_bias(op: str, bias, weight_shape: Sequence[int]) -> None:
    if bias.dim() != 1 or bias.shape[0] != weight_shape[0]:
        raise RuntimeError(
            f"{op}: given weight of size {list(weight_shape)}, expected bias to be 1-dimensional with "
            f"{weight_shape[0]} elements, but got bias of size {list(bias.shape)} instead"
        )


def check_grad_output(op: str, grad_output, expected: Sequence[int]) -> None:
    """A gradient of the output has exactly the shape the forward produces."""
    if list(grad_output.shape) != list(expected):
        raise RuntimeError(f"{op}: expected grad_output of size {list(expected)}, got {list(grad_output.shape)}")
