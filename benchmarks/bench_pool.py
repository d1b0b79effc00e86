"""Pooling benchmark: forward and backward, each timed on its own, against torch.

    python -m benchmarks.bench_pool [--out DIR] [--quick] [--batch 32 128] [--dtypes bf16 fp16 fp32]
                                    [--max-minutes M]

With a CUDA GPU: the pooling layers of AlexNet, VGG-16, ResNet-50 and GoogLeNet (224x224 input)
at batch 32 and 128, in bf16 and fp16 channels_last and fp32 NCHW. torch means ATen's CUDA
kernels: F.max_pool2d(return_indices=True), F.avg_pool2d and F.adaptive_avg_pool2d forward, and
aten.max_pool2d_with_indices_backward, aten.avg_pool2d_backward and
aten._adaptive_avg_pool2d_backward for the backward pass. It is compared with each of our GPU
backends ("cuda", "triton") that exists and runs there.

Without one: a few small layers (LeNet-5's subsampling, scaled-down versions of the GPU nets'
pooling kinds) at batch 2 and 4, fp32 NCHW; our "cpu" backend (and "triton" when
TRITON_INTERPRET=1) against torch's CPU kernels.

Pooling is memory-bound, so the rate reported is GB/s: the bytes each op has to move at least
(forward: read the input, write the output, and for max pooling the int64 indices; backward:
read grad_output (and the indices), write grad_input). The same count is used for torch (whose
backward is also handed the input), so torch GB/s / backend GB/s is the inverse time ratio. The
device's copy bandwidth (a large dst.copy_(src), 2x its size in bytes) is measured once and
each rate is also given as a fraction of it. The targets (issue): >= 80% of copy bandwidth on
the large cases (at least LARGE_BYTES moved) and torch time / backend time >= 1 on every case.

Per case: time (ms), GB/s, fraction of copy bandwidth, torch time / backend time, and the
backend result's largest difference from torch's relative to torch's largest magnitude (for max
pooling also whether the backend's indices point at the window maxima: ties may resolve either
way). The backward ops of both get the same inputs (torch's indices). Summary: per (backend, op,
dtype, batch) the geometric mean of torch/backend over all layers and per net, the slowest case,
and how many cases meet each target. Results go to <out>/<device>-pool.json and .md, rewritten
after every case. The exit status is 1 when a measurement failed (other than out of memory or an
op a backend does not implement), a result is suspect, or the GPU broke down; 0 otherwise, also
when --max-minutes cut the run short. Missing a performance target does not fail the run.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import cnnkernels
from benchmarks import harness
from benchmarks.harness import fmt
from cnnkernels._pool_geometry import pool2d_output_shape
from cnnkernels.ops import pool as pool_ops

FAMILY = "pool"


# ---- layer tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """One pooling geometry (square windows, dilation 1)."""

    kind: str  # "max", "avg" or "adaptive_avg"
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    ceil_mode: bool = False
    output_size: int = 0  # adaptive pooling only

    def describe(self) -> str:
        if self.kind == "adaptive_avg":
            return f"adaptive avg -> {self.output_size}x{self.output_size}"
        text = f"{self.kind} {self.kernel}x{self.kernel}/{self.stride}"
        return text + (f" p{self.padding}" if self.padding else "") + (" ceil" if self.ceil_mode else "")


def max_pool(kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> Pool:
    return Pool("max", kernel, stride, padding, ceil_mode)


def avg_pool(kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> Pool:
    return Pool("avg", kernel, stride, padding, ceil_mode)


def adaptive_avg_pool(output_size: int) -> Pool:
    return Pool("adaptive_avg", output_size=output_size)


# Each table lists a net's pooling layers, written out by hand, with the input (C, H, W) each
# sees at 224x224; names follow torchvision's modules where torchvision has the layer as the
# paper does.
#
#   (layers,                                          C,    H,   W, pooling)

# AlexNet as in the paper (Krizhevsky et al., 2012; one-tower channel counts 96/256/256, where
# torchvision has 64/192/256): overlapping 3x3 stride 2 max pooling after conv1, conv2, conv5.
ALEXNET = (
    ("pool1",                                         96,  55,  55, max_pool(3, 2)),
    ("pool2",                                        256,  27,  27, max_pool(3, 2)),
    ("pool5",                                        256,  13,  13, max_pool(3, 2)),
)

# torchvision's VGG-16: 2x2 stride 2 max pooling closing each of the five stages.
VGG16 = (
    ("features.4",                                    64, 224, 224, max_pool(2, 2)),
    ("features.9",                                   128, 112, 112, max_pool(2, 2)),
    ("features.16",                                  256,  56,  56, max_pool(2, 2)),
    ("features.23",                                  512,  28,  28, max_pool(2, 2)),
    ("features.30",                                  512,  14,  14, max_pool(2, 2)),
)

# torchvision's ResNet-50: the stem's 3x3 stride 2 pad 1 max pooling and the global average
# pooling before the classifier.
RESNET50 = (
    ("maxpool",                                       64, 112, 112, max_pool(3, 2, 1)),
    ("avgpool",                                     2048,   7,   7, adaptive_avg_pool(1)),
)

# GoogLeNet (Szegedy et al., 2014) with torchvision's module names: 3x3 stride 2 ceil_mode max
# pooling between stages (the paper's; torchvision's maxpool4 is 2x2 stride 2), the 3x3 stride 1
# pad 1 max pooling of every inception block's fourth branch (ceil_mode as torchvision, a no-op
# at stride 1), one entry per distinct input, and the paper's final 7x7 stride 1 average pooling
# (torchvision: AdaptiveAvgPool2d(1), the same result).
GOOGLENET = (
    ("maxpool1",                                      64, 112, 112, max_pool(3, 2, ceil_mode=True)),
    ("maxpool2",                                     192,  56,  56, max_pool(3, 2, ceil_mode=True)),
    ("maxpool3",                                     480,  28,  28, max_pool(3, 2, ceil_mode=True)),
    ("maxpool4",                                     832,  14,  14, max_pool(3, 2, ceil_mode=True)),
    ("inception3a.branch4.0",                        192,  28,  28, max_pool(3, 1, 1, ceil_mode=True)),
    ("inception3b.branch4.0",                        256,  28,  28, max_pool(3, 1, 1, ceil_mode=True)),
    ("inception4a.branch4.0",                        480,  14,  14, max_pool(3, 1, 1, ceil_mode=True)),
    ("inception4b-d.branch4.0",                      512,  14,  14, max_pool(3, 1, 1, ceil_mode=True)),
    ("inception4e.branch4.0",                        528,  14,  14, max_pool(3, 1, 1, ceil_mode=True)),
    ("inception5a-b.branch4.0",                      832,   7,   7, max_pool(3, 1, 1, ceil_mode=True)),
    ("avgpool",                                     1024,   7,   7, avg_pool(7, 1)),
)

# CPU runs: small layers that the plain C++ loops finish quickly. LeNet-5's two subsampling
# layers (max, as cnnkernels.models.lenet5 uses by default, and S2 also as the paper's average),
# and one scaled-down layer of each kind the GPU nets have.
LENET5 = (
    ("s2",                                             6,  28,  28, max_pool(2, 2)),
    ("s4",                                            16,  10,  10, max_pool(2, 2)),
    ("s2-avg",                                         6,  28,  28, avg_pool(2, 2)),
)
SMALL = (
    ("max3x3/2",                                      32,  27,  27, max_pool(3, 2)),
    ("max3x3/2p1",                                    32,  32,  32, max_pool(3, 2, 1)),
    ("max3x3/2ceil",                                  64,  14,  14, max_pool(3, 2, ceil_mode=True)),
    ("max3x3/1p1",                                    64,  14,  14, max_pool(3, 1, 1, ceil_mode=True)),
    ("avg7x7",                                       128,   7,   7, avg_pool(7, 1)),
    ("global-avg",                                   256,   7,   7, adaptive_avg_pool(1)),
)

# net name -> (short prefix for layer ids, table)
GPU_NETS = {"alexnet": ("alex", ALEXNET), "vgg16": ("vgg16", VGG16), "resnet50": ("r50", RESNET50),
            "googlenet": ("gnet", GOOGLENET)}
CPU_NETS = {"lenet5": ("lenet5", LENET5), "small": ("small", SMALL)}
# --quick: one layer of each kind (overlapping, 2x2, padded, ceil_mode, stride 1, average, global).
GPU_QUICK = ("alexnet:pool1", "vgg16:features.9", "resnet50:maxpool", "googlenet:maxpool2",
             "googlenet:inception4b-d.branch4.0", "googlenet:avgpool", "resnet50:avgpool")
CPU_QUICK = ("lenet5:s2", "small:max3x3/2ceil", "small:global-avg")

GPU_DEFAULTS = {"batch": [32, 128], "quick_batch": [32], "dtypes": ["bf16", "fp16", "fp32"]}
CPU_DEFAULTS = {"batch": [2, 4], "quick_batch": [2], "dtypes": ["fp32"]}
# device type -> (nets, --quick layers, defaults): what runs there.
SUITES = {"cuda": (GPU_NETS, GPU_QUICK, GPU_DEFAULTS), "cpu": (CPU_NETS, CPU_QUICK, CPU_DEFAULTS)}

# The op names (our operators' names) of each pooling kind: forward, backward.
OPS_OF_KIND = {
    "max": ("max_pool2d", "max_pool2d_backward"),
    "avg": ("avg_pool2d", "avg_pool2d_backward"),
    "adaptive_avg": ("adaptive_avg_pool2d", "adaptive_avg_pool2d_backward"),
}
OP_ORDER = tuple(op for ops in OPS_OF_KIND.values() for op in ops)

# Copy bandwidth: bytes of the source tensor (read once, written once).
COPY_BYTES = {"cuda": 2 ** 30, "cpu": 2 ** 27}
# The targets: cases moving at least this many bytes should reach this fraction of the copy
# bandwidth (smaller ones are dominated by launch and tail effects), and every case should run at
# least as fast as torch.
LARGE_BYTES = 256 * 2 ** 20
TARGET_COPY_FRACTION = 0.8
TARGET_SPEEDUP = 1.0

# A relative error above this (per dtype) marks a result as suspect. Max pooling and its
# backward select and sum a few values: exact but for the order of at most a few additions.
# Average pooling rounds its fp32 accumulation once to the output dtype: an ulp or so.
SUSPECT_ERROR = {"bf16": 2e-2, "fp16": 5e-3, "fp32": 1e-4}


@dataclass(frozen=True)
class Layer(harness.NetLayer):
    """One distinct pooling geometry and input size (after id, layers, nets: see harness.NetLayer)."""

    C: int
    H: int
    W: int
    pool: Pool

    @property
    def out_hw(self) -> tuple[int, int]:
        p = self.pool
        if p.kind == "adaptive_avg":
            return p.output_size, p.output_size
        shape = pool2d_output_shape("bench_pool", [1, self.C, self.H, self.W], [p.kernel] * 2, [p.stride] * 2,
                                    [p.padding] * 2, [1, 1], p.ceil_mode)
        return shape[2], shape[3]

    @property
    def ops(self) -> tuple[str, str]:
        return OPS_OF_KIND[self.pool.kind]

    def bytes_moved(self, batch: int, element_size: int) -> int:
        """The least traffic of either op (the same for both): input-sized tensor read or written
        once, output-sized tensor written or read once, and for max pooling the int64 indices."""
        p, q = self.out_hw
        inputs, outputs = batch * self.C * self.H * self.W, batch * self.C * p * q
        indices = 8 * outputs if self.pool.kind == "max" else 0
        return (inputs + outputs) * element_size + indices


# ---- backends ------------------------------------------------------------------------------


def _probe(ops: pool_ops.PoolOps, device: torch.device) -> None:
    """A small forward call: does this backend run on this device at all?"""
    x = torch.randn(1, 4, 6, 6, device=device)
    ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)


def copy_bandwidth(device: torch.device) -> dict:
    """GB/s of a large dst.copy_(src) on `device` (2x the size in bytes), the reference rate;
    halves the size on out of memory. {"error"} if even a small copy fails."""
    size = COPY_BYTES[device.type]
    while size >= 2 ** 24:
        try:
            src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
            dst = torch.empty_like(src)
            ms = harness.time_ms(lambda: dst.copy_(src), device)
            return {"copy_bytes": 2 * size, "copy_ms": ms, "copy_gbps": 2 * size / ms / 1e6}
        except torch.cuda.OutOfMemoryError:
            src = dst = None
            torch.cuda.empty_cache()
            size //= 2
        except Exception as e:
            return {"copy_error": harness.error_text(e)}
    return {"copy_error": "out of memory even for a 16 MiB copy"}


# ---- one case ------------------------------------------------------------------------------


def _inputs(layer: Layer, batch: int, dtype: torch.dtype, fmt_: torch.memory_format, device: torch.device) -> dict:
    """Input, output gradient, and for max pooling torch's indices: the backward ops of torch and
    of every backend gather with the same ones."""
    p, q = layer.out_hw

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=fmt_)

    tensors = {"x": randn(batch, layer.C, layer.H, layer.W), "g": randn(batch, layer.C, p, q), "idx": None}
    if layer.pool.kind == "max":
        pl = layer.pool
        tensors["idx"] = F.max_pool2d(tensors["x"], pl.kernel, pl.stride, pl.padding, 1, pl.ceil_mode,
                                      return_indices=True)[1]
    return tensors


def _torch_fns(layer: Layer, x, g, idx) -> dict[str, Callable]:
    p = layer.pool
    k, s, pad = [p.kernel] * 2, [p.stride] * 2, [p.padding] * 2
    if p.kind == "max":
        return {
            "max_pool2d": lambda: F.max_pool2d(x, k, s, pad, 1, p.ceil_mode, return_indices=True),
            "max_pool2d_backward": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                g, x, k, s, pad, [1, 1], p.ceil_mode, idx),
        }
    if p.kind == "avg":
        return {
            "avg_pool2d": lambda: F.avg_pool2d(x, k, s, pad, p.ceil_mode, True, None),
            "avg_pool2d_backward": lambda: torch.ops.aten.avg_pool2d_backward(
                g, x, k, s, pad, p.ceil_mode, True, None),
        }
    out = [p.output_size] * 2
    return {
        "adaptive_avg_pool2d": lambda: F.adaptive_avg_pool2d(x, out),
        "adaptive_avg_pool2d_backward": lambda: torch.ops.aten._adaptive_avg_pool2d_backward(g, x),
    }


def _backend_fns(ops: pool_ops.PoolOps, layer: Layer, x, g, idx) -> dict[str, Callable]:
    p = layer.pool
    k, s, pad, shape = [p.kernel] * 2, [p.stride] * 2, [p.padding] * 2, list(x.shape)
    if p.kind == "max":
        return {
            "max_pool2d": lambda: ops.max_pool2d(x, k, s, pad, [1, 1], p.ceil_mode),
            "max_pool2d_backward": lambda: ops.max_pool2d_backward(g, idx, shape, k, s, pad, [1, 1]),
        }
    if p.kind == "avg":
        return {
            "avg_pool2d": lambda: ops.avg_pool2d(x, k, s, pad, p.ceil_mode, True, None),
            "avg_pool2d_backward": lambda: ops.avg_pool2d_backward(g, shape, k, s, pad, True, None),
        }
    out = [p.output_size] * 2
    return {
        "adaptive_avg_pool2d": lambda: ops.adaptive_avg_pool2d(x, out),
        "adaptive_avg_pool2d_backward": lambda: ops.adaptive_avg_pool2d_backward(g, shape),
    }


def _values(result) -> torch.Tensor:
    """The pooled values of an op's result: max pooling returns (values, indices)."""
    return result[0] if isinstance(result, (tuple, list)) else result


