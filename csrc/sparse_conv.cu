// Sparse-weight Conv2d forward on CUDA, written to be obviously right rather than fast (on GPUs the
// dense cuDNN path stays the default until this is measured there). One block per (tile of 256 output
// pixels, output channel, image); the channel's kept weights pass through shared memory in chunks,
// and each thread sums its pixel's products, padding handled by bounds checks.
#include "common.h"
#include "cuda_check.h"
#include "sparse_conv.h"

#include <cuda_runtime.h>

#include <string>

namespace pylth {
namespace {

constexpr int kThreads = 256;

__global__ void sparse_conv2d_kernel(const float* __restrict__ x, float* __restrict__ y,
                                     const std::int64_t* __restrict__ row_ptr, const std::int32_t* __restrict__ taps,
                                     const float* __restrict__ values, const float* __restrict__ bias, int ci, int h,
                                     int w, int co, int ho, int wo, int kh, int kw, int stride, int pad) {
  __shared__ float chunk_values[kThreads];
  __shared__ std::int32_t chunk_taps[kThreads];
  const int channel = blockIdx.y, image = blockIdx.z;
  const std::int64_t pixel = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const std::int64_t plane = static_cast<std::int64_t>(ho) * wo;
  const bool active = pixel < plane;
  const int oy = active ? static_cast<int>(pixel / wo) : 0, ox = active ? static_cast<int>(pixel % wo) : 0;
  const float* image_x = x + static_cast<std::int64_t>(image) * ci * h * w;
  float acc = bias ? bias[channel] : 0.0f;
  const std::int64_t begin = row_ptr[channel], end = row_ptr[channel + 1];
  for (std::int64_t first = begin; first < end; first += kThreads) {
    const int count = static_cast<int>(min(static_cast<std::int64_t>(kThreads), end - first));
    __syncthreads();  // the previous chunk is no longer read
    if (threadIdx.x < count) {
      chunk_values[threadIdx.x] = values[first + threadIdx.x];
      chunk_taps[threadIdx.x] = taps[first + threadIdx.x];
    }
    __syncthreads();
    if (!active) continue;
    for (int k = 0; k < count; ++k) {
      const int tap = chunk_taps[k];
      const int c = tap / (kh * kw), r = tap % (kh * kw);
      const int iy = oy * stride + r / kw - pad, ix = ox * stride + r % kw - pad;
      if (iy >= 0 && iy < h && ix >= 0 && ix < w)
        acc += chunk_values[k] * image_x[(static_cast<std::int64_t>(c) * h + iy) * w + ix];
    }
  }
  if (active) y[(static_cast<std::int64_t>(image) * co + channel) * plane + pixel] = acc;
}

}  // namespace

void sparse_conv2d_cuda_launch(const std::int64_t* table, std::int64_t n, std::int64_t ci, std::int64_t h,
                               std::int64_t w, std::int64_t co, std::int64_t ho, std::int64_t wo, std::int64_t kh,
                               std::int64_t kw, std::int64_t stride, std::int64_t pad, std::uintptr_t stream) {
  // pylth/ops/sparse_conv.py checks every size against these limits before the call.
  require(n >= 0 && n <= 65535 && co >= 1 && co <= 65535 && ci >= 1 && h >= 1 && w >= 1 && ho >= 1 && wo >= 1 &&
              kh >= 1 && kw >= 1 && stride >= 1 && pad >= 0 && ci * h * w <= INT32_MAX && ci * kh * kw <= INT32_MAX,
          "sparse_conv2d_cuda: sizes out of range");
  auto address = [&](int row) { return table[row * kSparseConvTableWidth]; };
  auto numel = [&](int row) { return table[row * kSparseConvTableWidth + 1]; };
  require(numel(kSgInput) == n * ci * h * w && numel(kSgOutput) == n * co * ho * wo && numel(kSgRowPtr) == co + 1 &&
              numel(kSgTaps) == numel(kSgValues) && (address(kSgBias) == 0 || numel(kSgBias) == co),
          "sparse_conv2d_cuda: tensor sizes do not match the shapes");
  if (n == 0) return;
  const std::int64_t tiles = (ho * wo + kThreads - 1) / kThreads;
  require(tiles <= INT32_MAX, "sparse_conv2d_cuda: output plane too large");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(co), static_cast<unsigned>(n));
  sparse_conv2d_kernel<<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      as_ptr<const float>(address(kSgInput)), as_ptr<float>(address(kSgOutput)),
      as_ptr<const std::int64_t>(address(kSgRowPtr)), as_ptr<const std::int32_t>(address(kSgTaps)),
      as_ptr<const float>(address(kSgValues)), as_ptr<const float>(address(kSgBias)), static_cast<int>(ci),
      static_cast<int>(h), static_cast<int>(w), static_cast<int>(co), static_cast<int>(ho), static_cast<int>(wo),
      static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(stride), static_cast<int>(pad));
  PYLTH_CUDA_CHECK_LAUNCH();
}

}  // namespace pylth
