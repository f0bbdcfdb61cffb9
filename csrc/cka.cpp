// CKA on the CPU, batched over pairs and fused per pair (OpenMP over pairs): each side's Gram matrix
// (from BLAS for dense inputs, or gathered here from a mostly-zero matrix's nonzeros), squared
// distances, the median bandwidth by selection, the RBF (or linear) kernel and the HSIC sums with
// float64 accumulation, all in per-thread buffers that stay in cache from one step to the next.
#include "cpu_dispatch.h"
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef PYLTH_X86_DISPATCH
#include <immintrin.h>
#endif

#include "cka.h"
#include "common.h"
#include "omp_error.h"

namespace py = pybind11;

namespace pylth {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The q-th smallest of u (reordering u); -1 means one of the diagonal zeros.
double order_statistic(std::vector<double>& u, int64_t q) {
  if (q < 0) return 0.0;
  std::nth_element(u.begin(), u.begin() + q, u.end());
  return u[q];
}

// Copies the values of u[0..m) that lie in [low, high] to gathered (room for m values) and counts
// those below low: the bulk of a median's cost. Branch-free (which of them is kept is random).
int64_t gather_bracket_scalar(const double* u, int64_t m, double low, double high, double* gathered,
                              int64_t& below) {
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

#ifdef PYLTH_X86_DISPATCH
// The same, four values a step: x86 has no compress instruction before AVX-512, so the kept values
// are packed to the front by a permutation looked up by their 4-bit mask. 4x faster than the scalar
// loop, whose store depends on the previous step's count.
__attribute__((target("avx2"))) int64_t gather_bracket_avx2(const double* u, int64_t m, double low, double high,
                                                           double* gathered, int64_t& below) {
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
  count += gather_bracket_scalar(u + e, m - e, low, high, gathered + count, tail_below);
  below = lanes[0] + lanes[1] + lanes[2] + lanes[3] + tail_below;
  return count;
}
#endif

int64_t gather_bracket(const double* u, int64_t m, double low, double high, double* gathered, int64_t& below) {
#ifdef PYLTH_X86_DISPATCH
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return gather_bracket_avx2(u, m, low, high, gathered, below);
#endif
  return gather_bracket_scalar(u, m, low, high, gathered, below);
}

// The mean of the lo-th and hi-th smallest of u (see middle_pair) without reordering u, faster on large u
// (Floyd-Rivest): two values from a strided sample bracket ranks lo..hi; one pass (gather_bracket)
// counts what lies below the bracket and gathers what lies in it, and only that small part is selected
// from. False (nothing computed) when the sample misses.
bool middle_pair_sampled(const std::vector<double>& u, int64_t lo, int64_t hi, std::vector<double>& inside,
                         double& result) {
  constexpr int64_t kSample = 1024, kMargin = 64;
  const auto m = static_cast<int64_t>(u.size());
  if (lo < 0 || m < 16 * kSample) return false;
  double sample[kSample];
  for (int64_t s = 0; s < kSample; ++s) sample[s] = u[s * (m / kSample)];
  // Two order statistics of the sample (selections, cheaper than sorting it).
  const int64_t rank = lo * kSample / m;
  const int64_t high_rank = std::min<int64_t>(rank + kMargin, kSample - 1);
  const int64_t low_rank = std::max<int64_t>(rank - kMargin, 0);
  std::nth_element(sample, sample + high_rank, sample + kSample);
  const double high = sample[high_rank];
  std::nth_element(sample, sample + low_rank, sample + high_rank);
  const double low = sample[low_rank];
  // Grown, never shrunk: a resize back up from the last count would zero-fill most of it every time.
  if (static_cast<int64_t>(inside.size()) < m) inside.resize(m);
  double* gathered = inside.data();
  int64_t below;
  const int64_t count = gather_bracket(u.data(), m, low, high, gathered, below);
  if (lo < below || hi >= below + count) return false;
  double* at_hi = gathered + (hi - below);
  std::nth_element(gathered, at_hi, gathered + count);
  result = lo == hi ? *at_hi : 0.5 * (*std::max_element(gathered, at_hi) + *at_hi);
  return true;
}

// Mean of the lo-th and hi-th smallest of u (hi is lo or lo + 1; lo == -1 stands for a diagonal zero);
// u is only read, work is scratch. The sampled bracket when it holds, else in a copy: one selection for
// hi, then the maximum of the part below it for lo.
double middle_pair(const std::vector<double>& u, int64_t lo, int64_t hi, std::vector<double>& work) {
  double sampled;
  if (middle_pair_sampled(u, lo, hi, work, sampled)) return sampled;
  work.assign(u.begin(), u.end());
  const double upper = order_statistic(work, hi);
  if (lo == hi) return upper;
  const double lower = lo < 0 ? 0.0 : *std::max_element(work.begin(), work.begin() + hi);
  return 0.5 * (lower + upper);
}

// Median of all n*n squared distances (Kornblith et al. 2019); when it is 0, the median of the
// positive ones; NaN when there are none (all rows identical). u: the strict upper triangle, only
// read; work: scratch for the selections.
double median_squared_distance(const std::vector<double>& u, int64_t n, std::vector<double>& work) {
  const MedianIndices mid = median_indices(n);
  const double median = middle_pair(u, mid.lo, mid.hi, work);
  if (median > 0.0) return median;
  // The positives' median: each positive appears twice in the full matrix, which leaves it unchanged,
  // and the zeros (distances are clamped at 0) rank below every positive, as in csrc/cka.cu.
  const int64_t zeros = std::count_if(u.begin(), u.end(), [](double v) { return v <= 0.0; });
  const int64_t positives = static_cast<int64_t>(u.size()) - zeros;
  if (positives == 0) return kNaN;
  return middle_pair(u, zeros + (positives - 1) / 2, zeros + positives / 2, work);
}

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

// On x86-64, compiled twice and picked at load time (ifunc): AVX2 doubles the vector width. No FMA,
// so both versions round identically.
// out[j] = exp(scale * d2[j]) for squared distances d2 >= 0 and scale < 0.
PYLTH_X86_CLONES void rbf_row(const double* d2, double scale, double* out, int64_t count) {
  for (int64_t j = 0; j < count; ++j) out[j] = exp_nonpositive(d2[j] * scale);
}

// Where row i of a strict upper triangle packed by rows begins (its entries for columns i+1..n-1).
inline int64_t packed_row(int64_t i, int64_t n) { return i * (2 * n - i - 1) / 2; }

// One side of a pair: the Gram diagonal and strict upper triangle (packed by rows); for the RBF
// kernel the triangle is then overwritten with squared distances and scale = -1 / (2 sigma^2).
struct Side {
  std::vector<double> diag, upper;
  double scale = 0.0;
};

struct Nonzero {
  int32_t row, col;
  double value;
};

// Per-thread buffers, reused from pair to pair: a call touches a few MB per thread that stay in
// cache, instead of a float64 Gram buffer for every matrix (page faults, a round trip to memory).
struct Workspace {
  Side x, y;
  std::vector<Nonzero> found;                // a mostly-zero matrix's nonzeros in row order
  std::vector<int64_t> column_start, cursor;  // counting sort by column
  std::vector<int32_t> rows;                 // the nonzeros grouped by column, rows increasing
  std::vector<double> values;
  std::vector<double> work;                  // median selection
  std::vector<double> krow, lrow, rk, rl;    // kernel_sums
};

// Squared distances G_ii + G_jj - 2 G_ij in place of the upper triangle (clamped at 0: rounding can
// make them negative), then the bandwidth; false when it is undefined.
bool prepare(Side& s, int64_t n, CkaKernel kernel, double threshold, std::vector<double>& work) {
  if (kernel == CkaKernel::linear) return true;
  for (int64_t i = 0; i < n; ++i) {
    double* row = s.upper.data() + packed_row(i, n);
    const double* diag_right = s.diag.data() + i + 1;
    const double gii = s.diag[i];
    for (int64_t k = 0; k < n - i - 1; ++k) row[k] = std::max(gii + diag_right[k] - 2.0 * row[k], 0.0);
  }
  const double median = median_squared_distance(s.upper, n, work);
  if (std::isnan(median)) return false;
  s.scale = -1.0 / (2.0 * threshold * threshold * median);
  return true;
}

template <CkaKernel kKernel>
HsicSums kernel_sums(const Side& x, const Side& y, int64_t n, bool unbiased, Workspace& w) {
  std::vector<double>& rk = w.rk;
  std::vector<double>& rl = w.rl;
  std::vector<double>& krow = w.krow;
  std::vector<double>& lrow = w.lrow;
  rk.assign(n, 0.0);
  rl.assign(n, 0.0);
  krow.resize(n);
  lrow.resize(n);
  HsicSums t;
  for (int64_t i = 0; i < n; ++i) {
    const double* gx = x.upper.data() + packed_row(i, n);
    const double* gy = y.upper.data() + packed_row(i, n);
    const int64_t right = n - i - 1;
    // Kernel values of row i right of the diagonal; the lower triangle is their mirror image.
    if (kKernel == CkaKernel::rbf) {
      rbf_row(gx, x.scale, krow.data() + i + 1, right);
      rbf_row(gy, y.scale, lrow.data() + i + 1, right);
    } else {
      std::copy(gx, gx + right, krow.begin() + i + 1);
      std::copy(gy, gy + right, lrow.begin() + i + 1);
    }
    double kl = 0, kk = 0, ll = 0, ri = 0, si = 0;
    for (int64_t j = i + 1; j < n; ++j) {
      const double k = krow[j], l = lrow[j];
      kl += k * l;
      kk += k * k;
      ll += l * l;
      ri += k;
      si += l;
      rk[j] += k;
      rl[j] += l;
    }
    t.kl += 2.0 * kl;
    t.kk += 2.0 * kk;
    t.ll += 2.0 * ll;
    rk[i] += ri;
    rl[i] += si;
  }
  if (!unbiased) {  // the diagonal: exp(0) = 1 for RBF, the squared row norms for linear
    for (int64_t i = 0; i < n; ++i) {
      const double k = kKernel == CkaKernel::rbf ? 1.0 : x.diag[i];
      const double l = kKernel == CkaKernel::rbf ? 1.0 : y.diag[i];
      t.kl += k * l;
      t.kk += k * k;
      t.ll += l * l;
      rk[i] += k;
      rl[i] += l;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    t.r += rk[i];
    t.s += rl[i];
    t.rs += rk[i] * rl[i];
    t.rr += rk[i] * rk[i];
    t.ss += rl[i] * rl[i];
  }
  return t;
}

// A dense n x n Gram (a BLAS product, float32 or float64) into a side.
template <typename T>
void dense_gram_side(const T* g, int64_t n, Side& s) {
  s.diag.resize(n);
  s.upper.resize(n * (n - 1) / 2);
  for (int64_t i = 0; i < n; ++i) {
    s.diag[i] = static_cast<double>(g[i * n + i]);
    std::copy(g + i * n + i + 1, g + (i + 1) * n, s.upper.begin() + packed_row(i, n));
  }
}

// Bit e set where p[e] (e < k <= 32) is not +-0; NaN counts as nonzero, so that it reaches the Gram
// diagonal and is reported. Branch-free: a 99 %-zero scan must not pay a misprediction per value.
template <typename T>
uint32_t nonzero_mask(const T* p, int64_t k) {
  uint32_t mask = 0;
  for (int64_t e = 0; e < k; ++e) mask |= static_cast<uint32_t>(!(p[e] == T(0))) << e;
  return mask;
}

#ifdef __SSE2__
// The same for 16 floats, four at a time (SSE2 is part of x86-64: no dispatch needed).
inline uint32_t nonzero_mask16(const float* p) {
  const __m128 zero = _mm_setzero_ps();
  uint32_t is_zero = 0;
  for (int q = 0; q < 4; ++q)
    is_zero |= static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(p + 4 * q), zero))) << (4 * q);
  return ~is_zero & 0xFFFFu;
}
#endif

