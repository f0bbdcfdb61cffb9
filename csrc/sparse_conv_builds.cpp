// The sparse conv's kernels (sparse_conv_tile.h, sparse_conv_grad_tile.h), built once per instruction
// set: each namespace below declares its vector width and the few helpers that differ, then includes
// the kernels. The vector width and the tile shapes are compile-time constants of a build, so a wider
// build (AVX-512: 16 lanes, masked stores) is one more namespace and one more line in best_kernels().
// The multiply-adds may fuse (FMA in the AVX2 build; see CMakeLists.txt): results need fp32 tolerance.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu_dispatch.h"
#include "sparse_conv.h"
#include "sparse_conv_kernels.h"

#ifdef PYLTH_X86_DISPATCH
#include <immintrin.h>
#endif

// The Vec helpers are inlined within each build; no Vec crosses a call between builds.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace pylth {
namespace sparse {
namespace {

namespace baseline {
// 8 floats in two xmm registers: half the AVX2 build's tiles fit the 16 xmm registers.
constexpr int kLanes = 8;
constexpr int kTileVectors = 6, kFusedTileVectors = 3, kMaxUnits = 6, kGradGroup = 4;
typedef float Vec __attribute__((vector_size(4 * kLanes)));

inline __attribute__((always_inline)) Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) void store_vec(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
inline __attribute__((always_inline)) Vec splat(float x) { return Vec{} + x; }
inline __attribute__((always_inline)) Vec load_first(const float* p, int n) {
  Vec v{};
  for (int i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
inline __attribute__((always_inline)) void store_first(float* p, Vec v, int n) {
  for (int i = 0; i < n; ++i) p[i] = v[i];
}
inline __attribute__((always_inline)) Vec and_bits(Vec v, const std::int32_t* mask) {
  typedef std::int32_t IVec __attribute__((vector_size(4 * kLanes)));
  IVec m;
  std::memcpy(&m, mask, sizeof m);
  return (Vec)((IVec)v & m);
}
inline __attribute__((always_inline)) Vec load_masked(const float* p, const std::int32_t* mask) {
  Vec v{};
  for (int i = 0; i < kLanes; ++i)
    if (mask[i]) v[i] = p[i];
  return v;
}
inline void split_pairs(float* even, float* odd, const float* src, std::int64_t n) {
  for (std::int64_t i = 0; 2 * i < n; ++i) {
    even[i] = src[2 * i];
    if (2 * i + 1 < n) odd[i] = src[2 * i + 1];
  }
}
#include "sparse_conv_tile.h"
#include "sparse_conv_grad_tile.h"
}  // namespace baseline

// The AVX2 + FMA build. Compiled as AVX2 code from the start (target pragma around the namespace),
// GCC broadcasts a weight with one vbroadcastss and the partial loads and stores are single masked
// moves. GCC only: other compilers keep the baseline build.
#if defined(PYLTH_X86_DISPATCH) && !defined(__clang__)
#define PYLTH_SPARSE_CONV_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
// 16 ymm registers: 12 accumulators, the broadcast weight and temporaries; a fused backward tile holds
// 6 accumulators and its 6 input vectors.
constexpr int kLanes = 8;
constexpr int kTileVectors = 12, kFusedTileVectors = 6, kMaxUnits = 8, kGradGroup = 8;
typedef float Vec __attribute__((vector_size(4 * kLanes)));

inline __attribute__((always_inline)) Vec load_vec(const float* p) { return Vec(_mm256_loadu_ps(p)); }
inline __attribute__((always_inline)) void store_vec(float* p, Vec v) { _mm256_storeu_ps(p, __m256(v)); }
inline __attribute__((always_inline)) Vec splat(float x) { return Vec(_mm256_set1_ps(x)); }
// The first n lanes as a mask: lane i is all ones when i < n.
inline __attribute__((always_inline)) __m256i first_lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __attribute__((always_inline)) Vec load_first(const float* p, int n) {
  return Vec(_mm256_maskload_ps(p, first_lanes(n)));
}
inline __attribute__((always_inline)) void store_first(float* p, Vec v, int n) {
  _mm256_maskstore_ps(p, first_lanes(n), __m256(v));
}
inline __attribute__((always_inline)) Vec load_masked(const float* p, const std::int32_t* mask) {
  return Vec(_mm256_maskload_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask))));
}
inline __attribute__((always_inline)) Vec and_bits(Vec v, const std::int32_t* mask) {
  return Vec(_mm256_and_ps(__m256(v), _mm256_loadu_ps(reinterpret_cast<const float*>(mask))));
}
// Eight floats at a time: one permute puts the even ones in the low half and the odd ones in the high.
inline void split_pairs(float* even, float* odd, const float* src, std::int64_t n) {
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(src + i), order);
    _mm_storeu_ps(even + i / 2, _mm256_castps256_ps128(v));
    _mm_storeu_ps(odd + i / 2, _mm256_extractf128_ps(v, 1));
  }
  for (; i < n; ++i) (i % 2 ? odd : even)[i / 2] = src[i];
}
#include "sparse_conv_tile.h"
#include "sparse_conv_grad_tile.h"
}  // namespace avx2
#pragma GCC pop_options
#endif

template <int kLanes, int kTile, int kFused, int kUnits>
constexpr Kernels kernels_of(TileFn (*tile)(int, int), FusedFn (*fused)(int, int),
                             void (*slab)(const float*, float*, const SlabLayout&),
                             void (*grad)(const GradArgs&, std::int64_t, std::int64_t),
                             float (*sum)(const float*, std::int64_t)) {
  return Kernels{kLanes, kTile, kFused, kUnits, tile, fused, slab, grad, sum};
}

}  // namespace

const Kernels& best_kernels() {
  static const Kernels chosen = [] {
#ifdef PYLTH_SPARSE_CONV_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return kernels_of<avx2::kLanes, avx2::kTileVectors, avx2::kFusedTileVectors, avx2::kMaxUnits>(
          avx2::tile_function, avx2::fused_function, avx2::build_slab, avx2::grad_channels, avx2::sum_floats);
#endif
    return kernels_of<baseline::kLanes, baseline::kTileVectors, baseline::kFusedTileVectors, baseline::kMaxUnits>(
        baseline::tile_function, baseline::fused_function, baseline::build_slab, baseline::grad_channels,
        baseline::sum_floats);
  }();
  return chosen;
}

}  // namespace sparse
}  // namespace pylth
