// The sparse conv's weight-gradient kernel, compiled once per instruction set like sparse_conv_tile.h
// (included right after it, in the same namespaces; no include guard on purpose).
// Needs, declared before: GradPlan, kLanes, kGradTileUnits, kGradGroup (this build's kept weights per
// group: as many accumulators as its registers hold beside the dy vector), and sparse_conv_tile.h's Vec
// helpers, <array> and <utility>.
//
// dL/dw of kept weight k (output channel co, input offset o_k) is one dot product over the batch's
// outputs: sum over output positions q of dy[co][q] * slabs[q + o_k], the same pairing of outputs and
// inputs the forward uses. A tile is a run of units (unit rows, or chunks of long ones) whose inputs
// stay in cache while every output channel of a block passes; for each channel, G <= 8 kept weights at
// a time hold one accumulator each, so that each dy vector is loaded once and multiplies G inputs
// (G = kGradGroup: 8 ymm registers in the AVX2 build, 4 pairs of xmm registers in the baseline).

// Lane j of the result: the sum of the lanes of a[j] for j < G, 0 beyond. Three rounds of shuffles and
// adds: a pair's lanes, then a quad's, then the two halves (21 operations for 8 vectors instead of 8
// horizontal sums of 6 each).
template <int G>
inline __attribute__((always_inline)) Vec lane_sums(const Vec* a) {
  Vec v[8];
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) v[j] = j < G ? a[j] : splat(0.0f);
  Vec pairs[4], quads[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // [v0(0+2), v1(0+2), v0(1+3), v1(1+3) | v0(4+6), v1(4+6), v0(5+7), v1(5+7)]
    pairs[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // [v0(0..3), v1(0..3), v2(0..3), v3(0..3) | the same of lanes 4..7]
    quads[i] = __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(pairs[2 * i], pairs[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(quads[0], quads[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(quads[0], quads[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// Where the units of one tile read: the slabs at the unit's first output, dy of output channel 0 there,
// and how many whole vectors and trailing floats the unit has.
struct GradUnits {
  int count;
  const float* in[kGradTileUnits];
  const float* dy[kGradTileUnits];
  int full[kGradTileUnits], tail[kGradTileUnits];
};

// grad[0 .. G) += the tile's dot products of dy (channel offset `channel`) with the inputs at offset[0 .. G).
// One function per G: GCC then keeps the G accumulators and the dy vector in registers.
template <int G>
__attribute__((noinline)) void grad_group(const GradUnits& t, std::int64_t channel, const std::int32_t* offset,
                                          float* grad) {
  const Vec zero = splat(0.0f);
  Vec acc[G];
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) acc[j] = zero;
  std::int64_t o[G];
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) o[j] = offset[j];
  for (int r = 0; r < t.count; ++r) {
    const float* dy = t.dy[r] + channel;
    const float* in = t.in[r];
    const int full = t.full[r];
    for (int v = 0; v < full; ++v, dy += kLanes, in += kLanes) {
      const Vec d = load_vec(dy);
#pragma GCC unroll 8
      for (int j = 0; j < G; ++j) acc[j] += d * load_vec(in + o[j]);
    }
    if (t.tail[r]) {  // dy's lanes past the unit are not read: they are 0 here, so the inputs there add nothing
      Vec d = zero;
      std::memcpy(&d, dy, sizeof(float) * t.tail[r]);
#pragma GCC unroll 8
      for (int j = 0; j < G; ++j) acc[j] += d * load_vec(in + o[j]);
    }
  }
  const Vec sums = lane_sums<G>(acc);
  if (G == kLanes) {
    store_vec(grad, load_vec(grad) + sums, kLanes);
  } else {
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) grad[j] += sums[j];
  }
}

using GroupFn = void (*)(const GradUnits& t, std::int64_t channel, const std::int32_t* offset, float* grad);

template <int... Gs>
constexpr std::array<GroupFn, sizeof...(Gs)> group_functions(std::integer_sequence<int, Gs...>) {
  return {{&grad_group<Gs + 1>...}};
}

// The weight gradient of output channels [co_begin, co_end) over units [u_begin, u_end) of a group.
void grad_tile(const GradPlan& p, std::int64_t u_begin, std::int64_t u_end, std::int64_t co_begin,
               std::int64_t co_end) {
  GradUnits t;
  t.count = static_cast<int>(u_end - u_begin);
  for (int r = 0; r < t.count; ++r) {
    const std::int64_t u = u_begin + r;
    const std::int64_t chunk = u % p.chunks, row = u / p.chunks % p.unit_rows, n = u / p.chunks / p.unit_rows;
    const std::int64_t column = chunk * p.chunk_vectors * kLanes;
    const std::int64_t floats = std::min(p.chunk_vectors * kLanes, p.unit_len - column);
    t.in[r] = p.slabs + n * p.image_floats + row * p.unit_row_stride + column;
    t.dy[r] = p.grad_out + n * p.image_outputs + row * p.unit_len + column;
    t.full[r] = static_cast<int>(floats / kLanes);
    t.tail[r] = static_cast<int>(floats % kLanes);
  }
  static constexpr auto groups = group_functions(std::make_integer_sequence<int, kGradGroup>{});
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    const std::int64_t end = p.row_ptr[co + 1], channel = co * p.channel_stride;
    for (std::int64_t k = p.row_ptr[co]; k < end; k += kGradGroup)
      groups[std::min<std::int64_t>(kGradGroup, end - k) - 1](t, channel, p.offsets + k, p.grad + k);
  }
}
