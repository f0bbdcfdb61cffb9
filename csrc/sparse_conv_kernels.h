// What the sparse conv and linear entry points (sparse_conv.cpp, sparse_linear.cpp) share with the
// per-instruction-set builds of their kernels (sparse_conv_builds.cpp): the arguments of one group of
// images, and the functions and tile shapes of the build this CPU runs. Layouts: sparse_conv.h.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

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
  void (*build_slab)(const float* src, float* dst, const SlabLayout& s);
  void (*grad_channels)(const GradArgs& p, std::int64_t co_begin, std::int64_t co_end);
  float (*sum)(const float* src, std::int64_t n);  // in lanes, then across them (one order per n)
};

// How a unit row is cut into units of whole vectors: the fewest vectors per row (a row's last vector or
// last unit overlaps the one before it instead of running past the row), then the most vectors per tile.
struct TileShape {
  int vectors, units, partial;
  std::int64_t chunks_per_row, last_start, tail;
};

inline TileShape tile_shape(std::int64_t row_len, const Kernels& k, bool fused = false) {
  const int most = fused ? k.fused_tile_vectors : k.tile_vectors;
  if (row_len < k.lanes) return {1, std::min(k.max_units, most), static_cast<int>(row_len), 1, 0, 0};
  const std::int64_t needed = (row_len + k.lanes - 1) / k.lanes;
  TileShape best{};
  std::int64_t best_total = 0;
  auto consider = [&](int v, std::int64_t chunks, std::int64_t last_start, std::int64_t tail) {
    const int units = std::min(k.max_units, most / v);
    const std::int64_t total = chunks * v;
    if (best.vectors == 0 || total < best_total || (total == best_total && v * units > best.vectors * best.units)) {
      best = {v, units, 0, chunks, last_start, tail};
      best_total = total;
    }
  };
  if (needed <= most) consider(static_cast<int>(needed), 1, 0, row_len - k.lanes);  // whole rows
  for (int v = 1; v <= most && v * k.lanes <= row_len; ++v)  // chunks, the last one overlapping
    consider(v, (row_len + v * k.lanes - 1) / (v * k.lanes), row_len - v * k.lanes, (v - 1) * k.lanes);
  return best;
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

// The best build this CPU runs (AVX2 + FMA where it has them, else the baseline x86-64 one).
const Kernels& best_kernels();

}  // namespace sparse
}  // namespace pylth