// Nonzeros of the values at p (columns c0, c0+1, ...), as one bit each.
template <typename T>
uint32_t block_mask(const T* p, int64_t k) {
#ifdef __SSE2__
  if constexpr (std::is_same_v<T, float>)
    if (k == 16) return nonzero_mask16(p);
#endif
  return nonzero_mask(p, k);
}

// The float64 Gram of a mostly-zero n x d matrix into a side: one scan in row order (16 columns at
// a time, a bit mask per block, so that the 85 % of blocks that are all zero at 99 % sparsity cost a
// compare each) gathers the nonzeros, a stable counting sort groups them by column, and each column
// adds the products of its pairs of nonzeros: the cost is ~ the sum over columns of nnz^2, not n^2 d.
template <typename T>
void sparse_gram_side(const T* x, int64_t n, int64_t d, Workspace& w, Side& s) {
  constexpr int64_t kBlock = 16;
  // Prefetched 4 KB ahead: the hardware prefetcher stops at page boundaries, and this loop is
  // bound by how fast one core streams memory (measured 1.5x faster).
  constexpr int64_t kAhead = 4096 / sizeof(T);
  const int64_t last = n * d - 1;
  w.found.clear();
  w.column_start.assign(d + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * d;
    for (int64_t c0 = 0; c0 < d; c0 += kBlock) {
      __builtin_prefetch(x + std::min(i * d + c0 + kAhead, last));
      for (uint32_t mask = block_mask(row + c0, std::min(kBlock, d - c0)); mask != 0; mask &= mask - 1) {
        const int64_t c = c0 + __builtin_ctz(mask);
        w.found.push_back({static_cast<int32_t>(i), static_cast<int32_t>(c), static_cast<double>(row[c])});
        ++w.column_start[c + 1];
      }
    }
  }
  std::partial_sum(w.column_start.begin(), w.column_start.end(), w.column_start.begin());
  w.cursor.assign(w.column_start.begin(), w.column_start.end() - 1);
  w.rows.resize(w.found.size());
  w.values.resize(w.found.size());
  for (const Nonzero& z : w.found) {
    const int64_t slot = w.cursor[z.col]++;
    w.rows[slot] = z.row;
    w.values[slot] = z.value;
  }
  s.diag.assign(n, 0.0);
  s.upper.assign(n * (n - 1) / 2, 0.0);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t a = w.column_start[c]; a < w.column_start[c + 1]; ++a) {
      const int64_t ra = w.rows[a];
      const double va = w.values[a];
      s.diag[ra] += va * va;
      // Row ra's packed entries, indexed by the column (a later row, > ra) they pair with.
      const int64_t base = packed_row(ra, n) - ra - 1;
      for (int64_t b = a + 1; b < w.column_start[c + 1]; ++b) s.upper[base + w.rows[b]] += va * w.values[b];
    }
}

