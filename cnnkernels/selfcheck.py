"""Self-check: every operator on every backend available here, against torch.

One row per operator and backend: the largest absolute difference from torch over a few
shapes (float32), and the time of our kernel against torch's on the same shapes and machine.

    python -m cnnkernels.selfcheck
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as TF

from cnnkernels.backend import BackendError, select
from cnnkernels.ops import conv as conv_ops
from cnnkernels.ops import norm as norm_ops
from cnnkernels.ops import pool as pool_ops


@dataclass
class Row:
    op: str
    backend: str
    device: str
    max_abs_err: float
    ours_ms: float
    torch_ms: float


# (name, N, C, H, W, K, kernel, stride, padding): a LeNet-5 layer, a ResNet 3x3 layer, a
# strided 7x7 stem and a 1x1 projection.
CONV_SHAPES = [
    ("lenet-c3", 64, 6, 14, 14, 16, 5, 1, 0),
    ("resnet-3x3", 8, 64, 28, 28, 64, 3, 1, 1),
    ("stem-7x7/2", 4, 3, 64, 64, 16, 7, 2, 3),
    ("proj-1x1/2", 8, 64, 28, 28, 128, 1, 2, 0),
]


def _time_ms(fn: Callable[[], object], device: torch.device, min_seconds: float = 0.2) -> float:
    """Median wall time of fn() in milliseconds, after a warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < 50):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2]


