// CKA on the CPU, batched over pairs: squared distances from Gram matrices, the median bandwidth by
// selection, the RBF (or linear) kernel and the HSIC sums with float64 accumulation (OpenMP over
// pairs); and a sparse Gram for mostly-zero matrices that only touches rows sharing a column.
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

#include "cka.h"
#include "common.h"
#include "omp_error.h"

namespace py = pybind11;

namespace pylth {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Overwrites the strict upper triangle of g with squared distances G_ii + G_jj - 2 G_ij (clamped at 0,
// rounding can make them negative) and copies them, row by row, into u.
void upper_distances(double* g, const double* diag, int64_t n, double* u) {
  for (int64_t i = 0; i < n; ++i) {
    double* row = g + i * n;
    const double gii = diag[i];
    for (int64_t j = i + 1; j < n; ++j) row[j] = std::max(gii + diag[j] - 2.0 * row[j], 0.0);
    u = std::copy(row + i + 1, row + n, u);
  }
}

// The q-th smallest of u (reordering u); -1 means one of the diagonal zeros.
double order_statistic(std::vector<double>& u, int64_t q) {
  if (q < 0) return 0.0;
  std::nth_element(u.begin(), u.begin() + q, u.end());
  return u[q];
}

// The same as middle_pair below, faster on large u (Floyd-Rivest): two values from a strided sample
// bracket ranks lo..hi; one branch-free pass counts what lies below the bracket and gathers what lies
// in it, and only that small part is selected from. False (nothing computed) when the sample misses.
bool middle_pair_sampled(const std::vector<double>& u, int64_t lo, int64_t hi, std::vector<double>& inside,
                         double& result) {
  constexpr int64_t kSample = 1024, kMargin = 64;
  const auto m = static_cast<int64_t>(u.size());
  if (lo < 0 || m < 16 * kSample) return false;
  std::vector<double> sample(kSample);
  for (int64_t s = 0; s < kSample; ++s) sample[s] = u[s * (m / kSample)];
  std::sort(sample.begin(), sample.end());
  const int64_t rank = lo * kSample / m;
  const double low = sample[std::max<int64_t>(rank - kMargin, 0)];
  const double high = sample[std::min<int64_t>(rank + kMargin, kSample - 1)];
  inside.resize(m);
  int64_t below = 0, count = 0;
  for (int64_t e = 0; e < m; ++e) {
    const double v = u[e];
    below += v < low;
    inside[count] = v;
    count += (v >= low) & (v <= high);
  }
  if (lo < below || hi >= below + count) return false;
  inside.resize(count);
  const auto at_hi = inside.begin() + (hi - below);
  std::nth_element(inside.begin(), at_hi, inside.end());
  result = lo == hi ? *at_hi : 0.5 * (*std::max_element(inside.begin(), at_hi) + *at_hi);
  return true;
}

// Mean of the lo-th and hi-th smallest of u (hi is lo or lo + 1): one selection for hi, then the
// maximum of the part below it for lo.
double middle_pair(std::vector<double>& u, int64_t lo, int64_t hi) {
  std::vector<double> inside;
  double sampled;
  if (middle_pair_sampled(u, lo, hi, inside, sampled)) return sampled;
  const double upper = order_statistic(u, hi);
  if (lo == hi) return upper;
  const double lower = lo < 0 ? 0.0 : *std::max_element(u.begin(), u.begin() + hi);
  return 0.5 * (lower + upper);
}

// Median of all n*n squared distances (Kornblith et al. 2019); when it is 0, the median of the
// positive ones; NaN when there are none (all rows identical). u: the strict upper triangle.
double median_squared_distance(std::vector<double>& u, int64_t n) {
  const MedianIndices mid = median_indices(n);
  const double median = middle_pair(u, mid.lo, mid.hi);
  if (median > 0.0) return median;
  // The positives' median: each positive appears twice in the full matrix, which leaves it unchanged.
  const auto first_positive = std::partition(u.begin(), u.end(), [](double v) { return v <= 0.0; });
  const int64_t zeros = first_positive - u.begin();
  const int64_t positives = static_cast<int64_t>(u.size()) - zeros;
  if (positives == 0) return kNaN;
  return middle_pair(u, zeros + (positives - 1) / 2, zeros + positives / 2);
}

struct PairInput {
  double* g;  // n x n Gram, upper triangle overwritten
  std::vector<double> diag;
  double scale = 0.0;  // RBF: -1 / (2 sigma^2)
};

// Prepares one side of a pair; returns false when its RBF bandwidth is undefined.
bool prepare(PairInput& in, int64_t n, CkaKernel kernel, double threshold, std::vector<double>& scratch) {
  in.diag.resize(n);
  for (int64_t i = 0; i < n; ++i) in.diag[i] = in.g[i * n + i];
  if (kernel == CkaKernel::linear) return true;
  scratch.resize(n * (n - 1) / 2);
  upper_distances(in.g, in.diag.data(), n, scratch.data());
  const double median = median_squared_distance(scratch, n);
  if (std::isnan(median)) return false;
  in.scale = -1.0 / (2.0 * threshold * threshold * median);
  return true;
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
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
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

template <CkaKernel kKernel>
HsicSums kernel_sums(const PairInput& x, const PairInput& y, int64_t n, bool unbiased) {
  std::vector<double> rk(n, 0.0), rl(n, 0.0);
  HsicSums t;
  std::vector<double> krow(n), lrow(n);
  for (int64_t i = 0; i < n; ++i) {
    const double* gx = x.g + i * n;
    const double* gy = y.g + i * n;
    // Kernel values of row i right of the diagonal; the lower triangle is their mirror image.
    if (kKernel == CkaKernel::rbf) {
      rbf_row(gx + i + 1, x.scale, krow.data() + i + 1, n - i - 1);
      rbf_row(gy + i + 1, y.scale, lrow.data() + i + 1, n - i - 1);
    } else {
      std::copy(gx + i + 1, gx + n, krow.begin() + i + 1);
      std::copy(gy + i + 1, gy + n, lrow.begin() + i + 1);
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

double pair_cka(double* gx, double* gy, int64_t n, CkaKernel kernel, double threshold, bool unbiased,
                std::vector<double>& scratch) {
  PairInput x{gx}, y{gy};
  if (!prepare(x, n, kernel, threshold, scratch) || !prepare(y, n, kernel, threshold, scratch)) return kNaN;
  const HsicSums t = kernel == CkaKernel::rbf ? kernel_sums<CkaKernel::rbf>(x, y, n, unbiased)
                                              : kernel_sums<CkaKernel::linear>(x, y, n, unbiased);
  return cka_from_sums(t, n, unbiased);
}

void check_layout(const int64_t* offsets, const int64_t* sizes, int64_t count, const char* what) {
  require(offsets[0] == 0, std::string(what) + ": offsets must start at 0");
  for (int64_t m = 0; m < count; ++m)
    require(sizes[m] >= 0 && offsets[m + 1] - offsets[m] == sizes[m] * sizes[m],
            std::string(what) + ": offsets do not match the matrix sizes at entry " + std::to_string(m));
}

// Largest matrices first so that the dynamic schedule balances the threads.
std::vector<int64_t> largest_first(const int64_t* sizes, int64_t count) {
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sizes[a] > sizes[b]; });
  return order;
}

void cka_from_grams_cpu(std::uintptr_t gram_ptr, std::uintptr_t offsets_ptr, std::uintptr_t sizes_ptr,
                        int64_t pairs, int kernel_id, double threshold, bool unbiased, std::uintptr_t out_ptr) {
  require(pairs >= 0, "pairs must be >= 0");
  require(kernel_id == 0 || kernel_id == 1, "kernel must be 0 (linear) or 1 (rbf)");
  require(threshold > 0.0 && std::isfinite(threshold), "threshold must be a positive finite number");
  double* gram = as_ptr<double>(gram_ptr);
  const int64_t* offsets = as_ptr<const int64_t>(offsets_ptr);
  const int64_t* sizes = as_ptr<const int64_t>(sizes_ptr);
  double* out = as_ptr<double>(out_ptr);
  std::vector<int64_t> matrix_sizes(2 * pairs);
  for (int64_t p = 0; p < pairs; ++p) {
    require(sizes[p] >= (unbiased ? 4 : 2), "every pair needs at least " + std::string(unbiased ? "4" : "2") + " rows");
    matrix_sizes[p] = matrix_sizes[pairs + p] = sizes[p];
  }
  check_layout(offsets, matrix_sizes.data(), 2 * pairs, "cka_from_grams");
  // A NaN or infinity anywhere in a matrix reaches its squared row norms: O(n) instead of O(n d).
  for (int64_t m = 0; m < 2 * pairs; ++m) {
    const int64_t n = matrix_sizes[m];
    for (int64_t i = 0; i < n; ++i)
      require(std::isfinite(gram[offsets[m] + i * n + i]),
              std::string(m < pairs ? "xs[" : "ys[") + std::to_string(m < pairs ? m : m - pairs) +
                  "] has non-finite values (or values whose squares overflow)");
  }
  const CkaKernel kernel = static_cast<CkaKernel>(kernel_id);
  const std::vector<int64_t> order = largest_first(sizes, pairs);
  py::gil_scoped_release release;
  FirstError error;
#pragma omp parallel
  {
    std::vector<double> scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < pairs; ++k) {
      const int64_t p = order[k];
      error.run([&] {
        out[p] = pair_cka(gram + offsets[p], gram + offsets[pairs + p], sizes[p], kernel, threshold, unbiased, scratch);
      });
    }
  }
  error.rethrow();
}

// True when the k values at p are all +-0: OR of the bit patterns without the sign (vectorises,
// unlike a loop of branches), so that a scan of a 99 %-zero matrix skips most of it in blocks.
template <typename T>
bool all_zero(const T* p, int64_t k) {
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  constexpr Bits kNoSign = static_cast<Bits>(~Bits(0)) >> 1;
  Bits any = 0;
  for (int64_t e = 0; e < k; ++e) {
    Bits b;
    std::memcpy(&b, p + e, sizeof(T));
    any |= b & kNoSign;
  }
  return any == 0;
}

// Gram matrix of one n x d matrix in float64 when at most max_density of it is nonzero (returns
// false, writing nothing, otherwise): gather every column's nonzeros (rows in increasing order),
// then add the products of each pair of them. Writes the diagonal and the strict upper triangle only
// (all the CKA kernel reads); the cost is ~ the sum over columns of nnz^2 instead of n^2 d.
// Nonzeros in every stride-th row: a cheap look at a matrix's density before the full scan.
template <typename T>
int64_t sampled_row_nonzeros(const T* x, int64_t n, int64_t d, int64_t stride) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += stride)
    for (int64_t c = 0; c < d; ++c) count += x[i * d + c] != T(0);
  return count;
}

template <typename T>
bool sparse_gram_one(const T* x, int64_t n, int64_t d, double max_density, double* g) {
  constexpr int64_t kBlock = 16, kStride = 16;
  // Clearly too dense (twice the limit in a 1/16 sample of the rows): leave it to the dense path
  // without scanning all of it first.
  if (n >= 4 * kStride) {
    const int64_t sampled_rows = (n + kStride - 1) / kStride;
    if (static_cast<double>(sampled_row_nonzeros(x, n, d, kStride)) >
        2.0 * max_density * static_cast<double>(sampled_rows * d))
      return false;
  }
  const auto limit = static_cast<int64_t>(max_density * static_cast<double>(n * d));
  // One scan in row order, blocks of zeros skipped; stop as soon as the matrix is too dense.
  std::vector<int32_t> nz_row, nz_col;
  std::vector<double> nz_value;
  std::vector<int64_t> start(d + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * d;
    for (int64_t c0 = 0; c0 < d; c0 += kBlock) {
      const int64_t c1 = std::min(d, c0 + kBlock);
      if (all_zero(row + c0, c1 - c0)) continue;
      for (int64_t c = c0; c < c1; ++c)
        if (row[c] != T(0)) {
          nz_row.push_back(static_cast<int32_t>(i));
          nz_col.push_back(static_cast<int32_t>(c));
          nz_value.push_back(static_cast<double>(row[c]));
          ++start[c + 1];
        }
    }
    if (static_cast<int64_t>(nz_row.size()) > limit) return false;
  }
  // Counting sort by column; stable, so each column's rows stay increasing.
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int32_t> rows(nz_row.size());
  std::vector<double> values(nz_row.size());
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (size_t e = 0; e < nz_row.size(); ++e) {
    const int64_t slot = fill[nz_col[e]]++;
    rows[slot] = nz_row[e];
    values[slot] = nz_value[e];
  }
  std::fill(g, g + n * n, 0.0);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t a = start[c]; a < start[c + 1]; ++a) {
      double* g_row = g + static_cast<int64_t>(rows[a]) * n;
      const double va = values[a];
      g_row[rows[a]] += va * va;
      for (int64_t b = a + 1; b < start[c + 1]; ++b) g_row[rows[b]] += va * values[b];
    }
  return true;
}

