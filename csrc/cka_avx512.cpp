// The CPU CKA's loops for AVX-512 (cka_cpu.h): 8 doubles or 16 floats a vector, mask registers for
// tails, and compress instructions where the portable loops pack values through a table or a branch.
// The RBF exp is fused into the HSIC sums: a row's kernel values never go through memory.
#include "cka_cpu.h"

#ifdef PYLTH_ISA_VARIANTS
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

PYLTH_BEGIN_AVX512
namespace pylth {
namespace {

// exp(x) for x <= 0, 8 at a time: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite), exp(r) by its Taylor
// series to r^13 in Estrin's scheme with FMAs, then times 2^n by vscalefpd, which also gives the
// subnormals and 0 far below (x is clamped first so that n stays an ordinary number).
inline __m512d exp_nonpositive8(__m512d x) {
  const __m512d xc = _mm512_max_pd(x, _mm512_set1_pd(-746.0));
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(xc, _mm512_set1_pd(1.4426950408889634)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), xc);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
  const __m512d r2 = _mm512_mul_pd(r, r), r4 = _mm512_mul_pd(r2, r2), r8 = _mm512_mul_pd(r4, r4);
  const __m512d q0 = _mm512_add_pd(_mm512_set1_pd(1.0), r);
  const __m512d q1 = _mm512_fmadd_pd(r, _mm512_set1_pd(1.0 / 6), _mm512_set1_pd(1.0 / 2));
  const __m512d q2 = _mm512_fmadd_pd(r, _mm512_set1_pd(1.0 / 120), _mm512_set1_pd(1.0 / 24));
  const __m512d q3 = _mm512_fmadd_pd(r, _mm512_set1_pd(1.0 / 5040), _mm512_set1_pd(1.0 / 720));
  const __m512d q4 = _mm512_fmadd_pd(r, _mm512_set1_pd(1.0 / 362880), _mm512_set1_pd(1.0 / 40320));
  const __m512d q5 = _mm512_fmadd_pd(r, _mm512_set1_pd(1.0 / 39916800), _mm512_set1_pd(1.0 / 3628800));
  const __m512d q6 = _mm512_fmadd_pd(r, _mm512_set1_pd(1.0 / 6227020800), _mm512_set1_pd(1.0 / 479001600));
  const __m512d s0 = _mm512_fmadd_pd(r2, q1, q0), s1 = _mm512_fmadd_pd(r2, q3, q2), s2 = _mm512_fmadd_pd(r2, q5, q4);
  const __m512d p = _mm512_fmadd_pd(r8, _mm512_fmadd_pd(r4, q6, s2), _mm512_fmadd_pd(r4, s1, s0));
  return _mm512_scalef_pd(p, n);
}

// The portable loop's operations (no FMA), so every path's distances are the same bits.
void squared_distances(double* row, const double* diag_right, double gii, int64_t count) {
  const __m512d g = _mm512_set1_pd(gii), two = _mm512_set1_pd(2.0), zero = _mm512_setzero_pd();
  for (int64_t k = 0; k < count; k += 8) {
    const __mmask8 lanes = count - k >= 8 ? 0xff : static_cast<__mmask8>((1u << (count - k)) - 1);
    const __m512d sum = _mm512_add_pd(g, _mm512_maskz_loadu_pd(lanes, diag_right + k));
    const __m512d d2 = _mm512_sub_pd(sum, _mm512_mul_pd(two, _mm512_maskz_loadu_pd(lanes, row + k)));
    _mm512_mask_storeu_pd(row + k, lanes, _mm512_max_pd(zero, d2));  // std::max(d2, 0) (NaN stays)
  }
}

inline double sum8(__m512d v) { return _mm512_reduce_add_pd(v); }

template <bool kRbf>
RowSums hsic_row_fused(const double* gx, const double* gy, int64_t count, double x_scale, double y_scale, double* rk,
                       double* rl) {
  const __m512d sx = _mm512_set1_pd(x_scale), sy = _mm512_set1_pd(y_scale);
  __m512d kl = _mm512_setzero_pd(), kk = kl, ll = kl, ks = kl, ls = kl;
  for (int64_t j = 0; j < count; j += 8) {
    const __mmask8 lanes = count - j >= 8 ? 0xff : static_cast<__mmask8>((1u << (count - j)) - 1);
    __m512d k = _mm512_maskz_loadu_pd(lanes, gx + j), l = _mm512_maskz_loadu_pd(lanes, gy + j);
    if constexpr (kRbf) {  // exp(0) = 1 in the lanes past the end: cleared
      k = _mm512_maskz_mov_pd(lanes, exp_nonpositive8(_mm512_mul_pd(k, sx)));
      l = _mm512_maskz_mov_pd(lanes, exp_nonpositive8(_mm512_mul_pd(l, sy)));
    }
    kl = _mm512_fmadd_pd(k, l, kl);
    kk = _mm512_fmadd_pd(k, k, kk);
    ll = _mm512_fmadd_pd(l, l, ll);
    ks = _mm512_add_pd(ks, k);
    ls = _mm512_add_pd(ls, l);
    _mm512_mask_storeu_pd(rk + j, lanes, _mm512_add_pd(_mm512_maskz_loadu_pd(lanes, rk + j), k));
    _mm512_mask_storeu_pd(rl + j, lanes, _mm512_add_pd(_mm512_maskz_loadu_pd(lanes, rl + j), l));
  }
  return RowSums{sum8(kl), sum8(kk), sum8(ll), sum8(ks), sum8(ls)};
}

RowSums hsic_row(const double* gx, const double* gy, int64_t count, double x_scale, double y_scale, bool rbf,
                 double* rk, double* rl, double*) {
  return rbf ? hsic_row_fused<true>(gx, gy, count, x_scale, y_scale, rk, rl)
             : hsic_row_fused<false>(gx, gy, count, x_scale, y_scale, rk, rl);
}

// The values in [low, high] packed to the front by vcompresspd (into a register, then one store: a
// compress straight to memory is slow on Zen 4), 8 a step; the tail by a masked compress-store.
int64_t gather_bracket(const double* u, int64_t m, double low, double high, double* gathered, int64_t& below) {
  const __m512d vlow = _mm512_set1_pd(low), vhigh = _mm512_set1_pd(high);
  int64_t count = 0, under = 0;
  for (int64_t e = 0; e < m; e += 8) {
    const __mmask8 lanes = m - e >= 8 ? 0xff : static_cast<__mmask8>((1u << (m - e)) - 1);
    const __m512d v = _mm512_maskz_loadu_pd(lanes, u + e);
    const __mmask8 lt = _mm512_mask_cmp_pd_mask(lanes, v, vlow, _CMP_LT_OQ);
    const __mmask8 in = _mm512_mask_cmp_pd_mask(_mm512_mask_cmp_pd_mask(lanes, v, vlow, _CMP_GE_OQ), v, vhigh, _CMP_LE_OQ);
    if (lanes == 0xff)
      _mm512_storeu_pd(gathered + count, _mm512_maskz_compress_pd(in, v));  // count + 8 <= e + 8 <= m
    else
      _mm512_mask_compressstoreu_pd(gathered + count, in, v);
    count += __builtin_popcount(in);
    under += __builtin_popcount(lt);
  }
  below = under;
  return count;
}

// Nonzeros (NaN included: an unordered compare) of n rows of d values, a vector at a time and
// branch-free: the nonzero values and their columns are compressed and stored whole (the buffers
// have room for a vector more), and the count moves by how many there were.
template <typename T>
void scan_nonzeros(const T* x, int64_t n, int64_t d, Nonzeros& out) {
  constexpr int kLanes = std::is_same_v<T, float> ? 16 : 8;
  constexpr int64_t kAhead = 4096 / sizeof(T);  // the hardware prefetcher stops at page boundaries
  const int64_t last = n * d - 1;
  const __m512i steps = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  out.row_start.resize(n + 1);
  int64_t used = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * d;
    out.row_start[i] = used;
    out.reserve_more(used, d + kLanes);
    int32_t* cols = out.cols.data();
    double* values = out.values.data();
    for (int64_t c0 = 0; c0 < d; c0 += kLanes) {
      __builtin_prefetch(x + std::min(i * d + c0 + kAhead, last));
      const unsigned lanes = d - c0 >= kLanes ? (1u << kLanes) - 1 : (1u << (d - c0)) - 1;
      const __m512i columns = _mm512_add_epi32(steps, _mm512_set1_epi32(static_cast<int32_t>(c0)));
      if constexpr (std::is_same_v<T, float>) {
        const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>(lanes), row + c0);
        const __mmask16 nz = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
        const __m512 packed = _mm512_maskz_compress_ps(nz, v);
        _mm512_storeu_pd(values + used, _mm512_cvtps_pd(_mm512_castps512_ps256(packed)));
        _mm512_storeu_pd(values + used + 8,
                         _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(packed), 1))));
        _mm512_storeu_si512(cols + used, _mm512_maskz_compress_epi32(nz, columns));
        used += __builtin_popcount(nz);
      } else {
        const __m512d v = _mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes), row + c0);
        const __mmask8 nz = _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_NEQ_UQ);
        _mm512_storeu_pd(values + used, _mm512_maskz_compress_pd(nz, v));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(cols + used),
                            _mm256_maskz_compress_epi32(nz, _mm512_castsi512_si256(columns)));
        used += __builtin_popcount(nz);
      }
    }
  }
  out.row_start[n] = used;
}

