// The sparse conv's slab builder and register-tiled forward kernel, compiled once per instruction set:
// sparse_conv_builds.cpp includes this file in one namespace per build (no include guard on purpose),
// after declaring that build's vector width and helpers:
//   kLanes                          floats per vector (a compile-time constant of the build)
//   Vec                             kLanes floats (a GCC vector type)
//   load_vec, store_vec, splat      whole vectors (unaligned)
//   load_first(p, n), store_first   the first n < kLanes lanes only (lanes >= n read as 0, never touched)
//   LaneMask                        a set of lanes (a mask register, or a table row of int32 words)
//   lanes_first(f), lanes_last(f)   the first / last f lanes (0 <= f <= kLanes)
//   load_masked(p, m)               the lanes in m (others 0, not read)
//   keep_lanes(v, m)                v with the lanes outside m zeroed
//   split_pairs(even, odd, src, n)  src[2i] to even[i], src[2i + 1] to odd[i], for 2i (+ 1) < n
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

// Where unit u of a tile of VR-vector units lies: its image, its unit row in the image, and the offset of
// its first vector in the row.
struct UnitPlace {
  std::int64_t image, row, start;
};
inline __attribute__((always_inline)) UnitPlace unit_place(const TileArgs& p, std::int64_t u, int vr) {
  const std::int64_t chunk = u % p.chunks_per_row, row = u / p.chunks_per_row;
  return {row / p.g.rows_per_image, row % p.g.rows_per_image,
          chunk == p.chunks_per_row - 1 ? p.last_start : chunk * vr * kLanes};
}

// Offset of vector v of a unit of VR vectors from the unit's start (`tail`: its last vector's).
template <int VR>
constexpr std::int64_t vector_at(int v, std::int64_t tail) {
  return v == VR - 1 ? tail : v * kLanes;
}

// The multiply-adds of output channel co into a tile's accumulators: per kept weight one broadcast and
// one multiply-add per vector, its input loaded at the weight's offset from the unit's inputs.
template <int R, int VR>
inline __attribute__((always_inline)) void accumulate(Vec (&acc)[R][VR], const float* const (&in)[R],
                                                      const TileArgs& p, std::int64_t co) {
  const std::int64_t end = p.row_ptr[co + 1], tail = p.tail;
  for (std::int64_t k = p.row_ptr[co]; k < end; ++k) {
    const Vec w = splat(p.values[k]);
    const std::int64_t o = p.offsets[k];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int v = 0; v < VR; ++v) acc[r][v] += w * load_vec(in[r] + o + vector_at<VR>(v, tail));
  }
}

// accumulate's multiply-adds, and per kept weight k the dot product of the inputs it loads with the
// tile's x vectors `xv`, added into f.acc[k] (the fused backward: FusedArgs).
template <int R, int VR>
inline __attribute__((always_inline)) void accumulate_fused(Vec (&acc)[R][VR], const Vec (&xv)[R][VR],
                                                            const float* const (&in)[R], const TileArgs& p,
                                                            const FusedArgs& f, std::int64_t co) {
  const std::int64_t end = p.row_ptr[co + 1], tail = p.tail;
  for (std::int64_t k = p.row_ptr[co]; k < end; ++k) {
    const Vec w = splat(p.values[k]);
    const std::int64_t o = p.offsets[k];
    Vec dot = splat(0.0f);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int v = 0; v < VR; ++v) {
        const Vec d = load_vec(in[r] + o + vector_at<VR>(v, tail));
        acc[r][v] += w * d;
        dot += xv[r][v] * d;
      }
    float* sum = f.acc + k * kGradAccFloats;
    store_vec(sum, load_vec(sum) + dot);
  }
}

// The lanes of vector v (at `s` in its unit row) of a tile's unit that no earlier vector counted: a row's
// overlapping last vector, or a row's overlapping last unit, shares lanes with the vectors before it.
template <int VR>
inline int fresh_lanes(const TileArgs& p, std::int64_t chunk, int v, std::int64_t s) {
  const std::int64_t chunks = p.chunks_per_row;
  const std::int64_t before = chunks == 1 ? (v == VR - 1 ? (VR - 1) * kLanes : 0)
                                          : (chunk == chunks - 1 ? (chunks - 1) * VR * kLanes : 0);
  return static_cast<int>(std::clamp<std::int64_t>(s + kLanes - before, 0, kLanes));
}

// Output channels [co_begin, co_end) of the R units from `first_unit` on, VR vectors each. Units past the
// group's last repeat it: they recompute and store the same values again, so no store needs a test. One
// function per (R, VR): inlined into one big function, GCC allocated only part of the registers and
// spilled accumulators.
// A tile's results to its outputs of one channel: the partial row's first lanes, or every vector.
template <int R, int VR>
inline __attribute__((always_inline)) void store_tile(float* const (&out)[R], std::int64_t channel,
                                                      const Vec (&acc)[R][VR], const TileArgs& p) {
  if (p.partial) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) store_first(out[r] + channel, acc[r][0], p.partial);
    return;
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int v = 0; v < VR; ++v) store_vec(out[r] + channel + vector_at<VR>(v, p.tail), acc[r][v]);
}

