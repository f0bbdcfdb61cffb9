// Sparse-weight Conv2d forward and weight gradient on the CPU (layouts and table: sparse_conv.h). The
// output is cut into units of up to 8 AVX vectors of consecutive outputs, and a tile of units is
// computed for every output channel in turn: its accumulators stay in registers while the channel's
// kept weights stream past (one broadcast and one multiply-add per vector each), and the tile's input
// stays in cache from one channel to the next. OpenMP threads share the tiles (and blocks of output
// channels when the tiles are few). The weight gradient pairs the same outputs and inputs
// (sparse_conv_grad_tile.h); its threads own blocks of output channels, so that every kept weight's
// sum is taken in one order whatever the thread count. The input gradient is the forward on the
// transposed weight (pylth/ops/sparse_grad.py builds it).
#include "cpu_dispatch.h"
#include "sparse_conv.h"

#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

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

// The weight gradient's tiles: about this many vectors of outputs (units split long rows into chunks of
// at most this many), so that the cross-lane sums at the end of a tile cost little beside its products.
constexpr int kGradTileVectors = 32;
constexpr int kGradTileUnits = 32;

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

// One weight-gradient call's constants, for one group of images. A unit is up to chunk_vectors vectors
// of one unit row (chunk `chunk` of it), numbered as the forward's; a tile is tile_units of them.
struct GradPlan {
  const float* slabs;
  std::int64_t image_floats;
  const float* grad_out;  // dy, laid out as the forward's output
  std::int64_t image_outputs, channel_stride;
  const std::int64_t* row_ptr;
  const std::int32_t* offsets;
  float* grad;  // dL/d values, accumulated into
  std::int64_t unit_rows, unit_len, unit_row_stride;
  std::int64_t chunk_vectors, chunks, units, tile_units, tiles;
};

// Where the slabs of one (image, input channel) plane come from (sparse_conv.h).
struct SlabLayout {
  std::int64_t height, width, pad, row_step, col_step, kinds_rows, kinds_cols, slab_rows, slab_pitch;
};

// Computes output channels [co_begin, co_end) of one tile.
using TileFn = void (*)(const Plan& p, std::int64_t tile, std::int64_t co_begin, std::int64_t co_end);
// Adds the weight gradient of output channels [co_begin, co_end) over units [u_begin, u_end).
using GradTileFn = void (*)(const GradPlan& p, std::int64_t u_begin, std::int64_t u_end, std::int64_t co_begin,
                            std::int64_t co_end);

namespace baseline {
constexpr int kGradGroup = 4;  // 8 floats take two of the 16 xmm registers
#include "sparse_conv_tile.h"
#include "sparse_conv_grad_tile.h"
}  // namespace baseline

// The AVX2 + FMA build (the multiply-adds contract to FMA in this file only: see CMakeLists.txt). GCC
// only: other compilers keep the baseline build.
#if defined(PYLTH_X86_DISPATCH) && !defined(__clang__)
#define PYLTH_SPARSE_CONV_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kGradGroup = 8;
#include "sparse_conv_tile.h"
#include "sparse_conv_grad_tile.h"
}  // namespace avx2
#pragma GCC pop_options
#endif

// The functions of one build.
struct Kernels {
  TileFn (*tile_function)(int vectors, int units);
  void (*build_slabs)(const float* src, float* dst, const SlabLayout& s);
  GradTileFn grad_tile;
};

