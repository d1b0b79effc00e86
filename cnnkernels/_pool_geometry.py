"""Pooling geometry: argument validation and output shapes (mirrors csrc/include/cnnkernels/pool.h
and csrc/host/pool.h), shared by the operator layer's fake kernels, the functional API and the
Triton launchers. Messages follow torch's. The operators' checks (check_*) are the C++ host
code's: a Triton operator called directly gets the errors a C++ one gives, rather than kernels
that read past a tensor whose size disagrees with the others' (that every tensor is on one
device, the Triton launchers check themselves: _common._check_device)."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def pool_out_size(size: int, kernel: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """torch's output extent; with ceil_mode a last window must start inside the input or its
    leading padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def check_pool_input(name: str, shape: Sequence[int]) -> None:
    if len(shape) != 4 or not (shape[1] and shape[2] and shape[3]):
        raise RuntimeError(
            f"{name}: Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got: {list(shape)}"
        )


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def check_pool2d_window(name: str, input_shape: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int]) -> None:
    """The input and the window arguments of max and average pooling, forward or backward."""
    check_pool_input(name, input_shape)
    if not len(kernel_size) == len(stride) == len(padding) == len(dilation) == 2:
        raise RuntimeError(f"{name}: expected kernel_size, stride, padding and dilation of 2 values each")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    # torch's pooling holds these in 32-bit ints and rejects larger ones before its other checks;
    # the bound also keeps the window arithmetic below far from overflow in the C++ host code.
    for v in (kh, kw, sh, sw, ph, pw, dh, dw):
        if not _INT32_MIN <= v <= _INT32_MAX:
            raise RuntimeError(f"{name}: value cannot be converted to type int without overflow (got {v})")
    if sh == 0 or sw == 0:
        raise RuntimeError(f"{name}: stride should not be zero")
    if kh <= 0 or kw <= 0:
        raise RuntimeError(f"{name}: kernel size should be greater than zero, but got kH: {kh} kW: {kw}")
    if sh < 0 or sw < 0:
        raise RuntimeError(f"{name}: stride should be greater than zero, but got dH: {sh} dW: {sw}")
    if dh <= 0 or dw <= 0:
        raise RuntimeError(f"{name}: dilation should be greater than zero, but got dilationH: {dh} dilationW: {dw}")
    for k, p, d in ((kh, ph, dh), (kw, pw, dw)):
        if p < 0:
            raise RuntimeError(f"{name}: pad must be non-negative, but got pad: {p}")
        if p > ((k - 1) * d + 1) // 2:
            raise RuntimeError(
                f"{name}: pad should be at most half of effective kernel size, but got pad={p}, kernel_size={k} and dilation={d}"
            )
    # torch checks this after the dilated (effective) kernel bound above.
    if ph > kh // 2 or pw > kw // 2:
        raise RuntimeError(
            f"{name}: pad should be smaller than or equal to half of kernel size, but got padW = {pw}, "
            f"padH = {ph}, kW = {kw}, kH = {kh}"
        )


def pool2d_output_shape(name: str, input_shape: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                        padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool) -> list[int]:
    check_pool2d_window(name, input_shape, kernel_size, stride, padding, dilation)
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


# ---- the operators' tensor checks (csrc/host/pool.h) ----------------------------------------


def check_grad_output_planes(name: str, grad_output: torch.Tensor, input_size: Sequence[int]) -> None:
    """The backward gathers index grad_output by the input's (n, c): they must agree."""
    shape = grad_output.shape
    if len(shape) != 4 or len(input_size) != 4 or shape[0] != input_size[0] or shape[1] != input_size[1]:
        raise RuntimeError(
            f"{name}: grad_output of size {list(grad_output.shape)} does not match the input size {list(input_size)}"
        )


def check_pool_indices(name: str, indices: torch.Tensor, grad_output: torch.Tensor) -> None:
    if indices.dtype != torch.int64 or indices.shape != grad_output.shape:
        raise RuntimeError(
            f"{name}: expected int64 indices of the gradient's size {list(grad_output.shape)}, got {indices.dtype} "
            f"of size {list(indices.shape)}"
        )


def check_divisor_override(name: str, divisor_override: int | None) -> None:
    if divisor_override == 0:
        raise RuntimeError(f"{name}: divisor must be not zero")


def check_unpool_args(name: str, input: torch.Tensor, indices: torch.Tensor, output_size: Sequence[int]) -> None:
    if input.dim() != 4:
        raise RuntimeError(f"{name}: expected a 4-D input, got sizes {list(input.shape)}")
    if indices.dtype != torch.int64 or indices.shape != input.shape:
        raise RuntimeError(
            f"{name}: expected int64 indices of the input's size {list(input.shape)}, got {indices.dtype} of size "
            f"{list(indices.shape)}"
        )
    if len(output_size) != 2 or any(s < 0 for s in output_size):
        raise RuntimeError(f"{name}: expected output_size of 2 non-negative values, got {list(output_size)}")


def check_unpool_backward_args(name: str, grad_output: torch.Tensor, indices: torch.Tensor) -> None:
    if grad_output.dim() != 4:
        raise RuntimeError(f"{name}: expected a 4-D grad_output, got sizes {list(grad_output.shape)}")
    if indices.dim() != 4 or indices.dtype != torch.int64:
        raise RuntimeError(f"{name}: expected 4-D int64 indices, got {indices.dtype} of size {list(indices.shape)}")
    if indices.shape[:2] != grad_output.shape[:2]:
        raise RuntimeError(
            f"{name}: indices of size {list(indices.shape)} do not match grad_output of size "
            f"{list(grad_output.shape)} in batch and channels"
        )
