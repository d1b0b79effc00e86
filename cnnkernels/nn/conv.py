"""Convolution modules: torch.nn's constructors and state_dict keys, cnnkernels' kernels."""
from __future__ import annotations

import torch
from torch import nn

from cnnkernels import functional
from cnnkernels.nn._backend import BackendMixin

__all__ = ["Conv2d"]


class Conv2d(BackendMixin, nn.Conv2d):
    """torch.nn.Conv2d on cnnkernels kernels.

    Same constructor (padding_mode "zeros", "reflect", "replicate" or "circular"), parameters,
    initialisation and state_dict keys as torch.nn.Conv2d, so weights load in both directions.
    The extra keyword `backend` pins this layer to a backend (default: the one in force, see
    cnnkernels.backend).
    """

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            # Non-zero padding modes pad explicitly (reflect/replicate/circular copies of the
            # border), then convolve without implicit padding, as torch.nn.Conv2d does.
            padded = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return functional.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups, backend=self.backend)
        return functional.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, backend=self.backend)
