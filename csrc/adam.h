// Fused masked Adam/AdamW: the table layout and plain C++ launcher shared by adam.cpp (CPU kernel and
// bindings) and adam.cu (CUDA kernels).
#pragma once
#include <cstdint>
#include <string>

#include "common.h"

namespace pylth {

// masked_adam_cpu(table, rows, width, consts, num_threads) / masked_adam_cuda(table, rows, width, consts,
// stream): one row per tensor of the step, in host memory for both (the CUDA launcher copies the rows
// into its kernels' arguments). Data addresses of float32 param, grad, exp_avg and exp_avg_sq, the
// address of a uint8/bool mask (0: no mask), and the element count.
enum AdamColumn : int {
  kAdamParam = 0, kAdamGrad, kAdamExpAvg, kAdamExpAvgSq, kAdamMask, kAdamNumel,
  kAdamColumns
};

// consts: the address of a second table, rows x kAdamConstCount float64 values in host memory: tensor t's
// constants of this step, computed in double by the host and rounded to float once, in this order:
// beta2, 1 - beta1 (lerp weight), 1 - beta2, lr / (1 - beta1^t), sqrt(1 - beta2^t), eps,
// L2 weight decay (0 for AdamW), decoupled decay factor 1 - lr * wd (1 for Adam).
enum AdamConst : int {
  kBeta2 = 0, kOneMinusBeta1, kOneMinusBeta2, kStepSize, kBiasCorrection2Sqrt, kEps, kL2Decay, kDecayFactor,
  kAdamConstCount
};

struct AdamConsts {
  float beta2, one_minus_beta1, one_minus_beta2, step_size, bc2_sqrt, eps, l2_decay, decay_factor;
};

// Tensor t's constants out of the consts table.
inline AdamConsts adam_consts_at(const double* consts, int64_t t) {
  const double* c = consts + t * kAdamConstCount;
  return AdamConsts{static_cast<float>(c[kBeta2]),     static_cast<float>(c[kOneMinusBeta1]),
                    static_cast<float>(c[kOneMinusBeta2]), static_cast<float>(c[kStepSize]),
                    static_cast<float>(c[kBiasCorrection2Sqrt]), static_cast<float>(c[kEps]),
                    static_cast<float>(c[kL2Decay]),   static_cast<float>(c[kDecayFactor])};
}

// The checks both entry points make before any kernel runs: sizes, and every address a tensor with
// elements needs (the mask's may be 0).
inline void check_adam_table(const ArgTable& table, std::uintptr_t consts, const char* kernel) {
  require(table.rows() == 0 || consts != 0, std::string(kernel) + ": null consts table");
  for (int64_t t = 0; t < table.rows(); ++t) {
    require(table.at(t, kAdamNumel) >= 0, std::string(kernel) + ": negative element count in row " + std::to_string(t));
    require(table.at(t, kAdamNumel) == 0 || (table.at(t, kAdamParam) && table.at(t, kAdamGrad) &&
                                         table.at(t, kAdamExpAvg) && table.at(t, kAdamExpAvgSq)),
            std::string(kernel) + ": null data address in row " + std::to_string(t));
  }
}

#ifdef PYLTH_WITH_CUDA
// One multi-tensor step on the current CUDA device and `stream` (a cudaStream_t as an integer), over a
// table that passed check_adam_table; every address in it is a device address.
void masked_adam_cuda(const ArgTable& table, const double* consts, std::uintptr_t stream);
#endif

}  // namespace pylth
