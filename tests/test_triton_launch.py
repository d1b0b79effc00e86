"""The direct launch of cnnkernels.triton._common.launch hands Triton's launcher exactly what
Triton's own launch path hands it, for the installed Triton (tests/triton_launch_probe.py
compiles for sm_90 in a fresh process and records every launch; no GPU needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_probe


@pytest.fixture(scope="module")
def probe():
    return run_probe(Path(__file__).with_name("triton_launch_probe.py"))


def _by_call(launches):
    calls = {}
    for launch in launches:
        calls.setdefault(launch["call"], []).append(launch)
    return calls


def test_repeated_launches_go_direct_with_the_same_arguments(probe):
    calls = {name: launches for name, launches in _by_call(probe["launches"]).items()
             if not name.startswith("group_norm")}
    assert set(calls) == {"conv2d explicit config", "conv2d unaligned", "conv2d_backward_bias (two untuned kernels)",
                          "max_pool2d autotuned", "batch_norm training", "conv2d pointwise autotuned"}
    for name, launches in calls.items():
        kernels = len(launches) // 3
        assert [launch["attempt"] for launch in launches] == [0] * kernels + [1] * kernels + [2] * kernels, name
        assert [launch["through_triton"] for launch in launches] == [True] * kernels + [False] * 2 * kernels, name
        for first, *direct in zip(*(launches[i * kernels:(i + 1) * kernels] for i in range(3))):
            for launch in direct:
                for field in ("kernel", "compiled", "grid", "stream", "metadata", "hooks", "args"):
                    assert launch[field] == first[field], (name, field)
    assert len(calls["conv2d_backward_bias (two untuned kernels)"]) == 6
    assert len(calls["batch_norm training"]) == 9
    # The grids are worked out from the chosen config: more than one program on some axis.
    assert calls["conv2d explicit config"][0]["grid"] == [6, 1, 1]
    assert calls["max_pool2d autotuned"][0]["grid"] == [11, 1, 1]


def test_pointwise_descriptors_get_the_block_shapes_of_the_config_they_run(probe):
    """The autotuned config (the first, in the probe) sets them through its pre_hook, on Triton's
    path and on the direct one alike (the test above compares every argument)."""
    (launch, *_) = _by_call(probe["launches"])["conv2d pointwise autotuned"]
    assert launch["kernel"] == "_pointwise_gemm_kernel"
    a, b = launch["args"][:2]
    assert a["descriptor"] == ["torch.bfloat16", [60, 64], [64, 1], [128, 64]]  # (pixels, channels): 128 x 64 tiles
    assert b["descriptor"] == ["torch.bfloat16", [32, 64], [64, 1], [128, 64]]  # the weight (K, C), read transposed
    assert launch["grid"] == [1, 1, 1]


def test_alignment_is_part_of_the_key(probe):
    calls = _by_call(probe["launches"])
    aligned, unaligned = calls["conv2d explicit config"][0], calls["conv2d unaligned"][0]
    assert aligned["args"][0]["tensor"][2] == 0 and unaligned["args"][0]["tensor"][2] != 0
    assert unaligned["compiled"] != aligned["compiled"]
    assert probe["remembered"] == 9


def test_direct_launches_take_the_grid_of_their_own_call(probe):
    """The statistics kernel of a group norm runs one program per (sample, group) and is not
    passed the batch: a direct launch that reused the grid of an earlier launch with the same
    arguments normalised only the first batch's worth of rows (on an H100, 2026-11-24)."""
    calls = _by_call(probe["launches"])
    first, again, larger = (calls[f"group_norm, {name}"] for name in ("6 rows", "6 rows again", "24 rows"))
    stats = [launches[0] for launches in (first, again, larger)]
    assert {launch["kernel"] for launch in stats} == {"_group_stats_kernel"}
    # The same scalar arguments each time (only the tensors' sizes differ): the second and third
    # launches go direct.
    assert [launch["through_triton"] for launch in stats] == [True, False, False]
    scalars = [[a for a in launch["args"] if not isinstance(a, dict)] for launch in stats]
    assert scalars[2] == scalars[0]
    assert [launch["compiled"] for launch in stats] == [stats[0]["compiled"]] * 3  # one compiled kernel
    assert [launch["grid"][0] for launch in stats] == [6, 6, 24]
