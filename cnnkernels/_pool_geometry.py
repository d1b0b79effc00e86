"""Pooling geometry: argument validation and output shapes (mirrors csrc/include/cnnkernels/pool.h
and csrc/host/pool.h), shared by the operator layer's fake kernels, the functional API and the
Triton launchers. Messages follow torch's."""
from __future__ import annotations

from collections.abc import Sequence


def pool_out_size(size: int, kernel: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """torch's output extent; with ceil_mode a last window must start inside the input or its
    leading padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def check_pool_input(name: str, shape: Sequence[int]) -> None:
    if len(shape) != 4 or any(s == 0 for s in shape[1:]):
        raise RuntimeError(
            f"{name}: Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got: {list(shape)}"
        )


def pool2d_output_shape(name: str, input_shape: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                        padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool) -> list[int]:
    check_pool_input(name, input_shape)
    # torch's pooling holds these in 32-bit ints and rejects larger ones before its other checks;
    # the bound also keeps the window arithmetic below far from overflow in the C++ host code.
    for values in (kernel_size, stride, padding, dilation):
        for v in values:
            if not -(2**31) <= v < 2**31:
                raise RuntimeError(f"{name}: value cannot be converted to type int without overflow (got {v})")
    if any(s == 0 for s in stride):
        raise RuntimeError(f"{name}: stride should not be zero")
    if any(k <= 0 for k in kernel_size):
        raise RuntimeError(f"{name}: kernel size should be greater than zero, but got kH: {kernel_size[0]} kW: {kernel_size[1]}")
    if any(s < 0 for s in stride):
        raise RuntimeError(f"{name}: stride should be greater than zero, but got dH: {stride[0]} dW: {stride[1]}")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(
            f"{name}: dilation should be greater than zero, but got dilationH: {dilation[0]} dilationW: {dilation[1]}"
        )
    for k, p, d in zip(kernel_size, padding, dilation):
        if p < 0:
            raise RuntimeError(f"{name}: pad must be non-negative, but got pad: {p}")
        if p > ((k - 1) * d + 1) // 2:
            raise RuntimeError(
                f"{name}: pad should be at most half of effective kernel size, but got pad={p}, kernel_size={k} and dilation={d}"
            )
    # torch checks this after the dilated (effective) kernel bound above.
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise RuntimeError(
            f"{name}: pad should be smaller than or equal to half of kernel size, but got padW = {padding[1]}, "
            f"padH = {padding[0]}, kW = {kernel_size[1]}, kH = {kernel_size[0]}"
        )
    n, c, h, w = input_shape
    oh = pool_out_size(h, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    ow = pool_out_size(w, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise RuntimeError(
            f"{name}: Given input size: ({c}x{h}x{w}). Calculated output size: ({c}x{oh}x{ow}). Output size is too small"
        )
    return [n, c, oh, ow]


def adaptive_output_shape(name: str, input_shape: Sequence[int], output_size: Sequence[int]) -> list[int]:
    check_pool_input(name, input_shape)
    if len(output_size) != 2 or any(s < 0 for s in output_size):
        raise RuntimeError(
            f"{name}: elements of output_size must be greater than or equal to 0 but received {list(output_size)}"
        )
    return [input_shape[0], input_shape[1], output_size[0], output_size[1]]
