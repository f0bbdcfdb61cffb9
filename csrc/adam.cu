// Fused masked Adam/AdamW on CUDA: tensors are packed into launches of up to kMaxTensors; each block
// owns one kChunk-element chunk of one tensor and streams it with 16-byte loads when aligned.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "adam.h"
#include "common.h"
#include "cuda_check.h"

namespace pylth {
namespace {

constexpr int kMaxTensors = 36;   // keeps TensorTable (a kernel argument) under the portable 4 KiB limit
constexpr int kThreads = 256;
constexpr std::int64_t kChunk = 8 * kThreads * 4;  // elements per block: 8 float4 per thread

struct TensorTable {
  float* p[kMaxTensors];
  const float* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  const std::uint8_t* mask[kMaxTensors];
  std::int64_t numel[kMaxTensors];
  AdamConsts c[kMaxTensors];
  int first_block[kMaxTensors + 1];  // blocks [first_block[t], first_block[t+1]) work on tensor t
  bool vectorised[kMaxTensors];
  int count;
};
static_assert(sizeof(TensorTable) <= 4000, "kernel arguments must stay below 4 KiB");

// Same operation order as torch.optim.Adam; `keep` is all ones or all zeros, so a masked entry ends
// as exactly +0 whatever the gradient holds (a multiply would turn a NaN gradient into NaN).
__device__ __forceinline__ void adam_element(float& p, float g, float& m, float& v, std::uint32_t keep,
                                             const AdamConsts& c) {
  const float grad = g + c.l2_decay * p;
  const float param = p * c.decay_factor;
  const float mi = m + c.one_minus_beta1 * (grad - m);
  const float vi = v * c.beta2 + c.one_minus_beta2 * grad * grad;
  const float denom = sqrtf(vi) / c.bc2_sqrt + c.eps;
  const float pi = param + (-c.step_size) * (mi / denom);
  p = __uint_as_float(__float_as_uint(pi) & keep);
  m = __uint_as_float(__float_as_uint(mi) & keep);
  v = __uint_as_float(__float_as_uint(vi) & keep);
}

__device__ __forceinline__ std::uint32_t keep_word(const std::uint8_t* mask, std::int64_t i) {
  return mask == nullptr ? 0xffffffffu : 0u - static_cast<std::uint32_t>(mask[i] != 0);
}

__global__ void __launch_bounds__(kThreads) masked_adam_kernel(const __grid_constant__ TensorTable table) {
  const int block = static_cast<int>(blockIdx.x);
  int t = 0;
  while (block >= table.first_block[t + 1]) ++t;
  const std::int64_t begin = static_cast<std::int64_t>(block - table.first_block[t]) * kChunk;
  const std::int64_t end = min(begin + kChunk, table.numel[t]);
  float* p = table.p[t];
  const float* g = table.g[t];
  float* m = table.m[t];
  float* v = table.v[t];
  const std::uint8_t* mask = table.mask[t];
  const AdamConsts c = table.c[t];

  std::int64_t scalar_begin = begin;
  if (table.vectorised[t]) {
    // begin is a multiple of 4, so every float4 below is 16-byte aligned.
    const std::int64_t vec_end = begin + ((end - begin) & ~std::int64_t(3));
    for (std::int64_t i = begin + 4 * threadIdx.x; i < vec_end; i += 4 * kThreads) {
      float4 p4 = *reinterpret_cast<float4*>(p + i);
      const float4 g4 = __ldg(reinterpret_cast<const float4*>(g + i));
      float4 m4 = *reinterpret_cast<float4*>(m + i);
      float4 v4 = *reinterpret_cast<float4*>(v + i);
      std::uint32_t k0 = 0xffffffffu, k1 = k0, k2 = k0, k3 = k0;
      if (mask != nullptr) {
        const std::uint32_t word = __ldg(reinterpret_cast<const unsigned int*>(mask + i));
        k0 = 0u - static_cast<std::uint32_t>((word & 0xffu) != 0);
        k1 = 0u - static_cast<std::uint32_t>((word & 0xff00u) != 0);
        k2 = 0u - static_cast<std::uint32_t>((word & 0xff0000u) != 0);
        k3 = 0u - static_cast<std::uint32_t>((word & 0xff000000u) != 0);
      }
      adam_element(p4.x, g4.x, m4.x, v4.x, k0, c);
      adam_element(p4.y, g4.y, m4.y, v4.y, k1, c);
      adam_element(p4.z, g4.z, m4.z, v4.z, k2, c);
      adam_element(p4.w, g4.w, m4.w, v4.w, k3, c);
      *reinterpret_cast<float4*>(p + i) = p4;
      *reinterpret_cast<float4*>(m + i) = m4;
      *reinterpret_cast<float4*>(v + i) = v4;
    }
    scalar_begin = vec_end;
  }
  for (std::int64_t i = scalar_begin + threadIdx.x; i < end; i += kThreads)
    adam_element(p[i], g[i], m[i], v[i], keep_word(mask, i), c);
}

bool aligned(std::uintptr_t address, std::uintptr_t bytes) { return address % bytes == 0; }

}  // namespace

void masked_adam_cuda(const ArgTable& tensors, const double* consts, std::uintptr_t stream) {
  cudaStream_t cuda_stream = reinterpret_cast<cudaStream_t>(stream);

  TensorTable table{};
  auto launch = [&]() {
    if (table.count == 0) return;
    masked_adam_kernel<<<table.first_block[table.count], kThreads, 0, cuda_stream>>>(table);
    PYLTH_CUDA_CHECK_LAUNCH();
    table = TensorTable{};
  };
  for (std::int64_t t = 0; t < tensors.rows(); ++t) {
    const std::int64_t numel = tensors.at(t, kAdamNumel);
    if (numel == 0) continue;
    const std::int64_t blocks = (numel + kChunk - 1) / kChunk;
    require(blocks < (std::int64_t(1) << 30), "masked_adam_cuda: tensor " + std::to_string(t) + " is too large");
    if (table.count == kMaxTensors || table.first_block[table.count] + blocks > (std::int64_t(1) << 30)) launch();
    const int k = table.count;
    table.p[k] = tensors.ptr<float>(t, kAdamParam);
    table.g[k] = tensors.ptr<const float>(t, kAdamGrad);
    table.m[k] = tensors.ptr<float>(t, kAdamExpAvg);
    table.v[k] = tensors.ptr<float>(t, kAdamExpAvgSq);
    table.mask[k] = tensors.ptr<const std::uint8_t>(t, kAdamMask);
    table.numel[k] = numel;
    table.c[k] = adam_consts_at(consts, t);
    table.vectorised[k] = aligned(tensors.at(t, kAdamParam), 16) && aligned(tensors.at(t, kAdamGrad), 16) &&
                          aligned(tensors.at(t, kAdamExpAvg), 16) && aligned(tensors.at(t, kAdamExpAvgSq), 16) &&
                          aligned(tensors.at(t, kAdamMask), 4);
    table.first_block[k + 1] = table.first_block[k] + static_cast<int>(blocks);
    table.count = k + 1;
  }
  launch();
}

}  // namespace pylth
