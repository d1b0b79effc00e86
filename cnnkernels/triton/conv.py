"""conv2d in Triton: forward, backward-input, backward-weight and bias gradient.

All four are implicit GEMMs that read their operands through arbitrary strides (NCHW,
channels_last, or the expanded/transposed gradients autograd hands over), accumulate in fp32
(fp64 for fp64), and write through the output's strides.

- forward: rows M = N*P*Q output pixels, columns = the group's K/G output channels, reduction
  over the taps (r, s) and the group's input channels, channels innermost so channels_last
  loads coalesce. A 1x1 convolution is one tap: the loop is a plain GEMM.
- backward-input: the flipped-kernel convolution split into stride_h*stride_w phases. Every
  input position of one phase meets real (not zero-inserted) gradient elements through the
  same taps, r = first, first + step, ... (see csrc/include/cnnkernels/conv.h), so each phase is
  a stride-1 convolution over those taps only: no multiply-add with an inserted zero.
- backward-weight: a GEMM per tap, (K/G x N*P*Q) times (N*P*Q x C/G). The long N*P*Q reduction
  is split across programs into fp32 partials whose count and boundaries depend only on the
  problem shape; a second kernel adds them in split order, so results are reproducible. A
  problem with a single split (few pixels per tile) has its programs write the gradient itself.
- bias gradient: per-channel sums with the same split-and-add scheme.

Registered as torch.library.custom_op in the ``cnnkernels_triton`` namespace; their fake
kernels and autograd are registered in cnnkernels.ops.conv, next to the C++ operators'.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from cnnkernels._conv_geometry import check_bias, check_grad_output, check_same_dtype, conv2d_output_shape
from cnnkernels._layout import memory_format_of, new_buffer
from cnnkernels.triton._common import (INTERPRETED, _acc_dtype, _among, _autotune, _cdiv, _check_device, _check_dtype,
                                       _config, launch, planned)

# ---- configurations ------------------------------------------------------------------------
# On a GPU the launchers autotune over these lists; in the interpreter they use the first
# entry (the largest tiles: the interpreter's cost is per program, not per element). Tests run
# every entry (tests/test_conv_triton.py), so no untested config is ever picked.
#
# Tiles for Hopper-class GPUs: BLOCK_K 32-64 feeds 16-bit tensor-core MMAs in whole
# instructions, and every entry fits its pipeline stages into 227 KB of shared memory even in
# fp32, (BLOCK_M + BLOCK_N) * BLOCK_K * 4 bytes * num_stages <= 196 KB. The small ones are for
# late layers (7x7 at batch 32 is 1,568 pixels: a 128-pixel tile would leave most SMs idle).
#
# The last entries are narrow, 16 columns (the fewest tl.dot takes), for GEMMs with few columns:
# an RGB stem's 3 input channels in backward-input, a grouped layer's few channels per group. On
# 3 columns they waste 13 of 16 where the others waste at least 61 of 64. The autotuner tries
# the narrow ones up to 32 columns and the others from 17 (_tiles_for).
#
# The second entry of each list is the first one with its registers capped at 128 per thread
# (ptxas's .maxnreg), tried on 16-bit operands of many-channel layers only (_for_operands).
# Uncapped, the forward's 8-warp tile takes 133 registers on 3x3 layers (sm_90 SASS, Triton 3.6
# and 3.8), so one program fills an SM's 64K registers and its epilogue and pipeline fill leave
# the tensor cores idle; backward-input and backward-weight take 120-128 and need the cap only
# where a layer pushes them past it. At 128 two programs share an SM (2 x 96 KB of shared memory
# fits too), and ptxas spills nothing and adds no instruction to the loops
# (tests/test_triton_codegen.py). fp32 operands and few-channel tiles do not fit: capped, they
# spill.
NARROW_COLUMNS = 16
TWO_PROGRAMS_PER_SM = 128  # registers per thread: 2 programs x 256 threads x 128 = 64K
FORWARD_CONFIGS = [
    _config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    _config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3, maxnreg=TWO_PROGRAMS_PER_SM),
    _config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=4),
    _config(BLOCK_M=256, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4),
    _config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    _config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4),
    _config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    _config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
    _config(BLOCK_M=128, BLOCK_N=NARROW_COLUMNS, BLOCK_K=64, num_warps=4, num_stages=4),
    _config(BLOCK_M=256, BLOCK_N=NARROW_COLUMNS, BLOCK_K=64, num_warps=8, num_stages=3),
]
# Backward-input tiles: rows over one phase's input pixels, columns over input channels,
# reduction over output channels.
BACKWARD_INPUT_CONFIGS = FORWARD_CONFIGS
# Backward-weight tiles: rows over output channels, columns over input channels. The
# reduction tile (BLOCK_M, pixels) is fixed, not tuned: it sets the summation order.
BACKWARD_WEIGHT_CONFIGS = [
    _config(BLOCK_K=128, BLOCK_N=128, num_warps=8, num_stages=3),
    _config(BLOCK_K=128, BLOCK_N=128, num_warps=8, num_stages=3, maxnreg=TWO_PROGRAMS_PER_SM),
    _config(BLOCK_K=32, BLOCK_N=32, num_warps=4, num_stages=2),
    _config(BLOCK_K=64, BLOCK_N=64, num_warps=4, num_stages=4),
    _config(BLOCK_K=128, BLOCK_N=64, num_warps=4, num_stages=4),
    _config(BLOCK_K=64, BLOCK_N=128, num_warps=4, num_stages=4),
]
# float64 (gradcheck's dtype; no tensor cores) runs one small tile, not autotuned. Triton keeps
# num_stages - 1 tiles of both operands in shared memory; at 8 bytes an element that is 256-288 KB
# for every larger entry above, past the 227 KB a block may have on an H100 (measured with
# scripts/triton_aot_check.py). These need 32 and 64 KB.
FLOAT64_TILE_CONFIG = _config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
FLOAT64_BACKWARD_WEIGHT_CONFIG = _config(BLOCK_K=64, BLOCK_N=64, num_warps=4, num_stages=2)
# (Larger in the interpreter, whose cost is per loop iteration, not per element.)
WEIGHT_REDUCTION_BLOCK = 256 if INTERPRETED else 64
# Split of the N*P*Q reduction: aim for this many programs, and give each at least
# MIN_PIXELS_PER_SPLIT pixels. Both depend on the shape only.
TARGET_PROGRAMS = 512
MIN_PIXELS_PER_SPLIT = 512
BIAS_BLOCK_K = 32
BIAS_BLOCK_M = 64
# Fewer input channels per group than this (an RGB stem's 3): forward and backward-weight tiles
# run over taps and channels together instead of one tap at a time, whose channel blocks would
# be mostly masked off.
FEW_CHANNELS = 16


# Pointwise convolutions (1x1, stride 1, no padding, one group) on channels_last operands are plain
# GEMMs on 2-D views of the tensors (_as_matrix), whose tiles Hopper's tensor memory accelerator
# (TMA) fetches whole: one instruction per operand tile and step, bounds handled by the hardware
# (rows and channels past the end read as zeros), where the pointer kernels spend a 16-byte copy,
# an address and a mask per thread and row. Twelve of ResNet-50's 23 distinct layers are such.
# The same tiles as the pointer kernels', each with a pre_hook that gives the tensor descriptors
# its block shapes (a descriptor's block shape is part of the kernel it is compiled into).


def _gemm_blocks(nargs) -> None:
    """pre_hook of the pointwise forward / backward-input configs: a's tiles are (BLOCK_M, BLOCK_K),
    b's (BLOCK_N, BLOCK_K) where the kernel reads it transposed (B_T), else (BLOCK_K, BLOCK_N)."""
    m, n, k = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a"].block_shape = [m, k]
    nargs["b"].block_shape = [n, k] if nargs["B_T"] else [k, n]


