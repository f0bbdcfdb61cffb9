// The per-channel loops of GroupNorm + SiLU (formulas: group_norm_silu.h), one set per CPU path
// (csrc/cpu_dispatch.h): the baseline and AVX2 ones beside their callers (group_norm_silu.cpp for the
// forward, group_norm_silu_backward.cpp for the backward), the AVX-512 ones in
// group_norm_silu_avx512.cpp. The callers pick a set from active_cpu_isa() on every call.
#pragma once
#include <cstdint>

#include "cpu_dispatch.h"

namespace pylth {
namespace gn {

// Sums in double of the values less a pivot near them: the variance as E[d^2] - E[d]^2 then keeps what
// fp32 data holds.
struct Moments {
  double sum = 0.0, squares = 0.0;  // of x - pivot
  double pivot = 0.0;
};

// One channel's constants in the backward: xhat = ((x - pivot) - shifted) * rstd, v = xhat * gamma +
// beta. The group's first value as the pivot keeps the digits that x - mean loses where the mean is far
// from 0.
struct ChannelTerms {
  float pivot, shifted, rstd, gamma, beta;
};

// Sums of one channel's first backward pass.
struct ChannelSums {
  double dv = 0.0, dv_xhat = 0.0;
};

struct ForwardKernels {
  // Moments of `count` values about the first one.
  Moments (*moments)(const float* x, std::int64_t count);
  // y[i] = silu((x[i] - pivot) * a + b), and s[i] = sigmoid(that) when s is not null.
  void (*normalize_silu)(const float* x, float* y, float* s, std::int64_t count, float pivot, float a, float b);
};

struct BackwardKernels {
  // dv of `count` positions into `dv` from x, dy and the forward's sigmoid, and their sums.
  ChannelSums (*silu_grad)(const float* x, const float* dy, const float* sigmoid, float* dv, std::int64_t count,
                           ChannelTerms t);
  // dx = k_dv * dv + k_x * ((x - pivot) - shifted) + k_0.
  void (*input_grad)(const float* x, const float* dv, float* dx, std::int64_t count, ChannelTerms t, float k_dv,
                     float k_x, float k_0);
};

#ifdef PYLTH_ISA_VARIANTS
ForwardKernels forward_kernels_avx512();
BackwardKernels backward_kernels_avx512();
#endif

}  // namespace gn
}  // namespace pylth
