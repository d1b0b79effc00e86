"""Loads the compiled extension cnnkernels._C and reports how it was built.

Importing _C registers every C++ operator (TORCH_LIBRARY) with torch's dispatcher.
"""
from __future__ import annotations

import functools

_BUILD_HELP = (
    "Build it from the repository root with `make build` (or "
    "`MAX_JOBS=2 pip install --no-build-isolation -e .` in an environment that has torch)."
)


@functools.cache
def load():
    """Returns the cnnkernels._C module, raising ImportError with build instructions if absent."""
    try:
        from cnnkernels import _C
    except ImportError as e:
        raise ImportError(
            f"cnnkernels: the compiled extension cnnkernels._C could not be loaded ({e}). {_BUILD_HELP}"
        ) from e
    return _C


def has_cuda() -> bool:
    """True when _C was compiled with its CUDA kernels."""
    return bool(load().with_cuda)


def require_cuda(what: str) -> None:
    """Raises a clear error when `what` needs the CUDA kernels and _C was built without them."""
    if not has_cuda():
        raise RuntimeError(
            f"{what}: cnnkernels._C was built without CUDA kernels. Rebuild on a machine with nvcc "
            "and a CUDA build of torch, forcing CUDA on with `CNNKERNELS_CUDA=1 pip install "
            "--no-build-isolation -e .` (TORCH_CUDA_ARCH_LIST defaults to '8.0;9.0')."
        )


def build_info() -> dict:
    """What the extension contains: {'cuda': bool, 'cuda_archs': str, 'cpu_parallel': bool}.

    cpu_parallel: the CPU kernels were compiled with OpenMP, so they run on
    torch.get_num_threads() threads (at::parallel_for is serial without it).
    """
    c = load()
    return {"cuda": bool(c.with_cuda), "cuda_archs": c.cuda_archs, "cpu_parallel": bool(c.cpu_parallel)}
