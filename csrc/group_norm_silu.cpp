// GroupNorm + SiLU on the CPU: see group_norm_silu.h. One image's group is contiguous in NCHW and
// small (a few channels' planes: 16 KB in the CIFAR-10 U-Net), so the statistics pass leaves it in
// L1/L2 for the normalising pass; OpenMP runs the (image, group) blocks in parallel. The per-channel
// loops exist per CPU path (group_norm_silu_kernels.h); each call runs those of active_cpu_isa().
#include "group_norm_silu.h"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "common.h"
#include "cpu_dispatch.h"
#include "group_norm_silu_kernels.h"
#include "omp_error.h"

namespace py = pybind11;

namespace pylth {
namespace {

using gn::Moments;

Moments moments_baseline(const float* x, std::int64_t count) {
  Moments m;
  m.pivot = count > 0 ? x[0] : 0.0f;
  for (std::int64_t i = 0; i < count; ++i) {
    const double v = static_cast<double>(x[i]) - m.pivot;
    m.sum += v;
    m.squares += v * v;
  }
  return m;
}

// y[i] = silu((x[i] - pivot) * a + b), and s[i] = sigmoid(that) when s is not null. Subtracting a value
// of the group first (exact for values near it) keeps the digits that x * a + b' loses when the mean is
// far from 0 next to the spread.
void normalize_silu_baseline(const float* x, float* y, float* s, std::int64_t count, float pivot, float a, float b) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float v = (x[i] - pivot) * a + b, sig = 1.0f / (1.0f + std::exp(-v));
    y[i] = v * sig;
    if (s) s[i] = sig;
  }
}

#ifdef PYLTH_ISA_VARIANTS
PYLTH_BEGIN_AVX2

// Moments of x - pivot (the group's first value, so that a mean far from 0 does not cancel the
// variance away): fp32 vector sums over runs of at most 512 values, added into double after each run.
// Two accumulators per sum, so consecutive vectors' adds do not wait on each other.
Moments moments_avx2(const float* x, std::int64_t count) {
  constexpr std::int64_t kRun = 512;
  const float pivot = count > 0 ? x[0] : 0.0f;
  const __m256 vp = _mm256_set1_ps(pivot);
  Moments m;
  std::int64_t i = 0;
  while (i + 16 <= count) {
    const std::int64_t end = std::min(count, i + kRun);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), q0 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps();
    for (; i + 16 <= end; i += 16) {
      const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(x + i), vp);
      const __m256 b = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vp);
      s0 = _mm256_add_ps(s0, a);
      s1 = _mm256_add_ps(s1, b);
      q0 = _mm256_fmadd_ps(a, a, q0);
      q1 = _mm256_fmadd_ps(b, b, q1);
    }
    alignas(32) float s[8], q[8];
    _mm256_store_ps(s, _mm256_add_ps(s0, s1));
    _mm256_store_ps(q, _mm256_add_ps(q0, q1));
    for (int lane = 0; lane < 8; ++lane) {
      m.sum += s[lane];
      m.squares += q[lane];
    }
  }
  for (; i < count; ++i) {
    const double v = static_cast<double>(x[i]) - pivot;
    m.sum += v;
    m.squares += v * v;
  }
  m.pivot = pivot;
  return m;
}

#include "silu_avx2.h"

void normalize_silu_avx2(const float* x, float* y, float* s, std::int64_t count, float pivot, float a, float b) {
  const __m256 vp = _mm256_set1_ps(pivot), va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vp), va, vb), sig = sigmoid_avx2(v);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(v, sig));
    if (s) _mm256_storeu_ps(s + i, sig);
  }
  if (i < count) {  // the tail as one masked vector, not a scalar exp per value
    const __m256i lanes = first_lanes_avx2(count - i);
    const __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, lanes), vp), va, vb);
    const __m256 sig = sigmoid_avx2(v);
    _mm256_maskstore_ps(y + i, lanes, _mm256_mul_ps(v, sig));
    if (s) _mm256_maskstore_ps(s + i, lanes, sig);
  }
}

PYLTH_END_TARGET
#endif

// The loops of the CPU path active now (a path without its own falls to the next lower one).
gn::ForwardKernels kernels_for(CpuIsa isa) {
#ifdef PYLTH_ISA_VARIANTS
  switch (isa) {
    case CpuIsa::avx512: return gn::forward_kernels_avx512();
    case CpuIsa::avx2: return {moments_avx2, normalize_silu_avx2};
    default: break;
  }
#else
  (void)isa;
#endif
  return {moments_baseline, normalize_silu_baseline};
}

