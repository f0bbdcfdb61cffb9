// GroupNorm + SiLU on the CPU: see group_norm_silu.h. One image's group is contiguous in NCHW and
// small (a few channels' planes: 16 KB in the CIFAR-10 U-Net), so the statistics pass leaves it in
// L1/L2 for the normalising pass; OpenMP runs the (image, group) blocks in parallel.
#include "group_norm_silu.h"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "common.h"
#include "cpu_dispatch.h"
#include "omp_error.h"

#ifdef PYLTH_X86_DISPATCH
#include <immintrin.h>
#endif

namespace py = pybind11;

namespace pylth {
namespace {

// Sums in double of the values less a pivot near them: the variance as E[d^2] - E[d]^2 then keeps what
// fp32 data holds.
struct Moments {
  double sum = 0.0, squares = 0.0;  // of x - pivot
  double pivot = 0.0;
};

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

// y[i] = silu((x[i] - pivot) * a + b). Subtracting a value of the group first (exact for values near
// it) keeps the digits that x * a + b' loses when the mean is far from 0 next to the spread.
void normalize_silu_baseline(const float* x, float* y, std::int64_t count, float pivot, float a, float b) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float v = (x[i] - pivot) * a + b;
    y[i] = v / (1.0f + std::exp(-v));
  }
}

#if defined(PYLTH_X86_DISPATCH) && !defined(__clang__)
#define PYLTH_GN_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")

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

// exp(t) for t clamped to [-87, 88]: t = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two so n * ln2_hi is
// exact), exp(r) by its Taylor polynomial to degree 7 (relative error below 1e-8, under fp32's half
// ulp), 2^n from the exponent bits. Below -87 the result would leave the normal range; silu there is
// v / (1 + e^87), 0 in fp32 to within 1e-36.
inline __m256 exp_avx2(__m256 t) {
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), t);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

void normalize_silu_avx2(const float* x, float* y, std::int64_t count, float pivot, float a, float b) {
  const __m256 vp = _mm256_set1_ps(pivot), va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f), two = _mm256_set1_ps(2.0f);
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vp), va, vb);
    const __m256 e = exp_avx2(_mm256_xor_ps(v, sign));
    // v / d as v * (1 / d): the reciprocal estimate and one Newton step (about 23 bits) cost less
    // than a division; d = 1 + e lies in [1, 2e38], where rcp stays normal or flushes to 0 (y = 0).
    const __m256 d = _mm256_add_ps(one, e);
    __m256 r = _mm256_rcp_ps(d);
    r = _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, two));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(v, r));
  }
  normalize_silu_baseline(x + i, y + i, count - i, pivot, a, b);
}

#pragma GCC pop_options
#endif

struct Kernels {
  Moments (*moments)(const float*, std::int64_t);
  void (*normalize_silu)(const float*, float*, std::int64_t, float, float, float);
};

Kernels pick_kernels() {
#ifdef PYLTH_GN_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {moments_avx2, normalize_silu_avx2};
#endif
  return {moments_baseline, normalize_silu_baseline};
}

void group_norm_silu_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t n,
                         std::int64_t c, std::int64_t hw, std::int64_t groups, double eps, int num_threads) {
  const ArgTable table(table_address, rows, width, kGroupNormSiluTableWidth, "group_norm_silu_cpu");
  require(rows == kGnRows, "group_norm_silu_cpu: the table must have " + std::to_string(kGnRows) + " rows");
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
  if (numel == 0) return;
  const Kernels k = pick_kernels();
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
      for (std::int64_t j = 0; j < per_group; ++j) {
        const std::int64_t ch = first_channel + j;
        const double a = (gamma ? gamma[ch] : 1.0) * rstd;
        // (x - mean) * a + beta = (x - pivot) * a + b, with b = beta - (mean - pivot) * a
        const double b = (beta ? beta[ch] : 0.0) - shifted_mean * a;
        k.normalize_silu(x + start + j * hw, y + start + j * hw, hw, static_cast<float>(m.pivot),
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
