// The sparse conv's weight-gradient kernel, compiled once per instruction set like sparse_conv_tile.h
// (included right after it, in the same namespaces; no include guard on purpose). Needs, declared
// before: GradArgs, GroupFn, kGradGroup (this build's kept weights per group: as many accumulators as
// its registers hold beside the dy vector, and as many input pointers as its general registers hold),
// kGradAccFloats, sparse_conv_tile.h's helpers, and grad_lane_mask(words): the LaneMask of a row of
// GradArgs::masks.
//
// dL/dw of kept weight k (output channel co, input offset o_k) is one dot product over the batch's
// outputs: the sum over unit rows r and outputs c of dy[co][r][c] * slab[o_k + r * in_row_stride + c],
// the pairing of outputs and inputs the forward uses. Up to G weights of one output channel at a time
// hold one accumulator each, so that each dy vector is loaded once and multiplies G inputs. The vectors
// of an image come from a list of positions (GradPosition), so that one loop without branches covers
// whole vectors, rows' overlapping last vectors and rows shorter than a vector alike: dy is read with a
// masked load, which also reads nothing past a short row. Each weight's kLanes partial sums are added
// into its accumulator row; the entry points sum the lanes at the end, so every weight's sum is taken in
// one order, whatever the thread count.

template <int G>
__attribute__((noinline)) void grad_group(const GradArgs& p, std::int64_t co, const std::int32_t* offsets,
                                          float* acc) {
  Vec a[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) a[g] = splat(0.0f);
  std::int64_t o[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) o[g] = offsets[g];
  LaneMask masks[kGradMasks];
#pragma GCC unroll 4
  for (int m = 0; m < kGradMasks; ++m) masks[m] = grad_lane_mask(p.masks[m]);
  const GradPosition* const last = p.positions + p.position_count;
  for (std::int64_t n = 0; n < p.images; ++n) {
    const float* dy = p.dy + n * p.g.out_image + co * p.g.out_pitch;
    // One base per weight, the position as the index: each product is one multiply-add with its load.
    const float* in[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) in[g] = p.slabs + n * p.g.image_floats + o[g];
    for (const GradPosition* q = p.positions; q != last; ++q) {
      const Vec d = load_masked(dy + q->dy, masks[q->mask]);
      const std::int64_t at = q->x;
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) a[g] += d * load_vec(in[g] + at);
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) store_vec(acc + g * kGradAccFloats, load_vec(acc + g * kGradAccFloats) + a[g]);
}

template <int... Gs>
constexpr std::array<GroupFn, sizeof...(Gs)> group_functions(std::integer_sequence<int, Gs...>) {
  return {{&grad_group<Gs + 1>...}};
}

// Adds the group's dot products of output channels [co_begin, co_end) into the accumulators.
inline void grad_channels(const GradArgs& p, std::int64_t co_begin, std::int64_t co_end) {
  static constexpr auto groups = group_functions(std::make_integer_sequence<int, kGradGroup>{});
  for (std::int64_t co = co_begin; co < co_end; ++co) {
    const std::int64_t end = p.row_ptr[co + 1];
    for (std::int64_t k = p.row_ptr[co]; k < end; k += kGradGroup)
      groups[std::min<std::int64_t>(kGradGroup, end - k) - 1](p, co, p.offsets + k, p.acc + k * kGradAccFloats);
  }
}
