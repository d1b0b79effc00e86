// The element types the CPU operators take, checked in one place.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace cnnkernels {

// Which integer types an operator takes besides the four floating types: those torch's own CPU
// operator takes (conv2d and max pooling: every integer type; average pooling: int64). Bool is
// never among them, as in torch. Others raise NotImplementedError, as torch's do.
enum class Integers { kNone, kAll, kInt64 };

inline void check_cpu_dtype(const char* op, const at::Tensor& t, Integers integers = Integers::kNone) {
  const at::ScalarType st = t.scalar_type();
  const bool floating = st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
  const bool integer = st == at::kByte || st == at::kChar || st == at::kShort || st == at::kInt || st == at::kLong;
  const bool ok = floating || (integers == Integers::kAll && integer) || (integers == Integers::kInt64 && st == at::kLong);
  const char* also = integers == Integers::kAll ? ", uint8, int8, int16, int32, int64"
                     : integers == Integers::kInt64 ? ", int64"
                                                     : "";
  TORCH_CHECK_NOT_IMPLEMENTED(ok, op, ": the cpu backend supports float32, float64, float16, bfloat16", also, "; got ", st);
}

}  // namespace cnnkernels
