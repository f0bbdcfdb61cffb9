// Included inside a build's namespace and target region (the AVX2 build, the 8-float AVX-512VL build):
// a stride-2 slab's even and odd columns, eight floats at a time, one permute putting the even ones in
// the low half and the odd ones in the high.
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
