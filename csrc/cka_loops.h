// The portable inner loops of the CPU CKA (the CkaLoops of cka_cpu.h), as plain loops that the compiler
// vectorises. No include guard on purpose: cka_loops.cpp includes this file twice, inside a namespace
// per build (baseline x86-64, and AVX2 under its target pragma), after every header these loops need.
// Without FMA (-ffp-contract=off) both builds round the same.

// exp(x) for x <= 0 without a libm call per value, so that the loop over a row vectorises: x = n ln2 + r
// with |r| <= ln2/2 (Cody-Waite, ln2 split so n*ln2_hi is exact), exp(r) by its Taylor series to
// r^13 (truncation < 1e-17), 2^n built in the exponent bits. Relative error a few ulp; 0 below -708
// (where exp would leave the normal range).
inline double exp_nonpositive(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 32 significant bits: n * kLn2Hi is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  constexpr uint64_t kShiftBits = 0x4338000000000000ULL;
  // |x| > 708 tested on the bits: a floating-point compare could trap, which keeps GCC from vectorising.
  constexpr uint64_t kSignBit = uint64_t(1) << 63;
  constexpr int64_t kLimitBits = 0x4086200000000000LL;  // 708.0
  uint64_t x_bits;
  std::memcpy(&x_bits, &x, sizeof x_bits);
  // All ones where |x| > 708, else 0; then x clamped to -708 by masks (a branch would not vectorise).
  const uint64_t underflow = -static_cast<uint64_t>(static_cast<int64_t>(x_bits & ~kSignBit) > kLimitBits);
  const uint64_t xc_bits = (x_bits & ~underflow) | ((kLimitBits | kSignBit) & underflow);
  double xc;
  std::memcpy(&xc, &xc_bits, sizeof xc);
  const double t = xc * kLog2e + kShift;
  const double n = t - kShift;
  const double r = (xc - n * kLn2Hi) - n * kLn2Lo;
  // Estrin's scheme, not Horner's: a chain of 13 dependent multiply-adds would bound the loop by
  // latency; pairs of terms combined with r^2, r^4, r^8 leave a chain a third as long.
  const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const double q0 = 1.0 + r, q1 = 1.0 / 2 + r * (1.0 / 6), q2 = 1.0 / 24 + r * (1.0 / 120),
               q3 = 1.0 / 720 + r * (1.0 / 5040), q4 = 1.0 / 40320 + r * (1.0 / 362880),
               q5 = 1.0 / 3628800 + r * (1.0 / 39916800), q6 = 1.0 / 479001600 + r * (1.0 / 6227020800);
  const double s0 = q0 + r2 * q1, s1 = q2 + r2 * q3, s2 = q4 + r2 * q5;
  const double p = (s0 + r4 * s1) + r8 * (s2 + r4 * q6);
  uint64_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  // The low bits of t hold n (two's complement); n + 1023 in [1, 1023] is the biased exponent of 2^n.
  const uint64_t scale_bits = ((bits - kShiftBits + 1023) << 52) & ~underflow;  // 0 where |x| > 708
  double two_n;
  std::memcpy(&two_n, &scale_bits, sizeof two_n);
  return p * two_n;
}


void squared_distances(double* row, const double* diag_right, double gii, int64_t count) {
  for (int64_t k = 0; k < count; ++k) row[k] = std::max(gii + diag_right[k] - 2.0 * row[k], 0.0);
}

// Both sides' kernel values of one row into scratch (the exp loops vectorise), then the sums in order.
RowSums hsic_row(const double* gx, const double* gy, int64_t count, double x_scale, double y_scale, bool rbf,
                 double* rk, double* rl, double* scratch) {
  double* __restrict krow = scratch;
  double* __restrict lrow = scratch + count;
  const double *k_values = gx, *l_values = gy;
  if (rbf) {
    for (int64_t j = 0; j < count; ++j) krow[j] = exp_nonpositive(gx[j] * x_scale);
    for (int64_t j = 0; j < count; ++j) lrow[j] = exp_nonpositive(gy[j] * y_scale);
    k_values = krow;
    l_values = lrow;
  }
  RowSums t;
  for (int64_t j = 0; j < count; ++j) {
    const double k = k_values[j], l = l_values[j];
    t.kl += k * l;
    t.kk += k * k;
    t.ll += l * l;
    t.k += k;
    t.l += l;
    rk[j] += k;
    rl[j] += l;
  }
  return t;
}

// Branch-free (which values are kept is random), but each store waits for the previous step's count.
int64_t gather_bracket(const double* u, int64_t m, double low, double high, double* gathered, int64_t& below) {
  int64_t count = 0;
  below = 0;
  for (int64_t e = 0; e < m; ++e) {
    const double v = u[e];
    below += v < low;
    gathered[count] = v;
    count += (v >= low) & (v <= high);
  }
  return count;
}

// Bit e set where p[e] (e < k <= 32) is not +-0; NaN counts as nonzero. Branch-free: a 99 %-zero scan
// must not pay a misprediction per value.
template <typename T>
uint32_t nonzero_mask(const T* p, int64_t k) {
  uint32_t mask = 0;
  for (int64_t e = 0; e < k; ++e) mask |= static_cast<uint32_t>(!(p[e] == T(0))) << e;
  return mask;
}

// The same for k <= 16 values; 16 floats four at a time with SSE2 (part of x86-64: no dispatch needed).
template <typename T>
inline uint32_t block_mask(const T* p, int64_t k) {
#ifdef __SSE2__
  if constexpr (std::is_same_v<T, float>) {
    if (k == 16) {
      const __m128 zero = _mm_setzero_ps();
      uint32_t is_zero = 0;
      for (int q = 0; q < 4; ++q)
        is_zero |= static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(p + 4 * q), zero))) << (4 * q);
      return ~is_zero & 0xFFFFu;
    }
  }
#endif
  return nonzero_mask(p, k);
}

// One scan in row order, 16 columns at a time, a bit mask per block: at 99 % sparsity 85 % of the
// blocks are all zero and cost a compare each.
template <typename T>
void scan_nonzeros(const T* x, int64_t n, int64_t d, Nonzeros& out) {
  constexpr int64_t kBlock = 16;
  // Prefetched 4 KB ahead: the hardware prefetcher stops at page boundaries, and this loop is
  // bound by how fast one core streams memory (measured 1.5x faster).
  constexpr int64_t kAhead = 4096 / sizeof(T);
  const int64_t last = n * d - 1;
  out.row_start.resize(n + 1);
  int64_t used = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * d;
    out.row_start[i] = used;
    out.reserve_more(used, d);
    int32_t* cols = out.cols.data();
    double* values = out.values.data();
    for (int64_t c0 = 0; c0 < d; c0 += kBlock) {
      __builtin_prefetch(x + std::min(i * d + c0 + kAhead, last));
      for (uint32_t mask = block_mask(row + c0, std::min(kBlock, d - c0)); mask != 0; mask &= mask - 1) {
        const int64_t c = c0 + __builtin_ctz(mask);
        cols[used] = static_cast<int32_t>(c);
        values[used++] = static_cast<double>(row[c]);
      }
    }
  }
  out.row_start[n] = used;
}

template <typename T>
int64_t count_nonzeros(const T* p, int64_t count) {
  int64_t nonzero = 0;
  for (int64_t e = 0; e < count; ++e) nonzero += p[e] != T(0);
  return nonzero;
}