// The best build this CPU runs.
Kernels pick_kernels() {
#ifdef PYLTH_SPARSE_CONV_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {avx2::tile_function, avx2::build_slabs, avx2::grad_tile};
#endif
  return {baseline::tile_function, baseline::build_slabs, baseline::grad_tile};
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

// The weight gradient's plan of a group of `images` images whose slabs start at `slabs` and dy at
// `grad_out`, from the forward's plan of the call.
GradPlan grad_group_plan(const Plan& call, float* grad, std::int64_t images, const float* slabs,
                         const float* grad_out) {
  GradPlan p{};
  p.slabs = slabs;
  p.image_floats = call.image_floats;
  p.grad_out = grad_out;
  p.image_outputs = call.image_outputs;
  p.channel_stride = call.channel_stride;
  p.row_ptr = call.row_ptr;
  p.offsets = call.offsets;
  p.grad = grad;
  p.unit_rows = call.unit_rows;
  p.unit_len = call.unit_len;
  p.unit_row_stride = call.unit_row_stride;
  const std::int64_t row_vectors = (p.unit_len + kLanes - 1) / kLanes;
  p.chunks = (row_vectors + kGradTileVectors - 1) / kGradTileVectors;
  p.chunk_vectors = (row_vectors + p.chunks - 1) / p.chunks;
  p.units = images * p.unit_rows * p.chunks;
  p.tile_units = std::clamp<std::int64_t>(kGradTileVectors / p.chunk_vectors, 1, kGradTileUnits);
  p.tiles = (p.units + p.tile_units - 1) / p.tile_units;
  return p;
}

// Bounds of blocks of output channels holding about equal numbers of kept weights, several per thread:
// block b is channels [bounds[b], bounds[b + 1]).
std::vector<std::int64_t> weight_balanced_blocks(const std::int64_t* row_ptr, std::int64_t co, int threads) {
  const std::int64_t blocks = threads == 1 ? 1 : std::min<std::int64_t>(co, 4 * threads), nnz = row_ptr[co];
  std::vector<std::int64_t> bounds{0};
  for (std::int64_t b = 1; b < blocks; ++b) {
    const std::int64_t c = std::lower_bound(row_ptr, row_ptr + co + 1, nnz * b / blocks) - row_ptr;
    if (c > bounds.back() && c < co) bounds.push_back(c);
  }
  bounds.push_back(co);
  return bounds;
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

// The threads of an OpenMP team share a group's weight gradient by blocks of output channels, each
// block over every tile in order (called inside a parallel region).
void run_grad_items(const GradPlan& p, const std::vector<std::int64_t>& blocks, const Kernels& kernels) {
  const std::int64_t count = static_cast<std::int64_t>(blocks.size()) - 1;
#pragma omp for schedule(dynamic, 1)
  for (std::int64_t b = 0; b < count; ++b)
    for (std::int64_t tile = 0; tile < p.tiles; ++tile)
      kernels.grad_tile(p, tile * p.tile_units, std::min(p.units, (tile + 1) * p.tile_units), blocks[b],
                        blocks[b + 1]);
}

// A conv call's checked arguments: the forward's and the weight gradient's entry points take the same
// table and slab layout (sparse_conv.h).
struct ConvCall {
  Plan plan;  // the compressed weight, the output layout and its split into units
  SlabLayout layout;
  const float* input;
  float* workspace;  // nullptr: the input is read in place as the slabs
  float* output;     // y, or dy for the weight gradient
  std::int64_t n, ci, co, plane, channel_floats, image_floats, group, nnz;
  int threads;
};

ConvCall conv_call(const ArgTable& table, std::int64_t rows, std::int64_t n, std::int64_t ci, std::int64_t h,
                   std::int64_t w, std::int64_t co, std::int64_t pad, std::int64_t row_step, std::int64_t col_step,
                   std::int64_t kinds_rows, std::int64_t kinds_cols, std::int64_t slab_rows,
                   std::int64_t slab_pitch, std::int64_t unit_rows, std::int64_t unit_len,
                   std::int64_t unit_row_stride, int num_threads, const std::string& name) {
  require(rows == kScCpuRows, name + ": the table must have " + std::to_string(kScCpuRows) + " rows");
  require(n >= 0 && ci >= 1 && h >= 1 && w >= 1 && co >= 1 && pad >= 0 && row_step >= 1 && col_step >= 1 &&
              kinds_rows >= 1 && kinds_cols >= 1 && slab_rows >= 1 && slab_pitch >= 1 && unit_rows >= 1 &&
              unit_len >= 1 && unit_row_stride >= 0,
          name + ": sizes out of range");
  require(num_threads >= 1, name + ": num_threads must be >= 1");
  auto numel = [&](int row) { return table.at(row, 1); };
  ConvCall c{};
  c.n = n;
  c.ci = ci;
  c.co = co;
  c.plane = unit_rows * unit_len;
  c.channel_floats = kinds_rows * kinds_cols * slab_rows * slab_pitch;
  c.image_floats = ci * c.channel_floats;
  require(numel(kScInput) == n * ci * h * w, name + ": input size mismatch");
  require(numel(kScOutput) == n * co * c.plane, name + ": output size mismatch");
  const bool direct = table.at(kScWorkspace, 0) == 0;
  if (direct)
    require(pad == 0 && row_step == 1 && col_step == 1 && kinds_rows == 1 && kinds_cols == 1 &&
                slab_rows * slab_pitch == h * w && unit_len % kLanes == 0,
            name + ": without a workspace the layout must be the input itself, rows a multiple of 8");
  else
    require(numel(kScWorkspace) >= c.image_floats + kLanes, name + ": workspace too small");
  c.nnz = checked_nnz(table, co, name);

  // The workspace holds the slabs of `group` images at a time, so that they stay in cache between
  // being written and being read (the whole batch when the input is read in place).
  c.group = direct || n == 0 ? std::max<std::int64_t>(n, 1)
                             : std::min(n, (numel(kScWorkspace) - kLanes) / c.image_floats);
  c.input = table.ptr<const float>(kScInput, 0);
  c.workspace = direct ? nullptr : table.ptr<float>(kScWorkspace, 0);
  c.output = table.ptr<float>(kScOutput, 0);
  c.plan = weight_plan(table);
  c.plan.image_floats = c.image_floats;
  c.plan.image_outputs = co * c.plane;
  c.plan.channel_stride = c.plane;
  c.plan.channels_out = co;
  c.plan.unit_rows = unit_rows;
  c.plan.unit_len = unit_len;
  c.plan.unit_row_stride = unit_row_stride;
  const std::int64_t row_vectors = (unit_len + kLanes - 1) / kLanes;
  c.plan.vectors = unit_vectors(row_vectors);
  c.plan.chunks = row_vectors / c.plan.vectors;
  const std::int64_t work = std::max<std::int64_t>(c.nnz, 1) * n * unit_rows * row_vectors;
  c.threads = work >= kParallelMinWork ? num_threads : 1;
  c.layout = SlabLayout{h, w, pad, row_step, col_step, kinds_rows, kinds_cols, slab_rows, slab_pitch};
  return c;
}

// Calls work(first image, images, slabs) for each group of images in turn, on every thread of an
// OpenMP team, once the team has built the group's slabs (or with the input itself as the slabs).
template <class Work>
void for_each_group(const ConvCall& c, const Kernels& kernels, Work work) {
  if (c.workspace) {
    float* slack = c.workspace + c.group * c.image_floats;
    std::fill(slack, slack + kLanes, 0.0f);
  }
#pragma omp parallel num_threads(c.threads)
  for (std::int64_t first = 0; first < c.n; first += c.group) {  // every thread walks the groups
    const std::int64_t images = std::min(c.group, c.n - first);
    if (c.workspace) {
#pragma omp for schedule(static)
      for (std::int64_t q = 0; q < images * c.ci; ++q)
        kernels.build_slabs(c.input + (first * c.ci + q) * c.layout.height * c.layout.width,
                            c.workspace + q * c.channel_floats, c.layout);
    }
    work(first, images, c.workspace ? c.workspace : c.input);
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
  const ConvCall c = conv_call(table, rows, n, ci, h, w, co, pad, row_step, col_step, kinds_rows, kinds_cols,
                               slab_rows, slab_pitch, unit_rows, unit_len, unit_row_stride, num_threads, name);
  if (n == 0) return;
  const Kernels kernels = pick_kernels();
  py::gil_scoped_release no_gil;
  for_each_group(c, kernels, [&](std::int64_t first, std::int64_t images, const float* slabs) {
    run_items(group_plan(c.plan, images, slabs, c.output + first * co * c.plane, c.threads), kernels);
  });
}

// dL/d values of the kept weights from x and dy: the forward's table and layout, with dy [N, Co, plane]
// in the output row (read) and dL/d values in the values row (written), no bias.
void sparse_conv2d_grad_weight_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width,
                                   std::int64_t n, std::int64_t ci, std::int64_t h, std::int64_t w, std::int64_t co,
                                   std::int64_t pad, std::int64_t row_step, std::int64_t col_step,
                                   std::int64_t kinds_rows, std::int64_t kinds_cols, std::int64_t slab_rows,
                                   std::int64_t slab_pitch, std::int64_t unit_rows, std::int64_t unit_len,
                                   std::int64_t unit_row_stride, int num_threads) {
  const std::string name = "sparse_conv2d_grad_weight_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name.c_str());
  const ConvCall c = conv_call(table, rows, n, ci, h, w, co, pad, row_step, col_step, kinds_rows, kinds_cols,
                               slab_rows, slab_pitch, unit_rows, unit_len, unit_row_stride, num_threads, name);
  require(table.at(kScBias, 0) == 0, name + ": the bias row must be empty (address 0)");
  float* grad = table.ptr<float>(kScGradValues, 0);
  const Kernels kernels = pick_kernels();
  py::gil_scoped_release no_gil;
  std::fill(grad, grad + c.nnz, 0.0f);
  if (n == 0 || c.nnz == 0) return;
  const std::vector<std::int64_t> blocks = weight_balanced_blocks(c.plan.row_ptr, co, c.threads);
  for_each_group(c, kernels, [&](std::int64_t first, std::int64_t images, const float* slabs) {
    run_grad_items(grad_group_plan(c.plan, grad, images, slabs, c.output + first * co * c.plane), blocks, kernels);
  });
}

// A linear call's checked arguments (the forward's and the weight gradient's): the conv's table with
// x [B, I] and y or dy [B, O], a workspace for x^T and y^T or dy^T, their rows padded to whole vectors
// (the vector dimension is the batch). The offsets are the taps times the padded batch.
struct LinearCall {
  Plan plan;
  const float* x;
  float *xt, *yt, *y;
  std::int64_t batch, in_features, out_features, padded;
  int threads;
};

LinearCall linear_call(const ArgTable& table, std::int64_t rows, std::int64_t batch, std::int64_t in_features,
                       std::int64_t out_features, int num_threads, const std::string& name) {
  require(rows == kScCpuRows, name + ": the table must have " + std::to_string(kScCpuRows) + " rows");
  require(batch >= 0 && in_features >= 1 && out_features >= 1, name + ": sizes out of range");
  require(num_threads >= 1, name + ": num_threads must be >= 1");
  LinearCall c{};
  c.batch = batch;
  c.in_features = in_features;
  c.out_features = out_features;
  c.padded = (batch + kLanes - 1) / kLanes * kLanes;
  require(table.at(kScInput, 1) == batch * in_features, name + ": input size mismatch");
  require(table.at(kScOutput, 1) == batch * out_features, name + ": output size mismatch");
  require(table.at(kScWorkspace, 0) != 0 && table.at(kScWorkspace, 1) >= (in_features + out_features) * c.padded,
          name + ": the workspace must hold (in_features + out_features) x (batch rounded up to 8) floats");
  const std::int64_t nnz = checked_nnz(table, out_features, name);
  c.x = table.ptr<const float>(kScInput, 0);
  c.xt = table.ptr<float>(kScWorkspace, 0);
  c.yt = c.xt + in_features * c.padded;
  c.y = table.ptr<float>(kScOutput, 0);
  c.plan = weight_plan(table);
  c.plan.image_floats = in_features * c.padded;
  c.plan.image_outputs = 0;  // one image
  c.plan.channel_stride = c.padded;
  c.plan.channels_out = out_features;
  c.plan.unit_rows = 1;
  c.plan.unit_len = batch;
  c.plan.unit_row_stride = 0;
  c.plan.vectors = unit_vectors(c.padded / kLanes);
  c.plan.chunks = c.padded / kLanes / c.plan.vectors;
  const std::int64_t work = std::max<std::int64_t>(nnz, in_features) * (c.padded / kLanes);
  c.threads = work >= kParallelMinWork ? num_threads : 1;
  return c;
}

// src [rows, cols] into dst [cols, padded], zeros past `rows` (inside a parallel region).
void transpose_padded(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t padded, float* dst) {
#pragma omp for schedule(static)
  for (std::int64_t k = 0; k < cols; ++k) {
    float* row = dst + k * padded;
    for (std::int64_t j = 0; j < rows; ++j) row[j] = src[j * cols + k];
    std::fill(row + rows, row + padded, 0.0f);
  }
}

// y [B, O] = x [B, I] W^T + bias as a 1x1 conv of the transposed batch: the workspace holds x^T and
// y^T, and y^T is transposed into y at the end, 16 outputs (a cache line) of a row at a time: stored
// straight down y's columns, 2 KB apart for O = 512, the vectors fell into two L1 sets and ran 3x
// slower.
void sparse_linear_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t batch,
                       std::int64_t in_features, std::int64_t out_features, int num_threads) {
  const char* name = "sparse_linear_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name);
  const LinearCall c = linear_call(table, rows, batch, in_features, out_features, num_threads, name);
  if (batch == 0) return;
  const Kernels kernels = pick_kernels();
  py::gil_scoped_release no_gil;
#pragma omp parallel num_threads(c.threads)
  {
    transpose_padded(c.x, batch, in_features, c.padded, c.xt);
    run_items(group_plan(c.plan, 1, c.xt, c.yt, c.threads), kernels);
    constexpr std::int64_t kLine = 16;
#pragma omp for schedule(static)
    for (std::int64_t first = 0; first < out_features; first += kLine) {
      const std::int64_t last = std::min(out_features, first + kLine);
      for (std::int64_t j = 0; j < batch; ++j)
        for (std::int64_t o = first; o < last; ++o) c.y[j * out_features + o] = c.yt[o * c.padded + j];
    }
  }
}

// dL/d values of a sparse linear from x and dy: the forward's table with dy [B, O] in the output row
// (read) and dL/d values in the values row (written), no bias; the workspace holds x^T and dy^T.
void sparse_linear_grad_weight_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width,
                                   std::int64_t batch, std::int64_t in_features, std::int64_t out_features,
                                   int num_threads) {
  const std::string name = "sparse_linear_grad_weight_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name.c_str());
  const LinearCall c = linear_call(table, rows, batch, in_features, out_features, num_threads, name);
  require(table.at(kScBias, 0) == 0, name + ": the bias row must be empty (address 0)");
  float* grad = table.ptr<float>(kScGradValues, 0);
  const std::int64_t nnz = c.plan.row_ptr[out_features];
  const Kernels kernels = pick_kernels();
  py::gil_scoped_release no_gil;
  std::fill(grad, grad + nnz, 0.0f);
  if (batch == 0 || nnz == 0) return;
  const std::vector<std::int64_t> blocks = weight_balanced_blocks(c.plan.row_ptr, out_features, c.threads);
#pragma omp parallel num_threads(c.threads)
  {
    transpose_padded(c.x, batch, in_features, c.padded, c.xt);
    transpose_padded(c.y, batch, out_features, c.padded, c.yt);
    run_grad_items(grad_group_plan(c.plan, grad, 1, c.xt, c.yt), blocks, kernels);
  }
}

