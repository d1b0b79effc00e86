// Shared, torch-free definitions usable from C++ (CPU kernels) and CUDA (.cu kernels).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define CNNK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNNK_HOST_DEVICE inline
#endif

namespace cnnkernels {

// Element types the GPU kernels are instantiated for; host code maps at::ScalarType onto it.
enum class DType { Float32, Float64, Float16, BFloat16 };

// Accumulator type: fp32 for every floating type narrower than fp64, fp64 for fp64, int64 for
// the integer types (which only the CPU backend takes, as torch's CPU operators do).
template <typename scalar_t>
struct AccType {
  using type = std::conditional_t<std::is_integral_v<scalar_t>, int64_t, float>;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_t = typename AccType<scalar_t>::type;

template <typename T>
CNNK_HOST_DEVICE T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// The smallest multiple of b that is at least a (a >= 0, b > 0).
template <typename T>
CNNK_HOST_DEVICE T round_up(T a, T b) {
  return ceil_div(a, b) * b;
}

// Floor division that is correct for negative numerators (C++ '/' truncates toward zero).
template <typename T>
CNNK_HOST_DEVICE T floor_div(T a, T b) {
  const T q = a / b;
  return (q * b > a) ? q - 1 : q;
}

}  // namespace cnnkernels
