"""Pooling modules: torch.nn's constructors, cnnkernels' kernels."""
from __future__ import annotations

from torch import nn

from cnnkernels import functional
from cnnkernels.nn._backend import BackendMixin

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "MaxUnpool2d"]


class MaxPool2d(BackendMixin, nn.MaxPool2d):
    """torch.nn.MaxPool2d on cnnkernels kernels."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return functional.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices, backend=self.backend)


class AvgPool2d(BackendMixin, nn.AvgPool2d):
    """torch.nn.AvgPool2d on cnnkernels kernels."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return functional.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override, backend=self.backend)


class AdaptiveAvgPool2d(BackendMixin, nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d on cnnkernels kernels (the global-pooling head of NiN,
    GoogLeNet, ResNet, DenseNet, MobileNet)."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return functional.adaptive_avg_pool2d(input, self.output_size, backend=self.backend)


class AdaptiveMaxPool2d(BackendMixin, nn.AdaptiveMaxPool2d):
    """torch.nn.AdaptiveMaxPool2d on cnnkernels kernels."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return functional.adaptive_max_pool2d(input, self.output_size, self.return_indices, backend=self.backend)


class MaxUnpool2d(BackendMixin, nn.MaxUnpool2d):
    """torch.nn.MaxUnpool2d on cnnkernels kernels."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input, indices, output_size=None):
        return functional.max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding, output_size,
                              backend=self.backend)