// One input matrix: its address, and the address of its dense Gram (same dtype) or null when the
// Gram is to be gathered here from the matrix's nonzeros.
struct Matrix {
  std::uintptr_t x, gram;
  int64_t rows, cols;
  bool is_double;
};

// A side's Gram; false when its diagonal (the squared row norms, which a NaN or infinity anywhere in
// the matrix reaches, at O(n) instead of O(n d)) is not finite.
bool load_side(const Matrix& m, Workspace& w, Side& s) {
  if (m.gram != 0) {
    if (m.is_double) dense_gram_side(as_ptr<const double>(m.gram), m.rows, s);
    else dense_gram_side(as_ptr<const float>(m.gram), m.rows, s);
  } else {
    if (m.is_double) sparse_gram_side(as_ptr<const double>(m.x), m.rows, m.cols, w, s);
    else sparse_gram_side(as_ptr<const float>(m.x), m.rows, m.cols, w, s);
  }
  return std::all_of(s.diag.begin(), s.diag.end(), [](double v) { return std::isfinite(v); });
}

// The CKA of one pair; non_finite[side] is set (and NaN returned) for a side with non-finite values.
double pair_cka(const Matrix& mx, const Matrix& my, CkaKernel kernel, double threshold, bool unbiased,
                Workspace& w, uint8_t& x_non_finite, uint8_t& y_non_finite) {
  const int64_t n = mx.rows;
  // An error about xs takes precedence over all about ys: y need not be looked at when x is bad.
  if (!load_side(mx, w, w.x)) return x_non_finite = 1, kNaN;
  if (!load_side(my, w, w.y)) return y_non_finite = 1, kNaN;
  if (!prepare(w.x, n, kernel, threshold, w.work) || !prepare(w.y, n, kernel, threshold, w.work)) return kNaN;
  const HsicSums t = kernel == CkaKernel::rbf ? kernel_sums<CkaKernel::rbf>(w.x, w.y, n, unbiased, w)
                                              : kernel_sums<CkaKernel::linear>(w.x, w.y, n, unbiased, w);
  return cka_from_sums(t, n, unbiased);
}