def _conv_rows(device: torch.device, backend: str) -> list[Row]:
    ops = conv_ops.BACKEND_OPS[backend]
    names = ["conv2d forward", "conv2d backward-input", "conv2d backward-weight", "conv2d backward-bias"]
    err = dict.fromkeys(names, 0.0)
    ours = dict.fromkeys(names, 0.0)
    theirs = dict.fromkeys(names, 0.0)
    for _, n, c, h, w, k, r, s, p in CONV_SHAPES:
        x = torch.randn(n, c, h, w, device=device)
        wt = torch.randn(k, c, r, r, device=device) / (c * r * r) ** 0.5
        b = torch.randn(k, device=device)
        conv = ([s, s], [p, p, p, p], [1, 1], 1)
        y = ops.forward(x, wt, b, *conv)
        g = torch.randn_like(y)

        def aten_backward(mask):
            return torch.ops.aten.convolution_backward(g, x, wt, [k], [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

        ref_gx, ref_gw, ref_gb = aten_backward([True, True, True])
        # torch's own kernels appear here only as the reference we are compared and timed against.
        cases = {
            "conv2d forward": (lambda: ops.forward(x, wt, b, *conv), lambda: TF.conv2d(x, wt, b, s, p), TF.conv2d(x, wt, b, s, p)),
            "conv2d backward-input": (lambda: ops.backward_input(g, wt, list(x.shape), *conv),
                                      lambda: aten_backward([True, False, False]), ref_gx),
            "conv2d backward-weight": (lambda: ops.backward_weight(g, x, list(wt.shape), *conv),
                                       lambda: aten_backward([False, True, False]), ref_gw),
            "conv2d backward-bias": (lambda: ops.backward_bias(g), lambda: aten_backward([False, False, True]), ref_gb),
        }
        for name, (our_fn, torch_fn, ref) in cases.items():
            err[name] = max(err[name], (our_fn() - ref).abs().max().item())
            ours[name] += _time_ms(our_fn, device)
            theirs[name] += _time_ms(torch_fn, device)
    return [Row(name, backend, device.type, err[name], ours[name], theirs[name]) for name in names]


# (name, N, C, H, W): a LeNet-5 map and a ResNet-50 stem output.
POOL_SHAPES = [("lenet-c1", 64, 6, 28, 28), ("resnet-stem", 8, 64, 112, 112)]


def _pool_rows(device: torch.device, backend: str) -> list[Row]:
    ops = pool_ops.BACKEND_OPS[backend]
    aten = torch.ops.aten
    rows = []
    for name, k, s, p in (("max_pool2d 3x3/2", 3, 2, 1), ("avg_pool2d 2x2/2", 2, 2, 0), ("adaptive_avg_pool2d 1x1", 0, 0, 0)):
        err = {"forward": 0.0, "backward": 0.0}
        ours = dict.fromkeys(err, 0.0)
        theirs = dict.fromkeys(err, 0.0)
        for _, n, c, h, w in POOL_SHAPES:
            x = torch.randn(n, c, h, w, device=device)
            if name.startswith("max"):
                fwd = lambda: ops.max_pool2d(x, [k, k], [s, s], [p, p], [1, 1], False)  # noqa: E731
                ref_fwd = lambda: aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p])  # noqa: E731
                (y, idx), (ry, ridx) = fwd(), ref_fwd()
                g = torch.randn_like(ry)
                bwd = lambda: ops.max_pool2d_backward(g, idx, list(x.shape), [k, k], [s, s], [p, p], [1, 1])  # noqa: E731
                ref_bwd = lambda: aten.max_pool2d_with_indices_backward(g, x, [k, k], [s, s], [p, p], [1, 1], False, ridx)  # noqa: E731
            elif name.startswith("avg"):
                fwd = lambda: ops.avg_pool2d(x, [k, k], [s, s], [p, p], False, True, None)  # noqa: E731
                ref_fwd = lambda: aten.avg_pool2d(x, [k, k], [s, s], [p, p])  # noqa: E731
                y, ry = fwd(), ref_fwd()
                g = torch.randn_like(ry)
                bwd = lambda: ops.avg_pool2d_backward(g, list(x.shape), [k, k], [s, s], [p, p], True, None)  # noqa: E731
                ref_bwd = lambda: aten.avg_pool2d_backward(g, x, [k, k], [s, s], [p, p], False, True, None)  # noqa: E731
            else:
                fwd = lambda: ops.adaptive_avg_pool2d(x, [1, 1])  # noqa: E731
                ref_fwd = lambda: aten._adaptive_avg_pool2d(x, [1, 1])  # noqa: E731
                y, ry = fwd(), ref_fwd()
                g = torch.randn_like(ry)
                bwd = lambda: ops.adaptive_avg_pool2d_backward(g, list(x.shape))  # noqa: E731
                ref_bwd = lambda: aten._adaptive_avg_pool2d_backward(g, x)  # noqa: E731
            out = fwd()
            err["forward"] = max(err["forward"], ((out[0] if isinstance(out, tuple) else out) - (ry if not isinstance(ry, tuple) else ry[0])).abs().max().item())
            err["backward"] = max(err["backward"], (bwd() - ref_bwd()).abs().max().item())
            for phase, (our_fn, torch_fn) in {"forward": (fwd, ref_fwd), "backward": (bwd, ref_bwd)}.items():
                ours[phase] += _time_ms(our_fn, device)
                theirs[phase] += _time_ms(torch_fn, device)
        rows += [Row(f"{name} {phase}", backend, device.type, err[phase], ours[phase], theirs[phase]) for phase in err]
    return rows


# (name, N, C, H, W): a ResNet-50 layer1 activation at a small batch.
NORM_SHAPE = ("resnet-layer1", 4, 64, 56, 56)


