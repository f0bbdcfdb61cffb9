// The sparse conv's "flat" tiles, for builds with mask registers and compress / expand (AVX-512):
// included after sparse_conv_tile.h in such a build's namespace (no include guard on purpose). Needs,
// besides sparse_conv_tile.h's helpers:
//   store_compressed(p, v, valid, store)  the lanes of v in `valid`, packed, to p at the lanes in `store`
//   load_expanded(p, valid, store)        the inverse: the floats at p's `store` lanes into `valid`'s lanes
//   popcount_lanes(m)                     how many lanes m holds
//
// A narrow output row fills a 16-float vector badly (a 7-wide row uses 7 lanes, a 4-wide one 4). Read
// instead each image's unit rows as one row of padded positions: output (y, x) is position
// s = y * pitch + x (pitch: the slab's row stride), and the input a kept weight pairs with it is at
// slab + offset + s, exactly as in the row layout. Of each `pitch` positions the first `width` are
// outputs, the rest pad columns (computed and dropped); a 7x7 plane with 3x3 taps is 61 positions, 4
// vectors instead of 7 rows. The flat row is cut into whole vectors from position 0 on (a unit's last
// vector, or a row's last unit, overlaps the one before by whole vectors), and each vector's output lanes
// are packed by a compress before a masked store: they are consecutive outputs. TileArgs' geometry is
// then one unit row per image of flat vectors * kLanes positions, flat_len of them inside the plane.

// Where a flat vector's outputs go (the outputs before its first position) and which of its lanes are
// outputs (`valid`), packed into the first `store` lanes.
struct FlatSlot {
  std::int64_t at;
  LaneMask valid, store;
};

inline FlatSlot flat_slot(const TileArgs& p, std::int64_t s) {
  std::int64_t column = s % p.flat_pitch;
  LaneMask valid = 0;
  for (int lane = 0; lane < kLanes; ++lane) {
    if (s + lane < p.flat_len && column < p.flat_width) valid |= LaneMask(1u << lane);
    if (++column == p.flat_pitch) column = 0;
  }
  return {s / p.flat_pitch * p.flat_width + std::min(s % p.flat_pitch, p.flat_width), valid,
          lanes_first(popcount_lanes(valid))};
}

// conv_tile on flat units: the same multiply-adds, the outputs packed on the way out.
// A flat tile's results to its outputs of one channel, each vector's real lanes packed to where they go.
template <int R, int VR>
inline __attribute__((always_inline)) void store_flat_tile(float* const (&out)[R], std::int64_t channel,
                                                           const Vec (&acc)[R][VR], const FlatSlot (&slot)[R][VR]) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int v = 0; v < VR; ++v)
      store_compressed(out[r] + channel + slot[r][v].at, acc[r][v], slot[r][v].valid, slot[r][v].store);
}

template <int R, int VR>
__attribute__((noinline)) void flat_conv_tile(const TileArgs& p, std::int64_t first_unit, std::int64_t co_begin,
                                              std::int64_t co_end) {
  const float* in[R];
  float* out[R];
  FlatSlot slot[R][VR];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const UnitPlace u = unit_place(p, std::min(first_unit + r, p.units - 1), VR);
    in[r] = p.slabs + u.image * p.g.image_floats + u.start;
    out[r] = p.out + u.image * p.g.out_image;
#pragma GCC unroll 32
    for (int v = 0; v < VR; ++v) slot[r][v] = flat_slot(p, u.start + vector_at<VR>(v, p.tail));
  }
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    Vec acc[R][VR];
    const Vec bias = splat(p.bias ? p.bias[co] : 0.0f);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int v = 0; v < VR; ++v) acc[r][v] = bias;
    accumulate<R, VR>(acc, in, p, co);
    const std::int64_t channel = co * p.g.out_pitch;
    store_flat_tile<R, VR>(out, channel, acc, slot);
  }
}

// fused_tile on flat units: x (laid out as the outputs) is expanded into the tile's padded lanes, zero in
// pad columns, in vectors an earlier one covered and in units past the group's last, so that every
// output counts once in the dot products.
template <int R, int VR>
__attribute__((noinline)) void flat_fused_tile(const TileArgs& p, const FusedArgs& f, std::int64_t first_unit,
                                               std::int64_t co_begin, std::int64_t co_end) {
  const float* in[R];
  float* out[R];
  const float* xs[R];
  FlatSlot slot[R][VR];
  FlatSlot counted[R][VR];  // slot, or no lanes where the vector's outputs are counted elsewhere
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const bool real = first_unit + r < p.units;
    const std::int64_t unit = std::min(first_unit + r, p.units - 1);
    const UnitPlace u = unit_place(p, unit, VR);
    in[r] = p.slabs + u.image * p.g.image_floats + u.start;
    out[r] = p.out + u.image * p.g.out_image;
    xs[r] = f.x + u.image * p.g.out_image;
#pragma GCC unroll 32
    for (int v = 0; v < VR; ++v) {
      const std::int64_t s = u.start + vector_at<VR>(v, p.tail);
      slot[r][v] = flat_slot(p, s);
      // Flat vectors overlap by whole vectors: each is fresh or was counted before.
      const bool fresh = real && fresh_lanes<VR>(p, unit % p.chunks_per_row, v, s) == kLanes;
      counted[r][v] = fresh ? slot[r][v] : FlatSlot{slot[r][v].at, 0, 0};
    }
  }
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    const std::int64_t channel = co * p.g.out_pitch;
    Vec xv[R][VR], acc[R][VR];
    if (p.row_ptr[co] == p.row_ptr[co + 1]) {  // no kept weight reads this input channel: its gradient is 0
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
        for (int v = 0; v < VR; ++v)
          store_compressed(out[r] + channel + slot[r][v].at, splat(0.0f), slot[r][v].valid, slot[r][v].store);
      continue;
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int v = 0; v < VR; ++v) {
        xv[r][v] = load_expanded(xs[r] + channel + counted[r][v].at, counted[r][v].valid, counted[r][v].store);
        acc[r][v] = splat(0.0f);
      }
    accumulate_fused<R, VR>(acc, xv, in, p, f, co);
    store_flat_tile<R, VR>(out, channel, acc, slot);
  }
}

template <int R, int VR>
struct FlatConvTile {
  static constexpr TileFn fn = &flat_conv_tile<R, VR>;
};
template <int R, int VR>
struct FlatFusedTile {
  static constexpr FusedFn fn = &flat_fused_tile<R, VR>;
};

inline TileFn flat_tile_function(int vectors, int units) {
  return TileTable<TileFn, FlatConvTile, kTileVectors>::at(vectors, units);
}
inline FusedFn flat_fused_function(int vectors, int units) {
  return TileTable<FusedFn, FlatFusedTile, kFusedTileVectors>::at(vectors, units);
}
