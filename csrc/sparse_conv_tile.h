// The sparse conv's register-tiled inner kernel, compiled once per instruction set: sparse_conv.cpp
// includes this file twice, inside namespace baseline and inside namespace avx2 under
// `#pragma GCC target("avx2,fma")` (no include guard on purpose). Compiled as AVX2 code from the
// start, GCC broadcasts a weight with one vbroadcastss; an always_inline helper compiled for the
// baseline and inlined into an AVX2 function builds the vector from eight inserts instead.
// Needs, declared before: Plan, SlabLayout, TileFn, kLanes, kMaxUnits, kMaxVectors, units_per_tile,
// and <algorithm>, <array>, <cstdint>, <cstring>, <utility>.

// 8 floats: one ymm register in the AVX2 build, two xmm registers in the baseline.
typedef float Vec __attribute__((vector_size(32)));

inline __attribute__((always_inline)) Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline __attribute__((always_inline)) Vec splat(float x) { return Vec{x, x, x, x, x, x, x, x}; }

inline __attribute__((always_inline)) void store_vec(float* p, Vec v, int lanes) {
  if (lanes >= kLanes) {
    std::memcpy(p, &v, sizeof v);
    return;
  }
  for (int i = 0; i < lanes; ++i) p[i] = v[i];
}

// The slabs of one (image, input channel) plane `src`, zero outside the image: contiguous copies, or
// for col_step > 1 one strided gather per column phase, with the bounds outside the loops.
void build_slabs(const float* src, float* dst, const SlabLayout& s) {
  for (std::int64_t i = 0; i < s.kinds_rows; ++i)
    for (std::int64_t j = 0; j < s.kinds_cols; ++j) {
      // Slab columns [c0, c1) lie in the image: c * col_step + j - pad in [0, width).
      const std::int64_t first = s.pad - j, end = s.width + s.pad - j;
      const std::int64_t c0 = std::clamp<std::int64_t>((first + s.col_step - 1) / s.col_step, 0, s.slab_pitch);
      const std::int64_t c1 = std::clamp<std::int64_t>((end + s.col_step - 1) / s.col_step, c0, s.slab_pitch);
      for (std::int64_t r = 0; r < s.slab_rows; ++r, dst += s.slab_pitch) {
        const std::int64_t y = r * s.row_step + i - s.pad;
        if (y < 0 || y >= s.height || c0 == c1) {
          std::fill(dst, dst + s.slab_pitch, 0.0f);
          continue;
        }
        const float* from = src + y * s.width + c0 * s.col_step + j - s.pad;
        std::fill(dst, dst + c0, 0.0f);
        if (s.col_step == 1) {
          std::memcpy(dst + c0, from, sizeof(float) * (c1 - c0));
        } else if (s.col_step == 2) {  // the stride of the presets' downsampling: a constant step vectorises
          for (std::int64_t c = 0; c < c1 - c0; ++c) dst[c0 + c] = from[2 * c];
        } else {
          for (std::int64_t c = 0; c < c1 - c0; ++c) dst[c0 + c] = from[c * s.col_step];
        }
        std::fill(dst + c1, dst + s.slab_pitch, 0.0f);
      }
    }
}

// Output channels [co_begin, co_end) of tile `tile`, R units of VR vectors. Units past the batch's last
// one repeat its reads and store nothing. Tiles of fewer than 4 vectors split a channel's weights over
// several sums so that multiply-adds overlap. One function per (R, VR): inlined into one big function,
// GCC allocated only 8 of the 16 ymm registers and spilled accumulators.
template <int R, int VR>
__attribute__((noinline)) void run_tile(const Plan& p, std::int64_t tile, std::int64_t co_begin, std::int64_t co_end) {
  constexpr int S = R * VR >= 4 ? 1 : 4 / (R * VR);  // independent sums per vector
  const float* in[R];
  float* out[R];
  int lanes[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const bool real = tile * R + r < p.units;
    const std::int64_t u = real ? tile * R + r : p.units - 1;
    const std::int64_t chunk = u % p.chunks, row = u / p.chunks % p.unit_rows, n = u / p.chunks / p.unit_rows;
    const std::int64_t column = chunk * VR * kLanes;
    in[r] = p.slabs + n * p.image_floats + row * p.unit_row_stride + column;
    out[r] = p.out + n * p.image_outputs + row * p.unit_len + column;
    lanes[r] = real ? static_cast<int>(std::min<std::int64_t>(VR * kLanes, p.unit_len - column)) : 0;
  }
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    const Vec zero = splat(0.0f);
    Vec acc[S][R][VR];
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < VR; ++v) acc[s][r][v] = zero;
    const std::int64_t first = p.row_ptr[co], count = p.row_ptr[co + 1] - first;
    const std::int32_t* offset = p.offsets + first;
    const float* value = p.values + first;
    std::int64_t k = 0;
    for (; k + S <= count; k += S)
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s) {
        const Vec w = splat(value[k + s]);
        const std::int64_t o = offset[k + s];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
          for (int v = 0; v < VR; ++v) acc[s][r][v] += w * load_vec(in[r] + o + v * kLanes);
      }
    for (; k < count; ++k) {  // S > 1 only
      const Vec w = splat(value[k]);
      const std::int64_t o = offset[k];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < VR; ++v) acc[0][r][v] += w * load_vec(in[r] + o + v * kLanes);
    }
    const Vec bias = splat(p.bias ? p.bias[co] : 0.0f);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < VR; ++v) {
        Vec sum = acc[0][r][v];
#pragma GCC unroll 4
        for (int s = 1; s < S; ++s) sum += acc[s][r][v];
        store_vec(out[r] + co * p.channel_stride + v * kLanes, sum + bias, lanes[r] - v * kLanes);
      }
  }
}

// run_tile<R, VR> for R = 1 .. kMaxUnits, clamped to units_per_tile(VR) (larger R is never asked for).
template <int VR, int... Rs>
constexpr std::array<TileFn, kMaxUnits> tiles_of_width(std::integer_sequence<int, Rs...>) {
  return {{&run_tile<std::min(Rs + 1, units_per_tile(VR)), VR>...}};
}

template <int... Vs>
constexpr std::array<std::array<TileFn, kMaxUnits>, kMaxVectors> all_tiles(std::integer_sequence<int, Vs...>) {
  return {{tiles_of_width<Vs + 1>(std::make_integer_sequence<int, kMaxUnits>{})...}};
}

// The kernel for tiles of `units` units (1 .. units_per_tile(vectors)) of `vectors` vectors (1 .. kMaxVectors).
inline TileFn tile_function(int vectors, int units) {
  static constexpr auto table = all_tiles(std::make_integer_sequence<int, kMaxVectors>{});
  return table[vectors - 1][units - 1];
}
