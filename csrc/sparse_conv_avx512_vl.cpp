// The AVX-512 path's 8-float build of the sparse conv's kernels (AVX-512VL: ymm vectors with mask
// registers, compress and expand, and 32 of them). The path runs it where a row fills 8 lanes better
// than 16 (8-wide rows, a batch of 8 in the linear, ...): a 16-float multiply-add with its load costs
// about 1.5 times an 8-float one here (Kernels::vector_cost), so half-empty zmm vectors lose to full ymm
// ones. Beside AVX2's build it has twice the registers: tiles of up to 28 accumulators (fused backward:
// 14 and their x vectors), and the flat tiles (sparse_conv_flat_tile.h). The multiply-adds fuse
// (-ffp-contract=fast for this file, CMakeLists.txt), as in the other builds.
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
namespace ymm {

constexpr int kLanes = 8;
constexpr int kTileVectors = 28, kFusedTileVectors = 14, kMaxUnits = 8, kGradGroup = 8;
typedef float Vec __attribute__((vector_size(4 * kLanes)));
using LaneMask = __mmask8;

inline __attribute__((always_inline)) Vec load_vec(const float* p) { return Vec(_mm256_loadu_ps(p)); }
inline __attribute__((always_inline)) void store_vec(float* p, Vec v) { _mm256_storeu_ps(p, __m256(v)); }
inline __attribute__((always_inline)) Vec splat(float x) { return Vec(_mm256_set1_ps(x)); }
inline __attribute__((always_inline)) LaneMask lanes_first(int f) {
  return static_cast<LaneMask>(_bzhi_u32(0xffu, static_cast<unsigned>(f)));
}
inline __attribute__((always_inline)) LaneMask lanes_last(int f) {
  return static_cast<LaneMask>(~_bzhi_u32(0xffu, static_cast<unsigned>(kLanes - f)));
}
inline __attribute__((always_inline)) int popcount_lanes(LaneMask m) { return __builtin_popcount(m); }
inline __attribute__((always_inline)) Vec load_first(const float* p, int n) {
  return Vec(_mm256_maskz_loadu_ps(lanes_first(n), p));
}
inline __attribute__((always_inline)) void store_first(float* p, Vec v, int n) {
  _mm256_mask_storeu_ps(p, lanes_first(n), __m256(v));
}
inline __attribute__((always_inline)) Vec load_masked(const float* p, LaneMask m) {
  return Vec(_mm256_maskz_loadu_ps(m, p));
}
inline __attribute__((always_inline)) Vec keep_lanes(Vec v, LaneMask m) { return Vec(_mm256_maskz_mov_ps(m, __m256(v))); }
inline __attribute__((always_inline)) LaneMask grad_lane_mask(const std::int32_t* words) {
  return _mm256_movepi32_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(words)));
}
// Register forms of compress and expand (the memory forms are microcoded on AMD's Zen 4).
inline __attribute__((always_inline)) void store_compressed(float* p, Vec v, LaneMask valid, LaneMask store) {
  _mm256_mask_storeu_ps(p, store, _mm256_maskz_compress_ps(valid, __m256(v)));
}
inline __attribute__((always_inline)) Vec load_expanded(const float* p, LaneMask valid, LaneMask store) {
  return Vec(_mm256_maskz_expand_ps(valid, _mm256_maskz_loadu_ps(store, p)));
}
#include "sparse_conv_split_pairs8.h"

#include "sparse_conv_tile.h"
#include "sparse_conv_flat_tile.h"
#include "sparse_conv_grad_tile.h"

}  // namespace ymm
}  // namespace

const Kernels& avx512_vl_kernels() {
  static const Kernels kernels{ymm::kLanes,        ymm::kTileVectors,       ymm::kFusedTileVectors,
                               ymm::kMaxUnits,     ymm::tile_function,      ymm::fused_function,
                               ymm::flat_tile_function, ymm::flat_fused_function, ymm::build_slab,
                               ymm::grad_channels, ymm::sum_floats,         1.0,
                               nullptr};
  return kernels;
}

}  // namespace sparse
}  // namespace pylth
PYLTH_END_TARGET

#endif
