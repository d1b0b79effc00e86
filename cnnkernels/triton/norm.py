"""Normalisation in Triton: batch norm, group norm (layer norm is G = 1), RMS norm and local
response normalisation, each with its backward.

The per-element math mirrors csrc/include/cnnkernels/norm.h (Welford/Chan statistics, the
activations and their derivatives, norm_input_grad, the LRN windows), so the three backends
agree to rounding. An (N, C, *) tensor is read as (N, C, L) through strides (s_n, s_c, s_l);
the launchers first put every operand in one of the two layouts csrc/host/norm.h names,
NCHW-contiguous (C*L, L, 1) or, for a 4-D channels_last tensor, (L*C, 1, C), and outputs are
allocated in the input's layout. Statistics and sums are accumulated in fp32 (fp64 for fp64).

- Statistics (batch norm: a channel over its N*L elements; group norm: a (sample, group) over
  its (C/G)*L elements): the reduction is cut into `splits` chunks whose number and bounds
  depend only on the shape (_split). A program reduces one chunk tile by tile: each tile's
  count, mean and M2 are exact two-pass values taken in registers, merged into the program's
  running (count, mean, M2) with Chan's formula (norm.h welford_merge); the chunks' partials
  are then Chan-merged in split order by _welford_merge_kernel, which also writes save_mean,
  save_rstd and batch norm's new running statistics. Never E[x^2] - E[x]^2.
  Batch norm's chunks cut the N*L rows of a tile of channels (_channel_stats_kernel); group
  norm's cut the group's elements taken in memory order (channels inner for channels_last and
  2-D inputs, positions inner for NCHW), so a group, and layer norm's one group per row, is
  spread over many programs (the parallelism is N*G*splits, not N*G).
- One fused elementwise pass (_norm_forward_kernel) writes act((x - mean) * rstd * w + b
  (+ residual)), tiled as (N*L rows x channels) like the pooling kernels.
- Backward: dz = dy * act'(z), z recomputed from x (and residual). Batch norm: one reduction
  (_channel_grad_sums_kernel, chunked like the statistics) of sum dz and sum dz * xhat per
  channel into fp32 partials, summed in split order (grad_bias, grad_weight), then one
  elementwise pass writes grad_input = norm_input_grad(...) (and grad_residual = dz).
  Group norm: the group sums sum w*dz and sum w*dz*xhat come from a chunked reduction over the
  group's elements (_group_grad_sums_kernel), the per-channel parameter gradients from
  _channel_grad_sums_kernel reading per-(sample, group) statistics; then the same elementwise
  pass.
- RMS norm works on contiguous rows of D elements. Rows of up to ROW_MAX elements are held in
  registers (a tile of several rows): one kernel computes rstd and writes the output; backward
  one kernel writes grad_input and each program's fixed row chunk adds its rows' dy*x*rstd
  into a per-program partial of grad_weight, summed in program order afterwards. Longer rows
  loop over the row twice, and grad_weight then comes from a separate chunked column sum.
- LRN: elementwise over (rows x channels) tiles; each element sums the squares of its
  channel window (norm.h lrn_window_first/last). Backward in two passes and no atomics: the
  first writes t_c = dy_c * x_c * d_c^(-beta-1) (norm.h lrn_backward_term) to an acc buffer,
  the second gathers, for each channel j, the t_c of the channels whose windows hold j.

Every reduction's partition (splits, chunk) depends on the shape and layout only. Tiles are
tuned per kernel from the module-level lists below; the result is reproducible bit for bit
for a given configuration (autotuning picks one per problem key on a GPU; the interpreter and
CNNKERNELS_TRITON_AUTOTUNE=0 use each list's first entry).

Registered as torch.library.custom_op in the ``cnnkernels_triton`` namespace with the C++
schemas' names and arguments (csrc/ops.cpp); fake kernels and autograd are registered in
cnnkernels.ops.norm, next to the C++ operators'.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from cnnkernels._layout import is_channels_last, new_buffer
from cnnkernels.backend import triton_interpreted
from cnnkernels.triton._common import (_acc_dtype, _autotune, _cdiv, _check_device, _check_dtype, _config, _index_dtype,
                                       launch)

# ---- configurations ------------------------------------------------------------------------
# On a GPU the launchers autotune over these lists (keyed by the problem's sizes and its channel
# stride, so channels_last and NCHW tune apart); in the interpreter, or with
# CNNKERNELS_TRITON_AUTOTUNE=0, they use each list's first entry (large tiles: the interpreter's
# cost is per program). A launcher's `config=i` picks entry i (modulo the length) of every list
# it uses, so `for i in range(NUM_CONFIGS)` runs every entry of every list.

# (rows x channels) tiles of the elementwise kernels (forward apply, backward apply, LRN).
TILE_CONFIGS = [
    _config(BLOCK_M=64, BLOCK_C=32, num_warps=4, num_stages=2),   # both layouts; interpreter default
    _config(BLOCK_M=16, BLOCK_C=64, num_warps=4, num_stages=2),   # channels_last
    _config(BLOCK_M=8, BLOCK_C=128, num_warps=4, num_stages=2),   # channels_last, many channels
    _config(BLOCK_M=32, BLOCK_C=256, num_warps=8, num_stages=2),  # channels_last / (N, C), wide
    _config(BLOCK_M=256, BLOCK_C=4, num_warps=4, num_stages=2),   # NCHW, a few planes
    _config(BLOCK_M=1024, BLOCK_C=1, num_warps=8, num_stages=2),  # NCHW, one large plane
]
# (rows x channels) tiles of the per-channel reductions (batch norm statistics, the per-channel
# gradient sums). A program loops over its chunk of rows BLOCK_M at a time.
STATS_CONFIGS = [
    _config(BLOCK_M=64, BLOCK_C=32, num_warps=4, num_stages=2),
    _config(BLOCK_M=32, BLOCK_C=64, num_warps=4, num_stages=3),   # channels_last
    _config(BLOCK_M=16, BLOCK_C=128, num_warps=4, num_stages=3),  # channels_last, many channels
    _config(BLOCK_M=256, BLOCK_C=4, num_warps=4, num_stages=3),   # NCHW
    _config(BLOCK_M=1024, BLOCK_C=1, num_warps=8, num_stages=3),  # NCHW, one plane at a time
]
# 1-D tiles over a group's elements in memory order (group norm statistics and group sums).
GROUP_CONFIGS = [
    _config(BLOCK=1024, num_warps=4, num_stages=2),
    _config(BLOCK=512, num_warps=4, num_stages=3),
    _config(BLOCK=2048, num_warps=8, num_stages=3),
    _config(BLOCK=4096, num_warps=8, num_stages=2),
]
# RMS norm: ROW_TILE elements per tile, i.e. ceil(ROW_TILE / BLOCK_D) rows of BLOCK_D
# (the row's length rounded up to a power of two, or ROW_LOOP_BLOCK for long rows).
ROW_CONFIGS = [
    _config(ROW_TILE=4096, num_warps=4, num_stages=2),
    _config(ROW_TILE=1024, num_warps=4, num_stages=2),
    _config(ROW_TILE=2048, num_warps=4, num_stages=2),
    _config(ROW_TILE=8192, num_warps=8, num_stages=2),
]
CONFIG_LISTS = {"tile": TILE_CONFIGS, "stats": STATS_CONFIGS, "group": GROUP_CONFIGS, "row": ROW_CONFIGS}
NUM_CONFIGS = max(len(v) for v in CONFIG_LISTS.values())

# Reduction partition, from the shape only: aim for TARGET_PROGRAMS programs, give each at least
# MIN_ELEMENTS_PER_SPLIT elements; batch norm's nominal channel tile (for the count) is 32.
TARGET_PROGRAMS = 1024
# (Smaller in the interpreter, so that its small test shapes exercise split reductions too.)
MIN_ELEMENTS_PER_SPLIT = 256 if triton_interpreted() else 8192
NOMINAL_BLOCK_C = 32
# RMS norm rows up to ROW_MAX elements live in registers; longer rows are looped over.
ROW_MAX = 8192
ROW_LOOP_BLOCK = 1024
_MERGE_BLOCK = 128

_ACTIVATIONS = {"none": 0, "relu": 1, "silu": 2, "gelu": 3}


# ---- shared device helpers (norm.h) --------------------------------------------------------


@triton.jit
def _activation(z, ACT: tl.constexpr):
    """norm.h activation_forward."""
    if ACT == 1:
        out = tl.where(z > 0, z, 0.0).to(z.dtype)
    elif ACT == 2:
        out = z * (1.0 / (1.0 + tl.exp(-z)))
    elif ACT == 3:
        out = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    else:
        out = z
    return out


@triton.jit
def _activation_grad(dy, z, ACT: tl.constexpr):
    """norm.h activation_backward: dy * act'(z), ReLU as a select."""
    if ACT == 1:
        dz = tl.where(z > 0, dy, 0.0).to(z.dtype)
    elif ACT == 2:
        s = 1.0 / (1.0 + tl.exp(-z))
        dz = dy * (s * (1.0 + z * (1.0 - s)))
    elif ACT == 3:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        dz = dy * (cdf + z * pdf)
    else:
        dz = dy
    return dz


