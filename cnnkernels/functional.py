"""Drop-in replacements for torch.nn.functional, running on cnnkernels' own kernels.

Each function has the signature, defaults and errors of its torch.nn.functional namesake, plus
a keyword-only ``backend=`` ("cpu", "cuda", "triton" or "auto"; see cnnkernels.backend).
"""
from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import torch

from cnnkernels._conv_geometry import conv2d_output_shape
from cnnkernels._pool_geometry import adaptive_output_shape, pool2d_output_shape
from cnnkernels.ops import conv as _conv
from cnnkernels.ops import norm as _norm
from cnnkernels.ops import pool as _pool

__all__ = [
    "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_unpool2d",
    "batch_norm", "batch_norm_relu", "batch_norm_add_relu", "group_norm", "layer_norm", "instance_norm",
    "rms_norm", "local_response_norm",
]


def _is_int(value) -> bool:
    """Whether torch's argument parser takes `value` as an int: anything with __index__ (a Python
    or NumPy integer, a 0-d integer tensor), but not a bool."""
    if isinstance(value, (int, torch.SymInt)):  # the common case first
        return not isinstance(value, bool)
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not (value.dtype.is_floating_point or value.dtype.is_complex
                                         or value.dtype == torch.bool)
    return not isinstance(value, bool) and hasattr(type(value), "__index__")


def _is_float(value) -> bool:
    """Whether torch's argument parser takes `value` as a float: any real number (an int, a bool,
    a NumPy scalar) or a 0-d tensor that is not complex."""
    if isinstance(value, (int, float, torch.SymInt, torch.SymFloat)):  # the common case first (bool is an int)
        return True
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.dtype.is_complex
    return isinstance(value, numbers.Real)


def _as_int(value):
    """An _is_int value as an int. A SymInt (a size under torch.compile's dynamic shapes) stays
    symbolic: operator.index would specialise the graph to its current value."""
    return value if isinstance(value, (int, torch.SymInt)) else operator.index(value)


def _as_float(value):
    """An _is_float value as a float; a SymFloat stays symbolic (see _as_int)."""
    return value if isinstance(value, (float, torch.SymFloat)) else float(value)


def _type_name(value) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _int_argument(value, name: str, fn: str, whole=None) -> int:
    """One int of an int or int-list argument (_is_int)."""
    if not _is_int(value):
        shown = _type_name(value) if whole is None else repr(whole)
        raise TypeError(f"{fn}(): argument '{name}' must be an int or a tuple of ints, not {shown}")
    return _as_int(value)


# A scalar argument's type -> (torch's test of a value, the conversion).
_SCALARS = {int: (_is_int, _as_int), float: (_is_float, _as_float), bool: (lambda v: isinstance(v, bool), bool)}


def _scalar(value, kind: type, name: str, fn: str, position: int):
    """A scalar argument of type `kind` (int, float or bool), converted, where torch's argument
    parser takes the value (_is_int, _is_float; a bool only for a bool); else its TypeError.
    Checked here because the operators' schemas would raise a RuntimeError instead, or take
    what torch refuses."""
    test, convert = _SCALARS[kind]
    if not test(value):
        raise TypeError(f"{fn}(): argument '{name}' (position {position}) must be {kind.__name__}, "
                        f"not {_type_name(value)}")
    return convert(value)


def _pair(value, name: str, fn: str = "conv2d") -> list[int]:
    """An int or a sequence of one or two ints -> two ints, with torch's errors."""
    sequence = isinstance(value, Sequence) and not isinstance(value, str)
    values = list(value) if sequence else [value, value]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={list(value)}"
        )
    return [_int_argument(v, name, fn, value if sequence else None) for v in values]


