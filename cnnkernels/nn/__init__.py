"""torch.nn drop-in modules built on cnnkernels' operators."""
from cnnkernels.nn.conv import Conv2d
from cnnkernels.nn.normalization import (BatchNorm1d, BatchNorm2d, BatchNormAddReLU2d, BatchNormReLU2d, GroupNorm,
                                         InstanceNorm1d, InstanceNorm2d, LayerNorm, LocalResponseNorm, RMSNorm)
from cnnkernels.nn.pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "MaxUnpool2d",
           "BatchNorm1d", "BatchNorm2d", "BatchNormReLU2d", "BatchNormAddReLU2d", "GroupNorm", "LayerNorm",
           "InstanceNorm1d", "InstanceNorm2d", "RMSNorm", "LocalResponseNorm"]
