"""Run by tests/test_triton_codegen.py in a fresh process (it needs Triton compiling for a GPU,
not interpreting): compiles the conv kernels of a few problems, and the max-pooling backward,
for sm_90 and prints, as JSON, how each kernel's PTX moves its operands from global memory and
how many integer divisions its loops do. Needs no GPU: a stand-in driver makes Triton compile
for sm_90 and the launch is stubbed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.compiler import CompiledKernel  # noqa: E402
from triton_aot_check import stub_launches  # noqa: E402

COMPILED: list[CompiledKernel] = []


def global_loads(ptx: str) -> dict[str, int]:
    """Counts of the PTX instructions that read global memory: asynchronous copies into shared
    memory by width in bytes ("cp.async 16"), and loads into registers by type ("ld.global.b16")."""
    counts: dict[str, int] = {}
    for width in re.findall(r"cp\.async\.c[ag]\.shared\.global(?:\.[a-z0-9]+)* \[[^\]]*\], \[[^\]]*\], (\w+)", ptx):
        key = f"cp.async {int(width, 0)}"
        counts[key] = counts.get(key, 0) + 1
    for load in re.findall(r"\bld\.global(?:\.[a-z0-9]+)+", ptx):
        counts[load] = counts.get(load, 0) + 1
    tiles = len(re.findall(r"\bcp\.async\.bulk\.tensor\.\dd\.shared::\w+\.global", ptx))
    if tiles:
        counts["tensor tile"] = tiles  # a whole tile through the tensor memory accelerator
    return counts


def loop_divisions(ptx: str) -> int:
    """Integer divisions and remainders by a runtime value (PTX div./rem.: about 20 instructions
    each in sm_90 SASS) inside the kernel's loops, a loop being the lines from a label to a
    branch back to it."""
    lines = ptx.splitlines()
    labels: dict[str, int] = {}
    count = 0
    for i, line in enumerate(lines):
        label = re.match(r"\s*(\$L__\w+):", line)
        if label:
            labels[label.group(1)] = i
        branch = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if branch and branch.group(1) in labels:
            body = lines[labels[branch.group(1)]:i]
            count += sum(1 for op in body if re.match(r"\s*(?:@!?%p\d+\s+)?(?:div|rem)\.", op))
    return count


def register_use(ptx: str) -> dict[str, int]:
    """Registers per thread and bytes spilled to local memory, as Triton's ptxas reports them
    when it assembles the PTX for sm_90a."""
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "kernel.ptx")
        source.write_text(ptx)
        report = subprocess.run([get_ptxas(90).path, "-v", "-arch=sm_90a", str(source), "-o", str(source.with_suffix(".cubin"))],
                                capture_output=True, text=True, check=True).stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return {"registers": int(re.search(r"Used (\d+) registers", report).group(1)),
            "spill_bytes": int(spills.group(1)) + int(spills.group(2))}


def main() -> None:
    stub_launches(90, lambda kernel, *launch: COMPILED.append(kernel))

    from cnnkernels.triton import conv
    conv._check_device = lambda *tensors: None
    cl = torch.channels_last
    results = {}
    # The pointer kernels, also on the pointwise problem they run where tensor descriptors cannot
    # (a GPU without a TMA unit, operands not 16-byte aligned).
    conv._has_tma = lambda device: False
    for name, kernel, stride in (("1x1", 1, 1), ("3x3", 3, 1), ("3x3/2", 3, 2)):
        x = torch.empty(8, 64, 14, 14, dtype=torch.bfloat16).contiguous(memory_format=cl)
        # torch's own layout for a 1x1 kernel's weight, in either memory format: (C, 1, 1, 1).
        w = torch.empty(128, 64, kernel, kernel, dtype=torch.bfloat16).contiguous(memory_format=cl)
        geometry = ([stride, stride], [kernel // 2] * 4, [1, 1], 1)
        config = conv.FORWARD_CONFIGS[0]
        y = conv.conv2d_forward(x, w, None, *geometry, config=config)
        conv.conv2d_backward_input(y, w, list(x.shape), *geometry, config=config)
        conv.conv2d_backward_weight(y, x, list(w.shape), *geometry, config=conv.BACKWARD_WEIGHT_CONFIGS[0])
        kernels = [k for k in COMPILED if k.name.startswith("_conv2d_")]  # not the partial sums'
        results[name] = {"weight_stride": list(w.stride()),
                         "loads": {k.name: global_loads(k.asm["ptx"]) for k in kernels},
                         "loop_divisions": {k.name: loop_divisions(k.asm["ptx"]) for k in kernels}}
        COMPILED.clear()
        # The same tiles with their registers capped (the configs tried on 16-bit operands).
        capped = next(c for c in conv.FORWARD_CONFIGS if c.maxnreg is not None)
        conv.conv2d_forward(x, w, None, *geometry, config=capped)
        conv.conv2d_backward_input(y, w, list(x.shape), *geometry, config=capped)
        conv.conv2d_backward_weight(y, x, list(w.shape), *geometry,
                                    config=next(c for c in conv.BACKWARD_WEIGHT_CONFIGS if c.maxnreg is not None))
        results[name]["capped"] = {k.name: register_use(k.asm["ptx"]) | {"maxnreg": k.metadata.maxnreg}
                                   for k in COMPILED if k.name.startswith("_conv2d_")}
        COMPILED.clear()
        # The same problem with every tensor NCHW (torch's default layout).
        x, w, y = (t.contiguous() for t in (x, w, y))
        conv.conv2d_forward(x, w, None, *geometry, config=config)
        conv.conv2d_backward_input(y, w, list(x.shape), *geometry, config=config)
        conv.conv2d_backward_weight(y, x, list(w.shape), *geometry, config=conv.BACKWARD_WEIGHT_CONFIGS[0])
        results[name]["nchw_loads"] = {k.name: global_loads(k.asm["ptx"]) for k in COMPILED if k.name.startswith("_conv2d_")}
        COMPILED.clear()
    # The pointwise problem on tensor descriptors (sm_90 has a TMA unit), with the first config
    # and the first register-capped one.
    conv._has_tma = lambda device: True
    x = torch.empty(8, 64, 14, 14, dtype=torch.bfloat16).contiguous(memory_format=cl)
    w = torch.empty(128, 64, 1, 1, dtype=torch.bfloat16)
    geometry = ([1, 1], [0] * 4, [1, 1], 1)
    for name, index in (("pointwise", 0), ("pointwise capped", 1)):
        y = conv.conv2d_forward(x, w, None, *geometry, config=conv.POINTWISE_CONFIGS[index])
        conv.conv2d_backward_input(y, w, list(x.shape), *geometry, config=conv.POINTWISE_CONFIGS[index])
        conv.conv2d_backward_weight(y, x, list(w.shape), *geometry, config=conv.POINTWISE_WEIGHT_CONFIGS[index])
        results[name] = {operator: {"kernel": k.name, "loads": global_loads(k.asm["ptx"]),
                                    "wgmma": k.asm["ptx"].count("wgmma.mma_async"), "maxnreg": k.metadata.maxnreg}
                         | register_use(k.asm["ptx"])
                         for operator, k in zip(("forward", "backward_input", "backward_weight"), COMPILED)}
        COMPILED.clear()
    # An RGB stem (3 channels, 7x7 stride 2): the few-channel loops over taps and channels together.
    x = torch.empty(8, 3, 32, 32, dtype=torch.bfloat16).contiguous(memory_format=cl)
    w = torch.empty(64, 3, 7, 7, dtype=torch.bfloat16).contiguous(memory_format=cl)
    geometry = ([2, 2], [3] * 4, [1, 1], 1)
    y = conv.conv2d_forward(x, w, None, *geometry, config=conv.FORWARD_CONFIGS[0])
    conv.conv2d_backward_weight(y, x, list(w.shape), *geometry, config=conv.BACKWARD_WEIGHT_CONFIGS[0])
    results["stem"] = {k.name: {"loop_divisions": loop_divisions(k.asm["ptx"])} | register_use(k.asm["ptx"])
                       for k in COMPILED if k.name.startswith("_conv2d_")}
    COMPILED.clear()
    # The stem again with 64-bit offsets, which tensors past 2^31 elements (or windows past 2^29
    # in coordinate) take: the int64 forms of the coordinate helpers, which the interpreter
    # cannot check, since it runs them as Python.
    from cnnkernels.triton import _common
    conv._offset_dtype = lambda *tensors, extent=0: triton.language.int64
    _common._PLANS.clear()
    errors = {}
    for operator, run in (
            ("forward", lambda: conv.conv2d_forward(x, w, None, *geometry, config=conv.FORWARD_CONFIGS[0])),
            ("backward_input", lambda: conv.conv2d_backward_input(y, w, list(x.shape), *geometry,
                                                                  config=conv.BACKWARD_INPUT_CONFIGS[0])),
            ("backward_weight", lambda: conv.conv2d_backward_weight(y, x, list(w.shape), *geometry,
                                                                    config=conv.BACKWARD_WEIGHT_CONFIGS[0]))):
        try:
            run()
        except Exception as error:  # noqa: BLE001  (reported to the test)
            errors[operator] = str(error.__cause__ or error)[-500:]
    results["stem 64-bit"] = {"errors": errors, "loop_divisions": {
        k.name: loop_divisions(k.asm["ptx"]) for k in COMPILED if k.name.startswith("_conv2d_")}}
    COMPILED.clear()
    # The max-pooling backward (3x3 stride 2, ResNet's): a gather whose loops run over the taps.
    from cnnkernels.triton import pool
    pool._check_device = lambda *tensors: None
    for name, memory_format in (("nchw", torch.contiguous_format), ("channels_last", cl)):
        x = torch.empty(8, 64, 28, 28, dtype=torch.bfloat16).contiguous(memory_format=memory_format)
        window = ([3, 3], [2, 2], [1, 1], [1, 1])
        y, indices = pool.max_pool2d_forward(x, *window, False, config=pool.TILE_CONFIGS[0])
        COMPILED.clear()
        pool.max_pool2d_backward(y, indices, list(x.shape), *window, config=pool.TILE_CONFIGS[0])
        results[f"max_pool2d_backward {name}"] = {"loop_divisions": loop_divisions(COMPILED[0].asm["ptx"])}
        COMPILED.clear()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
