// The sparse conv's slab builder and register-tiled forward kernel, compiled once per instruction set:
// sparse_conv_builds.cpp includes this file in one namespace per build (no include guard on purpose),
// after declaring that build's vector width and helpers:
//   kLanes                          floats per vector (a compile-time constant of the build)
//   Vec                             kLanes floats (a GCC vector type)
//   load_vec, store_vec, splat      whole vectors (unaligned)
//   load_first(p, n), store_first   the first n < kLanes lanes only (lanes >= n read as 0, never touched)
//   load_masked(p, mask)            the lanes whose int32 word at mask is nonzero (others 0, not read)
//   split_pairs(even, odd, src, n)  src[2i] to even[i], src[2i + 1] to odd[i], for 2i (+ 1) < n
//   and_bits(v, mask)               v AND the kLanes int32 words at mask
//   kTileVectors, kFusedTileVectors, kMaxUnits   the tile shapes this build's registers hold
// and, from sparse_conv_kernels.h: SlabLayout, TileArgs, FusedArgs, TileFn, FusedFn. Needs <algorithm>,
// <array>, <cstdint>, <cstring>, <utility>.

// n floats from src to dst in whole vectors (the last one overlapping the one before), or a partial one.
inline __attribute__((always_inline)) void copy_floats(float* dst, const float* src, std::int64_t n) {
  if (n < kLanes) {
    store_first(dst, load_first(src, static_cast<int>(n)), static_cast<int>(n));
    return;
  }
  std::int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) store_vec(dst + c, load_vec(src + c));
  if (c < n) store_vec(dst + n - kLanes, load_vec(src + n - kLanes));
}

// The sum of n floats: kLanes partial sums, then across the lanes.
inline float sum_floats(const float* src, std::int64_t n) {
  Vec acc = splat(0.0f);
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc += load_vec(src + i);
  if (i < n) acc += load_first(src + i, static_cast<int>(n - i));
  float s = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) s += acc[lane];
  return s;
}

// One (image, channel) plane `src` into its slab `dst` (sparse_conv.h): its rows, each split into
// col_step column phases (slab[j][y + pad_rows][c] = x[y][c * col_step + j - pad_cols]). Only the
// image's values are written: the zero borders are written once per call (sparse_conv.cpp).
inline void build_slab(const float* src, float* dst, const SlabLayout& s) {
  if (s.col_step == 1) {
    float* row = dst + s.pad_rows * s.pitch + s.pad_cols;
    if (s.pitch == s.width) {  // no column padding: the rows are one run
      copy_floats(row, src, s.height * s.width);
      return;
    }
    for (std::int64_t y = 0; y < s.height; ++y, row += s.pitch, src += s.width) copy_floats(row, src, s.width);
    return;
  }
  const std::int64_t phase_floats = s.rows * s.pitch;
  if (s.col_step == 2) {  // the presets' downsampling: even columns go to phase pad % 2, odd ones to the other
    const std::int64_t even = s.pad_cols % 2 * phase_floats + s.pad_cols / 2;
    const std::int64_t odd = (s.pad_cols + 1) % 2 * phase_floats + (s.pad_cols + 1) / 2;
    for (std::int64_t y = 0; y < s.height; ++y, src += s.width) {
      float* row = dst + (y + s.pad_rows) * s.pitch;
      split_pairs(row + even, row + odd, src, s.width);
    }
    return;
  }
  // Column phase j holds the columns c = first_j, first_j + col_step, ...: one strided loop each.
  for (std::int64_t y = 0; y < s.height; ++y, src += s.width) {
    float* row = dst + (y + s.pad_rows) * s.pitch;
    for (std::int64_t j = 0; j < s.col_step; ++j) {
      const std::int64_t first = ((j - s.pad_cols) % s.col_step + s.col_step) % s.col_step;
      if (first >= s.width) continue;
      float* to = row + j * phase_floats + (first + s.pad_cols) / s.col_step;
      const float* from = src + first;
      const std::int64_t count = (s.width - first + s.col_step - 1) / s.col_step;
      for (std::int64_t i = 0; i < count; ++i) to[i] = from[i * s.col_step];
    }
  }
}

