// Sparse-weight Conv2d forward and backward on the CPU: the entry points (plans and tables:
// sparse_conv.h). They check every table row against the plan, then walk the batch a group of images at
// a time: the OpenMP team builds the group's slabs, then shares its tiles (forward, input gradient) and
// its blocks of output channels (weight gradient). The weight gradient's threads own whole output
// channels, so every kept weight's sum is taken in one order whatever the thread count. Each call runs
// the kernels of the CPU path active then (sparse::kernels_for(active_cpu_isa())).
#include "sparse_conv.h"

#include <omp.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "cpu_dispatch.h"
#include "sparse_conv_kernels.h"

namespace py = pybind11;

namespace pylth {
namespace {

using sparse::GradArgs;
using sparse::Kernels;
using sparse::SlabLayout;
using sparse::RowGeometry;
using sparse::TileArgs;
using sparse::TileShape;
using sparse::tile_shape;

// Below this many vector multiply-adds a call stays on one thread: waking the team costs more.
constexpr std::int64_t kParallelMinWork = 1 << 16;

// A conv's plan row (sparse_conv.h), checked.
struct ConvPlan {
  std::int64_t n, ci, h, w, co, unit_rows, row_len, in_row_stride, out_row_stride, out_pitch, out_image,
      plane_floats, group;
  bool direct;
  SlabLayout slab;
  std::int64_t image_floats() const { return ci * plane_floats; }
  // Floats of the workspace that one group's slabs take (none when the input is read in place).
  std::int64_t slab_region() const { return direct ? 0 : group * image_floats() + kSlabSlack; }
  // Floats from the first output to past the last.
  std::int64_t output_floats() const {
    return n == 0 ? 0 : (n - 1) * out_image + (co - 1) * out_pitch + (unit_rows - 1) * out_row_stride + row_len;
  }
  RowGeometry rows() const {
    return {image_floats(), in_row_stride, out_image, out_row_stride, out_pitch, unit_rows, row_len};
  }
};

ConvPlan read_plan(const ArgTable& table, int row, const std::string& name) {
  require(table.at(row, 0) != 0 && table.at(row, 1) == kPlanFields,
          name + ": the plan must hold " + std::to_string(kPlanFields) + " int64 fields");
  const auto* f = table.ptr<const std::int64_t>(row, 0);
  ConvPlan p{};
  p.n = f[kPlanImages], p.ci = f[kPlanInChannels], p.h = f[kPlanHeight], p.w = f[kPlanWidth];
  p.co = f[kPlanOutChannels], p.unit_rows = f[kPlanUnitRows], p.row_len = f[kPlanRowLength];
  p.in_row_stride = f[kPlanInRowStride], p.out_row_stride = f[kPlanOutRowStride], p.out_pitch = f[kPlanOutPitch];
  p.out_image = f[kPlanOutImage], p.plane_floats = f[kPlanPlaneFloats], p.group = f[kPlanGroup];
  p.direct = f[kPlanDirect] != 0;
  SlabLayout& s = p.slab;
  s.height = p.h, s.width = p.w, s.pad_rows = f[kPlanPadRows], s.pad_cols = f[kPlanPadCols];
  s.col_step = f[kPlanColStep], s.rows = f[kPlanSlabRows], s.pitch = f[kPlanSlabPitch];
  const std::int64_t plane = (p.unit_rows - 1) * p.out_row_stride + p.row_len;
  require(p.n >= 0 && p.ci >= 1 && p.h >= 1 && p.w >= 1 && p.co >= 1 && p.unit_rows >= 1 && p.row_len >= 1 &&
              p.in_row_stride >= 0 && p.out_row_stride >= (p.unit_rows > 1 ? p.row_len : 0) &&
              p.out_pitch >= plane && p.out_image >= p.co * p.out_pitch && p.group >= 1 && p.plane_floats >= 1,
          name + ": plan sizes out of range");
  if (p.direct) {
    // Read in place, flat: whole vectors never pass the plane's end, so it must hold the widest one.
    require(p.unit_rows == 1 && p.row_len >= kSlabSlack && p.plane_floats == p.h * p.w && p.row_len <= p.plane_floats,
            name + ": a plane read in place must be one flat input plane of at least 16 outputs");
  } else {
    // The image's rows, split into the column phases, must lie inside the slab's rows and pitch.
    require(s.pad_rows >= 0 && s.pad_cols >= 0 && s.col_step >= 1 && s.rows == s.height + 2 * s.pad_rows &&
                s.pitch * s.col_step >= s.width + s.pad_cols && s.col_step * s.rows * s.pitch <= p.plane_floats,
            name + ": slab layout out of range");
  }
  return p;
}

// A conv's compressed weight, checked against its plan: row_ptr bounds every output channel, and no
// offset reads outside an image's slabs.
struct ConvWeight {
  const std::int64_t* row_ptr;
  const std::int32_t* offsets;
  std::int64_t nnz;
};

ConvWeight read_weight(const ArgTable& table, int row_ptr_row, int offsets_row, const ConvPlan& p,
                       const std::string& name) {
  ConvWeight wt{};
  require(table.at(row_ptr_row, 0) != 0 && table.at(row_ptr_row, 1) == p.co + 1, name + ": row_ptr must hold Co + 1 entries");
  wt.row_ptr = table.ptr<const std::int64_t>(row_ptr_row, 0);
  wt.nnz = wt.row_ptr[p.co];
  require(wt.row_ptr[0] == 0 && wt.nnz >= 0 && table.at(offsets_row, 1) == wt.nnz,
          name + ": offsets must hold row_ptr[Co] entries");
  require(all_of_entries(p.co, [&](std::int64_t c) { return wt.row_ptr[c] <= wt.row_ptr[c + 1]; }),
          name + ": row_ptr must not decrease");
  wt.offsets = table.ptr<const std::int32_t>(offsets_row, 0);
  const std::int64_t limit = p.image_floats() - (p.unit_rows - 1) * p.in_row_stride - p.row_len;
  require(all_of_entries(wt.nnz, [&](std::int64_t k) { return wt.offsets[k] >= 0 && wt.offsets[k] <= limit; }),
          name + ": an offset reads outside the image's slabs");
  return wt;
}

// How a conv's outputs are cut into tiles: which build's tiles run (the path's, or its narrow build:
// Kernels::narrow), on the plan's unit rows or, with a build's flat tiles, on each image's rows as one
// flat row of padded positions (sparse_conv_flat_tile.h: narrow rows, e.g. 8x8, 7x7 and 4x4 planes on
// 16 lanes), whichever costs least (TileShape::cost) for a group's images.
struct Tiling {
  const Kernels* k;
  bool flat;
  std::int64_t unit_rows;  // per image
  RowGeometry g;
  TileShape shape;