void group_norm_silu_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t n,
                         std::int64_t c, std::int64_t hw, std::int64_t groups, double eps, int num_threads) {
  const ArgTable table(table_address, rows, width, kGroupNormSiluTableWidth, "group_norm_silu_cpu");
  require(rows == kGnRows, "group_norm_silu_cpu: the table must have " + std::to_string(kGnRows) + " rows");
  const bool saves = table.at(kGnMean, 0) != 0;
  require(n >= 0 && c > 0 && hw >= 0 && groups > 0 && c % groups == 0,
          "group_norm_silu_cpu: channels must be a positive multiple of groups");
  require(eps >= 0.0, "group_norm_silu_cpu: eps must be >= 0");
  const std::int64_t numel = n * c * hw;
  for (int row : {kGnInput, kGnOutput})
    require(table.at(row, 1) == numel, "group_norm_silu_cpu: x and y must hold N * C * HW floats");
  for (int row : {kGnWeight, kGnBias})
    require(table.at(row, 0) == 0 || table.at(row, 1) == c, "group_norm_silu_cpu: weight and bias must hold C floats");
  const float* x = table.ptr<const float>(kGnInput, 0);
  const float* gamma = table.ptr<const float>(kGnWeight, 0);
  const float* beta = table.ptr<const float>(kGnBias, 0);
  float* y = table.ptr<float>(kGnOutput, 0);
  for (int row : {kGnMean, kGnRstd})
    require(!saves || (table.at(row, 0) != 0 && table.at(row, 1) == n * groups),
            "group_norm_silu_cpu: mean and rstd must hold N * groups floats");
  require(!saves || (table.at(kGnSigmoid, 0) != 0 && table.at(kGnSigmoid, 1) == numel),
          "group_norm_silu_cpu: the sigmoid must hold N * C * HW floats");
  float* saved_mean = saves ? table.ptr<float>(kGnMean, 0) : nullptr;
  float* saved_rstd = saves ? table.ptr<float>(kGnRstd, 0) : nullptr;
  float* saved_sigmoid = saves ? table.ptr<float>(kGnSigmoid, 0) : nullptr;
  if (numel == 0) return;
  const gn::ForwardKernels k = kernels_for(active_cpu_isa());
  const std::int64_t per_group = c / groups, group_len = per_group * hw, blocks = n * groups;
  py::gil_scoped_release no_gil;
  FirstError error;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (std::int64_t block = 0; block < blocks; ++block) {
    error.run([&] {
      const std::int64_t start = block * group_len, first_channel = (block % groups) * per_group;
      const Moments m = k.moments(x + start, group_len);
      const double shifted_mean = m.sum / static_cast<double>(group_len);
      const double var = std::max(m.squares / static_cast<double>(group_len) - shifted_mean * shifted_mean, 0.0);

      const double rstd = 1.0 / std::sqrt(var + eps);
      if (saved_mean) {
        saved_mean[block] = static_cast<float>(shifted_mean);  // the mean less the pivot, x[start]
        saved_rstd[block] = static_cast<float>(rstd);
      }
      for (std::int64_t j = 0; j < per_group; ++j) {
        const std::int64_t ch = first_channel + j;
        const double a = (gamma ? gamma[ch] : 1.0) * rstd;
        // (x - mean) * a + beta = (x - pivot) * a + b, with b = beta - (mean - pivot) * a
        const double b = (beta ? beta[ch] : 0.0) - shifted_mean * a;
        const std::int64_t at = start + j * hw;
        k.normalize_silu(x + at, y + at, saved_sigmoid ? saved_sigmoid + at : nullptr, hw, static_cast<float>(m.pivot),
                         static_cast<float>(a), static_cast<float>(b));
      }
    });
  }
  error.rethrow();
}

}  // namespace

void register_group_norm_silu(py::module_& m) {
  m.def("group_norm_silu_cpu", &group_norm_silu_cpu, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("n"), py::arg("c"), py::arg("hw"), py::arg("groups"), py::arg("eps"), py::arg("num_threads"),
        "GroupNorm then SiLU on contiguous float32 NCHW CPU tensors: table rows in csrc/group_norm_silu.h.");
}

}  // namespace pylth
