// exp and the sigmoid on 8 floats with AVX2 + FMA, for the GroupNorm + SiLU kernels. Include between
// PYLTH_BEGIN_AVX2 and PYLTH_END_TARGET (csrc/cpu_dispatch.h; no include guard on purpose: each file
// includes it once).
// Needs <immintrin.h>.

// exp(t) for t clamped to [-87, 88]: t = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two so n * ln2_hi is
// exact), exp(r) by its Taylor polynomial to degree 7 (relative error below 1e-8, under fp32's half
// ulp), 2^n from the exponent bits. Below -87 the result would leave the normal range; silu there is
// v / (1 + e^87), 0 in fp32 to within 1e-36.
inline __m256 exp_avx2(__m256 t) {
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), t);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// 1 / (1 + exp(-v)) as a reciprocal estimate and one Newton step (about 23 bits), cheaper than a
// division; d = 1 + e lies in [1, 2e38], where rcp stays normal or flushes to 0 (the sigmoid is then 0).
inline __m256 sigmoid_avx2(__m256 v) {
  const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), exp_avx2(_mm256_xor_ps(v, _mm256_set1_ps(-0.0f))));
  const __m256 r = _mm256_rcp_ps(d);
  return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f)));
}

// The first n lanes (n < 8) as a mask for the masked loads and stores of a row's tail.
inline __m256i first_lanes_avx2(std::int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
