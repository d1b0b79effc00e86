"""conv2d benchmark: forward, backward-input and backward-weight, each timed on its own, against torch.

    python -m benchmarks.bench_conv [--out DIR] [--quick] [--batch 32 128] [--dtypes bf16 fp16 fp32]
                                    [--max-minutes M]

With a CUDA GPU: every distinct conv layer of ResNet-50 and VGG-16 (224x224 input) at batch 32
and 128, in bf16 and fp16 channels_last and fp32 NCHW. torch means cuDNN: F.conv2d for the
forward pass and aten.convolution_backward asked for one gradient only for each backward pass.
It is compared with each of our GPU backends ("cuda", "triton") that exists and runs there.

Without one: a few small LeNet-5 and ResNet-like layers at batch 2 and 8, fp32 NCHW; our "cpu"
backend (and "triton" when TRITON_INTERPRET=1) against torch's CPU convolution.

Per case: time (ms), TFLOP/s (2*N*K*P*Q*C*R*S flops for each of the three ops: they are the
same GEMM volume), torch time / backend time, and the backend result's largest difference from
torch's relative to torch's largest magnitude, so that a fast but wrong kernel shows. Summary:
geometric means of torch/backend per (backend, op, dtype, batch), over all layers and per net.
Results go to <out>/<device>-conv.json and .md, rewritten after every case. The exit status is 1
when a measurement failed (other than out of memory or an op a backend does not implement), a
result is suspect, or the GPU broke down; 0 otherwise, also when --max-minutes cut the run short.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import cnnkernels
from benchmarks import harness
from benchmarks.harness import fmt
from cnnkernels.backend import triton_interpreted
from cnnkernels.ops import conv as conv_ops

FAMILY = "conv"
OPS = ("forward", "backward_input", "backward_weight")

# ---- layer tables --------------------------------------------------------------------------
# Each table lists a net's distinct conv geometries, written out by hand, with the layers (named
# as in torchvision's state_dict) that have it; "layer2.1-3.conv2" is conv2 of blocks 1 to 3.
# Every conv here is square, dilation 1, groups 1, and runs without bias: ResNet's convs have
# none (BatchNorm follows), and VGG's bias add is not the work being compared.
#
#   (layers,                                   C,    K,   H,   W, kernel, stride, padding)

# torchvision's ResNet-50 (v1.5): a stage's stride sits on the 3x3 of its first block and on
# that block's 1x1 downsample projection. layer1's downsample keeps the stride 1 of the stem's
# max-pool output and has conv3's geometry.
RESNET50 = (
    ("conv1",                                      3,   64, 224, 224, 7, 2, 3),
    ("layer1.0.conv1",                            64,   64,  56,  56, 1, 1, 0),
    ("layer1.0-2.conv2",                          64,   64,  56,  56, 3, 1, 1),
    ("layer1.0-2.conv3 layer1.0.downsample.0",    64,  256,  56,  56, 1, 1, 0),
    ("layer1.1-2.conv1",                         256,   64,  56,  56, 1, 1, 0),
    ("layer2.0.conv1",                           256,  128,  56,  56, 1, 1, 0),
    ("layer2.0.conv2",                           128,  128,  56,  56, 3, 2, 1),
    ("layer2.0-3.conv3",                         128,  512,  28,  28, 1, 1, 0),
    ("layer2.0.downsample.0",                    256,  512,  56,  56, 1, 2, 0),
    ("layer2.1-3.conv1",                         512,  128,  28,  28, 1, 1, 0),
    ("layer2.1-3.conv2",                         128,  128,  28,  28, 3, 1, 1),
    ("layer3.0.conv1",                           512,  256,  28,  28, 1, 1, 0),
    ("layer3.0.conv2",                           256,  256,  28,  28, 3, 2, 1),
    ("layer3.0-5.conv3",                         256, 1024,  14,  14, 1, 1, 0),
    ("layer3.0.downsample.0",                    512, 1024,  28,  28, 1, 2, 0),
    ("layer3.1-5.conv1",                        1024,  256,  14,  14, 1, 1, 0),
    ("layer3.1-5.conv2",                         256,  256,  14,  14, 3, 1, 1),
    ("layer4.0.conv1",                          1024,  512,  14,  14, 1, 1, 0),
    ("layer4.0.conv2",                           512,  512,  14,  14, 3, 2, 1),
    ("layer4.0-2.conv3",                         512, 2048,   7,   7, 1, 1, 0),
    ("layer4.0.downsample.0",                   1024, 2048,  14,  14, 1, 2, 0),
    ("layer4.1-2.conv1",                        2048,  512,   7,   7, 1, 1, 0),
    ("layer4.1-2.conv2",                         512,  512,   7,   7, 3, 1, 1),
)

# torchvision's VGG-16: the 13 3x3 convs of `features`, 9 distinct.
VGG16 = (
    ("features.0",                                 3,   64, 224, 224, 3, 1, 1),
    ("features.2",                                64,   64, 224, 224, 3, 1, 1),
    ("features.5",                                64,  128, 112, 112, 3, 1, 1),
    ("features.7",                               128,  128, 112, 112, 3, 1, 1),
    ("features.10",                              128,  256,  56,  56, 3, 1, 1),
    ("features.12 features.14",                  256,  256,  56,  56, 3, 1, 1),
    ("features.17",                              256,  512,  28,  28, 3, 1, 1),
    ("features.19 features.21",                  512,  512,  28,  28, 3, 1, 1),
    ("features.24 features.26 features.28",      512,  512,  14,  14, 3, 1, 1),
)

# CPU runs: small layers that the plain C++ loops finish quickly. LeNet-5's two convs, and one
# ResNet-style layer of each kind (stem, 3x3, strided 3x3, 1x1 expansion, strided 1x1 projection)
# at CIFAR-like sizes.
LENET5 = (
    ("c1",                                         1,    6,  32,  32, 5, 1, 0),
    ("c3",                                         6,   16,  14,  14, 5, 1, 0),
)
RESNET_LIKE = (
    ("stem",                                       3,   32,  64,  64, 7, 2, 3),
    ("3x3",                                       64,   64,  16,  16, 3, 1, 1),
    ("3x3/2",                                     64,  128,  16,  16, 3, 2, 1),
    ("1x1",                                       64,  256,  16,  16, 1, 1, 0),
    ("1x1/2",                                     64,  128,  16,  16, 1, 2, 0),
)

# net name -> (short prefix for layer ids, table)
GPU_NETS = {"resnet50": ("r50", RESNET50), "vgg16": ("vgg16", VGG16)}
CPU_NETS = {"lenet5": ("lenet5", LENET5), "resnet-like": ("rn", RESNET_LIKE)}
# --quick: one layer of each kind (stem, 3x3, strided 3x3, 1x1, strided 1x1, VGG 3x3).
GPU_QUICK = ("resnet50:conv1", "resnet50:layer1.0-2.conv2", "resnet50:layer3.0.conv2", "resnet50:layer3.0-5.conv3",
             "resnet50:layer3.0.downsample.0", "vgg16:features.10")
CPU_QUICK = ("lenet5:c3", "resnet-like:3x3/2")

GPU_DEFAULTS = {"batch": [32, 128], "quick_batch": [32], "dtypes": ["bf16", "fp16", "fp32"]}
CPU_DEFAULTS = {"batch": [2, 8], "quick_batch": [2], "dtypes": ["fp32"]}
GPU_BACKENDS = ("cuda", "triton")

# A relative error above this (per dtype) marks a result as suspect: far beyond rounding (bf16
# keeps 8 significant bits, fp16 11, fp32 with TF32 11), well below a wrong result's O(1).
SUSPECT_ERROR = {"bf16": 5e-2, "fp16": 1e-2, "fp32": 1e-2}

# Errors that say what a backend lacks (a kernel not written yet, memory too small for the
# shape) rather than that something is broken: shown, but not a failure of the run.
EXPECTED_ERRORS = ("OutOfMemoryError", "NotImplementedError")


@dataclass(frozen=True)
class Layer:
    """One distinct conv geometry and the layers that have it ("net:layer" names)."""

    id: str
    layers: tuple[str, ...]
    nets: tuple[str, ...]
    C: int
    K: int
    H: int
    W: int
    kernel: int
    stride: int
    padding: int

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((n + 2 * self.padding - self.kernel) // self.stride + 1 for n in (self.H, self.W))

    def gflop(self, batch: int) -> float:
        """2*N*K*P*Q*C*R*S / 1e9: the multiply-adds of any of the three ops (groups = 1)."""
        p, q = self.out_hw
        return 2 * batch * self.K * p * q * self.C * self.kernel * self.kernel / 1e9


def distinct_layers(nets: dict[str, tuple[str, tuple]]) -> list[Layer]:
    """The nets' layers, one entry per distinct geometry, in table order: a geometry shared by
    two nets is measured once and counts for both."""
    by_geometry: dict[tuple[int, ...], Layer] = {}
    for net, (prefix, table) in nets.items():
        for i, (names, *geometry) in enumerate(table, 1):
            layers = tuple(f"{net}:{name}" for name in names.split())
            seen = by_geometry.get(tuple(geometry))
            if seen is None:
                by_geometry[tuple(geometry)] = Layer(f"{prefix}-{i:02d}", layers, (net,), *geometry)
            else:
                by_geometry[tuple(geometry)] = Layer(seen.id, (*seen.layers, *layers), (*seen.nets, net), *geometry)
    return list(by_geometry.values())


def _quick(layers: list[Layer], names: tuple[str, ...]) -> list[Layer]:
    chosen = [layer for layer in layers if set(layer.layers) & set(names)]
    found = {name for layer in chosen for name in layer.layers}
    if missing := set(names) - found:
        raise ValueError(f"--quick names layers that are not in the tables: {sorted(missing)}")
    return chosen


# ---- backends ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error_text(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def backends(device: torch.device) -> tuple[dict[str, conv_ops.Conv2dOps], dict[str, str]]:
    """Our backends to time on `device`, and for each candidate left out, why."""
    candidates = GPU_BACKENDS if device.type == "cuda" else ("cpu", "triton")
    usable, left_out = {}, {}
    for name in candidates:
        ops = conv_ops.BACKEND_OPS.get(name)
        if ops is None:
            left_out[name] = f"not in cnnkernels.ops.conv.BACKEND_OPS (which has {', '.join(conv_ops.BACKEND_OPS)})"
            continue
        if device.type == "cpu" and name == "triton" and not triton_interpreted():
            left_out[name] = "runs on the CPU only in the interpreter (TRITON_INTERPRET=1)"
            continue
        try:  # a small forward call: does this backend run on this device at all?
            x = torch.randn(1, 8, 6, 6, device=device)
            w = torch.randn(4, 8, 3, 3, device=device)
            ops.forward(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
            _sync(device)
        except Exception as e:  # any failure leaves the backend out, with its reason
            left_out[name] = _error_text(e)
        else:
            usable[name] = ops
    return usable, left_out


# ---- one case ------------------------------------------------------------------------------


class DeviceLost(RuntimeError):
    """The CUDA context is broken (e.g. a kernel's illegal memory access): nothing after can run."""


def _attempt(action: Callable[[], dict], device: torch.device) -> dict:
    """action()'s fields, or {"error", "error_type"} when it fails; raises DeviceLost when the
    failure broke the device for everything after it."""
    try:
        return action()
    except torch.cuda.OutOfMemoryError:
        pass  # the cache is emptied below, once the exception no longer holds the failed frames' tensors
    except Exception as e:  # a failing kernel is a result, not the end of the run
        error = {"error": _error_text(e), "error_type": type(e).__name__}
        try:
            _sync(device)
        except Exception as sync_error:
            raise DeviceLost(f"{error['error']}; then synchronize failed: {_error_text(sync_error)}") from e
        return error
    torch.cuda.empty_cache()
    return {"error": "CUDA out of memory", "error_type": "OutOfMemoryError"}


def _inputs(layer: Layer, batch: int, dtype: torch.dtype, fmt_: torch.memory_format, device: torch.device):
    """Input, weight (scaled so outputs are O(1), as after Kaiming init) and output gradient."""
    p, q = layer.out_hw

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).contiguous(memory_format=fmt_)

    x = randn(batch, layer.C, layer.H, layer.W)
    w = randn(layer.K, layer.C, layer.kernel, layer.kernel, scale=1 / math.sqrt(layer.C * layer.kernel ** 2))
    g = randn(batch, layer.K, p, q)
    return x, w, g