  sparse::TileFn tile_fn() const { return (flat ? k->flat_tile_function : k->tile_function)(shape.vectors, shape.units); }
  sparse::FusedFn fused_fn() const {
    return (flat ? k->flat_fused_function : k->fused_function)(shape.vectors, shape.units);
  }
};

// The flat tiles store each vector with a compress and a masked store: they must save a tenth to be taken.
constexpr double kFlatPenalty = 1.1;

Tiling tiling_of(const ConvPlan& p, const Kernels& path, bool fused = false) {
  const RowGeometry rows = p.rows();
  Tiling best{};
  for (const Kernels* k : {&path, path.narrow}) {
    if (!k) continue;
    const Tiling by_rows{k, false, p.unit_rows, rows, tile_shape(p.row_len, p.group * p.unit_rows, *k, fused)};
    if (!best.k || by_rows.shape.cost < best.shape.cost) best = by_rows;
    // Flat: unit rows of one image at a constant stride, their outputs consecutive.
    if (!k->flat_tile_function || p.direct || p.unit_rows == 1 || p.out_row_stride != p.row_len ||
        p.in_row_stride < p.row_len)
      continue;
    const std::int64_t len = (p.unit_rows - 1) * p.in_row_stride + p.row_len;
    const std::int64_t positions = (len + k->lanes - 1) / k->lanes * k->lanes;
    Tiling flat{k, true, 1, RowGeometry{rows.image_floats, 0, rows.out_image, 0, rows.out_pitch, 1, positions},
                tile_shape(positions, p.group, *k, fused)};
    flat.shape.cost *= kFlatPenalty;
    if (flat.shape.cost < best.shape.cost) best = flat;
  }
  return best;
}

// The forward's arguments, but for where a group's slabs and outputs start and its unit count.
TileArgs tile_args(const ConvPlan& p, const Tiling& tiling, const ConvWeight& wt, const float* values,
                   const float* bias) {
  TileArgs a{};
  a.g = tiling.g;
  const TileShape& shape = tiling.shape;
  a.chunks_per_row = shape.chunks_per_row, a.last_start = shape.last_start, a.tail = shape.tail;
  a.partial = shape.partial;
  a.row_ptr = wt.row_ptr, a.offsets = wt.offsets, a.values = values, a.bias = bias;
  if (tiling.flat) {
    a.flat_pitch = p.in_row_stride, a.flat_width = p.row_len;
    a.flat_len = (p.unit_rows - 1) * p.in_row_stride + p.row_len;
  }
  return a;
}

// The weight gradient's arguments, but for where a group's slabs and dy start; `positions` must outlive them.
GradArgs grad_args(const ConvPlan& p, const ConvWeight& wt, const Kernels& k, float* acc,
                   std::vector<sparse::GradPosition>* positions) {
  GradArgs g{};
  g.g = p.rows();
  *positions = sparse::grad_positions(g.g, k.lanes, g.masks);
  g.positions = positions->data(), g.position_count = static_cast<std::int64_t>(positions->size());
  g.row_ptr = wt.row_ptr, g.offsets = wt.offsets, g.acc = acc;
  return g;
}

// Blocks of output channels, several per thread when the tiles are few: the bounds, first to end.
std::vector<std::int64_t> channel_blocks(std::int64_t co, std::int64_t tiles, int threads) {
  const std::int64_t wanted = threads == 1 ? 1 : std::min(co, (8 * threads + tiles - 1) / std::max<std::int64_t>(tiles, 1));
  const std::int64_t per_block = (co + wanted - 1) / wanted;
  std::vector<std::int64_t> bounds;
  for (std::int64_t c = 0; c < co; c += per_block) bounds.push_back(c);
  bounds.push_back(co);
  return bounds;
}

// Bounds of blocks of output channels holding about equal numbers of kept weights, several per thread.
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

// A slab region before its first group: the zero borders (never written again) and the slack past the
// last slab.
void clear_slab_region(const ConvPlan& p, float* region) {
  if (!p.direct) std::fill(region, region + p.group * p.image_floats() + kSlabSlack, 0.0f);
}

// A tensor row of exactly `numel` elements (an empty tensor may have address 0).
void check_numel(const ArgTable& table, int row, std::int64_t numel, const std::string& name, const char* what) {
  require(table.at(row, 1) == numel && (numel == 0 || table.at(row, 0) != 0), name + ": " + what + " size mismatch");
}

// A group's work items (tile, block of output channels), shared by the team; computed before the
// parallel region (no allocation inside it), for full groups and for the last one.
struct TileItems {
  std::int64_t units = 0, tiles = 0;
  std::vector<std::int64_t> blocks{0};
  std::int64_t block_count = 0;

