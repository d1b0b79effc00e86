"""The benchmark scripts' case selection (benchmarks/harness.py plan): which layers, batches and
dtypes a run measures. The scripts themselves time kernels and need a GPU to mean anything; what
they choose to run is checked here, on the GPU suites' tables."""
import argparse
import json

import pytest

from benchmarks import bench_conv, harness

GPU_NETS, GPU_QUICK, GPU_DEFAULTS = bench_conv.SUITES["cuda"]


def _plan(*argv):
    args = harness.add_common_args(argparse.ArgumentParser()).parse_args(list(argv))
    return harness.plan(args, bench_conv.Layer, GPU_NETS, GPU_QUICK, GPU_DEFAULTS)


def test_default_plan_is_every_net_at_the_device_defaults():
    layers, batches, dtypes = _plan()
    assert harness.net_names(layers) == sorted(GPU_NETS)
    assert (batches, dtypes) == (GPU_DEFAULTS["batch"], GPU_DEFAULTS["dtypes"])


def test_nets_keeps_only_the_named_nets():
    layers, _, _ = _plan("--nets", "resnet50")
    assert harness.net_names(layers) == ["resnet50"]
    # Every distinct ResNet-50 geometry is kept, also those VGG or MobileNet share.
    everything, _, _ = _plan()
    assert {layer.id for layer in layers} == {layer.id for layer in everything if "resnet50" in layer.nets}


def test_nets_with_quick_drops_the_other_nets_quick_layers():
    layers, batches, _ = _plan("--quick", "--nets", "vgg16")
    assert layers and harness.net_names(layers) == ["vgg16"]
    assert batches == GPU_DEFAULTS["quick_batch"]


def test_unknown_net_is_refused():
    with pytest.raises(SystemExit, match="no such net"):
        _plan("--nets", "resnet5")


def test_summary_counts_host_bound_cases():
    layers, _, _ = _plan("--nets", "resnet50")
    a, b, c = (layer.id for layer in layers[:3])
    group = [  # host time per call at, above and below the measured time; one case that failed
        {"layer": a, "ms": 0.10, "host_ms": 0.10, "speedup": 0.5},
        {"layer": b, "ms": 0.10, "host_ms": 0.30, "speedup": 0.4},
        {"layer": c, "ms": 0.50, "host_ms": 0.05, "speedup": 1.0},
        {"layer": c, "error": "failed"},
    ]
    summary = harness.speedup_summary(("triton", "forward", "bf16", 128), group, layers)
    assert (summary["measured"], summary["cases"], summary["host_bound"]) == (3, 4, 2)
    assert summary["median_host_ms"] == pytest.approx(0.10)
    table = "\n".join(harness.summary_section([summary], harness.net_names(layers), [], lambda s: []))
    _, header, _, row = table.splitlines()
    cells = dict(zip((h.strip() for h in header.split("|")), (c.strip() for c in row.split("|"))))
    assert (cells["host µs/call"], cells["host-bound"]) == ("100", "2")
    on_cpu = harness.speedup_summary(("cpu", "forward", "fp32", 2), [{"layer": a, "ms": 1.0, "speedup": 1.0}], layers)
    assert (on_cpu["host_bound"], on_cpu["median_host_ms"]) == (0, None)


def test_autotune_choices_are_recorded(monkeypatch):
    class Tuner:  # what triton.autotune leaves after tuning a new key
        configs_timings = "stale: from an earlier case"
        best_config = None

    fresh, idle = Tuner(), Tuner()
    monkeypatch.setattr(harness, "_triton_autotuners", lambda: {"_fresh_kernel": fresh, "_idle_kernel": idle})

    def first_call():
        fresh.configs_timings = {"BLOCK_M: 64": [0.5, 0.4, 0.6], "BLOCK_M: 128": [float("inf")] * 3}
        fresh.best_config = "BLOCK_M: 64"
        return {"ms": 0.5}

    outcome = harness.autotuned(first_call)
    assert outcome == {"ms": 0.5, "autotune": {"_fresh_kernel": {
        "chosen": "BLOCK_M: 64", "ms": {"BLOCK_M: 64": 0.5, "BLOCK_M: 128": float("inf")}}}}
    assert harness.autotuned(lambda: {"ms": 0.25}) == {"ms": 0.25}  # nothing tuned: nothing added


def test_resume_keeps_the_measured_cases_and_runs_the_rest(tmp_path):
    layers, _, _ = _plan("--nets", "resnet50")
    a, b, c, d = ((layer, 128, "bf16") for layer in layers[:4])
    meta = {"device": "some-gpu", "git_commit": "abc1234", "torch": "2.11", "triton": "3.6", "cuda_runtime": "13.0",
            "cudnn": 91900, "date_utc": "today"}

    def result(case, impl, **outcome):
        return {"layer": case[0].id, "batch": case[1], "dtype": case[2], "op": "forward", "impl": impl, **outcome}

    earlier = [result(a, "torch", ms=1.0), result(a, "triton", ms=2.0),
               result(b, "torch", ms=1.0), result(b, "triton", error="boom", error_type="RuntimeError"),
               result(c, "torch", ms=1.0), result(c, "triton", error="CUDA out of memory", error_type="OutOfMemoryError"),
               result((layers[5], 32, "fp32"), "torch", ms=3.0)]  # not a case of this run: dropped
    assert harness.resumed(tmp_path, "conv", dict(meta), [a, b]) == ([], [a, b])  # nothing saved yet
    (tmp_path / "some-gpu-conv.json").write_text(json.dumps({"meta": {**meta, "date_utc": "yesterday"},
                                                             "results": earlier}))

    here = dict(meta)
    results, todo = harness.resumed(tmp_path, "conv", here, [a, b, c, d])
    assert results == earlier[:2] + earlier[4:6]  # a measured, c out of memory (an expected error)
    assert todo == [b, d]  # b failed: measured again; d never ran
    assert here["resumed"] == {"from_date_utc": "yesterday", "cases_kept": 2}

    with pytest.raises(SystemExit, match="git_commit"):
        harness.resumed(tmp_path, "conv", {**meta, "git_commit": "def5678"}, [a])
