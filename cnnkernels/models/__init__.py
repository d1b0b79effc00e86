"""Classic architectures built from cnnkernels.nn layers, one file per family, and a registry.

    model = cnnkernels.models.get_model("lenet5", num_classes=10)
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnkernels.models.lenet import LeNet5, lenet5

_REGISTRY: dict[str, Callable[..., nn.Module]] = {"lenet5": lenet5}


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


__all__ = ["LeNet5", "get_model", "lenet5", "list_models"]
