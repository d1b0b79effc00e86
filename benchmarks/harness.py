"""Shared timing harness of the benchmark scripts (one ``bench_<family>.py`` per operator family).

- Timing: on CUDA, ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, warm-up
  first) with ``torch.backends.cudnn.benchmark = True``; on the CPU, the median of repeated
  ``time.perf_counter`` runs after a warm-up.
- Naming and metadata: a device name for result file names and the facts a reader of a result
  needs (date, versions, CPU, GPU, threads, TF32 flags).
- Cases: layer tables turned into distinct geometries (:class:`NetLayer`, :func:`distinct_layers`),
  the --quick subset and the batch sizes and dtypes to run (:func:`plan`).
- Backends and measurement: which of our backends run on the device (:func:`usable_backends`),
  each op timed for torch and every backend with the backend's error against torch
  (:func:`compare_ops`), a failure kept as a result (:func:`attempt`) unless it broke the device
  (:class:`DeviceLost`).
- Output: ``<out>/<device>-<family>.json`` and ``.md``, rewritten after every case so that a run
  cut short (the GPU machine's per-command limit) still leaves its results behind
  (:func:`run_cases`), and ``--resume`` completes it in a later call (:func:`resumed`); every
  measurement records its wall time ("wall_s", compiling and autotuning included); the
  Markdown sections every family has (:func:`report_head`,
  :func:`summary_section`, :func:`results_sections`) and the per-case log lines (:func:`progress`).

This module imports only torch at import time: ``scripts/gpu_check.sh`` uses :func:`device_name`
before the extension is built. (:func:`usable_backends` imports cnnkernels when it is called.)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path("benchmarks/results")

# Warm-up and measurement windows: do_bench's defaults, used for the CPU timer too.
WARMUP_MS = 25
REP_MS = 100
MIN_CPU_RUNS = 3

# The dtypes the benchmarks take, each in the memory format it is benchmarked in: the 16-bit
# types channels_last (the layout tensor cores want and mixed-precision training uses), fp32 in
# torch's default NCHW.
DTYPES: dict[str, tuple[torch.dtype, torch.memory_format]] = {
    "bf16": (torch.bfloat16, torch.channels_last),
    "fp16": (torch.float16, torch.channels_last),
    "fp32": (torch.float32, torch.contiguous_format),
}
LAYOUT_NAMES = {torch.channels_last: "channels_last", torch.contiguous_format: "nchw"}

# Our backends that a script times on a CUDA GPU and on the CPU ("triton" there only in the
# interpreter, TRITON_INTERPRET=1).
GPU_BACKENDS = ("cuda", "triton")
CPU_BACKENDS = ("cpu", "triton")

# Errors that say what a backend lacks (a kernel not written yet, memory too small for the
# shape) rather than that something is broken: shown, but not a failure of the run.
EXPECTED_ERRORS = ("OutOfMemoryError", "NotImplementedError")

# Environment variables that change what a benchmark measures.
_RELEVANT_ENV = ("CNNKERNELS_BACKEND", "CNNKERNELS_POISON_ALLOCATIONS", "TRITON_INTERPRET", "OMP_NUM_THREADS",
                 "CUDA_VISIBLE_DEVICES")


# ---- arguments -----------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every bench script takes, so scripts/gpu_check.sh can pass the same ones to all.

    --batch and --dtypes default to None: each script picks its own defaults per device.
    """
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a small subset of the shapes")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES),
                        help="dtypes (bf16/fp16 run channels_last, fp32 NCHW)")
    parser.add_argument("--nets", nargs="+", help="only the layers of these nets (default: every net of the device's suite)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop starting new cases after this many minutes; what ran is kept")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cases an earlier run of the same code and versions on this device "
                             "measured in --out, and run only the rest (a run split over several calls)")
    return parser


