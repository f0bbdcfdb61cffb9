// The selection's pass over a segment for AVX-512 (DecideFn in select_cpu.h): 64 entries a step, one
// bit each in a 64-bit mask register. The mask bytes are tested in one vector, the keys compared in
// four; the output bytes are written from the mask in one store, the counts are popcounts, and the
// rare candidates are read off the mask's bits. Tails are masked loads and stores.
#include "select_cpu.h"

#ifdef PYLTH_ISA_VARIANTS
#include <immintrin.h>

#include <cstdint>
#include <vector>

PYLTH_BEGIN_AVX512
namespace pylth {
namespace {

// 64 entries from `start` on, those in `lanes` (all of them but in the tail).
template <bool kHasMask, bool kTail>
inline __attribute__((always_inline)) void decide64(const Segment& s, int64_t start, __mmask64 lanes, __m512i vlo,
                                                    __m512i width, __m512i& largest, int64_t& active, int64_t& below,
                                                    std::vector<uint64_t>& candidates) {
  const __m512i abs_bits = _mm512_set1_epi32(static_cast<int>(kAbsBits));
  __mmask64 on = lanes;
  if constexpr (kHasMask) {
    const __m512i flags = kTail ? _mm512_maskz_loadu_epi8(lanes, s.mask + start) : _mm512_loadu_si512(s.mask + start);
    on = _mm512_test_epi8_mask(flags, flags);
  }
  uint64_t at_least_lo = 0, inside = 0;
  for (int q = 0; q < 4; ++q) {
    const uint32_t* bits = s.bits + start + 16 * q;
    const __m512i raw = kTail ? _mm512_maskz_loadu_epi32(static_cast<__mmask16>(lanes >> (16 * q)), bits)
                              : _mm512_loadu_si512(bits);
    const __m512i key = _mm512_and_si512(raw, abs_bits);
    largest = _mm512_max_epu32(largest, key);
    at_least_lo |= uint64_t(_mm512_cmpge_epu32_mask(key, vlo)) << (16 * q);
    inside |= uint64_t(_mm512_cmplt_epu32_mask(_mm512_sub_epi32(key, vlo), width)) << (16 * q);
  }
  const __m512i kept = _mm512_maskz_mov_epi8(at_least_lo & on, _mm512_set1_epi8(1));
  if (kTail)
    _mm512_mask_storeu_epi8(s.out + start, lanes, kept);
  else
    _mm512_storeu_si512(s.out + start, kept);
  active += __builtin_popcountll(on);
  below += __builtin_popcountll(on & ~at_least_lo);
  for (uint64_t hit = inside & on; hit != 0; hit &= hit - 1) {
    const int64_t j = start + __builtin_ctzll(hit);
    candidates.push_back((uint64_t(s.bits[j] & kAbsBits) << kIndexBits) | uint64_t(s.base + j));
  }
}

template <bool kHasMask>
void decide(const Segment& s, uint32_t lo, uint32_t hi, PassCounts& counts, std::vector<uint64_t>& candidates) {
  const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo));
  const __m512i width = _mm512_set1_epi32(static_cast<int>(hi - lo));
  __m512i largest = _mm512_setzero_si512();  // the largest key: inf or NaN when >= kInfKey
  int64_t active = 0, below = 0, start = 0;
  for (; start + 64 <= s.size; start += 64)
    decide64<kHasMask, false>(s, start, ~__mmask64(0), vlo, width, largest, active, below, candidates);
  if (start < s.size)
    decide64<kHasMask, true>(s, start, (__mmask64(1) << (s.size - start)) - 1, vlo, width, largest, active, below,
                             candidates);
  counts.active += active;
  counts.below += below;
  counts.nonfinite = counts.nonfinite || _mm512_reduce_max_epu32(largest) >= kInfKey;
}

}  // namespace

void decide_segment_avx512(const Segment& s, uint32_t lo, uint32_t hi, PassCounts& counts,
                           std::vector<uint64_t>& candidates) {
  if (s.mask)
    decide<true>(s, lo, hi, counts, candidates);
  else
    decide<false>(s, lo, hi, counts, candidates);
}

}  // namespace pylth
PYLTH_END_TARGET
#endif
