"""Builds cnnkernels._C: the CPU kernels always, the CUDA kernels when CUDA is enabled.

CNNKERNELS_CUDA=1 forces the CUDA sources in, CNNKERNELS_CUDA=0 leaves them out; unset, they are
built when torch is a CUDA build and nvcc is found. TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0".
"""
import glob
import os
import sys

import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _find_cuda_toolkit():
    """The CUDA toolkit root: the first candidate that has include/cuda_runtime.h.

    torch guesses CUDA_HOME from nvcc's location, which is wrong when nvcc on PATH is a
    wrapper script outside the toolkit (as on the development machines: /usr/local/bin/nvcc).
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


if _find_cuda_toolkit() is not None:
    os.environ["CUDA_HOME"] = _find_cuda_toolkit()

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME on import)


def _cuda_requested():
    flag = os.environ.get("CNNKERNELS_CUDA", "").strip()
    if flag in ("0", "1"):
        return flag == "1", f"CNNKERNELS_CUDA={flag}"
    import torch

    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}"


def _pip_cuda_include_dirs():
    # pip's CUDA torch ships some CUDA headers (cublas_v2.h, cusparse.h, ...) inside the
    # nvidia.* wheels rather than the toolkit; torch's headers include them. They go after
    # every -I directory (-idirafter) so the toolkit's own cuda_runtime.h keeps precedence.
    dirs = []
    for entry in sys.path:
        dirs += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted(set(dirs))


def _relative(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def extension():
    with_cuda, why = _cuda_requested()
    sources = [os.path.join(CSRC, "module.cpp"), os.path.join(CSRC, "ops.cpp")]
    sources += glob.glob(os.path.join(CSRC, "cpu", "*.cpp"))
    include_dirs = [os.path.join(CSRC, "include"), CSRC]
    # -fopenmp: at::parallel_for is an OpenMP loop compiled into the caller; without it (and
    # -fopenmp-simd alone) every CPU kernel runs on one thread. The extension then needs
    # libgomp.so.1, which torch has already loaded (its wheel ships that library).
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    macros = []
    if with_cuda:
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        sources += glob.glob(os.path.join(CSRC, "cuda", "*.cpp"))
        sources += glob.glob(os.path.join(CSRC, "cuda", "*.cu"))
        cxx += [flag for d in _pip_cuda_include_dirs() for flag in ("-idirafter", d)]
        macros += [("CNNKERNELS_WITH_CUDA", "1"), ("CNNKERNELS_CUDA_ARCHS", f'"{archs}"')]
        print(f"cnnkernels: building CPU + CUDA kernels ({why}); TORCH_CUDA_ARCH_LIST={archs}")
    else:
        print(f"cnnkernels: building CPU kernels only ({why})")
    print("cnnkernels: sources: " + " ".join(_relative(sources)))
    kind = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    extra = {"cxx": cxx}
    if with_cuda:
        extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    return kind(
        name="cnnkernels._C",
        sources=_relative(sources),
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=find_packages(include=["cnnkernels", "cnnkernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
