// GroupNorm + SiLU backward on the CPU (formulas and table: group_norm_silu.h). OpenMP runs the
// (image, group) blocks in parallel; each takes two passes over its group while it is in cache: the
// first computes dv from the forward's sigmoid (kept in a per-thread scratch) and the group's and
// channels' sums, the second dx.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "common.h"
#include "cpu_dispatch.h"
#include "group_norm_silu.h"
#include "group_norm_silu_kernels.h"
#include "omp_error.h"

namespace py = pybind11;

namespace pylth {
namespace {

using gn::ChannelSums;
using gn::ChannelTerms;

// dv of `count` positions into `dv` from x, dy and the forward's sigmoid, and their sums.
ChannelSums silu_grad_baseline(const float* x, const float* dy, const float* sigmoid, float* dv, std::int64_t count,
                               ChannelTerms t) {
  ChannelSums s;
  for (std::int64_t i = 0; i < count; ++i) {
    const float xhat = (x[i] - t.pivot - t.shifted) * t.rstd, v = xhat * t.gamma + t.beta;
    const float sig = sigmoid[i];
    const float d = dy[i] * sig * (1.0f + v * (1.0f - sig));
    dv[i] = d;
    s.dv += d;
    s.dv_xhat += static_cast<double>(d) * xhat;
  }
  return s;
}

// dx = k_dv * dv + k_x * ((x - pivot) - shifted) + k_0.
void input_grad_baseline(const float* x, const float* dv, float* dx, std::int64_t count, ChannelTerms t, float k_dv,
                         float k_x, float k_0) {
  for (std::int64_t i = 0; i < count; ++i) dx[i] = k_dv * dv[i] + k_x * (x[i] - t.pivot - t.shifted) + k_0;
}

#ifdef PYLTH_ISA_VARIANTS
PYLTH_BEGIN_AVX2
#include "silu_avx2.h"

float lane_sum(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  float s = 0.0f;
  for (float l : lanes) s += l;
  return s;
}

// One vector of dv from x, dy and the sigmoid (lanes read as zeros give dv = 0), and its sums.
inline __m256 silu_grad_vector(__m256 x, __m256 dy, __m256 sig, ChannelTerms t, __m256* sum_dv,
                               __m256* sum_dv_xhat) {
  const __m256 xhat = _mm256_mul_ps(
      _mm256_sub_ps(_mm256_sub_ps(x, _mm256_set1_ps(t.pivot)), _mm256_set1_ps(t.shifted)), _mm256_set1_ps(t.rstd));
  const __m256 v = _mm256_fmadd_ps(xhat, _mm256_set1_ps(t.gamma), _mm256_set1_ps(t.beta));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 d = _mm256_mul_ps(dy, _mm256_mul_ps(sig, _mm256_fmadd_ps(v, _mm256_sub_ps(one, sig), one)));
  *sum_dv = _mm256_add_ps(*sum_dv, d);
  *sum_dv_xhat = _mm256_fmadd_ps(d, xhat, *sum_dv_xhat);
  return d;
}

ChannelSums silu_grad_avx2(const float* x, const float* dy, const float* sigmoid, float* dv, std::int64_t count,
                           ChannelTerms t) {
  __m256 sum_dv = _mm256_setzero_ps(), sum_dv_xhat = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(dv + i, silu_grad_vector(_mm256_loadu_ps(x + i), _mm256_loadu_ps(dy + i),
                                              _mm256_loadu_ps(sigmoid + i), t, &sum_dv, &sum_dv_xhat));
  if (i < count) {  // the tail as one masked vector
    const __m256i lanes = first_lanes_avx2(count - i);
    _mm256_maskstore_ps(dv + i, lanes,
                        silu_grad_vector(_mm256_maskload_ps(x + i, lanes), _mm256_maskload_ps(dy + i, lanes),
                                         _mm256_maskload_ps(sigmoid + i, lanes), t, &sum_dv, &sum_dv_xhat));
  }
  ChannelSums s;
  s.dv = lane_sum(sum_dv);
  s.dv_xhat = lane_sum(sum_dv_xhat);
  return s;
}

void input_grad_avx2(const float* x, const float* dv, float* dx, std::int64_t count, ChannelTerms t, float k_dv,
                     float k_x, float k_0) {
  const __m256 pivot = _mm256_set1_ps(t.pivot), shifted = _mm256_set1_ps(t.shifted);
  const __m256 a = _mm256_set1_ps(k_dv), b = _mm256_set1_ps(k_x), c = _mm256_set1_ps(k_0);
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 centred = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), pivot), shifted);
    _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(dv + i), _mm256_fmadd_ps(b, centred, c)));
  }
  input_grad_baseline(x + i, dv + i, dx + i, count - i, t, k_dv, k_x, k_0);
}

PYLTH_END_TARGET
#endif

// The loops of the CPU path active now (a path without its own falls to the next lower one).
gn::BackwardKernels kernels_for(CpuIsa isa) {
#ifdef PYLTH_ISA_VARIANTS
  switch (isa) {
    case CpuIsa::avx512: return gn::backward_kernels_avx512();
    case CpuIsa::avx2: return {silu_grad_avx2, input_grad_avx2};
    default: break;
  }
#else
  (void)isa;
#endif
  return {silu_grad_baseline, input_grad_baseline};
}