def _norm_rows(device: torch.device, backend: str) -> list[Row]:
    """The fused training forward of each normaliser and its backward operator, against torch's
    unfused sequence and autograd's backward of it (on a graph built once)."""
    ops = norm_ops.BACKEND_OPS[backend]
    x = torch.randn(NORM_SHAPE[1:], device=device)
    c = x.shape[1]
    wt, b = 1 + 0.1 * torch.randn(c, device=device), torch.randn(c, device=device)
    rows_x = x.permute(0, 2, 3, 1).contiguous()  # RMS norm over the channels of NHWC rows
    # torch's own functions appear here only as the reference we are compared and timed against.
    # name -> (input, our forward, our backward(grad, input, forward result), torch's sequence)
    cases = {
        "batch_norm+relu train": (
            x, lambda x: ops.batch_norm(x, wt, b, None, None, None, True, 0.1, 1e-5, "relu"),
            lambda g, x, out: ops.batch_norm_backward(g, x, wt, b, None, out[1], out[2], True, "relu")[0],
            lambda x: TF.relu(TF.batch_norm(x, None, None, wt, b, True))),
        "group_norm(32)+silu": (
            x, lambda x: ops.group_norm(x, wt, b, 32, 1e-5, "silu"),
            lambda g, x, out: ops.group_norm_backward(g, x, wt, b, out[1], out[2], 32, "silu")[0],
            lambda x: TF.silu(TF.group_norm(x, 32, wt, b))),
        "rms_norm": (
            rows_x, lambda x: ops.rms_norm(x, wt, 1, 1e-6),
            lambda g, x, out: ops.rms_norm_backward(g, x, wt, out[1], 1)[0],
            lambda x: TF.rms_norm(x, (c,), wt, 1e-6)),
        "local_response_norm": (
            x, lambda x: ops.local_response_norm(x, 5, 1e-4, 0.75, 2.0),
            lambda g, x, out: ops.local_response_norm_backward(g, x, 5, 1e-4, 0.75, 2.0),
            lambda x: TF.local_response_norm(x, 5, 1e-4, 0.75, 2.0)),
    }
    rows = []
    for name, (inp, forward, backward, sequence) in cases.items():
        g = torch.randn_like(inp)
        out = forward(inp)
        leaf = inp.detach().requires_grad_()
        ref = sequence(leaf)
        (ref_grad,) = torch.autograd.grad(ref, leaf, g, retain_graph=True)
        first = out[0] if isinstance(out, tuple) else out
        rows.append(Row(f"{name} forward", backend, device.type, (first - ref).abs().max().item(),
                        _time_ms(lambda: forward(inp), device), _time_ms(lambda: sequence(inp), device)))
        rows.append(Row(f"{name} backward", backend, device.type, (backward(g, inp, out) - ref_grad).abs().max().item(),
                        _time_ms(lambda: backward(g, inp, out), device),
                        _time_ms(lambda: torch.autograd.grad(ref, leaf, g, retain_graph=True), device)))
    return rows


FAMILIES = [("conv2d", conv_ops, _conv_rows), ("pooling", pool_ops, _pool_rows), ("normalisation", norm_ops, _norm_rows)]


def collect() -> list[Row]:
    """Rows for every operator family and every backend usable on this machine's devices."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for family, module, make_rows in FAMILIES:
        for device in devices:
            for backend in ("cpu", "cuda", "triton"):
                try:
                    select(family, device, module.IMPLEMENTED, backend)
                except BackendError:
                    continue
                rows += make_rows(device, backend)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}; torch {torch.__version__}"


def format_table(rows: list[Row]) -> str:
    header = f"| {'operator':<34} | {'backend':<7} | {'device':<6} | {'max abs err':>12} | {'ours ms':>9} | {'torch ms':>9} | {'torch/ours':>10} |"
    lines = [header, "|" + "|".join("-" * (len(col)) for col in header.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(
            f"| {r.op:<34} | {r.backend:<7} | {r.device:<6} | {r.max_abs_err:>12.2e} | {r.ours_ms:>9.2f} | "
            f"{r.torch_ms:>9.2f} | {r.torch_ms / r.ours_ms:>10.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    torch.manual_seed(0)
    print(f"cnnkernels self-check on {machine()}")
    print("float32; times are sums over the shapes " + ", ".join(s[0] for s in CONV_SHAPES) + " (conv2d) and "
          + ", ".join(s[0] for s in POOL_SHAPES) + f" (pooling); {NORM_SHAPE[0]} (normalisation)\n")
    print(format_table(collect()))


if __name__ == "__main__":
    main()
