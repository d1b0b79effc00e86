"""What the Triton operator families share: tuning configurations, accumulator and index
dtypes, the autotuning switch, the device and dtype checks, the host's ceiling division, and
the launch itself (`launch`, which remembers compiled kernels to skip Triton's per-call work)."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.compiler import CompiledKernel
from triton.runtime.driver import driver
from triton.tools.tensor_descriptor import TensorDescriptor

from cnnkernels.backend import triton_interpreted


# Triton decides whether it interprets a kernel when it decorates it, at import, so the
# launchers' choices that depend on it follow that moment, not a later change of
# TRITON_INTERPRET; and they skip an environment read (~1 us) per launch.
INTERPRETED = triton_interpreted()


def _config(**meta):
    warps, stages, maxnreg = meta.pop("num_warps"), meta.pop("num_stages"), meta.pop("maxnreg", None)
    return triton.Config(meta, num_warps=warps, num_stages=stages, maxnreg=maxnreg)


def _among(configs: list[triton.Config], kept: list[triton.Config]) -> list[triton.Config]:
    """The entries of `configs` that are in `kept`, in order, for an autotuner's
    early_config_prune (by identity: the autotuner hands over the very objects of its list, and
    triton.Config has no equality)."""
    return [c for c in configs if any(c is k for k in kept)]


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b), as triton.cdiv, for the host's launch arithmetic: triton.cdiv is a
    constexpr function, and calling one from Python costs ~3 us."""
    return (a + b - 1) // b


def _index_dtype(*counts: int):
    """Indices in int32 unless a count of elements (or pixels) can pass 2^31."""
    return tl.int64 if max(counts) >= 2**31 - 1 else tl.int32


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _autotune() -> bool:
    """Autotuning runs on a GPU unless CNNKERNELS_TRITON_AUTOTUNE=0 (the test suite sets it: it
    tests every config explicitly and would otherwise tune each of its hundreds of shapes)."""
    return not INTERPRETED and os.environ.get("CNNKERNELS_TRITON_AUTOTUNE", "1") != "0"


def _check_device(*tensors):
    """Every tensor on one CUDA device (or on the CPU in the interpreter): a kernel launched on
    one GPU cannot read another's memory."""
    # is_cuda/is_cpu and get_device() (an int) rather than t.device, which builds a torch.device.
    device = tensors[0].get_device()
    for t in tensors:
        if not t.is_cuda and not (t.is_cpu and triton_interpreted()):
            raise RuntimeError(
                f"cnnkernels_triton: tensors must be on a CUDA device (or on the CPU with TRITON_INTERPRET=1), got {t.device}"
            )
        if t.get_device() != device:
            raise RuntimeError(f"cnnkernels_triton: expected all tensors on one device, got {tensors[0].device} and {t.device}")


def _check_dtype(op: str, t: torch.Tensor) -> None:
    """The Triton kernels take the four floating types (integer tensors, which torch's CPU
    convolution and pooling take, are the cpu backend's)."""
    if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise NotImplementedError(f"{op}: expected a float32, float64, float16 or bfloat16 input, got {t.dtype}")


# ---- launch plans --------------------------------------------------------------------------
# What a launcher works out before launching (output shape and layout, index width, grid, the
# kernel's scalar arguments) depends only on its tensors' sizes, strides and dtypes and on the
# other arguments, and a training loop repeats the same few problems. Working it out again on
# every call costs about half of a launcher's host time, so launchers keep it per problem.
_PLANS: dict[tuple, object] = {}
_MAX_PLANS = 4096


# Argument types a plan's key holds as they are. Testing these first keeps isinstance(a,
# torch.Tensor) for the tensors: on anything else it costs ~0.4 us (torch's metaclass). The key
# of a conv2d forward call took 6.9 us, of a pooling one 3.8 (4.6 and 2.2 now; development machine).
_PLAIN_TYPES = frozenset((int, float, bool, str, tuple, torch.Size, type(None)))


