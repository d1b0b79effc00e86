"""Compile every Triton kernel variant the launchers produce for a GPU, on a machine without one.

    python scripts/triton_aot_check.py [--families conv,pool,norm] [--arch 90]

Runs the launchers of cnnkernels.triton on CPU tensors while a stand-in driver tells Triton the
current device is an sm_<arch> GPU. Each launch compiles its kernel for that target (every
autotune config, as the autotuner would try them) and returns without running it. Problems
cover the layouts, dtypes and code paths a GPU run takes: ResNet-50 and odd shapes, NCHW and
channels_last, bf16/fp16/fp32/fp64, grouped and dilated convolutions, an RGB stem, and one
tensor past 2^31 elements per family (64-bit offsets; its memory is never touched). Reports
compile failures and variants whose shared memory exceeds the target's per-block limit (the
GPU would refuse to launch them); exits non-zero on either.

This checks what the Triton version installed here compiles (GPU machines may run an older
one: run it from an environment with that version too). It cannot check results: that takes a
GPU (scripts/gpu_check.sh).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: real JIT functions
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import CompiledKernel  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

# Shared memory one block may use (opt-in maximum): sm_80 163 KB, sm_90 227 KB.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
CL = torch.channels_last
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
# One tensor of 8 x 2^14 x (2^14 + 8) elements: past 2^31, so the launchers pick 64-bit offsets.
HUGE = (1, 8, 2**14, 2**14 + 8)


class _CompileOnlyDriver:
    """Tells Triton it runs on device 0, an sm_<arch> GPU; nothing is ever launched."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("cpu")


def stub_launches(arch: int, on_launch) -> None:
    """Makes Triton compile for sm_<arch> (on the stand-in driver) and hand each launch of a
    compiled kernel to on_launch(kernel, *launch_arguments) instead of running it: there is no
    module to load. For scripts that inspect what the launchers compile and launch."""
    driver.set_active(_CompileOnlyDriver(arch))
    CompiledKernel._init_handles = lambda self: None
    CompiledKernel.run = property(lambda self: lambda *launch: on_launch(self, *launch))


class Report:
    def __init__(self, smem_limit: int):
        self.smem_limit = smem_limit
        self.compiled = 0
        self.failures: dict[tuple[str, str], str] = {}
        self.oversized: list[str] = []

    def failed(self, what: str, error: BaseException) -> None:
        message = "".join(traceback.format_exception_only(error)).strip()
        self.failures.setdefault((what, message[:200]), message[-1500:])


