"""torch.nn drop-in modules built on cnnkernels' operators."""
from cnnkernels.nn.conv import Conv2d

__all__ = ["Conv2d"]