// x_ptrs: the address of each row-major matrix (float32, or float64 when is_double); gram_ptrs: where
// each n x n float64 Gram goes; done[m] is set to 1 where matrix m was sparse enough and its Gram written.
void sparse_gram_cpu(std::uintptr_t x_ptrs_ptr, std::uintptr_t rows_ptr, std::uintptr_t cols_ptr, int64_t count,
                     bool is_double, double max_density, std::uintptr_t gram_ptrs_ptr, std::uintptr_t done_ptr) {
  require(count >= 0, "count must be >= 0");
  const int64_t* x_ptrs = as_ptr<const int64_t>(x_ptrs_ptr);
  const int64_t* rows = as_ptr<const int64_t>(rows_ptr);
  const int64_t* cols = as_ptr<const int64_t>(cols_ptr);
  const int64_t* gram_ptrs = as_ptr<const int64_t>(gram_ptrs_ptr);
  uint8_t* done = as_ptr<uint8_t>(done_ptr);
  std::vector<int64_t> cost(count);
  for (int64_t m = 0; m < count; ++m) {
    require(rows[m] >= 0 && rows[m] <= std::numeric_limits<int32_t>::max() && cols[m] >= 0,
            "sparse_gram: bad shape at entry " + std::to_string(m));
    require((x_ptrs[m] != 0 || rows[m] * cols[m] == 0) && (gram_ptrs[m] != 0 || rows[m] == 0),
            "sparse_gram: null pointer at entry " + std::to_string(m));
    cost[m] = rows[m] * cols[m];
  }
  const std::vector<int64_t> order = largest_first(cost.data(), count);
  py::gil_scoped_release release;
  FirstError error;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < count; ++k) {
    const int64_t m = order[k];
    double* g = as_ptr<double>(static_cast<std::uintptr_t>(gram_ptrs[m]));
    const auto address = static_cast<std::uintptr_t>(x_ptrs[m]);
    error.run([&] {
      done[m] = is_double ? sparse_gram_one(as_ptr<const double>(address), rows[m], cols[m], max_density, g)
                          : sparse_gram_one(as_ptr<const float>(address), rows[m], cols[m], max_density, g);
    });
  }
  error.rethrow();
}

