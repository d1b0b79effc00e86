"""2-D pooling in Triton: max, average, adaptive average and adaptive max pooling, and
max-unpooling, each with its backward.

Every kernel is elementwise over the tensor it writes: a program owns a tile of BLOCK_M pixels
(a flat index over N*H*W of that tensor) by BLOCK_C channels, so channels_last loads and stores
coalesce along the channels and NCHW ones along the pixels (the configs with BLOCK_C = 1 exist
for NCHW). Operands are read through their own strides (NCHW, channels_last, or the expanded
stride-0 gradients autograd hands over), sums are accumulated in fp32 (fp64 for fp64) and
results are written through the output's strides. The per-element rules are the ones of
csrc/include/cnnkernels/pool.h, mirrored here.

- max_pool2d: the window's KH x KW taps (dilated; the padding is an implicit -inf that is never
  chosen) are unrolled. torch's rule: the maximum starts at -inf with the index of the window's
  first tap inside the top/left edge, and a value takes its place when it is larger or NaN, so
  NaN propagates (the last NaN's index wins) and ties keep the first tap in row-major order.
- max_pool2d backward, the "position restore", as a gather: input element (h, w) is tap r of
  output row oh exactly when oh*stride = h + pad - r*dil, so only the taps r = first,
  first + step, ... with step = stride / gcd(stride, dil) reach a real output (the same
  progression as conv2d's backward-input, csrc/include/cnnkernels/conv.h). The element adds
  the gradient of each such window whose stored index is its own position: deterministic,
  no atomics.
- avg_pool2d: the sum of the window's in-bounds taps over pool.h's avg_pool_divisor
  (count_include_pad, divisor_override; the window is cut at the end of the padded input), and
  0 for a window with no input element, as torch. Backward: input row h lies in the windows
  oh in [floor((h + pad - KH) / stride) + 1, floor((h + pad) / stride)] (clipped to the
  output), at most ceil(KH / stride) of them; each contributes grad / divisor.
- adaptive pooling: output o of `out` covers input [floor(o*in/out), ceil((o+1)*in/out)), a
  window whose size varies, so the loops run to the largest extent with masks. Average divides
  by the window's height, then by its width, as torch does; max follows max_pool2d's rule.
  Backward gathers: input i lies in exactly the windows o in
  [floor(i*out/in), ceil((i+1)*out/in) - 1] (the tight form of pool.h's
  adaptive_first/last_covering candidates; membership is still checked per window), at most
  ceil(out/in) + 1 of them.
- max_unpool2d: the one scatter. The output is zeroed, then each input element is written to
  the position its index names within its (n, c) plane; out-of-range indices are skipped, and
  with duplicate indices one of the writers wins (torch leaves that unspecified too).
  Backward gathers the output gradient at the indices (0 for out-of-range ones).

Registered as torch.library.custom_op in the ``cnnkernels_triton`` namespace; fake kernels and
autograd are registered in cnnkernels.ops.pool, next to the C++ operators'.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from cnnkernels._layout import memory_format_of, new_buffer
from cnnkernels._pool_geometry import (adaptive_output_shape, check_divisor_override, check_grad_output_planes,
                                       check_pool2d_window, check_pool_indices, check_unpool_args,
                                       check_unpool_backward_args, pool2d_output_shape)
from cnnkernels.triton._common import (_acc_dtype, _among, _autotune, _cdiv, _check_device, _check_dtype, _config,
                                       _index_dtype, launch, planned)

# ---- configurations ------------------------------------------------------------------------
# Every pooling kernel tiles (pixels x channels) and takes the same list. On a GPU the launchers
# autotune over it (keyed by the problem and its memory layout); in the interpreter, or with
# CNNKERNELS_TRITON_AUTOTUNE=0, they use the first entry (the interpreter's cost is per program,
# so a large tile). Tests run every entry, so no untested config is ever picked.
TILE_CONFIGS = [
    _config(BLOCK_M=64, BLOCK_C=32, num_warps=4, num_stages=2),   # both layouts; interpreter default
    _config(BLOCK_M=16, BLOCK_C=64, num_warps=4, num_stages=2),   # channels_last, many channels
    _config(BLOCK_M=8, BLOCK_C=128, num_warps=4, num_stages=2),   # channels_last, wide rows of channels
    _config(BLOCK_M=128, BLOCK_C=4, num_warps=4, num_stages=2),   # NCHW, a few planes at a time
    _config(BLOCK_M=256, BLOCK_C=1, num_warps=4, num_stages=2),   # NCHW, one plane
    _config(BLOCK_M=1024, BLOCK_C=1, num_warps=8, num_stages=2),  # NCHW, large planes
]
# The configs the autotuner tries when the tensors a kernel reads and writes are all contiguous
# along the channels (channels_last) or all along the columns (NCHW): a tile narrow in the
# contiguous dimension cannot coalesce, so it never wins there, and each config it skips is a
# compile and a timing less on a problem's first call.
LAYOUT_CONFIGS = {"channels": TILE_CONFIGS[:3], "columns": [TILE_CONFIGS[0], *TILE_CONFIGS[3:]]}


def _contiguous_along(channel_stride: int, column_stride: int) -> str | None:
    """"channels" or "columns": the one of the two dimensions with unit stride; None when both or
    neither have it (a single column, a single channel, a strided view)."""
    if channel_stride == 1 and column_stride != 1:
        return "channels"
    if column_stride == 1 and channel_stride != 1:
        return "columns"
    return None


def _prune_by_layout(read: str, written: str):
    """The autotuner's early_config_prune for a kernel whose read and written tensors' strides
    are the arguments <read>_c, <read>_w and <written>_c, <written>_w: LAYOUT_CONFIGS when both
    tensors are contiguous along the same dimension, every config otherwise."""
    def prune(configs, named_args, **kwargs):
        layouts = {_contiguous_along(named_args[f"{t}_c"], named_args[f"{t}_w"]) for t in (read, written)}
        if len(layouts) != 1 or None in layouts:
            return configs
        return _among(configs, LAYOUT_CONFIGS[layouts.pop()])
    return prune


# ---- shared device helpers -----------------------------------------------------------------


@triton.jit
def _tile(M, C, P, Q, INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's pixels m (a flat index over N*P*Q, split into n, p, q) and channels c."""
    m = tl.program_id(0).to(INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q = (m % Q).to(tl.int32)
    p = ((m // Q) % P).to(tl.int32)
    n = (m // (Q * P)).to(tl.int64)
    return m < M, c < C, n, p, q, c.to(tl.int64)


@triton.jit
def _ptr(base, n, c, h, w, s_n, s_c, s_h, s_w):
    """(BLOCK_M, BLOCK_C) pointers to element (n, c, h, w); n and c are already int64 and every
    product is taken in int64."""
    pix = n * s_n + h.to(tl.int64) * s_h + w.to(tl.int64) * s_w
    return base + pix[:, None] + (c * s_c)[None, :]


@triton.jit
def _floor_div(a, b):
    """Floor division for b > 0 whatever the sign of a (integer '//' truncates on the GPU)."""
    q = a // b
    return tl.where(q * b > a, q - 1, q)


@triton.jit
def _takes(value, current):
    """pool.h max_pool_takes: a larger value or a NaN replaces the current maximum."""
    return (value > current) | (value != value)


@triton.jit
def _avg_divisor(h0, w0, H, W, pad_h, pad_w, divisor_override,
                 KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr):
    """pool.h avg_pool_divisor for the windows whose first row and column are h0 and w0 (input
    coordinates, negative inside the leading padding)."""
    h1 = tl.minimum(h0 + KH, H + pad_h)
    w1 = tl.minimum(w0 + KW, W + pad_w)
    if COUNT_PAD:
        count = (h1 - h0) * (w1 - w0)
    else:
        count = (tl.minimum(h1, H) - tl.maximum(h0, 0)) * (tl.minimum(w1, W) - tl.maximum(w0, 0))
    return tl.where(divisor_override != 0, divisor_override, count)  # 0 means no override


@triton.jit
def _first_taps(i_plus_pad, stride, dilation, step, KERNEL: tl.constexpr):
    """Per element, the smallest tap t with (i + pad - t*dilation) a multiple of stride, or
    KERNEL if there is none (conv.h backward_input_taps). conv.py's _first_tap does this for
    one phase per program; here every element has its own phase."""
    first = tl.zeros_like(i_plus_pad) + KERNEL
    for t in range(0, step):
        hit = (first == KERNEL) & ((i_plus_pad - t * dilation) % stride == 0) & (t < KERNEL)
        first = tl.where(hit, t, first)
    return first


@triton.jit
def _adaptive_start(o, out, size):
    return (o.to(tl.int64) * size) // out


@triton.jit
def _adaptive_end(o, out, size):
    return ((o.to(tl.int64) + 1) * size + out - 1) // out


# ---- kernels -------------------------------------------------------------------------------


@triton.jit
def _max_pool2d_kernel(
    x, y, ind,
    M, C, H, W, P, Q,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w, si_n, si_c, si_h, si_w,
    KH: tl.constexpr, KW: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, p, q, c = _tile(M, C, P, Q, INDEX, BLOCK_M, BLOCK_C)
    ok = m_ok[:, None] & c_ok[None, :]
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    # torch starts from the index of the first tap at or past the top/left edge (it is in
    # bounds whenever any tap is), and keeps it when no tap beats -inf.
    h_first = tl.where(h0 < 0, h0 + (dil_h - 1 - h0) // dil_h * dil_h, h0)
    w_first = tl.where(w0 < 0, w0 + (dil_w - 1 - w0) // dil_w * dil_w, w0)
    best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), ACC)
    arg = tl.broadcast_to((h_first.to(tl.int64) * W + w_first)[:, None], (BLOCK_M, BLOCK_C))
    for r in tl.static_range(KH):
        ih = h0 + r * dil_h
        row_ok = (ih >= 0) & (ih < H)
        for s in tl.static_range(KW):
            iw = w0 + s * dil_w
            tap_ok = (row_ok & (iw >= 0) & (iw < W))[:, None]
            v = tl.load(_ptr(x, n, c, ih, iw, sx_n, sx_c, sx_h, sx_w), mask=ok & tap_ok,
                        other=float("-inf")).to(ACC)
            take = tap_ok & _takes(v, best)
            best = tl.where(take, v, best)
            arg = tl.where(take, (ih.to(tl.int64) * W + iw)[:, None], arg)
    tl.store(_ptr(y, n, c, p, q, sy_n, sy_c, sy_h, sy_w), best.to(y.dtype.element_ty), mask=ok)
    tl.store(_ptr(ind, n, c, p, q, si_n, si_c, si_h, si_w), arg, mask=ok)


@triton.jit
def _max_pool2d_backward_kernel(
    dy, ind, dx,
    M, C, H, W, P, Q,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, step_h, step_w, taps_h, taps_w,
    sd_n, sd_c, sd_h, sd_w, si_n, si_c, si_h, si_w, sx_n, sx_c, sx_h, sx_w,
    KH: tl.constexpr, KW: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, h, w, c = _tile(M, C, H, W, INDEX, BLOCK_M, BLOCK_C)
    me = (h.to(tl.int64) * W + w)[:, None]  # the index a window stores when it chose (h, w)
    hp = h + pad_h
    wp = w + pad_w
    # The taps through which (h, w) meets a real output: an arithmetic progression per element
    # (conv.h backward_input_taps); `first` is KH (KW) when there is none.
    first_h = _first_taps(hp, stride_h, dil_h, step_h, KH)
    first_w = _first_taps(wp, stride_w, dil_w, step_w, KW)
    # Tap r = first_h + jh*step_h meets output row (hp - r*dil_h) / stride_h, exactly: that is
    # oh_first - jh*oh_step, as step_h*dil_h = lcm(stride_h, dil_h) is a multiple of stride_h. So
    # each element divides twice, not once per tap (about 20 instructions each, in a kernel
    # that has few more per element to spend). Where there is no tap (first_h == KH) oh_first
    # is not exact, and unused.
    oh_first = (hp - first_h * dil_h) // stride_h
    ow_first = (wp - first_w * dil_w) // stride_w
    oh_step = step_h * dil_h // stride_h
    ow_step = step_w * dil_w // stride_w
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for jh in range(0, taps_h):
        r = first_h + jh * step_h
        oh = oh_first - jh * oh_step
        oh_ok = m_ok & (r < KH) & (oh >= 0) & (oh < P)
        for jw in range(0, taps_w):
            s = first_w + jw * step_w
            ow = ow_first - jw * ow_step
            win_ok = (oh_ok & (s < KW) & (ow >= 0) & (ow < Q))[:, None] & c_ok[None, :]
            chosen = tl.load(_ptr(ind, n, c, oh, ow, si_n, si_c, si_h, si_w), mask=win_ok, other=-1) == me
            acc += tl.load(_ptr(dy, n, c, oh, ow, sd_n, sd_c, sd_h, sd_w), mask=chosen, other=0.0).to(ACC)
    tl.store(_ptr(dx, n, c, h, w, sx_n, sx_c, sx_h, sx_w), acc.to(dx.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _avg_pool2d_kernel(
    x, y,
    M, C, H, W, P, Q,
    stride_h, stride_w, pad_h, pad_w, divisor_override,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, p, q, c = _tile(M, C, P, Q, INDEX, BLOCK_M, BLOCK_C)
    ok = m_ok[:, None] & c_ok[None, :]
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for r in tl.static_range(KH):
        ih = h0 + r
        row_ok = (ih >= 0) & (ih < H)
        for s in tl.static_range(KW):
            iw = w0 + s
            tap_ok = (row_ok & (iw >= 0) & (iw < W))[:, None]
            acc += tl.load(_ptr(x, n, c, ih, iw, sx_n, sx_c, sx_h, sx_w), mask=ok & tap_ok, other=0.0).to(ACC)
    div = _avg_divisor(h0, w0, H, W, pad_h, pad_w, divisor_override, KH, KW, COUNT_PAD)
    # torch writes 0 for a window that holds no input element (it never divides there).
    has_input = (tl.maximum(h0, 0) < tl.minimum(h0 + KH, H)) & (tl.maximum(w0, 0) < tl.minimum(w0 + KW, W))
    div = tl.where(has_input, div, 1).to(ACC)[:, None]
    out = tl.where(has_input[:, None], acc / div, 0.0)
    tl.store(_ptr(y, n, c, p, q, sy_n, sy_c, sy_h, sy_w), out.to(y.dtype.element_ty), mask=ok)


@triton.jit
def _avg_pool2d_backward_kernel(
    dy, dx,
    M, C, H, W, P, Q,
    stride_h, stride_w, pad_h, pad_w, divisor_override, windows_h, windows_w,
    sd_n, sd_c, sd_h, sd_w, sx_n, sx_c, sx_h, sx_w,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, h, w, c = _tile(M, C, H, W, INDEX, BLOCK_M, BLOCK_C)
    # The windows that cover (h, w): pool.h window_first/last_covering.
    oh_lo = tl.maximum(_floor_div(h + pad_h - KH, stride_h) + 1, 0)
    ow_lo = tl.maximum(_floor_div(w + pad_w - KW, stride_w) + 1, 0)
    oh_hi = tl.minimum((h + pad_h) // stride_h, P - 1)
    ow_hi = tl.minimum((w + pad_w) // stride_w, Q - 1)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for jh in range(0, windows_h):
        oh = oh_lo + jh
        oh_ok = m_ok & (oh <= oh_hi)
        for jw in range(0, windows_w):
            ow = ow_lo + jw
            win_ok = oh_ok & (ow <= ow_hi)
            div = _avg_divisor(oh * stride_h - pad_h, ow * stride_w - pad_w, H, W, pad_h, pad_w,
                               divisor_override, KH, KW, COUNT_PAD)
            div = tl.where(win_ok, div, 1).to(ACC)  # no 0/0 in the masked lanes
            g = tl.load(_ptr(dy, n, c, oh, ow, sd_n, sd_c, sd_h, sd_w),
                        mask=win_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
            acc += g / div[:, None]
    tl.store(_ptr(dx, n, c, h, w, sx_n, sx_c, sx_h, sx_w), acc.to(dx.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _adaptive_avg_pool2d_kernel(
    x, y,
    M, C, H, W, P, Q, extent_h, extent_w,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, p, q, c = _tile(M, C, P, Q, INDEX, BLOCK_M, BLOCK_C)
    ok = m_ok[:, None] & c_ok[None, :]
    h0 = _adaptive_start(p, P, H)
    h1 = _adaptive_end(p, P, H)
    w0 = _adaptive_start(q, Q, W)
    w1 = _adaptive_end(q, Q, W)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for jh in range(0, extent_h):  # the largest window height; shorter windows mask the rest
        ih = h0 + jh
        row_ok = ih < h1
        for jw in range(0, extent_w):
            iw = w0 + jw
            tap_ok = (row_ok & (iw < w1))[:, None]
            acc += tl.load(_ptr(x, n, c, ih, iw, sx_n, sx_c, sx_h, sx_w), mask=ok & tap_ok, other=0.0).to(ACC)
    # Divided by the height, then by the width, as torch does (the rounding matches).
    out = acc / (h1 - h0).to(ACC)[:, None] / (w1 - w0).to(ACC)[:, None]
    tl.store(_ptr(y, n, c, p, q, sy_n, sy_c, sy_h, sy_w), out.to(y.dtype.element_ty), mask=ok)


@triton.jit
def _adaptive_avg_pool2d_backward_kernel(
    dy, dx,
    M, C, H, W, P, Q, cover_h, cover_w,
    sd_n, sd_c, sd_h, sd_w, sx_n, sx_c, sx_h, sx_w,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, h, w, c = _tile(M, C, H, W, INDEX, BLOCK_M, BLOCK_C)
    oh_lo = _adaptive_start(h, H, P)  # floor(h*P/H): the first window that contains h
    ow_lo = _adaptive_start(w, W, Q)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for jh in range(0, cover_h):
        oh = oh_lo + jh
        h0 = _adaptive_start(oh, P, H)
        h1 = _adaptive_end(oh, P, H)
        oh_ok = m_ok & (oh < P) & (h0 <= h) & (h < h1)
        for jw in range(0, cover_w):
            ow = ow_lo + jw
            w0 = _adaptive_start(ow, Q, W)
            w1 = _adaptive_end(ow, Q, W)
            win_ok = oh_ok & (ow < Q) & (w0 <= w) & (w < w1)
            g = tl.load(_ptr(dy, n, c, oh, ow, sd_n, sd_c, sd_h, sd_w),
                        mask=win_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
            kh = tl.where(win_ok, h1 - h0, 1).to(ACC)[:, None]
            kw = tl.where(win_ok, w1 - w0, 1).to(ACC)[:, None]
            acc += g / kh / kw
    tl.store(_ptr(dx, n, c, h, w, sx_n, sx_c, sx_h, sx_w), acc.to(dx.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _adaptive_max_pool2d_kernel(
    x, y, ind,
    M, C, H, W, P, Q, extent_h, extent_w,
    sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w, si_n, si_c, si_h, si_w,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, p, q, c = _tile(M, C, P, Q, INDEX, BLOCK_M, BLOCK_C)
    ok = m_ok[:, None] & c_ok[None, :]
    h0 = _adaptive_start(p, P, H)
    h1 = _adaptive_end(p, P, H)
    w0 = _adaptive_start(q, Q, W)
    w1 = _adaptive_end(q, Q, W)
    best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), ACC)
    arg = tl.broadcast_to((h0 * W + w0)[:, None], (BLOCK_M, BLOCK_C))  # torch's starting index
    for jh in range(0, extent_h):
        ih = h0 + jh
        row_ok = ih < h1
        for jw in range(0, extent_w):
            iw = w0 + jw
            tap_ok = (row_ok & (iw < w1))[:, None]
            v = tl.load(_ptr(x, n, c, ih, iw, sx_n, sx_c, sx_h, sx_w), mask=ok & tap_ok,
                        other=float("-inf")).to(ACC)
            take = tap_ok & _takes(v, best)
            best = tl.where(take, v, best)
            arg = tl.where(take, (ih * W + iw)[:, None], arg)
    tl.store(_ptr(y, n, c, p, q, sy_n, sy_c, sy_h, sy_w), best.to(y.dtype.element_ty), mask=ok)
    tl.store(_ptr(ind, n, c, p, q, si_n, si_c, si_h, si_w), arg, mask=ok)


@triton.jit
def _adaptive_max_pool2d_backward_kernel(
    dy, ind, dx,
    M, C, H, W, P, Q, cover_h, cover_w,
    sd_n, sd_c, sd_h, sd_w, si_n, si_c, si_h, si_w, sx_n, sx_c, sx_h, sx_w,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, h, w, c = _tile(M, C, H, W, INDEX, BLOCK_M, BLOCK_C)
    me = (h.to(tl.int64) * W + w)[:, None]
    oh_lo = _adaptive_start(h, H, P)
    ow_lo = _adaptive_start(w, W, Q)
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for jh in range(0, cover_h):
        oh = oh_lo + jh
        oh_ok = m_ok & (oh < P) & (_adaptive_start(oh, P, H) <= h) & (h < _adaptive_end(oh, P, H))
        for jw in range(0, cover_w):
            ow = ow_lo + jw
            win_ok = oh_ok & (ow < Q) & (_adaptive_start(ow, Q, W) <= w) & (w < _adaptive_end(ow, Q, W))
            win_ok = win_ok[:, None] & c_ok[None, :]
            chosen = tl.load(_ptr(ind, n, c, oh, ow, si_n, si_c, si_h, si_w), mask=win_ok, other=-1) == me
            acc += tl.load(_ptr(dy, n, c, oh, ow, sd_n, sd_c, sd_h, sd_w), mask=chosen, other=0.0).to(ACC)
    tl.store(_ptr(dx, n, c, h, w, sx_n, sx_c, sx_h, sx_w), acc.to(dx.dtype.element_ty),
             mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _max_unpool2d_kernel(
    x, ind, y,
    M, C, H, W, OH, OW, out_plane,
    sx_n, sx_c, sx_h, sx_w, si_n, si_c, si_h, si_w, sy_n, sy_c, sy_h, sy_w,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, h, w, c = _tile(M, C, H, W, INDEX, BLOCK_M, BLOCK_C)
    ok = m_ok[:, None] & c_ok[None, :]
    idx = tl.load(_ptr(ind, n, c, h, w, si_n, si_c, si_h, si_w), mask=ok, other=-1)
    hit = ok & (idx >= 0) & (idx < out_plane)
    v = tl.load(_ptr(x, n, c, h, w, sx_n, sx_c, sx_h, sx_w), mask=hit)
    pix = n[:, None] * sy_n + (idx // OW) * sy_h + (idx % OW) * sy_w
    tl.store(y + pix + (c * sy_c)[None, :], v, mask=hit)


@triton.jit
def _max_unpool2d_backward_kernel(
    dy, ind, dx,
    M, C, H, W, OH, OW, out_plane,
    sd_n, sd_c, sd_h, sd_w, si_n, si_c, si_h, si_w, sx_n, sx_c, sx_h, sx_w,
    INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m_ok, c_ok, n, h, w, c = _tile(M, C, H, W, INDEX, BLOCK_M, BLOCK_C)
    ok = m_ok[:, None] & c_ok[None, :]
    idx = tl.load(_ptr(ind, n, c, h, w, si_n, si_c, si_h, si_w), mask=ok, other=-1)
    hit = ok & (idx >= 0) & (idx < out_plane)
    pix = n[:, None] * sd_n + (idx // OW) * sd_h + (idx % OW) * sd_w
    g = tl.load(dy + pix + (c * sd_c)[None, :], mask=hit, other=0.0)
    tl.store(_ptr(dx, n, c, h, w, sx_n, sx_c, sx_h, sx_w), g.to(dx.dtype.element_ty), mask=ok)


# ---- launching -----------------------------------------------------------------------------

# Autotuned variants for the GPU; the interpreter calls the plain kernels with one config.
# Forward kernels read x and write y, backward ones read the gradient d and write x (their
# strides: s<tensor>_<dim>). Each key holds the problem's sizes and the channel and column
# strides of both, so a channels_last problem tunes apart from the NCHW one of the same shape
# (and prunes its configs by layout: _prune_by_layout).
_SIZES = ["M", "C", "H", "W", "P", "Q"]


def _autotuned(kernel, key: list[str], read: str, written: str):
    strides = [f"{t}_{d}" for t in (read, written) for d in "cw"]
    return triton.autotune(TILE_CONFIGS, key=key + strides,
                           prune_configs_by={"early_config_prune": _prune_by_layout(read, written)})(kernel)


_WINDOW = ["KH", "KW", "stride_h", "stride_w"]
_TUNED = {
    kernel: _autotuned(kernel, key, *tensors)
    for kernel, key, tensors in [
        (_max_pool2d_kernel, _SIZES + _WINDOW, ("sx", "sy")),
        (_max_pool2d_backward_kernel, _SIZES + _WINDOW, ("sd", "sx")),
        (_avg_pool2d_kernel, _SIZES + _WINDOW, ("sx", "sy")),
        (_avg_pool2d_backward_kernel, _SIZES + _WINDOW, ("sd", "sx")),
        (_adaptive_avg_pool2d_kernel, _SIZES, ("sx", "sy")),
        (_adaptive_avg_pool2d_backward_kernel, _SIZES, ("sd", "sx")),
        (_adaptive_max_pool2d_kernel, _SIZES, ("sx", "sy")),
        (_adaptive_max_pool2d_backward_kernel, _SIZES, ("sd", "sx")),
        (_max_unpool2d_kernel, ["M", "C", "H", "W", "OH", "OW"], ("sx", "sy")),
        (_max_unpool2d_backward_kernel, ["M", "C", "H", "W", "OH", "OW"], ("sd", "sx")),
    ]
}


def _launch(kernel, pixels: int, channels: int, args, config: triton.Config | None, **constexprs):
    """Runs `kernel` over (pixels x channels) tiles: with `config`, or autotuned on a GPU, or
    with the first config (in the interpreter, or with autotuning switched off)."""

    def grid(meta):
        return (_cdiv(pixels, meta["BLOCK_M"]), _cdiv(channels, meta["BLOCK_C"]))

    if config is None and not _autotune():
        config = TILE_CONFIGS[0]
    launch(kernel, grid, args, constexprs, config, _TUNED[kernel])


def _max_backward_taps(op, input_size, kernel_size, stride, padding, dilation) -> tuple[int, int, int, int]:
    """Checks the window (a launch plan, _common.planned) and returns the gather's tap arithmetic:
    the taps of one element form r = first, first + step, ...: at most ceil(K / step) of them."""
    check_pool2d_window(op, input_size, kernel_size, stride, padding, dilation)
    step_h = stride[0] // math.gcd(stride[0], dilation[0])
    step_w = stride[1] // math.gcd(stride[1], dilation[1])
    return step_h, step_w, _cdiv(kernel_size[0], step_h), _cdiv(kernel_size[1], step_w)


def _avg_backward_taps(op, input_size, kernel_size, stride, padding) -> tuple[int, int]:
    """Checks the window (a launch plan) and returns how many windows can cover an element."""
    check_pool2d_window(op, input_size, kernel_size, stride, padding, (1, 1))
    return _cdiv(kernel_size[0], stride[0]), _cdiv(kernel_size[1], stride[1])


def _adaptive_extent(size: int, out: int) -> int:
    """An upper bound of the largest adaptive window, ceil((o+1)*size/out) - floor(o*size/out)."""
    return size // out if size % out == 0 else size // out + 2


# ---- launchers -----------------------------------------------------------------------------


def max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode, config=None):
    _check_device(input)
    op = "cnnkernels_triton::max_pool2d"
    _check_dtype(op, input)
    N, C, P, Q = planned(pool2d_output_shape, op, input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    H, W = input.shape[2:]
    KH, KW = kernel_size
    fmt = memory_format_of(input)
    y = new_buffer([N, C, P, Q], input, memory_format=fmt)
    indices = new_buffer([N, C, P, Q], input, dtype=torch.int64, memory_format=fmt)
    if y.numel() == 0:
        return y, indices
    args = (input, y, indices, N * P * Q, C, H, W, P, Q, stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], *input.stride(), *y.stride(), *indices.stride())
    _launch(_max_pool2d_kernel, N * P * Q, C, args, config, KH=KH, KW=KW,
            INDEX=_index_dtype(input.numel(), y.numel()), ACC=_acc_dtype(input.dtype))
    return y, indices


def max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding, dilation, config=None):
    _check_device(grad_output, indices)
    op = "cnnkernels_triton::max_pool2d_backward"
    _check_dtype(op, grad_output)
    step_h, step_w, taps_h, taps_w = planned(_max_backward_taps, op, input_size, kernel_size, stride, padding,
                                             dilation)
    check_grad_output_planes(op, grad_output, input_size)
    check_pool_indices(op, indices, grad_output)
    N, C, H, W = input_size
    P, Q = grad_output.shape[2:]
    KH, KW = kernel_size
    dx = new_buffer(list(input_size), grad_output, memory_format=memory_format_of(grad_output))
    if dx.numel() == 0:
        return dx
    if grad_output.numel() == 0:
        return dx.zero_()
    args = (grad_output, indices, dx, N * H * W, C, H, W, P, Q, stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], step_h, step_w, taps_h, taps_w,
            *grad_output.stride(), *indices.stride(), *dx.stride())
    _launch(_max_pool2d_backward_kernel, N * H * W, C, args, config, KH=KH, KW=KW,
            INDEX=_index_dtype(dx.numel(), grad_output.numel()), ACC=_acc_dtype(dx.dtype))
    return dx


def avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                       config=None):
    _check_device(input)
    op = "cnnkernels_triton::avg_pool2d"
    _check_dtype(op, input)
    N, C, P, Q = planned(pool2d_output_shape, op, input.shape, kernel_size, stride, padding, (1, 1), ceil_mode)
    check_divisor_override(op, divisor_override)
    H, W = input.shape[2:]
    KH, KW = kernel_size
    y = new_buffer([N, C, P, Q], input, memory_format=memory_format_of(input))
    if y.numel() == 0:
        return y
    args = (input, y, N * P * Q, C, H, W, P, Q, stride[0], stride[1], padding[0], padding[1],
            divisor_override or 0, *input.stride(), *y.stride())
    _launch(_avg_pool2d_kernel, N * P * Q, C, args, config, KH=KH, KW=KW, COUNT_PAD=bool(count_include_pad),
            INDEX=_index_dtype(input.numel(), y.numel()), ACC=_acc_dtype(input.dtype))
    return y


def avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, count_include_pad,
                        divisor_override, config=None):
    _check_device(grad_output)
    op = "cnnkernels_triton::avg_pool2d_backward"
    _check_dtype(op, grad_output)
    taps_h, taps_w = planned(_avg_backward_taps, op, input_size, kernel_size, stride, padding)
    check_grad_output_planes(op, grad_output, input_size)
    check_divisor_override(op, divisor_override)
    N, C, H, W = input_size
    P, Q = grad_output.shape[2:]
    KH, KW = kernel_size
    dx = new_buffer(list(input_size), grad_output, memory_format=memory_format_of(grad_output))
    if dx.numel() == 0:
        return dx
    if grad_output.numel() == 0:
        return dx.zero_()
    args = (grad_output, dx, N * H * W, C, H, W, P, Q, stride[0], stride[1], padding[0], padding[1],
            divisor_override or 0, taps_h, taps_w, *grad_output.stride(), *dx.stride())
    _launch(_avg_pool2d_backward_kernel, N * H * W, C, args, config, KH=KH, KW=KW,
            COUNT_PAD=bool(count_include_pad), INDEX=_index_dtype(dx.numel(), grad_output.numel()),
            ACC=_acc_dtype(dx.dtype))
    return dx


def adaptive_avg_pool2d_forward(input, output_size, config=None):
    _check_device(input)
    op = "cnnkernels_triton::adaptive_avg_pool2d"
    _check_dtype(op, input)
    N, C, P, Q = adaptive_output_shape(op, input.shape, output_size)
    H, W = input.shape[2:]
    y = new_buffer([N, C, P, Q], input, memory_format=memory_format_of(input))
    if y.numel() == 0:
        return y
    args = (input, y, N * P * Q, C, H, W, P, Q, _adaptive_extent(H, P), _adaptive_extent(W, Q),
            *input.stride(), *y.stride())
    _launch(_adaptive_avg_pool2d_kernel, N * P * Q, C, args, config,
            INDEX=_index_dtype(input.numel(), y.numel()), ACC=_acc_dtype(input.dtype))
    return y


def adaptive_avg_pool2d_backward(grad_output, input_size, config=None):
    _check_device(grad_output)
    op = "cnnkernels_triton::adaptive_avg_pool2d_backward"
    _check_dtype(op, grad_output)
    check_grad_output_planes(op, grad_output, input_size)
    N, C, H, W = input_size
    P, Q = adaptive_output_shape(op, input_size, grad_output.shape[2:])[2:]
    dx = new_buffer(list(input_size), grad_output, memory_format=memory_format_of(grad_output))
    if dx.numel() == 0:
        return dx
    if grad_output.numel() == 0:
        return dx.zero_()
    # Input i lies in at most ceil(out / in) + 1 windows.
    args = (grad_output, dx, N * H * W, C, H, W, P, Q, _cdiv(P, H) + 1, _cdiv(Q, W) + 1,
            *grad_output.stride(), *dx.stride())
    _launch(_adaptive_avg_pool2d_backward_kernel, N * H * W, C, args, config,
            INDEX=_index_dtype(dx.numel(), grad_output.numel()), ACC=_acc_dtype(dx.dtype))
    return dx


def adaptive_max_pool2d_forward(input, output_size, config=None):
    _check_device(input)
    op = "cnnkernels_triton::adaptive_max_pool2d"
    _check_dtype(op, input)
    N, C, P, Q = adaptive_output_shape(op, input.shape, output_size)
    H, W = input.shape[2:]
    fmt = memory_format_of(input)
    y = new_buffer([N, C, P, Q], input, memory_format=fmt)
    indices = new_buffer([N, C, P, Q], input, dtype=torch.int64, memory_format=fmt)
    if y.numel() == 0:
        return y, indices
    args = (input, y, indices, N * P * Q, C, H, W, P, Q, _adaptive_extent(H, P), _adaptive_extent(W, Q),
            *input.stride(), *y.stride(), *indices.stride())
    _launch(_adaptive_max_pool2d_kernel, N * P * Q, C, args, config,
            INDEX=_index_dtype(input.numel(), y.numel()), ACC=_acc_dtype(input.dtype))
    return y, indices


def adaptive_max_pool2d_backward(grad_output, indices, input_size, config=None):
    _check_device(grad_output, indices)
    op = "cnnkernels_triton::adaptive_max_pool2d_backward"
    _check_dtype(op, grad_output)
    check_grad_output_planes(op, grad_output, input_size)
    check_pool_indices(op, indices, grad_output)
    N, C, H, W = input_size
    P, Q = adaptive_output_shape(op, input_size, grad_output.shape[2:])[2:]
    dx = new_buffer(list(input_size), grad_output, memory_format=memory_format_of(grad_output))
    if dx.numel() == 0:
        return dx
    if grad_output.numel() == 0:
        return dx.zero_()
    args = (grad_output, indices, dx, N * H * W, C, H, W, P, Q, _cdiv(P, H) + 1, _cdiv(Q, W) + 1,
            *grad_output.stride(), *indices.stride(), *dx.stride())
    _launch(_adaptive_max_pool2d_backward_kernel, N * H * W, C, args, config,
            INDEX=_index_dtype(dx.numel(), grad_output.numel()), ACC=_acc_dtype(dx.dtype))
    return dx


def max_unpool2d_forward(input, indices, output_size, config=None):
    _check_device(input, indices)
    op = "cnnkernels_triton::max_unpool2d"
    _check_dtype(op, input)
    check_unpool_args(op, input, indices, output_size)
    N, C, H, W = input.shape
    OH, OW = output_size
    y = new_buffer([N, C, OH, OW], input, memory_format=memory_format_of(input))
    if y.numel() == 0:
        return y
    y.zero_()  # every position no index names stays 0
    if input.numel() == 0:
        return y
    args = (input, indices, y, N * H * W, C, H, W, OH, OW, OH * OW, *input.stride(), *indices.stride(), *y.stride())
    _launch(_max_unpool2d_kernel, N * H * W, C, args, config, INDEX=_index_dtype(input.numel(), y.numel()))
    return y


def max_unpool2d_backward(grad_output, indices, config=None):
    _check_device(grad_output, indices)
    op = "cnnkernels_triton::max_unpool2d_backward"
    _check_dtype(op, grad_output)
    check_unpool_backward_args(op, grad_output, indices)
    N, C, H, W = indices.shape
    OH, OW = grad_output.shape[2:]
    dx = new_buffer([N, C, H, W], grad_output, memory_format=memory_format_of(indices))
    if dx.numel() == 0:
        return dx
    if grad_output.numel() == 0:
        return dx.zero_()
    args = (grad_output, indices, dx, N * H * W, C, H, W, OH, OW, OH * OW,
            *grad_output.stride(), *indices.stride(), *dx.stride())
    _launch(_max_unpool2d_backward_kernel, N * H * W, C, args, config,
            INDEX=_index_dtype(dx.numel(), grad_output.numel()))
    return dx


# ---- operators -----------------------------------------------------------------------------
# Same contracts as the torch.ops.cnnkernels pooling operators (csrc/ops.cpp).


@torch.library.custom_op("cnnkernels_triton::max_pool2d", mutates_args=())
def max_pool2d(input: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               dilation: list[int], ceil_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode)


@torch.library.custom_op("cnnkernels_triton::max_pool2d_backward", mutates_args=())
def max_pool2d_backward_op(grad_output: torch.Tensor, indices: torch.Tensor, input_size: list[int],
                           kernel_size: list[int], stride: list[int], padding: list[int],
                           dilation: list[int]) -> torch.Tensor:
    return max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding, dilation)


@torch.library.custom_op("cnnkernels_triton::avg_pool2d", mutates_args=())
def avg_pool2d(input: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> torch.Tensor:
    return avg_pool2d_forward(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


@torch.library.custom_op("cnnkernels_triton::avg_pool2d_backward", mutates_args=())
def avg_pool2d_backward_op(grad_output: torch.Tensor, input_size: list[int], kernel_size: list[int],
                           stride: list[int], padding: list[int], count_include_pad: bool,
                           divisor_override: int | None) -> torch.Tensor:
    return avg_pool2d_backward(grad_output, input_size, kernel_size, stride, padding, count_include_pad,
                               divisor_override)


@torch.library.custom_op("cnnkernels_triton::adaptive_avg_pool2d", mutates_args=())
def adaptive_avg_pool2d(input: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    return adaptive_avg_pool2d_forward(input, output_size)


@torch.library.custom_op("cnnkernels_triton::adaptive_avg_pool2d_backward", mutates_args=())
def adaptive_avg_pool2d_backward_op(grad_output: torch.Tensor, input_size: list[int]) -> torch.Tensor:
    return adaptive_avg_pool2d_backward(grad_output, input_size)


@torch.library.custom_op("cnnkernels_triton::adaptive_max_pool2d", mutates_args=())
def adaptive_max_pool2d(input: torch.Tensor, output_size: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return adaptive_max_pool2d_forward(input, output_size)


@torch.library.custom_op("cnnkernels_triton::adaptive_max_pool2d_backward", mutates_args=())
def adaptive_max_pool2d_backward_op(grad_output: torch.Tensor, indices: torch.Tensor,
                                    input_size: list[int]) -> torch.Tensor:
    return adaptive_max_pool2d_backward(grad_output, indices, input_size)


@torch.library.custom_op("cnnkernels_triton::max_unpool2d", mutates_args=())
def max_unpool2d(input: torch.Tensor, indices: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    return max_unpool2d_forward(input, indices, output_size)


@torch.library.custom_op("cnnkernels_triton::max_unpool2d_backward", mutates_args=())
def max_unpool2d_backward_op(grad_output: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return max_unpool2d_backward(grad_output, indices)
