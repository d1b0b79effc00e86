// Task sizes for at::parallel_for in the CPU kernels.
#pragma once

#include <algorithm>
#include <cstdint>

namespace cnnkernels {

// Work per parallel task (multiply-adds, or elements times taps): enough to outweigh a task's
// start, small enough to share a few rows between two threads.
constexpr int64_t kTaskWork = int64_t{1} << 16;

// at::parallel_for's grain for a loop whose iterations cost `cost` each.
inline int64_t grain_for(int64_t cost) { return std::max<int64_t>(1, kTaskWork / std::max<int64_t>(1, cost)); }

}  // namespace cnnkernels