void group_norm_silu_backward_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width,
                                  std::int64_t n, std::int64_t c, std::int64_t hw, std::int64_t groups,
                                  int num_threads) {
  const std::string name = "group_norm_silu_backward_cpu";
  const ArgTable table(table_address, rows, width, kGroupNormSiluTableWidth, name.c_str());
  require(rows == kGbRows, name + ": the table must have " + std::to_string(kGbRows) + " rows");
  require(n >= 0 && c > 0 && hw >= 0 && groups > 0 && c % groups == 0,
          name + ": channels must be a positive multiple of groups");
  require(num_threads >= 1, name + ": num_threads must be >= 1");
  const std::int64_t numel = n * c * hw, per_group = c / groups, group_len = per_group * hw;
  for (int row : {kGbInput, kGbGradOutput, kGbSigmoid, kGbGradInput})
    require(table.at(row, 1) == numel && (numel == 0 || table.at(row, 0) != 0),
            name + ": x, dy, the sigmoid and dx must hold N * C * HW floats");
  for (int row : {kGbMean, kGbRstd})
    require(table.at(row, 1) == n * groups && (n == 0 || table.at(row, 0) != 0),
            name + ": mean and rstd must hold N * groups floats");
  for (int row : {kGbWeight, kGbBias, kGbGradWeight, kGbGradBias})
    require(table.at(row, 0) == 0 || table.at(row, 1) == c, name + ": weight, bias and their gradients must hold C floats");
  require(table.at(kGbWorkspace, 0) != 0 && table.at(kGbWorkspace, 1) >= 2 * n * c + num_threads * group_len,
          name + ": the workspace must hold 2 * N * C + threads * (C / groups) * HW floats");
  const float* x = table.ptr<const float>(kGbInput, 0);
  const float* dy = table.ptr<const float>(kGbGradOutput, 0);
  const float* gamma = table.ptr<const float>(kGbWeight, 0);
  const float* beta = table.ptr<const float>(kGbBias, 0);
  const float* mean = table.ptr<const float>(kGbMean, 0);
  const float* rstd = table.ptr<const float>(kGbRstd, 0);
  const float* sigmoid = table.ptr<const float>(kGbSigmoid, 0);
  float* dx = table.ptr<float>(kGbGradInput, 0);
  float* dgamma = table.ptr<float>(kGbGradWeight, 0);
  float* dbeta = table.ptr<float>(kGbGradBias, 0);
  float* channel_dv = table.ptr<float>(kGbWorkspace, 0);  // [N, C]: each image's sum of dv per channel
  float* channel_dv_xhat = channel_dv + n * c;             // [N, C]: of dv * xhat
  float* scratch = channel_dv_xhat + n * c;                // per thread: one group's dv
  if (numel == 0) {  // no positions: the parameters get no gradient
    for (float* g : {dgamma, dbeta})
      if (g) std::fill(g, g + c, 0.0f);
    return;
  }
  const gn::BackwardKernels k = kernels_for(active_cpu_isa());
  py::gil_scoped_release no_gil;
  FirstError error;
#pragma omp parallel num_threads(num_threads)
  {
    float* dv = scratch + omp_get_thread_num() * group_len;
#pragma omp for schedule(static)
    for (std::int64_t block = 0; block < n * groups; ++block) {
      error.run([&] {
        const std::int64_t start = block * group_len, first_channel = block % groups * per_group;
        const std::int64_t image = block / groups;
        const float pivot = x[start], shifted = mean[block], r = rstd[block];
        double sum_gamma_dv = 0.0, sum_gamma_dv_xhat = 0.0;
        for (std::int64_t j = 0; j < per_group; ++j) {
          const std::int64_t ch = first_channel + j, at = start + j * hw;
          const float g = gamma ? gamma[ch] : 1.0f, b = beta ? beta[ch] : 0.0f;
          const ChannelSums s = k.silu_grad(x + at, dy + at, sigmoid + at, dv + j * hw, hw, {pivot, shifted, r, g, b});
          channel_dv[image * c + ch] = static_cast<float>(s.dv);
          channel_dv_xhat[image * c + ch] = static_cast<float>(s.dv_xhat);
          sum_gamma_dv += g * s.dv;
          sum_gamma_dv_xhat += g * s.dv_xhat;
        }
        const double count = static_cast<double>(group_len);
        const double k_x = -static_cast<double>(r) * r * sum_gamma_dv_xhat / count;
        const double k_0 = -static_cast<double>(r) * sum_gamma_dv / count;
        for (std::int64_t j = 0; j < per_group; ++j) {
          const std::int64_t ch = first_channel + j, at = start + j * hw;
          const float g = gamma ? gamma[ch] : 1.0f;
          k.input_grad(x + at, dv + j * hw, dx + at, hw, {pivot, shifted, r, g, 0.0f}, r * g, static_cast<float>(k_x),
                       static_cast<float>(k_0));
        }
      });
    }
    // The parameters' gradients: the images' sums, added in image order.
#pragma omp for schedule(static)
    for (std::int64_t ch = 0; ch < c; ++ch) {
      double sum_dv = 0.0, sum_dv_xhat = 0.0;
      for (std::int64_t image = 0; image < n; ++image) {
        sum_dv += channel_dv[image * c + ch];
        sum_dv_xhat += channel_dv_xhat[image * c + ch];
      }
      if (dbeta) dbeta[ch] = static_cast<float>(sum_dv);
      if (dgamma) dgamma[ch] = static_cast<float>(sum_dv_xhat);
    }
  }
  error.rethrow();
}

}  // namespace

void register_group_norm_silu_backward(py::module_& m) {
  m.def("group_norm_silu_backward_cpu", &group_norm_silu_backward_cpu, py::arg("table"), py::arg("rows"),
        py::arg("width"), py::arg("n"), py::arg("c"), py::arg("hw"), py::arg("groups"), py::arg("num_threads"),
        "Backward of GroupNorm then SiLU on contiguous float32 NCHW CPU tensors (table rows in "
        "csrc/group_norm_silu.h): dx, and the weight's and bias's gradients.");
}

}  // namespace pylth
