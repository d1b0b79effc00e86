"""cnnkernels: hand-written CPU, CUDA C++ and Triton kernels for convolutional networks,
registered as PyTorch custom operators with autograd.

    import cnnkernels
    y = cnnkernels.functional.conv2d(x, w, b, stride=2, padding=1)
    with cnnkernels.backend("cpu"):
        layer = cnnkernels.nn.Conv2d(3, 64, 3, padding="same")
"""
from cnnkernels import _extension
from cnnkernels._extension import build_info
from cnnkernels.backend import BackendError, backend

_extension.load()

from cnnkernels import functional, nn, ops  # noqa: E402  (needs the extension loaded)

__all__ = ["BackendError", "backend", "build_info", "functional", "nn", "ops"]
__version__ = "0.1.0"
