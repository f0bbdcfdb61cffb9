// GroupNorm + SiLU's per-channel loops on the AVX-512 path (group_norm_silu_kernels.h; the callers and
// the baseline and AVX2 loops: group_norm_silu.cpp, group_norm_silu_backward.cpp). Shapes for 16 lanes
// and 32 zmm registers, not the AVX2 loops recompiled:
//  - the moments keep 4 vectors of sums and 4 of squares (8 independent add chains, 64 values a step:
//    enough to cover the adds' latency at two a cycle);
//  - the exp of silu_avx512.h scales by 2^n with one vscalefps; the forward and the backward's first
//    pass take two vectors a step, so that one vector's exp or sums overlap the other's;
//  - every tail is one vector under a mask register (no scalar loop, nothing read past the row).
#include <algorithm>
#include <cstdint>

#include "cpu_dispatch.h"
#include "group_norm_silu_kernels.h"

#ifdef PYLTH_ISA_VARIANTS

PYLTH_BEGIN_AVX512
namespace pylth {
namespace gn {
namespace {

#include "silu_avx512.h"

constexpr int kLanes = 16;

// The 16 lanes' sum, in double.
inline double lane_sum(__m512 v) {
  const __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d high = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
  return _mm512_reduce_add_pd(_mm512_add_pd(low, high));
}

// Moments of x - pivot (the group's first value, so that a mean far from 0 does not cancel the
// variance away): fp32 vector sums over runs of 512 values, added into double after each run.
Moments moments(const float* x, std::int64_t count) {
  constexpr std::int64_t kRun = 512, kStep = 4 * kLanes;
  const float pivot = count > 0 ? x[0] : 0.0f;
  const __m512 vp = _mm512_set1_ps(pivot);
  Moments m;
  m.pivot = pivot;
  for (std::int64_t run = 0; run < count; run += kRun) {
    const std::int64_t end = std::min(count, run + kRun);
    __m512 s[4], q[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) s[k] = q[k] = _mm512_setzero_ps();
    std::int64_t i = run;
    for (; i + kStep <= end; i += kStep)
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i + k * kLanes), vp);
        s[k] = _mm512_add_ps(s[k], d);
        q[k] = _mm512_fmadd_ps(d, d, q[k]);
      }
    for (; i < end; i += kLanes) {  // whole vectors, then the tail as one masked vector (zeros elsewhere)
      const __mmask16 lanes = first_lanes_avx512(std::min<std::int64_t>(kLanes, end - i));
      const __m512 d = _mm512_maskz_sub_ps(lanes, _mm512_maskz_loadu_ps(lanes, x + i), vp);
      s[0] = _mm512_add_ps(s[0], d);
      q[0] = _mm512_fmadd_ps(d, d, q[0]);
    }
    m.sum += lane_sum(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
    m.squares += lane_sum(_mm512_add_ps(_mm512_add_ps(q[0], q[1]), _mm512_add_ps(q[2], q[3])));
  }
  return m;
}

// y = silu((x - pivot) * a + b) of the lanes in `lanes`, and the sigmoid into s when s is not null.
inline __attribute__((always_inline)) void normalize_silu_vector(const float* x, float* y, float* s, __mmask16 lanes,
                                                                 __m512 pivot, __m512 a, __m512 b) {
  const __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x), pivot), a, b);
  const __m512 sig = sigmoid_avx512(v);
  _mm512_mask_storeu_ps(y, lanes, _mm512_mul_ps(v, sig));
  if (s) _mm512_mask_storeu_ps(s, lanes, sig);
}

void normalize_silu(const float* x, float* y, float* s, std::int64_t count, float pivot, float a, float b) {
  const __m512 vp = _mm512_set1_ps(pivot), va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
  std::int64_t i = 0;
  for (; i + 2 * kLanes <= count; i += 2 * kLanes) {
    normalize_silu_vector(x + i, y + i, s ? s + i : nullptr, 0xffff, vp, va, vb);
    normalize_silu_vector(x + i + kLanes, y + i + kLanes, s ? s + i + kLanes : nullptr, 0xffff, vp, va, vb);
  }
  for (; i < count; i += kLanes)
    normalize_silu_vector(x + i, y + i, s ? s + i : nullptr, first_lanes_avx512(std::min<std::int64_t>(kLanes, count - i)),
                          vp, va, vb);
}