def _conv2d_padding(padding, weight: torch.Tensor, stride: list[int], dilation: list[int]) -> list[int]:
    """padding as (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding != "same":
            raise RuntimeError(f"Invalid padding string: '{padding}'")
        if any(s != 1 for s in stride):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        result = []
        for d, k in zip(dilation, weight.shape[2:]):
            # The window's dilated extent minus one, split with the odd element at the end,
            # as torch does for even kernels.
            total = d * (k - 1)
            result += [total // 2, total - total // 2]
        return result
    top, left = _pair(padding, "padding")
    return [top, top, left, left]


def _check_tensor(value, name: str, fn: str = "conv2d") -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be Tensor, not {type(value).__name__}")


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """2-D cross-correlation, as torch.nn.functional.conv2d.

    input (N, C, H, W) or unbatched (C, H, W); weight (K, C/groups, kH, kW); bias (K,) or None;
    stride, dilation: int or (h, w); padding: int, (h, w), "valid" or "same" (stride 1 only;
    even kernels pad one more at the bottom/right, as torch does); groups divides C and K.
    The output is channels_last when input or weight is, like torch's.
    """
    _check_tensor(input, "input")
    _check_tensor(weight, "weight")
    if bias is not None:
        _check_tensor(bias, "bias")
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: {list(input.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(
            f"conv2d: expected a 4-D (out_channels, in_channels/groups, kH, kW) weight, "
            f"but got weight of size: {list(weight.shape)}"
        )
    groups = _scalar(groups, int, "groups", "conv2d", 7)
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    padding = _conv2d_padding(padding, weight, stride, dilation)
    for other, name in ((weight, "weight"), (bias, "bias")):
        if other is None:
            continue
        if other.dtype != input.dtype:
            raise RuntimeError(f"Input type ({input.dtype}) and {name} type ({other.dtype}) should be the same")
        if other.device != input.device:
            raise RuntimeError(
                f"Input and {name} should be on the same device, but got input on {input.device} "
                f"and {name} on {other.device}"
            )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
            f"{weight.shape[0]} elements, but got bias of size {list(bias.shape)} instead"
        )

    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    conv2d_output_shape(x.shape, weight.shape, stride, padding, dilation, groups)
    out = _conv.conv2d(x, weight, bias, stride, padding, dilation, groups, backend)
    return out.squeeze(0) if unbatched else out


# ---- pooling -------------------------------------------------------------------------------


def _pool_input(input, fn: str) -> tuple[torch.Tensor, bool]:
    """(4-D input, whether it was unbatched) after torch's checks."""
    _check_tensor(input, "input", fn)
    if input.dim() not in (3, 4):
        raise RuntimeError(f"{fn}: Expected 3D or 4D (batch mode) tensor for input, but got: {list(input.shape)}")
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _pool_stride(stride, kernel: list[int], fn: str) -> list[int]:
    """stride defaults to the kernel size (None or an empty sequence, as torch accepts)."""
    if stride is None or (isinstance(stride, Sequence) and len(stride) == 0):
        return kernel
    return _pair(stride, "stride", fn)


def _batch(out, unbatched: bool):
    if isinstance(out, tuple):
        return tuple(t.squeeze(0) for t in out) if unbatched else out
    return out.squeeze(0) if unbatched else out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
               *, backend: str | None = None):
    """2-D max pooling, as torch.nn.functional.max_pool2d: NaN propagates, ties take the first
    element in window order, and the indices are torch's (flat h*W + w in each plane).
    Backward sends each output gradient back to the position of its window's maximum."""
    x, unbatched = _pool_input(input, "max_pool2d")
    kernel = _pair(kernel_size, "kernel_size", "max_pool2d")
    stride = _pool_stride(stride, kernel, "max_pool2d")
    padding = _pair(padding, "padding", "max_pool2d")
    dilation = _pair(dilation, "dilation", "max_pool2d")
    ceil_mode = _scalar(ceil_mode, bool, "ceil_mode", "max_pool2d", 6)
    pool2d_output_shape("max_pool2d", x.shape, kernel, stride, padding, dilation, ceil_mode)
    ops = _pool.ops_for("max_pool2d", x, backend)
    out, indices = ops.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    return _batch((out, indices), unbatched) if return_indices else _batch(out, unbatched)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend: str | None = None):
    """2-D average pooling, as torch.nn.functional.avg_pool2d (same divisor rules: windows are
    cut at the end of the padded input; count_include_pad; divisor_override)."""
    x, unbatched = _pool_input(input, "avg_pool2d")
    kernel = _pair(kernel_size, "kernel_size", "avg_pool2d")
    stride = _pool_stride(stride, kernel, "avg_pool2d")
    padding = _pair(padding, "padding", "avg_pool2d")
    ceil_mode = _scalar(ceil_mode, bool, "ceil_mode", "avg_pool2d", 5)
    count_include_pad = _scalar(count_include_pad, bool, "count_include_pad", "avg_pool2d", 6)
    if divisor_override is not None:
        divisor_override = _scalar(divisor_override, int, "divisor_override", "avg_pool2d", 7)
        if divisor_override == 0:
            raise RuntimeError("avg_pool2d: divisor must be not zero")
    pool2d_output_shape("avg_pool2d", x.shape, kernel, stride, padding, [1, 1], ceil_mode)
    ops = _pool.ops_for("avg_pool2d", x, backend)
    out = ops.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _batch(out, unbatched)