def _torch_fns(layer: Layer, x, w, g) -> dict[str, Callable]:
    stride, padding = [layer.stride] * 2, [layer.padding] * 2

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, mask)

    return {
        "forward": lambda: F.conv2d(x, w, None, stride, padding),
        "backward_input": lambda: backward([True, False, False])[0],
        "backward_weight": lambda: backward([False, True, False])[1],
    }


def _backend_fns(ops: conv_ops.Conv2dOps, layer: Layer, x, w, g) -> dict[str, Callable]:
    stride, padding, dilation = [layer.stride] * 2, [layer.padding] * 4, [1, 1]
    return {
        "forward": lambda: ops.forward(x, w, None, stride, padding, dilation, 1),
        "backward_input": lambda: ops.backward_input(g, w, list(x.shape), stride, padding, dilation, 1),
        "backward_weight": lambda: ops.backward_weight(g, x, list(w.shape), stride, padding, dilation, 1),
    }


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.shape != ref.shape or out.dtype != ref.dtype:
        raise ValueError(f"returned {out.dtype} {list(out.shape)}, torch {ref.dtype} {list(ref.shape)}")
    ref = ref.float()
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def _measure_torch(fn: Callable[[], torch.Tensor], device: torch.device) -> dict:
    """Time of torch's fn(), and its output ("out"): the reference for the backends."""
    return {"out": fn(), "ms": harness.time_ms(fn, device)}


