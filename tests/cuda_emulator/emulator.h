// Host emulation of the CUDA execution model, for running csrc/cuda/*_kernel.cu with g++ in CI
// (no GPU). build.py prepends `#include "emulator.h"` to each .cu and rewrites its
// `kernel<<<grid, block, shmem, stream>>>(args)` launches into `emu::launch<kernel>(...)`.
//
// The model (implementation in emulator.cpp):
//  * Blocks run one after another; the threads of a block are fibers on one OS thread. A fiber
//    runs until it parks at a barrier or exits; the scheduler then releases a barrier once every
//    thread it waits for has arrived. Consecutive scheduling passes alternate between ascending
//    and descending thread order, so code that reads another thread's shared-memory write
//    without a barrier between them sees a stale value in one of the two orders.
//  * __shared__ variables become function-local statics (one block runs at a time).
//  * Warp operations (__shfl_*_sync, __syncwarp) are warp barriers that exchange values.
//  * A WMMA fragment is the whole 16x16 matrix (as float), held by every lane of the warp.
//  * cp.async copies wait in per-thread commit groups (see async_copy16 below); dynamic shared
//    memory is one buffer per launch, poisoned for every block.
//  * Faults end the launch and surface through cudaGetLastError() / cudaGetErrorString(), like a
//    launch error on a GPU: invalid launch configurations, __syncthreads() reached by only part
//    of a block or at different call sites, warp operations whose mask names lanes that exited
//    or wait elsewhere, misaligned WMMA pointers / leading dimensions, lanes of a warp passing
//    different fragments to mma_sync, misaligned cp.async, threads exiting with copies in
//    flight, and (through -fsanitize=alignment, see emulator.cpp) misaligned vector loads and
//    stores.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// The CUDA headers define these as attributes g++ does not know (and __shared__ would leave a
// per-thread local); in the emulator device code is plain host code.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace emu {

// One CUDA thread: a fiber of the block being run.
struct Thread {
  uint3 idx;          // threadIdx
  unsigned warp, lane;
  long mma_calls;     // mma_sync calls so far in this block (the warp's lanes make the same sequence)
  unsigned exchanges; // warp exchanges so far (selects a double-buffered exchange slot)
};

extern Thread* current;  // the running thread; threadIdx and friends read it
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;

// Runtime values of the kernels' test hooks (build.py defines conv_kernel.cu's
// CNNK_CONV_INDEX32_LIMIT and CNNK_CONV_FORCE_TILE and pool_kernel.cu's CNNK_POOL_INDEX32_LIMIT
// as these), set from Python so one build reaches every path.
extern int64_t conv_index32_limit;
extern int conv_force_tile;
extern int64_t pool_index32_limit;

// Ends the running launch with a printf-style message (from a kernel: does not return), or
// records it (from host code).
void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void sync_block(const char* file, int line);
void sync_warp(unsigned mask, const char* file, int line);
// Publishes `size` bytes of this lane's value, waits for the lanes of `mask`, returns lane
// `src`'s value.
const void* warp_exchange(unsigned mask, int src, const void* value, size_t size, const char* file, int line);

// cp.async, as fake_include/cnnkernels/async_copy.cuh forwards it: a thread's copies are held in
// its commit groups. Even-numbered groups (0, 2, ...) land only when a wait retires them, so a
// stage read before its wait reads stale data; odd-numbered ones land as they are issued, so a
// copy into a stage that other threads still read lands while they read it (the alternating
// thread order of the scheduler then shows the race). A thread that exits with copies in flight
// is a fault.
void async_copy16(void* dst, const void* src, bool valid);
void async_commit();
void async_wait(int pending);

// The running block's dynamic shared memory: build.py rewrites `extern __shared__ T name[];` into
// a pointer to it. Every block starts with it filled with 0xff bytes (NaN as any float type), so
// a read of a byte the block never wrote shows in the results.
void* dynamic_shared();
// The most dynamic shared memory a launch may ask for (sm_90's 227 KB). Above 48 KB a GPU also
// needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) first;
// the emulator checks that call's value but cannot tie it to the launch (a launch does not name
// its kernel's address), so only a GPU run checks that it was made.
constexpr size_t kMaxDynamicSharedBytes = 232448;

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  LaunchConfig(dim3 g, dim3 b, size_t shmem = 0, cudaStream_t = nullptr) : grid(g), block(b), shared_bytes(shmem) {}
};
// `launcher` is launch()'s __PRETTY_FUNCTION__: its Kernel type names the function that launched
// the kernel, with that function's template arguments (launch statistics tell paths apart by it).
void run_grid(const LaunchConfig& cfg, const char* kernel, const char* launcher, void (*body)(void*), void* params);

