// CKA kernels shared by the CPU (cka.cpp) and CUDA (cka.cu) paths: the table layouts, the median-index
// arithmetic, the HSIC sums and the CUDA launcher. Pair p compares matrix p with matrix pairs + p: a
// table holds one row per matrix, the xs then the ys (rows = 2 * pairs).
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define PYLTH_HOST_DEVICE __host__ __device__
#else
#define PYLTH_HOST_DEVICE
#endif

namespace pylth {

// CPU table (host memory), one row per matrix: the address of its row-major rows x cols values
// (float64 where is_double is 1, else float32), the address of its dense Gram in the same dtype (or
// 0), rows, cols, is_double, and gram_from: where cka_cpu takes the Gram from (CkaGramSource).
//   cka_cpu(table, rows, width, kernel, threshold, unbiased, out, num_threads): out, float64 [pairs].
//   mostly_zero_cpu(table, rows, width, max_density, mostly_zero, num_threads): the Gram columns
//     unread; mostly_zero, uint8 [rows].
enum CkaColumn : int { kCkaMatrix = 0, kCkaGram, kCkaRows, kCkaCols, kCkaIsDouble, kCkaGramFrom, kCkaColumns };

// given: the Gram column's product (BLAS); nonzeros: gathered from the matrix's nonzeros (mostly-zero
// matrices); dense: computed here from the float32 matrix, on CPU paths that have the kernel
// (cka_cpu_dense_gram() says whether the active one does).
enum class CkaGramSource : int { given = 0, nonzeros = 1, dense = 2 };

// CUDA table (device memory, read by the kernels), one row per matrix: {Gram address, n}; each Gram n x n
// row-major, double when gram_double, else float. The table is followed in the same allocation by
// pairs + 1 prefix sums of the work units per pair: pair p has ceil(n / r) units of
// r = ceil(unit_entries / n) rows each, `units` in all.
//   cka_cuda(table, rows, width, units, unit_entries, gram_double, kernel, threshold, unbiased,
//            workspace, flags, out, stream): workspace, 2 * pairs + 8 * units doubles; flags, 3 * pairs
//   int32 zeroed by the caller (flags[m] becomes 1 where matrix m's diagonal is not finite); out,
//   float64 [pairs]; asynchronous on `stream`.
enum CkaCudaColumn : int { kCkaCudaGram = 0, kCkaCudaSize, kCkaCudaColumns };

enum class CkaKernel : int { linear = 0, rbf = 1 };

// The median of all n*n squared distances (n diagonal zeros, then every strict-upper value twice)
// is the mean of two entries of the sorted strict upper triangle u; -1 stands for a diagonal zero.
struct MedianIndices {
  int64_t lo, hi;
};
PYLTH_HOST_DEVICE inline MedianIndices median_indices(int64_t n) {
  const int64_t count = n * n;
  const int64_t t_lo = (count - 1) / 2, t_hi = count / 2;
  return {t_lo < n ? -1 : (t_lo - n) / 2, t_hi < n ? -1 : (t_hi - n) / 2};
}

// Sums over the kernel matrices K, L of one pair, with r = K1 and s = L1 (row sums). The biased
// estimator sums over all entries, the unbiased one over the off-diagonal entries only.
struct HsicSums {
  double kl = 0, kk = 0, ll = 0;     // <K,L>, <K,K>, <L,L>
  double r = 0, s = 0;               // 1'K1, 1'L1
  double rs = 0, rr = 0, ss = 0;     // r.s, r.r, s.s
};

// HSIC up to a factor common to all three terms of a pair (it cancels in CKA). Biased:
// <K,L> - (2/n) r.s + (1'K1)(1'L1)/n^2 (= tr(KHLH)). Unbiased (Song et al. 2012, on K and L with
// zeroed diagonals): <K,L> + (1'K1)(1'L1)/((n-1)(n-2)) - 2 r.s/(n-2).
PYLTH_HOST_DEVICE inline double hsic_term(double kl, double rs, double r, double s, int64_t n, bool unbiased) {
  const double nn = static_cast<double>(n);
  if (unbiased) return kl + r * s / ((nn - 1) * (nn - 2)) - 2.0 * rs / (nn - 2);
  return kl - 2.0 * rs / nn + r * s / (nn * nn);
}

// A side's HSIC with itself is the squared norm of its centred (or U-centred) kernel, so it is >= 0,
// but the sums above find it by cancellation: it is known only to about n * eps of the sum of its
// terms' magnitudes. Below that (a centred kernel that vanishes: constant linear rows, or all rows
// but one identical for the unbiased estimator) CKA is 0/0, not a ratio of rounding noise or +-inf.
PYLTH_HOST_DEVICE inline bool self_hsic_resolved(double hsic, double kk, double rr, double r, int64_t n,
                                                 bool unbiased) {
  const double nn = static_cast<double>(n);
  const double magnitude = unbiased ? kk + r * r / ((nn - 1) * (nn - 2)) + 2.0 * rr / (nn - 2)
                                    : kk + 2.0 * rr / nn + r * r / (nn * nn);
  return hsic > 64.0 * nn * 2.220446049250313e-16 * magnitude;  // 64 n DBL_EPSILON
}

PYLTH_HOST_DEVICE inline double cka_from_sums(const HsicSums& t, int64_t n, bool unbiased) {
  const double xy = hsic_term(t.kl, t.rs, t.r, t.s, n, unbiased);
  const double xx = hsic_term(t.kk, t.rr, t.r, t.r, n, unbiased);
  const double yy = hsic_term(t.ll, t.ss, t.s, t.s, n, unbiased);
  if (!self_hsic_resolved(xx, t.kk, t.rr, t.r, n, unbiased) || !self_hsic_resolved(yy, t.ll, t.ss, t.s, n, unbiased))
    return NAN;  // a constant (centred) kernel: no CKA
  return xy / sqrt(xx * yy);
}

#ifdef PYLTH_WITH_CUDA
// CKA of every pair from Gram matrices already on the device (csrc/cka.cu), as cka_cuda above; desc is
// the CUDA table's device address.
void cka_from_grams_cuda(const int64_t* desc, int64_t pairs, int64_t units, int64_t unit_entries, bool gram_double,
                         CkaKernel kernel, double threshold, bool unbiased, double* workspace, int32_t* flags,
                         double* out, std::uintptr_t stream);
#endif

}  // namespace pylth
