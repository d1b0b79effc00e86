// Output allocation shared by every C++ operator (CPU and CUDA host code).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace cnnkernels {

// With CNNKERNELS_POISON_ALLOCATIONS=1 in the environment (the test suite sets it), every buffer
// an operator allocates starts out as NaN (-1 for integer buffers), so a kernel that reads an element it never wrote
// produces NaN instead of a plausible stale value. Read per call so tests can toggle it.
inline bool poison_allocations() {
  const char* flag = std::getenv("CNNKERNELS_POISON_ALLOCATIONS");
  return flag != nullptr && std::strcmp(flag, "1") == 0;
}

inline at::Tensor new_buffer(at::IntArrayRef sizes, const at::TensorOptions& options,
                             at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  at::Tensor t = at::empty(sizes, options.memory_format(format));
  if (poison_allocations() && t.numel() > 0) {
    // NaN for values; -1 for integer buffers (indices), which no kernel writes legitimately.
    if (t.is_floating_point()) {
      t.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      t.fill_(-1);
    }
  }
  return t;
}

}  // namespace cnnkernels
