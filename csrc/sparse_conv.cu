// Sparse-weight Conv2d forward and weight gradient on CUDA, written to be obviously right rather than
// fast (on GPUs the dense cuDNN path stays the default until this is measured there). Forward: one
// block per (tile of 256 output pixels, output channel, image); the channel's kept weights pass through
// shared memory in chunks, and each thread sums its pixel's products, padding handled by bounds checks.
// Weight gradient: one block per kept weight, whose threads share the batch's output positions. The
// input gradient is the forward on the transposed weight (pylth/ops/sparse_grad.py).
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

// dL/d values[k] = sum over images and output pixels of dy[image, co_k, pixel] * x at the pixel's tap k.
__global__ void sparse_conv2d_grad_weight_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                                 const std::int64_t* __restrict__ row_ptr,
                                                 const std::int32_t* __restrict__ taps, float* __restrict__ grad,
                                                 int n, int ci, int h, int w, int co, int ho, int wo, int kh, int kw,
                                                 int stride, int pad) {
  __shared__ float partial[kThreads];
  const std::int64_t k = blockIdx.x;
  int channel = 0, past = co;  // row_ptr[channel] <= k < row_ptr[past]: halve until past == channel + 1
  while (past - channel > 1) {
    const int mid = (channel + past) / 2;
    if (row_ptr[mid] <= k)
      channel = mid;
    else
      past = mid;
  }
  const int tap = taps[k];
  const int c = tap / (kh * kw), r = tap % (kh * kw);
  const int shift_y = r / kw - pad, shift_x = r % kw - pad;
  const std::int64_t plane = static_cast<std::int64_t>(ho) * wo;
  float sum = 0.0f;
  for (std::int64_t i = threadIdx.x; i < n * plane; i += kThreads) {
    const std::int64_t image = i / plane, pixel = i % plane;
    const int iy = static_cast<int>(pixel / wo) * stride + shift_y;
    const int ix = static_cast<int>(pixel % wo) * stride + shift_x;
    if (iy >= 0 && iy < h && ix >= 0 && ix < w)
      sum += dy[(image * co + channel) * plane + pixel] * x[((image * ci + c) * h + iy) * w + ix];
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad[k] = partial[0];
}

// The checks both launchers make; the table's rows as in SparseConvCudaRow (pylth/ops/sparse_conv.py
// checks every size against these limits before the call).
void check_call(const std::int64_t* table, std::int64_t n, std::int64_t ci, std::int64_t h, std::int64_t w,
                std::int64_t co, std::int64_t ho, std::int64_t wo, std::int64_t kh, std::int64_t kw,
                std::int64_t stride, std::int64_t pad, const std::string& name) {
  require(n >= 0 && n <= 65535 && co >= 1 && co <= 65535 && ci >= 1 && h >= 1 && w >= 1 && ho >= 1 && wo >= 1 &&
              kh >= 1 && kw >= 1 && stride >= 1 && pad >= 0 && ci * h * w <= INT32_MAX && ci * kh * kw <= INT32_MAX,
          name + ": sizes out of range");
  auto numel = [&](int row) { return table[row * kSparseConvTableWidth + 1]; };
  require(numel(kSgInput) == n * ci * h * w && numel(kSgOutput) == n * co * ho * wo && numel(kSgRowPtr) == co + 1 &&
              numel(kSgTaps) == numel(kSgValues) &&
              (table[kSgBias * kSparseConvTableWidth] == 0 || numel(kSgBias) == co),
          name + ": tensor sizes do not match the shapes");
}

std::uintptr_t address(const std::int64_t* table, int row) {
  return static_cast<std::uintptr_t>(table[row * kSparseConvTableWidth]);
}

}  // namespace

void sparse_conv2d_cuda_launch(const std::int64_t* table, std::int64_t n, std::int64_t ci, std::int64_t h,
                               std::int64_t w, std::int64_t co, std::int64_t ho, std::int64_t wo, std::int64_t kh,
                               std::int64_t kw, std::int64_t stride, std::int64_t pad, std::uintptr_t stream) {
  check_call(table, n, ci, h, w, co, ho, wo, kh, kw, stride, pad, "sparse_conv2d_cuda");
  if (n == 0) return;
  const std::int64_t tiles = (ho * wo + kThreads - 1) / kThreads;
  require(tiles <= INT32_MAX, "sparse_conv2d_cuda: output plane too large");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(co), static_cast<unsigned>(n));
  sparse_conv2d_kernel<<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      as_ptr<const float>(address(table, kSgInput)), as_ptr<float>(address(table, kSgOutput)),
      as_ptr<const std::int64_t>(address(table, kSgRowPtr)), as_ptr<const std::int32_t>(address(table, kSgTaps)),
      as_ptr<const float>(address(table, kSgValues)), as_ptr<const float>(address(table, kSgBias)),
      static_cast<int>(ci), static_cast<int>(h), static_cast<int>(w), static_cast<int>(co), static_cast<int>(ho),
      static_cast<int>(wo), static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(stride),
      static_cast<int>(pad));
  PYLTH_CUDA_CHECK_LAUNCH();
}

void sparse_conv2d_grad_weight_cuda_launch(const std::int64_t* table, std::int64_t n, std::int64_t ci,
                                           std::int64_t h, std::int64_t w, std::int64_t co, std::int64_t ho,
                                           std::int64_t wo, std::int64_t kh, std::int64_t kw, std::int64_t stride,
                                           std::int64_t pad, std::uintptr_t stream) {
  const std::string name = "sparse_conv2d_grad_weight_cuda";
  check_call(table, n, ci, h, w, co, ho, wo, kh, kw, stride, pad, name);
  require(address(table, kSgBias) == 0, name + ": the bias row must be empty (address 0)");
  const std::int64_t nnz = table[kSgValues * kSparseConvTableWidth + 1];
  require(nnz <= INT32_MAX, name + ": at most 2^31 - 1 kept weights");
  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  if (nnz == 0) return;
  if (n == 0) {
    PYLTH_CUDA_CHECK(cudaMemsetAsync(as_ptr<float>(address(table, kSgValues)), 0, sizeof(float) * nnz, cuda_stream));
    return;
  }
  sparse_conv2d_grad_weight_kernel<<<static_cast<unsigned>(nnz), kThreads, 0, cuda_stream>>>(
      as_ptr<const float>(address(table, kSgInput)), as_ptr<const float>(address(table, kSgOutput)),
      as_ptr<const std::int64_t>(address(table, kSgRowPtr)), as_ptr<const std::int32_t>(address(table, kSgTaps)),
      as_ptr<float>(address(table, kSgValues)), static_cast<int>(n), static_cast<int>(ci), static_cast<int>(h),
      static_cast<int>(w), static_cast<int>(co), static_cast<int>(ho), static_cast<int>(wo), static_cast<int>(kh),
      static_cast<int>(kw), static_cast<int>(stride), static_cast<int>(pad));
  PYLTH_CUDA_CHECK_LAUNCH();
}

}  // namespace pylth
