"""What every operator family's ops module does the same way: collect one operator set per
backend, register fake kernels and autograd formulas on each distinct set, and route a call.

The C++ operators (torch.ops.cnnkernels) serve both the cpu and the cuda backend (one operator,
a kernel per dispatch key); the Triton operators live in torch.ops.cnnkernels_triton with the
same names and contracts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch

from cnnkernels import _extension
from cnnkernels.backend import select as select_backend

OpSet = TypeVar("OpSet", bound=NamedTuple)


def backend_ops(op_set: type[OpSet], has_triton: bool, names: Sequence[str] | None = None) -> dict[str, OpSet]:
    """backend -> its operators of the family `op_set`, a NamedTuple whose fields hold the
    operators named `names` (default: the fields' own names), in order."""
    def ops_in(namespace: str) -> OpSet:
        ns = getattr(torch.ops, namespace)
        return op_set(*(getattr(ns, name).default for name in names or op_set._fields))

    cpp = ops_in("cnnkernels")
    ops = {"cpu": cpp}
    if _extension.has_cuda():
        ops["cuda"] = cpp
    if has_triton:
        ops["triton"] = ops_in("cnnkernels_triton")
    return ops


def register(ops: dict[str, OpSet], fakes: dict[str, Callable],
             autograd: Callable[[OpSet], dict[str, tuple[Callable, Callable]]]) -> None:
    """Registers fakes[field] on the operator in `field` and autograd(op set)[field] = (backward,
    setup_context) on each distinct operator set (cpu and cuda share one)."""
    for op_set in {id(o): o for o in ops.values()}.values():
        for name, fake in fakes.items():
            torch.library.register_fake(getattr(op_set, name), fake)
        for name, (backward, setup) in autograd(op_set).items():
            torch.library.register_autograd(getattr(op_set, name), backward, setup_context=setup)


def ops_for(ops: dict[str, OpSet], op: str, input: torch.Tensor, backend: str | None) -> OpSet:
    """The operator set of the backend chosen for a call of `op` (see cnnkernels.backend)."""
    return ops[select_backend(op, input.device, tuple(ops), backend)]
