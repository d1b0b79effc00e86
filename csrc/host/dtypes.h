// The element types the CPU operators take, checked in one place.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace cnnkernels {

// What an operator takes besides the four floating types, where torch's own CPU operator takes
// it: every integer type (conv2d forward, max pooling), int64 alone (average pooling), complex64
// and complex128 (conv2d). Bool is never among them, as in torch. Other types raise
// NotImplementedError, as torch's do.
enum CpuExtraTypes : unsigned { kNoExtraTypes = 0, kIntegerTypes = 1, kInt64Type = 2, kComplexTypes = 4 };

inline void check_cpu_dtype(const char* op, const at::Tensor& t, unsigned extra = kNoExtraTypes) {
  const at::ScalarType st = t.scalar_type();
  const bool floating = st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
  const bool integer = st == at::kByte || st == at::kChar || st == at::kShort || st == at::kInt || st == at::kLong;
  const bool complex = st == at::kComplexFloat || st == at::kComplexDouble;
  const bool ok = floating || ((extra & kIntegerTypes) && integer) || ((extra & kInt64Type) && st == at::kLong) ||
                  ((extra & kComplexTypes) && complex);
  if (ok) return;
  std::string supported = "float32, float64, float16, bfloat16";
  if (extra & kIntegerTypes) supported += ", uint8, int8, int16, int32, int64";
  if (extra & kInt64Type) supported += ", int64";
  if (extra & kComplexTypes) supported += ", complex64, complex128";
  TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": the cpu backend supports ", supported, "; got ", st);
}

}  // namespace cnnkernels