def _measure_ours(fn: Callable[[], torch.Tensor], device: torch.device, reference: torch.Tensor | None) -> dict:
    """Time of a backend's fn(), and its first result's error against torch's (when torch ran).
    That first call is also the warm-up where Triton compiles and autotunes."""
    out = fn()
    rel_err = None if reference is None else _relative_error(out, reference)
    del out  # timing allocates fresh outputs: this one need not hold memory meanwhile
    return {"ms": harness.time_ms(fn, device), "rel_err": rel_err}


def run_case(layer: Layer, batch: int, dtype_name: str, ours: dict, device: torch.device, results: list[dict]) -> None:
    """Measures the three ops of one (layer, batch, dtype), torch first, then each backend, and
    appends each result to `results` as it comes, so a run that dies mid-case keeps them."""
    dtype, memory_format = harness.DTYPES[dtype_name]
    case = {"layer": layer.id, "batch": batch, "dtype": dtype_name, "layout": harness.LAYOUT_NAMES[memory_format]}
    gflop = layer.gflop(batch)

    def record(op: str, impl: str, outcome: dict) -> dict:
        result = case | {"op": op, "impl": impl} | outcome
        if "ms" in result:
            result["tflops"] = gflop / result["ms"]  # GFLOP per ms = TFLOP per s
        results.append(result)
        return result

    made = _attempt(lambda: {"tensors": _inputs(layer, batch, dtype, memory_format, device)}, device)
    if "error" in made:
        for op in OPS:
            for impl in ["torch", *ours]:
                record(op, impl, made)
        return
    x, w, g = made.pop("tensors")
    torch_fns = _torch_fns(layer, x, w, g)
    our_fns = {name: _backend_fns(ops, layer, x, w, g) for name, ops in ours.items()}
    for op in OPS:
        outcome = _attempt(functools.partial(_measure_torch, torch_fns[op], device), device)
        reference = outcome.pop("out", None)
        torch_result = record(op, "torch", outcome)
        for name, fns in our_fns.items():
            outcome = _attempt(functools.partial(_measure_ours, fns[op], device, reference), device)
            if "ms" in torch_result and "ms" in outcome:
                outcome["speedup"] = torch_result["ms"] / outcome["ms"]
            if outcome.get("rel_err") is not None:
                # `not <=` so that NaN counts as suspect.
                outcome["suspect"] = not outcome["rel_err"] <= SUSPECT_ERROR[dtype_name]
            record(op, name, outcome)
        del reference  # torch's output: freed before the next op allocates its own


