// Asynchronous global -> shared copies (cp.async, sm_80+), for the CUDA kernels. Torch-free.
//
// A thread issues 16-byte copies that bypass its registers, closes the ones issued so far into a
// group (cp_async_commit), and later waits until at most kPending of its groups are still in
// flight (cp_async_wait<kPending>). A wait covers the calling thread's copies only: a
// __syncthreads() after it makes every thread's landed data visible to the block. Below sm_80
// the copies are plain synchronous loads and stores, and commit and wait do nothing.
//
// The host emulator (tests/cuda_emulator) replaces this header with one that holds each group
// back until its wait, so a pipeline that reads a stage before waiting for it reads stale data
// there, as it could on a GPU.
#pragma once

namespace cnnkernels {

// Copies 16 bytes from src to dst (shared memory, 16-byte aligned), or writes 16 zero bytes
// without reading src when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
#else
  *static_cast<uint4*>(dst) = valid ? *static_cast<const uint4*>(src) : uint4{0, 0, 0, 0};
#endif
}

// Closes the copies issued since the last commit into a group (possibly an empty one).
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most kPending of this thread's committed groups are in flight: every older
// group has landed.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(kPending >= 0, "a count of groups");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

}  // namespace cnnkernels