#ifdef PYLTH_WITH_CUDA
void cka_from_grams_cuda_binding(std::uintptr_t desc, int64_t pairs, int64_t units, int64_t unit_entries,
                                 bool gram_double, int kernel_id, double threshold, bool unbiased,
                                 std::uintptr_t workspace, std::uintptr_t flags, std::uintptr_t out,
                                 std::uintptr_t stream) {
  require(pairs >= 0 && units >= pairs, "need pairs >= 0 and at least one work unit per pair");
  require(unit_entries > 0, "unit_entries must be positive");
  require(2 * pairs <= std::numeric_limits<int32_t>::max() && units <= std::numeric_limits<int32_t>::max(),
          "too many pairs or work units for one launch");
  require(kernel_id == 0 || kernel_id == 1, "kernel must be 0 (linear) or 1 (rbf)");
  require(threshold > 0.0 && std::isfinite(threshold), "threshold must be a positive finite number");
  cka_from_grams_cuda(as_ptr<const int64_t>(desc), pairs, units, unit_entries, gram_double,
                      static_cast<CkaKernel>(kernel_id), threshold, unbiased, as_ptr<double>(workspace), as_ptr<int32_t>(flags), as_ptr<double>(out),
                      stream);
}
#endif

}  // namespace

void register_cka(py::module_& m) {
  m.def("cka_from_grams_cpu", &cka_from_grams_cpu, py::arg("gram"), py::arg("offsets"), py::arg("sizes"),
        py::arg("pairs"), py::arg("kernel"), py::arg("threshold"), py::arg("unbiased"), py::arg("out"),
        "CKA of each pair from float64 Gram matrices (matrix p against matrix pairs+p); kernel 0 linear, 1 rbf. "
        "Overwrites the Gram upper triangles.");
  m.def("sparse_gram_cpu", &sparse_gram_cpu, py::arg("x_ptrs"), py::arg("rows"), py::arg("cols"),
        py::arg("count"), py::arg("is_double"), py::arg("max_density"), py::arg("gram_ptrs"), py::arg("done"),
        "float64 Gram matrices (diagonal + upper triangle) of the row-major matrices with at most max_density "
        "nonzeros; done[m] = 1 for those.");
#ifdef PYLTH_WITH_CUDA
  m.def("cka_from_grams_cuda", &cka_from_grams_cuda_binding, py::arg("desc"), py::arg("pairs"), py::arg("units"),
        py::arg("unit_entries"), py::arg("gram_double"), py::arg("kernel"), py::arg("threshold"), py::arg("unbiased"), py::arg("workspace"),
        py::arg("flags"), py::arg("out"), py::arg("stream"),
        "CKA of each pair from Gram matrices on the device (layout: csrc/cka.h); asynchronous on stream.");
#endif
}

}  // namespace pylth
