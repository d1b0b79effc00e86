"""Normalisation benchmark: the fused norm-activation tails of classic CNNs against torch.

    python -m benchmarks.bench_norm [--out DIR] [--quick] [--batch 32 128] [--dtypes bf16 fp16 fp32]
                                    [--max-minutes M]

Each case is one layer and one norm "kind", timed three ways: the training forward (running
statistics updated where the kind has them), the backward (autograd's, on a graph built once:
torch.autograd.grad(out, inputs, g, retain_graph=True)), and the forward and backward together.
The kinds, with the sequence of torch ops a user would write as the reference:

- bn           BatchNorm2d (ResNet-50's downsample BNs)          F.batch_norm
- bn_relu      BatchNorm2d + ReLU (ResNet-50's bn1/bn2)           F.relu(F.batch_norm(x))
- bn_add_relu  BatchNorm2d + residual + ReLU (ResNet-50's bn3)    F.relu(F.batch_norm(x) + r)
- gn_silu      GroupNorm(32) + SiLU on ResNet-50's activations    F.silu(F.group_norm(x, 32))
- rms          RMSNorm over the (N*H*W, C) rows of an activation  F.rms_norm(x, (C,), w)
- lrn          AlexNet's LocalResponseNorm(5, k=2)                F.local_response_norm

With a CUDA GPU: the layers at 224x224, batch 32 and 128, bf16 and fp16 channels_last and fp32
NCHW, against torch eager and against torch.compile of the same sequence (impl "compile", its
speedup also relative to eager), and each of our GPU backends. Without one: small layers at
batch 2 and 4, fp32, our "cpu" backend (and "triton" under TRITON_INTERPRET=1) against torch's
CPU kernels (no torch.compile: inductor's CPU compile time dominates there).

Norms are memory-bound, so the rate is GB/s of the least traffic: forward reads x (and the
residual) and writes the output; backward reads the output gradient and x (and the residual,
which the fused kernels recompute the activation from) and writes the input gradient (and the
residual's). The same count is used for torch. Copy bandwidth is measured once, as in
bench_pool. Targets (issue 5), bf16 channels_last, forward+backward: bn_relu >= 1.5x torch
eager, gn_silu >= 2x, rms >= 1.5x, lrn >= 3x; forward kernels >= 80% of copy bandwidth.
Results go to <out>/<device>-norm.json and .md, rewritten after every case; exit status as in
bench_pool.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import cnnkernels
import cnnkernels.functional as ours_f
from benchmarks import harness
from benchmarks.bench_pool import copy_bandwidth
from benchmarks.harness import fmt
from cnnkernels.ops import norm as norm_ops

FAMILY = "norm"
PASSES = ("forward", "backward", "fwd_bwd")
KINDS = ("bn", "bn_relu", "bn_add_relu", "gn_silu", "rms", "lrn")
OP_ORDER = tuple(f"{kind}_{p}" for kind in KINDS for p in PASSES)
GROUPS = 32
LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

# Fused forward+backward speedup over torch eager each kind should reach (bf16 channels_last).
TARGET_SPEEDUP = {"bn_relu": 1.5, "bn_add_relu": 1.5, "gn_silu": 2.0, "rms": 1.5, "lrn": 3.0}
TARGET_COPY_FRACTION = 0.8
# Statistics and outputs round once to the dtype; a relative error above this marks a result suspect.
SUSPECT_ERROR = {"bf16": 3e-2, "fp16": 5e-3, "fp32": 1e-4}

# ResNet-50 (torchvision, 224x224): every distinct (C, H, W) a BatchNorm2d sees, by what follows it.
#   (layers,                                                        kind,          C,    H,   W)
RESNET50 = (
    ("bn1",                                                         "bn_relu",      64, 112, 112),
    ("layer1.0.bn1 layer1.0.bn2",                                   "bn_relu",      64,  56,  56),
    ("layer2.0.bn1",                                                "bn_relu",     128,  56,  56),
    ("layer2.0.bn2 layer2.1.bn1",                                   "bn_relu",     128,  28,  28),
    ("layer3.0.bn1",                                                "bn_relu",     256,  28,  28),
    ("layer3.0.bn2 layer3.1.bn1",                                   "bn_relu",     256,  14,  14),
    ("layer4.0.bn1",                                                "bn_relu",     512,  14,  14),
    ("layer4.0.bn2 layer4.1.bn1",                                   "bn_relu",     512,   7,   7),
    ("layer1.0.bn3 layer1.1.bn3",                                   "bn_add_relu", 256,  56,  56),
    ("layer2.0.bn3 layer2.1.bn3",                                   "bn_add_relu", 512,  28,  28),
    ("layer3.0.bn3 layer3.1.bn3",                                   "bn_add_relu", 1024, 14,  14),
    ("layer4.0.bn3 layer4.1.bn3",                                   "bn_add_relu", 2048,  7,   7),
    ("layer1.0.downsample.1",                                       "bn",          256,  56,  56),
    ("layer2.0.downsample.1",                                       "bn",          512,  28,  28),
    ("layer3.0.downsample.1",                                       "bn",          1024, 14,  14),
    ("layer4.0.downsample.1",                                       "bn",          2048,  7,   7),
)
# GroupNorm(32) + SiLU and RMSNorm over channels on the same activations (the norms of
# GroupNorm ResNets and of ConvNeXt-style blocks).
RESNET50_GN = tuple((f"{names}:gn", "gn_silu", c, h, w) for names, c, h, w in (
    ("layer1", 64, 56, 56), ("layer1.out", 256, 56, 56), ("layer2", 128, 28, 28), ("layer2.out", 512, 28, 28),
    ("layer3", 256, 14, 14), ("layer3.out", 1024, 14, 14), ("layer4", 512, 7, 7), ("layer4.out", 2048, 7, 7)))
RESNET50_RMS = tuple((f"{names}:rms", "rms", c, h, w) for names, c, h, w in (
    ("layer1.out", 256, 56, 56), ("layer2.out", 512, 28, 28), ("layer3.out", 1024, 14, 14),
    ("layer4.out", 2048, 7, 7)))
# AlexNet (Krizhevsky et al., 2012): LRN after the first two convolutions' ReLUs.
ALEXNET = (
    ("norm1", "lrn", 96, 55, 55),
    ("norm2", "lrn", 256, 27, 27),
)
# CPU runs: one small layer of each kind.
SMALL = (
    ("bn", "bn", 32, 16, 16), ("bn-relu", "bn_relu", 32, 16, 16), ("bn-add-relu", "bn_add_relu", 64, 8, 8),
    ("gn-silu", "gn_silu", 64, 8, 8), ("rms", "rms", 64, 8, 8), ("lrn", "lrn", 32, 13, 13),
)

GPU_NETS = {"resnet50": ("r50", RESNET50), "resnet50-gn": ("r50gn", RESNET50_GN),
            "resnet50-rms": ("r50rms", RESNET50_RMS), "alexnet": ("alex", ALEXNET)}
CPU_NETS = {"small": ("small", SMALL)}
GPU_QUICK = ("resnet50:layer1.0.bn1", "resnet50:layer2.0.bn3", "resnet50:layer3.0.downsample.1",
             "resnet50-gn:layer2:gn", "resnet50-rms:layer2.out:rms", "alexnet:norm1")
CPU_QUICK = ("small:bn-relu", "small:gn-silu", "small:rms", "small:lrn")
GPU_DEFAULTS = {"batch": [32, 128], "quick_batch": [32], "dtypes": ["bf16", "fp16", "fp32"]}
CPU_DEFAULTS = {"batch": [2, 4], "quick_batch": [2], "dtypes": ["fp32"]}
SUITES = {"cuda": (GPU_NETS, GPU_QUICK, GPU_DEFAULTS), "cpu": (CPU_NETS, CPU_QUICK, CPU_DEFAULTS)}


@dataclass(frozen=True)
class Layer(harness.NetLayer):
    """One norm kind on one activation size (after id, layers, nets: see harness.NetLayer)."""

    kind: str
    C: int
    H: int
    W: int

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(f"{self.kind}_{p}" for p in PASSES)

    def bytes_moved(self, batch: int, element_size: int, op: str) -> int:
        """Least traffic of `op` (see the module docstring), in bytes."""
        tensor = batch * self.C * self.H * self.W * element_size
        residual = self.kind == "bn_add_relu"
        forward = (2 + residual) * tensor
        backward = (3 + 2 * residual) * tensor
        return {"forward": forward, "backward": backward, "fwd_bwd": forward + backward}[split_op(op)[1]]


def split_op(op: str) -> tuple[str, str]:
    """An op name "<kind>_<pass>" as (kind, pass)."""
    for p in PASSES:
        if op.endswith("_" + p):
            return op[: -len(p) - 1], p
    raise ValueError(f"not a norm benchmark op: {op}")


# ---- the computations ----------------------------------------------------------------------


def _torch_sequence(kind: str) -> Callable:
    """The unfused torch ops a user would write for `kind`: fn(x, r, w, b, rm, rv)."""
    if kind == "bn":
        return lambda x, r, w, b, rm, rv: F.batch_norm(x, rm, rv, w, b, True)
    if kind == "bn_relu":
        return lambda x, r, w, b, rm, rv: F.relu(F.batch_norm(x, rm, rv, w, b, True))
    if kind == "bn_add_relu":
        return lambda x, r, w, b, rm, rv: F.relu(F.batch_norm(x, rm, rv, w, b, True) + r)
    if kind == "gn_silu":
        return lambda x, r, w, b, rm, rv: F.silu(F.group_norm(x, GROUPS, w, b))
    if kind == "rms":
        return lambda x, r, w, b, rm, rv: F.rms_norm(x, (x.shape[-1],), w)
    return lambda x, r, w, b, rm, rv: F.local_response_norm(x, **LRN)


def _ours(kind: str, backend: str) -> Callable:
    """The same computation on cnnkernels, fused: fn(x, r, w, b, rm, rv)."""
    if kind == "bn":
        return lambda x, r, w, b, rm, rv: ours_f.batch_norm(x, rm, rv, w, b, True, backend=backend)
    if kind == "bn_relu":
        return lambda x, r, w, b, rm, rv: ours_f.batch_norm_relu(x, rm, rv, w, b, True, backend=backend)
    if kind == "bn_add_relu":
        return lambda x, r, w, b, rm, rv: ours_f.batch_norm_add_relu(x, r, rm, rv, w, b, True, backend=backend)
    if kind == "gn_silu":
        return lambda x, r, w, b, rm, rv: ours_f.group_norm(x, GROUPS, w, b, activation="silu", backend=backend)
    if kind == "rms":
        return lambda x, r, w, b, rm, rv: ours_f.rms_norm(x, (x.shape[-1],), w, backend=backend)
    return lambda x, r, w, b, rm, rv: ours_f.local_response_norm(x, **LRN, backend=backend)


def _inputs(layer: Layer, batch: int, dtype: torch.dtype, memory_format: torch.memory_format,
            device: torch.device) -> dict:
    """x (and the residual for bn_add_relu) as the layer sees them, the parameters, running
    statistics, and an output gradient. RMS norm normalises the channels of an NHWC activation:
    its x is the (N, H, W, C) view, contiguous rows of C."""
    def act(requires_grad=True):
        t = torch.randn(batch, layer.C, layer.H, layer.W, device=device, dtype=dtype)
        t = t.contiguous(memory_format=memory_format)
        if layer.kind == "rms":
            t = t.permute(0, 2, 3, 1).contiguous()
        return t.requires_grad_(requires_grad)

    def vec(value=None):
        v = torch.randn(layer.C, device=device, dtype=dtype) if value is None else torch.full(
            (layer.C,), value, device=device, dtype=dtype)
        return v

    affine = layer.kind != "lrn"  # LRN has no parameters, RMS norm only a weight
    tensors = {"x": act(), "r": act() if layer.kind == "bn_add_relu" else None,
               "w": vec().requires_grad_() if affine else None,
               "b": vec().requires_grad_() if affine and layer.kind != "rms" else None,
               "rm": vec(0.0), "rv": vec(1.0)}
    tensors["g"] = torch.randn_like(tensors["x"])
    return tensors


def _leaves(t: dict) -> list[torch.Tensor]:
    return [v for k, v in t.items() if k in ("x", "r", "w", "b") and v is not None and v.requires_grad]


def _passes(fn: Callable, t: dict) -> dict[str, Callable]:
    """The three timed calls of one implementation: forward, backward on a graph built once,
    and both."""
    args = (t["x"], t["r"], t["w"], t["b"], t["rm"], t["rv"])
    leaves = _leaves(t)
    graph = {}

    def backward():
        if "out" not in graph:  # built on first use (the warm-up), kept for the timed calls
            graph["out"] = fn(*args)
        return torch.autograd.grad(graph["out"], leaves, t["g"], retain_graph=True)[0]

    def fwd_bwd():
        return torch.autograd.grad(fn(*args), leaves, t["g"])[0]

    return {"forward": lambda: fn(*args), "backward": backward, "fwd_bwd": fwd_bwd}


def _named(kind: str, fns: dict[str, Callable]) -> dict[str, Callable]:
    return {f"{kind}_{p}": f for p, f in fns.items()}


# ---- one case ------------------------------------------------------------------------------


def _measure_ours(fn: Callable[[], object], device: torch.device, reference: torch.Tensor | None, inputs: dict,
                  op: str) -> dict:
    """Time of fn() (its first call is the warm-up where Triton compiles and torch.compile
    traces) and its result's error against torch eager's (the output forward, the input
    gradient otherwise)."""
    result = fn()
    checks = {} if reference is None else {"rel_err": harness.relative_error(result.detach(), reference)}
    del result
    return harness.timings(fn, device) | checks


def _judge(dtype_name: str, outcome: dict) -> None:
    if outcome.get("rel_err") is not None:
        outcome["suspect"] = not outcome["rel_err"] <= SUSPECT_ERROR[dtype_name]


def run_case(layer: Layer, batch: int, dtype_name: str, ours: dict, device: torch.device, copy_gbps: float | None,
             results: list[dict]) -> None:
    dtype, memory_format = harness.DTYPES[dtype_name]
    element_size = torch.empty((), dtype=dtype).element_size()
    sequence = _torch_sequence(layer.kind)
    impls = {name: _ours(layer.kind, name) for name in ours if name != "compile"}
    if "compile" in ours:
        impls["compile"] = torch.compile(sequence, dynamic=False)

    def rate(result: dict) -> None:
        result["bytes"] = layer.bytes_moved(batch, element_size, result["op"])
        result["gbps"] = result["bytes"] / result["ms"] / 1e6
        if copy_gbps:
            result["copy_fraction"] = result["gbps"] / copy_gbps

    harness.compare_ops(
        layer.ops, impls, device, harness.recorder(results, layer.id, batch, dtype_name, None, rate),
        make_inputs=lambda: _inputs(layer, batch, dtype, memory_format, device),
        torch_fns=lambda t: _named(layer.kind, _passes(sequence, t)),
        backend_fns=lambda fn, t: _named(layer.kind, _passes(fn, t)),
        measure_ours=_measure_ours,
        judge=functools.partial(_judge, dtype_name),
        torch_values=lambda out: out.detach() if isinstance(out, torch.Tensor) else out[0].detach())


# ---- summary and report --------------------------------------------------------------------


def summarize(layers: list[Layer], results: list[dict], impl_names: list[str]) -> list[dict]:
    """Per (impl, op, dtype, batch): geometric mean speedup over torch eager (overall and per
    net), the slowest case, the cases meeting the kind's target, the lowest forward copy
    fraction, the largest error."""
    rows = []
    for key, group in harness.summary_groups(results, impl_names, OP_ORDER).items():
        timed = [r for r in group if "speedup" in r]
        kind, which = split_op(key[1])
        target = TARGET_SPEEDUP.get(kind) if which == "fwd_bwd" else None
        slowest = min(timed, key=lambda r: r["speedup"], default=None)
        rows.append(harness.speedup_summary(key, group, layers) | {
            "min_speedup": slowest and slowest["speedup"],
            "min_speedup_layer": slowest and slowest["layer"],
            "target": target,
            "target_met": None if target is None else sum(r["speedup"] >= target for r in timed),
            "min_copy_fraction": min((r["copy_fraction"] for r in timed if "copy_fraction" in r), default=None),
            "max_rel_err": harness.max_rel_err(group),
        })
    return rows


def _err_cell(r: dict) -> str:
    if r.get("rel_err") is None:
        return "-"
    return fmt(r["rel_err"], ".1e") + (" !" if r.get("suspect") else "")


_time_cell = functools.partial(harness.time_cell, spec=".4f")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(meta: dict, layers: list[Layer], results: list[dict], summary: list[dict]) -> str:
    nets = harness.net_names(layers)
    copy = f"{meta['copy_gbps']:.1f} GB/s" if meta.get("copy_gbps") else f"not measured: {meta.get('copy_error')}"
    targets = ", ".join(f"{k} {v:g}x" for k, v in TARGET_SPEEDUP.items())
    parts = harness.report_head("Normalisation benchmark", meta, [
        "- torch: the unfused eager sequence (F.batch_norm, + residual, F.relu; F.group_norm, F.silu; F.rms_norm; "
        "F.local_response_norm); impl compile = torch.compile of that sequence (GPU only)",
        "- forward: training forward (running statistics updated); backward: torch.autograd.grad on a graph built "
        "once; fwd_bwd: both",
        f"- copy bandwidth: {copy}; GB/s counts the least traffic (see benchmarks/bench_norm.py)",
        harness.speedup_note(SUSPECT_ERROR),
        f"- targets (bf16 channels_last, fwd_bwd speedup over eager): {targets}; forward >= "
        f"{100 * TARGET_COPY_FRACTION:.0f}% of copy bandwidth",
    ])
    parts += harness.summary_section(
        summary, nets, ["min speedup (layer)", "meets target", "min copy", "max err"],
        lambda s: [f"{fmt(s['min_speedup'], '.2f')} ({s['min_speedup_layer'] or '-'})",
                   "-" if s["target"] is None else f"{s['target_met']}/{s['measured']} >= {s['target']:g}",
                   _percent(s["min_copy_fraction"]), fmt(s["max_rel_err"], ".1e")])
    rows = [[layer.id, " ".join(layer.layers), layer.kind, layer.C, f"{layer.H}x{layer.W}"] for layer in layers]
    parts += ["## Layers", harness.markdown_table(["id", "layers", "kind", "C", "HxW"], rows,
                                                  [False, False, False, True, True])]
    parts += harness.results_sections(
        results, meta["backends"], ["MB", "torch ms", "torch GB/s"],
        lambda case, t: [fmt(t.get("bytes", 0) / 1e6, ".3g"), _time_cell(t), fmt(t.get("gbps"), ".3g")],
        ["ms", "GB/s", "copy", "speedup", "err"],
        lambda r: [_time_cell(r), fmt(r.get("gbps"), ".3g"), _percent(r.get("copy_fraction")),
                   fmt(r.get("speedup"), ".3g"), _err_cell(r)])
    return "\n\n".join(parts)


# ---- main ----------------------------------------------------------------------------------


def _probe(ops: norm_ops.NormOps, device: torch.device) -> None:
    x = torch.randn(2, 4, 3, 3, device=device)
    ops.group_norm(x, None, None, 2, 1e-5, "silu")


def main(argv: list[str] | None = None) -> int:
    args, device = harness.start(__doc__, argv)
    layers, batches, dtypes = harness.plan(args, Layer, *SUITES[device.type])
    ours, left_out = harness.usable_backends(device, norm_ops, _probe)
    if device.type == "cuda":
        ours["compile"] = None  # torch.compile of torch's sequence: a second reference
    copy = copy_bandwidth(device)
    meta = harness.metadata(device) | copy | {
        "cnnkernels": cnnkernels.build_info(), "backends": list(ours), "left_out": left_out,
        "layers_measured": len(layers), "batches": batches, "dtypes": dtypes, "target_speedup": TARGET_SPEEDUP,
        "target_copy_fraction": TARGET_COPY_FRACTION, "stopped_early": None,
    }
    harness.announce("normalisation benchmark", meta)
    return harness.run_suite(
        args, FAMILY, meta, layers, batches, dtypes,
        functools.partial(run_case, ours=ours, device=device, copy_gbps=copy.get("copy_gbps")),
        lambda layers, results: summarize(layers, results, list(ours)), markdown,
        functools.partial(harness.progress, time_cell=_time_cell, err_cell=_err_cell,
                          rate=lambda r: f" {r['gbps']:.3g} GB/s" if "gbps" in r else ""))

if __name__ == "__main__":
    sys.exit(main())
