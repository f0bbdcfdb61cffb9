// GroupNorm followed by SiLU in one pass over the activations, fp32, contiguous NCHW, CPU (inference):
//   y = silu((x - mean_g) * rstd_g * gamma_c + beta_c),  silu(v) = v / (1 + exp(-v)),
// mean_g and rstd_g = 1 / sqrt(var_g + eps) (biased variance) over group g's channels and positions of
// one image. pylth/ops/group_norm_silu.py launches it; the sparse U-Net (pylth.sparse) runs its
// GroupNorm-SiLU pairs through it, because with the convs sparse these elementwise passes are a large
// share of the forward, and one pass reads and writes the activations once instead of three times.
#pragma once
#include <cstdint>

namespace pylth {

// Rows of the table, columns (data address, number of elements).
enum GroupNormSiluRow : int {
  kGnInput = 0,  // float x [N, C, HW]
  kGnWeight,     // float gamma [C], or address 0 for ones
  kGnBias,       // float beta [C], or address 0 for zeros
  kGnOutput,     // float y [N, C, HW] (may be x itself)
  kGnRows
};

constexpr int kGroupNormSiluTableWidth = 2;

}  // namespace pylth