template <int R, int VR>
__attribute__((noinline)) void conv_tile(const TileArgs& p, std::int64_t first_unit, std::int64_t co_begin,
                                         std::int64_t co_end) {
  const float* in[R];
  float* out[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const UnitPlace u = unit_place(p, std::min(first_unit + r, p.units - 1), VR);
    in[r] = p.slabs + u.image * p.g.image_floats + u.row * p.g.in_row_stride + u.start;
    out[r] = p.out + u.image * p.g.out_image + u.row * p.g.out_row_stride + u.start;
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
    store_tile<R, VR>(out, channel, acc, p);
  }
}

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
  LaneMask counted[R][VR];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const bool real = first_unit + r < p.units;
    const std::int64_t unit = std::min(first_unit + r, p.units - 1);
    const UnitPlace u = unit_place(p, unit, VR);
    in[r] = p.slabs + u.image * p.g.image_floats + u.row * p.g.in_row_stride + u.start;
    const std::int64_t at = u.image * p.g.out_image + u.row * p.g.out_row_stride + u.start;
    out[r] = p.out + at;
    xs[r] = f.x + at;
#pragma GCC unroll 32
    for (int v = 0; v < VR; ++v) {
      const int fresh = fresh_lanes<VR>(p, unit % p.chunks_per_row, v, u.start + vector_at<VR>(v, p.tail));
      counted[r][v] = p.partial ? lanes_first(real ? p.partial : 0) : lanes_last(real ? fresh : 0);
    }
  }
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    const std::int64_t channel = co * p.g.out_pitch;
    Vec xv[R][VR], acc[R][VR];
    if (p.row_ptr[co] == p.row_ptr[co + 1]) {  // no kept weight reads this input channel: its gradient is 0
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
        for (int v = 0; v < VR; ++v) {
          if (p.partial)
            store_first(out[r] + channel, splat(0.0f), p.partial);
          else
            store_vec(out[r] + channel + vector_at<VR>(v, p.tail), splat(0.0f));
        }
      continue;
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
      for (int v = 0; v < VR; ++v) {
        // A masked load is slow where it misses the cache on AVX2 (x comes from memory): rows of whole
        // vectors load whole vectors and mask them; only a row shorter than a vector must not read past it.
        const float* at = xs[r] + channel + vector_at<VR>(v, p.tail);
        xv[r][v] = p.partial ? load_masked(at, counted[r][v]) : keep_lanes(load_vec(at), counted[r][v]);
        // The next tile's inputs of this channel usually follow these: ask for them now.
        if (v == 0) __builtin_prefetch(at + R * VR * kLanes);
        acc[r][v] = splat(0.0f);
      }
    accumulate_fused<R, VR>(acc, xv, in, p, f, co);
    store_tile<R, VR>(out, channel, acc, p);
  }
}

// One function per (VR, R) of a tile kernel, R = 1 .. kMaxUnits clamped to what a tile of `most`
// accumulators holds (larger R is never asked for), VR = 1 .. most.
template <typename Fn, template <int, int> class Kernel, int kMost>
struct TileTable {
  template <int VR, int... Rs>
  static constexpr std::array<Fn, kMaxUnits> of_width(std::integer_sequence<int, Rs...>) {
    return {{Kernel<std::max(1, std::min(Rs + 1, kMost / VR)), VR>::fn...}};
  }
  template <int... Vs>
  static constexpr std::array<std::array<Fn, kMaxUnits>, sizeof...(Vs)> all(std::integer_sequence<int, Vs...>) {
    return {{of_width<Vs + 1>(std::make_integer_sequence<int, kMaxUnits>{})...}};
  }
  static constexpr auto table = all(std::make_integer_sequence<int, kMost>{});
  static Fn at(int vectors, int units) { return table[vectors - 1][units - 1]; }
};

template <int R, int VR>
struct ConvTile {
  static constexpr TileFn fn = &conv_tile<R, VR>;
};
template <int R, int VR>
struct FusedTile {
  static constexpr FusedFn fn = &fused_tile<R, VR>;
};

// The kernel for tiles of `units` units of `vectors` vectors (units * vectors within the build's tile).
inline TileFn tile_function(int vectors, int units) {
  return TileTable<TileFn, ConvTile, kTileVectors>::at(vectors, units);
}
inline FusedFn fused_function(int vectors, int units) {
  return TileTable<FusedFn, FusedTile, kFusedTileVectors>::at(vectors, units);
}