def _adaptive_size(output_size, x: torch.Tensor, fn: str) -> list[int]:
    """An int, or a pair whose None entries keep the input's extent."""
    if _is_int(output_size):
        size = [_as_int(output_size)] * 2
    else:
        size = list(output_size)
        if len(size) == 1:
            size = size * 2
        if len(size) != 2:
            raise RuntimeError(f"{fn}: output_size must be 2, but got {len(size)}")
        size = [x.shape[2 + d] if v is None else _int_argument(v, "output_size", fn, output_size)
                for d, v in enumerate(size)]
    adaptive_output_shape(fn, x.shape, size)
    return size


def adaptive_avg_pool2d(input, output_size, *, backend: str | None = None):
    """2-D adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d: output o
    averages input [floor(o*H/P), ceil((o+1)*H/P))."""
    x, unbatched = _pool_input(input, "adaptive_avg_pool2d")
    size = _adaptive_size(output_size, x, "adaptive_avg_pool2d")
    return _batch(_pool.ops_for("adaptive_avg_pool2d", x, backend).adaptive_avg_pool2d(x, size), unbatched)


def adaptive_max_pool2d(input, output_size, return_indices=False, *, backend: str | None = None):
    """2-D adaptive max pooling, as torch.nn.functional.adaptive_max_pool2d."""
    x, unbatched = _pool_input(input, "adaptive_max_pool2d")
    size = _adaptive_size(output_size, x, "adaptive_max_pool2d")
    out, indices = _pool.ops_for("adaptive_max_pool2d", x, backend).adaptive_max_pool2d(x, size)
    return _batch((out, indices), unbatched) if return_indices else _batch(out, unbatched)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None, *,
                 backend: str | None = None):
    """Max unpooling, as torch.nn.functional.max_unpool2d: the position restore of max pooling.
    Each value goes to the position its index names, every other position is 0. An index
    outside its (H, W) plane raises on the cpu backend, as in torch on the CPU; the GPU
    backends skip it, since checking would synchronise with the device on every call."""
    x, unbatched = _pool_input(input, "max_unpool2d")
    _check_tensor(indices, "indices", "max_unpool2d")
    idx = indices.unsqueeze(0) if unbatched else indices
    if idx.shape != x.shape or idx.dtype != torch.int64:
        raise RuntimeError(
            f"max_unpool2d: expected indices of dtype int64 and the input's shape {list(input.shape)}, "
            f"got {idx.dtype} {list(indices.shape)}"
        )
    kernel = _pair(kernel_size, "kernel_size", "max_unpool2d")
    stride = _pool_stride(stride, kernel, "max_unpool2d")
    padding = _pair(padding, "padding", "max_unpool2d")
    default = [(x.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + kernel[d] for d in range(2)]
    if output_size is None:
        size = default
    else:
        size = [_int_argument(v, "output_size", "max_unpool2d", output_size) for v in list(output_size)[-2:]]
        if len(list(output_size)) not in (2, 3, 4):
            raise ValueError(f"output_size must have 2, 3 or 4 elements, got {len(list(output_size))}")
        for d in range(2):
            lo, hi = default[d] - stride[d], default[d] + stride[d]
            if not lo < size[d] < hi:
                raise ValueError(
                    f"invalid output_size {list(output_size)} (dim {d} must be between {lo} and {hi})"
                )
    ops = _pool.ops_for("max_unpool2d", x, backend)
    return _batch(ops.max_unpool2d(x, idx, size), unbatched)


# ---- normalisation -------------------------------------------------------------------------


def _norm_input(input, fn: str, min_dim: int = 2) -> None:
    _check_tensor(input, "input", fn)
    if input.dim() < min_dim:
        raise RuntimeError(f"Expected at least {min_dim} dimensions for input tensor but received {input.dim()}")
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f'"{fn}" not implemented for {input.dtype}')


def _check_vector(t, name: str, channels: int) -> None:
    if t is not None and t.numel() != channels:
        raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")


def _check_parameter_dtypes(fn: str, input: torch.Tensor, **parameters) -> None:
    """torch's rule for a normalisation's parameters and running statistics: those given share
    one dtype, the input's, or float32 for a float16 or bfloat16 input (mixed precision)."""
    given = {name: t for name, t in parameters.items() if t is not None}
    dtypes = {t.dtype for t in given.values()}
    allowed = {input.dtype, torch.float32} if input.dtype in (torch.float16, torch.bfloat16) else {input.dtype}
    if len(dtypes) > 1 or not dtypes <= allowed:
        mixed = " or float32" if len(allowed) > 1 else ""
        got = ", ".join(f"{name} {t.dtype}" for name, t in given.items())
        raise RuntimeError(f"{fn}: expected {', '.join(given)} to share one dtype, the input's ({input.dtype})"
                           f"{mixed}, but got {got}")


