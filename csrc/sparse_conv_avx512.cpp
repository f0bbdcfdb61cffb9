// The sparse conv's AVX-512 build of 16-float vectors (sparse_conv_builds.cpp holds the baseline and
// AVX2 ones; sparse_conv_avx512_vl.cpp the AVX-512 path's 8-float build, which it runs where 8-wide rows
// fill those better): tails and lane sets as mask registers, and the flat tiles
// (sparse_conv_flat_tile.h) that pack a narrow row's outputs with a compress. Tile shapes for 32 zmm
// registers:
//  - a forward tile holds up to 28 accumulators (plus the broadcast weight; each input is a memory
//    operand of its multiply-add); its units each need a general register for their input pointer, so a
//    tile has at most 8 units: 16-wide rows run 8 rows of one vector, 32-wide ones 8 rows of two, the
//    flat 8x8 plane (5 vectors) 5 images of 5;
//  - a fused backward tile holds 14 accumulators, their 14 x vectors, the weight, the dot product and
//    the dy vector both use;
//  - the weight gradient 8 kept weights' accumulators per dy vector (8 input pointers).
// The multiply-adds fuse (-ffp-contract=fast for this file, CMakeLists.txt).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu_dispatch.h"
#include "sparse_conv.h"
#include "sparse_conv_kernels.h"

#ifdef PYLTH_ISA_VARIANTS

// The Vec helpers are inlined within the build; no Vec crosses a call between builds.
#pragma GCC diagnostic ignored "-Wpsabi"

PYLTH_BEGIN_AVX512
namespace pylth {
namespace sparse {
namespace {
namespace zmm {

constexpr int kLanes = 16;
constexpr int kTileVectors = 28, kFusedTileVectors = 14, kMaxUnits = 8, kGradGroup = 8;
typedef float Vec __attribute__((vector_size(4 * kLanes)));
using LaneMask = __mmask16;

inline __attribute__((always_inline)) Vec load_vec(const float* p) { return Vec(_mm512_loadu_ps(p)); }
inline __attribute__((always_inline)) void store_vec(float* p, Vec v) { _mm512_storeu_ps(p, __m512(v)); }
inline __attribute__((always_inline)) Vec splat(float x) { return Vec(_mm512_set1_ps(x)); }
inline __attribute__((always_inline)) LaneMask lanes_first(int f) {
  return static_cast<LaneMask>(_bzhi_u32(0xffffu, static_cast<unsigned>(f)));
}
inline __attribute__((always_inline)) LaneMask lanes_last(int f) {
  return static_cast<LaneMask>(~_bzhi_u32(0xffffu, static_cast<unsigned>(kLanes - f)));
}
inline __attribute__((always_inline)) int popcount_lanes(LaneMask m) { return __builtin_popcount(m); }
inline __attribute__((always_inline)) Vec load_first(const float* p, int n) {
  return Vec(_mm512_maskz_loadu_ps(lanes_first(n), p));
}
inline __attribute__((always_inline)) void store_first(float* p, Vec v, int n) {
  _mm512_mask_storeu_ps(p, lanes_first(n), __m512(v));
}
// A masked load reads nothing outside its lanes (no fault, no cost for them).
inline __attribute__((always_inline)) Vec load_masked(const float* p, LaneMask m) {
  return Vec(_mm512_maskz_loadu_ps(m, p));
}
inline __attribute__((always_inline)) Vec keep_lanes(Vec v, LaneMask m) { return Vec(_mm512_maskz_mov_ps(m, __m512(v))); }
inline __attribute__((always_inline)) LaneMask grad_lane_mask(const std::int32_t* words) {
  return _mm512_movepi32_mask(_mm512_loadu_si512(words));
}
// The register forms of compress and expand, with a masked move to or from memory: the memory forms are
// microcoded and slow on AMD's Zen 4.
inline __attribute__((always_inline)) void store_compressed(float* p, Vec v, LaneMask valid, LaneMask store) {
  _mm512_mask_storeu_ps(p, store, _mm512_maskz_compress_ps(valid, __m512(v)));
}
inline __attribute__((always_inline)) Vec load_expanded(const float* p, LaneMask valid, LaneMask store) {
  return Vec(_mm512_maskz_expand_ps(valid, _mm512_maskz_loadu_ps(store, p)));
}
// 16 floats at a time: one permute puts the even ones in the low half and the odd ones in the high.
inline void split_pairs(float* even, float* odd, const float* src, std::int64_t n) {
  const __m512i order = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_permutexvar_ps(order, _mm512_loadu_ps(src + i));
    _mm256_storeu_ps(even + i / 2, _mm512_castps512_ps256(v));
    _mm256_storeu_ps(odd + i / 2, _mm512_extractf32x8_ps(v, 1));
  }
  for (; i < n; ++i) (i % 2 ? odd : even)[i / 2] = src[i];
}

#include "sparse_conv_tile.h"
#include "sparse_conv_flat_tile.h"
#include "sparse_conv_grad_tile.h"

}  // namespace zmm
}  // namespace

const Kernels& avx512_kernels() {
  static const Kernels kernels{zmm::kLanes,         zmm::kTileVectors,      zmm::kFusedTileVectors,
                               zmm::kMaxUnits,      zmm::tile_function,     zmm::fused_function,
                               zmm::flat_tile_function, zmm::flat_fused_function, zmm::build_slab,
                               zmm::grad_channels,  zmm::sum_floats,        1.5,
                               &avx512_vl_kernels()};
  return kernels;
}

}  // namespace sparse
}  // namespace pylth
PYLTH_END_TARGET

#endif
