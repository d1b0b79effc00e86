"""Builds the CUDA backend for the host emulator (see emulator.h): csrc/ops.cpp, the host code
csrc/cuda/{conv,pool,norm}.cpp and the kernels csrc/cuda/*_kernel.cu, compiled by the host C++
compiler into one Python extension module.

* Every source is compiled with -Dcnnkernels=cnnkernels_emu: the C++ namespace and the operator
  library become cnnkernels_emu (TORCH_LIBRARY stringizes its namespace through C10_STRINGIZE,
  which expands the macro), so the build loads beside the real extension without clashing, and
  -DCNNK_CUDA_DISPATCH_KEY=CPU registers the CUDA host functions as CPU kernels:
  torch.ops.cnnkernels_emu.conv2d(cpu_tensor, ...) runs the CUDA host code and kernels.
* Each .cu becomes a generated .cpp in the build directory: `#include "emulator.h"`, a #line
  directive (diagnostics and barrier sites name the .cu's own lines) and the .cu's text with
  every `kernel<<<grid, block, shmem, stream>>>(args);` rewritten into
  `::emu::launch("kernel", ::emu::LaunchConfig(grid, block, shmem, stream), <thunk>, args);`
  (the thunk, a lambda, calls the kernel), and every `extern __shared__ T name[];` into a pointer
  `T* const name` to the launch's dynamic shared memory (emu::dynamic_shared), keeping the line
  count.
* conv_kernel.cu's test hooks CNNK_CONV_INDEX32_LIMIT and CNNK_CONV_FORCE_TILE and pool_kernel.cu's
  CNNK_POOL_INDEX32_LIMIT are expressions, so they are defined as the emulator's runtime
  variables: one build reaches the 64-bit index paths and both conv tile sizes on small problems
  (the module's set_conv_test_hooks and set_pool_test_hooks).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
HERE = Path(__file__).resolve().parent
KERNELS = ("conv_kernel", "pool_kernel", "norm_kernel")
MODULE_NAME = "cnnkernels_cuda_emulator"

CFLAGS = [
    "-std=c++20",
    "-O1",  # the build dominates (about 40 s on 2 cores; the tests take seconds): no higher -O
    "-fvisibility=hidden",  # nothing binds to the real extension's or libcudart's symbols
    "-U_FORTIFY_SOURCE",  # its longjmp check rejects the fibers' stack switches
    "-fsanitize=alignment",  # misaligned vector accesses -> emulator.cpp's handler
    "-fsanitize-recover=alignment",
    "-Dcnnkernels=cnnkernels_emu",
    "-DCNNK_CUDA_DISPATCH_KEY=CPU",
    "-DCNNK_CONV_INDEX32_LIMIT=::emu::conv_index32_limit",
    "-DCNNK_CONV_FORCE_TILE=::emu::conv_force_tile",
    "-DCNNK_POOL_INDEX32_LIMIT=::emu::pool_index32_limit",
    # torch compiles its CUDA sources with these; the kernels must not rely on the conversions.
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include directory (headers only: nothing links against CUDA)."""
    from torch.utils import cpp_extension

    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and (Path(root) / "include" / "cuda_runtime.h").is_file() and (Path(root) / "include" / "mma.h").is_file():
            return Path(root) / "include"
    return None


def missing_toolchain() -> str | None:
    """Why the emulated build cannot be made here, or None."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (CXX or c++ on PATH)"
    if cuda_include_dir() is None:
        return "no CUDA headers (set CUDA_HOME to a toolkit with include/cuda_runtime.h)"
    return None


_LAUNCH = re.compile(r"<<<(?P<config>.*?)>>>\s*\(", re.S)
_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?(?P<type>[\w:]+(?:\s+[\w:]+)*?)\s+(?P<name>\w+)\s*\[\s*\]\s*;")


def _callee_start(text: str, end: int) -> int:
    """Start of the kernel expression ending at `end`: a qualified name with template arguments."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":  # template arguments, matched backwards
        depth = 0
        while True:
            i -= 1
            depth += {">": 1, "<": -1}.get(text[i], 0)
            if depth == 0:
                break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced launch arguments at offset {open_at}")


def rewrite_launches(text: str) -> tuple[str, int]:
    """The source with every kernel launch replaced by an emulator launch (same line count)."""
    out, pos, count = [], 0, 0
    while (m := _LAUNCH.search(text, pos)) is not None:
        start = _callee_start(text, m.start())
        callee = text[start:m.start()].strip()
        close = _matching_paren(text, m.end() - 1)
        args = text[m.end():close]
        thunk = f"[](auto&&... a) {{ {callee}(static_cast<decltype(a)&&>(a)...); }}"
        call = (f'::emu::launch("{callee}", ::emu::LaunchConfig({m.group("config")}), {thunk}'
                f'{", " if args.strip() else ""}{args})')
        lost_lines = text[start:close + 1].count("\n") - call.count("\n")
        out.append(text[pos:start] + call + "\n" * lost_lines)
        pos = close + 1
        count += 1
    out.append(text[pos:])
    return "".join(out), count


def rewrite_dynamic_shared(text: str) -> str:
    """The source with every `extern __shared__ T name[];` replaced by `T* const name = ...;`, a
    pointer to the emulated launch's dynamic shared memory (one line for one)."""
    return _DYNAMIC_SHARED.sub(lambda m: f"{m['type']}* const {m['name']} = static_cast<{m['type']}*>"
                                         f"(::emu::dynamic_shared());", text)


def generate_sources(build_dir: Path) -> list[Path]:
    """The generated kernel sources; a file is rewritten only when its text changes (ninja)."""
    generated = []
    for name in KERNELS:
        cu = CSRC / "cuda" / f"{name}.cu"
        text = cu.read_text()
        body, count = rewrite_launches(rewrite_dynamic_shared(text))
        if count != text.count("<<<") or "<<<" in body:
            raise RuntimeError(f"{cu}: rewrote {count} of {text.count('<<<')} kernel launches")
        target = build_dir / f"{name}.cpp"
        source = f'#include "emulator.h"\n#line 1 "{cu}"\n{body}'
        if not target.exists() or target.read_text() != source:
            # Atomically: pytest-xdist workers may generate at once (cpp_extension then builds
            # under a lock file, one worker at a time).
            temporary = target.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(source)
            os.replace(temporary, target)
        generated.append(target)
    return generated


def build(build_dir: Path, verbose: bool = False):
    """Compiles (incrementally, with ninja) and imports the emulated CUDA backend; returns the
    emulator module (errors, statistics, test hooks). Its operators are torch.ops.cnnkernels_emu."""
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    if shutil.which("ninja") is None:  # the venv's ninja, when the venv is not activated
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    sources = [CSRC / "ops.cpp", *(CSRC / "cuda" / f"{f}.cpp" for f in ("conv", "pool", "norm")),
               *generate_sources(build_dir), HERE / "emulator.cpp"]
    includes = [HERE / "fake_include", HERE, CSRC / "include", CSRC, CSRC / "cuda", cuda_include_dir()]
    return cpp_extension.load(
        name=MODULE_NAME,
        sources=[str(s) for s in sources],
        extra_cflags=CFLAGS,
        extra_include_paths=[str(p) for p in includes],
        build_directory=str(build_dir),
        verbose=verbose,
    )
