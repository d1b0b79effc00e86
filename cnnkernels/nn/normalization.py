"""Normalisation modules: torch.nn's constructors, parameters and state_dict keys, cnnkernels'
kernels. BatchNormReLU2d and BatchNormAddReLU2d are BatchNorm2d with the activation (and the
residual add of a ResNet block's tail) fused into the same kernels."""
from __future__ import annotations

from torch import nn

from cnnkernels import functional
from cnnkernels.nn._backend import BackendMixin

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNormReLU2d", "BatchNormAddReLU2d", "GroupNorm", "LayerNorm",
           "InstanceNorm1d", "InstanceNorm2d", "RMSNorm", "LocalResponseNorm"]


class _BatchNormMixin(BackendMixin):
    """torch's _BatchNorm bookkeeping (num_batches_tracked, momentum=None as a cumulative
    average, batch statistics in eval when no running statistics are kept) around the fused
    cnnkernels operator."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def _normalize(self, input, residual=None, relu: bool = False):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # The buffers are read in eval and written in training only when they are tracked.
        keep = not self.training or self.track_running_stats
        running_mean = self.running_mean if keep else None
        running_var = self.running_var if keep else None
        args = (running_mean, running_var, self.weight, self.bias, batch_stats, factor, self.eps)
        if residual is not None:
            return functional.batch_norm_add_relu(input, residual, *args, backend=self.backend)
        if relu:
            return functional.batch_norm_relu(input, *args, backend=self.backend)
        return functional.batch_norm(input, *args, backend=self.backend)

    def forward(self, input):
        return self._normalize(input)


class BatchNorm1d(_BatchNormMixin, nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on cnnkernels kernels: (N, C) or (N, C, L) input."""


class BatchNorm2d(_BatchNormMixin, nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on cnnkernels kernels."""


class BatchNormReLU2d(BatchNorm2d):
    """relu(BatchNorm2d(x)) as one kernel each way; BatchNorm2d's parameters and state_dict keys."""

    def forward(self, input):
        return self._normalize(input, relu=True)


class BatchNormAddReLU2d(BatchNorm2d):
    """relu(BatchNorm2d(x) + residual), the tail of a ResNet block, as one kernel each way;
    BatchNorm2d's parameters and state_dict keys. Called as module(x, residual)."""

    def forward(self, input, residual):
        return self._normalize(input, residual=residual)


class GroupNorm(BackendMixin, nn.GroupNorm):
    """torch.nn.GroupNorm on cnnkernels kernels, with an optional fused activation
    (activation=None, "relu", "silu" or "gelu")."""

    def __init__(self, *args, activation: str | None = None, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = activation
        self._set_backend(backend)

    def forward(self, input):
        return functional.group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                                     activation=self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"


class LayerNorm(BackendMixin, nn.LayerNorm):
    """torch.nn.LayerNorm on cnnkernels kernels."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                                     backend=self.backend)


class _InstanceNormMixin(BackendMixin):
    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    # torch's _InstanceNorm.forward checks the input and handles unbatched input, then calls this.
    def _apply_instance_norm(self, input):
        return functional.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                        self.training or not self.track_running_stats,
                                        0.0 if self.momentum is None else self.momentum, self.eps,
                                        backend=self.backend)


class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    """torch.nn.InstanceNorm1d on cnnkernels kernels."""


class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d on cnnkernels kernels."""


class RMSNorm(BackendMixin, nn.RMSNorm):
    """torch.nn.RMSNorm on cnnkernels kernels."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return functional.rms_norm(input, self.normalized_shape, self.weight, self.eps, backend=self.backend)


class LocalResponseNorm(BackendMixin, nn.LocalResponseNorm):
    """torch.nn.LocalResponseNorm (AlexNet) on cnnkernels kernels."""

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return functional.local_response_norm(input, self.size, self.alpha, self.beta, self.k, backend=self.backend)