@triton.jit
def _rows(m, L, s_n, s_l):
    """Flat row index m over N*L -> (n as int64, the row's offset n*s_n + l*s_l)."""
    n = (m // L).to(tl.int64)
    l = (m % L).to(tl.int64)
    return n, n * s_n + l * s_l


@triton.jit
def _chan(pid, C, s_c, BLOCK_C: tl.constexpr):
    """Channels [pid*BLOCK_C, ...) -> (c, c < C, the channels' offsets c*s_c as int64)."""
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    return c, c < C, c.to(tl.int64) * s_c


@triton.jit
def _cross(pix, m_ok, c_off, c_ok):
    """(offsets, mask) of the (rows x columns) tile of row offsets pix and column offsets c_off."""
    return pix[:, None] + c_off[None, :], m_ok[:, None] & c_ok[None, :]


@triton.jit
def _tile(M, C, L, s_n, s_c, s_l, INDEX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (pid0, pid1)'s tile of rows [pid0*BLOCK_M, ...) of N*L x channels
    [pid1*BLOCK_C, ...): (off, ok, pix, m_ok, n, c, c_ok)."""
    m = tl.program_id(0).to(INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)
    c, c_ok, c_off = _chan(tl.program_id(1), C, s_c, BLOCK_C)
    m_ok = m < M
    n, pix = _rows(m, L, s_n, s_l)
    off, ok = _cross(pix, m_ok, c_off, c_ok)
    return off, ok, pix, m_ok, n, c, c_ok


@triton.jit
def _chunk(split, chunk, total, INDEX: tl.constexpr):
    """[begin, end) of chunk `split` of a reduction over `total` steps."""
    begin = tl.cast(split, INDEX) * chunk
    return begin, tl.minimum(begin + chunk, tl.cast(total, INDEX))


@triton.jit
def _param(p, c, c_ok, ACC: tl.constexpr):
    """Per-channel values p[c] as a (1, BLOCK_C) row in ACC."""
    return tl.load(p + c, mask=c_ok, other=0.0).to(ACC)[None, :]


@triton.jit
def _stat_index(n, c, G, Cg, PER_SAMPLE: tl.constexpr):
    """Index of element (n, c)'s statistics: per (sample, group) for group norm (a
    (BLOCK_M, BLOCK_C) gather), per channel for batch norm (a (1, BLOCK_C) vector)."""
    if PER_SAMPLE:
        s = n[:, None] * G + (c // Cg)[None, :]
    else:
        s = c[None, :]
    return s


@triton.jit
def _load_stats(mean, rstd, n, c, ok, c_ok, G, Cg, PER_SAMPLE: tl.constexpr):
    """(index, mask, mean, rstd) of a tile's statistics (_stat_index)."""
    st = _stat_index(n, c, G, Cg, PER_SAMPLE)
    st_ok = ok if PER_SAMPLE else c_ok[None, :]
    return st, st_ok, tl.load(mean + st, mask=st_ok, other=0.0), tl.load(rstd + st, mask=st_ok, other=0.0)


# Float arguments (eps, momentum, 1/count, LRN's alpha/size, beta and k) are annotated
# tl.float64: Triton passes an unannotated Python float as fp32, which rounds them for the fp64
# kernels (on an H100, 2026-11-22: fp64 gradients of the training-mode norms off by 5e-8, LRN
# outputs likewise). Each kernel takes them in its accumulation type through _arg.
@triton.jit
def _arg(v, ACC: tl.constexpr):
    """Float argument v as a scalar of type ACC. (tl.full, not tl.cast: in the interpreter v is a
    Python float, which tl.cast, or returning it from a jit function, would round through fp32.)"""
    return tl.full((), v, ACC)


@triton.jit
def _rstd(var, eps):
    """norm.h rstd_from_variance, with a correctly rounded square root."""
    if var.dtype == tl.float64:
        root = tl.sqrt(var + _arg(eps, var.dtype))
    else:
        root = tl.sqrt_rn(var + _arg(eps, var.dtype))
    return 1.0 / root


@triton.jit
def _chan_merge(cnt_a, mean_a, m2_a, cnt_b, mean_b, m2_b):
    """norm.h welford_merge of set a (cnt_a may be 0) with a non-empty set b."""
    tot = cnt_a + cnt_b
    delta = mean_b - mean_a
    fb = cnt_b / tot
    return mean_a + delta * fb, m2_a + m2_b + delta * delta * cnt_a * fb


@triton.jit
def _welford_tile(v, ok, i0, begin, end, mean_a, m2_a, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Merges tile v (steps [i0, min(i0 + BLOCK, end)) along axis 0, masked by ok) into the
    running (mean, M2) of steps [begin, i0): the tile's exact two-pass values, Chan-merged."""
    cnt_b = tl.minimum(end - i0, BLOCK).to(ACC)  # the tile's steps (every earlier tile is full)
    mean_b = tl.sum(v, axis=0) / cnt_b
    d = tl.where(ok, v - mean_b, 0.0)
    m2_b = tl.sum(d * d, axis=0)
    return _chan_merge((i0 - begin).to(ACC), mean_a, m2_a, cnt_b, mean_b, m2_b)


@triton.jit
def _group(G, Cg, s_n, s_c):
    """Program (pid0, pid1) = (group (n, g), split) -> (ng, split, g, offset of the group's
    first element)."""
    ng = tl.program_id(0)
    n = ng // G
    g = ng % G
    return ng, tl.program_id(1), g, tl.cast(n, tl.int64) * s_n + tl.cast(g * Cg, tl.int64) * s_c


@triton.jit
def _group_offsets(e0, end, Cg, L, s_c, s_l, CHANNELS_INNER: tl.constexpr, FLAT: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Elements e = [e0, e0 + BLOCK) of a group (in memory order) -> (offset from the group's
    first element, channel within the group, e < end)."""
    e = e0 + tl.arange(0, BLOCK)
    if CHANNELS_INNER:
        c = e % Cg
        l = e // Cg
    else:
        c = e // L
        l = e % L
    if FLAT:
        off = e.to(tl.int64)
    else:
        off = c.to(tl.int64) * s_c + l.to(tl.int64) * s_l
    return off, c, e < end


# ---- statistics ----------------------------------------------------------------------------


@triton.jit
def _channel_stats_kernel(
    x, mean_p, m2_p, M, C, L, chunk, s_n, s_c, s_l,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial (mean, M2) of channels [pid0*BLOCK_C, ...) over rows [split*chunk, ...) of N*L."""
    c, c_ok, c_off = _chan(tl.program_id(0), C, s_c, BLOCK_C)
    split = tl.program_id(1)
    begin, end = _chunk(split, chunk, M, INDEX)
    mean_a = tl.zeros((BLOCK_C,), ACC)
    m2_a = tl.zeros((BLOCK_C,), ACC)
    for m0 in range(begin, end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        n, pix = _rows(m, L, s_n, s_l)
        off, ok = _cross(pix, m < end, c_off, c_ok)
        v = tl.load(x + off, mask=ok, other=0.0).to(ACC)
        mean_a, m2_a = _welford_tile(v, ok, m0, begin, end, mean_a, m2_a, BLOCK_M, ACC)
    out = tl.cast(split, tl.int64) * C + c
    tl.store(mean_p + out, mean_a, mask=c_ok)
    tl.store(m2_p + out, m2_a, mask=c_ok)


@triton.jit
def _group_stats_kernel(
    x, mean_p, m2_p, G, Cg, L, E, chunk, splits, s_n, s_c, s_l,
    CHANNELS_INNER: tl.constexpr, FLAT: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial (mean, M2) of group (n, g) = pid0 over its elements [split*chunk, ...)."""
    ng, split, g, start = _group(G, Cg, s_n, s_c)
    begin, end = _chunk(split, chunk, E, INDEX)
    mean_a = tl.sum(tl.zeros((BLOCK,), ACC), axis=0)
    m2_a = mean_a
    for e0 in range(begin, end, BLOCK):
        off, c, ok = _group_offsets(e0, end, Cg, L, s_c, s_l, CHANNELS_INNER, FLAT, BLOCK)
        v = tl.load(x + start + off, mask=ok, other=0.0).to(ACC)
        mean_a, m2_a = _welford_tile(v, ok, e0, begin, end, mean_a, m2_a, BLOCK, ACC)
    out = tl.cast(ng, tl.int64) * splits + split
    tl.store(mean_p + out, mean_a)
    tl.store(m2_p + out, m2_a)


@triton.jit
def _welford_merge_kernel(
    mean_p, m2_p, mean_out, rstd_out, rm, rv, new_rm, new_rv,
    num_stats, splits, total, chunk, stat_stride, split_stride, eps: tl.float64, momentum: tl.float64,
    HAS_RUNNING: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Chan-merges each statistic's partials in split order (split s holds min(chunk,
    total - s*chunk) elements); writes mean, rstd and, with HAS_RUNNING, the new running
    statistics (norm.h running_update, unbiased_variance)."""
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = j < num_stats
    src = j.to(tl.int64) * stat_stride
    mean_a = tl.load(mean_p + src, mask=ok, other=0.0)
    m2_a = tl.load(m2_p + src, mask=ok, other=0.0)
    for s in range(1, splits):
        cnt_a = (tl.cast(s, tl.int64) * chunk).to(ACC)
        cnt_b = tl.minimum(tl.cast(total, tl.int64) - tl.cast(s, tl.int64) * chunk, chunk).to(ACC)
        off = src + tl.cast(s, tl.int64) * split_stride
        mean_b = tl.load(mean_p + off, mask=ok, other=0.0)
        m2_b = tl.load(m2_p + off, mask=ok, other=0.0)
        mean_a, m2_a = _chan_merge(cnt_a, mean_a, m2_a, cnt_b, mean_b, m2_b)
    count = tl.cast(total, tl.int64).to(ACC)
    var = m2_a / count
    tl.store(mean_out + j, mean_a, mask=ok)
    tl.store(rstd_out + j, _rstd(var, eps), mask=ok)
    if HAS_RUNNING:
        r_mean = tl.load(rm + j, mask=ok, other=0.0).to(ACC)
        r_var = tl.load(rv + j, mask=ok, other=0.0).to(ACC)
        m = _arg(momentum, ACC)
        tl.store(new_rm + j, r_mean + m * (mean_a - r_mean), mask=ok)
        tl.store(new_rv + j, r_var + m * (var * count / (count - 1.0) - r_var), mask=ok)


# ---- forward -------------------------------------------------------------------------------


@triton.jit
def _norm_forward_kernel(
    x, res, w, b, mean, rstd, y, M, C, L, G, Cg, s_n, s_c, s_l,
    PER_SAMPLE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
    ACT: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y = act((x - mean) * rstd * w + b (+ residual)), rounded once to y's dtype."""
    off, ok, _, _, n, c, c_ok = _tile(M, C, L, s_n, s_c, s_l, INDEX, BLOCK_M, BLOCK_C)
    _, _, mu, r = _load_stats(mean, rstd, n, c, ok, c_ok, G, Cg, PER_SAMPLE)
    z = (tl.load(x + off, mask=ok, other=0.0).to(ACC) - mu) * r
    if HAS_W:
        z = z * _param(w, c, c_ok, ACC)
    if HAS_B:
        z = z + _param(b, c, c_ok, ACC)
    if HAS_RES:
        z = z + tl.load(res + off, mask=ok, other=0.0).to(ACC)
    tl.store(y + off, _activation(z, ACT).to(y.dtype.element_ty), mask=ok)


# ---- backward ------------------------------------------------------------------------------


@triton.jit
def _dz_xhat(dy, x, res, w_c, b_c, mu, r, off, ok,
             HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
             ACC: tl.constexpr):
    """(dz, xhat) of a tile: xhat = (x - mean) * rstd, dz = dy * act'(z), z recomputed."""
    xhat = (tl.load(x + off, mask=ok, other=0.0).to(ACC) - mu) * r
    g = tl.load(dy + off, mask=ok, other=0.0).to(ACC)
    if ACT != 0:
        z = xhat
        if HAS_W:
            z = z * w_c
        if HAS_B:
            z = z + b_c
        if HAS_RES:
            z = z + tl.load(res + off, mask=ok, other=0.0).to(ACC)
        g = _activation_grad(g, z, ACT)
    return g, xhat


@triton.jit
def _channel_grad_sums_kernel(
    dy, x, res, w, b, mean, rstd, sdz_p, sdzx_p, M, C, L, G, Cg, chunk, s_n, s_c, s_l,
    PER_SAMPLE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
    ACT: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Partial sums of dz and dz * xhat of channels [pid0*BLOCK_C, ...) over rows
    [split*chunk, ...) of N*L."""
    c, c_ok, c_off = _chan(tl.program_id(0), C, s_c, BLOCK_C)
    split = tl.program_id(1)
    begin, end = _chunk(split, chunk, M, INDEX)
    w_c = _param(w, c, c_ok, ACC) if HAS_W else 1.0
    b_c = _param(b, c, c_ok, ACC) if HAS_B else 0.0
    if not PER_SAMPLE:
        mu_c = _param(mean, c, c_ok, ACC)
        r_c = _param(rstd, c, c_ok, ACC)
    acc_dz = tl.zeros((BLOCK_M, BLOCK_C), ACC)
    acc_dzx = tl.zeros((BLOCK_M, BLOCK_C), ACC)
    for m0 in range(begin, end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        n, pix = _rows(m, L, s_n, s_l)
        off, ok = _cross(pix, m < end, c_off, c_ok)
        if PER_SAMPLE:
            st, st_ok, mu, r = _load_stats(mean, rstd, n, c, ok, c_ok, G, Cg, PER_SAMPLE)
        else:
            mu = mu_c
            r = r_c
        dz, xhat = _dz_xhat(dy, x, res, w_c, b_c, mu, r, off, ok, HAS_W, HAS_B, HAS_RES, ACT, ACC)
        acc_dz += dz
        acc_dzx += dz * xhat
    out = tl.cast(split, tl.int64) * C + c
    tl.store(sdz_p + out, tl.sum(acc_dz, axis=0), mask=c_ok)
    tl.store(sdzx_p + out, tl.sum(acc_dzx, axis=0), mask=c_ok)


@triton.jit
def _group_grad_sums_kernel(
    dy, x, w, b, mean, rstd, s1_p, s2_p, G, Cg, L, E, chunk, splits, s_n, s_c, s_l,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    CHANNELS_INNER: tl.constexpr, FLAT: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial sums of w*dz and w*dz*xhat of group (n, g) = pid0 over its elements
    [split*chunk, ...)."""
    ng, split, g, start = _group(G, Cg, s_n, s_c)
    mu = tl.load(mean + ng)
    r = tl.load(rstd + ng)
    begin, end = _chunk(split, chunk, E, INDEX)
    acc1 = tl.zeros((BLOCK,), ACC)
    acc2 = tl.zeros((BLOCK,), ACC)
    for e0 in range(begin, end, BLOCK):
        off, c, ok = _group_offsets(e0, end, Cg, L, s_c, s_l, CHANNELS_INNER, FLAT, BLOCK)
        cw = g * Cg + c
        w_c = tl.load(w + cw, mask=ok, other=0.0).to(ACC) if HAS_W else 1.0
        b_c = tl.load(b + cw, mask=ok, other=0.0).to(ACC) if HAS_B else 0.0
        dz, xhat = _dz_xhat(dy, x, x, w_c, b_c, mu, r, start + off, ok, HAS_W, HAS_B, False, ACT, ACC)
        wdz = dz * w_c
        acc1 += wdz
        acc2 += wdz * xhat
    out = tl.cast(ng, tl.int64) * splits + split
    tl.store(s1_p + out, tl.sum(acc1, axis=0))
    tl.store(s2_p + out, tl.sum(acc2, axis=0))


@triton.jit
def _sum_splits_kernel(p1, p2, out1, out2, num, splits, stat_stride, split_stride, TWO: tl.constexpr,
                       BLOCK: tl.constexpr):
    """out[j] = sum over s of p[j*stat_stride + s*split_stride], in split order (of p1 and, with
    TWO, of p2)."""
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = j < num
    src = j.to(tl.int64) * stat_stride
    a1 = tl.load(p1 + src, mask=ok, other=0.0)
    if TWO:
        a2 = tl.load(p2 + src, mask=ok, other=0.0)
    for s in range(1, splits):
        off = src + tl.cast(s, tl.int64) * split_stride
        a1 += tl.load(p1 + off, mask=ok, other=0.0)
        if TWO:
            a2 += tl.load(p2 + off, mask=ok, other=0.0)
    tl.store(out1 + j, a1, mask=ok)
    if TWO:
        tl.store(out2 + j, a2, mask=ok)


@triton.jit
def _norm_backward_kernel(
    dy, x, res, w, b, mean, rstd, s1, s2, dx, dres, inv_count: tl.float64, M, C, L, G, Cg, s_n, s_c, s_l,
    PER_SAMPLE: tl.constexpr, SUMS_PER_CHANNEL: tl.constexpr, TRAINING: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_input = norm.h norm_input_grad(w*dz, xhat, rstd, sum_dy, sum_dy_xhat, inv_count)
    (training) or rstd*w*dz (eval); grad_residual = dz. sum_dy, sum_dy_xhat are s1, s2 indexed
    like the statistics, or (SUMS_PER_CHANNEL, batch norm) w*s1[c], w*s2[c]."""
    off, ok, _, _, n, c, c_ok = _tile(M, C, L, s_n, s_c, s_l, INDEX, BLOCK_M, BLOCK_C)
    st, st_ok, mu, r = _load_stats(mean, rstd, n, c, ok, c_ok, G, Cg, PER_SAMPLE)
    w_c = _param(w, c, c_ok, ACC) if HAS_W else 1.0
    b_c = _param(b, c, c_ok, ACC) if HAS_B else 0.0
    dz, xhat = _dz_xhat(dy, x, res, w_c, b_c, mu, r, off, ok, HAS_W, HAS_B, HAS_RES, ACT, ACC)
    if TRAINING:
        sum_dy = tl.load(s1 + st, mask=st_ok, other=0.0)
        sum_dyx = tl.load(s2 + st, mask=st_ok, other=0.0)
        if SUMS_PER_CHANNEL:
            sum_dy = sum_dy * w_c
            sum_dyx = sum_dyx * w_c
        g = r * (w_c * dz - (sum_dy + xhat * sum_dyx) * _arg(inv_count, ACC))
    else:
        g = r * (w_c * dz)
    tl.store(dx + off, g.to(dx.dtype.element_ty), mask=ok)
    if HAS_RES:
        tl.store(dres + off, dz.to(dres.dtype.element_ty), mask=ok)


# ---- RMS norm ------------------------------------------------------------------------------


@triton.jit
def _row_block(r0, end, D, rstd, BLOCK_R: tl.constexpr):
    """Rows [r0, r0 + BLOCK_R) of a contiguous (rows, D) matrix -> (their offsets row*D as an
    int64 (BLOCK_R, 1) column, row < end, their rstd as a (BLOCK_R, 1) column)."""
    row = r0 + tl.arange(0, BLOCK_R)
    r_ok = row < end
    return (row.to(tl.int64) * D)[:, None], r_ok, tl.load(rstd + row, mask=r_ok, other=0.0)[:, None]


@triton.jit
def _row_mask(r_ok, dd, D):
    """Mask of the (rows x columns dd) tile."""
    return r_ok[:, None] & (dd < D)[None, :]


@triton.jit
def _rms_wdy(dy, w, base, dd, ok, D, HAS_W: tl.constexpr, ACC: tl.constexpr):
    """dy * w of the (rows x columns dd) tile at row offsets base (dy without HAS_W)."""
    wdy = tl.load(dy + base + dd[None, :], mask=ok, other=0.0).to(ACC)
    if HAS_W:
        wdy = wdy * _param(w, dd, dd < D, ACC)
    return wdy


@triton.jit
def _rms_norm_kernel(
    x, w, y, rstd, rows, D, eps: tl.float64,
    HAS_W: tl.constexpr, ONE_TILE: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, ROW_TILE: tl.constexpr,
):
    """Rows [pid*BLOCK_R, ...) of a contiguous (rows, D) matrix: rstd = 1/sqrt(mean(x^2) + eps),
    y = x * rstd * w."""
    BLOCK_R: tl.constexpr = tl.constexpr((ROW_TILE + BLOCK_D - 1) // BLOCK_D)
    row = tl.program_id(0).to(INDEX) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = row < rows
    base = (row.to(tl.int64) * D)[:, None]
    d = tl.arange(0, BLOCK_D)
    if ONE_TILE:
        ok = _row_mask(r_ok, d, D)
        v = tl.load(x + base + d[None, :], mask=ok, other=0.0).to(ACC)
        ss = tl.sum(v * v, axis=1)
    else:
        acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
        for d0 in range(0, D, BLOCK_D):
            ok = _row_mask(r_ok, d0 + d, D)
            v = tl.load(x + base + (d0 + d)[None, :], mask=ok, other=0.0).to(ACC)
            acc += v * v
        ss = tl.sum(acc, axis=1)
    r = _rstd(ss / tl.cast(D, ACC), eps)
    tl.store(rstd + row, r, mask=r_ok)
    if ONE_TILE:
        out = v * r[:, None]
        if HAS_W:
            out = out * _param(w, d, d < D, ACC)
        tl.store(y + base + d[None, :], out.to(y.dtype.element_ty), mask=ok)
    else:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + d
            ok = _row_mask(r_ok, dd, D)
            out = tl.load(x + base + dd[None, :], mask=ok, other=0.0).to(ACC) * r[:, None]
            if HAS_W:
                out = out * _param(w, dd, dd < D, ACC)
            tl.store(y + base + dd[None, :], out.to(y.dtype.element_ty), mask=ok)


@triton.jit
def _rms_norm_backward_kernel(
    dy, x, w, rstd, dx, dw_p, rows, D, chunk,
    HAS_W: tl.constexpr, ONE_TILE: tl.constexpr, INDEX: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, ROW_TILE: tl.constexpr,
):
    """Rows [pid*chunk, ...): dx = norm_input_grad(w*dy, x*rstd, rstd, 0, sum(w*dy*x*rstd), 1/D);
    with ONE_TILE and HAS_W also this program's partial of grad_weight, sum dy*x*rstd over its rows."""
    BLOCK_R: tl.constexpr = tl.constexpr((ROW_TILE + BLOCK_D - 1) // BLOCK_D)
    split = tl.program_id(0)
    begin, end = _chunk(split, chunk, rows, INDEX)
    d = tl.arange(0, BLOCK_D)
    inv_d = 1.0 / tl.cast(D, ACC)
    if ONE_TILE:
        d_ok = d < D
        w_d = _param(w, d, d_ok, ACC) if HAS_W else 1.0
        dw_acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
        for r0 in range(begin, end, BLOCK_R):
            base, r_ok, r = _row_block(r0, end, D, rstd, BLOCK_R)
            ok = r_ok[:, None] & d_ok[None, :]
            off = base + d[None, :]
            g = tl.load(dy + off, mask=ok, other=0.0).to(ACC)
            xhat = tl.load(x + off, mask=ok, other=0.0).to(ACC) * r
            wdy = g * w_d
            s = tl.sum(wdy * xhat, axis=1)[:, None]
            tl.store(dx + off, (r * (wdy - xhat * s * inv_d)).to(dx.dtype.element_ty), mask=ok)
            if HAS_W:
                dw_acc += g * xhat
        if HAS_W:
            tl.store(dw_p + tl.cast(split, tl.int64) * D + d, tl.sum(dw_acc, axis=0), mask=d_ok)
    else:
        # Long rows: one row at a time (BLOCK_R = 1 for ROW_TILE <= BLOCK_D), twice over the row.
        for r0 in range(begin, end, BLOCK_R):
            base, r_ok, r = _row_block(r0, end, D, rstd, BLOCK_R)
            acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + d
                ok = _row_mask(r_ok, dd, D)
                acc += _rms_wdy(dy, w, base, dd, ok, D, HAS_W, ACC) * tl.load(x + base + dd[None, :], mask=ok, other=0.0).to(ACC)
            s = tl.sum(acc, axis=1)[:, None] * r
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + d
                ok = _row_mask(r_ok, dd, D)
                wdy = _rms_wdy(dy, w, base, dd, ok, D, HAS_W, ACC)
                xhat = tl.load(x + base + dd[None, :], mask=ok, other=0.0).to(ACC) * r
                tl.store(dx + base + dd[None, :], (r * (wdy - xhat * s * inv_d)).to(dx.dtype.element_ty), mask=ok)


@triton.jit
def _rms_weight_grad_kernel(
    dy, x, rstd, dw_p, rows, D, chunk,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial grad_weight of columns [pid0*BLOCK_D, ...) over rows [split*chunk, ...) (long rows)."""
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    split = tl.program_id(1)
    begin, end = _chunk(split, chunk, rows, INDEX)
    acc = tl.zeros((BLOCK_R, BLOCK_D), ACC)
    for r0 in range(begin, end, BLOCK_R):
        base, r_ok, r = _row_block(r0, end, D, rstd, BLOCK_R)
        ok = r_ok[:, None] & d_ok[None, :]
        off = base + d[None, :]
        acc += tl.load(dy + off, mask=ok, other=0.0).to(ACC) * (tl.load(x + off, mask=ok, other=0.0).to(ACC) * r)
    tl.store(dw_p + tl.cast(split, tl.int64) * D + d, tl.sum(acc, axis=0), mask=d_ok)


# ---- local response normalisation ----------------------------------------------------------


@triton.jit
def _window_load(p, pix, m_ok, j, C, s_c):
    """p at rows pix, channels j (0 where j is outside [0, C) or the row is out of range)."""
    off, ok = _cross(pix, m_ok, j.to(tl.int64) * s_c, (j >= 0) & (j < C))
    return tl.load(p + off, mask=ok, other=0.0)


@triton.jit
def _lrn_denominator(x, pix, m_ok, c, C, s_c, size, alpha_over_size, k, ACC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """norm.h lrn_denominator of channels c: k + alpha/size * sum of x_j^2 over the window
    [c - size/2, c + (size-1)/2] clipped to [0, C)."""
    first = c - size // 2
    acc = tl.zeros((BLOCK_M, BLOCK_C), ACC)
    for t in range(0, size):
        v = _window_load(x, pix, m_ok, first + t, C, s_c).to(ACC)
        acc += v * v
    return _arg(k, ACC) + _arg(alpha_over_size, ACC) * acc


@triton.jit
def _lrn_tile(x, M, C, L, size, alpha_over_size, k, s_n, s_c, s_l,
              INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (pid0, pid1)'s tile (_tile) and its LRN denominators: (off, ok, pix, m_ok, c, den)."""
    off, ok, pix, m_ok, _, c, _ = _tile(M, C, L, s_n, s_c, s_l, INDEX, BLOCK_M, BLOCK_C)
    den = _lrn_denominator(x, pix, m_ok, c, C, s_c, size, alpha_over_size, k, ACC, BLOCK_M, BLOCK_C)
    return off, ok, pix, m_ok, c, den


@triton.jit
def _pow(base, e):
    """base^e for base > 0."""
    return tl.exp(tl.log(base) * e)


@triton.jit
def _lrn_kernel(
    x, y, M, C, L, size, alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64, s_n, s_c, s_l,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    off, ok, _, _, _, den = _lrn_tile(x, M, C, L, size, alpha_over_size, k, s_n, s_c, s_l,
                                      INDEX, ACC, BLOCK_M, BLOCK_C)
    v = tl.load(x + off, mask=ok, other=0.0).to(ACC)
    tl.store(y + off, (v * _pow(den, -_arg(beta, ACC))).to(y.dtype.element_ty), mask=ok)


@triton.jit
def _lrn_backward_term_kernel(
    dy, x, t, M, C, L, size, alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64, s_n, s_c, s_l,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """t_c = dy_c * x_c * d_c^(-beta-1) (norm.h lrn_backward_term), in acc_t, x's layout."""
    off, ok, _, _, _, den = _lrn_tile(x, M, C, L, size, alpha_over_size, k, s_n, s_c, s_l,
                                      INDEX, ACC, BLOCK_M, BLOCK_C)
    g = tl.load(dy + off, mask=ok, other=0.0).to(ACC)
    v = tl.load(x + off, mask=ok, other=0.0).to(ACC)
    tl.store(t + off, g * v * _pow(den, -_arg(beta, ACC) - 1.0), mask=ok)


@triton.jit
def _lrn_backward_kernel(
    dy, x, t, dx, M, C, L, size, alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64, s_n, s_c, s_l,
    INDEX: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx_j = dy_j * d_j^-beta - 2*beta*alpha/size * x_j * sum of t_c over the channels c whose
    window holds j, c in [j - (size-1)/2, j + size/2] clipped (norm.h lrn_users_first/last)."""
    off, ok, pix, m_ok, c, den = _lrn_tile(x, M, C, L, size, alpha_over_size, k, s_n, s_c, s_l,
                                           INDEX, ACC, BLOCK_M, BLOCK_C)
    first = c - (size - 1) // 2
    acc = tl.zeros((BLOCK_M, BLOCK_C), ACC)
    for u in range(0, size):
        acc += _window_load(t, pix, m_ok, first + u, C, s_c)
    g = tl.load(dy + off, mask=ok, other=0.0).to(ACC)
    v = tl.load(x + off, mask=ok, other=0.0).to(ACC)
    b = _arg(beta, ACC)
    out = g * _pow(den, -b) - 2.0 * b * _arg(alpha_over_size, ACC) * v * acc
    tl.store(dx + off, out.to(dx.dtype.element_ty), mask=ok)


# ---- launching -----------------------------------------------------------------------------

_ROWS_KEY = ["M", "C", "L", "s_c"]
_GROUP_KEY = ["G", "Cg", "L", "chunk", "s_c"]
_TUNED = {
    kernel: triton.autotune(configs, key=key)(kernel)
    for kernel, configs, key in [
        (_channel_stats_kernel, STATS_CONFIGS, _ROWS_KEY + ["chunk"]),
        (_channel_grad_sums_kernel, STATS_CONFIGS, _ROWS_KEY + ["chunk", "G"]),
        (_group_stats_kernel, GROUP_CONFIGS, _GROUP_KEY),
        (_group_grad_sums_kernel, GROUP_CONFIGS, _GROUP_KEY),
        (_norm_forward_kernel, TILE_CONFIGS, _ROWS_KEY + ["G"]),
        (_norm_backward_kernel, TILE_CONFIGS, _ROWS_KEY + ["G"]),
        (_rms_norm_kernel, ROW_CONFIGS, ["rows", "D"]),
        (_rms_norm_backward_kernel, ROW_CONFIGS, ["rows", "D", "chunk"]),
        (_lrn_kernel, TILE_CONFIGS, _ROWS_KEY + ["size"]),
        (_lrn_backward_term_kernel, TILE_CONFIGS, _ROWS_KEY + ["size"]),
        (_lrn_backward_kernel, TILE_CONFIGS, _ROWS_KEY + ["size"]),
    ]
}
_LISTS = {
    _channel_stats_kernel: STATS_CONFIGS, _channel_grad_sums_kernel: STATS_CONFIGS,
    _group_stats_kernel: GROUP_CONFIGS, _group_grad_sums_kernel: GROUP_CONFIGS,
    _norm_forward_kernel: TILE_CONFIGS, _norm_backward_kernel: TILE_CONFIGS,
    _rms_norm_kernel: ROW_CONFIGS, _rms_norm_backward_kernel: ROW_CONFIGS,
    _lrn_kernel: TILE_CONFIGS, _lrn_backward_term_kernel: TILE_CONFIGS, _lrn_backward_kernel: TILE_CONFIGS,
}


def _launch(kernel, grid, args, config: Optional[int], **constexprs):
    """Runs `kernel` with entry `config` of its list, or autotuned on a GPU, or with the list's
    first entry (in the interpreter, or with autotuning switched off). `grid` maps a config's
    meta-parameters to the launch grid."""
    chosen = None
    if config is not None or not _autotune():
        configs = _LISTS[kernel]
        chosen = configs[(config or 0) % len(configs)]
    launch(kernel, grid, args, constexprs, chosen, _TUNED[kernel])


def _tiles(rows: int, channels: int):
    return lambda meta: (_cdiv(rows, meta["BLOCK_M"]), _cdiv(channels, meta["BLOCK_C"]))


def _split(length: int, programs_per_split: int, width: int = 1) -> tuple[int, int]:
    """(splits, chunk) of a reduction over `length` steps of `width` elements each (rows of a
    nominal channel tile, say), from the shape only: about TARGET_PROGRAMS programs in all,
    none with fewer than MIN_ELEMENTS_PER_SPLIT elements unless the whole reduction is smaller."""
    splits = max(1, min(_cdiv(TARGET_PROGRAMS, max(1, programs_per_split)),
                        _cdiv(length * max(1, width), MIN_ELEMENTS_PER_SPLIT)))
    chunk = _cdiv(length, splits)
    return _cdiv(length, chunk), chunk


def _check_vector(op: str, name: str, t: torch.Tensor, count: int, input: torch.Tensor) -> None:
    """`t` holds `count` values on the input's device: the kernels index it by channel, group or
    row, so a shorter one would be read past its end (the C++ operators check alike)."""
    if t.numel() != count:
        raise RuntimeError(f"{op}: expected {name} with {count} elements, got {t.numel()} (size {list(t.shape)})")
    if t.device != input.device:
        raise RuntimeError(f"{op}: expected {name} on {input.device}, got {t.device}")


class _View:
    """An (N, C, *) tensor as (N, C, L) in one of the two kernel layouts (csrc/host/norm.h)."""

    def __init__(self, op: str, input: torch.Tensor, min_dim: int = 2):
        _check_dtype(op, input)
        if input.dim() < min_dim:
            raise RuntimeError(f"{op}: expected an input with at least {min_dim} dimensions (N, C, ...), "
                               f"got {input.dim()}")
        self.op = op
        self.channels_last = is_channels_last(input)
        self.format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.N, self.C = input.shape[0], input.shape[1]
        self.L = 1
        for s in input.shape[2:]:
            self.L *= s
        self.M = self.N * self.L
        self.numel = self.M * self.C
        # (s_n, s_c, s_l) of the layout the kernels read.
        self.strides = (self.L * self.C, 1, self.C) if self.channels_last else (self.C * self.L, self.L, 1)
        self.index = _index_dtype(self.numel)
        self.acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        self.tl_acc = _acc_dtype(input.dtype)
        self.input = self.layout(input)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=self.format)

    def operand(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if t.shape != self.input.shape:
            raise RuntimeError(f"{self.op}: expected {name} of size {list(self.input.shape)}, got {list(t.shape)}")
        if t.dtype != self.input.dtype:
            raise RuntimeError(f"{self.op}: expected {name} of dtype {self.input.dtype}, got {t.dtype}")
        if t.device != self.input.device:
            raise RuntimeError(f"{self.op}: expected {name} on {self.input.device}, got {t.device}")
        return self.layout(t)

    def param(self, name: str, p: Optional[torch.Tensor], count: int) -> Optional[torch.Tensor]:
        """A parameter as a contiguous vector in its own dtype (the kernels widen it to acc_t)."""
        if p is None:
            return None
        _check_vector(self.op, name, p, count, self.input)
        _check_dtype(self.op, p)
        return p.contiguous().view(count)

    def statistics(self, name: str, t: torch.Tensor, count: int) -> torch.Tensor:
        """A saved statistic (save_mean, save_rstd) as a contiguous vector in acc_t."""
        _check_vector(self.op, name, t, count, self.input)
        return t.to(self.acc).contiguous().view(count)

    def output(self) -> torch.Tensor:
        return new_buffer(self.input.shape, self.input, memory_format=self.format)

    def acc_buffer(self, shape) -> torch.Tensor:
        return new_buffer(shape, self.input, dtype=self.acc)


def _activation_code(op: str, name: str) -> int:
    if name not in _ACTIVATIONS:
        raise RuntimeError(f"{op}: activation must be one of 'none', 'relu', 'silu', 'gelu', got '{name}'")
    return _ACTIVATIONS[name]


def _as_param_dtype(acc: torch.Tensor, param: Optional[torch.Tensor], v: _View) -> torch.Tensor:
    """host/norm.h as_param_dtype: the parameter's dtype and shape, or an empty (0,) acc tensor."""
    if param is None:
        return v.acc_buffer([0])
    return acc.to(param.dtype).view(param.shape)


def _merge_statistics(v: _View, mean_p, m2_p, num_stats, splits, total, chunk, stat_stride, split_stride, eps,
                      running=None, momentum=0.0):
    mean = v.acc_buffer([num_stats])
    rstd = v.acc_buffer([num_stats])
    rm, rv, new_rm, new_rv = running if running is not None else (mean, mean, mean, mean)
    launch(_welford_merge_kernel, (_cdiv(num_stats, _MERGE_BLOCK),),
           (mean_p, m2_p, mean, rstd, rm, rv, new_rm, new_rv, num_stats, splits, total, chunk, stat_stride,
            split_stride, eps, momentum), dict(HAS_RUNNING=running is not None, ACC=v.tl_acc, BLOCK=_MERGE_BLOCK))
    return mean, rstd


def _sum_splits(v: _View, p1, p2, num, splits, stat_stride, split_stride):
    out1, out2 = v.acc_buffer([num]), v.acc_buffer([num])
    launch(_sum_splits_kernel, (_cdiv(num, _MERGE_BLOCK),),
           (p1, p2, out1, out2, num, splits, stat_stride, split_stride), dict(TWO=True, BLOCK=_MERGE_BLOCK))
    return out1, out2


def _empty_statistics(v: _View, count: int, eps: float):
    """Statistics of empty sets: mean 0, rstd 1/sqrt(eps)."""
    return v.acc_buffer([count]).zero_(), v.acc_buffer([count]).fill_(1.0 / math.sqrt(eps))


def _channel_stats(v: _View, x, eps, running=None, momentum=0.0, config=None):
    """Per-channel batch statistics of an (N, C, L) view with N*L > 0."""
    splits, chunk = _split(v.M, _cdiv(v.C, NOMINAL_BLOCK_C), min(v.C, NOMINAL_BLOCK_C))
    mean_p, m2_p = v.acc_buffer([splits, v.C]), v.acc_buffer([splits, v.C])
    grid = lambda meta: (_cdiv(v.C, meta["BLOCK_C"]), splits)  # noqa: E731
    _launch(_channel_stats_kernel, grid, (x, mean_p, m2_p, v.M, v.C, v.L, chunk, *v.strides), config,
            INDEX=v.index, ACC=v.tl_acc)
    return _merge_statistics(v, mean_p, m2_p, v.C, splits, v.M, chunk, 1, v.C, eps, running, momentum)


def _group_layout(v: _View, Cg: int):
    """Memory order of a group's elements: channels inner for channels_last and L = 1; FLAT when
    that order is also contiguous in memory."""
    s_n, s_c, s_l = v.strides
    inner = v.channels_last or v.L == 1
    if inner:
        flat = s_c == 1 and (v.L == 1 or s_l == Cg)
    else:
        flat = s_l == 1 and (Cg == 1 or s_c == v.L)
    return inner, flat


# ---- launchers -----------------------------------------------------------------------------


def batch_norm_forward(input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                       activation, config=None):
    op = "batch_norm"
    _check_device(input)
    act = _activation_code(op, activation)
    v = _View(op, input)
    w = v.param("weight", weight, v.C)
    b = v.param("bias", bias, v.C)
    res = v.operand("residual", residual) if residual is not None else None
    rm = v.param("running_mean", running_mean, v.C)
    rv = v.param("running_var", running_var, v.C)
    if (rm is None) != (rv is None):
        raise RuntimeError(f"{op}: running_mean and running_var must both be given or both be absent")
    if not training and rm is None:
        raise RuntimeError(f"{op}: running_mean and running_var are required when training=False")
    x = v.input
    y = v.output()
    new_rm = new_rv = None
    if training:
        if rm is not None:
            new_rm, new_rv = v.acc_buffer([v.C]), v.acc_buffer([v.C])
        if v.C == 0:
            mean, rstd = v.acc_buffer([0]), v.acc_buffer([0])
        elif v.M == 0:
            mean, rstd = _empty_statistics(v, v.C, eps)
            if rm is not None:  # the update with a batch mean and variance of 0 over count 0
                new_rm.copy_(rm.to(v.acc) + momentum * (0 - rm.to(v.acc)))
                new_rv.copy_(rv.to(v.acc) + momentum * (-0.0 - rv.to(v.acc)))
        else:
            running = (rm, rv, new_rm, new_rv) if rm is not None else None
            mean, rstd = _channel_stats(v, x, eps, running, momentum, config)
    else:
        mean = rm.to(v.acc, copy=True)
        rstd = 1.0 / torch.sqrt(rv.to(v.acc) + eps)
    if v.numel > 0:
        _launch(_norm_forward_kernel, _tiles(v.M, v.C),
                (x, res if res is not None else x, w if w is not None else x, b if b is not None else x,
                 mean, rstd, y, v.M, v.C, v.L, v.C, 1, *v.strides), config,
                PER_SAMPLE=False, HAS_W=w is not None, HAS_B=b is not None, HAS_RES=res is not None,
                ACT=act, INDEX=v.index, ACC=v.tl_acc)
    if new_rm is not None:
        new_rm, new_rv = _as_param_dtype(new_rm, running_mean, v), _as_param_dtype(new_rv, running_var, v)
    else:
        new_rm, new_rv = v.acc_buffer([0]), v.acc_buffer([0])
    return y, mean, rstd, new_rm, new_rv


def batch_norm_backward(grad_output, input, weight, bias, residual, save_mean, save_rstd, training, activation,
                        config=None):
    op = "batch_norm_backward"
    _check_device(grad_output, input)
    act = _activation_code(op, activation)
    v = _View(op, input)
    dy = v.operand("grad_output", grad_output)
    w = v.param("weight", weight, v.C)
    b = v.param("bias", bias, v.C)
    res = v.operand("residual", residual) if residual is not None else None
    mean = v.statistics("save_mean", save_mean, v.C)
    rstd = v.statistics("save_rstd", save_rstd, v.C)
    x = v.input
    dx = v.output()
    dres = v.output() if res is not None else v.acc_buffer([0])
    if v.C == 0 or v.M == 0:
        sum_dz, sum_dzx = v.acc_buffer([v.C]).zero_(), v.acc_buffer([v.C]).zero_()
    else:
        splits, chunk = _split(v.M, _cdiv(v.C, NOMINAL_BLOCK_C), min(v.C, NOMINAL_BLOCK_C))
        p1, p2 = v.acc_buffer([splits, v.C]), v.acc_buffer([splits, v.C])
        grid = lambda meta: (_cdiv(v.C, meta["BLOCK_C"]), splits)  # noqa: E731
        _launch(_channel_grad_sums_kernel, grid,
                (dy, x, res if res is not None else x, w if w is not None else x, b if b is not None else x,
                 mean, rstd, p1, p2, v.M, v.C, v.L, v.C, 1, chunk, *v.strides), config,
                PER_SAMPLE=False, HAS_W=w is not None, HAS_B=b is not None, HAS_RES=res is not None,
                ACT=act, INDEX=v.index, ACC=v.tl_acc)
        sum_dz, sum_dzx = _sum_splits(v, p1, p2, v.C, splits, 1, v.C)
        _launch(_norm_backward_kernel, _tiles(v.M, v.C),
                (dy, x, res if res is not None else x, w if w is not None else x, b if b is not None else x,
                 mean, rstd, sum_dz, sum_dzx, dx, dres if res is not None else dx, 1.0 / v.M,
                 v.M, v.C, v.L, v.C, 1, *v.strides), config,
                PER_SAMPLE=False, SUMS_PER_CHANNEL=True, TRAINING=bool(training), HAS_W=w is not None,
                HAS_B=b is not None, HAS_RES=res is not None, ACT=act, INDEX=v.index, ACC=v.tl_acc)
    return dx, _as_param_dtype(sum_dzx, weight, v), _as_param_dtype(sum_dz, bias, v), dres


def _check_groups(op: str, v: _View, num_groups: int) -> int:
    if num_groups <= 0:
        raise RuntimeError(f"{op}: expected num_groups to be positive, got {num_groups}")
    if v.C % num_groups != 0:
        raise RuntimeError(f"{op}: expected the number of channels ({v.C}) to be divisible by num_groups "
                           f"({num_groups})")
    return v.C // num_groups


def group_norm_forward(input, weight, bias, num_groups, eps, activation, config=None):
    op = "group_norm"
    _check_device(input)
    act = _activation_code(op, activation)
    v = _View(op, input)
    G = num_groups
    Cg = _check_groups(op, v, G)
    w = v.param("weight", weight, v.C)
    b = v.param("bias", bias, v.C)
    x = v.input
    y = v.output()
    E = Cg * v.L
    if v.N * G == 0:
        mean, rstd = v.acc_buffer([0]), v.acc_buffer([0])
    elif E == 0:
        mean, rstd = _empty_statistics(v, v.N * G, eps)
    else:
        splits, chunk = _split(E, v.N * G)
        mean_p, m2_p = v.acc_buffer([v.N * G, splits]), v.acc_buffer([v.N * G, splits])
        inner, flat = _group_layout(v, Cg)
        _launch(_group_stats_kernel, lambda meta: (v.N * G, splits),
                (x, mean_p, m2_p, G, Cg, v.L, E, chunk, splits, *v.strides), config,
                CHANNELS_INNER=inner, FLAT=flat, INDEX=_index_dtype(v.numel, E + chunk), ACC=v.tl_acc)
        mean, rstd = _merge_statistics(v, mean_p, m2_p, v.N * G, splits, E, chunk, splits, 1, eps)
    if v.numel > 0:
        _launch(_norm_forward_kernel, _tiles(v.M, v.C),
                (x, x, w if w is not None else x, b if b is not None else x, mean, rstd, y,
                 v.M, v.C, v.L, G, Cg, *v.strides), config,
                PER_SAMPLE=True, HAS_W=w is not None, HAS_B=b is not None, HAS_RES=False,
                ACT=act, INDEX=v.index, ACC=v.tl_acc)
    return y, mean.view(v.N, G), rstd.view(v.N, G)


def group_norm_backward(grad_output, input, weight, bias, save_mean, save_rstd, num_groups, activation,
                        config=None):
    op = "group_norm_backward"
    _check_device(grad_output, input)
    act = _activation_code(op, activation)
    v = _View(op, input)
    G = num_groups
    Cg = _check_groups(op, v, G)
    dy = v.operand("grad_output", grad_output)
    w = v.param("weight", weight, v.C)
    b = v.param("bias", bias, v.C)
    mean = v.statistics("save_mean", save_mean, v.N * G)
    rstd = v.statistics("save_rstd", save_rstd, v.N * G)
    x = v.input
    dx = v.output()
    E = Cg * v.L
    wb = (w if w is not None else x, b if b is not None else x)
    flags = dict(HAS_W=w is not None, HAS_B=b is not None, ACT=act, ACC=v.tl_acc)
    if v.numel == 0:
        sum_dz, sum_dzx = v.acc_buffer([v.C]).zero_(), v.acc_buffer([v.C]).zero_()
        return dx, _as_param_dtype(sum_dzx, weight, v), _as_param_dtype(sum_dz, bias, v)
    # Group sums of w*dz and w*dz*xhat, per (n, g).
    splits, chunk = _split(E, v.N * G)
    p1, p2 = v.acc_buffer([v.N * G, splits]), v.acc_buffer([v.N * G, splits])
    inner, flat = _group_layout(v, Cg)
    _launch(_group_grad_sums_kernel, lambda meta: (v.N * G, splits),
            (dy, x, *wb, mean, rstd, p1, p2, G, Cg, v.L, E, chunk, splits, *v.strides), config,
            CHANNELS_INNER=inner, FLAT=flat, INDEX=_index_dtype(v.numel, E + chunk), **flags)
    s1, s2 = _sum_splits(v, p1, p2, v.N * G, splits, splits, 1)
    # Per-channel sums of dz and dz*xhat over N*L (the parameter gradients).
    if w is not None or b is not None:
        splits, chunk = _split(v.M, _cdiv(v.C, NOMINAL_BLOCK_C), min(v.C, NOMINAL_BLOCK_C))
        q1, q2 = v.acc_buffer([splits, v.C]), v.acc_buffer([splits, v.C])
        grid = lambda meta: (_cdiv(v.C, meta["BLOCK_C"]), splits)  # noqa: E731
        _launch(_channel_grad_sums_kernel, grid,
                (dy, x, x, *wb, mean, rstd, q1, q2, v.M, v.C, v.L, G, Cg, chunk, *v.strides), config,
                PER_SAMPLE=True, HAS_RES=False, INDEX=v.index, **flags)
        sum_dz, sum_dzx = _sum_splits(v, q1, q2, v.C, splits, 1, v.C)
    else:
        sum_dz = sum_dzx = None
    _launch(_norm_backward_kernel, _tiles(v.M, v.C),
            (dy, x, x, *wb, mean, rstd, s1, s2, dx, dx, 1.0 / E, v.M, v.C, v.L, G, Cg, *v.strides), config,
            PER_SAMPLE=True, SUMS_PER_CHANNEL=False, TRAINING=True, HAS_RES=False, INDEX=v.index, **flags)
    return (dx, _as_param_dtype(sum_dzx, weight, v) if w is not None else v.acc_buffer([0]),
            _as_param_dtype(sum_dz, bias, v) if b is not None else v.acc_buffer([0]))


def _rms_rows(op: str, input: torch.Tensor, normalized_ndim: int):
    """(rows, D): D the product of the last normalized_ndim sizes, rows that of the others."""
    _check_dtype(op, input)
    if normalized_ndim < 0 or normalized_ndim > input.dim():
        raise RuntimeError(f"{op}: expected normalized_ndim in [0, {input.dim()}], got {normalized_ndim}")
    split = input.dim() - normalized_ndim
    return math.prod(input.shape[:split]), math.prod(input.shape[split:])


def _rms_blocks(D: int):
    one_tile = D <= ROW_MAX
    return one_tile, (triton.next_power_of_2(max(D, 1)) if one_tile else ROW_LOOP_BLOCK)


def _rms_output_format(input: torch.Tensor):
    return torch.channels_last if is_channels_last(input) else torch.contiguous_format


def rms_norm_forward(input, weight, normalized_ndim, eps, config=None):
    op = "rms_norm"
    _check_device(input)
    rows, D = _rms_rows(op, input, normalized_ndim)
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    if weight is not None:
        _check_vector(op, "weight", weight, D, input)
        _check_dtype(op, weight)
        weight = weight.contiguous().view(D)
    x = input.contiguous()
    y = new_buffer(x.shape, x)
    rstd = new_buffer([rows], x, dtype=acc)
    if rows > 0 and D == 0:
        rstd.fill_(1.0 / math.sqrt(eps))
    if rows * D > 0:
        one_tile, block_d = _rms_blocks(D)
        grid = lambda meta: (_cdiv(rows, _cdiv(meta["ROW_TILE"], block_d)),)  # noqa: E731
        _launch(_rms_norm_kernel, grid, (x, weight if weight is not None else x, y, rstd, rows, D, eps), config,
                HAS_W=weight is not None, ONE_TILE=one_tile, INDEX=_index_dtype(x.numel()), ACC=_acc_dtype(x.dtype),
                BLOCK_D=block_d)
    fmt = _rms_output_format(input)
    if fmt != torch.contiguous_format:
        out = new_buffer(x.shape, x, memory_format=fmt)
        out.copy_(y)
        y = out
    return y, rstd


def rms_norm_backward(grad_output, input, weight, save_rstd, normalized_ndim, config=None):
    op = "rms_norm_backward"
    _check_device(grad_output, input)
    rows, D = _rms_rows(op, input, normalized_ndim)
    if grad_output.shape != input.shape:
        raise RuntimeError(f"{op}: expected grad_output of size {list(input.shape)}, got {list(grad_output.shape)}")
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    w = None
    if weight is not None:
        _check_vector(op, "weight", weight, D, input)
        w = weight.contiguous().view(D)
    _check_vector(op, "save_rstd", save_rstd, rows, input)
    x = input.contiguous()
    dy = grad_output.contiguous()
    rstd = save_rstd.to(acc).contiguous().view(-1)
    dx = new_buffer(x.shape, x)
    dw = new_buffer([D], x, dtype=acc) if w is not None else new_buffer([0], x, dtype=acc)
    if rows * D == 0:
        dw.zero_()
    else:
        one_tile, block_d = _rms_blocks(D)
        # Chunks of rows (from the shape only); grad_weight's partials are per chunk.
        splits, chunk = _split(rows, 1, D)
        fused = one_tile and w is not None
        dw_p = new_buffer([splits, D], x, dtype=acc) if fused else dx
        _launch(_rms_norm_backward_kernel, lambda meta: (splits,),
                (dy, x, w if w is not None else x, rstd, dx, dw_p, rows, D, chunk), config,
                HAS_W=w is not None, ONE_TILE=one_tile, INDEX=_index_dtype(x.numel()), ACC=_acc_dtype(x.dtype),
                BLOCK_D=block_d)
        if w is not None and not one_tile:
            splits, chunk = _split(rows, _cdiv(D, ROW_LOOP_BLOCK), ROW_LOOP_BLOCK)
            dw_p = new_buffer([splits, D], x, dtype=acc)
            launch(_rms_weight_grad_kernel, (_cdiv(D, ROW_LOOP_BLOCK), splits), (dy, x, rstd, dw_p, rows, D, chunk),
                   dict(INDEX=_index_dtype(x.numel()), ACC=_acc_dtype(x.dtype), BLOCK_R=4, BLOCK_D=ROW_LOOP_BLOCK))
        if w is not None:
            dw = _sum_rows(dw_p)
    fmt = _rms_output_format(input)
    if fmt != torch.contiguous_format:
        out = new_buffer(x.shape, x, memory_format=fmt)
        out.copy_(dx)
        dx = out
    if weight is None:
        return dx, dw
    return dx, dw.to(weight.dtype).view(weight.shape)


def _sum_rows(partial: torch.Tensor) -> torch.Tensor:
    """The (splits, D) partials summed over splits, in split order."""
    splits, num = partial.shape
    out = new_buffer([num], partial)
    launch(_sum_splits_kernel, (_cdiv(num, _MERGE_BLOCK),), (partial, partial, out, out, num, splits, 1, num),
           dict(TWO=False, BLOCK=_MERGE_BLOCK))
    return out


def _lrn_view(op: str, input: torch.Tensor, size: int):
    v = _View(op, input, min_dim=3)
    if size <= 0:
        raise RuntimeError(f"{op}: expected size to be positive, got {size}")
    return v


def local_response_norm_forward(input, size, alpha, beta, k, config=None):
    op = "local_response_norm"
    _check_device(input)
    v = _lrn_view(op, input, size)
    y = v.output()
    if v.numel > 0:
        _launch(_lrn_kernel, _tiles(v.M, v.C), (v.input, y, v.M, v.C, v.L, size, alpha / size, beta, k, *v.strides),
                config, INDEX=v.index, ACC=v.tl_acc)
    return y


def local_response_norm_backward(grad_output, input, size, alpha, beta, k, config=None):
    op = "local_response_norm_backward"
    _check_device(grad_output, input)
    v = _lrn_view(op, input, size)
    dy = v.operand("grad_output", grad_output)
    dx = v.output()
    if v.numel > 0:
        t = new_buffer(v.input.shape, v.input, dtype=v.acc, memory_format=v.format)
        args = (v.M, v.C, v.L, size, alpha / size, beta, k, *v.strides)
        _launch(_lrn_backward_term_kernel, _tiles(v.M, v.C), (dy, v.input, t, *args), config,
                INDEX=v.index, ACC=v.tl_acc)
        _launch(_lrn_backward_kernel, _tiles(v.M, v.C), (dy, v.input, t, dx, *args), config,
                INDEX=v.index, ACC=v.tl_acc)
    return dx


# ---- operators -----------------------------------------------------------------------------
# Same contracts as the torch.ops.cnnkernels normalisation operators (csrc/ops.cpp).


@torch.library.custom_op("cnnkernels_triton::batch_norm", mutates_args=())
def batch_norm(input: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               residual: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
               running_var: Optional[torch.Tensor], training: bool, momentum: float, eps: float,
               activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch_norm_forward(input, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                              activation)


@torch.library.custom_op("cnnkernels_triton::batch_norm_backward", mutates_args=())
def batch_norm_backward_op(grad_output: torch.Tensor, input: torch.Tensor, weight: Optional[torch.Tensor],
                           bias: Optional[torch.Tensor], residual: Optional[torch.Tensor], save_mean: torch.Tensor,
                           save_rstd: torch.Tensor, training: bool,
                           activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch_norm_backward(grad_output, input, weight, bias, residual, save_mean, save_rstd, training, activation)


@torch.library.custom_op("cnnkernels_triton::group_norm", mutates_args=())
def group_norm(input: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], num_groups: int,
               eps: float, activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return group_norm_forward(input, weight, bias, num_groups, eps, activation)


@torch.library.custom_op("cnnkernels_triton::group_norm_backward", mutates_args=())
def group_norm_backward_op(grad_output: torch.Tensor, input: torch.Tensor, weight: Optional[torch.Tensor],
                           bias: Optional[torch.Tensor], save_mean: torch.Tensor, save_rstd: torch.Tensor,
                           num_groups: int, activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return group_norm_backward(grad_output, input, weight, bias, save_mean, save_rstd, num_groups, activation)


@torch.library.custom_op("cnnkernels_triton::rms_norm", mutates_args=())
def rms_norm(input: torch.Tensor, weight: Optional[torch.Tensor], normalized_ndim: int,
             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_forward(input, weight, normalized_ndim, eps)


@torch.library.custom_op("cnnkernels_triton::rms_norm_backward", mutates_args=())
def rms_norm_backward_op(grad_output: torch.Tensor, input: torch.Tensor, weight: Optional[torch.Tensor],
                         save_rstd: torch.Tensor, normalized_ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_backward(grad_output, input, weight, save_rstd, normalized_ndim)


@torch.library.custom_op("cnnkernels_triton::local_response_norm", mutates_args=())
def local_response_norm(input: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return local_response_norm_forward(input, size, alpha, beta, k)


@torch.library.custom_op("cnnkernels_triton::local_response_norm_backward", mutates_args=())
def local_response_norm_backward_op(grad_output: torch.Tensor, input: torch.Tensor, size: int, alpha: float,
                                    beta: float, k: float) -> torch.Tensor:
    return local_response_norm_backward(grad_output, input, size, alpha, beta, k)
