"""torch.nn drop-in modules built on cnnkernels' operators."""
from cnnkernels.nn.conv import Conv2d
from cnnkernels.nn.pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "MaxUnpool2d"]