  TileItems() = default;
  TileItems(std::int64_t images, std::int64_t unit_rows, const TileShape& shape, std::int64_t co, int threads)
      : units(images * unit_rows * shape.chunks_per_row), tiles((units + shape.units - 1) / shape.units),
        blocks(channel_blocks(co, tiles, threads)), block_count(static_cast<std::int64_t>(blocks.size()) - 1) {}
  std::int64_t items() const { return tiles * block_count; }
};

// The items of full groups and of the last group of a call.
struct GroupItems {
  TileItems full, last;
  GroupItems(const ConvPlan& p, std::int64_t unit_rows, const TileShape& shape, std::int64_t co, int threads)
      : full(p.group, unit_rows, shape, co, threads),
        last(p.n - (p.n - 1) / p.group * p.group, unit_rows, shape, co, threads) {}
  const TileItems& of(std::int64_t images, std::int64_t group) const { return images == group ? full : last; }
};

// Item `item` of a group (args: its slabs and outputs; `units` set here).
void run_tile_item(TileArgs args, sparse::TileFn fn, const TileShape& shape, const TileItems& it, std::int64_t item) {
  args.units = it.units;
  const std::int64_t tile = item / it.block_count, b = item % it.block_count;
  fn(args, tile * shape.units, it.blocks[b], it.blocks[b + 1]);
}

void sparse_conv2d_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width, int num_threads) {
  const std::string name = "sparse_conv2d_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name.c_str());
  require(rows == kScCpuRows, name + ": the table must have " + std::to_string(kScCpuRows) + " rows");
  require(num_threads >= 1, name + ": num_threads must be >= 1");
  const ConvPlan p = read_plan(table, kScPlan, name);
  const ConvWeight wt = read_weight(table, kScRowPtr, kScOffsets, p, name);
  check_numel(table, kScInput, p.n * p.ci * p.h * p.w, name, "input");
  require(table.at(kScOutput, 0) != 0 && table.at(kScOutput, 1) >= p.output_floats(), name + ": output size mismatch");
  require(table.at(kScValues, 1) == wt.nnz, name + ": values must hold one entry per kept weight");
  require(table.at(kScBias, 0) == 0 || table.at(kScBias, 1) == p.co, name + ": bias must hold Co entries");
  require(p.direct || (table.at(kScWorkspace, 0) != 0 && table.at(kScWorkspace, 1) >= p.slab_region()),
          name + ": the workspace is too small for the plan");
  if (p.n == 0) return;
  const Kernels& k = sparse::kernels_for(active_cpu_isa());
  const Tiling tiling = tiling_of(p, k);
  const TileShape& shape = tiling.shape;
  const sparse::TileFn tile_fn = tiling.tile_fn();
  const float* x = table.ptr<const float>(kScInput, 0);
  float* slabs = p.direct ? nullptr : table.ptr<float>(kScWorkspace, 0);
  float* y = table.ptr<float>(kScOutput, 0);
  const std::int64_t vectors = tiling.unit_rows * shape.chunks_per_row * shape.vectors;
  const int threads = std::max<std::int64_t>(wt.nnz, 1) * p.n * vectors >= kParallelMinWork ? num_threads : 1;
  const TileArgs args = tile_args(p, tiling, wt, table.ptr<const float>(kScValues, 0), table.ptr<const float>(kScBias, 0));
  const GroupItems groups(p, tiling.unit_rows, shape, p.co, threads);
  py::gil_scoped_release no_gil;
  if (!p.direct) clear_slab_region(p, slabs);
#pragma omp parallel num_threads(threads)
  for (std::int64_t first = 0; first < p.n; first += p.group) {  // every thread walks the groups
    const std::int64_t images = std::min(p.group, p.n - first);
    if (!p.direct) {
#pragma omp for schedule(static)
      for (std::int64_t q = 0; q < images * p.ci; ++q)
        k.build_slab(x + (first * p.ci + q) * p.h * p.w, slabs + q * p.plane_floats, p.slab);
    }
    TileArgs a = args;
    a.slabs = p.direct ? x + first * p.image_floats() : slabs;
    a.out = y + first * p.out_image;
    const TileItems& it = groups.of(images, p.group);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t item = 0; item < it.items(); ++item) run_tile_item(a, tile_fn, shape, it, item);
  }
}

