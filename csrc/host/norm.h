// Host-side argument checks, layouts and allocation of the normalisation operators, shared by the
// CPU and CUDA backends (cpu/norm.cpp, cuda/norm.cpp). The kernels read an (N, C, *) tensor as
// (N, C, L) with L the product of the spatial sizes, stored either NCHW-contiguous (strides
// C*L, L, 1) or channels_last (4-D only; strides L*C, 1, C); any other layout is copied into the
// nearer of the two first. Parameters (weight, bias, running statistics) are handed to the
// kernels as contiguous acc_t vectors (fp32; fp64 for fp64 inputs); parameter gradients and new
// running statistics come back in acc_t and are cast to the parameter's dtype here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>

#include "cnnkernels/norm.h"
#include "host/alloc.h"

namespace cnnkernels {

inline Activation parse_activation(const char* op, c10::string_view name) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::ReLU;
  if (name == "silu") return Activation::SiLU;
  if (name == "gelu") return Activation::GELU;
  TORCH_CHECK(false, op, ": activation must be one of 'none', 'relu', 'silu', 'gelu', got '", std::string(name), "'");
}

inline void check_norm_dtype(const char* op, const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": expected a float32, float64, float16 or bfloat16 input, got ", st);
}

// The accumulation dtype of an input dtype: float64 for float64, float32 otherwise.
inline at::ScalarType norm_acc_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// An (N, C, *) tensor seen as (N, C, L).
struct NormShape {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t inner = 1;  // L: the product of the sizes after the channel dimension (1 for (N, C))
  bool channels_last = false;
  int64_t numel() const { return batch * channels * inner; }
};

// torch's layout rule (suggest_memory_format): channels_last for a 4-D channels_last tensor.
inline bool norm_is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

inline at::MemoryFormat norm_memory_format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

inline NormShape norm_shape(const char* op, const at::Tensor& input, int64_t min_dim = 2) {
  check_norm_dtype(op, input);
  TORCH_CHECK(input.dim() >= min_dim, op, ": expected an input with at least ", min_dim,
              " dimensions (N, C, ...), got ", input.dim());
  NormShape s;
  s.batch = input.size(0);
  s.channels = input.size(1);
  for (int64_t d = 2; d < input.dim(); ++d) s.inner *= input.size(d);
  s.channels_last = norm_is_channels_last(input);
  return s;
}

// `t` in the layout the kernels read for `shape` (a no-op when it already is).
inline at::Tensor norm_layout(const at::Tensor& t, const NormShape& shape) {
  return t.contiguous(norm_memory_format(shape.channels_last));
}

// A tensor that must match the input exactly (residual, grad_output), in the input's layout.
inline at::Tensor norm_operand(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                               const NormShape& shape) {
  TORCH_CHECK(t.sizes() == input.sizes(), op, ": expected ", name, " of size ", input.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": expected ", name, " of dtype ", input.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": expected ", name, " on ", input.device(), ", got ", t.device());
  return norm_layout(t, shape);
}

// An optional operand that must match the input (the residual): the input's layout, or an
// undefined tensor when absent.
inline at::Tensor norm_optional_operand(const char* op, const char* name, const std::optional<at::Tensor>& t,
                                        const at::Tensor& input, const NormShape& shape) {
  return t.has_value() && t->defined() ? norm_operand(op, name, *t, input, shape) : at::Tensor();
}

// Group norm's num_groups: positive and dividing the channels.
inline void check_norm_groups(const char* op, const NormShape& shape, int64_t num_groups) {
  TORCH_CHECK(num_groups > 0, op, ": num_groups must be positive, got ", num_groups);
  TORCH_CHECK(shape.channels % num_groups == 0, op,
              ": expected the number of channels to be divisible by num_groups, got ", shape.channels,
              " channels and num_groups=", num_groups);
}

// A per-channel (or per-element, for rms norm) parameter as a contiguous acc_t vector of
// `count` values; an undefined tensor when absent.
inline at::Tensor norm_param(const char* op, const char* name, const std::optional<at::Tensor>& p,
                             int64_t count, const at::Tensor& input) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  TORCH_CHECK(p->numel() == count, op, ": expected ", name, " with ", count, " elements, got ", p->numel(),
              " (size ", p->sizes(), ")");
  TORCH_CHECK(p->device() == input.device(), op, ": expected ", name, " on ", input.device(), ", got ",
              p->device());
  check_norm_dtype(op, *p);
  return p->to(norm_acc_dtype(input)).contiguous().view({count});
}

// The normalised output (or an input gradient): the input's sizes, dtype and layout.
inline at::Tensor new_norm_output(const at::Tensor& input, const NormShape& shape) {
  return new_buffer(input.sizes(), input.options(), norm_memory_format(shape.channels_last));
}

// An acc_t vector/matrix (saved statistics, parameter gradients, running statistics).
inline at::Tensor new_acc_buffer(at::IntArrayRef sizes, const at::Tensor& input) {
  return new_buffer(sizes, input.options().dtype(norm_acc_dtype(input)));
}

// An acc_t result handed back as the dtype of the parameter it belongs to; an empty (0,)
// tensor when that parameter is absent.
inline at::Tensor as_param_dtype(const at::Tensor& acc, const std::optional<at::Tensor>& param,
                                 const at::Tensor& input) {
  if (!param.has_value() || !param->defined()) return new_acc_buffer({0}, input);
  return acc.to(param->scalar_type()).view(param->sizes());
}

}  // namespace cnnkernels
