"""LeNet-5 (LeCun et al., 1998), the network of the course's first table: two convolution +
subsampling stages and three fully connected layers, for 32x32 single-channel images.

    input 1x32x32 -> C1 conv 5x5, 6 maps  -> 6x28x28 -> S2 2x2 pooling -> 6x14x14
                  -> C3 conv 5x5, 16 maps -> 16x10x10 -> S4 2x2 pooling -> 16x5x5
                  -> C5 120 -> F6 84 -> output 10

The convolutions and poolings are cnnkernels layers; the fully connected layers and the
activations are torch's. `pooling="max"` (the modern choice) or `"avg"` (the paper's
subsampling, without its trainable coefficients).
"""
from __future__ import annotations

import torch
from torch import nn

from cnnkernels import nn as cnn


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, pooling: str = "max",
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        pool = cnn.MaxPool2d if pooling == "max" else cnn.AvgPool2d
        self.features = nn.Sequential(
            cnn.Conv2d(in_channels, 6, kernel_size=5), activation(), pool(2),  # C1, S2
            cnn.Conv2d(6, 16, kernel_size=5), activation(), pool(2),  # C3, S4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), activation(),  # C5
            nn.Linear(120, 84), activation(),  # F6
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def lenet5(**kwargs) -> LeNet5:
    return LeNet5(**kwargs)
