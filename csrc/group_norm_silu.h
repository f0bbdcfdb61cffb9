// GroupNorm followed by SiLU in one pass over the activations, fp32, contiguous NCHW, CPU:
//   y = silu(v),  v = (x - mean_g) * rstd_g * gamma_c + beta_c,  silu(v) = v / (1 + exp(-v)),
// mean_g and rstd_g = 1 / sqrt(var_g + eps) (biased variance) over group g's channels and positions of
// one image. pylth/ops/group_norm_silu.py launches it; the sparse U-Net (pylth.sparse) runs its
// GroupNorm-SiLU pairs through it, because with the convs sparse these elementwise passes are a large
// share of the step, and one pass reads and writes the activations once instead of three times.
//
// Training: the forward also writes mean_g, rstd_g and s = sigmoid(v) (torch's unfused pair keeps as
// much: GroupNorm's output for SiLU's backward), so that the backward needs no exp, and the backward
// computes, per (image, group) in two passes over the group while it is in cache (sparse U-Net groups
// are a few KB),
//   dv = dy * s * (1 + v * (1 - s)),  s = sigmoid(v),  xhat = (x - mean_g) * rstd_g,
//   dx = rstd_g * (gamma_c * dv - mean_g(gamma * dv) - xhat * mean_g(gamma * dv * xhat)),
//   dgamma_c = sum over images and positions of dv * xhat,  dbeta_c = sum of dv,
// the parameter sums per image first, then over images in order (one order whatever the threads).
#pragma once
#include <cstdint>

namespace pylth {

// Rows of the forward's table, columns (data address, number of elements).
enum GroupNormSiluRow : int {
  kGnInput = 0,  // float x [N, C, HW]
  kGnWeight,     // float gamma [C], or address 0 for ones
  kGnBias,       // float beta [C], or address 0 for zeros
  kGnOutput,     // float y [N, C, HW] (may be x itself)
  kGnMean,       // float [N * groups] written for the backward: the group's mean less its first value
                 // (exact where the mean is far from 0 next to the spread), or address 0 (inference)
  kGnRstd,       // float [N * groups], written with kGnMean
  kGnSigmoid,    // float s [N, C, HW], written with kGnMean
  kGnRows
};

// Rows of the backward's table.
enum GroupNormSiluBackwardRow : int {
  kGbInput = 0,    // float x [N, C, HW], the forward's input
  kGbGradOutput,   // float dy [N, C, HW]
  kGbWeight,       // float gamma [C], or address 0 for ones
  kGbBias,         // float beta [C], or address 0 for zeros
  kGbMean,         // float [N * groups], from the forward (the mean less the group's first value)
  kGbRstd,         // float [N * groups]
  kGbSigmoid,      // float s [N, C, HW], from the forward
  kGbGradInput,    // float dx [N, C, HW] (written)
  kGbGradWeight,   // float dgamma [C] (written), or address 0
  kGbGradBias,     // float dbeta [C] (written), or address 0
  kGbWorkspace,    // float [2 * N * C + threads * (C / groups) * HW]: per-image parameter sums, dv per thread
  kGbRows
};

constexpr int kGroupNormSiluTableWidth = 2;

}  // namespace pylth