# ---- summary and tables --------------------------------------------------------------------


def summarize(layers: list[Layer], results: list[dict], backend_names: list[str]) -> list[dict]:
    """Per (backend, op, dtype, batch): how many layers ran, geometric mean of torch/backend over
    all layers and over each net's, and the largest relative error."""
    nets = sorted({net for layer in layers for net in layer.nets})
    nets_of = {layer.id: layer.nets for layer in layers}
    keys = sorted({(r["impl"], r["op"], r["dtype"], r["batch"]) for r in results if r["impl"] in backend_names},
                  key=lambda k: (backend_names.index(k[0]), OPS.index(k[1]), k[2], k[3]))
    rows = []
    for impl, op, dtype, batch in keys:
        group = [r for r in results if (r["impl"], r["op"], r["dtype"], r["batch"]) == (impl, op, dtype, batch)]
        errors = [r["rel_err"] for r in group if r.get("rel_err") is not None]
        rows.append({
            "impl": impl, "op": op, "dtype": dtype, "batch": batch,
            "measured": sum("speedup" in r for r in group), "cases": len(group),
            "geomean_speedup": harness.geomean(r.get("speedup") for r in group),
            "geomean_speedup_per_net": {
                net: harness.geomean(r.get("speedup") for r in group if net in nets_of[r["layer"]]) for net in nets
            },
            # NaN sorts nowhere: report it whenever it occurs.
            "max_rel_err": next((e for e in errors if math.isnan(e)), max(errors, default=None)),
        })
    return rows


