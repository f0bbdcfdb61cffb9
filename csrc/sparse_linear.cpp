// Sparse-weight Linear forward and weight gradient on the CPU: a 1x1 conv of one "image" whose planes
// are the transposed batch (x^T [I, B]), so the vector dimension is the batch. The workspace holds x^T
// and y^T (or dy^T), rows `pitch` floats apart (B rounded up to 16, zero past B, so that a partial
// vector reads inside its row); table rows in sparse_conv.h (SparseLinearCpuRow).
#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common.h"
#include "cpu_dispatch.h"
#include "sparse_conv.h"
#include "sparse_conv_kernels.h"

namespace py = pybind11;

namespace pylth {
namespace {

using sparse::GradArgs;
using sparse::Kernels;
using sparse::TileArgs;

constexpr std::int64_t kParallelMinWork = 1 << 16;

struct LinearCall {
  const float* x;
  float *xt, *yt, *y, *scratch;
  const std::int64_t* row_ptr;
  const std::int32_t* offsets;
  std::int64_t batch, in_features, out_features, pitch, nnz;
  int threads;
};

LinearCall linear_call(const ArgTable& table, std::int64_t rows, std::int64_t batch, std::int64_t in_features,
                       std::int64_t out_features, int num_threads, bool gradient, const std::string& name) {
  require(rows == kSlRows, name + ": the table must have " + std::to_string(kSlRows) + " rows");
  require(batch >= 0 && in_features >= 1 && out_features >= 1, name + ": sizes out of range");
  require(num_threads >= 1, name + ": num_threads must be >= 1");
  LinearCall c{};
  c.batch = batch, c.in_features = in_features, c.out_features = out_features;
  c.pitch = (batch + kSlabSlack - 1) / kSlabSlack * kSlabSlack;
  require(table.at(kSlInput, 1) == batch * in_features, name + ": input size mismatch");
  require(table.at(kSlOutput, 1) == batch * out_features, name + ": output size mismatch");
  require(table.at(kSlRowPtr, 1) == out_features + 1, name + ": row_ptr must hold O + 1 entries");
  require(table.at(kSlBias, 0) == 0 || table.at(kSlBias, 1) == out_features, name + ": bias must hold O entries");
  c.row_ptr = table.ptr<const std::int64_t>(kSlRowPtr, 0);
  c.nnz = c.row_ptr[out_features];
  require(c.row_ptr[0] == 0 && table.at(kSlOffsets, 1) == c.nnz && table.at(kSlValues, 1) == c.nnz,
          name + ": offsets and values must hold row_ptr[O] entries");
  require(all_of_entries(out_features, [&](std::int64_t o) { return c.row_ptr[o] <= c.row_ptr[o + 1]; }),
          name + ": row_ptr must not decrease");
  c.offsets = table.ptr<const std::int32_t>(kSlOffsets, 0);
  require(all_of_entries(c.nnz, [&](std::int64_t k) {
            return c.offsets[k] >= 0 && c.offsets[k] % c.pitch == 0 && c.offsets[k] / c.pitch < in_features;
          }),
          name + ": an offset is not a multiple of the batch pitch within the input features");
  const std::int64_t needed = (in_features + out_features) * c.pitch + kSlabSlack + (gradient ? kGradAccFloats * (c.nnz + 1) : 0);
  require(table.at(kSlWorkspace, 0) != 0 && table.at(kSlWorkspace, 1) >= needed,
          name + ": the workspace must hold (I + O) x pitch floats and the accumulators");
  c.x = table.ptr<const float>(kSlInput, 0);
  c.xt = table.ptr<float>(kSlWorkspace, 0);
  c.yt = c.xt + in_features * c.pitch;
  c.scratch = c.yt + out_features * c.pitch + kSlabSlack;  // the accumulators follow the slack
  c.y = table.ptr<float>(kSlOutput, 0);
  const std::int64_t work = std::max(c.nnz, in_features) * (c.pitch / 8);
  c.threads = work >= kParallelMinWork ? num_threads : 1;
  return c;
}

// src [rows, cols] into dst [cols, pitch], zeros past `rows` (inside a parallel region).
void transpose_padded(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t pitch, float* dst) {
#pragma omp for schedule(static)
  for (std::int64_t k = 0; k < cols; ++k) {
    float* row = dst + k * pitch;
    for (std::int64_t j = 0; j < rows; ++j) row[j] = src[j * cols + k];
    std::fill(row + rows, row + pitch, 0.0f);
  }
}

// The one-image, one-row plan of the transposed batch: rows of `batch` outputs `pitch` floats apart.
sparse::RowGeometry linear_rows(const LinearCall& c) { return {0, 0, 0, 0, c.pitch, 1, c.batch}; }

TileArgs linear_tile_args(const LinearCall& c, const sparse::TileShape& shape, const float* values, const float* bias) {
  TileArgs a{};
  a.g = linear_rows(c);
  a.slabs = c.xt, a.out = c.yt;
  a.chunks_per_row = shape.chunks_per_row, a.units = shape.chunks_per_row, a.last_start = shape.last_start;
  a.tail = shape.tail;
  a.partial = shape.partial;
  a.row_ptr = c.row_ptr, a.offsets = c.offsets, a.values = values, a.bias = bias;
  return a;
}

// y [B, O] = x [B, I] W^T + bias; y^T is transposed into y at the end, 16 outputs (a cache line) of a
// row at a time: stored straight down y's columns, 2 KB apart for O = 512, the vectors fell into two L1
// sets and ran 3x slower.
void sparse_linear_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t batch,
                       std::int64_t in_features, std::int64_t out_features, int num_threads) {
  const std::string name = "sparse_linear_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name.c_str());
  const LinearCall c = linear_call(table, rows, batch, in_features, out_features, num_threads, false, name);
  if (batch == 0) return;
  // The path's build, or its narrow one where the batch fills those vectors at less cost (batch 8 on AVX-512).
  const Kernels& path = sparse::kernels_for(active_cpu_isa());
  const Kernels* k = &path;
  sparse::TileShape shape = sparse::tile_shape(batch, 1, path);
  if (path.narrow) {
    const sparse::TileShape narrow = sparse::tile_shape(batch, 1, *path.narrow);
    if (narrow.cost < shape.cost) k = path.narrow, shape = narrow;
  }
  const int units = shape.units;
  const TileArgs a = linear_tile_args(c, shape, table.ptr<const float>(kSlValues, 0), table.ptr<const float>(kSlBias, 0));
  const sparse::TileFn tile_fn = k->tile_function(shape.vectors, units);
  const std::int64_t tiles = (a.units + units - 1) / units;
  py::gil_scoped_release no_gil;
#pragma omp parallel num_threads(c.threads)
  {
    transpose_padded(c.x, batch, in_features, c.pitch, c.xt);
    // Blocks of output channels: the tiles of one row are few.
    const std::int64_t per_block = (out_features + 4 * c.threads - 1) / (4 * c.threads);
    const std::int64_t blocks = (out_features + per_block - 1) / per_block;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t item = 0; item < tiles * blocks; ++item) {
      const std::int64_t b = item % blocks * per_block;
      tile_fn(a, item / blocks * units, b, std::min(out_features, b + per_block));
    }
    constexpr std::int64_t kLine = 16;
#pragma omp for schedule(static)
    for (std::int64_t first = 0; first < out_features; first += kLine) {
      const std::int64_t last = std::min(out_features, first + kLine);
      for (std::int64_t j = 0; j < batch; ++j)
        for (std::int64_t o = first; o < last; ++o) c.y[j * out_features + o] = c.yt[o * c.pitch + j];
    }
  }
}

