// Keyed dropout on the CPU (see dropout.h): one pass that reads x and writes y, the mask computed on
// the fly from the element's counters. The element loop vectorises (32-bit multiplies, shifts, an
// unsigned compare, and a bitwise select: a kept value is x * scale, a dropped one +0 whatever x
// holds); OpenMP runs blocks of rows in parallel.
#include "dropout.h"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common.h"
#include "cpu_dispatch.h"
#include "omp_error.h"

namespace py = pybind11;

namespace pylth {
namespace {

constexpr std::int64_t kBlock = 1 << 14;  // elements per OpenMP work item: 64 KB of input

// y[i] = x[i] * scale where the element's bits clear the threshold, else +0; element index first + i.
// Always inlined, so that each path's function below compiles it for its own instruction set.
inline __attribute__((always_inline)) void dropout_span_portable(const float* __restrict x, float* __restrict y,
                                                                 std::int64_t count, std::uint32_t first,
                                                                 std::uint32_t row_key, std::uint32_t threshold,
                                                                 float scale) {
  for (std::int64_t i = 0; i < count; ++i) {
    const std::uint32_t bits = dropout_bits(row_key, first + static_cast<std::uint32_t>(i));
    const std::uint32_t keep = 0u - static_cast<std::uint32_t>(bits >= threshold);  // all ones or all zeros
    const float scaled = x[i] * scale;
    std::uint32_t word;
    std::memcpy(&word, &scaled, sizeof word);
    word &= keep;
    std::memcpy(y + i, &word, sizeof word);
  }
}

using DropoutSpanFn = void (*)(const float*, float*, std::int64_t, std::uint32_t, std::uint32_t, std::uint32_t, float);

void dropout_span_baseline(const float* x, float* y, std::int64_t count, std::uint32_t first, std::uint32_t row_key,
                           std::uint32_t threshold, float scale) {
  dropout_span_portable(x, y, count, first, row_key, threshold, scale);
}

#ifdef PYLTH_ISA_VARIANTS
// The same loop vectorised by GCC for 8 and 16 lanes (the hash is 32-bit multiplies and shifts).
PYLTH_BEGIN_AVX2
void dropout_span_avx2(const float* x, float* y, std::int64_t count, std::uint32_t first, std::uint32_t row_key,
                       std::uint32_t threshold, float scale) {
  dropout_span_portable(x, y, count, first, row_key, threshold, scale);
}
PYLTH_END_TARGET
PYLTH_BEGIN_AVX512
void dropout_span_avx512(const float* x, float* y, std::int64_t count, std::uint32_t first, std::uint32_t row_key,
                         std::uint32_t threshold, float scale) {
  dropout_span_portable(x, y, count, first, row_key, threshold, scale);
}
PYLTH_END_TARGET
#endif

DropoutSpanFn dropout_span_for(CpuIsa isa) {
  switch (isa) {
#ifdef PYLTH_ISA_VARIANTS
    case CpuIsa::avx512: return dropout_span_avx512;
    case CpuIsa::avx2: return dropout_span_avx2;
#endif
    default: return dropout_span_baseline;
  }
}

// The checks both entry points share; returns the launch they describe.
DropoutLaunch checked_launch(std::uintptr_t table_address, std::int64_t rows, std::int64_t width,
                             std::int64_t batch_rows, std::int64_t per_row, std::uint64_t key, std::int64_t row_offset,
                             std::int64_t row_stride, std::int64_t threshold, double scale, int dtype,
                             const std::string& kernel) {
  const ArgTable table(table_address, rows, width, kDropoutTableWidth, kernel.c_str());
  require(rows == kDropoutRows, kernel + ": the table must have " + std::to_string(kDropoutRows) + " rows");
  require(batch_rows >= 0 && per_row >= 0 && per_row <= 0xFFFFFFFFll,
          kernel + ": rows must be >= 0 and each row must hold fewer than 2^32 elements");
  require(row_offset >= 0 && row_stride >= 1, kernel + ": row_offset must be >= 0 and row_stride >= 1");
  require(threshold >= 0 && threshold <= 0xFFFFFFFFll, kernel + ": threshold must fit 32 bits");
  require(dtype == kDropoutFloat32 || dtype == kDropoutFloat16 || dtype == kDropoutBFloat16,
          kernel + ": unknown dtype code " + std::to_string(dtype));
  for (int row : {kDropoutInput, kDropoutOutput})
    require(table.at(row, 1) == batch_rows * per_row, kernel + ": x and y must hold rows * per_row elements");
  return DropoutLaunch{table.ptr<const void>(kDropoutInput, 0), table.ptr<void>(kDropoutOutput, 0), batch_rows,
                       per_row, key, row_offset, row_stride, static_cast<std::uint32_t>(threshold),
                       static_cast<float>(scale), dtype};
}

void dropout_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t batch_rows,
                 std::int64_t per_row, std::uint64_t key, std::int64_t row_offset, std::int64_t row_stride,
                 std::int64_t threshold, double scale, int dtype, int num_threads) {
  require(dtype == kDropoutFloat32, "dropout_cpu: only float32 tensors (dtype 0)");
  const DropoutLaunch a = checked_launch(table_address, rows, width, batch_rows, per_row, key, row_offset, row_stride,
                                         threshold, scale, dtype, "dropout_cpu");
  const float* x = static_cast<const float*>(a.x);
  float* y = static_cast<float*>(a.y);
  if (batch_rows == 0 || per_row == 0) return;
  const std::int64_t blocks_per_row = (per_row + kBlock - 1) / kBlock, blocks = batch_rows * blocks_per_row;
  const DropoutSpanFn dropout_span = dropout_span_for(active_cpu_isa());
  py::gil_scoped_release no_gil;
  FirstError error;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (std::int64_t block = 0; block < blocks; ++block) {
    error.run([&] {
      const std::int64_t row = block / blocks_per_row, start = (block % blocks_per_row) * kBlock;
      const std::uint64_t global_row = static_cast<std::uint64_t>(row_offset) +
                                       static_cast<std::uint64_t>(row) * static_cast<std::uint64_t>(row_stride);
      const std::int64_t at = row * per_row + start;
      dropout_span(x + at, y + at, std::min(kBlock, per_row - start), static_cast<std::uint32_t>(start),
                   dropout_row_key(key, global_row), a.threshold, a.scale);
    });
  }
  error.rethrow();
}

#ifdef PYLTH_WITH_CUDA
void dropout_cuda_binding(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t batch_rows,
                          std::int64_t per_row, std::uint64_t key, std::int64_t row_offset, std::int64_t row_stride,
                          std::int64_t threshold, double scale, int dtype, std::uintptr_t stream) {
  const DropoutLaunch a = checked_launch(table_address, rows, width, batch_rows, per_row, key, row_offset, row_stride,
                                         threshold, scale, dtype, "dropout_cuda");
  if (batch_rows == 0 || per_row == 0) return;
  dropout_cuda(a, stream);
}
#endif

}  // namespace

void register_dropout(py::module_& m) {
  m.def("dropout_cpu", &dropout_cpu, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("batch_rows"),
        py::arg("per_row"), py::arg("key"), py::arg("row_offset"), py::arg("row_stride"), py::arg("threshold"),
        py::arg("scale"), py::arg("dtype"), py::arg("num_threads"),
        "Keyed dropout of a contiguous float32 (dtype 0) [rows, per_row] CPU tensor: table rows in csrc/dropout.h.");
#ifdef PYLTH_WITH_CUDA
  m.def("dropout_cuda", &dropout_cuda_binding, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("batch_rows"), py::arg("per_row"), py::arg("key"), py::arg("row_offset"), py::arg("row_stride"),
        py::arg("threshold"), py::arg("scale"), py::arg("dtype"), py::arg("stream"),
        "The CUDA version of dropout_cpu (the table in host memory) for float32, float16 or bfloat16 (dtype "
        "0, 1, 2) on the current device and the given cudaStream_t (an integer).");
#endif
}

}  // namespace pylth
