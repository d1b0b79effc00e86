"""Custom operators: fake kernels, autograd and backend routing, one module per family."""
from cnnkernels.ops import conv, pool

__all__ = ["conv", "pool"]
