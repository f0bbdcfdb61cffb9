// exp and the sigmoid on 16 floats with AVX-512F, for the GroupNorm + SiLU kernels
// (group_norm_silu_avx512.cpp). Include between PYLTH_BEGIN_AVX512 and PYLTH_END_TARGET
// (csrc/cpu_dispatch.h; no include guard on purpose: one file includes it).

// exp(t) for t clamped to [-87, 88] (the range silu_avx2.h's exp has, so that both paths saturate
// alike): t = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two so n * ln2_hi is exact), exp(r) by its Taylor
// polynomial to degree 7 (relative error below 1e-8), and the product with 2^n by one vscalefps, where
// AVX2 builds 2^n from exponent bits (a convert, an add and a shift).
inline __m512 exp_avx512(__m512 t) {
  t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), t);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / (1 + exp(-v)) as a 14-bit reciprocal estimate (vrcp14ps) and one Newton step (about 27 bits);
// d = 1 + e lies in [1, 2e38], where the estimate stays normal or flushes to 0 (the sigmoid is then 0).
inline __m512 sigmoid_avx512(__m512 v) {
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), v)));
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

// The first n lanes (0 <= n <= 16), for the masked loads and stores of a row's tail.
inline __mmask16 first_lanes_avx512(std::int64_t n) {
  return static_cast<__mmask16>(_bzhi_u32(0xffffu, static_cast<unsigned>(n)));
}
