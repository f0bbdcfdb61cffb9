// What the sparse conv and linear entry points (sparse_conv.cpp, sparse_linear.cpp) share with the
// per-instruction-set builds of their kernels (sparse_conv_builds.cpp, sparse_conv_avx512.cpp): the
// arguments of one group of images, and the functions and tile shapes of each build. Layouts:
// sparse_conv.h.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_dispatch.h"

namespace pylth {
namespace sparse {

// How one (image, channel) plane becomes its slab: its rows inside zero borders, each row split into
// col_step column phases of `pitch` floats (sparse_conv.h).
struct SlabLayout {
  std::int64_t height, width, pad_rows, pad_cols, col_step, rows, pitch;
};

// Where a group's unit rows are: unit row r of image n reads slab + n * image_floats + r * in_row_stride
// and writes out + n * out_image + r * out_row_stride (+ co * out_pitch); row_len outputs each.
struct RowGeometry {
  std::int64_t image_floats, in_row_stride, out_image, out_row_stride, out_pitch, rows_per_image, row_len;
};

// The forward of one group of images. A unit is VR vectors of outputs of one unit row, at 0, lanes, ...,
// (VR - 2) lanes and `tail` from its start (tail = (VR - 1) lanes, or less when a unit is a whole row that
// ends inside a vector: its last vector then overlaps the one before); units are numbered image-major,
// then row, then chunk (chunks_per_row per row, the last one of a row at last_start).
struct TileArgs {
  RowGeometry g;
  const float* slabs;  // group image 0's slabs (or input planes, read in place)
  float* out;          // group image 0's outputs
  std::int64_t chunks_per_row, units, last_start, tail;
  int partial;         // a row shorter than a vector: its length (lanes stored), else 0
  const std::int64_t* row_ptr;
  const std::int32_t* offsets;
  const float* values;
  const float* bias;   // [Co] or null
  // Flat tiles only (sparse_conv_flat_tile.h): each image's unit rows as one row of padded positions,
  // flat_pitch per output row (the slab's row stride), of which the first flat_width are outputs, and
  // flat_len in all.
  std::int64_t flat_pitch, flat_width, flat_len;
};

// Where one vector of an image's outputs lies for the weight gradient: its inputs at slab + x (+ a kept
// weight's offset), dy at dy + dy, and the lanes it counts (a row's overlapping last vector counts only
// the lanes the one before it did not; a row shorter than a vector only its length): `mask` indexes a
// table of kGradMasks int32 lane masks.
struct GradPosition {
  std::int32_t x, dy, mask;
};
constexpr int kGradMasks = 3;  // whole vector, fresh lanes of a row's last vector, a short row

// The weight gradient of one group of images: dy is laid out as the forward's output.
struct GradArgs {
  RowGeometry g;
  const float* slabs;
  const float* dy;
  std::int64_t images;
  const GradPosition* positions;  // one image's vectors, in order
  std::int64_t position_count;
  std::int32_t masks[kGradMasks][16];
  const std::int64_t* row_ptr;
  const std::int32_t* offsets;
  float* acc;                     // kGradAccFloats partial sums per kept weight
};

// The one-pass backward of a stride-1 conv: the input gradient's tiles (TileArgs of the transposed weight
// over the dy slabs, writing dL/dx) also take, per transposed entry k of input channel ci, the dot
// product of x[ci] with the dy vectors the entry reads: dL/dw_k, summed into acc[k] (kGradAccFloats
// floats per entry, transposed order). x has dL/dx's layout, so its tile is where dL/dx's is.
struct FusedArgs {
  const float* x;  // group image 0's input, laid out as the tiles' outputs
  float* acc;
};

// Output channels [co_begin, co_end) of the tile of units from `first_unit` on.
using TileFn = void (*)(const TileArgs& p, std::int64_t first_unit, std::int64_t co_begin, std::int64_t co_end);
// The same with the weight gradient's dot products (FusedArgs).
using FusedFn = void (*)(const TileArgs& p, const FusedArgs& f, std::int64_t first_unit, std::int64_t co_begin,
                         std::int64_t co_end);
// Adds G kept weights' dot products (one output channel) into their accumulators.
using GroupFn = void (*)(const GradArgs& p, std::int64_t co, const std::int32_t* offsets, float* acc);

// One build's kernels and the tile shapes its registers hold.
struct Kernels {
  int lanes;               // floats per vector
  int tile_vectors;        // accumulators of a tile
  int fused_tile_vectors;  // of a fused backward tile (which also holds its inputs' tile)
  int max_units;           // units per tile (each needs a general-purpose register)
  TileFn (*tile_function)(int vectors, int units);
  FusedFn (*fused_function)(int vectors, int units);
  // The flat tiles (sparse_conv_flat_tile.h), or null in a build without them.
  TileFn (*flat_tile_function)(int vectors, int units);
  FusedFn (*flat_fused_function)(int vectors, int units);
  void (*build_slab)(const float* src, float* dst, const SlabLayout& s);
  void (*grad_channels)(const GradArgs& p, std::int64_t co_begin, std::int64_t co_end);
  float (*sum)(const float* src, std::int64_t n);  // in lanes, then across them (one order per n)
  // What one vector multiply-add with its load costs next to an 8-float one (AVX2's): the tile choice
  // weighs builds and tile shapes by it. On the Zen 5 EPYC this was tuned on, a 16-float one costs 1.5x
  // (1.5-1.8x measured, L1 to L2 resident inputs).
  double vector_cost;
  // A build of the same path with half the lanes, for rows that fill its vectors better (the AVX-512
  // path's 8-float build for 8-wide rows), or null.
  const Kernels* narrow;
};

// What a tile pays per kept weight besides its multiply-adds (the weight's broadcast, its offset, the
// loop), in 8-float multiply-adds.
constexpr double kWeightOverhead = 2.0;

// How a unit row is cut into units of whole vectors (a row's last vector or last unit overlaps the one
// before it instead of running past the row), and how many units a tile takes: the cheapest for `rows`
// unit rows (a group's), where the last tile of a group repeats its last unit to fill up. `cost`: per
// kept weight, in 8-float multiply-adds (Kernels::vector_cost, kWeightOverhead).
struct TileShape {
  int vectors, units, partial;
  std::int64_t chunks_per_row, last_start, tail;
  double cost;
};

inline TileShape tile_shape(std::int64_t row_len, std::int64_t rows, const Kernels& k, bool fused = false) {
  const int most = fused ? k.fused_tile_vectors : k.tile_vectors;
  TileShape best{};
  auto consider = [&](int v, std::int64_t chunks, std::int64_t last_start, std::int64_t tail, int partial) {
    const std::int64_t units = rows * chunks;
    for (int r = 1; r <= std::min(k.max_units, most / v); ++r) {
      const double cost = static_cast<double>((units + r - 1) / r) * (r * v * k.vector_cost + kWeightOverhead);
      if (best.vectors == 0 || cost < best.cost || (cost == best.cost && v * r > best.vectors * best.units))
        best = {v, r, partial, chunks, last_start, tail, cost};
    }
  };
  if (row_len < k.lanes) {  // one partial vector per row
    consider(1, 1, 0, 0, static_cast<int>(row_len));
    return best;
  }
  const std::int64_t needed = (row_len + k.lanes - 1) / k.lanes;
  if (needed <= most) consider(static_cast<int>(needed), 1, 0, row_len - k.lanes, 0);  // whole rows
  for (int v = 1; v <= most && v * k.lanes <= row_len; ++v)  // chunks, the last one overlapping
    consider(v, (row_len + v * k.lanes - 1) / (v * k.lanes), row_len - v * k.lanes, (v - 1) * k.lanes, 0);
  return best;
}

// The build whose weight-gradient kernel runs on rows of row_len outputs: the path's, or its narrow build
// where a row's vectors cost less in it (8-wide rows on the AVX-512 path).
inline const Kernels& grad_kernels(std::int64_t row_len, const Kernels& path) {
  auto cost = [row_len](const Kernels& k) { return static_cast<double>((row_len + k.lanes - 1) / k.lanes) * k.vector_cost; };
  return path.narrow && cost(*path.narrow) < cost(path) ? *path.narrow : path;
}

// The weight gradient's positions of one image's vectors (GradPosition) for rows of `g`, and their lane
// masks, for vectors of `lanes` floats: per row its whole vectors, then its overlapping last vector or
// the partial vector of a row shorter than one.
inline std::vector<GradPosition> grad_positions(const RowGeometry& g, int lanes, std::int32_t (*masks)[16]) {
  const std::int64_t len = g.row_len, whole = len / lanes * lanes;
  const int fresh = static_cast<int>(len - whole);  // lanes of the tail vector not counted before
  for (int lane = 0; lane < 16; ++lane) {
    masks[0][lane] = lane < lanes ? -1 : 0;
    masks[1][lane] = lane < lanes && lane >= lanes - fresh ? -1 : 0;
    masks[2][lane] = lane < len ? -1 : 0;
  }
  std::vector<GradPosition> positions;
  for (std::int64_t r = 0; r < g.rows_per_image; ++r) {
    const std::int64_t x = r * g.in_row_stride, dy = r * g.out_row_stride;
    for (std::int64_t c = 0; c < whole; c += lanes)
      positions.push_back({static_cast<std::int32_t>(x + c), static_cast<std::int32_t>(dy + c), 0});
    if (len < lanes)
      positions.push_back({static_cast<std::int32_t>(x), static_cast<std::int32_t>(dy), 2});
    else if (fresh)
      positions.push_back({static_cast<std::int32_t>(x + len - lanes), static_cast<std::int32_t>(dy + len - lanes), 1});
  }
  return positions;
}

// The build of CPU path `isa` (csrc/cpu_dispatch.h): the entry points ask for active_cpu_isa()'s on every
// call, so that PYLTH_CPU_ISA and set_cpu_isa choose it.
const Kernels& kernels_for(CpuIsa isa);

#ifdef PYLTH_ISA_VARIANTS
const Kernels& avx512_kernels();     // 16 floats: sparse_conv_avx512.cpp
const Kernels& avx512_vl_kernels();  // 8 floats, 32 registers: sparse_conv_avx512_vl.cpp
#endif

}  // namespace sparse
}  // namespace pylth
