// Sparse-weight Conv2d forward on the CPU (layouts and table: sparse_conv.h). The output is cut into
// units of up to 8 AVX vectors of consecutive outputs, and a tile of units is computed for every output
// channel in turn: its accumulators stay in registers while the channel's kept weights stream past
// (one broadcast and one multiply-add per vector each), and the tile's input stays in cache from one
// channel to the next. OpenMP threads share the tiles (and blocks of output channels when the tiles
// are few).
#include "cpu_dispatch.h"
#include "sparse_conv.h"

#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <utility>

#include "common.h"

namespace py = pybind11;

// The Vec helpers of sparse_conv_tile.h are inlined within each build; no Vec crosses a call between them.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace pylth {
namespace {

constexpr int kLanes = 8;             // floats per vector
constexpr int kMaxVectors = 8;        // vectors per unit
constexpr int kMaxAccumulators = 12;  // of the 16 ymm registers: the rest hold the broadcast weight
constexpr int kMaxUnits = 8;          // units per tile: each needs a general-purpose register for its address
// Below this many vector multiply-adds a call stays on one thread: waking the team costs more.
constexpr std::int64_t kParallelMinWork = 1 << 16;

// Units of `vectors` vectors in one tile (vectors <= kMaxVectors <= kMaxAccumulators).
constexpr int units_per_tile(int vectors) { return std::min(kMaxUnits, kMaxAccumulators / vectors); }

// One call's constants. A unit is `vectors` vectors of consecutive outputs of one unit row, in chunk
// `chunk` of that row; units are numbered image-major, then unit row, then chunk.
struct Plan {
  const float* slabs;
  std::int64_t image_floats;  // slab floats per image
  float* out;
  std::int64_t image_outputs;   // outputs per image
  std::int64_t channel_stride;  // between the outputs of consecutive channels
  std::int64_t channels_out;
  const std::int64_t* row_ptr;
  const std::int32_t* offsets;
  const float* values;
  const float* bias;
  std::int64_t unit_rows, unit_len, unit_row_stride;
  int vectors;                // per unit
  std::int64_t chunks;        // units per unit row
  std::int64_t units;         // in the batch
  int tile_units;             // units per tile
  std::int64_t tiles, channel_blocks, channels_per_block;
};

// Where the slabs of one (image, input channel) plane come from (sparse_conv.h).
struct SlabLayout {
  std::int64_t height, width, pad, row_step, col_step, kinds_rows, kinds_cols, slab_rows, slab_pitch;
};

// Computes output channels [co_begin, co_end) of one tile.
using TileFn = void (*)(const Plan& p, std::int64_t tile, std::int64_t co_begin, std::int64_t co_end);

namespace baseline {
#include "sparse_conv_tile.h"
}  // namespace baseline

// The AVX2 + FMA build (the multiply-adds contract to FMA in this file only: see CMakeLists.txt). GCC
// only: other compilers keep the baseline build.
#if defined(PYLTH_X86_DISPATCH) && !defined(__clang__)
#define PYLTH_SPARSE_CONV_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "sparse_conv_tile.h"
}  // namespace avx2
#pragma GCC pop_options
#endif

// The functions of one build.
struct Kernels {
  TileFn (*tile_function)(int vectors, int units);
  void (*build_slabs)(const float* src, float* dst, const SlabLayout& s);
};

// The best build this CPU runs.
Kernels pick_kernels() {
#ifdef PYLTH_SPARSE_CONV_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {avx2::tile_function, avx2::build_slabs};
#endif
  return {baseline::tile_function, baseline::build_slabs};
}

// Largest divisor of `count` vectors that fits a unit: a row splits into equal units and never reads
// past its last vector.
int unit_vectors(std::int64_t count) {
  for (int v = kMaxVectors; v > 1; --v)
    if (count % v == 0) return v;
  return 1;
}

