"""What the Triton conv kernels compile to for sm_90, read off their PTX (tests/triton_codegen_probe.py
compiles them in a fresh process; no GPU needed): properties of the generated code that decide
their speed and that a CPU run of the kernels cannot show."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_probe


@pytest.fixture(scope="module")
def probe():
    return run_probe(Path(__file__).with_name("triton_codegen_probe.py"))


KERNELS = ["_conv2d_forward_kernel", "_conv2d_backward_input_kernel", "_conv2d_backward_weight_kernel"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", ["1x1", "3x3", "3x3/2"])
def test_operands_move_in_16_byte_asynchronous_copies(probe, size, kernel):
    """bf16 channels_last: both GEMM operands reach shared memory as 16-byte cp.async, none as
    loads through registers; also for a 1x1 kernel's weight, whose strides torch gives as
    (C, 1, 1, 1) (the 1s, were they passed on, would make them 2-byte loads)."""
    loads = probe[size]["loads"][kernel]
    if size == "1x1":
        assert probe[size]["weight_stride"] == [64, 1, 1, 1]
    assert loads.get("cp.async 16", 0) > 0, loads
    assert set(loads) == {"cp.async 16"}, loads


# How many of each kernel's two GEMM operands arrive as 16-byte cp.async when every tensor of the
# probe's problems (bf16, 64 -> 128 channels, 14x14) is NCHW: the weight always (a 1x1 kernel's is
# channel-contiguous in NCHW too; the others are copied), an activation where the kernel reads
# each element at least COPY_MIN_READS times and the launcher copies it (3x3 stride 1: nine
# reads; grad_output at stride 2: nine), not where it reads it once or twice (1x1: once; the
# stride-2 3x3's input: twice).
NCHW_ASYNC_OPERANDS = {
    "1x1": {"_conv2d_forward_kernel": 1, "_conv2d_backward_input_kernel": 1, "_conv2d_backward_weight_kernel": 0},
    "3x3": {"_conv2d_forward_kernel": 2, "_conv2d_backward_input_kernel": 2, "_conv2d_backward_weight_kernel": 2},
    "3x3/2": {"_conv2d_forward_kernel": 1, "_conv2d_backward_input_kernel": 2, "_conv2d_backward_weight_kernel": 1},
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", ["1x1", "3x3", "3x3/2"])
def test_nchw_operands_read_often_move_in_16_byte_asynchronous_copies(probe, size, kernel):
    """bf16, every tensor NCHW: the operands the launchers hand over as channels_last copies
    (_channels_innermost) arrive as 16-byte cp.async; an activation they leave NCHW, as 2-byte
    loads through registers."""
    loads = probe[size]["nchw_loads"][kernel]
    copied = NCHW_ASYNC_OPERANDS[size][kernel]
    assert set(loads) <= {"cp.async 16", "ld.global.b16"}, loads
    assert ("cp.async 16" in loads) == (copied > 0), loads
    assert ("ld.global.b16" in loads) == (copied < 2), loads


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", ["1x1", "3x3", "3x3/2"])
def test_main_loops_do_not_divide(probe, size, kernel):
    """The tap and channel block of an iteration (forward, backward-input) and the pixels'
    (n, p, q) (backward-weight) are carried from one iteration to the next, not divided out of
    an index: every thread would pay about 20 instructions per division per iteration, in loops
    of 120-270 (sm_90 SASS, 8 warps sharing 4 schedulers against a 512-cycle tensor-core step)."""
    assert probe[size]["loop_divisions"][kernel] == 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("size", ["1x1", "3x3", "3x3/2"])
def test_register_capped_tiles_fit_two_programs_per_sm_without_spilling(probe, size, kernel):
    """bf16 channels_last, the 8-warp 128x128 tiles with the register cap: ptxas keeps them within
    128 registers per thread (two 256-thread programs in an SM's 64K registers) and spills
    nothing. Uncapped, the forward takes 133 on 3x3 layers (backward-weight took 150-160 before
    its masks moved onto the coordinates; now 122-128)."""
    use = probe[size]["capped"][kernel]
    assert use["maxnreg"] == 128
    assert use["registers"] <= 128 and use["spill_bytes"] == 0, use


@pytest.mark.parametrize("kernel", ["_conv2d_forward_kernel", "_conv2d_backward_weight_kernel"])
def test_few_channel_loops_neither_divide_nor_spill(probe, kernel):
    """An RGB stem (bf16 channels_last, 3 channels, 7x7 stride 2), whose forward and
    backward-weight tiles run over taps and channels together: splitting a reduction index into
    (tap, channel) is multiplications by constants (the channel count is a compile-time one),
    and each element's bounds check one compare per coordinate, so the 8-warp tiles fit their
    registers (backward-weight reducing over 32 pixels a step, half the usual). With runtime
    divisions the forward's loop divided 66 times and spilled; the backward-weight kernel
    spilled 132 bytes, and 8 in Triton 3.6 at 64 pixels a step."""
    stem = probe["stem"][kernel]
    assert stem["loop_divisions"] == 0 and stem["spill_bytes"] == 0, stem


def test_64_bit_few_channel_kernels_compile(probe):
    """The stem's three kernels with 64-bit offsets compile for sm_90, and their loops do not
    divide either. The interpreter runs the kernels as Python, so only a compile shows what
    Triton makes of them: a helper that returned from inside a constexpr `if` failed here."""
    stem = probe["stem 64-bit"]
    assert stem["errors"] == {}, stem["errors"]
    assert sorted(stem["loop_divisions"]) == sorted(KERNELS)
    assert set(stem["loop_divisions"].values()) == {0}, stem["loop_divisions"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_pool_backward_loops_do_not_divide(probe, layout):
    """The max-pooling backward finds the outputs an element meets through its taps by stepping,
    not by a division per tap: a kernel that moves a few bytes per element has few
    instructions per element to spend."""
    assert probe[f"max_pool2d_backward {layout}"]["loop_divisions"] == 0


@pytest.mark.parametrize("operator", ["forward", "backward_input", "backward_weight"])
@pytest.mark.parametrize("config", ["pointwise", "pointwise capped"])
def test_pointwise_kernels_fetch_whole_tiles(probe, config, operator):
    """A bf16 channels_last 1x1 layer, on tensor descriptors: every operand tile comes from global
    memory through the tensor memory accelerator, one instruction a tile (no per-thread loads or
    cp.async), into wgmma; the 8-warp 128x128 tiles take 90-96 registers and spill nothing, so
    two programs share an SM with or without the cap (the pointer kernels take 124-133)."""
    use = probe[config][operator]
    assert use["kernel"] == ("_pointwise_weight_kernel" if operator == "backward_weight" else "_pointwise_gemm_kernel")
    assert set(use["loads"]) == {"tensor tile"}, use
    assert use["wgmma"] > 0
    assert use["registers"] <= 128 and use["spill_bytes"] == 0, use