def _indices_point_at_maxima(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> bool:
    """Whether every index is a position h*W + w in its (n, c) plane that holds the pooled value
    (not necessarily torch's index: with ties either is right)."""
    if indices.dtype != torch.int64 or indices.shape != values.shape:
        return False
    n, c, h, w = x.shape
    flat = indices.reshape(n, c, -1)
    if flat.numel() and (flat.min().item() < 0 or flat.max().item() >= h * w):
        return False
    picked = x.reshape(n, c, h * w).gather(2, flat)
    return bool(torch.equal(picked, values.reshape(n, c, -1)))


def _measure_ours(fn: Callable[[], object], device: torch.device, reference: torch.Tensor | None,
                  inputs: dict, op: str) -> dict:
    """Time of a backend's fn(), and its first result's error against torch's (when torch ran);
    for a max pooling forward, also whether its indices point at the maxima of the input. That
    first call is also the warm-up where Triton compiles and autotunes."""
    x = inputs["x"] if op == "max_pool2d" else None
    result = fn()
    checks = {}
    if reference is not None:
        checks["rel_err"] = harness.relative_error(_values(result), reference)
    if x is not None:
        checks["indices_ok"] = _indices_point_at_maxima(x, *result)
    del result  # timing allocates fresh outputs: this one need not hold memory meanwhile
    return harness.timings(fn, device) | checks


def _judge(dtype_name: str, outcome: dict) -> None:
    """Marks a backend's outcome suspect when its error is above SUSPECT_ERROR for the dtype or
    its max pooling indices do not point at the maxima."""
    if outcome.get("rel_err") is not None or "indices_ok" in outcome:
        # `not <=` so that NaN counts as suspect.
        too_far = outcome.get("rel_err") is not None and not outcome["rel_err"] <= SUSPECT_ERROR[dtype_name]
        outcome["suspect"] = too_far or outcome.get("indices_ok") is False


def run_case(layer: Layer, batch: int, dtype_name: str, ours: dict, device: torch.device, copy_gbps: float | None,
             results: list[dict]) -> None:
    """Measures the forward and backward op of one (layer, batch, dtype), torch first, then each
    backend, and appends each result to `results` as it comes, so a run that dies mid-case keeps
    them."""
    dtype, memory_format = harness.DTYPES[dtype_name]
    nbytes = layer.bytes_moved(batch, torch.empty((), dtype=dtype).element_size())

    def rate(result: dict) -> None:
        result["gbps"] = nbytes / result["ms"] / 1e6
        if copy_gbps:
            result["copy_fraction"] = result["gbps"] / copy_gbps

    harness.compare_ops(
        layer.ops, ours, device, harness.recorder(results, layer.id, batch, dtype_name, {"bytes": nbytes}, rate),
        make_inputs=lambda: _inputs(layer, batch, dtype, memory_format, device),
        torch_fns=lambda t: _torch_fns(layer, t["x"], t["g"], t["idx"]),
        backend_fns=lambda ops, t: _backend_fns(ops, layer, t["x"], t["g"], t["idx"]),
        measure_ours=_measure_ours,
        judge=functools.partial(_judge, dtype_name),
        torch_values=_values)


# ---- summary and tables --------------------------------------------------------------------


def summarize(layers: list[Layer], results: list[dict], backend_names: list[str]) -> list[dict]:
    """Per (backend, op, dtype, batch): how many layers ran, geometric mean of torch/backend over
    all layers and over each net's, the slowest case, how many cases meet the targets, and the
    largest relative error."""
    rows = []
    for key, group in harness.summary_groups(results, backend_names, OP_ORDER).items():
        timed = [r for r in group if "speedup" in r]
        large = [r for r in group if r["bytes"] >= LARGE_BYTES and "copy_fraction" in r]
        slowest = min(timed, key=lambda r: r["speedup"], default=None)
        rows.append(harness.speedup_summary(key, group, layers) | {
            "min_speedup": slowest and slowest["speedup"],
            "min_speedup_layer": slowest and slowest["layer"],
            "speedup_target_met": sum(r["speedup"] >= TARGET_SPEEDUP for r in timed),
            "large_cases": len(large),
            "large_min_copy_fraction": min((r["copy_fraction"] for r in large), default=None),
            "large_copy_target_met": sum(r["copy_fraction"] >= TARGET_COPY_FRACTION for r in large),
            "max_rel_err": harness.max_rel_err(group),
            "indices_wrong": sum(r.get("indices_ok") is False for r in group),
        })
    return rows


def _err_cell(r: dict) -> str:
    if r.get("rel_err") is None and "indices_ok" not in r:
        return "-"
    text = fmt(r.get("rel_err"), ".1e")
    if r.get("indices_ok") is False:
        text += " idx"
    return text + (" !" if r.get("suspect") else "")


_time_cell = functools.partial(harness.time_cell, spec=".4f")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(meta: dict, layers: list[Layer], results: list[dict], summary: list[dict]) -> str:
    nets = harness.net_names(layers)
    copy = (f"{meta['copy_gbps']:.1f} GB/s ({meta['copy_bytes'] / 2 ** 30:g} GiB moved by dst.copy_(src) of "
            f"{meta['copy_bytes'] / 2 ** 31:g} GiB, {meta['copy_ms']:.3f} ms)" if meta.get("copy_gbps")
            else f"not measured: {meta.get('copy_error')}")
    parts = harness.report_head("Pooling benchmark", meta, [
        "- torch: " + ("ATen's CUDA kernels" if meta["gpu"] else "ATen's CPU kernels")
        + " (F.max_pool2d(return_indices=True), F.avg_pool2d, F.adaptive_avg_pool2d; "
          "aten.max_pool2d_with_indices_backward, aten.avg_pool2d_backward, aten._adaptive_avg_pool2d_backward); "
          "the backward ops of torch and the backends get the same grad_output and torch's indices",
        f"- copy bandwidth: {copy}",
        "- MB = least bytes moved (forward: input + output + int64 indices for max; backward: grad_output + indices "
        "+ grad_input), counted the same for torch; GB/s = MB / time; copy = GB/s / copy bandwidth",
        harness.speedup_note(SUSPECT_ERROR)
        + "; idx: a max pooling index that does not point at its window's maximum",
        f"- targets: speedup >= {TARGET_SPEEDUP:g} on every case; >= {100 * TARGET_COPY_FRACTION:.0f}% of copy "
        f"bandwidth on the large cases (>= {LARGE_BYTES / 2 ** 20:g} MiB moved)",
    ])
    parts += harness.summary_section(
        summary, nets, ["min speedup (layer)", "speedup >= 1", "large >= 80% copy", "min copy (large)", "max err"],
        lambda s: [f"{fmt(s['min_speedup'], '.2f')} ({s['min_speedup_layer'] or '-'})",
                   f"{s['speedup_target_met']}/{s['measured']}",
                   f"{s['large_copy_target_met']}/{s['large_cases']}", _percent(s["large_min_copy_fraction"]),
                   fmt(s["max_rel_err"], ".1e") + (f" ({s['indices_wrong']} idx)" if s["indices_wrong"] else "")])

    rows = [[layer.id, " ".join(layer.layers), layer.C, f"{layer.H}x{layer.W}", layer.pool.describe(),
             "{}x{}".format(*layer.out_hw)] for layer in layers]
    parts += ["## Layers", harness.markdown_table(["id", "layers", "C", "HxW", "pooling", "PxQ"], rows,
                                                  [False, False, True, True, False, True])]

    parts += harness.results_sections(
        results, meta["backends"],
        ["MB", "torch ms", "torch GB/s", "torch copy"],
        lambda case, t: [fmt(t["bytes"] / 1e6, ".3g"), _time_cell(t), fmt(t.get("gbps"), ".3g"),
                         _percent(t.get("copy_fraction"))],
        ["ms", "GB/s", "copy", "speedup", "err"],
        lambda r: [_time_cell(r), fmt(r.get("gbps"), ".3g"), _percent(r.get("copy_fraction")),
                   fmt(r.get("speedup"), ".3g"), _err_cell(r)])
    return "\n\n".join(parts)


# ---- main ----------------------------------------------------------------------------------


def _rate_text(r: dict) -> str:
    return f" ms {r['gbps']:.3g} GB/s" if "gbps" in r else ""


def main(argv: list[str] | None = None) -> int:
    args, device = harness.start(__doc__, argv)
    layers, batches, dtypes = harness.plan(args, Layer, *SUITES[device.type])
    ours, left_out = harness.usable_backends(device, pool_ops, _probe)
    copy = copy_bandwidth(device)

    meta = harness.metadata(device) | copy | {
        "cnnkernels": cnnkernels.build_info(), "backends": list(ours), "left_out": left_out,
        "layers_measured": len(layers), "batches": batches, "dtypes": dtypes, "large_bytes": LARGE_BYTES,
        "target_copy_fraction": TARGET_COPY_FRACTION, "target_speedup": TARGET_SPEEDUP, "stopped_early": None,
    }
    harness.announce("pooling benchmark", meta)
    print(f"copy bandwidth: {fmt(copy.get('copy_gbps'), '.1f')} GB/s" + (f" ({copy['copy_error']})"
                                                                          if "copy_error" in copy else ""))
    return harness.run_suite(
        args, FAMILY, meta, layers, batches, dtypes,
        functools.partial(run_case, ours=ours, device=device, copy_gbps=copy.get("copy_gbps")),
        lambda layers, results: summarize(layers, results, list(ours)), markdown,
        functools.partial(harness.progress, time_cell=_time_cell, err_cell=_err_cell, rate=_rate_text),
        layer_data=lambda layer: asdict(layer) | {"out_hw": list(layer.out_hw)})

if __name__ == "__main__":
    sys.exit(main())