// Output channels [co_begin, co_end) of the R units from `first_unit` on, VR vectors each. Units past the
// group's last repeat it: they recompute and store the same values again, so no store needs a test. One
// function per (R, VR): inlined into one big function, GCC allocated only part of the registers and
// spilled accumulators.
template <int R, int VR>
__attribute__((noinline)) void conv_tile(const TileArgs& p, std::int64_t first_unit, std::int64_t co_begin,
                                         std::int64_t co_end) {
  const float* in[R];
  float* out[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    const std::int64_t u = std::min(first_unit + r, p.units - 1);
    const std::int64_t chunk = u % p.chunks_per_row, row = u / p.chunks_per_row;
    const std::int64_t n = row / p.g.rows_per_image, y = row % p.g.rows_per_image;
    const std::int64_t start = chunk == p.chunks_per_row - 1 ? p.last_start : chunk * VR * kLanes;
    in[r] = p.slabs + n * p.g.image_floats + y * p.g.in_row_stride + start;
    out[r] = p.out + n * p.g.out_image + y * p.g.out_row_stride + start;
  }
  const std::int64_t tail = p.tail;  // the offset of each unit's last vector
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    Vec acc[R][VR];
    const Vec bias = splat(p.bias ? p.bias[co] : 0.0f);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
      for (int v = 0; v < VR; ++v) acc[r][v] = bias;
    const std::int64_t end = p.row_ptr[co + 1];
    for (std::int64_t k = p.row_ptr[co]; k < end; ++k) {
      const Vec w = splat(p.values[k]);
      const std::int64_t o = p.offsets[k], last = o + tail;
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
        for (int v = 0; v < VR; ++v) acc[r][v] += w * load_vec(in[r] + (v == VR - 1 ? last : o + v * kLanes));
    }
    const std::int64_t channel = co * p.g.out_pitch;
    if (p.partial) {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) store_first(out[r] + channel, acc[r][0], p.partial);
      continue;
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
      for (int v = 0; v < VR; ++v) store_vec(out[r] + channel + (v == VR - 1 ? tail : v * kLanes), acc[r][v]);
  }
}

// Lane masks for load_masked: last[f] keeps the last f lanes, first[f] the first f.
struct LaneMasks {
  std::int32_t last[kLanes + 1][kLanes], first[kLanes + 1][kLanes];
};
constexpr LaneMasks make_lane_masks() {
  LaneMasks m{};
  for (int f = 0; f <= kLanes; ++f)
    for (int lane = 0; lane < kLanes; ++lane) {
      m.last[f][lane] = lane >= kLanes - f ? -1 : 0;
      m.first[f][lane] = lane < f ? -1 : 0;
    }
  return m;
}
inline constexpr LaneMasks kLaneMasks = make_lane_masks();

