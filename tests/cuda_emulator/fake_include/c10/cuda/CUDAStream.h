// Emulator stand-in for c10/cuda/CUDAStream.h (tests/cuda_emulator): the current stream is the
// null stream; the emulator runs every launch to completion in order.
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime_api.h>

namespace c10::cuda {

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }

}  // namespace c10::cuda
