// Masked Adam's element loop for AVX-512: 16 floats a vector, the mask's bytes read as a mask register
// (a zeroing move clears the pruned lanes: no blend, and a NaN there still ends as 0), and the tail
// done by masked loads and stores instead of a scalar loop.
#include "adam_cpu.h"

#ifdef PYLTH_ISA_VARIANTS
#include <immintrin.h>

#include <cstdint>

PYLTH_BEGIN_AVX512
namespace pylth {
namespace {

struct AdamVectors {
  __m512 beta2, one_minus_beta1, one_minus_beta2, neg_step_size, bc2_sqrt, eps, l2_decay, decay_factor;
};

// `lanes` of the 16 elements at offset 0 (all of them but in the tail); `keep` the unmasked ones. The
// operations and their order are adam.cpp's portable loop's, so the results are the same bits.
template <bool kMasked>
inline __attribute__((always_inline)) void adam16(float* p, const float* g, float* m, float* v, __mmask16 lanes,
                                                  __mmask16 keep, const AdamVectors& c) {
  const __m512 pv = _mm512_maskz_loadu_ps(lanes, p), gv = _mm512_maskz_loadu_ps(lanes, g);
  const __m512 mv = _mm512_maskz_loadu_ps(lanes, m), vv = _mm512_maskz_loadu_ps(lanes, v);
  const __m512 grad = _mm512_add_ps(gv, _mm512_mul_ps(c.l2_decay, pv));
  const __m512 param = _mm512_mul_ps(pv, c.decay_factor);
  const __m512 mi = _mm512_add_ps(mv, _mm512_mul_ps(c.one_minus_beta1, _mm512_sub_ps(grad, mv)));
  const __m512 vi = _mm512_add_ps(_mm512_mul_ps(vv, c.beta2), _mm512_mul_ps(_mm512_mul_ps(c.one_minus_beta2, grad), grad));
  const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), c.bc2_sqrt), c.eps);
  const __m512 pi = _mm512_add_ps(param, _mm512_mul_ps(c.neg_step_size, _mm512_div_ps(mi, denom)));
  _mm512_mask_storeu_ps(p, lanes, kMasked ? _mm512_maskz_mov_ps(keep, pi) : pi);
  _mm512_mask_storeu_ps(m, lanes, kMasked ? _mm512_maskz_mov_ps(keep, mi) : mi);
  _mm512_mask_storeu_ps(v, lanes, kMasked ? _mm512_maskz_mov_ps(keep, vi) : vi);
}

inline __mmask16 nonzero_bytes(const std::uint8_t* mask, __mmask16 lanes) {
  const __m128i bytes = _mm_maskz_loadu_epi8(lanes, mask);
  return _mm_test_epi8_mask(bytes, bytes);
}

// Asks for the cache line `bytes` past `from` (a prefetch never faults, past the end of a tensor either).
inline void prefetch_ahead(const void* from, std::uintptr_t bytes) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(from) + bytes), _MM_HINT_T0);
}

template <bool kMasked>
void adam_loop(float* p, const float* g, float* m, float* v, const std::uint8_t* mask, std::int64_t n,
               const AdamVectors& c) {
  constexpr __mmask16 kAll = 0xffff;
  std::int64_t i = 0;
  // Two vectors a step: the loop is bound by memory and by the divider; the second vector's loads
  // start while the first one's divisions run. Prefetched 2 KB ahead in each of the five streams:
  // the hardware prefetcher stops at page boundaries (measured 5 % faster on a Zen 5 core).
  constexpr std::uintptr_t kAhead = 2048;
  for (; i + 32 <= n; i += 32) {
    for (const void* stream : {static_cast<const void*>(p + i), static_cast<const void*>(g + i),
                               static_cast<const void*>(m + i), static_cast<const void*>(v + i)}) {
      prefetch_ahead(stream, kAhead);
      prefetch_ahead(stream, kAhead + 64);
    }
    if (kMasked) prefetch_ahead(mask + i, kAhead / sizeof(float));
    adam16<kMasked>(p + i, g + i, m + i, v + i, kAll, kMasked ? nonzero_bytes(mask + i, kAll) : kAll, c);
    adam16<kMasked>(p + i + 16, g + i + 16, m + i + 16, v + i + 16, kAll,
                    kMasked ? nonzero_bytes(mask + i + 16, kAll) : kAll, c);
  }
  for (; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? kAll : static_cast<__mmask16>((1u << (n - i)) - 1);
    adam16<kMasked>(p + i, g + i, m + i, v + i, lanes, kMasked ? nonzero_bytes(mask + i, lanes) : lanes, c);
  }
}

}  // namespace

void adam_range_avx512(float* p, const float* g, float* m, float* v, const std::uint8_t* mask, std::int64_t n,
                       const AdamConsts& c) {
  const AdamVectors vc{_mm512_set1_ps(c.beta2),          _mm512_set1_ps(c.one_minus_beta1),
                       _mm512_set1_ps(c.one_minus_beta2), _mm512_set1_ps(-c.step_size),
                       _mm512_set1_ps(c.bc2_sqrt),        _mm512_set1_ps(c.eps),
                       _mm512_set1_ps(c.l2_decay),        _mm512_set1_ps(c.decay_factor)};
  if (mask)
    adam_loop<true>(p, g, m, v, mask, n, vc);
  else
    adam_loop<false>(p, g, m, v, nullptr, n, vc);
}

}  // namespace pylth
PYLTH_END_TARGET
#endif
