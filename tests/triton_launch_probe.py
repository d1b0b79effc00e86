"""Run by tests/test_triton_launch.py in a fresh process (it needs Triton compiling for a GPU,
not interpreting): records the arguments every kernel launch hands to Triton's launcher, with
Triton's own launch path and with cnnkernels.triton._common's direct one, and prints them as
JSON. Needs no GPU: a stand-in driver makes Triton compile for sm_90 and the launch is stubbed.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import torch  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402
from triton_aot_check import stub_launches  # noqa: E402

LAUNCHES: list[dict] = []
LAUNCHES_THROUGH_TRITON: list[int] = []  # for each launch through Triton's path, how many came before


def _describe(value):
    if isinstance(value, torch.Tensor):
        return {"tensor": [str(value.dtype), list(value.shape), value.data_ptr() % 16]}
    if isinstance(value, TensorDescriptor):
        return {"descriptor": [str(value.base.dtype), list(value.shape), list(value.strides), list(value.block_shape)]}
    return repr(value)


def _record(kernel, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter_hook,
            exit_hook, *args):
    LAUNCHES.append({"kernel": kernel.name, "compiled": id(kernel), "grid": [grid_x, grid_y, grid_z],
                     "stream": stream, "metadata": repr(packed_metadata), "hooks": [repr(enter_hook), repr(exit_hook)],
                     "args": [_describe(a) for a in args]})


def main() -> None:
    stub_launches(90, _record)
    # Autotuning without timing: the first config wins (the probe compiles only what runs).
    Autotuner._bench = lambda self, *args, config, **kwargs: [float(self.configs.index(config))]

    import cnnkernels.triton._common as common
    from cnnkernels.triton import conv, norm, pool
    for module in (common, conv, norm, pool):
        module._check_device = lambda *tensors: None
    through_triton = common._launch_through_triton

    def counted(*args):
        LAUNCHES_THROUGH_TRITON.append(len(LAUNCHES))
        return through_triton(*args)

    common._launch_through_triton = counted

    def calls(name, fn):
        """fn() three times: Triton's path, then the direct one, then the direct one again with
        other tensors of the same kind."""
        for attempt in range(3):
            before = len(LAUNCHES)
            fn()
            for index in range(before, len(LAUNCHES)):
                LAUNCHES[index].update(call=name, attempt=attempt, through_triton=index in LAUNCHES_THROUGH_TRITON)

    bf16, cl = torch.bfloat16, torch.channels_last
    x = torch.empty(2, 32, 30, 24, dtype=bf16).contiguous(memory_format=cl)
    w = torch.empty(16, 32, 3, 3, dtype=bf16).contiguous(memory_format=cl)
    geometry = ([2, 1], [1, 1, 0, 0], [1, 1], 1)
    cfg = next(c for c in conv.FORWARD_CONFIGS if c.kwargs == dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64))
    calls("conv2d explicit config", lambda: conv.conv2d_forward(x.clone(), w, None, *geometry, config=cfg))
    # A view one element into its storage: a pointer not 16-byte aligned, which Triton compiles
    # differently; the direct path must not reuse the aligned launch for it.
    flat = torch.empty(x.numel() + 1, dtype=bf16)
    unaligned = flat[1:].view(2, 30, 24, 32).permute(0, 3, 1, 2)
    calls("conv2d unaligned", lambda: conv.conv2d_forward(unaligned, w, None, *geometry, config=cfg))
    dy = torch.empty(8, 16, 24, 24, dtype=bf16)  # several splits: partial sums, then their total
    calls("conv2d_backward_bias (two untuned kernels)", lambda: conv.conv2d_backward_bias(dy.clone()))
    for module in (common, conv, norm, pool):
        module._autotune = lambda: True
    conv._has_tma = lambda device: True  # compiling for sm_90
    # A pointwise layer: tensor descriptors, whose block shapes the autotuned config's pre_hook sets.
    xp = torch.empty(2, 64, 6, 5, dtype=bf16).contiguous(memory_format=cl)
    wp = torch.empty(32, 64, 1, 1, dtype=bf16)
    calls("conv2d pointwise autotuned", lambda: conv.conv2d_forward(xp.clone(), wp, None, [1, 1], [0] * 4, [1, 1], 1))
    y = torch.empty(2, 24, 40, 30, dtype=torch.float32)
    calls("max_pool2d autotuned", lambda: pool.max_pool2d_forward(y.clone(), [3, 3], [2, 2], [1, 1], [1, 1], True))
    # Training-mode batch norm: two autotuned kernels, and between them an untuned one that
    # takes float arguments (momentum, eps).
    z, channel = torch.empty(4, 8, 6, 5, dtype=bf16).contiguous(memory_format=cl), torch.empty(8, dtype=bf16)
    running = [torch.zeros(8), torch.ones(8)]
    calls("batch_norm training", lambda: norm.batch_norm_forward(z.clone(), channel, channel, None, *running, True, 0.1,
                                                                 1e-5, "relu"))
    remembered = len(common._LAUNCHES)
    # Layer norm's rows (group norm with one group over (rows, 5)): the statistics kernel runs
    # N * G programs, and N is none of its arguments. Six rows twice (Triton's path, then the
    # direct one), then 24 rows, which must get a grid of their own.
    for attempt, (name, rows) in enumerate((("6 rows", 6), ("6 rows again", 6), ("24 rows", 24))):
        before = len(LAUNCHES)
        norm.group_norm_forward(torch.empty(rows, 5), None, None, 1, 1e-5, "none")
        for index in range(before, len(LAUNCHES)):
            LAUNCHES[index].update(call=f"group_norm, {name}", attempt=attempt,
                                   through_triton=index in LAUNCHES_THROUGH_TRITON)
    print(json.dumps({"launches": LAUNCHES, "remembered": remembered}))


if __name__ == "__main__":
    main()
