// The CPU CKA's loops per path (cka_cpu.h): the portable loops of cka_loops.h built for the baseline
// x86-64 and for AVX2, AVX2's bracket gather written with intrinsics, and the choice by path.
#include "cka_cpu.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef PYLTH_ISA_VARIANTS
#include <immintrin.h>
#endif

namespace pylth {
namespace {

namespace baseline {
#include "cka_loops.h"
}  // namespace baseline

const CkaLoops kBaselineLoops = {baseline::squared_distances,
                                 baseline::hsic_row,
                                 baseline::gather_bracket,
                                 baseline::scan_nonzeros<float>,
                                 baseline::scan_nonzeros<double>,
                                 baseline::count_nonzeros<float>,
                                 baseline::count_nonzeros<double>,
                                 nullptr};

#ifdef PYLTH_ISA_VARIANTS
PYLTH_BEGIN_AVX2
namespace avx2 {
#include "cka_loops.h"

// The bracket gather four values a step: x86 has no compress instruction before AVX-512, so the kept
// values are packed to the front by a permutation looked up by their 4-bit mask. 4x faster than the
// portable loop, whose store depends on the previous step's count.
int64_t gather_bracket_packed(const double* u, int64_t m, double low, double high, double* gathered, int64_t& below) {
  struct Table {  // lane order (as pairs of 32-bit halves) that packs the selected doubles first
    alignas(32) int32_t perm[16][8];
    constexpr Table() : perm{} {
      for (int mask = 0; mask < 16; ++mask) {
        int slot = 0;
        for (int lane = 0; lane < 4; ++lane)
          if (mask >> lane & 1) perm[mask][2 * slot] = 2 * lane, perm[mask][2 * slot + 1] = 2 * lane + 1, ++slot;
      }
    }
  };
  static constexpr Table kTable;
  const __m256d vlow = _mm256_set1_pd(low), vhigh = _mm256_set1_pd(high);
  __m256i below_lanes = _mm256_setzero_si256();
  int64_t count = 0, e = 0;
  // The store writes four values at gathered + count <= gathered + e: within the first m.
  for (; e + 4 <= m; e += 4) {
    const __m256d v = _mm256_loadu_pd(u + e);
    const __m256d lt = _mm256_cmp_pd(v, vlow, _CMP_LT_OQ);
    const __m256d in = _mm256_and_pd(_mm256_cmp_pd(v, vlow, _CMP_GE_OQ), _mm256_cmp_pd(v, vhigh, _CMP_LE_OQ));
    below_lanes = _mm256_sub_epi64(below_lanes, _mm256_castpd_si256(lt));  // a true compare is -1
    const int mask = _mm256_movemask_pd(in);
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTable.perm[mask]));
    _mm256_storeu_pd(gathered + count, _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), perm)));
    count += __builtin_popcount(mask);
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), below_lanes);
  int64_t tail_below;
  count += gather_bracket(u + e, m - e, low, high, gathered + count, tail_below);
  below = lanes[0] + lanes[1] + lanes[2] + lanes[3] + tail_below;
  return count;
}
}  // namespace avx2
PYLTH_END_TARGET

const CkaLoops kAvx2Loops = {avx2::squared_distances,
                             avx2::hsic_row,
                             avx2::gather_bracket_packed,
                             avx2::scan_nonzeros<float>,
                             avx2::scan_nonzeros<double>,
                             avx2::count_nonzeros<float>,
                             avx2::count_nonzeros<double>,
                             nullptr};
#endif

}  // namespace

const CkaLoops& cka_loops(CpuIsa isa) {
  switch (isa) {
#ifdef PYLTH_ISA_VARIANTS
    case CpuIsa::avx512: return kCkaLoopsAvx512;
    case CpuIsa::avx2: return kAvx2Loops;
#endif
    default: return kBaselineLoops;
  }
}

}  // namespace pylth