// Four vectors a step, each with its own count, so that the popcounts do not wait on each other.
template <typename T>
int64_t count_nonzeros(const T* p, int64_t count) {
  constexpr int kLanes = std::is_same_v<T, float> ? 16 : 8;
  const auto nonzero = [](const T* q, unsigned lanes) -> unsigned {
    if constexpr (std::is_same_v<T, float>)
      return _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(static_cast<__mmask16>(lanes), q), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    else
      return _mm512_cmp_pd_mask(_mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes), q), _mm512_setzero_pd(), _CMP_NEQ_UQ);
  };
  constexpr unsigned kAll = (1u << kLanes) - 1;
  int64_t c0 = 0, c1 = 0, c2 = 0, c3 = 0, e = 0;
  for (; e + 4 * kLanes <= count; e += 4 * kLanes) {
    c0 += __builtin_popcount(nonzero(p + e, kAll));
    c1 += __builtin_popcount(nonzero(p + e + kLanes, kAll));
    c2 += __builtin_popcount(nonzero(p + e + 2 * kLanes, kAll));
    c3 += __builtin_popcount(nonzero(p + e + 3 * kLanes, kAll));
  }
  for (; e < count; e += kLanes)
    c0 += __builtin_popcount(nonzero(p + e, count - e >= kLanes ? kAll : (1u << (count - e)) - 1));
  return c0 + c1 + c2 + c3;
}

}  // namespace

const CkaLoops kCkaLoopsAvx512 = {squared_distances,
                                  hsic_row,
                                  gather_bracket,
                                  scan_nonzeros<float>,
                                  scan_nonzeros<double>,
                                  count_nonzeros<float>,
                                  count_nonzeros<double>,
                                  dense_gram_f32_avx512};

}  // namespace pylth
PYLTH_END_TARGET
#endif
