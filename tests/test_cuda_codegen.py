"""What the CUDA conv kernels compiled to, read off the sm_90 SASS in the built extension with
cuobjdump (Triton ships one; no GPU needed): properties of the machine code that decide their
speed and that neither the host emulator nor a comparison of results can show."""
from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cnnkernels._extension import build_info, load


def _cuobjdump() -> str | None:
    try:
        import triton.backends.nvidia as nvidia
    except ImportError:
        return shutil.which("cuobjdump")
    bundled = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else shutil.which("cuobjdump")


@pytest.fixture(scope="module")
def tile_kernels() -> dict[str, dict]:
    """The sm_90 conv tile kernels on tensor cores: mangled name -> {"resources": the
    cuobjdump resource line, "sass": the disassembly}."""
    # Hopper's code, plain or with its architecture-specific features: the lent GPU machines set
    # TORCH_CUDA_ARCH_LIST=9.0a, which scripts/gpu_check.sh keeps.
    hopper = [arch for arch in ("9.0", "9.0a") if arch in build_info()["cuda_archs"].split(";")]
    if not build_info()["cuda"] or not hopper:
        pytest.skip("the extension was built without sm_90 CUDA kernels")
    sm = "sm_" + hopper[0].replace(".", "")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (Triton's nvidia backend ships one)")
    library = load().__file__

    def dump(*args):
        return subprocess.run([tool, "-arch", sm, *args, library], capture_output=True, text=True,
                              check=True, timeout=600).stdout

    resources = dict(re.findall(r"Function (\w*conv_gemm_kernel\w*WmmaEngine\w*):\s*\n\s*(.*)", dump("-res-usage")))
    assert resources, "no tensor-core conv kernels in the extension"
    # Disassembling is slow (about 40 s for the whole library): the large tile's kernels with
    # 32-bit offsets (every problem, both load modes of each operand) stand for the others.
    large = [name for name in resources if "Li128ELi128E" in name and "IS3_iEE" in name]
    sass = {text.split("\n", 1)[0].strip(): text
            for text in re.split(r"\n\s*Function : ", dump("-sass", "-fun", ",".join(large)))[1:]}
    return {name: {"resources": line, "sass": sass.get(name)} for name, line in resources.items()}


def _shared_loads(sass: str) -> collections.Counter:
    return collections.Counter(re.findall(r"\b(LD\.E\w*|LDSM[.\w]*)\b", sass))


def test_tensor_core_fragments_load_with_ldmatrix(tile_kernels):
    """Every WMMA fragment comes from shared memory in one ldmatrix (LDSM), in bf16 exactly as in
    the fp16 twin kernel: CUDA 13.0's wmma::load_matrix_sync gives bf16 four generic 32-bit
    loads (LD.E) per fragment instead, which conv_kernel.cu's load_stage_fragment avoids."""
    fp16 = {name.replace("13__nv_bfloat16", "6__half"): name for name, kernel in tile_kernels.items()
            if "13__nv_bfloat16" in name and kernel["sass"] is not None}
    assert len(fp16) == 12 and all(tile_kernels[half]["sass"] for half in fp16), "3 problems x 4 load modes, and twins"
    for half, bf16 in fp16.items():
        loads = _shared_loads(tile_kernels[bf16]["sass"])
        assert not any(op.startswith("LD.E") for op in loads), (bf16, loads)
        assert loads == _shared_loads(tile_kernels[half]["sass"]), (bf16, loads)


def test_tile_kernels_do_not_spill(tile_kernels):
    """No tensor-core tile kernel keeps registers in local memory (a stack frame)."""
    spilling = {name: line for name, kernel in tile_kernels.items() if (line := kernel["resources"])
                and not re.search(r"\bSTACK:0\b", line)}
    assert not spilling, spilling


def test_large_tiles_fed_by_cp_async_fit_two_blocks_per_sm(tile_kernels):
    """The large tile's kernels whose operands both arrive by cp.async (16-byte runs: channels_last)
    keep within 128 registers per thread, so that two of their 256-thread blocks share an SM's
    64K registers (conv_kernel.cu's kAsyncMinBlocks; without it they take 135-148)."""
    both_async = {name: kernel["resources"] for name, kernel in tile_kernels.items()
                  if "Li128ELi128E" in name and name.endswith("Lb1ELb1EEEvT0_l")}
    assert len(both_async) == 6, sorted(both_async)  # 3 problems x fp16 / bf16
    registers = {name: int(re.search(r"\bREG:(\d+)", line).group(1)) for name, line in both_async.items()}
    assert all(count <= 128 for count in registers.values()), registers