// One vector of dv (zero outside `lanes`) from x, dy and the sigmoid, into dv and the sums.
inline __attribute__((always_inline)) void silu_grad_vector(const float* x, const float* dy, const float* sigmoid,
                                                            float* dv, __mmask16 lanes, ChannelTerms t,
                                                            __m512* sum_dv, __m512* sum_dv_xhat) {
  const __m512 xhat = _mm512_mul_ps(
      _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x), _mm512_set1_ps(t.pivot)), _mm512_set1_ps(t.shifted)),
      _mm512_set1_ps(t.rstd));
  const __m512 v = _mm512_fmadd_ps(xhat, _mm512_set1_ps(t.gamma), _mm512_set1_ps(t.beta));
  const __m512 one = _mm512_set1_ps(1.0f), sig = _mm512_maskz_loadu_ps(lanes, sigmoid);
  const __m512 d = _mm512_maskz_mul_ps(
      lanes, _mm512_maskz_loadu_ps(lanes, dy), _mm512_mul_ps(sig, _mm512_fmadd_ps(v, _mm512_sub_ps(one, sig), one)));
  _mm512_mask_storeu_ps(dv, lanes, d);
  *sum_dv = _mm512_add_ps(*sum_dv, d);
  *sum_dv_xhat = _mm512_fmadd_ps(d, xhat, *sum_dv_xhat);
}

ChannelSums silu_grad(const float* x, const float* dy, const float* sigmoid, float* dv, std::int64_t count,
                      ChannelTerms t) {
  __m512 sum_dv[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  __m512 sum_dv_xhat[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  std::int64_t i = 0;
  for (; i + 2 * kLanes <= count; i += 2 * kLanes)
#pragma GCC unroll 2
    for (int k = 0; k < 2; ++k) {
      const std::int64_t at = i + k * kLanes;
      silu_grad_vector(x + at, dy + at, sigmoid + at, dv + at, 0xffff, t, &sum_dv[k], &sum_dv_xhat[k]);
    }
  for (; i < count; i += kLanes)
    silu_grad_vector(x + i, dy + i, sigmoid + i, dv + i, first_lanes_avx512(std::min<std::int64_t>(kLanes, count - i)), t,
                     &sum_dv[0], &sum_dv_xhat[0]);
  ChannelSums s;
  s.dv = lane_sum(_mm512_add_ps(sum_dv[0], sum_dv[1]));
  s.dv_xhat = lane_sum(_mm512_add_ps(sum_dv_xhat[0], sum_dv_xhat[1]));
  return s;
}

// dx of the lanes in `lanes`.
inline __attribute__((always_inline)) void input_grad_vector(const float* x, const float* dv, float* dx, __mmask16 lanes,
                                                             __m512 pivot, __m512 shifted, __m512 a, __m512 b, __m512 c) {
  const __m512 centred = _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x), pivot), shifted);
  _mm512_mask_storeu_ps(dx, lanes, _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(lanes, dv), _mm512_fmadd_ps(b, centred, c)));
}

void input_grad(const float* x, const float* dv, float* dx, std::int64_t count, ChannelTerms t, float k_dv, float k_x,
                float k_0) {
  const __m512 pivot = _mm512_set1_ps(t.pivot), shifted = _mm512_set1_ps(t.shifted);
  const __m512 a = _mm512_set1_ps(k_dv), b = _mm512_set1_ps(k_x), c = _mm512_set1_ps(k_0);
  std::int64_t i = 0;
  for (; i + 2 * kLanes <= count; i += 2 * kLanes)
#pragma GCC unroll 2
    for (int k = 0; k < 2; ++k)
      input_grad_vector(x + i + k * kLanes, dv + i + k * kLanes, dx + i + k * kLanes, 0xffff, pivot, shifted, a, b, c);
  for (; i < count; i += kLanes)
    input_grad_vector(x + i, dv + i, dx + i, first_lanes_avx512(std::min<std::int64_t>(kLanes, count - i)), pivot, shifted,
                      a, b, c);
}

}  // namespace

ForwardKernels forward_kernels_avx512() { return {moments, normalize_silu}; }
BackwardKernels backward_kernels_avx512() { return {silu_grad, input_grad}; }

}  // namespace gn
}  // namespace pylth
PYLTH_END_TARGET

#endif
