// Fused masked Adam/AdamW: plain C++ launcher shared by adam.cpp (bindings) and adam.cu (CUDA kernels).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pylth {

// Per-tensor constants of one step, computed in double by the host and rounded to float once, in this
// order: beta2, 1 - beta1 (lerp weight), 1 - beta2, lr / (1 - beta1^t), sqrt(1 - beta2^t), eps,
// L2 weight decay (0 for AdamW), decoupled decay factor 1 - lr * wd (1 for Adam).
enum AdamConst : int {
  kBeta2 = 0, kOneMinusBeta1, kOneMinusBeta2, kStepSize, kBiasCorrection2Sqrt, kEps, kL2Decay, kDecayFactor,
  kAdamConstCount
};

struct AdamConsts {
  float beta2, one_minus_beta1, one_minus_beta2, step_size, bc2_sqrt, eps, l2_decay, decay_factor;
};

// Tensor t's constants out of the flat list of kAdamConstCount doubles per tensor.
inline AdamConsts adam_consts_at(const std::vector<double>& consts, std::size_t t) {
  const double* c = &consts[t * kAdamConstCount];
  return AdamConsts{static_cast<float>(c[kBeta2]),     static_cast<float>(c[kOneMinusBeta1]),
                    static_cast<float>(c[kOneMinusBeta2]), static_cast<float>(c[kStepSize]),
                    static_cast<float>(c[kBiasCorrection2Sqrt]), static_cast<float>(c[kEps]),
                    static_cast<float>(c[kL2Decay]),   static_cast<float>(c[kDecayFactor])};
}

#ifdef PYLTH_WITH_CUDA
// One multi-tensor step on the current CUDA device and `stream` (a cudaStream_t as an integer).
// masks[i] == 0 means "no mask" for tensor i; all pointers are device pointers of float32/uint8 data.
void masked_adam_cuda(const std::vector<std::uintptr_t>& params, const std::vector<std::uintptr_t>& grads,
                      const std::vector<std::uintptr_t>& exp_avgs, const std::vector<std::uintptr_t>& exp_avg_sqs,
                      const std::vector<std::uintptr_t>& masks, const std::vector<std::int64_t>& numels,
                      const std::vector<double>& consts, std::uintptr_t stream);
#endif

}  // namespace pylth