// conv_tile's input-gradient tile with the weight gradient's dot products (FusedArgs): per output channel
// co of the transposed weight (an input channel of x) its x tile is loaded once, each output counted
// once (the lanes a unit's overlapping last vector or a row's overlapping last unit shares with the
// vectors before it, and units past the group's last, are loaded as zeros), and every dy vector an entry
// loads feeds both products: dL/dx's accumulator and the entry's dot product, which joins acc[k] after
// the tile. Entries of one co are only ever taken by one thread, tiles in order: every sum has one order.
template <int R, int VR>
__attribute__((noinline)) void fused_tile(const TileArgs& p, const FusedArgs& f, std::int64_t first_unit,
                                          std::int64_t co_begin, std::int64_t co_end) {
  const float* in[R];
  float* out[R];
  const float* xs[R];
  const std::int32_t* counted[R][VR];
  const std::int64_t tail = p.tail, chunks = p.chunks_per_row;
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    const bool real = first_unit + r < p.units;
    const std::int64_t u = std::min(first_unit + r, p.units - 1);
    const std::int64_t chunk = u % chunks, row = u / chunks;
    const std::int64_t n = row / p.g.rows_per_image, y = row % p.g.rows_per_image;
    const std::int64_t start = chunk == chunks - 1 ? p.last_start : chunk * VR * kLanes;
    in[r] = p.slabs + n * p.g.image_floats + y * p.g.in_row_stride + start;
    const std::int64_t at = n * p.g.out_image + y * p.g.out_row_stride + start;
    out[r] = p.out + at;
    xs[r] = f.x + at;
#pragma GCC unroll 12
    for (int v = 0; v < VR; ++v) {
      const std::int64_t s = start + (v == VR - 1 ? tail : v * kLanes);
      // Outputs of the row before this vector's that earlier vectors counted.
      const std::int64_t before = chunks == 1 ? (v == VR - 1 ? (VR - 1) * kLanes : 0)
                                              : (chunk == chunks - 1 ? (chunks - 1) * VR * kLanes : 0);
      const int fresh = static_cast<int>(std::clamp<std::int64_t>(s + kLanes - before, 0, kLanes));
      counted[r][v] = p.partial ? kLaneMasks.first[real ? p.partial : 0] : kLaneMasks.last[real ? fresh : 0];
    }
  }
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    const std::int64_t channel = co * p.g.out_pitch, end = p.row_ptr[co + 1];
    Vec xv[R][VR], acc[R][VR];
    if (p.row_ptr[co] == end) {  // no kept weight reads this input channel: its gradient is 0, x is not read
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
        for (int v = 0; v < VR; ++v) {
          if (p.partial)
            store_first(out[r] + channel, splat(0.0f), p.partial);
          else
            store_vec(out[r] + channel + (v == VR - 1 ? tail : v * kLanes), splat(0.0f));
        }
      continue;
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
      for (int v = 0; v < VR; ++v) {
        // A masked load is slow where it misses the cache (x comes from memory): rows of whole vectors
        // load whole vectors and mask them; only a row shorter than a vector must not read past it.
        const float* at = xs[r] + channel + (v == VR - 1 ? tail : v * kLanes);
        xv[r][v] = p.partial ? load_masked(at, counted[r][v]) : and_bits(load_vec(at), counted[r][v]);
        // The next tile's inputs of this channel usually follow these: ask for them now.
        if (v == 0) __builtin_prefetch(at + R * VR * kLanes);
        acc[r][v] = splat(0.0f);
      }
    for (std::int64_t k = p.row_ptr[co]; k < end; ++k) {
      const Vec w = splat(p.values[k]);
      const std::int64_t o = p.offsets[k], last = o + tail;
      Vec dot = splat(0.0f);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
        for (int v = 0; v < VR; ++v) {
          const Vec d = load_vec(in[r] + (v == VR - 1 ? last : o + v * kLanes));
          acc[r][v] += w * d;
          dot += xv[r][v] * d;
        }
      float* sum = f.acc + k * kGradAccFloats;
      store_vec(sum, load_vec(sum) + dot);
    }
    if (p.partial) {
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) store_first(out[r] + channel, acc[r][0], p.partial);
      continue;
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
      for (int v = 0; v < VR; ++v) store_vec(out[r] + channel + (v == VR - 1 ? tail : v * kLanes), acc[r][v]);
  }
}

// conv_tile<R, VR> (fused_tile) for R = 1 .. kMaxUnits, clamped to what a tile holds (larger R is never
// asked for).
template <int VR, int... Rs>
constexpr std::array<TileFn, kMaxUnits> tiles_of_width(std::integer_sequence<int, Rs...>) {
  return {{&conv_tile<std::max(1, std::min(Rs + 1, kTileVectors / VR)), VR>...}};
}
template <int VR, int... Rs>
constexpr std::array<FusedFn, kMaxUnits> fused_of_width(std::integer_sequence<int, Rs...>) {
  return {{&fused_tile<std::max(1, std::min(Rs + 1, kFusedTileVectors / VR)), VR>...}};
}

template <int... Vs>
constexpr std::array<std::array<TileFn, kMaxUnits>, sizeof...(Vs)> all_tiles(std::integer_sequence<int, Vs...>) {
  return {{tiles_of_width<Vs + 1>(std::make_integer_sequence<int, kMaxUnits>{})...}};
}
template <int... Vs>
constexpr std::array<std::array<FusedFn, kMaxUnits>, sizeof...(Vs)> all_fused(std::integer_sequence<int, Vs...>) {
  return {{fused_of_width<Vs + 1>(std::make_integer_sequence<int, kMaxUnits>{})...}};
}

// The kernel for tiles of `units` units of `vectors` vectors (units * vectors within the build's tile).
inline TileFn tile_function(int vectors, int units) {
  static constexpr auto table = all_tiles(std::make_integer_sequence<int, kTileVectors>{});
  return table[vectors - 1][units - 1];
}
inline FusedFn fused_function(int vectors, int units) {
  static constexpr auto table = all_fused(std::make_integer_sequence<int, kFusedTileVectors>{});
  return table[vectors - 1][units - 1];
}