def _err_cell(r: dict) -> str:
    if r.get("rel_err") is None:
        return "-"
    return fmt(r["rel_err"], ".1e") + (" !" if r.get("suspect") else "")


def _rate_cell(r: dict, scale: float) -> str:
    return fmt(r["tflops"] * scale, ".3g") if "tflops" in r else "-"


def _time_cell(r: dict) -> str:
    if "error" in r:
        return {"OutOfMemoryError": "OOM", "NotImplementedError": "n/a"}.get(r["error_type"], "error")
    return fmt(r.get("ms"), ".3f")


def markdown(meta: dict, layers: list[Layer], results: list[dict], summary: list[dict]) -> str:
    names = meta["backends"]
    nets = sorted({net for layer in layers for net in layer.nets})
    # TFLOP/s suits a GPU; the CPU's rates read better in GFLOP/s.
    rate_unit, rate_scale = ("TFLOP/s", 1.0) if meta["gpu"] else ("GFLOP/s", 1e3)
    suspect = ", ".join(f"{k} {v:g}" for k, v in SUSPECT_ERROR.items())
    notes = [
        harness.describe(meta),
        f"- backends measured: {', '.join(names) or 'none'}"
        + "".join(f"; {name} left out: {why}" for name, why in meta["left_out"].items()),
        "- torch: " + ("cuDNN (F.conv2d; aten.convolution_backward with one output_mask entry set per backward op)"
                       if meta["gpu"] else "ATen's CPU convolution (F.conv2d; aten.convolution_backward)"),
        "- speedup = torch time / backend time (above 1: faster than torch); err = max |backend - torch| / "
        f"max |torch|, marked ! above {suspect}",
    ]
    if meta.get("stopped_early"):
        notes.append(f"- **incomplete**: {meta['stopped_early']}")
    parts = [f"# conv2d benchmark: {meta['device']}", "\n".join(notes)]

    if summary:
        headers = ["backend", "op", "dtype", "N", "layers", "geomean speedup", *nets, "max err"]
        rows = [[s["impl"], s["op"], s["dtype"], s["batch"], f"{s['measured']}/{s['cases']}",
                 fmt(s["geomean_speedup"], ".2f")] + [fmt(s["geomean_speedup_per_net"][net], ".2f") for net in nets]
                + [fmt(s["max_rel_err"], ".1e")] for s in summary]
        parts += ["## Summary: geometric mean of torch time / backend time",
                  harness.markdown_table(headers, rows, [False] * 5 + [True] * (len(nets) + 2))]

    rows = [[layer.id, " ".join(layer.layers), layer.C, layer.K, f"{layer.H}x{layer.W}",
             f"{layer.kernel}x{layer.kernel}/{layer.stride} p{layer.padding}", "{}x{}".format(*layer.out_hw)]
            for layer in layers]
    parts += ["## Layers", harness.markdown_table(["id", "layers", "C", "K", "HxW", "kernel/stride pad", "PxQ"],
                                                  rows, [False, False, True, True, True, False, True])]

    by_key = {(r["layer"], r["batch"], r["dtype"], r["op"], r["impl"]): r for r in results}
    gflop = {layer.id: layer.gflop for layer in layers}
    headers = ["layer", "N", "dtype", "op", "GFLOP", "torch ms", f"torch {rate_unit}"]
    for name in names:
        headers += [f"{name} ms", f"{name} {rate_unit}", f"{name} speedup", f"{name} err"]
    rows = []
    for case in dict.fromkeys((r["layer"], r["batch"], r["dtype"], r["op"]) for r in results):
        t = by_key[(*case, "torch")]
        row = [*case, fmt(gflop[case[0]](case[1]), ".3g"), _time_cell(t), _rate_cell(t, rate_scale)]
        for name in names:
            r = by_key.get((*case, name), {})
            row += [_time_cell(r), _rate_cell(r, rate_scale), fmt(r.get("speedup"), ".3g"), _err_cell(r)]
        rows.append(row)
    right = [False, True, False, False] + [True] * (len(headers) - 4)
    parts += ["## Results", harness.markdown_table(headers, rows, right)]

    failed = [r for r in results if "error" in r]
    if failed:
        rows = [[r["layer"], r["batch"], r["dtype"], r["op"], r["impl"], r["error"].replace("|", "/")] for r in failed]
        parts += ["## Errors", harness.markdown_table(["layer", "N", "dtype", "op", "impl", "error"], rows,
                                                      [False, True, False, False, False, False])]
    return "\n\n".join(parts)