// The plan of a group of `images` images whose slabs start at `slabs` and outputs at `out`.
Plan group_plan(const Plan& call, std::int64_t images, const float* slabs, float* out, int threads) {
  Plan p = call;
  p.slabs = slabs;
  p.out = out;
  p.units = images * p.unit_rows * p.chunks;
  // Fewest tiles of at most units_per_tile units, then as few units per tile as that allows.
  const std::int64_t max_units = units_per_tile(p.vectors);
  p.tiles = (p.units + max_units - 1) / max_units;
  p.tile_units = static_cast<int>((p.units + p.tiles - 1) / p.tiles);
  // Several items per thread keep the threads busy to the end: blocks of channels when tiles are few.
  const std::int64_t wanted_items = 8 * static_cast<std::int64_t>(threads);
  p.channel_blocks = threads == 1 ? 1 : std::min(p.channels_out, (wanted_items + p.tiles - 1) / p.tiles);
  p.channels_per_block = (p.channels_out + p.channel_blocks - 1) / p.channel_blocks;
  p.channel_blocks = (p.channels_out + p.channels_per_block - 1) / p.channels_per_block;
  return p;
}

// The entry count of the compressed weight (row_ptr, offsets, values) of `co` output channels.
std::int64_t checked_nnz(const ArgTable& table, std::int64_t co, const std::string& name) {
  require(table.at(kScRowPtr, 1) == co + 1, name + ": row_ptr must hold Co + 1 entries");
  require(table.at(kScBias, 0) == 0 || table.at(kScBias, 1) == co, name + ": bias must hold Co entries");
  const auto* row_ptr = table.ptr<const std::int64_t>(kScRowPtr, 0);
  const std::int64_t nnz = row_ptr[co] - row_ptr[0];
  require(row_ptr[0] == 0 && table.at(kScOffsets, 1) == nnz && table.at(kScValues, 1) == nnz,
          name + ": offsets and values must hold row_ptr[Co] entries");
  return nnz;
}

// The compressed weight's part of a plan.
Plan weight_plan(const ArgTable& table) {
  Plan p{};
  p.row_ptr = table.ptr<const std::int64_t>(kScRowPtr, 0);
  p.offsets = table.ptr<const std::int32_t>(kScOffsets, 0);
  p.values = table.ptr<const float>(kScValues, 0);
  p.bias = table.ptr<const float>(kScBias, 0);
  return p;
}

// The threads of an OpenMP team share the work items of a group (called inside a parallel region).
void run_items(const Plan& p, const Kernels& kernels) {
  const TileFn tile_fn = kernels.tile_function(p.vectors, p.tile_units);
  const std::int64_t items = p.tiles * p.channel_blocks;
#pragma omp for schedule(dynamic, 1)
  for (std::int64_t item = 0; item < items; ++item) {  // (tile, block of output channels)
    const std::int64_t tile = item / p.channel_blocks, b = item % p.channel_blocks * p.channels_per_block;
    tile_fn(p, tile, b, std::min(p.channels_out, b + p.channels_per_block));
  }
}