def _activation(activation: str | None) -> str:
    name = "none" if activation is None else activation
    if name not in _norm.ACTIVATIONS:
        raise ValueError(f"activation must be None or one of 'relu', 'silu', 'gelu', got {activation!r}")
    return name


def _batch_norm(input, residual, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                backend, fn):
    _norm_input(input, fn)
    training_position = 6 if residual is None else 7  # batch_norm_add_relu's residual comes second
    training = _scalar(training, bool, "training", fn, training_position)
    momentum = _scalar(momentum, float, "momentum", fn, training_position + 1)
    eps = _scalar(eps, float, "eps", fn, training_position + 2)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    channels = input.shape[1]
    if training:
        count = input.numel() // channels if channels else 0
        if input.numel() > 0 and count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
        if eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    elif running_mean is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        _check_vector(t, name, channels)
    _check_parameter_dtypes(fn, input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if residual is not None and residual.shape != input.shape:
        raise RuntimeError(f"{fn}: expected residual of the input's shape {list(input.shape)}, got {list(residual.shape)}")
    ops = _norm.ops_for(fn, input, backend)
    out, _mean, _rstd, new_mean, new_var = ops.batch_norm(
        input, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation)
    if training and running_mean is not None and input.numel() > 0:
        with torch.no_grad():
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return out


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               *, backend: str | None = None):
    """Batch normalisation, as torch.nn.functional.batch_norm: per-channel statistics over the
    batch and every spatial position in training (the running statistics, when given, updated
    in place with `momentum` and the unbiased variance), the running statistics otherwise."""
    return _batch_norm(input, None, running_mean, running_var, weight, bias, training, momentum, eps, "none",
                       backend, "batch_norm")


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                    eps=1e-5, *, backend: str | None = None):
    """relu(batch_norm(input, ...)) in one pass forward and one backward."""
    return _batch_norm(input, None, running_mean, running_var, weight, bias, training, momentum, eps, "relu",
                       backend, "batch_norm_relu")


def batch_norm_add_relu(input, residual, running_mean, running_var, weight=None, bias=None, training=False,
                        momentum=0.1, eps=1e-5, *, backend: str | None = None):
    """relu(batch_norm(input, ...) + residual), the tail of a ResNet block, in one pass forward
    and one backward (which also returns the residual's gradient)."""
    _check_tensor(residual, "residual", "batch_norm_add_relu")
    return _batch_norm(input, residual, running_mean, running_var, weight, bias, training, momentum, eps, "relu",
                       backend, "batch_norm_add_relu")