// dL/d values of a sparse linear from x and dy: dy [B, O] in the output row (read), dL/d values in the
// values row (written), no bias; the workspace holds x^T, dy^T and the accumulators.
void sparse_linear_grad_weight_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width,
                                   std::int64_t batch, std::int64_t in_features, std::int64_t out_features,
                                   int num_threads) {
  const std::string name = "sparse_linear_grad_weight_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name.c_str());
  const LinearCall c = linear_call(table, rows, batch, in_features, out_features, num_threads, true, name);
  require(table.at(kSlBias, 0) == 0, name + ": the bias row must be empty (address 0)");
  float* grad = table.ptr<float>(kSlValues, 0);
  std::fill(grad, grad + c.nnz, 0.0f);
  if (batch == 0 || c.nnz == 0) return;
  const Kernels& k = sparse::grad_kernels(batch, sparse::kernels_for(active_cpu_isa()));
  const auto acc_address = reinterpret_cast<std::uintptr_t>(c.scratch);
  float* acc = reinterpret_cast<float*>((acc_address + 63) / 64 * 64);
  GradArgs g{};
  g.g = linear_rows(c);
  g.slabs = c.xt, g.dy = c.yt, g.images = 1;
  const std::vector<sparse::GradPosition> positions = sparse::grad_positions(g.g, k.lanes, g.masks);
  g.positions = positions.data(), g.position_count = static_cast<std::int64_t>(positions.size());
  g.row_ptr = c.row_ptr, g.offsets = c.offsets, g.acc = acc;
  const std::int64_t blocks = c.threads == 1 ? 1 : std::min<std::int64_t>(out_features, 4 * c.threads);
  const std::int64_t per_block = (out_features + blocks - 1) / blocks;
  py::gil_scoped_release no_gil;
  std::fill(acc, acc + kGradAccFloats * c.nnz, 0.0f);
#pragma omp parallel num_threads(c.threads)
  {
    transpose_padded(c.x, batch, in_features, c.pitch, c.xt);
    transpose_padded(c.y, batch, out_features, c.pitch, c.yt);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t first = 0; first < out_features; first += per_block)
      k.grad_channels(g, first, std::min(out_features, first + per_block));
#pragma omp for schedule(static)
    for (std::int64_t e = 0; e < c.nnz; ++e) {
      float sum = 0.0f;
      for (int lane = 0; lane < k.lanes; ++lane) sum += acc[e * kGradAccFloats + lane];
      grad[e] = sum;
    }
  }
}

}  // namespace

void register_sparse_linear(py::module_& m) {
  m.def("sparse_linear_cpu", &sparse_linear_cpu, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("batch"), py::arg("in_features"), py::arg("out_features"), py::arg("num_threads"),
        "Sparse-weight linear forward on float32 CPU tensors: x [B, I] in, y [B, O] out, a workspace for x^T and "
        "y^T (table rows in csrc/sparse_conv.h).");
  m.def("sparse_linear_grad_weight_cpu", &sparse_linear_grad_weight_cpu, py::arg("table"), py::arg("rows"),
        py::arg("width"), py::arg("batch"), py::arg("in_features"), py::arg("out_features"), py::arg("num_threads"),
        "Weight gradient of the sparse linear at its kept entries: dy [B, O] in the output row and the gradient in "
        "the values row, a workspace for x^T, dy^T and the accumulators.");
}

}  // namespace pylth
