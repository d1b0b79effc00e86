"""Shared timing harness of the benchmark scripts (one ``bench_<family>.py`` per operator family).

- Timing: on CUDA, ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, warm-up
  first) with ``torch.backends.cudnn.benchmark = True``; on the CPU, the median of repeated
  ``time.perf_counter`` runs after a warm-up.
- Naming and metadata: a device name for result file names and the facts a reader of a result
  needs (date, versions, CPU, GPU, threads, TF32 flags).
- Output: ``<out>/<device>-<family>.json`` and ``.md``, rewritten after every case so that a run
  cut short (the GPU machine's per-command limit) still leaves its results behind.

This module imports only torch: ``scripts/gpu_check.sh`` uses :func:`device_name` before the
extension is built.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
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
    parser.add_argument("--max-minutes", type=float,
                        help="stop starting new cases after this many minutes; what ran is kept")
    return parser


class Deadline:
    """A time budget in minutes; None means no limit."""

    def __init__(self, minutes: float | None):
        self._end = None if minutes is None else time.monotonic() + 60.0 * minutes

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() > self._end


# ---- devices and metadata ------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def prepare(device: torch.device) -> None:
    """Global settings for timing on `device`: cuDNN picks its fastest algorithm per shape, as
    any training run that cares about speed does. TF32 flags are left at torch's defaults (and
    recorded by :func:`metadata`), since the kernels under test follow the same flags."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


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


# ---- timing --------------------------------------------------------------------------------


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


def write_results(out_dir: Path, family: str, meta: dict, data: dict, markdown: str) -> tuple[Path, Path]:
    """Writes <out_dir>/<device>-<family>.json ({"meta": meta, **data}) and .md; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{meta['device']}-{family}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    _write_atomically(json_path, json.dumps(_json_safe({"meta": meta, **data}), indent=1) + "\n")
    _write_atomically(md_path, markdown + "\n")
    return json_path, md_path