// Indices 0..count-1 by decreasing cost, so that the dynamic schedule balances the threads.
std::vector<int64_t> largest_first(const std::vector<int64_t>& cost) {
  std::vector<int64_t> order(cost.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  return order;
}

// The matrices of a CPU table (csrc/cka.h), checked: shapes in int32 range, every matrix's address.
std::vector<Matrix> matrices_of(const ArgTable& table, int64_t min_cols, const char* kernel) {
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  std::vector<Matrix> mats(table.rows());
  for (int64_t m = 0; m < table.rows(); ++m) {
    const int64_t rows = table.at(m, kCkaRows), cols = table.at(m, kCkaCols);
    require(rows >= 0 && rows <= kInt32Max && cols >= min_cols && cols <= kInt32Max,
            std::string(kernel) + ": bad shape in row " + std::to_string(m));
    require(table.at(m, kCkaMatrix) != 0 || rows * cols == 0,
            std::string(kernel) + ": null matrix address in row " + std::to_string(m));
    mats[m] = {static_cast<std::uintptr_t>(table.at(m, kCkaMatrix)), static_cast<std::uintptr_t>(table.at(m, kCkaGram)),
               rows, cols, table.at(m, kCkaIsDouble) != 0};
  }
  return mats;
}

// Pair p compares table row p with row pairs + p; out: float64 [pairs].
void cka_cpu(std::uintptr_t table_address, int64_t rows, int64_t width, int kernel_id, double threshold, bool unbiased,
             std::uintptr_t out_address, int num_threads) {
  const ArgTable table(table_address, rows, width, kCkaColumns, "cka_cpu");
  require(rows % 2 == 0, "cka_cpu: the table must hold an even number of rows (xs, then ys)");
  require(kernel_id == 0 || kernel_id == 1, "kernel must be 0 (linear) or 1 (rbf)");
  require(threshold > 0.0 && std::isfinite(threshold), "threshold must be a positive finite number");
  require(num_threads >= 1, "cka_cpu: num_threads must be >= 1");
  require(rows == 0 || out_address != 0, "cka_cpu: null out");
  const int64_t pairs = rows / 2;
  const std::vector<Matrix> mats = matrices_of(table, 1, "cka_cpu");
  double* out = as_ptr<double>(out_address);
  std::vector<int64_t> cost(pairs);
  for (int64_t p = 0; p < pairs; ++p) {
    const Matrix &x = mats[p], &y = mats[pairs + p];
    const int64_t n = x.rows;
    require(y.rows == n, "cka: pair " + std::to_string(p) + " has unequal row counts");
    require(n >= (unbiased ? 4 : 2), "every pair needs at least " + std::string(unbiased ? "4" : "2") + " rows");
    // Roughly: an exp per distance, and a fraction of that per value a mostly-zero side's scan reads.
    const int64_t scanned = (x.gram == 0 ? x.cols : 0) + (y.gram == 0 ? y.cols : 0);
    cost[p] = n * n + n * scanned / 8;
  }
  const CkaKernel kernel = static_cast<CkaKernel>(kernel_id);
  const std::vector<int64_t> order = largest_first(cost);
  std::vector<uint8_t> non_finite(2 * pairs, 0);
  {
    py::gil_scoped_release release;
    FirstError error;
#pragma omp parallel num_threads(num_threads)
    {
      Workspace w;
#pragma omp for schedule(dynamic, 1)
      for (int64_t k = 0; k < pairs; ++k) {
        const int64_t p = order[k];
        error.run([&] {
          out[p] = pair_cka(mats[p], mats[pairs + p], kernel, threshold, unbiased, w, non_finite[p],
                            non_finite[pairs + p]);
        });
      }
    }
    error.rethrow();
  }
  for (int64_t m = 0; m < 2 * pairs; ++m)
    require(!non_finite[m], std::string(m < pairs ? "xs[" : "ys[") + std::to_string(m < pairs ? m : m - pairs) +
                                "] has non-finite values (or values whose squares overflow)");
}

// Whether every stride-th row of x holds at most limit nonzeros in all; stops as soon as they pass
// it (a dense matrix after its first row).
template <typename T>
bool sampled_rows_within(const T* x, int64_t n, int64_t d, int64_t stride, double limit) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += stride) {
    for (int64_t c = 0; c < d; ++c) count += x[i * d + c] != T(0);
    if (static_cast<double>(count) > limit) return false;
  }
  return true;
}