// A launch, as build.py writes it: `launch("kernel<T>", LaunchConfig(...), <lambda calling
// kernel<T>>, args...)`. (A lambda rather than a function pointer, because a launch may leave
// template arguments to be deduced from the arguments.) As on a GPU, the arguments are evaluated
// once, at the launch, and every thread receives its own copy of the parameters.
template <class Kernel, class... A>
void launch(const char* kernel, const LaunchConfig& cfg, Kernel, A&&... args) {
  using Params = std::tuple<std::decay_t<A>...>;
  static_assert(std::is_empty_v<Kernel>, "the kernel thunk captures nothing");
  Params params(std::forward<A>(args)...);
  run_grid(cfg, kernel, __PRETTY_FUNCTION__,
           [](void* p) { std::apply([](auto&... a) { Kernel{}(a...); }, *static_cast<Params*>(p)); }, &params);
}

template <class T>
T shuffle(unsigned mask, T v, int src, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffled types are at most 8 bytes");
  T out;
  std::memcpy(&out, warp_exchange(mask, src, &v, sizeof(T), file, line), sizeof(T));
  return out;
}

// Source lanes of the shuffle variants; `width` splits the warp into segments. A lane whose
// source falls outside its segment keeps its own value, as on the GPU.
inline int segment_base(int width) { return static_cast<int>(current->lane) & ~(width - 1); }
inline int shfl_down_src(unsigned delta, int width) {
  const int lane = static_cast<int>(current->lane), src = lane + static_cast<int>(delta);
  return src < segment_base(width) + width ? src : lane;
}
inline int shfl_up_src(unsigned delta, int width) {
  const int lane = static_cast<int>(current->lane), src = lane - static_cast<int>(delta);
  return src >= segment_base(width) ? src : lane;
}
inline int shfl_xor_src(int lane_mask, int width) {
  const int lane = static_cast<int>(current->lane), src = lane ^ lane_mask;
  return src < segment_base(width) + width ? src : lane;
}
inline int shfl_idx_src(int src_lane, int width) { return segment_base(width) + (src_lane & (width - 1)); }
// The optional arguments of __syncwarp(mask) and __shfl_*_sync(..., width).
inline unsigned mask_or_full(unsigned mask = 0xffffffffu) { return mask; }
inline int width_or_warp(int width = 32) { return width; }

}  // namespace emu

#define threadIdx (::emu::current->idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __syncthreads() ::emu::sync_block(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::sync_warp(::emu::mask_or_full(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...) \
  ::emu::shuffle(mask, v, ::emu::shfl_idx_src(src, ::emu::width_or_warp(__VA_ARGS__)), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) \
  ::emu::shuffle(mask, v, ::emu::shfl_down_src(delta, ::emu::width_or_warp(__VA_ARGS__)), __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
  ::emu::shuffle(mask, v, ::emu::shfl_up_src(delta, ::emu::width_or_warp(__VA_ARGS__)), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask, ...) \
  ::emu::shuffle(mask, v, ::emu::shfl_xor_src(lane_mask, ::emu::width_or_warp(__VA_ARGS__)), __FILE__, __LINE__)

// Device-side min/max for any mix of arithmetic types (CUDA's overloads promote likewise).
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

// math_constants.h's CUDART_INF and CUDART_NAN are spelled with this intrinsic.
inline double __longlong_as_double(long long bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

// ---- WMMA ----------------------------------------------------------------------------------------
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator implements the 16x16x16 shape");
  float x[16][16];  // the whole matrix: (row, col) of A, B or the accumulator
};

namespace detail {
template <class T>
float to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else {
    return static_cast<float>(v);
  }
}
// The WMMA contract: a 256-bit aligned pointer and ldm a multiple of 16 bytes.
void check_matrix_pointer(const void* p, unsigned ldm, size_t element_bytes, const char* what);
// d = a * b + c for the current warp (computed once, reused by its other lanes).
void mma(float (&d)[16][16], const float (&a)[16][16], const float (&b)[16][16], const float (&c)[16][16]);
}  // namespace detail

template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, T v) {
  for (auto& row : f.x)
    for (auto& e : row) e = detail::to_float(v);
}

// row_major: element (i, j) at p[i*ldm + j]; col_major: at p[j*ldm + i]. (i, j) is (m, k) of A and
// (k, n) of B.
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  static_assert(std::is_same_v<L, row_major> || std::is_same_v<L, col_major>, "A and B fragments have a layout");
  detail::check_matrix_pointer(p, ldm, sizeof(T), "load_matrix_sync");
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      f.x[i][j] = detail::to_float(std::is_same_v<L, row_major> ? p[i * ldm + j] : p[j * ldm + i]);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  detail::check_matrix_pointer(p, ldm, sizeof(float), "store_matrix_sync");
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.x[i][j];
}

template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "tensor-core input types");
  detail::mma(d.x, a.x, b.x, c.x);
}

}  // namespace wmma
}  // namespace nvcuda
