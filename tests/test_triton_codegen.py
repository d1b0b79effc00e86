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


@pytest.mark.parametrize("kernel", ["_conv2d_forward_kernel", "_conv2d_backward_input_kernel"])
@pytest.mark.parametrize("size", ["1x1", "3x3"])
def test_operands_move_in_16_byte_asynchronous_copies(probe, size, kernel):
    """bf16 channels_last: both GEMM operands reach shared memory as 16-byte cp.async, none as
    loads through registers; also for a 1x1 kernel's weight, whose strides torch gives as
    (C, 1, 1, 1) (the 1s, were they passed on, would make them 2-byte loads)."""
    loads = probe[size][kernel]
    if size == "1x1":
        assert probe[size]["weight_stride"] == [64, 1, 1, 1]
    assert loads.get("cp.async 16", 0) > 0, loads
    assert set(loads) == {"cp.async 16"}, loads
