"""conv2d benchmark: forward, backward-input and backward-weight, each timed on its own, against torch.

    python -m benchmarks.bench_conv [--out DIR] [--quick] [--batch 32 128] [--dtypes bf16 fp16 fp32]
                                    [--max-minutes M]

With a CUDA GPU: every distinct conv layer of ResNet-50, VGG-16 and MobileNet v1 (224x224 input;
MobileNet's depthwise 3x3 layers have groups = channels) at batch 32 and 128, in bf16 and fp16
channels_last and fp32 NCHW. torch means cuDNN: F.conv2d for the
forward pass and aten.convolution_backward asked for one gradient only for each backward pass.
It is compared with each of our GPU backends ("cuda", "triton") that exists and runs there.

Without one: a few small LeNet-5, ResNet-like and depthwise layers at batch 2 and 8, fp32 NCHW; our "cpu"
backend (and "triton" when TRITON_INTERPRET=1) against torch's CPU convolution.

Per case: time (ms), TFLOP/s (2*N*K*P*Q*(C/groups)*R*S flops for each of the three ops: they
are the same GEMM volume), torch time / backend time, and the backend result's largest difference from
torch's relative to torch's largest magnitude, so that a fast but wrong kernel shows. Summary:
geometric means of torch/backend per (backend, op, dtype, batch), over all layers and per net.
Results go to <out>/<device>-conv.json and .md, rewritten after every case. The exit status is 1
when a measurement failed (other than out of memory or an op a backend does not implement), a
result is suspect, or the GPU broke down; 0 otherwise, also when --max-minutes cut the run short.
"""
from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import cnnkernels
from benchmarks import harness
from benchmarks.harness import fmt
from cnnkernels.ops import conv as conv_ops

FAMILY = "conv"
OPS = ("forward", "backward_input", "backward_weight")

# ---- layer tables --------------------------------------------------------------------------
# Each table lists a net's distinct conv geometries, written out by hand, with the layers (named
# as in torchvision's state_dict) that have it; "layer2.1-3.conv2" is conv2 of blocks 1 to 3.
# Every conv here is square, dilation 1, and runs without bias: ResNet's and MobileNet's convs
# have none (BatchNorm follows), and VGG's bias add is not the work being compared. A row may end
# with its groups (default 1).
#
#   (layers,                                   C,    K,   H,   W, kernel, stride, padding[, groups])

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

