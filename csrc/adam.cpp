// Fused masked Adam/AdamW on the CPU: all tensors of a step in one call, split into equal chunks that
// OpenMP threads share; the element loop is branch-free so it vectorises, and built once per vector
// instruction set (adam_cpu.h).
#include "adam_cpu.h"

#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace py = pybind11;

namespace pylth {
namespace {

// Elements per work item: big enough to amortise scheduling, small enough to balance many small tensors.
constexpr std::int64_t kChunk = 1 << 15;
// Below this many elements in a step, waking the thread team costs more than it saves.
constexpr std::int64_t kParallelMinElements = 1 << 16;

inline std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float float_of(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// The order of operations follows torch.optim.Adam's single-tensor step so results agree to rounding.
// Masked-out entries are cleared with a bitwise AND, not a branch or a multiply: the loop stays
// vectorisable and a NaN gradient there still ends as exactly 0.
template <bool kMasked>
inline __attribute__((always_inline)) void adam_range(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                const std::uint8_t* __restrict mask, std::int64_t n, const AdamConsts c) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float grad = g[i] + c.l2_decay * p[i];
    const float param = p[i] * c.decay_factor;
    const float mi = m[i] + c.one_minus_beta1 * (grad - m[i]);
    const float vi = v[i] * c.beta2 + c.one_minus_beta2 * grad * grad;
    const float denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
    const float pi = param + (-c.step_size) * (mi / denom);
    if constexpr (kMasked) {
      const std::uint32_t keep = 0u - static_cast<std::uint32_t>(mask[i] != 0);
      p[i] = float_of(bits_of(pi) & keep);
      m[i] = float_of(bits_of(mi) & keep);
      v[i] = float_of(bits_of(vi) & keep);
    } else {
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
    }
  }
}

// Always inlined, so that each path's function below compiles it for its own instruction set.
inline __attribute__((always_inline)) void adam_range_portable(float* p, const float* g, float* m, float* v,
                                                               const std::uint8_t* mask, std::int64_t n,
                                                               const AdamConsts& c) {
  if (mask)
    adam_range<true>(p, g, m, v, mask, n, c);
  else
    adam_range<false>(p, g, m, v, nullptr, n, c);
}

void adam_range_baseline(float* p, const float* g, float* m, float* v, const std::uint8_t* mask, std::int64_t n,
                         const AdamConsts& c) {
  adam_range_portable(p, g, m, v, mask, n, c);
}

#ifdef PYLTH_ISA_VARIANTS
// The same loop as GCC vectorises it for AVX2 (8 floats a vector; no FMA: -ffp-contract=off).
PYLTH_BEGIN_AVX2
void adam_range_avx2(float* p, const float* g, float* m, float* v, const std::uint8_t* mask, std::int64_t n,
                     const AdamConsts& c) {
  adam_range_portable(p, g, m, v, mask, n, c);
}
PYLTH_END_TARGET
#endif

AdamRangeFn adam_range_for(CpuIsa isa) {
  switch (isa) {
#ifdef PYLTH_ISA_VARIANTS
    case CpuIsa::avx512: return adam_range_avx512;
    case CpuIsa::avx2: return adam_range_avx2;
#endif
    default: return adam_range_baseline;
  }
}

struct WorkItem {
  int64_t tensor;
  std::int64_t begin, end;
};

void masked_adam_cpu(std::uintptr_t table_address, int64_t rows, int64_t width, std::uintptr_t consts_address,
                     int num_threads) {
  const ArgTable table(table_address, rows, width, kAdamColumns, "masked_adam_cpu");
  check_adam_table(table, consts_address, "masked_adam_cpu");
  require(num_threads >= 1, "masked_adam_cpu: num_threads must be >= 1");
  const double* consts = as_ptr<const double>(consts_address);

  std::vector<AdamConsts> per_tensor(rows);
  std::vector<WorkItem> items;
  std::int64_t total = 0;
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t numel = table.at(t, kAdamNumel);
    per_tensor[t] = adam_consts_at(consts, t);
    total += numel;
    for (std::int64_t b = 0; b < numel; b += kChunk) items.push_back({t, b, std::min(b + kChunk, numel)});
  }

  const AdamRangeFn adam_range_isa = adam_range_for(active_cpu_isa());
  py::gil_scoped_release no_gil;
  const std::int64_t count = static_cast<std::int64_t>(items.size());
#pragma omp parallel for schedule(static) num_threads(num_threads) if (total >= kParallelMinElements)
  for (std::int64_t k = 0; k < count; ++k) {
    const WorkItem& w = items[k];
    const int64_t t = w.tensor;
    float* p = table.ptr<float>(t, kAdamParam) + w.begin;
    const float* g = table.ptr<const float>(t, kAdamGrad) + w.begin;
    float* m = table.ptr<float>(t, kAdamExpAvg) + w.begin;
    float* v = table.ptr<float>(t, kAdamExpAvgSq) + w.begin;
    const std::uint8_t* mask = table.ptr<const std::uint8_t>(t, kAdamMask);
    adam_range_isa(p, g, m, v, mask ? mask + w.begin : nullptr, w.end - w.begin, per_tensor[t]);
  }
}

#ifdef PYLTH_WITH_CUDA
void masked_adam_cuda_binding(std::uintptr_t table_address, int64_t rows, int64_t width, std::uintptr_t consts_address,
                              std::uintptr_t stream) {
  const ArgTable table(table_address, rows, width, kAdamColumns, "masked_adam_cuda");
  check_adam_table(table, consts_address, "masked_adam_cuda");
  masked_adam_cuda(table, as_ptr<const double>(consts_address), stream);
}
#endif

}  // namespace

void register_adam(py::module_& m) {
  m.def("masked_adam_cpu", &masked_adam_cpu, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("consts"),
        py::arg("num_threads"),
        "One masked Adam/AdamW step over many float32 CPU tensors: a table row per tensor and 8 float64 "
        "constants per tensor (layouts: csrc/adam.h). Entries whose uint8/bool mask is 0 end as exactly 0.");
#ifdef PYLTH_WITH_CUDA
  m.def("masked_adam_cuda", &masked_adam_cuda_binding, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("consts"), py::arg("stream"),
        "The CUDA version of masked_adam_cpu (both tables in host memory) on the current device and the "
        "given cudaStream_t (an integer).");
#endif
}

}  // namespace pylth