# ---- main ----------------------------------------------------------------------------------


def _progress(prefix: str, results: list[dict]) -> str:
    """One log line per op of a case: each implementation's time, speedup and error."""
    lines: dict[str, list[str]] = {}
    for r in results:
        text = f"{r['impl']} {_time_cell(r)}"
        if "speedup" in r:
            text += f" ({r['speedup']:.3g}x, err {_err_cell(r)})"
        lines.setdefault(f"{prefix} {r['layer']} N={r['batch']} {r['dtype']} {r['op']}:", []).append(text)
    return "\n".join(f"{key} {' | '.join(cells)}" for key, cells in lines.items())


def main(argv: list[str] | None = None) -> int:
    parser = harness.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    device = harness.default_device()
    harness.prepare(device)
    torch.manual_seed(0)

    gpu = device.type == "cuda"
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    layers = distinct_layers(GPU_NETS if gpu else CPU_NETS)
    if args.quick:
        layers = _quick(layers, GPU_QUICK if gpu else CPU_QUICK)
    batches = args.batch or defaults["quick_batch" if args.quick else "batch"]
    dtypes = args.dtypes or defaults["dtypes"]
    ours, left_out = backends(device)

    meta = harness.metadata(device) | {
        "cnnkernels": cnnkernels.build_info(), "backends": list(ours), "left_out": left_out,
        "layers_measured": len(layers), "batches": batches, "dtypes": dtypes, "stopped_early": None,
    }
    print(f"conv2d benchmark on {meta['device']}\n{harness.describe(meta)}")
    print(f"backends: {', '.join(ours) or 'none'}" + "".join(f"; {k} left out: {v}" for k, v in left_out.items()))

    deadline = harness.Deadline(args.max_minutes)
    cases = [(layer, batch, dtype) for layer in layers for batch in batches for dtype in dtypes]
    results: list[dict] = []

    def save() -> tuple[str, tuple]:
        summary = summarize(layers, results, list(ours))
        data = {"layers": [asdict(layer) for layer in layers], "summary": summary, "results": results}
        text = markdown(meta, layers, results, summary)
        return text, harness.write_results(args.out, FAMILY, meta, data, text)

    device_lost = False
    for done, (layer, batch, dtype) in enumerate(cases, 1):
        if deadline.expired():
            meta["stopped_early"] = (f"time budget of {args.max_minutes:g} min reached after {done - 1} "
                                     f"of {len(cases)} cases")
            break
        first = len(results)
        try:
            run_case(layer, batch, dtype, ours, device, results)
        except DeviceLost as e:
            meta["stopped_early"] = f"the GPU failed at {layer.id} N={batch} {dtype}, ending the run: {e}"
            device_lost = True
        print(_progress(f"[{done}/{len(cases)}]", results[first:]), flush=True)
        save()
        if device_lost:
            break

    text, (json_path, md_path) = save()
    print(f"\n{text}\n\nwrote {json_path} and {md_path}")
    failures = sum("error" in r and r["error_type"] not in EXPECTED_ERRORS for r in results)
    suspects = sum(bool(r.get("suspect")) for r in results)
    if failures or suspects:
        print(f"{failures} measurements failed (see Errors above), {suspects} results suspect (marked !)",
              file=sys.stderr)
    return 1 if failures or suspects or device_lost else 0


if __name__ == "__main__":
    sys.exit(main())