def planned(make, *problem):
    """make(*problem), remembered per problem. `make` must read nothing of its tensors but their
    sizes, strides and dtype: those are what the key holds (with the other arguments, lists as
    tuples). Errors it raises (invalid arguments) are raised again on every call."""
    key = (make, *[tuple(a) if type(a) is list else a if type(a) in _PLAIN_TYPES
                   else (a.shape, a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in problem])
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = make(*problem)
    return plan


# ---- launching -----------------------------------------------------------------------------
# Triton's launch path binds and specializes every argument, looks the kernel up, and (when
# autotuned) builds the autotuner's key: 25-45 us of host time per call on the development
# machine, longer than many of these kernels run on a GPU. A training loop repeats the same few
# launches, so the first launch of each specialization records what Triton chose (the compiled
# kernel and the config's meta-parameters) and the later ones call the compiled kernel
# directly, over the grid their own grid function gives, which costs about 5 us. Set to False
# to always go through Triton (a compile-only check does, see scripts/triton_aot_check.py).
DIRECT_LAUNCH = True
_LAUNCHES: dict[tuple, tuple[CompiledKernel, dict, tuple, triton.Config | None]] = {}
# Distinct launches remembered before the table starts over (shapes that never repeat would
# otherwise grow it without bound); a training loop has a few dozen.
_MAX_LAUNCHES = 4096


def _specialization(args) -> tuple:
    """What a compiled kernel depends on among the arguments: each tensor's dtype and whether
    its address is 16-byte aligned (Triton's pointer specialization), a tensor descriptor's
    dtype, shape and strides (its block shape is the config's), and every other argument's
    value (finer than Triton's key, which keeps only an integer's range, whether it is 1, and
    whether it divides by 16). Plain values are tested first, as in `planned`'s key."""
    return tuple(a if type(a) in _PLAIN_TYPES else (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                 else (a.base.dtype, *a.shape, *a.strides) if isinstance(a, TensorDescriptor) else a for a in args)


def launch(kernel, grid, args: tuple, constexprs: dict, config: triton.Config | None = None, tuned=None) -> None:
    """Runs the triton.jit `kernel` on `args` (its leading parameters, positionally) and
    `constexprs` (by name) over `grid` (a tuple, or a function of the meta-parameters): with
    `config`'s meta-parameters, or when it is None through `tuned` (the kernel's triton.autotune
    variant), or with none (a kernel without tuning). Launches seen before skip Triton's own
    launch path."""
    if config is not None:
        _pre_hook(config, kernel, args, constexprs)
    if INTERPRETED or not DIRECT_LAUNCH:
        _launch_through_triton(kernel, grid, args, constexprs, config, tuned)
        return
    key = (kernel, config, driver.active.get_current_device(), tuple(constexprs.items()), _specialization(args))
    known = _LAUNCHES.get(key)
    if known is not None:
        compiled, meta, trailing, picked = known
        if picked is not None:  # the autotuner's config, whose pre_hook it ran on the first launch
            _pre_hook(picked, kernel, args, constexprs)
        compiled[_grid_size(grid, meta)](*args, *trailing)
        return
    compiled = _launch_through_triton(kernel, grid, args, constexprs, config, tuned)
    picked = None
    if config is None and tuned is not None:
        config = picked = getattr(tuned, "best_config", None)  # the autotuner's pick, which it just ran
        if config is None:
            return
    # Remembered only where this Triton hands its launcher every parameter (constexprs included)
    # in declaration order, the convention the direct call follows; otherwise every launch keeps
    # going through Triton. tests/test_triton_launch.py checks that the two match.
    if isinstance(compiled, CompiledKernel) and len(compiled.src.signature) == len(kernel.arg_names):
        meta = {**constexprs, **(config.all_kwargs() if config is not None else {})}
        if len(_LAUNCHES) >= _MAX_LAUNCHES:
            _LAUNCHES.clear()
        _LAUNCHES[key] = (compiled, meta, tuple(meta[name] for name in kernel.arg_names[len(args):]), picked)


def _grid_size(grid, meta: dict) -> tuple:
    """The launch's (x, y, z) grid (a compiled kernel takes all three), worked out on every call:
    a grid may depend on sizes the kernel is not passed (group norm's N * G programs, with N
    nowhere among its arguments), so one remembered from an earlier launch of the same key can be
    wrong (on an H100, 2026-11-24: layer norm of 24 rows after one of 6 normalised only 6)."""
    return (*(grid(meta) if callable(grid) else grid), 1, 1)[:3]


def _pre_hook(config: triton.Config, kernel, args: tuple, constexprs: dict) -> None:
    """Runs `config`'s pre_hook, if it has one, on the launch's arguments by name, as Triton's
    autotuner does before launching with a config (a launch with a config named does not): the
    conv kernels' pointwise configs give tensor descriptors their block shapes there."""
    if config.pre_hook is not None:
        config.pre_hook({**dict(zip(kernel.arg_names, args)), **constexprs, **config.all_kwargs()})


def _launch_through_triton(kernel, grid, args, constexprs, config, tuned):
    """Triton's own launch; returns the compiled kernel it ran (None in the interpreter)."""
    if config is not None:  # its meta-parameters and compile options (warps, stages, register cap), as the autotuner passes them
        return kernel[grid(config.kwargs) if callable(grid) else grid](*args, **constexprs, **config.all_kwargs())
    return (tuned if tuned is not None else kernel)[grid](*args, **constexprs)