// mostly_zero[m] = 1 where at most max_density of matrix m's values are nonzero, judged from every
// 16th row (every row of a matrix under 64 rows): reading 1/16 of a matrix decides whether its Gram
// is cheaper to gather from its nonzeros than to multiply out. A wrong guess costs time (and a dense
// matrix taken for sparse, memory for its nonzeros), never accuracy.
void mostly_zero_cpu(std::uintptr_t table_address, int64_t rows, int64_t width, double max_density,
                     std::uintptr_t mostly_zero_address, int num_threads) {
  const ArgTable table(table_address, rows, width, kCkaColumns, "mostly_zero_cpu");
  require(num_threads >= 1, "mostly_zero_cpu: num_threads must be >= 1");
  require(rows == 0 || mostly_zero_address != 0, "mostly_zero_cpu: null mostly_zero");
  const std::vector<Matrix> mats = matrices_of(table, 0, "mostly_zero_cpu");
  uint8_t* mostly_zero = as_ptr<uint8_t>(mostly_zero_address);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t n = mats[m].rows, d = mats[m].cols;
    const int64_t stride = n >= 64 ? 16 : 1;
    const double limit = max_density * static_cast<double>((n + stride - 1) / stride * d);
    mostly_zero[m] = mats[m].is_double ? sampled_rows_within(as_ptr<const double>(mats[m].x), n, d, stride, limit)
                                       : sampled_rows_within(as_ptr<const float>(mats[m].x), n, d, stride, limit);
  }
}

