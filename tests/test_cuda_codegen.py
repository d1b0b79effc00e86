"""What the CUDA conv kernels compile to, read off nvcc's PTX for sm_90 (no GPU needed): a
property of the generated code that decides their speed and that neither the host emulator nor
a result comparison can show. Compiling conv_kernel.cu to PTX takes about a minute on 2 cores."""
from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# torch's CUDAExtension compiles with these (see setup.py); the kernels must build under them.
FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
         "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]


@pytest.fixture(scope="module")
def conv_ptx(tmp_path_factory) -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path_factory.mktemp("ptx") / "conv_kernel.ptx"
    subprocess.run([nvcc, *FLAGS, "-arch=sm_90", "-ptx", "-Icsrc/include", "-Icsrc/cuda", "csrc/cuda/conv_kernel.cu",
                    "-o", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=900)
    return out.read_text()


def test_tensor_core_fragments_load_from_shared_memory(conv_ptx):
    """Every WMMA fragment load names the .shared state space (one ldmatrix each in SASS), in
    bf16 as in fp16. CUDA 13.0's wmma::load_matrix_sync issues bf16's without it, which nvcc
    lowers to four 32-bit generic loads per fragment."""
    loads = re.findall(r"\bwmma\.load\.[a-z0-9.]+", conv_ptx)
    assert loads, "no tensor-core kernels in the PTX"
    assert all(".shared." in load for load in loads), sorted({load for load in loads if ".shared." not in load})
    by_type = collections.defaultdict(collections.Counter)
    for load in loads:
        *shape, dtype = load.split(".")
        by_type[dtype][".".join(shape)] += 1
    assert set(by_type) == {"bf16", "f16"} and by_type["bf16"] == by_type["f16"], dict(by_type)