def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5, *, activation: str | None = None,
               backend: str | None = None):
    """Group normalisation, as torch.nn.functional.group_norm, with an optional fused
    activation (None, "relu", "silu" or "gelu") applied in the same pass."""
    _norm_input(input, "group_norm")
    num_groups = _scalar(num_groups, int, "num_groups", "group_norm", 2)
    eps = _scalar(eps, float, "eps", "group_norm", 5)
    channels = input.shape[1]
    if num_groups <= 0 or channels % num_groups != 0:
        raise RuntimeError(
            f"Expected number of channels in input to be divisible by num_groups, but got input of shape "
            f"{list(input.shape)} and num_groups={num_groups}")
    per_group = input.shape[0] * (channels // num_groups) * math.prod(input.shape[2:])
    if per_group == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{[input.shape[0] * channels // num_groups, num_groups, *input.shape[2:]]}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != channels):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in input, but got "
                f"{name} of shape {list(t.shape)} and input of shape {list(input.shape)}")
    _check_parameter_dtypes("group_norm", input, weight=weight, bias=bias)
    ops = _norm.ops_for("group_norm", input, backend)
    return ops.group_norm(input, weight, bias, num_groups, eps, _activation(activation))[0]


def _normalized_rows(input, normalized_shape, weight, bias, fn: str) -> list[int]:
    """normalized_shape as a list, after torch's checks of it and of the parameters' shapes."""
    _check_tensor(input, "input", fn)
    if _is_int(normalized_shape):
        shape = [_as_int(normalized_shape)]
    else:
        shape = [_int_argument(v, "normalized_shape", fn, normalized_shape) for v in normalized_shape]
    if len(shape) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, but "
            f"got normalized_shape = {shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and list(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                               f"{list(t.shape)} and normalized_shape = {shape}")
    if input.dim() < len(shape) or list(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(f"Given normalized_shape={shape}, expected input with shape [*, {', '.join(map(str, shape))}], "
                           f"but got input of size{list(input.shape)}")
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f'"{fn}" not implemented for {input.dtype}')
    return shape


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, backend: str | None = None):
    """Layer normalisation over the trailing `normalized_shape` dimensions, as
    torch.nn.functional.layer_norm: group norm with one group over the (rows, D) view, whose
    per-"channel" parameters are the elementwise weight and bias. The result is contiguous, as
    torch's."""
    shape = _normalized_rows(input, normalized_shape, weight, bias, "layer_norm")
    eps = _scalar(eps, float, "eps", "layer_norm", 5)
    _check_parameter_dtypes("layer_norm", input, weight=weight, bias=bias)
    width = math.prod(shape)
    rows = input.reshape(-1, width)
    ops = _norm.ops_for("layer_norm", input, backend)
    flat = (lambda t: None if t is None else t.reshape(width))
    out = ops.group_norm(rows, flat(weight), flat(bias), 1, eps, "none")[0]
    return out.view(input.shape)


def rms_norm(input, normalized_shape, weight=None, eps: float | None = None, *, backend: str | None = None):
    """RMS normalisation, as torch.nn.functional.rms_norm: x / sqrt(mean(x^2) + eps) * weight over
    the trailing dimensions; eps=None means the input dtype's machine epsilon."""
    shape = _normalized_rows(input, normalized_shape, weight, None, "rms_norm")
    eps = torch.finfo(input.dtype).eps if eps is None else _scalar(eps, float, "eps", "rms_norm", 4)
    ops = _norm.ops_for("rms_norm", input, backend)
    return ops.rms_norm(input, weight, len(shape), eps)[0]


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *, backend: str | None = None):
    """Instance normalisation, as torch.nn.functional.instance_norm: batch norm over the
    (1, N*C, *) view, so every (sample, channel) plane gets its own statistics; the running
    statistics (when given) move toward the planes' statistics averaged over the batch."""
    _norm_input(input, "instance_norm")
    use_input_stats = _scalar(use_input_stats, bool, "use_input_stats", "instance_norm", 6)
    momentum = _scalar(momentum, float, "momentum", "instance_norm", 7)
    eps = _scalar(eps, float, "eps", "instance_norm", 8)
    if use_input_stats and math.prod(input.shape[2:]) <= 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    batch, channels = input.shape[:2]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {batch * channels} elements not {t.numel() * batch}")
    _check_parameter_dtypes("instance_norm", input, running_mean=running_mean, running_var=running_var,
                            weight=weight, bias=bias)
    planes = input.reshape(1, batch * channels, *input.shape[2:])
    per_plane = (lambda t: None if t is None else t.repeat(batch))
    ops = _norm.ops_for("instance_norm", input, backend)
    out, _mean, _rstd, new_mean, new_var = ops.batch_norm(
        planes, per_plane(weight), per_plane(bias), None, per_plane(running_mean), per_plane(running_var),
        use_input_stats, momentum, eps, "none")
    if use_input_stats and running_mean is not None and input.numel() > 0:
        with torch.no_grad():
            running_mean.copy_(new_mean.view(batch, channels).mean(0))
            running_var.copy_(new_var.view(batch, channels).mean(0))
    return out.view(input.shape)


def local_response_norm(input, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
                        backend: str | None = None):
    """Local response normalisation across channels (AlexNet), as
    torch.nn.functional.local_response_norm: a / (k + alpha/size * sum of a^2 over `size`
    neighbouring channels)^beta."""
    _check_tensor(input, "input", "local_response_norm")
    if input.dim() < 3:
        raise ValueError(f"Expected 3D or higher dimensionality input (got {input.dim()} dimensions)")
    size = _scalar(size, int, "size", "local_response_norm", 2)
    alpha, beta, k = (_scalar(v, float, name, "local_response_norm", position)
                      for v, name, position in ((alpha, "alpha", 3), (beta, "beta", 4), (k, "k", 5)))
    if size <= 0:
        raise RuntimeError(f"local_response_norm: size should be greater than zero, but got {size}")
    if input.numel() == 0:
        return input
    if not input.dtype.is_floating_point:
        raise NotImplementedError(f'"local_response_norm" not implemented for {input.dtype}')
    ops = _norm.ops_for("local_response_norm", input, backend)
    return ops.local_response_norm(input, size, alpha, beta, k)