def _install(report: Report, arch: int) -> None:
    """Makes every launch a compile (warmup) and every autotuned launch compile each config."""
    driver.set_active(_CompileOnlyDriver(arch))
    compile_and_launch = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        meta = {k: v for k, v in kwargs.items() if k.isupper() or k.startswith("num_")}
        try:
            kernel = compile_and_launch(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as error:  # noqa: BLE001  (reported, and the run goes on)
            report.failed(f"{self.__name__} {meta}", error)
            return None
        if kernel is None:  # a compile hook took over: nothing to check
            return None
        report.compiled += 1
        if kernel.metadata.shared > report.smem_limit:
            report.oversized.append(f"{self.__name__}: {kernel.metadata.shared} bytes, {meta}")
        return kernel

    def every_config(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        for config in self.prune_configs(kwargs):
            if config.pre_hook is not None:  # as the autotuner (tensor descriptors' block shapes)
                config.pre_hook({**self.nargs, **kwargs, **config.all_kwargs()})
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    JITFunction.run = compile_only
    Autotuner.run = every_config
    import cnnkernels.triton._common as common
    from cnnkernels.triton import conv, norm, pool
    common.DIRECT_LAUNCH = False  # every launch goes through Triton, which compiles it
    for module in (common, conv, pool, norm):  # autotune on (all configs), CPU tensors accepted
        module._autotune = lambda: True
        module._check_device = lambda *tensors: None
    conv._has_tma = lambda device: arch >= 90  # the target's, not the (absent) GPU's


def _tensor(shape, dtype, channels_last=False):
    t = torch.empty(shape, dtype=dtype)
    return t.contiguous(memory_format=CL) if channels_last and len(shape) == 4 else t


def _layouts():
    """(dtype, channels_last) pairs a GPU run meets (fp64 in NCHW: gradcheck's)."""
    return [(dt, cl) for dt, cl in itertools.product(DTYPES, (False, True)) if not (dt == torch.float64 and cl)]


def _calls(report: Report, name: str, *calls) -> None:
    for fn, *args in calls:
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001
            report.failed(f"launcher {name} {fn.__name__}", error)


def check_conv(report: Report) -> None:
    from cnnkernels.triton import conv as C
    # (N, C, H, W, K, R, S, stride, padding, dilation, groups)
    problems = [(2, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1), (2, 64, 56, 56, 256, 1, 1, 1, 0, 1, 1),
                (2, 3, 224, 224, 64, 7, 7, 2, 3, 1, 1), (2, 256, 56, 56, 128, 1, 1, 2, 0, 1, 1),
                (2, 128, 28, 28, 128, 3, 3, 2, 1, 1, 1), (2, 20, 11, 13, 12, 3, 2, 2, 1, 2, 2),
                (2, 8, 9, 9, 8, 3, 3, 1, 1, 1, 8)]
    for (n, c, h, w, k, r, s, st, pd, dl, g), (dt, cl) in itertools.product(problems, _layouts()):
        x, weight = _tensor((n, c, h, w), dt, cl), _tensor((k, c // g, r, s), dt, cl)
        geometry = ([st, st], [pd] * 4, [dl, dl], g)
        y = C.conv2d_forward(x, weight, _tensor((k,), dt), *geometry)
        _calls(report, "conv2d", (C.conv2d_backward_input, y, weight, list(x.shape), *geometry),
               (C.conv2d_backward_weight, y, x, list(weight.shape), *geometry), (C.conv2d_backward_bias, y))
    x, weight = _tensor(HUGE, torch.bfloat16, True), _tensor((8, 8, 3, 3), torch.bfloat16, True)
    geometry = ([1, 1], [1] * 4, [1, 1], 1)
    y = C.conv2d_forward(x, weight, None, *geometry)
    _calls(report, "conv2d (64-bit)", (C.conv2d_backward_input, y, weight, list(x.shape), *geometry),
           (C.conv2d_backward_weight, y, x, list(weight.shape), *geometry), (C.conv2d_backward_bias, y))


def check_pool(report: Report) -> None:
    from cnnkernels.triton import pool as P
    for (dt, cl), shape in itertools.product(_layouts(), [(2, 64, 56, 56), (2, 5, 13, 11)]):
        x = _tensor(shape, dt, cl)
        y, indices = P.max_pool2d_forward(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
        mean = P.avg_pool2d_forward(x, [3, 3], [2, 2], [1, 1], True, False, None)
        global_mean = P.adaptive_avg_pool2d_forward(x, [1, 1])
        adaptive_max, adaptive_indices = P.adaptive_max_pool2d_forward(x, [5, 3])
        _calls(report, "pooling",
               (P.max_pool2d_backward, y, indices, list(x.shape), [3, 3], [2, 2], [1, 1], [1, 1]),
               (P.avg_pool2d_backward, mean, list(x.shape), [3, 3], [2, 2], [1, 1], False, None),
               (P.avg_pool2d_forward, x, [2, 2], [2, 2], [0, 0], False, True, 3),
               (P.adaptive_avg_pool2d_backward, global_mean, list(x.shape)),
               (P.adaptive_avg_pool2d_forward, x, [5, 3]),
               (P.adaptive_max_pool2d_backward, adaptive_max, adaptive_indices, list(x.shape)),
               (P.max_unpool2d_forward, y, indices, list(x.shape[2:])),
               (P.max_unpool2d_backward, x, indices))
    x = _tensor(HUGE, torch.bfloat16, True)
    y, indices = P.max_pool2d_forward(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    _calls(report, "pooling (64-bit)",
           (P.max_pool2d_backward, y, indices, list(x.shape), [3, 3], [2, 2], [1, 1], [1, 1]),
           (P.avg_pool2d_forward, x, [3, 3], [2, 2], [1, 1], False, True, None))


def check_norm(report: Report) -> None:
    from cnnkernels.triton import norm as N
    for (dt, cl), shape in itertools.product(_layouts(), [(4, 64, 56, 56), (3, 6, 5, 7), (8, 32)]):
        channels = shape[1]
        x, residual = _tensor(shape, dt, cl), _tensor(shape, dt, cl)
        w, b, running_mean, running_var = (torch.empty(channels, dtype=dt) for _ in range(4))
        for activation, res, training in [("none", None, True), ("relu", residual, True), ("relu", None, False)]:
            _, mean, rstd, _, _ = N.batch_norm_forward(x, w, b, res, running_mean, running_var, training, 0.1,
                                                       1e-5, activation)
            _calls(report, "batch_norm", (N.batch_norm_backward, x, x, w, b, res, mean, rstd, training, activation))
        if len(shape) == 4:
            for activation, groups in [("silu", 32 if channels == 64 else 3), ("gelu", 2), ("none", 1)]:
                _, mean, rstd = N.group_norm_forward(x, w, None, groups, 1e-5, activation)
                _calls(report, "group_norm",
                       (N.group_norm_backward, x, x, w, None, mean, rstd, groups, activation))
            _calls(report, "local_response_norm", (N.local_response_norm_forward, x, 5, 1e-4, 0.75, 2.0),
                   (N.local_response_norm_backward, x, x, 5, 1e-4, 0.75, 2.0))
        for ndim in (1, 2):
            weight = torch.empty(shape[-ndim:], dtype=dt)
            _, rstd = N.rms_norm_forward(x, weight, ndim, 1e-5)
            _calls(report, "rms_norm", (N.rms_norm_backward, x, x, weight, rstd, ndim),
                   (N.rms_norm_forward, x, None, ndim, 1e-5))
    x, w = _tensor(HUGE, torch.bfloat16, True), torch.empty(8, dtype=torch.bfloat16)
    _, mean, rstd, _, _ = N.batch_norm_forward(x, w, w, None, None, None, True, 0.1, 1e-5, "relu")
    _calls(report, "batch_norm (64-bit)", (N.batch_norm_backward, x, x, w, w, None, mean, rstd, True, "relu"))


FAMILIES = {"conv": check_conv, "pool": check_pool, "norm": check_norm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: conv, pool, norm")
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_MEMORY_LIMIT),
                        help="compute capability, e.g. 90 for H100/H200")
    args = parser.parse_args()
    report = Report(SHARED_MEMORY_LIMIT[args.arch])
    _install(report, args.arch)
    print(f"Triton {triton.__version__}, torch {torch.__version__}, target sm_{args.arch}", flush=True)
    for family in args.families.split(","):
        start, before = time.time(), report.compiled
        FAMILIES[family](report)
        print(f"{family}: {report.compiled - before} variants compiled in {time.time() - start:.0f} s", flush=True)
    for line in report.oversized:
        print(f"over the shared-memory limit ({report.smem_limit} bytes): {line}")
    for (what, _), message in report.failures.items():
        print(f"FAILED {what}:\n{message}\n")
    print(f"{report.compiled} compiled, {len(report.failures)} failures, {len(report.oversized)} over the "
          "shared-memory limit")
    return 1 if report.failures or report.oversized else 0


if __name__ == "__main__":
    sys.exit(main())
