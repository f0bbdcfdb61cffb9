// The sparse conv's kernels (sparse_conv_tile.h, sparse_conv_grad_tile.h), built once per instruction
// set: each namespace below declares its vector width and the few helpers that differ, then includes
// the kernels. The vector width and the tile shapes are compile-time constants of a build. This file
// holds the baseline and AVX2 builds; sparse_conv_avx512.cpp the AVX-512 one (16 lanes, mask registers,
// the flat tiles of sparse_conv_flat_tile.h). kernels_for() picks one per call (csrc/cpu_dispatch.h).
// The multiply-adds may fuse (FMA in the AVX2 build; see CMakeLists.txt): results need fp32 tolerance.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu_dispatch.h"
#include "sparse_conv.h"
#include "sparse_conv_kernels.h"

// The Vec helpers are inlined within each build; no Vec crosses a call between builds.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace pylth {
namespace sparse {
namespace {

// Lane sets of the builds without mask registers: rows of kLanes int32 words, all ones in the lanes the
// set holds. last[f] holds the last f lanes, first[f] the first f.
template <int kLanes>
struct WordMasks {
  std::int32_t last[kLanes + 1][kLanes], first[kLanes + 1][kLanes];
};
template <int kLanes>
constexpr WordMasks<kLanes> make_word_masks() {
  WordMasks<kLanes> m{};
  for (int f = 0; f <= kLanes; ++f)
    for (int lane = 0; lane < kLanes; ++lane) {
      m.last[f][lane] = lane >= kLanes - f ? -1 : 0;
      m.first[f][lane] = lane < f ? -1 : 0;
    }
  return m;
}
template <int kLanes>
inline constexpr WordMasks<kLanes> kWordMasks = make_word_masks<kLanes>();

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
using LaneMask = const std::int32_t*;
inline LaneMask lanes_first(int f) { return kWordMasks<kLanes>.first[f]; }
inline LaneMask lanes_last(int f) { return kWordMasks<kLanes>.last[f]; }
inline LaneMask grad_lane_mask(const std::int32_t* words) { return words; }
inline __attribute__((always_inline)) Vec keep_lanes(Vec v, LaneMask mask) {
  typedef std::int32_t IVec __attribute__((vector_size(4 * kLanes)));
  IVec m;
  std::memcpy(&m, mask, sizeof m);
  return (Vec)((IVec)v & m);
}
inline __attribute__((always_inline)) Vec load_masked(const float* p, LaneMask mask) {
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
// moves. GCC on x86-64 only: other compilers keep the baseline build.
#ifdef PYLTH_ISA_VARIANTS
PYLTH_BEGIN_AVX2
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
using LaneMask = const std::int32_t*;
inline LaneMask lanes_first(int f) { return kWordMasks<kLanes>.first[f]; }
inline LaneMask lanes_last(int f) { return kWordMasks<kLanes>.last[f]; }
inline LaneMask grad_lane_mask(const std::int32_t* words) { return words; }
inline __attribute__((always_inline)) Vec load_masked(const float* p, LaneMask mask) {
  return Vec(_mm256_maskload_ps(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask))));
}
inline __attribute__((always_inline)) Vec keep_lanes(Vec v, LaneMask mask) {
  return Vec(_mm256_and_ps(__m256(v), _mm256_loadu_ps(reinterpret_cast<const float*>(mask))));
}
#include "sparse_conv_split_pairs8.h"
#include "sparse_conv_tile.h"
#include "sparse_conv_grad_tile.h"
}  // namespace avx2
PYLTH_END_TARGET
#endif

}  // namespace

const Kernels& kernels_for(CpuIsa isa) {
  static const Kernels baseline_kernels{baseline::kLanes, baseline::kTileVectors, baseline::kFusedTileVectors,
                                        baseline::kMaxUnits, baseline::tile_function, baseline::fused_function,
                                        nullptr, nullptr, baseline::build_slab, baseline::grad_channels,
                                        baseline::sum_floats, 2.0, nullptr};
#ifdef PYLTH_ISA_VARIANTS
  static const Kernels avx2_kernels{avx2::kLanes, avx2::kTileVectors, avx2::kFusedTileVectors, avx2::kMaxUnits,
                                    avx2::tile_function, avx2::fused_function, nullptr, nullptr,
                                    avx2::build_slab, avx2::grad_channels, avx2::sum_floats, 1.0, nullptr};
  switch (isa) {
    case CpuIsa::avx512: return avx512_kernels();
    case CpuIsa::avx2: return avx2_kernels;
    default: break;
  }
#else
  (void)isa;
#endif
  return baseline_kernels;
}

}  // namespace sparse
}  // namespace pylth