void sparse_conv2d_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t n,
                       std::int64_t ci, std::int64_t h, std::int64_t w, std::int64_t co, std::int64_t pad,
                       std::int64_t row_step, std::int64_t col_step, std::int64_t kinds_rows,
                       std::int64_t kinds_cols, std::int64_t slab_rows, std::int64_t slab_pitch,
                       std::int64_t unit_rows, std::int64_t unit_len, std::int64_t unit_row_stride,
                       int num_threads) {
  const char* name = "sparse_conv2d_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name);
  require(rows == kScCpuRows, std::string(name) + ": the table must have " + std::to_string(kScCpuRows) + " rows");
  require(n >= 0 && ci >= 1 && h >= 1 && w >= 1 && co >= 1 && pad >= 0 && row_step >= 1 && col_step >= 1 &&
              kinds_rows >= 1 && kinds_cols >= 1 && slab_rows >= 1 && slab_pitch >= 1 && unit_rows >= 1 &&
              unit_len >= 1 && unit_row_stride >= 0,
          std::string(name) + ": sizes out of range");
  require(num_threads >= 1, std::string(name) + ": num_threads must be >= 1");
  auto numel = [&](int row) { return table.at(row, 1); };
  const std::int64_t plane = unit_rows * unit_len;
  const std::int64_t channel_floats = kinds_rows * kinds_cols * slab_rows * slab_pitch;
  const std::int64_t image_floats = ci * channel_floats;
  require(numel(kScInput) == n * ci * h * w, std::string(name) + ": input size mismatch");
  require(numel(kScOutput) == n * co * plane, std::string(name) + ": output size mismatch");
  const bool direct = table.at(kScWorkspace, 0) == 0;
  if (direct)
    require(pad == 0 && row_step == 1 && col_step == 1 && kinds_rows == 1 && kinds_cols == 1 &&
                slab_rows * slab_pitch == h * w && unit_len % kLanes == 0,
            std::string(name) + ": without a workspace the layout must be the input itself, rows a multiple of 8");
  else
    require(numel(kScWorkspace) >= image_floats + kLanes, std::string(name) + ": workspace too small");
  const std::int64_t nnz = checked_nnz(table, co, name);
  if (n == 0) return;

  // The workspace holds the slabs of `group` images at a time, so that they stay in cache between
  // being written and being read (the whole batch when the input is read in place).
  const std::int64_t group = direct ? n : std::min(n, (numel(kScWorkspace) - kLanes) / image_floats);
  const float* input = table.ptr<const float>(kScInput, 0);
  float* workspace = table.ptr<float>(kScWorkspace, 0);
  float* output = table.ptr<float>(kScOutput, 0);
  Plan call = weight_plan(table);
  call.image_floats = image_floats;
  call.image_outputs = co * plane;
  call.channel_stride = plane;
  call.channels_out = co;
  call.unit_rows = unit_rows;
  call.unit_len = unit_len;
  call.unit_row_stride = unit_row_stride;
  const std::int64_t row_vectors = (unit_len + kLanes - 1) / kLanes;
  call.vectors = unit_vectors(row_vectors);
  call.chunks = row_vectors / call.vectors;
  const std::int64_t work = std::max<std::int64_t>(nnz, 1) * n * unit_rows * row_vectors;
  const int threads = work >= kParallelMinWork ? num_threads : 1;
  const SlabLayout layout{h, w, pad, row_step, col_step, kinds_rows, kinds_cols, slab_rows, slab_pitch};
  const Kernels kernels = pick_kernels();

  py::gil_scoped_release no_gil;
  if (!direct) std::fill(workspace + group * image_floats, workspace + group * image_floats + kLanes, 0.0f);
#pragma omp parallel num_threads(threads)
  for (std::int64_t first = 0; first < n; first += group) {  // every thread walks the groups
    const std::int64_t images = std::min(group, n - first);
    if (!direct) {
#pragma omp for schedule(static)
      for (std::int64_t q = 0; q < images * ci; ++q)
        kernels.build_slabs(input + (first * ci + q) * h * w, workspace + q * channel_floats, layout);
    }
    run_items(group_plan(call, images, direct ? input : workspace, output + first * co * plane, threads), kernels);
  }
}

