// Keyed dropout on CUDA (see dropout.h): one thread per element, the mask computed from the element's
// counters, so nothing is stored for the backward pass. Rows go along grid.y (their key is computed
// once per thread and row), the elements of a row along grid.x; the value is scaled in float and
// rounded back to the tensor's type, as torch's x * scale is.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "cuda_check.h"
#include "dropout.h"

namespace pylth {
namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxBlocksX = 4096;  // a row longer than this many blocks is strided over
constexpr std::int64_t kMaxBlocksY = 65535;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void __launch_bounds__(kThreads) dropout_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                           std::int64_t rows, std::int64_t per_row, std::uint64_t key,
                                                           std::int64_t row_offset, std::int64_t row_stride,
                                                           std::uint32_t threshold, float scale) {
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * kThreads;
  for (std::int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const std::uint32_t row_key = dropout_row_key(
        key, static_cast<std::uint64_t>(row_offset) + static_cast<std::uint64_t>(row) * static_cast<std::uint64_t>(row_stride));
    const T* xr = x + row * per_row;
    T* yr = y + row * per_row;
    for (std::int64_t e = first; e < per_row; e += step) {
      const bool keep = dropout_bits(row_key, static_cast<std::uint32_t>(e)) >= threshold;
      yr[e] = keep ? from_float<T>(to_float(xr[e]) * scale) : from_float<T>(0.0f);
    }
  }
}

template <typename T>
void launch_typed(const DropoutLaunch& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(std::min((a.per_row + kThreads - 1) / kThreads, kMaxBlocksX)),
                  static_cast<unsigned>(std::min(a.rows, kMaxBlocksY)));
  dropout_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(a.x), static_cast<T*>(a.y), a.rows,
                                                    a.per_row, a.key, a.row_offset, a.row_stride, a.threshold, a.scale);
  PYLTH_CUDA_CHECK_LAUNCH();
}

}  // namespace

void dropout_cuda(const DropoutLaunch& launch, std::uintptr_t stream) {
  cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (launch.dtype) {
    case kDropoutFloat32:
      launch_typed<float>(launch, cuda_stream);
      break;
    case kDropoutFloat16:
      launch_typed<__half>(launch, cuda_stream);
      break;
    case kDropoutBFloat16:
      launch_typed<__nv_bfloat16>(launch, cuda_stream);
      break;
    default:
      require(false, "dropout_cuda: unknown dtype code");
  }
}

}  // namespace pylth