# MobileNet v1 (Howard et al. 2017, Table 1; torchvision has no v1, so layers are named as in the
# paper's rows: conv_dw_i is the i-th depthwise 3x3, groups = C, and conv_pw_i the 1x1 after it).
MOBILENET_V1 = (
    ("conv1",                                      3,   32, 224, 224, 3, 2, 1),
    ("conv_dw_1",                                 32,   32, 112, 112, 3, 1, 1,   32),
    ("conv_pw_1",                                 32,   64, 112, 112, 1, 1, 0),
    ("conv_dw_2",                                 64,   64, 112, 112, 3, 2, 1,   64),
    ("conv_pw_2",                                 64,  128,  56,  56, 1, 1, 0),
    ("conv_dw_3",                                128,  128,  56,  56, 3, 1, 1,  128),
    ("conv_pw_3",                                128,  128,  56,  56, 1, 1, 0),
    ("conv_dw_4",                                128,  128,  56,  56, 3, 2, 1,  128),
    ("conv_pw_4",                                128,  256,  28,  28, 1, 1, 0),
    ("conv_dw_5",                                256,  256,  28,  28, 3, 1, 1,  256),
    ("conv_pw_5",                                256,  256,  28,  28, 1, 1, 0),
    ("conv_dw_6",                                256,  256,  28,  28, 3, 2, 1,  256),
    ("conv_pw_6",                                256,  512,  14,  14, 1, 1, 0),
    ("conv_dw_7-11",                             512,  512,  14,  14, 3, 1, 1,  512),
    ("conv_pw_7-11",                             512,  512,  14,  14, 1, 1, 0),
    ("conv_dw_12",                               512,  512,  14,  14, 3, 2, 1,  512),
    ("conv_pw_12",                               512, 1024,   7,   7, 1, 1, 0),
    ("conv_dw_13",                              1024, 1024,   7,   7, 3, 1, 1, 1024),
    ("conv_pw_13",                              1024, 1024,   7,   7, 1, 1, 0),
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
DEPTHWISE_LIKE = (
    ("dw3x3",                                     64,   64,  16,  16, 3, 1, 1,   64),
    ("dw3x3/2",                                   64,   64,  16,  16, 3, 2, 1,   64),
)

# net name -> (short prefix for layer ids, table)
GPU_NETS = {"resnet50": ("r50", RESNET50), "vgg16": ("vgg16", VGG16), "mobilenet_v1": ("mbv1", MOBILENET_V1)}
CPU_NETS = {"lenet5": ("lenet5", LENET5), "resnet-like": ("rn", RESNET_LIKE), "depthwise-like": ("dw", DEPTHWISE_LIKE)}
# --quick: one layer of each kind (stem, 3x3, strided 3x3, 1x1, strided 1x1, VGG 3x3, depthwise 3x3).
GPU_QUICK = ("resnet50:conv1", "resnet50:layer1.0-2.conv2", "resnet50:layer3.0.conv2", "resnet50:layer3.0-5.conv3",
             "resnet50:layer3.0.downsample.0", "vgg16:features.10", "mobilenet_v1:conv_dw_5")
CPU_QUICK = ("lenet5:c3", "resnet-like:3x3/2", "depthwise-like:dw3x3")

GPU_DEFAULTS = {"batch": [32, 128], "quick_batch": [32], "dtypes": ["bf16", "fp16", "fp32"]}
CPU_DEFAULTS = {"batch": [2, 8], "quick_batch": [2], "dtypes": ["fp32"]}
# device type -> (nets, --quick layers, defaults): what runs there.
SUITES = {"cuda": (GPU_NETS, GPU_QUICK, GPU_DEFAULTS), "cpu": (CPU_NETS, CPU_QUICK, CPU_DEFAULTS)}

# A relative error above this (per dtype) marks a result as suspect: far beyond rounding (bf16
# keeps 8 significant bits, fp16 11, fp32 with TF32 11), well below a wrong result's O(1).
SUSPECT_ERROR = {"bf16": 5e-2, "fp16": 1e-2, "fp32": 1e-2}


@dataclass(frozen=True)
class Layer(harness.NetLayer):
    """One distinct conv geometry (after id, layers, nets: see harness.NetLayer)."""

    C: int
    K: int
    H: int
    W: int
    kernel: int
    stride: int
    padding: int
    groups: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((n + 2 * self.padding - self.kernel) // self.stride + 1 for n in (self.H, self.W))

    def gflop(self, batch: int) -> float:
        """2*N*K*P*Q*(C/groups)*R*S / 1e9: the multiply-adds of any of the three ops."""
        p, q = self.out_hw
        return 2 * batch * self.K * p * q * (self.C // self.groups) * self.kernel * self.kernel / 1e9


# ---- backends ------------------------------------------------------------------------------


def _probe(ops: conv_ops.Conv2dOps, device: torch.device) -> None:
    """A small forward call: does this backend run on this device at all?"""
    x = torch.randn(1, 8, 6, 6, device=device)
    w = torch.randn(4, 8, 3, 3, device=device)
    ops.forward(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)


# ---- one case ------------------------------------------------------------------------------


def _inputs(layer: Layer, batch: int, dtype: torch.dtype, fmt_: torch.memory_format, device: torch.device):
    """Input, weight (scaled so outputs are O(1), as after Kaiming init) and output gradient."""
    p, q = layer.out_hw

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).contiguous(memory_format=fmt_)

    x = randn(batch, layer.C, layer.H, layer.W)
    fan_in = layer.C // layer.groups * layer.kernel ** 2
    w = randn(layer.K, layer.C // layer.groups, layer.kernel, layer.kernel, scale=1 / math.sqrt(fan_in))
    g = randn(batch, layer.K, p, q)
    return x, w, g


def _torch_fns(layer: Layer, x, w, g) -> dict[str, Callable]:
    stride, padding = [layer.stride] * 2, [layer.padding] * 2

    def backward(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, stride, padding, [1, 1], False, [0, 0],
                                                   layer.groups, mask)

    return {
        "forward": lambda: F.conv2d(x, w, None, stride, padding, groups=layer.groups),
        "backward_input": lambda: backward([True, False, False])[0],
        "backward_weight": lambda: backward([False, True, False])[1],
    }


def _backend_fns(ops: conv_ops.Conv2dOps, layer: Layer, x, w, g) -> dict[str, Callable]:
    stride, padding, dilation, groups = [layer.stride] * 2, [layer.padding] * 4, [1, 1], layer.groups
    return {
        "forward": lambda: ops.forward(x, w, None, stride, padding, dilation, groups),
        "backward_input": lambda: ops.backward_input(g, w, list(x.shape), stride, padding, dilation, groups),
        "backward_weight": lambda: ops.backward_weight(g, x, list(w.shape), stride, padding, dilation, groups),
    }


def _measure_ours(fn: Callable[[], torch.Tensor], device: torch.device, reference: torch.Tensor | None,
                  inputs: tuple, op: str) -> dict:
    """Time of a backend's fn(), and its first result's error against torch's (when torch ran).
    That first call is also the warm-up where Triton compiles and autotunes. (The case's inputs
    and the op do not matter here.)"""
    out = fn()
    rel_err = None if reference is None else harness.relative_error(out, reference)
    del out  # timing allocates fresh outputs: this one need not hold memory meanwhile
    return harness.timings(fn, device) | {"rel_err": rel_err}


def _judge(dtype_name: str, outcome: dict) -> None:
    """Marks a backend's outcome suspect when its error is above SUSPECT_ERROR for the dtype."""
    if outcome.get("rel_err") is not None:
        # `not <=` so that NaN counts as suspect.
        outcome["suspect"] = not outcome["rel_err"] <= SUSPECT_ERROR[dtype_name]


def run_case(layer: Layer, batch: int, dtype_name: str, ours: dict, device: torch.device, results: list[dict]) -> None:
    """Measures the three ops of one (layer, batch, dtype), torch first, then each backend, and
    appends each result to `results` as it comes, so a run that dies mid-case keeps them."""
    dtype, memory_format = harness.DTYPES[dtype_name]
    gflop = layer.gflop(batch)

    def rate(result: dict) -> None:
        result["tflops"] = gflop / result["ms"]  # GFLOP per ms = TFLOP per s

    harness.compare_ops(
        OPS, ours, device, harness.recorder(results, layer.id, batch, dtype_name, rate=rate),
        make_inputs=lambda: _inputs(layer, batch, dtype, memory_format, device),
        torch_fns=lambda inputs: _torch_fns(layer, *inputs),
        backend_fns=lambda ops, inputs: _backend_fns(ops, layer, *inputs),
        measure_ours=_measure_ours,
        judge=functools.partial(_judge, dtype_name))


# ---- summary and tables --------------------------------------------------------------------


def summarize(layers: list[Layer], results: list[dict], backend_names: list[str]) -> list[dict]:
    """Per (backend, op, dtype, batch): how many layers ran, geometric mean of torch/backend over
    all layers and over each net's, and the largest relative error."""
    return [harness.speedup_summary(key, group, layers) | {"max_rel_err": harness.max_rel_err(group)}
            for key, group in harness.summary_groups(results, backend_names, OPS).items()]


def _err_cell(r: dict) -> str:
    if r.get("rel_err") is None:
        return "-"
    return fmt(r["rel_err"], ".1e") + (" !" if r.get("suspect") else "")


def _rate_cell(r: dict, scale: float) -> str:
    return fmt(r["tflops"] * scale, ".3g") if "tflops" in r else "-"


_time_cell = functools.partial(harness.time_cell, spec=".3f")


def markdown(meta: dict, layers: list[Layer], results: list[dict], summary: list[dict]) -> str:
    nets = harness.net_names(layers)
    # TFLOP/s suits a GPU; the CPU's rates read better in GFLOP/s.
    rate_unit, rate_scale = ("TFLOP/s", 1.0) if meta["gpu"] else ("GFLOP/s", 1e3)
    parts = harness.report_head("conv2d benchmark", meta, [
        "- torch: " + ("cuDNN (F.conv2d; aten.convolution_backward with one output_mask entry set per backward op)"
                       if meta["gpu"] else "ATen's CPU convolution (F.conv2d; aten.convolution_backward)"),
        harness.speedup_note(SUSPECT_ERROR),
    ])
    parts += harness.summary_section(summary, nets, ["max err"], lambda s: [fmt(s["max_rel_err"], ".1e")])

    rows = [[layer.id, " ".join(layer.layers), layer.C, layer.K, f"{layer.H}x{layer.W}",
             f"{layer.kernel}x{layer.kernel}/{layer.stride} p{layer.padding}", layer.groups,
             "{}x{}".format(*layer.out_hw)]
            for layer in layers]
    parts += ["## Layers", harness.markdown_table(["id", "layers", "C", "K", "HxW", "kernel/stride pad", "groups", "PxQ"],
                                                  rows, [False, False, True, True, True, False, True, True])]

    gflop = {layer.id: layer.gflop for layer in layers}
    parts += harness.results_sections(
        results, meta["backends"],
        ["GFLOP", "torch ms", f"torch {rate_unit}"],
        lambda case, t: [fmt(gflop[case[0]](case[1]), ".3g"), _time_cell(t), _rate_cell(t, rate_scale)],
        ["ms", rate_unit, "speedup", "err"],
        lambda r: [_time_cell(r), _rate_cell(r, rate_scale), fmt(r.get("speedup"), ".3g"), _err_cell(r)])
    return "\n\n".join(parts)


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args, device = harness.start(__doc__, argv)
    layers, batches, dtypes = harness.plan(args, Layer, *SUITES[device.type])
    ours, left_out = harness.usable_backends(device, conv_ops, _probe)

    meta = harness.metadata(device) | {
        "cnnkernels": cnnkernels.build_info(), "backends": list(ours), "left_out": left_out,
        "layers_measured": len(layers), "batches": batches, "dtypes": dtypes, "stopped_early": None,
    }
    harness.announce("conv2d benchmark", meta)
    return harness.run_suite(
        args, FAMILY, meta, layers, batches, dtypes, functools.partial(run_case, ours=ours, device=device),
        lambda layers, results: summarize(layers, results, list(ours)), markdown,
        functools.partial(harness.progress, time_cell=_time_cell, err_cell=_err_cell))

if __name__ == "__main__":
    sys.exit(main())