// y [B, O] = x [B, I] W^T + bias as a 1x1 conv of the transposed batch: the workspace holds x^T and
// y^T, their rows padded to whole vectors (the vector dimension is the batch), and y^T is transposed
// into y at the end, 16 outputs (a cache line) of a row at a time: stored straight down y's columns,
// 2 KB apart for O = 512, the vectors fell into two L1 sets and ran 3x slower. Table as for the conv
// (the offsets are the taps times the padded batch).
void sparse_linear_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t batch,
                       std::int64_t in_features, std::int64_t out_features, int num_threads) {
  const char* name = "sparse_linear_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name);
  require(rows == kScCpuRows, std::string(name) + ": the table must have " + std::to_string(kScCpuRows) + " rows");
  require(batch >= 0 && in_features >= 1 && out_features >= 1, std::string(name) + ": sizes out of range");
  require(num_threads >= 1, std::string(name) + ": num_threads must be >= 1");
  const std::int64_t padded = (batch + kLanes - 1) / kLanes * kLanes;
  require(table.at(kScInput, 1) == batch * in_features, std::string(name) + ": input size mismatch");
  require(table.at(kScOutput, 1) == batch * out_features, std::string(name) + ": output size mismatch");
  require(table.at(kScWorkspace, 0) != 0 && table.at(kScWorkspace, 1) >= (in_features + out_features) * padded,
          std::string(name) + ": the workspace must hold (in_features + out_features) x (batch rounded up to 8) "
                              "floats");
  const std::int64_t nnz = checked_nnz(table, out_features, name);
  if (batch == 0) return;

  const float* x = table.ptr<const float>(kScInput, 0);
  float* xt = table.ptr<float>(kScWorkspace, 0);
  float* yt = xt + in_features * padded;
  float* y = table.ptr<float>(kScOutput, 0);
  Plan call = weight_plan(table);
  call.image_floats = in_features * padded;
  call.image_outputs = 0;  // one image
  call.channel_stride = padded;
  call.channels_out = out_features;
  call.unit_rows = 1;
  call.unit_len = batch;
  call.unit_row_stride = 0;
  call.vectors = unit_vectors(padded / kLanes);
  call.chunks = padded / kLanes / call.vectors;
  const std::int64_t work = std::max<std::int64_t>(nnz, in_features) * (padded / kLanes);
  const int threads = work >= kParallelMinWork ? num_threads : 1;
  const Kernels kernels = pick_kernels();

  py::gil_scoped_release no_gil;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (std::int64_t k = 0; k < in_features; ++k) {
      float* row = xt + k * padded;
      for (std::int64_t j = 0; j < batch; ++j) row[j] = x[j * in_features + k];
      std::fill(row + batch, row + padded, 0.0f);
    }
    run_items(group_plan(call, 1, xt, yt, threads), kernels);
    constexpr std::int64_t kLine = 16;
#pragma omp for schedule(static)
    for (std::int64_t first = 0; first < out_features; first += kLine) {
      const std::int64_t last = std::min(out_features, first + kLine);
      for (std::int64_t j = 0; j < batch; ++j)
        for (std::int64_t o = first; o < last; ++o) y[j * out_features + o] = yt[o * padded + j];
    }
  }
}

}  // namespace

void register_sparse_conv(py::module_& m) {
  m.def("sparse_conv2d_cpu", &sparse_conv2d_cpu, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("n"),
        py::arg("ci"), py::arg("h"), py::arg("w"), py::arg("co"), py::arg("pad"), py::arg("row_step"),
        py::arg("col_step"), py::arg("kinds_rows"), py::arg("kinds_cols"), py::arg("slab_rows"),
        py::arg("slab_pitch"), py::arg("unit_rows"), py::arg("unit_len"), py::arg("unit_row_stride"),
        py::arg("num_threads"),
        "Sparse-weight conv forward on float32 CPU tensors: table rows and slab layout in csrc/sparse_conv.h.");
  m.def("sparse_linear_cpu", &sparse_linear_cpu, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("batch"), py::arg("in_features"), py::arg("out_features"), py::arg("num_threads"),
        "Sparse-weight linear forward on float32 CPU tensors: the conv's table, x [B, I] in, y [B, O] out, "
        "a workspace of (I + O) x (B rounded up to 8) floats.");
#ifdef PYLTH_WITH_CUDA
  m.def(
      "sparse_conv2d_cuda",
      [](std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t n, std::int64_t ci,
         std::int64_t h, std::int64_t w, std::int64_t co, std::int64_t ho, std::int64_t wo, std::int64_t kh,
         std::int64_t kw, std::int64_t stride, std::int64_t pad, std::uintptr_t stream) {
        const ArgTable table(table_address, rows, width, kSparseConvTableWidth, "sparse_conv2d_cuda");
        require(rows == kSgCudaRows,
                "sparse_conv2d_cuda: the table must have " + std::to_string(kSgCudaRows) + " rows");
        py::gil_scoped_release no_gil;
        sparse_conv2d_cuda_launch(table.data(), n, ci, h, w, co, ho, wo, kh, kw, stride, pad, stream);
      },
      py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("n"), py::arg("ci"), py::arg("h"), py::arg("w"),
      py::arg("co"), py::arg("ho"), py::arg("wo"), py::arg("kh"), py::arg("kw"), py::arg("stride"), py::arg("pad"),
      py::arg("stream"),
      "Sparse-weight conv forward on float32 CUDA tensors (table in host memory, rows in csrc/sparse_conv.h).");
#endif
}

}  // namespace pylth