def start(doc: str, argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """A script's start: parses the common options (the description is the first paragraph of
    `doc`, the script's docstring), picks the device and prepares it (:func:`prepare`), and seeds
    torch's random numbers, so that every run draws the same inputs."""
    parser = add_common_args(argparse.ArgumentParser(description=doc.split("\n\n")[0]))
    args = parser.parse_args(argv)
    device = default_device()
    prepare(device)
    torch.manual_seed(0)
    return args, device


class Deadline:
    """A time budget in minutes; None means no limit."""

    def __init__(self, minutes: float | None):
        self._end = None if minutes is None else time.monotonic() + 60.0 * minutes

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() > self._end


# ---- layers --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetLayer:
    """The first fields of a family's ``Layer``: one distinct geometry (the subclass's fields) and
    the layers of the nets that have it ("net:layer" names)."""

    id: str
    layers: tuple[str, ...]
    nets: tuple[str, ...]


def distinct_layers(nets: dict[str, tuple[str, tuple]], layer_type: type[NetLayer]) -> list:
    """The nets' layers, one `layer_type` per distinct geometry, in table order: a geometry shared
    by two nets is measured once and counts for both.

    `nets` maps a net's name to (a short prefix for layer ids, its table); a table row is
    ("name name ...", *geometry), the geometry being `layer_type`'s fields after NetLayer's. A
    layer's id is the prefix and the row number of the geometry's first row."""
    by_geometry: dict[tuple, NetLayer] = {}
    for net, (prefix, table) in nets.items():
        for i, (names, *geometry) in enumerate(table, 1):
            layers = tuple(f"{net}:{name}" for name in names.split())
            seen = by_geometry.get(tuple(geometry))
            if seen is None:
                by_geometry[tuple(geometry)] = layer_type(f"{prefix}-{i:02d}", layers, (net,), *geometry)
            else:
                by_geometry[tuple(geometry)] = layer_type(seen.id, (*seen.layers, *layers), (*seen.nets, net),
                                                          *geometry)
    return list(by_geometry.values())


def select_layers(layers: list[NetLayer], names: Sequence[str]) -> list:
    """The layers that have any of `names` ("net:layer"), for --quick; ValueError if a name is in
    none of them."""
    chosen = [layer for layer in layers if set(layer.layers) & set(names)]
    found = {name for layer in chosen for name in layer.layers}
    if missing := set(names) - found:
        raise ValueError(f"--quick names layers that are not in the tables: {sorted(missing)}")
    return chosen


def net_names(layers: Iterable[NetLayer]) -> list[str]:
    """The nets that the layers come from, sorted."""
    return sorted({net for layer in layers for net in layer.nets})


def plan(args: argparse.Namespace, layer_type: type[NetLayer], nets: dict[str, tuple[str, tuple]],
         quick: Sequence[str], defaults: dict[str, list]) -> tuple[list, list[int], list[str]]:
    """What to run: the distinct layers of `nets` (with --quick only those that have a layer named
    in `quick`), the batch sizes and the dtypes. --batch and --dtypes override `defaults`
    ({"batch", "quick_batch", "dtypes"}, the device's); --nets keeps only the nets it names."""
    if args.nets:
        if unknown := set(args.nets) - set(nets):
            raise SystemExit(f"--nets: no such net {sorted(unknown)}; the suite has {sorted(nets)}")
        nets = {name: table for name, table in nets.items() if name in args.nets}
        quick = [name for name in quick if name.split(":")[0] in nets]
    layers = distinct_layers(nets, layer_type)
    if args.quick:
        layers = select_layers(layers, quick)
    batches = args.batch or defaults["quick_batch" if args.quick else "batch"]
    dtypes = args.dtypes or defaults["dtypes"]
    return layers, batches, dtypes


# ---- devices and metadata ------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def prepare(device: torch.device) -> None:
    """Global settings for timing on `device`: cuDNN picks its fastest algorithm per shape, as
    any training run that cares about speed does. TF32 flags are left at torch's defaults (and
    recorded by :func:`metadata`), since the kernels under test follow the same flags."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def sync(device: torch.device) -> None:
    """Waits for the device's queued work (a CUDA kernel's failure shows here); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_text(e: BaseException) -> str:
    """An exception in one line of at most 300 characters: its type and its message's first line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slugify(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'; drops (R)/(TM) marks and '@ 2.20GHz'."""
    text = re.sub(r"\((r|tm)\)|@.*$", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def device_name(device: torch.device | None = None) -> str:
    """The device's name as it appears in result file names."""
    device = device or default_device()
    if device.type == "cuda":
        return slugify(torch.cuda.get_device_name(device))
    return "cpu-" + slugify(cpu_model())


def _package_version(*names: str) -> str | None:
    # Read from the installed metadata rather than by import: importing triton here would fix
    # TRITON_INTERPRET before a script had the chance to look at it.
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _git_commit() -> str | None:
    """HEAD of the working tree (with '-dirty' when it has changes), or None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def metadata(device: torch.device) -> dict:
    """What a reader needs to interpret (and reproduce) a result."""
    cuda = device.type == "cuda"
    return {
        "device": device_name(device),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton", "pytorch-triton"),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "timer": "triton.testing.do_bench median" if cuda else "time.perf_counter median",
        "warmup_ms": WARMUP_MS,
        "rep_ms": REP_MS,
        "git_commit": _git_commit(),
        "env": {k: os.environ[k] for k in _RELEVANT_ENV if k in os.environ},
    }


def announce(title: str, meta: dict) -> None:
    """Prints the start of a run's log: what runs where, and which backends (meta["backends"],
    meta["left_out"]: name -> why)."""
    print(f"{title} on {meta['device']}\n{describe(meta)}")
    print(f"backends: {', '.join(meta['backends']) or 'none'}"
          + "".join(f"; {k} left out: {v}" for k, v in meta["left_out"].items()))


def describe(meta: dict) -> str:
    """A few lines summarising the metadata, for the top of the Markdown file and the log."""
    machine = f"{meta['gpu']} (cuDNN {meta['cudnn']}), host {meta['cpu']}" if meta["gpu"] else meta["cpu"]
    lines = [
        f"- machine: {machine}, {meta['threads']} threads",
        f"- versions: python {meta['python']}, torch {meta['torch']}, triton {meta['triton']}, "
        f"CUDA {meta['cuda_runtime']}; code {meta['git_commit']}",
        f"- date (UTC): {meta['date_utc']}; timer: {meta['timer']} after warm-up "
        f"(warm-up {meta['warmup_ms']} ms, measurement {meta['rep_ms']} ms)",
    ]
    if meta["gpu"]:
        lines.append(f"- cudnn.benchmark={meta['cudnn_benchmark']}, cudnn.allow_tf32={meta['cudnn_allow_tf32']}, "
                     f"cuda.matmul.allow_tf32={meta['cuda_matmul_allow_tf32']}")
    if meta["env"]:
        lines.append("- environment: " + ", ".join(f"{k}={v}" for k, v in meta["env"].items()))
    return "\n".join(lines)


# ---- backends ------------------------------------------------------------------------------


def usable_backends(device: torch.device, ops_module, probe: Callable[[object, torch.device], object]
                    ) -> tuple[dict[str, object], dict[str, str]]:
    """Our backends to time on `device` (name -> ops, from `ops_module`.BACKEND_OPS, e.g.
    cnnkernels.ops.conv), and for each candidate left out, why. probe(ops, device) makes a small
    call: a backend it fails for does not run on this device at all."""
    from cnnkernels.backend import triton_interpreted  # here: importing cnnkernels loads the extension

    backend_ops = ops_module.BACKEND_OPS
    candidates = GPU_BACKENDS if device.type == "cuda" else CPU_BACKENDS
    usable, left_out = {}, {}
    for name in candidates:
        ops = backend_ops.get(name)
        if ops is None:
            left_out[name] = f"not in {ops_module.__name__}.BACKEND_OPS (which has {', '.join(backend_ops)})"
            continue
        if device.type == "cpu" and name == "triton" and not triton_interpreted():
            left_out[name] = "runs on the CPU only in the interpreter (TRITON_INTERPRET=1)"
            continue
        try:
            probe(ops, device)
            sync(device)
        except Exception as e:  # any failure leaves the backend out, with its reason
            left_out[name] = error_text(e)
        else:
            usable[name] = ops
    return usable, left_out


# ---- one case ------------------------------------------------------------------------------


class DeviceLost(RuntimeError):
    """The CUDA context is broken (e.g. a kernel's illegal memory access): nothing after can run."""


def attempt(action: Callable[[], dict], device: torch.device) -> dict:
    """action()'s fields, or {"error", "error_type"} when it fails; raises DeviceLost when the
    failure broke the device for everything after it."""
    try:
        return action()
    except torch.cuda.OutOfMemoryError:
        pass  # the cache is emptied below, once the exception no longer holds the failed frames' tensors
    except Exception as e:  # a failing kernel is a result, not the end of the run
        error = {"error": error_text(e), "error_type": type(e).__name__}
        try:
            sync(device)
        except Exception as sync_error:
            raise DeviceLost(f"{error['error']}; then synchronize failed: {error_text(sync_error)}") from e
        return error
    torch.cuda.empty_cache()
    return {"error": "CUDA out of memory", "error_type": "OutOfMemoryError"}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, computed in fp32; ValueError if shape or dtype differ."""
    if out.shape != ref.shape or out.dtype != ref.dtype:
        raise ValueError(f"returned {out.dtype} {list(out.shape)}, torch {ref.dtype} {list(ref.shape)}")
    ref = ref.float()
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def measure_torch(fn: Callable[[], object], device: torch.device,
                  values: Callable[[object], torch.Tensor] | None = None) -> dict:
    """Time of torch's fn(), and its output ("out", or values(output) with `values`): the
    reference for the backends."""
    out = fn() if values is None else values(fn())  # only the reference is held while timing
    return {"out": out, **timings(fn, device)}


Record = Callable[[str, str, dict], dict]


def recorder(results: list[dict], layer_id: str, batch: int, dtype_name: str, fields: dict | None = None,
             rate: Callable[[dict], None] | None = None) -> Record:
    """record(op, impl, outcome): appends to `results`, and returns, one result: the case (layer,
    batch, dtype, layout), op, impl, `fields`, then the outcome; rate(result) adds the rates of a
    result that has a time ("ms")."""
    case = {"layer": layer_id, "batch": batch, "dtype": dtype_name, "layout": LAYOUT_NAMES[DTYPES[dtype_name][1]]}

    def record(op: str, impl: str, outcome: dict) -> dict:
        result = case | {"op": op, "impl": impl} | (fields or {}) | outcome
        if "ms" in result and rate is not None:
            rate(result)
        results.append(result)
        return result

    return record


def compare_ops(ops: Sequence[str], ours: dict[str, object], device: torch.device, record: Record, *,
                make_inputs: Callable[[], object],
                torch_fns: Callable[[object], dict[str, Callable[[], object]]],
                backend_fns: Callable[[object, object], dict[str, Callable[[], object]]],
                measure_ours: Callable[[Callable[[], object], torch.device, torch.Tensor | None, object, str], dict],
                judge: Callable[[dict], None],
                torch_values: Callable[[object], torch.Tensor] | None = None) -> None:
    """Measures `ops` of one case, torch first, then each of `ours` (name -> backend ops), and
    records each result as it comes, so a run that dies mid-case keeps them.

    make_inputs() makes the case's inputs (when that fails, every op and impl records the error);
    torch_fns(inputs) and backend_fns(backend ops, inputs) give each op's call. torch's is timed
    by :func:`measure_torch` (its output, or torch_values(output), is the reference);
    measure_ours(fn, device, reference, inputs, op) times a backend's fn and checks it against
    the reference (None when torch failed). A backend's outcome gets "speedup" (torch time / its time)
    when both ran; judge(outcome) then marks it "suspect" where its checks say so.
    """
    made = attempt(lambda: {"inputs": make_inputs()}, device)
    if "error" in made:
        for op in ops:
            for impl in ["torch", *ours]:
                record(op, impl, made)
        return
    inputs = made.pop("inputs")
    theirs = torch_fns(inputs)
    mine = {name: backend_fns(backend, inputs) for name, backend in ours.items()}
    for op in ops:
        outcome = timed_attempt(functools.partial(measure_torch, theirs[op], device, torch_values), device)
        reference = outcome.pop("out", None)
        torch_result = record(op, "torch", outcome)
        for name, fns in mine.items():
            outcome = timed_attempt(functools.partial(autotuned, functools.partial(measure_ours, fns[op], device,
                                                                                    reference, inputs, op)), device)
            if "ms" in torch_result and "ms" in outcome:
                outcome["speedup"] = torch_result["ms"] / outcome["ms"]
            judge(outcome)
            record(op, name, outcome)
        del reference  # torch's output: freed before the next op allocates its own


def timed_attempt(action: Callable[[], dict], device: torch.device) -> dict:
    """attempt(action), with "wall_s": the seconds the whole measurement took, compiling and
    autotuning included (where a benchmark run's time goes)."""
    start = time.perf_counter()
    outcome = attempt(action, device)
    return outcome | {"wall_s": time.perf_counter() - start}


# ---- timing --------------------------------------------------------------------------------


def _triton_autotuners() -> dict[str, object]:
    """kernel name -> its triton.autotune wrapper, for every autotuned kernel of cnnkernels.triton."""
    tuners = {}
    for family in ("conv", "pool", "norm"):
        try:
            module = importlib.import_module(f"cnnkernels.triton.{family}")
        except ImportError:  # no triton here
            return {}
        tuners |= {kernel.__name__: tuner for kernel, tuner in module._TUNED.items()}
    return tuners


def autotuned(action: Callable[[], dict]) -> dict:
    """action()'s outcome, with "autotune" added when Triton's autotuner tuned kernels meanwhile:
    for each, the config it chose and every config's time in ms (inf: it did not run). Tuning
    happens on a backend's first call of a shape, so this records why each case ran as it did."""
    tuners = _triton_autotuners()
    for tuner in tuners.values():
        tuner.configs_timings = None
    outcome = action()
    tuned = {}
    for name, tuner in tuners.items():
        timings = getattr(tuner, "configs_timings", None)
        if timings:
            tuned[name] = {"chosen": str(tuner.best_config),
                           "ms": {str(config): ms[0] if isinstance(ms, list) else ms for config, ms in timings.items()}}
    return outcome | {"autotune": tuned} if tuned else outcome


def timings(fn: Callable[[], object], device: torch.device) -> dict:
    """{"ms": time_ms(fn)}, and on a GPU "host_ms": the host's time to issue one fn() call
    (:func:`host_ms`). A case whose host_ms reaches its ms is bound by the host, not the GPU."""
    result = {"ms": time_ms(fn, device)}
    if device.type == "cuda":
        result["host_ms"] = host_ms(fn, device)
    return result


def host_ms(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Median over 5 runs of the host time per fn() call, issuing `calls` calls back to back
    without waiting for the GPU (few enough that the launch queue never fills and blocks)."""
    runs = []
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) * 1e3 / calls)
    sync(device)
    return statistics.median(runs)


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median time of one fn() call in milliseconds, after warm-up."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median"))
    return _cpu_time_ms(fn)


def _cpu_time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    while (time.perf_counter() - start) * 1e3 < WARMUP_MS:
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < MIN_CPU_RUNS or (time.perf_counter() - start) * 1e3 < REP_MS:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def geomean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive finite values (None and failures are skipped); None if none."""
    logs = [math.log(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


# ---- summary -------------------------------------------------------------------------------


def summary_groups(results: list[dict], backend_names: Sequence[str], op_order: Sequence[str]
                   ) -> dict[tuple[str, str, str, int], list[dict]]:
    """(impl, op, dtype, batch) -> its results, for each of our backends' ops that has results,
    in backend, op, dtype, batch order."""
    keys = sorted({(r["impl"], r["op"], r["dtype"], r["batch"]) for r in results if r["impl"] in backend_names},
                  key=lambda k: (backend_names.index(k[0]), op_order.index(k[1]), k[2], k[3]))
    return {key: [r for r in results if (r["impl"], r["op"], r["dtype"], r["batch"]) == key] for key in keys}


def speedup_summary(key: tuple[str, str, str, int], group: list[dict], layers: Sequence[NetLayer]) -> dict:
    """The first fields of a summary row: the group's key, how many of its cases were measured
    against torch, and the geometric mean of torch/backend over all and over each net's layers."""
    impl, op, dtype, batch = key
    nets_of = {layer.id: layer.nets for layer in layers}
    timed = [r for r in group if "speedup" in r]
    return {
        "impl": impl, "op": op, "dtype": dtype, "batch": batch,
        "measured": len(timed), "cases": len(group),
        "geomean_speedup": geomean(r["speedup"] for r in timed),
        # Cases whose host time per call reached their measured time (GPU runs only).
        "host_bound": sum(r["host_ms"] >= r["ms"] for r in timed if "host_ms" in r),
        "median_host_ms": statistics.median(hosts) if (hosts := [r["host_ms"] for r in timed if "host_ms" in r])
        else None,
        "geomean_speedup_per_net": {
            net: geomean(r["speedup"] for r in timed if net in nets_of[r["layer"]]) for net in net_names(layers)
        },
    }


def max_rel_err(group: list[dict]) -> float | None:
    """The largest relative error in the group; NaN when any is (NaN sorts nowhere); None if none."""
    errors = [r["rel_err"] for r in group if r.get("rel_err") is not None]
    return next((e for e in errors if math.isnan(e)), max(errors, default=None))


# ---- output --------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[bool]) -> str:
    """A Markdown table padded to line up in a terminal; `right[i]` right-aligns column i."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def fmt(value: float | None, spec: str) -> str:
    """A number for a table cell; '-' for a missing one."""
    return "-" if value is None else format(value, spec)


def _json_safe(obj):
    # NaN and infinities (a broken kernel's error) become strings: JSON has no literal for them.
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_atomically(path: Path, text: str) -> None:
    # A run killed mid-write keeps the previous complete file rather than half of a new one.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def results_path(out_dir: Path, meta: dict, family: str) -> Path:
    """<out_dir>/<device>-<family>.json, where a run's results go (and --resume finds them)."""
    return out_dir / f"{meta['device']}-{family}.json"


def write_results(out_dir: Path, family: str, meta: dict, data: dict, markdown: str) -> tuple[Path, Path]:
    """Writes <out_dir>/<device>-<family>.json ({"meta": meta, **data}) and .md; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_path(out_dir, meta, family)
    md_path = json_path.with_suffix(".md")
    _write_atomically(json_path, json.dumps(_json_safe({"meta": meta, **data}), indent=1) + "\n")
    _write_atomically(md_path, markdown + "\n")
    return json_path, md_path


# ---- report sections and log lines ---------------------------------------------------------


def time_cell(r: dict, spec: str) -> str:
    """A result's time for a table cell (formatted by `spec`), or why it has none: OOM, n/a (not
    implemented), error."""
    if "error" in r:
        return {"OutOfMemoryError": "OOM", "NotImplementedError": "n/a"}.get(r["error_type"], "error")
    return fmt(r.get("ms"), spec)


def speedup_note(suspect_error: dict[str, float]) -> str:
    """The note that explains the speedup and err columns (err marked ! above suspect_error[dtype])."""
    suspect = ", ".join(f"{k} {v:g}" for k, v in suspect_error.items())
    return ("- speedup = torch time / backend time (above 1: faster than torch); err = max |backend - torch| / "
            f"max |torch|, marked ! above {suspect}")


def report_head(title: str, meta: dict, notes: Sequence[str]) -> list[str]:
    """The title and the notes of a report: the metadata, the backends measured and left out,
    `notes`, and when the run stopped early, why."""
    lines = [
        describe(meta),
        f"- backends measured: {', '.join(meta['backends']) or 'none'}"
        + "".join(f"; {name} left out: {why}" for name, why in meta["left_out"].items()),
        *notes,
    ]
    if meta.get("resumed"):
        lines.append(f"- resumed (--resume): {meta['resumed']['cases_kept']} cases kept from the run of "
                     f"{meta['resumed']['from_date_utc']}")
    if meta.get("stopped_early"):
        lines.append(f"- **incomplete**: {meta['stopped_early']}")
    return [f"# {title}: {meta['device']}", "\n".join(lines)]


def summary_section(summary: list[dict], nets: Sequence[str], headers: Sequence[str],
                    cells: Callable[[dict], list]) -> list[str]:
    """The Summary section (none without summary rows): each row's backend, op, dtype, N, layers
    measured and geometric mean speedup, overall and per net, the median host time per call and
    the number of host-bound cases (GPU runs), then `headers` with cells(row)."""
    if not summary:
        return []
    rows = [[s["impl"], s["op"], s["dtype"], s["batch"], f"{s['measured']}/{s['cases']}",
             fmt(s["geomean_speedup"], ".2f")] + [fmt(s["geomean_speedup_per_net"][net], ".2f") for net in nets]
            + ([fmt(s["median_host_ms"] * 1e3, ".0f"), s["host_bound"]] if s["median_host_ms"] is not None else ["-", "-"])
            + cells(s)
            for s in summary]
    head = ["backend", "op", "dtype", "N", "layers", "geomean speedup", *nets, "host µs/call", "host-bound",
            *headers]
    return ["## Summary: geometric mean of torch time / backend time",
            markdown_table(head, rows, [False] * 5 + [True] * (len(nets) + 3 + len(headers)))]


def results_sections(results: list[dict], names: Sequence[str], torch_headers: Sequence[str],
                     torch_cells: Callable[[tuple, dict], list], backend_headers: Sequence[str],
                     backend_cells: Callable[[dict], list]) -> list[str]:
    """The Results section, a row per case (layer, N, dtype, op): torch_cells(case, torch's
    result) under `torch_headers`, then for each backend in `names` backend_cells(its result, {}
    if none) under "<name> <header>" for each of `backend_headers`; and an Errors section listing
    every failed measurement, when there is one."""
    by_key = {(r["layer"], r["batch"], r["dtype"], r["op"], r["impl"]): r for r in results}
    headers = ["layer", "N", "dtype", "op", *torch_headers]
    for name in names:
        headers += [f"{name} {header}" for header in backend_headers]
    rows = []
    for case in dict.fromkeys((r["layer"], r["batch"], r["dtype"], r["op"]) for r in results):
        row = [*case, *torch_cells(case, by_key[(*case, "torch")])]
        for name in names:
            row += backend_cells(by_key.get((*case, name), {}))
        rows.append(row)
    right = [False, True, False, False] + [True] * (len(headers) - 4)
    parts = ["## Results", markdown_table(headers, rows, right)]

    failed = [r for r in results if "error" in r]
    if failed:
        rows = [[r["layer"], r["batch"], r["dtype"], r["op"], r["impl"], r["error"].replace("|", "/")] for r in failed]
        parts += ["## Errors", markdown_table(["layer", "N", "dtype", "op", "impl", "error"], rows,
                                              [False, True, False, False, False, False])]
    return parts


def progress(prefix: str, results: list[dict], time_cell: Callable[[dict], str], err_cell: Callable[[dict], str],
             rate: Callable[[dict], str] | None = None) -> str:
    """One log line per op of a case: each implementation's time (then rate(result), if given),
    speedup and error."""
    lines: dict[str, list[str]] = {}
    for r in results:
        text = f"{r['impl']} {time_cell(r)}" + (rate(r) if rate is not None else "")
        if "speedup" in r:
            text += f" ({r['speedup']:.3g}x, err {err_cell(r)})"
        lines.setdefault(f"{prefix} {r['layer']} N={r['batch']} {r['dtype']} {r['op']}:", []).append(text)
    return "\n".join(f"{key} {' | '.join(cells)}" for key, cells in lines.items())


# ---- the run -------------------------------------------------------------------------------


def run_suite(args: argparse.Namespace, family: str, meta: dict, layers: Sequence[NetLayer], batches: Sequence[int],
              dtypes: Sequence[str], run_case: Callable[..., None],
              summarize: Callable[[Sequence[NetLayer], list[dict]], list[dict]],
              markdown: Callable[[dict, Sequence[NetLayer], list[dict], list[dict]], str],
              log: Callable[[str, list[dict]], str], layer_data: Callable[[NetLayer], dict] = dataclasses.asdict) -> int:
    """A benchmark script's run: run_case(layer, batch, dtype, results=...) for every combination
    (:func:`run_cases`), the results saved after every case as <family> JSON (layer_data(layer)
    per layer, summarize(layers, results), the results) and markdown(meta, layers, results,
    summary). Returns run_cases' exit status."""
    cases = [(layer, batch, dtype) for layer in layers for batch in batches for dtype in dtypes]
    results: list[dict] = []
    if args.resume:
        results, cases = resumed(args.out, family, meta, cases)

    def save() -> tuple[str, tuple[Path, Path]]:
        summary = summarize(layers, results)
        data = {"layers": [layer_data(layer) for layer in layers], "summary": summary, "results": results}
        text = markdown(meta, layers, results, summary)
        return text, write_results(args.out, family, meta, data, text)

    return run_cases(cases, functools.partial(run_case, results=results), results, meta, save, log, args.max_minutes)


# What must match for an earlier run's results to stand beside this run's in one report.
_RESUME_MATCH = ("device", "git_commit", "torch", "triton", "cuda_runtime", "cudnn")


def resumed(out_dir: Path, family: str, meta: dict, cases: list[tuple]) -> tuple[list[dict], list[tuple]]:
    """For --resume: the results of the earlier run saved in out_dir that belong to `cases`, and the
    cases still to run. A case counts as measured when the earlier run recorded it and none of its
    measurements failed other than as EXPECTED_ERRORS (a failed one runs again). The earlier run
    must have had the same device, code and versions (_RESUME_MATCH), or this raises; meta gets
    "resumed" (the earlier run's date and how many cases it gave)."""
    path = results_path(out_dir, meta, family)
    if not path.exists():
        print(f"--resume: no earlier results at {path}; running every case")
        return [], cases
    earlier = json.loads(path.read_text())
    differ = [f"{k}: {earlier['meta'].get(k)!r} there, {meta.get(k)!r} here" for k in _RESUME_MATCH
              if earlier["meta"].get(k) != meta.get(k)]
    if differ:
        raise SystemExit(f"--resume: {path} comes from another run setting ({'; '.join(differ)}); "
                         "move it away or run without --resume")
    by_case: dict[tuple, list[dict]] = {}
    for r in earlier["results"]:
        by_case.setdefault((r["layer"], r["batch"], r["dtype"]), []).append(r)

    def measured(case: tuple) -> bool:
        rs = by_case.get((case[0].id, case[1], case[2]), [])
        return bool(rs) and all(r.get("error_type", EXPECTED_ERRORS[0]) in EXPECTED_ERRORS for r in rs)

    kept = [case for case in cases if measured(case)]
    meta["resumed"] = {"from_date_utc": earlier["meta"].get("date_utc"), "cases_kept": len(kept)}
    print(f"--resume: keeping {len(kept)} of {len(cases)} cases from {path}")
    results = [r for case in kept for r in by_case[(case[0].id, case[1], case[2])]]
    return results, [case for case in cases if not measured(case)]


def run_cases(cases: Sequence[tuple], run_case: Callable[..., None], results: list[dict], meta: dict,
              save: Callable[[], tuple[str, tuple[Path, Path]]], log: Callable[[str, list[dict]], str],
              max_minutes: float | None) -> int:
    """Runs run_case(*case) for each case, which appends its results to `results`; after each
    logs log(prefix, the case's results) and save()s (which returns the Markdown text and the
    paths written). Stops starting cases after `max_minutes`, and ends the run when the device is
    lost; either way says why in meta["stopped_early"]. Then saves and prints the report, and
    returns the exit status: 1 when a measurement failed (other than EXPECTED_ERRORS), a result
    is suspect, or the device was lost; 0 otherwise."""
    deadline = Deadline(max_minutes)
    device_lost = False
    for done, case in enumerate(cases, 1):
        if deadline.expired():
            meta["stopped_early"] = (f"time budget of {max_minutes:g} min reached after {done - 1} "
                                     f"of {len(cases)} cases")
            break
        first = len(results)
        try:
            run_case(*case)
        except DeviceLost as e:
            layer, batch, dtype = case
            meta["stopped_early"] = f"the GPU failed at {layer.id} N={batch} {dtype}, ending the run: {e}"
            device_lost = True
        print(log(f"[{done}/{len(cases)}]", results[first:]), flush=True)
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