// dL/dx (the transposed weight's forward over dy) and dL/d values (one dot product per kept weight) in
// one pass over the batch; either may be skipped (address 0 in its output row).
void sparse_conv2d_backward_cpu(std::uintptr_t table_address, std::int64_t rows, std::int64_t width,
                                int num_threads) {
  const std::string name = "sparse_conv2d_backward_cpu";
  const ArgTable table(table_address, rows, width, kSparseConvTableWidth, name.c_str());
  require(rows == kSbRows, name + ": the table must have " + std::to_string(kSbRows) + " rows");
  require(num_threads >= 1, name + ": num_threads must be >= 1");
  const bool wants_weight = table.at(kSbGradValues, 0) != 0, wants_input = table.at(kSbGradInput, 0) != 0;
  const bool wants_bias = table.at(kSbGradBias, 0) != 0;
  const ConvPlan p = read_plan(table, kSbPlan, name);
  const ConvWeight wt = read_weight(table, kSbRowPtr, kSbOffsets, p, name);
  if (wants_weight) {
    check_numel(table, kSbInput, p.n * p.ci * p.h * p.w, name, "input");
    check_numel(table, kSbGradValues, wt.nnz, name, "grad_values");
  }
  check_numel(table, kSbGradOutput, p.output_floats(), name, "grad_out");
  require(p.out_image == p.co * p.out_pitch && p.out_pitch == (p.unit_rows - 1) * p.out_row_stride + p.row_len,
          name + ": dy must be [N, Co, Ho, Wo]");
  ConvPlan t{};
  ConvWeight twt{};
  const std::int32_t* t_order = nullptr;
  if (wants_input) {
    t = read_plan(table, kSbTPlan, name + " (input gradient)");
    twt = read_weight(table, kSbTRowPtr, kSbTOffsets, t, name + " (input gradient)");
    require(t.n == p.n && t.ci == p.co && t.h * t.w == p.out_pitch && t.group == p.group && twt.nnz == wt.nnz,
            name + ": the transposed weight's plan must read dy and share the group");
    require(table.at(kSbGradInput, 1) >= t.output_floats(), name + ": grad_input size mismatch");
    check_numel(table, kSbValues, wt.nnz, name, "values");
    check_numel(table, kSbTOrder, wt.nnz, name, "order");
    t_order = table.ptr<const std::int32_t>(kSbTOrder, 0);
    require(all_of_entries(twt.nnz, [&](std::int64_t e) { return t_order[e] >= 0 && t_order[e] < wt.nnz; }),
            name + ": order leaves the values");
  }
  // Stride 1: dL/dx has x's layout, so one pass computes both gradients (FusedArgs), without x's slabs.
  const std::int64_t hw = p.h * p.w;
  const bool fused = wants_input && wants_weight && t.co == p.ci && t.out_pitch == hw && t.out_image == p.ci * hw &&
                     ((t.unit_rows == p.h && t.row_len == p.w && t.out_row_stride == p.w) ||
                      (t.unit_rows == 1 && t.row_len == hw));
  const std::int64_t x_region = wants_weight && !fused ? p.slab_region() : 0;
  const std::int64_t dy_region = wants_input ? t.slab_region() : 0;
  const std::int64_t t_values = wants_input ? twt.nnz : 0, acc_floats = wants_weight ? kGradAccFloats * (wt.nnz + 1) : 0;
  const std::int64_t bias_floats = wants_bias ? p.n * p.co : 0;
  const std::int64_t workspace = x_region + dy_region + t_values + acc_floats + bias_floats;
  require(workspace == 0 || (table.at(kSbWorkspace, 0) != 0 && table.at(kSbWorkspace, 1) >= workspace),
          name + ": the workspace is too small for the plans");
  if (wants_bias) check_numel(table, kSbGradBias, p.co, name, "grad_bias");
  float* grad = wants_weight ? table.ptr<float>(kSbGradValues, 0) : nullptr;
  if (grad) std::fill(grad, grad + wt.nnz, 0.0f);
  float* grad_bias = wants_bias ? table.ptr<float>(kSbGradBias, 0) : nullptr;
  if (grad_bias) std::fill(grad_bias, grad_bias + p.co, 0.0f);
  if (p.n == 0 || (!wants_weight && !wants_input && !wants_bias)) return;
  const Kernels& k = sparse::kernels_for(active_cpu_isa());
  const float* x = wants_weight ? table.ptr<const float>(kSbInput, 0) : nullptr;
  const float* dy = table.ptr<const float>(kSbGradOutput, 0);
  float* x_slabs = table.ptr<float>(kSbWorkspace, 0);
  float* dy_slabs = x_slabs + x_region;
  float* values = dy_slabs + dy_region;
  // The accumulators start at a 64-byte boundary (one cache line per kept weight).
  const auto acc_address = reinterpret_cast<std::uintptr_t>(values + t_values);
  float* acc = reinterpret_cast<float*>((acc_address + 63) / 64 * 64);
  float* plane_sums = values + t_values + acc_floats;  // [N, Co], past the accumulators (aligned or not)
  float* dx = wants_input ? table.ptr<float>(kSbGradInput, 0) : nullptr;
  const Tiling tiling = wants_input ? tiling_of(t, k, fused) : Tiling{};
  const TileShape& shape = tiling.shape;
  const sparse::TileFn tile_fn = wants_input && !fused ? tiling.tile_fn() : nullptr;
  const sparse::FusedFn fused_fn = fused ? tiling.fused_fn() : nullptr;
  const std::int64_t work = std::max<std::int64_t>(wt.nnz, 1) * p.n * p.unit_rows * ((p.row_len + k.lanes - 1) / k.lanes);
  const int threads = work >= kParallelMinWork ? num_threads : 1;
  const TileArgs targs = wants_input ? tile_args(t, tiling, twt, values, nullptr) : TileArgs{};
  std::vector<sparse::GradPosition> positions;
  const Kernels& gk = sparse::grad_kernels(p.row_len, k);
  const GradArgs gargs = grad_args(p, wt, gk, acc, &positions);
  // The weight gradient's threads own blocks of output channels (fused: of the transposed weight's).
  const std::vector<std::int64_t> weight_blocks =
      !wants_weight ? std::vector<std::int64_t>{0}
      : fused       ? weight_balanced_blocks(twt.row_ptr, t.co, threads)
                    : weight_balanced_blocks(wt.row_ptr, p.co, threads);
  const std::int64_t weight_items = static_cast<std::int64_t>(weight_blocks.size()) - 1;
  const GroupItems input_groups(p, tiling.unit_rows, wants_input && !fused ? shape : TileShape{1, 1, 0, 1, 0, 0},
                                wants_input ? t.co : 1, threads);
  py::gil_scoped_release no_gil;
  if (wants_input) {
    const float* given = table.ptr<const float>(kSbValues, 0);
    for (std::int64_t e = 0; e < twt.nnz; ++e) values[e] = given[t_order[e]];
    clear_slab_region(t, dy_slabs);
  }
  if (wants_weight) {
    std::fill(acc, acc + kGradAccFloats * wt.nnz, 0.0f);
    if (!fused) clear_slab_region(p, x_slabs);
  }
#pragma omp parallel num_threads(threads)
  {
    for (std::int64_t first = 0; first < p.n; first += p.group) {
      const std::int64_t images = std::min(p.group, p.n - first);
      const std::int64_t x_planes = wants_weight && !fused && !p.direct ? images * p.ci : 0;
      const std::int64_t dy_planes = (wants_input && !t.direct) || wants_bias ? images * p.co : 0;
#pragma omp for schedule(static)
      for (std::int64_t q = 0; q < x_planes + dy_planes; ++q) {
        if (q < x_planes) {
          k.build_slab(x + (first * p.ci + q) * p.h * p.w, x_slabs + q * p.plane_floats, p.slab);
          continue;
        }
        const float* plane = dy + (first * p.co + q - x_planes) * p.out_pitch;  // read once for both
        if (wants_input && !t.direct) k.build_slab(plane, dy_slabs + (q - x_planes) * t.plane_floats, t.slab);
        if (wants_bias) plane_sums[first * p.co + q - x_planes] = k.sum(plane, p.out_pitch);
      }
      TileArgs a = targs;
      if (wants_input) {
        a.slabs = t.direct ? dy + first * t.image_floats() : dy_slabs;
        a.out = dx + first * t.out_image;
        a.units = images * tiling.unit_rows * shape.chunks_per_row;
      }
      if (fused) {  // items: blocks of x's channels, each running all the group's tiles in order
        const sparse::FusedArgs f{x + first * p.ci * hw, acc};  // x itself, not its slabs
        const std::int64_t tiles = (a.units + shape.units - 1) / shape.units;
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t b = 0; b < weight_items; ++b)
          for (std::int64_t tile = 0; tile < tiles; ++tile)
            fused_fn(a, f, tile * shape.units, weight_blocks[b], weight_blocks[b + 1]);
        continue;
      }
      const TileItems& it = input_groups.of(images, p.group);
      const std::int64_t input_items = wants_input ? it.items() : 0;
      GradArgs g = gargs;
      g.slabs = p.direct ? x + first * p.image_floats() : x_slabs;
      g.dy = dy + first * p.out_image;
      g.images = images;
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t item = 0; item < input_items + (wants_weight ? weight_items : 0); ++item) {
        if (item < input_items)
          run_tile_item(a, tile_fn, shape, it, item);
        else
          gk.grad_channels(g, weight_blocks[item - input_items], weight_blocks[item - input_items + 1]);
      }
    }
    if (wants_weight) {
      const int lanes = fused ? tiling.k->lanes : gk.lanes;  // the partial sums of the build that made them
#pragma omp for schedule(static) nowait
      for (std::int64_t e = 0; e < wt.nnz; ++e) {
        float sum = 0.0f;
        for (int lane = 0; lane < lanes; ++lane) sum += acc[e * kGradAccFloats + lane];
        grad[fused ? t_order[e] : e] = sum;
      }
    }
    if (wants_bias) {
#pragma omp for schedule(static)
      for (std::int64_t co = 0; co < p.co; ++co) {
        double sum = 0.0;
        for (std::int64_t n = 0; n < p.n; ++n) sum += plane_sums[n * p.co + co];
        grad_bias[co] = static_cast<float>(sum);
      }
    }
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
  m.def("sparse_conv2d_cpu", &sparse_conv2d_cpu, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("num_threads"),
        "Sparse-weight conv forward on float32 CPU tensors: table rows, plan and layouts in csrc/sparse_conv.h.");
  m.def("sparse_conv2d_backward_cpu", &sparse_conv2d_backward_cpu, py::arg("table"), py::arg("rows"),
        py::arg("width"), py::arg("num_threads"),
        "Input gradient (the transposed weight's forward over dy) and weight gradient at the kept entries of the "
        "sparse conv, in one pass (float32 CPU tensors; table rows in csrc/sparse_conv.h).");
#ifdef PYLTH_WITH_CUDA
  def_cuda(m, "sparse_conv2d_cuda", &sparse_conv2d_cuda_launch,
           "Sparse-weight conv forward on float32 CUDA tensors (table in host memory, rows in csrc/sparse_conv.h).");
  def_cuda(m, "sparse_conv2d_grad_weight_cuda", &sparse_conv2d_grad_weight_cuda_launch,
           "Weight gradient of the sparse conv at its kept entries on float32 CUDA tensors: the forward's table with "
           "dy in the output row and the gradient in the values row (csrc/sparse_conv.h).");
#endif
}

}  // namespace pylth