def _weight_blocks(nargs) -> None:
    """pre_hook of the pointwise backward-weight configs: (pixels, output channels) tiles of dy,
    (pixels, input channels) tiles of x."""
    nargs["dy"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["x"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_N"]]


def _with_pre_hook(configs: list[triton.Config], hook) -> list[triton.Config]:
    return [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, maxnreg=c.maxnreg, pre_hook=hook)
            for c in configs]


POINTWISE_CONFIGS = _with_pre_hook(FORWARD_CONFIGS, _gemm_blocks)
POINTWISE_WEIGHT_CONFIGS = _with_pre_hook(BACKWARD_WEIGHT_CONFIGS, _weight_blocks)


def _offset_dtype(*tensors: torch.Tensor, extent: int = 0):
    """Element offsets and pixel indices in int32 (cheaper address math), unless one of the
    tensors holds, or reaches through its strides, nearly 2^31 elements; the margin covers the
    masked-off lanes of the last tile, whose indices run up to a block past the end. Also
    int64 where window coordinates, which run up to `extent` in magnitude, do not stay below
    2^29 (_outside's margin)."""
    if extent >= 2**29:
        return tl.int64
    # Plain loops, not generator expressions: this runs on every launch.
    for t in tensors:
        reach = t.numel()
        for size, stride in zip(t.shape, t.stride()):
            reach += (size - 1) * abs(stride)
        if reach >= 2**31 - 2**16:
            return tl.int64
    return tl.int32


def _window_extent(H: int, W: int, padding) -> int:
    """A bound on the magnitude of the input coordinates a convolution's windows reach: from
    -padding to the input's size plus padding (its dilated taps end inside that)."""
    return max(H, W) + 2 * max(padding)


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    """t's strides for the kernels, with 0 for each dimension of size 1 (only ever indexed at 0).
    Triton specializes an integer argument on whether it divides by 16 (0 does) and turns a 1
    into a constant, and the loads' vector width follows from that: torch gives a 1x1 kernel's
    weight the strides (C, 1, 1, 1) in either layout, whose 1s times a tap index (always 0, but
    not known to be) make the weight loads 2-byte scalar ones instead of 16-byte asynchronous
    copies (seen in the sm_90 PTX)."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


# A channels_last copy of an NCHW operand costs two passes over it, once; the loads it speeds up
# come once per read of the tensor. So the launchers copy only where the kernels read each element
# at least COPY_MIN_READS times: about once per (pixel, tap) pair and tile of the other GEMM
# dimension (NOMINAL_TILE wide). Read element by element, an NCHW activation costs the loops 0.16
# (1x1 forward) to 0.76 (3x3 forward) more warp instructions per element (sm_90, Triton 3.8, bf16,
# per warp and 128x128x64 step: 1x1 forward 279 against 115 channels_last, 3x3 forward 950 against
# 171, 1x1 backward-weight with both activations NCHW 1,201 against 124); on an H100 (about 900 G
# warp instructions/s, 2.5-3 TB/s) one read's saving is worth a tenth to a half of the copy's
# time: an estimate, not a measurement. A stride-1 3x3 layer (nine reads) takes the copy, a 1x1
# one (one read per 128 output channels; a quarter at stride 2) does not. The CUDA backend uses
# the same rule (kCopyMinReads in csrc/cuda/conv_kernel.h).
COPY_MIN_READS = 3
NOMINAL_TILE = 128


def _input_reads(H, W, P, Q, R, S, Kg) -> int:
    """Reads of each input element (forward's A, backward-weight's B): per (output pixel, tap)
    pair that reaches it and tile of the group's output channels."""
    return P * Q * R * S * _cdiv(Kg, NOMINAL_TILE) // max(1, H * W)  # H*W = 0 only without channels


def _grad_output_reads(R, S, Cg, taps_in_columns=False) -> int:
    """Reads of each grad_output element (backward-input's and backward-weight's A): per tap and
    tile of the group's input channels, or, with (channel, tap) pairs as columns, per tile of those."""
    return _cdiv(Cg * R * S, NOMINAL_TILE) if taps_in_columns else R * S * _cdiv(Cg, NOMINAL_TILE)


def _weight_reads(N, P, Q) -> int:
    """Reads of each weight element: per tile of output pixels."""
    return _cdiv(N * P * Q, NOMINAL_TILE)


def _channels_innermost(t: torch.Tensor, channels_per_group: int, reads: int) -> tuple[torch.Tensor, bool]:
    """For a plan: (t, False), or, where the launcher is to give the kernel a channels_last copy of
    t, (a storage-less stand-in with the copy's strides, True). That is where t's channels are
    not contiguous (NCHW), a GEMM takes them in blocks (at least FEW_CHANNELS per group: not
    the few-channel path, whose tiles mix taps and channels, nor a depthwise layer, whose NCHW
    pixels are the contiguous ones) and the kernel reads each element at least COPY_MIN_READS
    times (`reads`).
    The kernels take any strides, but along an NCHW tensor's pixels Triton cannot prove runs
    (a window's rows wrap at row ends and meet padding), so every element gets its own 64-bit
    address and 2-byte load, where a copy buys 16-byte asynchronous copies."""
    if t.stride(1) == 1 or t.shape[1] == 1 or channels_per_group < FEW_CHANNELS or reads < COPY_MIN_READS:
        return t, False
    return torch.empty(t.shape, dtype=t.dtype, device="meta", memory_format=torch.channels_last), True


def _as_planned(plan, *operands: torch.Tensor) -> list[torch.Tensor]:
    """The launcher's GEMM operands as its plan laid them out: channels_last copies where
    _channels_innermost asked for them (plan.copies, in the order the plan took them)."""
    return [t.contiguous(memory_format=torch.channels_last) if copy else t for t, copy in zip(operands, plan.copies)]


def _pixel_stride(t: torch.Tensor) -> int | None:
    """The stride at which the pixels (n, h, w) of the 4-D tensor t lie, in their order
    (n*H + h)*W + w, if they lie evenly spaced: true of a contiguous channels_last tensor (C) and
    of autograd's expanded gradients (0), not of NCHW (its images are C planes apart); else None."""
    pixel, span = None, 1
    for size, stride in ((t.shape[3], t.stride(3)), (t.shape[2], t.stride(2)), (t.shape[0], t.stride(0))):
        if size == 1:
            continue
        if pixel is None:
            pixel = stride
        elif stride != pixel * span:
            return None
        span *= size
    return 0 if pixel is None else pixel


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 follows torch's cuDNN TF32 switch, as torch's convolution does."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not INTERPRETED:
        return "tf32"
    return "ieee"


def _split(pixels: int, programs_per_split: int, block: int) -> tuple[int, int]:
    """(number of splits, pixels per split) of an N*P*Q reduction; a multiple of `block`. An empty
    reduction (no pixels) is one split of one block."""
    splits = max(1, min(_cdiv(TARGET_PROGRAMS, max(1, programs_per_split)),
                        _cdiv(pixels, MIN_PIXELS_PER_SPLIT)))
    chunk = max(1, _cdiv(_cdiv(pixels, splits), block)) * block
    return max(1, _cdiv(pixels, chunk)), chunk


def _tiles_for(columns: int, configs: list[triton.Config] = FORWARD_CONFIGS) -> list[triton.Config]:
    """The forward / backward-input configs (or their pointwise twins) worth trying on a GEMM with
    this many columns (the group's output channels, or input channels): the narrow ones up to
    2 * NARROW_COLUMNS, the others above NARROW_COLUMNS; in list order, so the first is the
    untuned default."""
    return [c for c in configs
            if (columns <= 2 * NARROW_COLUMNS if c.kwargs["BLOCK_N"] == NARROW_COLUMNS else columns > NARROW_COLUMNS)]


def _for_operands(configs: list[triton.Config], dtype: torch.dtype, channels_per_group: int) -> list[triton.Config]:
    """The configs worth trying on GEMM operands of this dtype, in a layer with this many input
    channels per group: the register-capped ones only for 16-bit operands of many-channel
    layers. Under the cap fp32 operands spill, and so do few-channel tiles (FEW_CHANNELS), whose
    input elements are gathered one by one, each with an address and a mask in registers: an RGB
    stem's spilled 292-388 bytes in the forward, 232-960 in backward-weight (sm_90, Triton 3.6
    and 3.8)."""
    return [c for c in configs if c.maxnreg is None
            or (dtype in (torch.float16, torch.bfloat16) and channels_per_group >= FEW_CHANNELS)]


def _prune_by_operands(operand_arg: str):
    """The autotuner's early_config_prune for a kernel whose GEMM operands have the dtype of the
    argument `operand_arg`: _for_operands's configs."""
    def prune(configs, named_args, **kwargs):
        return _for_operands(configs, named_args[operand_arg].dtype, named_args["Cg"])
    return prune


def _prune_by_columns(columns_arg: str, operand_arg: str):
    """The autotuner's early_config_prune for a kernel whose GEMM columns are the argument
    `columns_arg`: _tiles_for's configs, by _for_operands for `operand_arg`'s dtype."""
    def prune(configs, named_args, **kwargs):
        return _for_operands(_among(configs, _tiles_for(named_args[columns_arg])), named_args[operand_arg].dtype,
                             named_args["Cg"])
    return prune


def _prune_pointwise_gemm(configs, named_args, **kwargs):
    """The autotuner's early_config_prune for _pointwise_gemm_kernel: the twins of _tiles_for's
    configs for its columns, by _for_operands (its operands are never gathered, so the
    register-capped tiles stay in for any channel count)."""
    return _for_operands(_among(configs, _tiles_for(named_args["cols"], POINTWISE_CONFIGS)),
                         named_args["a"].base.dtype, FEW_CHANNELS)


def _prune_pointwise_weight(configs, named_args, **kwargs):
    """The autotuner's early_config_prune for _pointwise_weight_kernel (as _prune_pointwise_gemm)."""
    return _for_operands(configs, named_args["dy"].base.dtype, FEW_CHANNELS)


def _upcast_dot(dtype: torch.dtype) -> bool:
    """Triton's interpreter computes bfloat16 tl.dot wrongly (Triton 3.8): there, and only
    there, bfloat16 tiles are widened to fp32 before the product."""
    return dtype == torch.bfloat16 and INTERPRETED


# ---- kernels -------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    # out_dtype named: Triton 3.6 takes fp32 as the result type even with an fp64 accumulator.
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _outside(INDEX: tl.constexpr):
    """A coordinate offset that puts a window row or tap out of bounds whatever it is added to:
    a masked-off pixel or reduction index carries it, so that _inside alone masks the loads.
    Real coordinates stay below a quarter of its magnitude (_offset_dtype's `extent`), so the
    sum of two, or of one and a real coordinate, stays negative without wrapping."""
    # One return: Triton compiles the statements after a constexpr `if` that returns too.
    if INDEX == tl.int64:
        offset = tl.full((), -(1 << 62), tl.int64)
    else:
        offset = tl.full((), -(1 << 30), tl.int32)
    return offset


@triton.jit
def _inside(ih, iw, H, W):
    """0 <= ih < H and 0 <= iw < W, elementwise, as one unsigned compare per coordinate (a
    negative coordinate reads as a huge unsigned one): a few-channel tile computes its mask per
    element, not per row, and that is 2 instructions per element fewer in sm_90 SASS."""
    if ih.dtype.primitive_bitwidth == 64:
        unsigned: tl.constexpr = tl.uint64
    else:
        unsigned: tl.constexpr = tl.uint32
    return (ih.to(unsigned, bitcast=True) < tl.cast(H, unsigned)) & (iw.to(unsigned, bitcast=True) < tl.cast(W, unsigned))


@triton.jit
def _tile_of_program(columns, BLOCK_N: tl.constexpr):
    """(row tile, column tile) of this program of a forward / backward-input grid, whose axis 0
    runs over both with the column tiles fastest: the programs that read the same rows of the
    activations (the large operand; the weights stay in L2) run together, so each row tile
    comes from memory once however many column tiles there are."""
    tiles_n = tl.cdiv(columns, BLOCK_N)
    return tl.program_id(0) // tiles_n, tl.program_id(0) % tiles_n


@triton.jit
def _first_block():
    """(tap row, tap column, first channel) of a reduction's first block (_next_block)."""
    zero = tl.full((), 0, tl.int32)
    return zero, zero, zero


@triton.jit
def _next_block(r, s, c0, taps_s, channels, BLOCK: tl.constexpr, ONE_TAP: tl.constexpr):
    """The reduction block after channels c0 .. c0 + BLOCK - 1 of tap (r, s), in the order
    (r, s, channel block) with channel blocks fastest (ONE_TAP: a 1x1 kernel, whose tap stays
    (0, 0)). A loop carries these counters from one iteration to the next rather than dividing
    them out of its iteration number: a division by a runtime value costs every thread about 20
    instructions per iteration (sm_90 SASS)."""
    if ONE_TAP:
        return r, s, c0 + BLOCK
    c0 += BLOCK
    next_tap = c0 >= channels
    c0 = tl.where(next_tap, 0, c0)
    s += next_tap.to(tl.int32)
    next_row = s == taps_s
    s = tl.where(next_row, 0, s)
    return r + next_row.to(tl.int32), s, c0


@triton.jit
def _conv2d_forward_kernel(
    x, w, bias, y,
    N, H, W, P, Q, Cg, Kg,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sx_n, sx_c, sx_h, sx_w, sw_k, sw_c, sw_r, sw_s, sy_n, sy_k, sy_p, sy_q,
    R: tl.constexpr, S: tl.constexpr, FEW_CG: tl.constexpr, HAS_BIAS: tl.constexpr, INDEX: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    g = tl.program_id(1)
    m_tile, n_tile = _tile_of_program(Kg, BLOCK_N)
    m = m_tile.to(INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels
    k = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group
    # tl.cast rather than N.to(): Triton passes an integer argument equal to 1 as a constant.
    m_ok = m < tl.cast(N, INDEX) * P * Q
    k_ok = k < Kg
    q = m % Q
    p = (m // Q) % P
    n = m // (Q * P)
    # The window's top-left input coordinate; tap (r, s) reads (ih0 + r*dil_h, iw0 + s*dil_w).
    ih0 = p * stride_h - pad_h
    iw0 = q * stride_w - pad_w
    x_img = x + n * sx_n + tl.cast(g * Cg, INDEX) * sx_c
    w_out = w + tl.cast(g * Kg + k, INDEX) * sw_k

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    if FEW_CG:
        # Few channels (an RGB stem): a reduction tile spans taps and channels together,
        # j = (r*S + s)*Cg + c, so the tile is not mostly masked-off channels. Cg is FEW_CG, a
        # compile-time constant like R and S, so splitting j into (r, s, c) is multiplications,
        # not divisions. A row's window origin (x_win, ih0, iw0) plus a column's tap offset
        # (x_tap, tap_h, tap_w) locate each element; the row and column masks ride on those
        # coordinates (_outside), leaving one bounds check per element (_inside).
        x_win = x_img + ih0 * sx_h + iw0 * sx_w
        row_h = tl.where(m_ok, ih0, _outside(INDEX))
        for j0 in range(0, R * S * FEW_CG, BLOCK_K):
            j = j0 + tl.arange(0, BLOCK_K)
            j_ok = j < R * S * FEW_CG
            c = j % FEW_CG
            s = (j // FEW_CG) % S
            r = j // (FEW_CG * S)
            tap_h = tl.where(j_ok, r * dil_h, _outside(INDEX))
            tap_w = s * dil_w
            x_tap = tl.cast(r * dil_h, INDEX) * sx_h + tl.cast(tap_w, INDEX) * sx_w + tl.cast(c, INDEX) * sx_c
            a_ok = _inside(row_h[:, None] + tap_h[None, :], iw0[:, None] + tap_w[None, :], H, W)
            a = tl.load(x_win[:, None] + x_tap[None, :], mask=a_ok, other=0.0)
            w_off = tl.cast(c, INDEX) * sw_c + r * sw_r + s * sw_s
            b = tl.load(w_out[None, :] + w_off[:, None], mask=j_ok[:, None] & k_ok[None, :], other=0.0)
            acc = _dot(a, b, acc, PRECISION, UPCAST)
    else:
        # One flat loop over (tap, channel block): a single long loop is what Triton software-
        # pipelines (num_stages), also when a tap has only one or two channel blocks.
        x_win = x_img + ih0 * sx_h + iw0 * sx_w  # each row's window at tap (0, 0)
        r, s, c0 = _first_block()
        for _ in range(0, R * S * tl.cdiv(Cg, BLOCK_K)):
            c = c0 + tl.arange(0, BLOCK_K)
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            c_ok = c < Cg
            # The tap's offset is one number for the whole tile (uniform registers).
            tap = tl.cast(r * dil_h, INDEX) * sx_h + tl.cast(s * dil_w, INDEX) * sx_w
            a = tl.load((x_win + tap)[:, None] + tl.cast(c, INDEX)[None, :] * sx_c,
                        mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load((w_out + r * sw_r + s * sw_s)[None, :] + tl.cast(c, INDEX)[:, None] * sw_c,
                        mask=c_ok[:, None] & k_ok[None, :], other=0.0)
            acc = _dot(a, b, acc, PRECISION, UPCAST)
            r, s, c0 = _next_block(r, s, c0, S, Cg, BLOCK_K, R * S == 1)
    if HAS_BIAS:
        acc += tl.load(bias + g * Kg + k, mask=k_ok, other=0.0).to(ACC)[None, :]
    y_pix = y + n * sy_n + p * sy_p + q * sy_q
    out = y_pix[:, None] + tl.cast(g * Kg + k, INDEX)[None, :] * sy_k
    tl.store(out, acc.to(y.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def _first_tap(phase, stride, dilation, step, kernel: tl.constexpr):
    """Smallest tap t with t*dilation = phase (mod stride), or `kernel` if there is none
    (csrc/include/cnnkernels/conv.h: backward_input_taps)."""
    first = kernel
    for t in range(0, step):
        hit = (first == kernel) & ((phase - t * dilation) % stride == 0) & (t < kernel)
        first = tl.where(hit, t, first)
    return first


@triton.jit
def _conv2d_backward_input_kernel(
    dy, w, dx,
    N, H, W, P, Q, Cg, Kg,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, step_h, step_w,
    sd_n, sd_k, sd_p, sd_q, sw_k, sw_c, sw_r, sw_s, sx_n, sx_c, sx_h, sx_w,
    R: tl.constexpr, S: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    z = tl.program_id(1)
    g = z // (stride_h * stride_w)
    phase_h = (z // stride_w) % stride_h  # = (ih + pad_h) mod stride_h for every row of this program
    phase_w = z % stride_w
    # The phase's first input row/column and its extent.
    ih0 = (phase_h - pad_h % stride_h + stride_h) % stride_h
    iw0 = (phase_w - pad_w % stride_w + stride_w) % stride_w
    Hp = (H - ih0 + stride_h - 1) // stride_h
    Wp = (W - iw0 + stride_w - 1) // stride_w
    # A phase can be empty (H < stride): divide by at least 1, the mask keeps every lane off.
    Hd = tl.maximum(Hp, 1)
    Wd = tl.maximum(Wp, 1)
    # The phase's useful taps: first_h, first_h + step_h, ... below R (none when first_h == R).
    first_h = _first_tap(phase_h, stride_h, dil_h, step_h, R)
    first_w = _first_tap(phase_w, stride_w, dil_w, step_w, S)
    taps_h = tl.cdiv(R - first_h, step_h)
    taps_w = tl.cdiv(S - first_w, step_w)

    m_tile, n_tile = _tile_of_program(Cg, BLOCK_N)
    m = m_tile.to(INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels of this phase
    c = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels within the group
    m_ok = m < tl.cast(N, INDEX) * Hp * Wp
    c_ok = c < Cg
    row = (m // Wd) % Hd  # within the phase
    col = m % Wd
    ih = ih0 + row * stride_h
    iw = iw0 + col * stride_w
    n = m // (Wd * Hd)
    # The gradient row that input row ih meets through tap r is (ih + pad_h - r*dil_h) / stride_h,
    # exactly (the phase makes it a multiple). Over the useful taps r = first_h + i*step_h that
    # is oh_first - i*oh_step, with step_h*dil_h = lcm(stride_h, dil_h) a multiple of stride_h.
    # So only these two divisions, not one per row and tap (likewise for columns).
    oh_first = row + (ih0 + pad_h - first_h * dil_h) // stride_h
    ow_first = col + (iw0 + pad_w - first_w * dil_w) // stride_w
    oh_step = step_h * dil_h // stride_h
    ow_step = step_w * dil_w // stride_w
    dy_first = dy + n * sd_n + tl.cast(g * Kg, INDEX) * sd_k + oh_first * sd_p + ow_first * sd_q
    w_in = w + tl.cast(g * Kg, INDEX) * sw_k + tl.cast(c, INDEX) * sw_c

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    # One flat loop over (useful tap, output-channel block), pipelined like the forward's; the
    # tap is (first_h + i*step_h, first_w + j*step_w).
    i, j, k0 = _first_block()
    for _ in range(0, taps_h * taps_w * tl.cdiv(Kg, BLOCK_K)):
        k = k0 + tl.arange(0, BLOCK_K)
        oh = oh_first - i * oh_step
        ow = ow_first - j * ow_step
        pix_ok = m_ok & (oh >= 0) & (oh < P) & (ow >= 0) & (ow < Q)
        k_ok = k < Kg
        tap = tl.cast(i * oh_step, INDEX) * sd_p + tl.cast(j * ow_step, INDEX) * sd_q
        a = tl.load((dy_first - tap)[:, None] + tl.cast(k, INDEX)[None, :] * sd_k,
                    mask=pix_ok[:, None] & k_ok[None, :], other=0.0)
        w_tap = w_in + tl.cast(first_h + i * step_h, INDEX) * sw_r + tl.cast(first_w + j * step_w, INDEX) * sw_s
        b = tl.load(w_tap[None, :] + tl.cast(k, INDEX)[:, None] * sw_k,
                    mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        acc = _dot(a, b, acc, PRECISION, UPCAST)
        i, j, k0 = _next_block(i, j, k0, taps_w, Kg, BLOCK_K, R * S == 1)
    x_pix = dx + n * sx_n + ih * sx_h + iw * sx_w
    out = x_pix[:, None] + tl.cast(g * Cg + c, INDEX)[None, :] * sx_c
    tl.store(out, acc.to(dx.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.jit
def _pixels(m, P, Q):
    """(n, p, q) of pixels m = (n*P + p)*Q + q: divided out once, before a loop over the pixels
    that then carries them (_advance_pixels)."""
    return m // (Q * P), (m // Q) % P, m % Q


@triton.jit
def _pixel_offsets(m, n, p, q, s_n, s_p, s_q, s_pixel, FLAT: tl.constexpr):
    """Where pixels m = (n, p, q) of a tensor lie: m * s_pixel where its pixels lie evenly
    spaced (FLAT, _pixel_stride), otherwise through its three strides."""
    if FLAT:
        return m * s_pixel
    return n * s_n + p * s_p + q * s_q


@triton.jit
def _pixel_step(P, Q, STEP: tl.constexpr):
    """STEP pixels as (n, p, q) increments, for _advance_pixels: divided once, before a loop.
    (Left in the loop, the compiler hoists these divisions only sometimes: with 64-bit (n, p,
    q) it did not, and they cost about 20 instructions each per iteration.)"""
    return STEP // (Q * P), (STEP // Q) % P, STEP % Q


@triton.jit
def _advance_pixels(n, p, q, P, Q, step_n, step_p, step_q):
    """(n, p, q) of the pixels m + STEP, from those of pixels m (m = (n*P + p)*Q + q) and STEP's
    increments (_pixel_step), without dividing. q + step_q < 2Q and p + step_p + 1 < 2P, so
    each carry is 0 or 1."""
    q += step_q
    carry = q >= Q
    q = tl.where(carry, q - Q, q)
    p += step_p + carry
    carry = p >= P
    p = tl.where(carry, p - P, p)
    return n + step_n + carry, p, q


@triton.jit
def _conv2d_backward_weight_kernel(
    dy, x, out,
    N, H, W, P, Q, Cg, Kg, chunk,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sd_n, sd_k, sd_p, sd_q, sd_pixel, sx_n, sx_c, sx_h, sx_w, sx_pixel, so_split, so_k, so_c, so_r, so_s,
    R: tl.constexpr, S: tl.constexpr, FEW_CG: tl.constexpr, DY_FLAT: tl.constexpr, X_FLAT: tl.constexpr,
    INDEX: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # Columns: the group's input channels of one tap (grid axis 1 = (group, r, s)), or with
    # FEW_CG (few channels, Cg = FEW_CG: an RGB stem) all of the group's (r, s, c), c innermost.
    columns = R * S * FEW_CG if FEW_CG else Cg
    tiles_n = tl.cdiv(columns, BLOCK_N)
    k = (tl.program_id(0) // tiles_n) * BLOCK_K + tl.arange(0, BLOCK_K)  # output channels in group
    j = (tl.program_id(0) % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    if FEW_CG:
        g = tl.program_id(1)
        c = j % FEW_CG
        s = (j // FEW_CG) % S
        r = j // (FEW_CG * S)
    else:
        z = tl.program_id(1)
        g = z // (S * R)
        c = j
        s = z % S
        r = (z // S) % R
    split = tl.program_id(2).to(INDEX)
    k_ok = k < Kg
    j_ok = j < columns
    dy_k = dy + tl.cast(g * Kg + k, INDEX) * sd_k
    # Each column's element at its pixel's window origin: input channel c at tap (r, s).
    x_tap = x + tl.cast(g * Cg + c, INDEX) * sx_c + tl.cast(r * dil_h, INDEX) * sx_h + tl.cast(s * dil_w, INDEX) * sx_w
    if FEW_CG:  # (1, BLOCK_N): a tap per column; a masked-off column's puts its reads out of bounds
        tap_h = tl.where(j_ok, r * dil_h, _outside(INDEX))[None, :]
        tap_w = (s * dil_w)[None, :]
    else:  # one tap for the program
        tap_h = r * dil_h
        tap_w = s * dil_w
    M = tl.cast(N, INDEX) * P * Q
    m_begin = split * chunk
    m_end = tl.minimum(m_begin + chunk, M)

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=ACC)
    # The reduction's pixels m = (n*P + p)*Q + q. Every thread holds several pixels of each
    # operand tile, so finding (n, p, q) costs per pixel per iteration: carried forward
    # (_advance_pixels), not divided out of m. A tensor whose pixels lie evenly spaced (DY_FLAT,
    # and X_FLAT for a 1x1 convolution with stride 1 and no padding) needs none: pixel m is at
    # m * its pixel stride.
    n, p, q = _pixels(m_begin + tl.arange(0, BLOCK_M), P, Q)
    step_n, step_p, step_q = _pixel_step(P, Q, BLOCK_M)
    for m0 in range(m_begin, m_end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_ok = m < m_end
        dy_pixel = _pixel_offsets(m, n, p, q, sd_n, sd_p, sd_q, sd_pixel, DY_FLAT)
        a = tl.load(dy_k[:, None] + dy_pixel[None, :], mask=k_ok[:, None] & m_ok[None, :], other=0.0)
        if X_FLAT:
            b = tl.load(x_tap[None, :] + (m * sx_pixel)[:, None], mask=m_ok[:, None] & j_ok[None, :], other=0.0)
        else:
            # Each pixel's window origin; a masked-off pixel's is out of bounds (_outside).
            ih0 = p * stride_h - pad_h
            iw0 = q * stride_w - pad_w
            row_h = tl.where(m_ok, ih0, _outside(INDEX))
            # (BLOCK_M, 1) with one tap per program, (BLOCK_M, BLOCK_N) with FEW_CG.
            x_ok = _inside(row_h[:, None] + tap_h, iw0[:, None] + tap_w, H, W)
            if not FEW_CG:
                x_ok &= j_ok[None, :]
            b = tl.load(x_tap[None, :] + (n * sx_n + ih0 * sx_h + iw0 * sx_w)[:, None], mask=x_ok, other=0.0)
        acc = _dot(a, b, acc, PRECISION, UPCAST)
        if not (DY_FLAT and X_FLAT):
            n, p, q = _advance_pixels(n, p, q, P, Q, step_n, step_p, step_q)
    # out[split, k, c, r, s]: the fp32 partials, or the weight gradient itself (one split).
    dst = (out + split * so_split + tl.cast(g * Kg + k, INDEX)[:, None] * so_k
           + (tl.cast(c, INDEX) * so_c + r * so_r + s * so_s)[None, :])
    tl.store(dst, acc.to(out.dtype.element_ty), mask=k_ok[:, None] & j_ok[None, :])


@triton.jit
def _bias_grad_kernel(
    dy, out, N, K, P, Q, chunk,
    sd_n, sd_k, sd_p, sd_q, sd_pixel, so_split, so_k,
    DY_FLAT: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(1).to(INDEX)
    k_ok = k < K
    M = tl.cast(N, INDEX) * P * Q
    m_begin = split * chunk
    m_end = tl.minimum(m_begin + chunk, M)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
    # The pixels as in the backward-weight kernel: by index where they lie evenly spaced,
    # otherwise through (n, p, q) carried from block to block.
    n, p, q = _pixels(m_begin + tl.arange(0, BLOCK_M), P, Q)
    step_n, step_p, step_q = _pixel_step(P, Q, BLOCK_M)
    for m0 in range(m_begin, m_end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_ok = m < m_end
        off = _pixel_offsets(m, n, p, q, sd_n, sd_p, sd_q, sd_pixel, DY_FLAT)
        acc += tl.load(dy + off[:, None] + tl.cast(k, INDEX)[None, :] * sd_k,
                       mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        if not DY_FLAT:
            n, p, q = _advance_pixels(n, p, q, P, Q, step_n, step_p, step_q)
    # out[split, k]: the fp32 partials, or the bias gradient itself (one split).
    tl.store(out + split * so_split + k * so_k, tl.sum(acc, axis=0).to(out.dtype.element_ty), mask=k_ok)


@triton.jit
def _sum_partials_kernel(
    partial, out, splits, numel, D1, D2, D3, so_0, so_1, so_2, so_3,
    BLOCK: tl.constexpr,
):
    """out[i] = sum over splits of partial[split, i], in split order; `i` walks a contiguous
    (D0, D1, D2, D3) index space and `out` is written through its own strides."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < numel
    src = partial + i
    total = tl.load(src, mask=ok, other=0.0)
    for _ in range(1, splits):
        src += numel  # the next split's partial
        total += tl.load(src, mask=ok, other=0.0)
    i3 = i % D3
    i2 = (i // D3) % D2
    i1 = (i // (D3 * D2)) % D1
    i0 = i // (D3 * D2 * D1)
    off = i0.to(tl.int64) * so_0 + i1.to(tl.int64) * so_1 + i2.to(tl.int64) * so_2 + i3.to(tl.int64) * so_3
    tl.store(out + off, total.to(out.dtype.element_ty), mask=ok)


@triton.jit
def _pointwise_tile(a, b, acc, row0, col0, start, end, A_T: tl.constexpr, B_T: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """acc + A[row0:, start:end] @ B[start:end, col0:] for the tensor descriptors a and b, in
    reduction steps of BLOCK: a holds A, or with A_T its transpose (its tiles are then (reduction,
    rows)); b holds B, or with B_T its transpose. Tiles past a descriptor's end read as zeros."""
    for d0 in range(start, end, BLOCK):
        if A_T:
            x = a.load([d0, row0]).T
        else:
            x = a.load([row0, d0])
        if B_T:
            y = b.load([col0, d0]).T
        else:
            y = b.load([d0, col0])
        acc = _dot(x, y, acc, PRECISION, UPCAST)
    return acc


@triton.jit
def _pointwise_gemm_kernel(
    a, b, bias, c, rows, cols, depth, P, Q, sc_n, sc_c, sc_p, sc_q,
    B_T: tl.constexpr, HAS_BIAS: tl.constexpr, INDEX: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """A pointwise convolution's forward (c = a @ b^T + bias: pixels x input channels times the
    weight (K, C) transposed, B_T) or backward-input (c = a @ b: pixels x output channels times the
    weight). c is the (N, cols, P, Q) result, written through its strides in any layout. Tiles are
    ordered as the pointer kernels' (_tile_of_program)."""
    m_tile, n_tile = _tile_of_program(cols, BLOCK_N)
    row0 = m_tile * BLOCK_M
    col0 = n_tile * BLOCK_N
    acc = _pointwise_tile(a, b, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), row0, col0, 0, depth, False, B_T,
                          PRECISION, UPCAST, BLOCK_K)
    m = row0.to(INDEX) + tl.arange(0, BLOCK_M)
    n = col0 + tl.arange(0, BLOCK_N)
    n_ok = n < cols
    if HAS_BIAS:
        acc += tl.load(bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    pixel = c + (m // (P * Q)) * sc_n + ((m // Q) % P) * sc_p + (m % Q) * sc_q
    tl.store(pixel[:, None] + tl.cast(n, INDEX)[None, :] * sc_c, acc.to(c.dtype.element_ty),
             mask=(m < rows)[:, None] & n_ok[None, :])


@triton.jit
def _pointwise_weight_kernel(
    dy, x, out, K, C, pixels, chunk, so_split, so_k, so_c,
    INDEX: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """A pointwise convolution's weight gradient, dy^T @ x over the pixels of one split (grid
    axis 1), with the tiles and reduction steps of _conv2d_backward_weight_kernel: rows are
    output channels (BLOCK_K), columns input channels (BLOCK_N), steps BLOCK_M pixels. Writes
    out[split, k, c] (fp32 partials, or the gradient itself with one split)."""
    tiles_n = tl.cdiv(C, BLOCK_N)
    k0 = (tl.program_id(0) // tiles_n) * BLOCK_K
    c0 = (tl.program_id(0) % tiles_n) * BLOCK_N
    split = tl.program_id(1)
    start = split * chunk
    acc = _pointwise_tile(dy, x, tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32), k0, c0, start,
                          tl.minimum(start + chunk, pixels), True, False, PRECISION, UPCAST, BLOCK_M)
    k = k0 + tl.arange(0, BLOCK_K)
    c = c0 + tl.arange(0, BLOCK_N)
    dst = out + tl.cast(split, INDEX) * so_split + tl.cast(k, INDEX)[:, None] * so_k + tl.cast(c, INDEX)[None, :] * so_c
    tl.store(dst, acc.to(out.dtype.element_ty), mask=(k < K)[:, None] & (c < C)[None, :])


_SUM_BLOCK = 1024

# Autotuned variants for the GPU; the interpreter calls the plain kernels with one config.
_TUNED = {
    _conv2d_forward_kernel: triton.autotune(
        FORWARD_CONFIGS, key=["N", "H", "W", "P", "Q", "Cg", "Kg", "R", "S", "stride_h", "stride_w"],
        prune_configs_by={"early_config_prune": _prune_by_columns("Kg", "x")},
    )(_conv2d_forward_kernel),
    _conv2d_backward_input_kernel: triton.autotune(
        BACKWARD_INPUT_CONFIGS, key=["N", "H", "W", "P", "Q", "Cg", "Kg", "R", "S", "stride_h", "stride_w"],
        prune_configs_by={"early_config_prune": _prune_by_columns("Cg", "dy")},
    )(_conv2d_backward_input_kernel),
    _conv2d_backward_weight_kernel: triton.autotune(
        BACKWARD_WEIGHT_CONFIGS, key=["N", "H", "W", "P", "Q", "Cg", "Kg", "R", "S", "chunk"],
        prune_configs_by={"early_config_prune": _prune_by_operands("dy")},
    )(_conv2d_backward_weight_kernel),
    _pointwise_gemm_kernel: triton.autotune(
        POINTWISE_CONFIGS, key=["rows", "cols", "depth", "B_T"],
        prune_configs_by={"early_config_prune": _prune_pointwise_gemm},
    )(_pointwise_gemm_kernel),
    _pointwise_weight_kernel: triton.autotune(
        POINTWISE_WEIGHT_CONFIGS, key=["K", "C", "pixels", "chunk"],
        prune_configs_by={"early_config_prune": _prune_pointwise_weight},
    )(_pointwise_weight_kernel),
}


def _launch(kernel, grid, args, config: triton.Config | None, default_configs, float64_config, **constexprs):
    """Runs `kernel` with `config`, or in float64 with `float64_config`, or autotuned on a GPU, or
    with the first config (in the interpreter, where timing means nothing, or with autotuning
    switched off)."""
    if config is None and constexprs.get("ACC") == tl.float64:
        config = float64_config
    if config is None and not _autotune():
        config = default_configs[0]
    launch(kernel, grid, args, constexprs, config, _TUNED[kernel])


def _sum_partials(partial: torch.Tensor, out: torch.Tensor) -> None:
    """out = partial.sum(0) in split order, for a 4-D `out` (a bias gradient as a (K, 1, 1, 1) view)."""
    numel = out.numel()
    launch(_sum_partials_kernel, (_cdiv(numel, _SUM_BLOCK),),
           (partial, out, partial.shape[0], numel, *out.shape[1:], *out.stride()), dict(BLOCK=_SUM_BLOCK))


# ---- launchers -----------------------------------------------------------------------------
# Each launcher's work that depends only on the problem (shapes, strides, dtypes, geometry) is a
# plan, made once per problem (_common.planned); a call allocates its outputs and launches.


class _Plan(NamedTuple):
    out_shape: list[int]  # the tensor the launcher returns, in `out_format`
    out_format: torch.memory_format
    grid: object  # the launch grid, or a function of the config's meta-parameters
    scalars: tuple  # the kernel's arguments after its tensors
    constexprs: dict  # every compile-time argument but the TF32 choice (_precision), which can change
    splits: int = 1  # backward-weight and bias: how many chunks the N*P*Q reduction has
    tiles: list | None = None  # forward and backward-input: the configs for the GEMM's columns (_tiles_for)
    copies: tuple[bool, bool] = (False, False)  # GEMM operands the launcher copies channels_last (_as_planned)
    pointwise: _Pointwise | None = None  # a pointwise problem's GEMM on tensor descriptors, where it has one


class _Pointwise(NamedTuple):
    """How a pointwise problem runs on _pointwise_gemm_kernel or _pointwise_weight_kernel: its
    loaded operands as matrices (tensor descriptors), in argument order, and the launch."""
    kernel: object
    pre_hook: object  # its configs' (_gemm_blocks, _weight_blocks)
    matrices: tuple[tuple[int, int], ...]  # (rows, columns) of each descriptor's operand (_as_matrix)
    grid: object
    scalars: tuple  # the kernel's arguments after its tensors
    constexprs: dict  # but PRECISION (_precision)
    tiles: list  # the configs to try (pre_hook'd twins of the pointer kernel's)


# Operand dtypes the pointwise kernels take (float64 runs one small pointer-kernel tile).
_DESCRIPTOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _one_to_one(R, S, stride, padding) -> bool:
    """A 1x1 convolution with stride 1 and no padding: output pixel m reads input pixel m."""
    return R == S == 1 and tuple(stride) == (1, 1) and not any(padding)


def _as_matrix(t: torch.Tensor) -> tuple[int, int] | None:
    """(rows, columns) of the 4-D tensor t read as the row-major matrix of its pixels (n, h, w) by
    its channels, where a tensor descriptor can address it that way: channels contiguous, pixels
    evenly one row apart (channels_last; a weight (K, C, 1, 1) in either layout reads as (K, C)),
    rows a multiple of 16 bytes, and fewer than 2^31 of them (descriptor coordinates are 32-bit).
    Else None."""
    n, c, h, w = t.shape
    rows = n * h * w
    pixel = _pixel_stride(t)
    if (t.stride(1) == 1 and c > 0 and (c * t.element_size()) % 16 == 0 and 0 < rows < 2**31
            and (pixel == c or (pixel == 0 and rows == 1))):
        return rows, c
    return None


def _pointwise_matrices(R, S, stride, padding, groups, *operands: torch.Tensor) -> tuple[tuple[int, int], ...] | None:
    """The GEMM operands' matrix shapes (_as_matrix) where the problem runs on the pointwise
    kernels: one-to-one pixels (_one_to_one), one group, a dtype they take, and every operand a
    matrix; else None."""
    if not _one_to_one(R, S, stride, padding) or groups != 1 or operands[0].dtype not in _DESCRIPTOR_DTYPES:
        return None
    shapes = tuple(_as_matrix(t) for t in operands)
    return None if None in shapes else shapes


@functools.cache
def _has_tma(device: int) -> bool:
    """Whether the GPU has a tensor memory accelerator: an NVIDIA one of compute capability 9.0 or
    later (the only kind these kernels have been compiled for)."""
    return torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 9


def _descriptors_ready(*tensors: torch.Tensor) -> bool:
    """Whether a call's operands can be read through tensor descriptors: in the interpreter, or
    on a GPU with a TMA unit, and 16-byte aligned (a plan knows shapes and strides, not addresses)."""
    return (INTERPRETED or _has_tma(tensors[0].get_device())) and all(t.data_ptr() % 16 == 0 for t in tensors)


def _descriptors(pointwise: _Pointwise, *tensors: torch.Tensor) -> list[TensorDescriptor]:
    """Tensor descriptors of the operands as the plan's matrices. Their block shape is the
    configs' to set (pre_hook: _gemm_blocks, _weight_blocks); 16 x 16 until then."""
    return [TensorDescriptor(t, [rows, cols], [cols, 1], [16, 16])
            for t, (rows, cols) in zip(tensors, pointwise.matrices)]


def _pointwise_gemm_plan(matrices, cols: int, depth: int, out: torch.Tensor, b_t: bool, has_bias: bool,
                         dtype: torch.dtype) -> _Pointwise:
    """_pointwise_gemm_kernel's launch for a forward (b_t: the weight read transposed; a bias) or a
    backward-input on operands of `dtype`: rows are the pixels (the first matrix's), `cols` the
    result's channels, `depth` the reduction's; `out` stands in for the result (shape, strides)."""
    rows = matrices[0][0]
    return _Pointwise(_pointwise_gemm_kernel, _gemm_blocks, matrices,
                      lambda meta: (_cdiv(rows, meta["BLOCK_M"]) * _cdiv(cols, meta["BLOCK_N"]), 1),
                      (rows, cols, depth, *out.shape[2:], *_strides(out)),
                      dict(B_T=b_t, HAS_BIAS=has_bias, INDEX=_offset_dtype(out), UPCAST=_upcast_dot(dtype)),
                      _tiles_for(cols, POINTWISE_CONFIGS))


def _launch_pointwise(plan: _Plan, operands: tuple[torch.Tensor, ...], others: tuple, config, dtype) -> bool:
    """Launches the plan's pointwise kernel on the GEMM `operands` (as descriptors) and the
    kernel's `others` tensors, where the plan has one and this call's operands suit descriptors
    (_descriptors_ready); returns whether it did."""
    pointwise = plan.pointwise
    if pointwise is None or not _descriptors_ready(*operands):
        return False
    _launch(pointwise.kernel, pointwise.grid, (*_descriptors(pointwise, *operands), *others, *pointwise.scalars),
            _hooked(config, pointwise.pre_hook), pointwise.tiles, None, PRECISION=_precision(dtype),
            **pointwise.constexprs)
    return True


def _hooked(config: triton.Config | None, hook=None) -> triton.Config | None:
    """`config` with `hook` as its pre_hook (None: without one). A caller (a test) names a tile
    by either twin, and which kernel runs can depend on the call (_descriptors_ready)."""
    if config is None or config.pre_hook is hook:
        return config
    return _with_pre_hook([config], hook)[0]


def _meta(shape, memory_format) -> torch.Tensor:
    """A tensor without storage, for the strides of an output a plan describes."""
    return torch.empty(shape, device="meta", memory_format=memory_format)


def _forward_plan(input, weight, bias, stride, padding, dilation, groups) -> _Plan:
    op = "cnnkernels_triton::conv2d"
    check_same_dtype(op, input, "input", weight, "weight")
    if bias is not None:
        check_same_dtype(op, input, "input", bias, "bias")
        check_bias(op, bias, weight.shape)
    N, C, H, W = input.shape
    K, Cg, R, S = weight.shape
    shape = conv2d_output_shape(input.shape, weight.shape, stride, padding, dilation, groups)
    P, Q = shape[2:]
    fmt = memory_format_of(input, weight)
    Kg = K // groups
    input, copy_input = _channels_innermost(input, Cg, _input_reads(H, W, P, Q, R, S, Kg))
    weight, copy_weight = _channels_innermost(weight, Cg, _weight_reads(N, P, Q))
    y = _meta(shape, fmt)

    def grid(meta):
        return (_cdiv(N * P * Q, meta["BLOCK_M"]) * _cdiv(Kg, meta["BLOCK_N"]), groups)

    scalars = (N, H, W, P, Q, Cg, Kg, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
               *_strides(input), *_strides(weight), *_strides(y))
    matrices = _pointwise_matrices(R, S, stride, padding, groups, input, weight)
    pointwise = matrices and _pointwise_gemm_plan(matrices, K, C, y, True, bias is not None, input.dtype)
    return _Plan(shape, fmt, grid, scalars, dict(
        R=R, S=S, FEW_CG=Cg if Cg < FEW_CHANNELS else 0, HAS_BIAS=bias is not None,
        INDEX=_offset_dtype(input, weight, y, extent=_window_extent(H, W, padding)),
        ACC=_acc_dtype(input.dtype), UPCAST=_upcast_dot(input.dtype)), tiles=_tiles_for(Kg),
        copies=(copy_input, copy_weight), pointwise=pointwise)


def conv2d_forward(input, weight, bias, stride, padding, dilation, groups, config=None):
    _check_device(input, weight, *([] if bias is None else [bias]))
    _check_dtype("cnnkernels_triton::conv2d", input)
    if bias is not None:
        bias = bias.contiguous()  # the kernels read it with unit stride (a copy only of a strided view)
    plan = planned(_forward_plan, input, weight, bias, stride, padding, dilation, groups)
    y = new_buffer(plan.out_shape, input, memory_format=plan.out_format)
    if y.numel() == 0:
        return y
    input, weight = _as_planned(plan, input, weight)
    if _launch_pointwise(plan, (input, weight), (bias if bias is not None else weight, y), config, input.dtype):
        return y
    _launch(_conv2d_forward_kernel, plan.grid, (input, weight, bias if bias is not None else weight, y, *plan.scalars),
            _hooked(config), plan.tiles, FLOAT64_TILE_CONFIG, PRECISION=_precision(input.dtype), **plan.constexprs)
    return y


def _backward_input_plan(grad_output, weight, input_size, stride, padding, dilation, groups) -> _Plan:
    op = "cnnkernels_triton::conv2d_backward_input"
    check_same_dtype(op, grad_output, "grad_output", weight, "weight")
    out_shape = conv2d_output_shape(input_size, weight.shape, stride, padding, dilation, groups)
    check_grad_output(op, grad_output, out_shape)
    N, C, H, W = input_size
    K, Cg, R, S = weight.shape
    P, Q = out_shape[2:]
    fmt = memory_format_of(grad_output, weight)
    grad_output, copy_dy = _channels_innermost(grad_output, K // groups, _grad_output_reads(R, S, Cg))
    weight, copy_weight = _channels_innermost(weight, Cg, _weight_reads(N, P, Q))
    dx = _meta(input_size, fmt)
    Kg = K // groups
    sh, sw = stride
    step_h = sh // _gcd(sh, dilation[0])
    step_w = sw // _gcd(sw, dilation[1])
    phase_pixels = N * _cdiv(H, sh) * _cdiv(W, sw)  # the largest phase

    def grid(meta):
        return (_cdiv(phase_pixels, meta["BLOCK_M"]) * _cdiv(Cg, meta["BLOCK_N"]), groups * sh * sw)

    scalars = (N, H, W, P, Q, Cg, Kg, sh, sw, padding[0], padding[2], dilation[0], dilation[1], step_h, step_w,
               *_strides(grad_output), *_strides(weight), *_strides(dx))
    matrices = _pointwise_matrices(R, S, stride, padding, groups, grad_output, weight)
    pointwise = matrices and _pointwise_gemm_plan(matrices, C, K, dx, False, False, grad_output.dtype)
    return _Plan(list(input_size), fmt, grid, scalars, dict(
        R=R, S=S, INDEX=_offset_dtype(dx, weight, grad_output), ACC=_acc_dtype(grad_output.dtype),
        UPCAST=_upcast_dot(grad_output.dtype)), tiles=_tiles_for(Cg), copies=(copy_dy, copy_weight),
        pointwise=pointwise)


def conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups, config=None):
    plan, dx, done = _start_backward("cnnkernels_triton::conv2d_backward_input", _backward_input_plan, grad_output,
                                     weight, input_size, stride, padding, dilation, groups)
    if done:
        return dx
    grad_output, weight = _as_planned(plan, grad_output, weight)
    if _launch_pointwise(plan, (grad_output, weight), (dx, dx), config, dx.dtype):  # dx: the unused bias too
        return dx
    _launch(_conv2d_backward_input_kernel, plan.grid, (grad_output, weight, dx, *plan.scalars), _hooked(config),
            plan.tiles, FLOAT64_TILE_CONFIG, PRECISION=_precision(dx.dtype), **plan.constexprs)
    return dx


def _backward_weight_plan(grad_output, input, weight_size, stride, padding, dilation, groups) -> _Plan:
    op = "cnnkernels_triton::conv2d_backward_weight"
    check_same_dtype(op, grad_output, "grad_output", input, "input")
    out_shape = conv2d_output_shape(input.shape, weight_size, stride, padding, dilation, groups)
    check_grad_output(op, grad_output, out_shape)
    N, C, H, W = input.shape
    K, Cg, R, S = weight_size
    P, Q = out_shape[2:]
    fmt = memory_format_of(grad_output, input)
    Kg = K // groups
    few_cg = Cg if Cg < FEW_CHANNELS else 0
    grad_output, copy_dy = _channels_innermost(grad_output, Kg, _grad_output_reads(R, S, Cg, bool(few_cg)))
    input, copy_input = _channels_innermost(input, Cg, _input_reads(H, W, P, Q, R, S, Kg))
    # A few-channel tile gathers its input elements one by one, each with an address and a mask
    # in registers, so it takes half as many pixels a step (tl.dot's 16 at least). With 64, an
    # RGB stem's 8-warp tile used 255 registers and spilled (sm_90, Triton 3.6); with 32, it and
    # every other uncapped tile but one in 3.6 (60 bytes, was 624) spill nothing, at about the
    # same instructions per pixel.
    block = max(16, WEIGHT_REDUCTION_BLOCK // 2) if few_cg else WEIGHT_REDUCTION_BLOCK
    # Split count from the shape alone (a nominal 64x64 tile), so every config sums alike.
    tiles = _cdiv(Kg, 64) * (_cdiv(R * S * Cg, 64) if few_cg else _cdiv(Cg, 64) * R * S) * groups
    splits, chunk = _split(N * P * Q, tiles, block)
    out = _reduction_output(_meta(weight_size, fmt), splits)

    def grid(meta):
        if few_cg:
            return (_cdiv(Kg, meta["BLOCK_K"]) * _cdiv(R * S * Cg, meta["BLOCK_N"]), groups, splits)
        return (_cdiv(Kg, meta["BLOCK_K"]) * _cdiv(Cg, meta["BLOCK_N"]), groups * R * S, splits)

    dy_pixel = _pixel_stride(grad_output)
    # A 1x1 convolution with stride 1 and no padding reads input pixel m for output pixel m.
    x_pixel = _pixel_stride(input) if _one_to_one(R, S, stride, padding) else None
    scalars = (N, H, W, P, Q, Cg, Kg, chunk, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
               *_strides(grad_output), dy_pixel or 0, *_strides(input), x_pixel or 0, *_split_strides(out, splits))
    pointwise = None
    matrices = _pointwise_matrices(R, S, stride, padding, groups, grad_output, input)
    if matrices:
        so_split, so_k, so_c = _split_strides(out, splits)[:3]
        pointwise = _Pointwise(
            _pointwise_weight_kernel, _weight_blocks, matrices,
            lambda meta: (_cdiv(K, meta["BLOCK_K"]) * _cdiv(C, meta["BLOCK_N"]), splits),
            (K, C, N * P * Q, chunk, so_split, so_k, so_c),
            dict(INDEX=_offset_dtype(out), UPCAST=_upcast_dot(grad_output.dtype), BLOCK_M=block),
            POINTWISE_WEIGHT_CONFIGS)
    return _Plan(list(weight_size), fmt, grid, scalars, dict(
        R=R, S=S, FEW_CG=few_cg, DY_FLAT=dy_pixel is not None, X_FLAT=x_pixel is not None,
        INDEX=_offset_dtype(input, grad_output, out, extent=_window_extent(H, W, padding)),
        ACC=_acc_dtype(grad_output.dtype), UPCAST=_upcast_dot(grad_output.dtype), BLOCK_M=block),
        splits, copies=(copy_dy, copy_input), pointwise=pointwise)


def conv2d_backward_weight(grad_output, input, weight_size, stride, padding, dilation, groups, config=None):
    plan, dw, done = _start_backward("cnnkernels_triton::conv2d_backward_weight", _backward_weight_plan, grad_output,
                                     input, weight_size, stride, padding, dilation, groups)
    if done:
        return dw
    grad_output, input = _as_planned(plan, grad_output, input)
    out = _reduction_output(dw, plan.splits)
    if not _launch_pointwise(plan, (grad_output, input), (out,), config, dw.dtype):
        _launch(_conv2d_backward_weight_kernel, plan.grid, (grad_output, input, out, *plan.scalars), _hooked(config),
                BACKWARD_WEIGHT_CONFIGS, FLOAT64_BACKWARD_WEIGHT_CONFIG, PRECISION=_precision(dw.dtype),
                **plan.constexprs)
    if plan.splits > 1:
        _sum_partials(out, dw)
    return dw


def _backward_bias_plan(grad_output) -> _Plan:
    if grad_output.dim() != 4:
        raise RuntimeError(
            f"cnnkernels_triton::conv2d_backward_bias: expected a 4-D grad_output, got sizes {list(grad_output.shape)}")
    N, K, P, Q = grad_output.shape
    splits, chunk = _split(N * P * Q, _cdiv(K, BIAS_BLOCK_K), BIAS_BLOCK_M)
    out = _reduction_output(_meta([K], torch.contiguous_format), splits)
    dy_pixel = _pixel_stride(grad_output)
    scalars = (N, K, P, Q, chunk, *_strides(grad_output), dy_pixel or 0, *_split_strides(out, splits))
    return _Plan([K], torch.contiguous_format, (_cdiv(K, BIAS_BLOCK_K), splits), scalars, dict(
        DY_FLAT=dy_pixel is not None, INDEX=_offset_dtype(grad_output, out), ACC=_acc_dtype(grad_output.dtype),
        BLOCK_K=BIAS_BLOCK_K, BLOCK_M=BIAS_BLOCK_M), splits)


def conv2d_backward_bias(grad_output):
    plan, db, done = _start_backward("cnnkernels_triton::conv2d_backward_bias", _backward_bias_plan, grad_output)
    if done:
        return db
    out = _reduction_output(db, plan.splits)
    launch(_bias_grad_kernel, plan.grid, (grad_output, out, *plan.scalars), plan.constexprs)
    if plan.splits > 1:
        _sum_partials(out, db.view(-1, 1, 1, 1))
    return db


def _start_backward(op: str, make, grad_output: torch.Tensor, *problem) -> tuple[_Plan, torch.Tensor, bool]:
    """What every backward launcher does first: checks grad_output and the problem's other tensor
    operand (its first entry, where it has one), takes the plan make(grad_output, *problem)
    (_common.planned), and allocates the gradient. Returns the plan, the gradient and whether it
    is complete already: empty, or zero because grad_output is empty (a reduction over no pixels)."""
    _check_device(grad_output, *problem[:1])
    _check_dtype(op, grad_output)
    plan = planned(make, grad_output, *problem)
    grad = new_buffer(plan.out_shape, grad_output, memory_format=plan.out_format)
    if grad.numel() == 0 or grad_output.numel() == 0:
        return plan, grad.zero_(), True
    return plan, grad, False


def _reduction_output(grad: torch.Tensor, splits: int) -> torch.Tensor:
    """Where a split reduction's programs write: with one split the gradient itself, otherwise
    a (splits, *grad.shape) buffer of fp32 partials (fp64 for fp64) that _sum_partials adds up."""
    if splits == 1:
        return grad
    acc_dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return new_buffer([splits, *grad.shape], grad, dtype=acc_dtype)


def _split_strides(out: torch.Tensor, splits: int) -> tuple[int, ...]:
    """The strides a reduction kernel writes through: split first, then the gradient's dims."""
    return _strides(out) if splits > 1 else (0, *_strides(out))


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


# ---- operators -----------------------------------------------------------------------------


@torch.library.custom_op("cnnkernels_triton::conv2d", mutates_args=())
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
           padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """Same contract as torch.ops.cnnkernels.conv2d (csrc/ops.cpp)."""
    return conv2d_forward(input, weight, bias, stride, padding, dilation, groups)


@torch.library.custom_op("cnnkernels_triton::conv2d_backward_input", mutates_args=())
def conv2d_backward_input_op(grad_output: torch.Tensor, weight: torch.Tensor, input_size: list[int],
                             stride: list[int], padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    return conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups)


@torch.library.custom_op("cnnkernels_triton::conv2d_backward_weight", mutates_args=())
def conv2d_backward_weight_op(grad_output: torch.Tensor, input: torch.Tensor, weight_size: list[int],
                              stride: list[int], padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    return conv2d_backward_weight(grad_output, input, weight_size, stride, padding, dilation, groups)


@torch.library.custom_op("cnnkernels_triton::conv2d_backward_bias", mutates_args=())
def conv2d_backward_bias_op(grad_output: torch.Tensor) -> torch.Tensor:
    return conv2d_backward_bias(grad_output)