#ifdef PYLTH_WITH_CUDA
static_assert(kCkaCudaColumns == 2, "cka.cu's kernels read rows of 2 values: Gram address, n");

void cka_cuda(std::uintptr_t table_address, int64_t rows, int64_t width, int64_t units, int64_t unit_entries,
              bool gram_double, int kernel_id, double threshold, bool unbiased, std::uintptr_t workspace,
              std::uintptr_t flags, std::uintptr_t out, std::uintptr_t stream) {
  const ArgTable table(table_address, rows, width, kCkaCudaColumns, "cka_cuda");
  require(rows % 2 == 0, "cka_cuda: the table must hold an even number of rows (xs, then ys)");
  const int64_t pairs = rows / 2;
  require(units >= pairs, "cka_cuda: need at least one work unit per pair");
  require(unit_entries > 0, "unit_entries must be positive");
  require(2 * pairs <= std::numeric_limits<int32_t>::max() && units <= std::numeric_limits<int32_t>::max(),
          "too many pairs or work units for one launch");
  require(kernel_id == 0 || kernel_id == 1, "kernel must be 0 (linear) or 1 (rbf)");
  require(threshold > 0.0 && std::isfinite(threshold), "threshold must be a positive finite number");
  require(pairs == 0 || (workspace && flags && out), "cka_cuda: null workspace, flags or out");
  cka_from_grams_cuda(table.data(), pairs, units, unit_entries, gram_double, static_cast<CkaKernel>(kernel_id),
                      threshold, unbiased, as_ptr<double>(workspace), as_ptr<int32_t>(flags), as_ptr<double>(out),
                      stream);
}
#endif

}  // namespace

void register_cka(py::module_& m) {
  m.def("cka_cpu", &cka_cpu, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("kernel"),
        py::arg("threshold"), py::arg("unbiased"), py::arg("out"), py::arg("num_threads"),
        "CKA of each pair (table row p against row rows/2 + p; layout: csrc/cka.h); kernel 0 linear, 1 rbf. "
        "Each matrix's Gram is read from its Gram column or, where that is 0, gathered from its nonzeros.");
  m.def("mostly_zero_cpu", &mostly_zero_cpu, py::arg("table"), py::arg("rows"), py::arg("width"),
        py::arg("max_density"), py::arg("mostly_zero"), py::arg("num_threads"),
        "mostly_zero[m] = 1 where a row sample of table row m's matrix has at most max_density nonzeros.");
#ifdef PYLTH_WITH_CUDA
  m.def("cka_cuda", &cka_cuda, py::arg("table"), py::arg("rows"), py::arg("width"), py::arg("units"),
        py::arg("unit_entries"), py::arg("gram_double"), py::arg("kernel"), py::arg("threshold"),
        py::arg("unbiased"), py::arg("workspace"), py::arg("flags"), py::arg("out"), py::arg("stream"),
        "CKA of each pair from Gram matrices on the device (layout: csrc/cka.h); asynchronous on stream.");
#endif
}

}  // namespace pylth