#ifdef PYLTH_WITH_CUDA
using CudaLaunch = void (*)(const std::int64_t* table, std::int64_t n, std::int64_t ci, std::int64_t h,
                            std::int64_t w, std::int64_t co, std::int64_t ho, std::int64_t wo, std::int64_t kh,
                            std::int64_t kw, std::int64_t stride, std::int64_t pad, std::uintptr_t stream);

// Registers the CUDA entry point `name` of `launch_fn`: the forward and the weight gradient take the same
// table (in host memory: the launchers read its addresses) and sizes.
void def_cuda(py::module_& m, const char* name, CudaLaunch launch_fn, const char* doc) {
  m.def(
      name,
      [name, launch_fn](std::uintptr_t table_address, std::int64_t rows, std::int64_t width, std::int64_t n,
                        std::int64_t ci, std::int64_t h, std::int64_t w, std::int64_t co, std::int64_t ho,
                        std::int64_t wo, std::int64_t kh, std::int64_t kw, std::int64_t stride, std::int64_t pad,
                        std::uintptr_t stream) {
        const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name);
        require(rows == kSgCudaRows, std::string(name) + ": the table must have " + std::to_string(kSgCudaRows) +
                                         " rows");
        py::gil_scoped_release no_gil;
        launch_fn(table.data(), n, ci, h, w, co, ho, wo, kh, kw, stride, pad, stream);
      },
      py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("n"), py::arg("ci"), py::arg("h"), py::arg("w"),
      py::arg("co"), py::arg("ho"), py::arg("wo"), py::arg("kh"), py::arg("kw"), py::arg("stride"), py::arg("pad"),
      py::arg("stream"), doc);
}
#endif

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
  m.def("sparse_conv2d_grad_weight_cpu", &sparse_conv2d_grad_weight_cpu, py::arg("table"), py::arg("rows"),
        py::arg("width"), py::arg("n"), py::arg("ci"), py::arg("h"), py::arg("w"), py::arg("co"), py::arg("pad"),
        py::arg("row_step"), py::arg("col_step"), py::arg("kinds_rows"), py::arg("kinds_cols"), py::arg("slab_rows"),
        py::arg("slab_pitch"), py::arg("unit_rows"), py::arg("unit_len"), py::arg("unit_row_stride"),
        py::arg("num_threads"),
        "Weight gradient of the sparse conv at its kept entries (float32 CPU tensors): the forward's table with dy "
        "in the output row and the gradient in the values row (csrc/sparse_conv.h).");
  m.def("sparse_linear_grad_weight_cpu", &sparse_linear_grad_weight_cpu, py::arg("table"), py::arg("rows"),
        py::arg("width"), py::arg("batch"), py::arg("in_features"), py::arg("out_features"), py::arg("num_threads"),
        "Weight gradient of the sparse linear at its kept entries: the forward's table with dy [B, O] in the output "
        "row and the gradient in the values row, a workspace of (I + O) x (B rounded up to 8) floats.");
#ifdef PYLTH_WITH_CUDA
  def_cuda(m, "sparse_conv2d_cuda", &sparse_conv2d_cuda_launch,
           "Sparse-weight conv forward on float32 CUDA tensors (table in host memory, rows in csrc/sparse_conv.h).");
  def_cuda(m, "sparse_conv2d_grad_weight_cuda", &sparse_conv2d_grad_weight_cuda_launch,
           "Weight gradient of the sparse conv at its kept entries on float32 CUDA tensors: the forward's table with "
           "dy in the output row and the gradient in the values row (csrc/sparse_conv.h).");
#endif
}

}  // namespace pylth
