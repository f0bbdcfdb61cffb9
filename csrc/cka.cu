// CKA on the GPU, batched over pairs, in two launches:
//  1. one block per matrix: check its Gram diagonal (a NaN or infinity anywhere in the input reaches
//     it), find the median squared distance and store the RBF scale -1 / (2 t^2 median);
//  2. the kernel and HSIC sums over blocks of rows of every pair (large pairs get many blocks, so
//     they do not serialise the launch); the last block of a pair to finish adds the partial sums in
//     a fixed order (the result does not depend on scheduling) and writes the pair's CKA.
// The median: a strict upper triangle of at most kBuffer values is sorted whole in shared memory.
// A larger one is bracketed from a sorted sample; one pass counts the values below the bracket and
// gathers those inside it, and only those are sorted. When the bracket misses the median's ranks
// (rare) or holds more than kBuffer values (n beyond ~600), a radix select on the bit patterns of the
// non-negative doubles (their unsigned order is their numeric order) finds the ranks instead.
#include <cmath>
#include <cstdint>

#include "cka.h"
#include "cuda_check.h"

namespace pylth {
namespace {

constexpr int kMedianThreads = 512;
constexpr int kSumThreads = 256;
constexpr int kBuffer = 8192;  // doubles of shared memory per median block (64 KB)
constexpr unsigned kFullWarp = 0xffffffffu;

// One n x n row-major Gram matrix (float from float32 inputs, double from float64 ones).
template <typename T>
struct Gram {
  const T* g;
  int64_t n;
  __device__ double at(int64_t i, int64_t j) const { return static_cast<double>(g[i * n + j]); }
  __device__ double diag(int64_t i) const { return at(i, i); }
  // Clamped at 0: rounding can make it negative. The median reads the strict upper triangle (i < j)
  // only, like the CPU path; the sums read whole rows (a GEMM's Gram is symmetric up to rounding).
  __device__ double sq_distance(int64_t i, int64_t j) const { return fmax(diag(i) + diag(j) - 2.0 * at(i, j), 0.0); }
};

// Block-wide sum; every thread gets the total. Uses 32 shared slots; safe to call back to back.
template <typename V>
__device__ V block_sum(V v) {
  __shared__ V partial[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // the previous call's readers are done with partial
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  V total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];  // fixed order
  return total;
}

// Calls f(i, j, valid, d) for every (i, j) of the strict upper triangle, with d its squared distance:
// a warp per row and a lane per column, so that a row's reads are coalesced, and kUnroll columns per
// lane loaded before any call, so that each lane has several loads in flight (the Gram sits in L2,
// and one load at a time leaves the loop waiting on its latency). Every lane of a warp makes the
// same calls (valid is false past the row's end), which lets f use warp votes.
template <typename T, typename F>
__device__ void for_upper(const Gram<T>& side, F f) {
  constexpr int kUnroll = 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t n = side.n;
  for (int64_t i = warp; i < n - 1; i += warps)
    for (int64_t base = i + 1 + lane; base - lane < n; base += 32 * kUnroll) {
      double d[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t j = base + 32 * k;
        d[k] = j < n ? side.sq_distance(i, j) : 0.0;
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) f(i, base + 32 * k, base + 32 * k < n, d[k]);
    }
}

__device__ int next_pow2(int v) {
  int p = 1;
  while (p < v) p *= 2;
  return p;
}

// Ascending bitonic sort of a[0, count) in shared memory, count a power of two.
__device__ void bitonic_sort(double* a, int count) {
  for (int k = 2; k <= count; k *= 2)
    for (int j = k / 2; j > 0; j /= 2) {
      for (int t = threadIdx.x; t < count / 2; t += blockDim.x) {
        const int lo = 2 * t - (t & (j - 1));  // t with a 0 bit inserted at bit log2(j)
        const int hi = lo + j;
        const double x = a[lo], y = a[hi];
        if ((x > y) == ((lo & k) == 0)) {
          a[lo] = y;
          a[hi] = x;
        }
      }
      __syncthreads();
    }
}

__device__ void fill(double* a, int from, int to, double value) {
  for (int e = from + threadIdx.x; e < to; e += blockDim.x) a[e] = value;
  __syncthreads();
}

__device__ unsigned long long key_of(double v) { return static_cast<unsigned long long>(__double_as_longlong(v)); }

// The q-th smallest strict-upper squared distance, 8 bits per pass; buf holds the histogram.
template <typename T>
__device__ double radix_select(const Gram<T>& side, int64_t q, double* buf) {
  unsigned int* histogram = reinterpret_cast<unsigned int*>(buf);
  const int lane = threadIdx.x % 32;
  unsigned long long prefix = 0, mask = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) histogram[b] = 0;
    __syncthreads();
    for_upper(side, [&](int64_t, int64_t, bool valid, double d) {
      const unsigned long long key = valid ? key_of(d) : 0ull;
      const bool counted = valid && (key & mask) == prefix;
      const unsigned bin = static_cast<unsigned>((key >> shift) & 255);
      // Lanes of one bin add once together: the distances of a matrix share their top bits, so
      // without this every lane would queue on the same shared-memory counter.
      const unsigned voters = __ballot_sync(kFullWarp, counted);
      const unsigned peers = __match_any_sync(kFullWarp, counted ? bin : 256u + lane) & voters;
      if (counted && lane == __ffs(peers) - 1) atomicAdd(&histogram[bin], __popc(peers));
    });
    __syncthreads();
    int bin = 0;  // every thread walks the same histogram to the same bin
    int64_t rank = q;
    while (rank >= histogram[bin]) rank -= histogram[bin++];
    q = rank;
    prefix |= static_cast<unsigned long long>(bin) << shift;
    mask |= 255ull << shift;
    __syncthreads();  // the histogram is cleared next pass
  }
  return __longlong_as_double(static_cast<long long>(prefix));
}

// Values of ranks lo and hi (lo <= hi; lo == -1 stands for a diagonal zero) of the strict upper
// triangle (m values), the smallest first.
struct RankPair {
  double lo, hi;
};

template <typename T>
__device__ RankPair select_ranks(const Gram<T>& side, int64_t lo, int64_t hi, double* buf) {
  __shared__ unsigned int gathered;
  const int64_t n = side.n, m = n * (n - 1) / 2;
  const int lane = threadIdx.x % 32;
  if (m <= kBuffer) {  // everything fits: sort it whole
    for_upper(side, [&](int64_t i, int64_t j, bool valid, double d) {
      if (valid) buf[i * (2 * n - i - 1) / 2 + (j - i - 1)] = d;
    });
    const int count = static_cast<int>(m), size = next_pow2(count);
    __syncthreads();
    fill(buf, count, size, INFINITY);
    bitonic_sort(buf, size);
    const RankPair result{lo < 0 ? 0.0 : buf[lo], buf[hi]};
    __syncthreads();
    return result;
  }
  // A sample of kBuffer off-diagonal entries (each upper value sits twice in the full matrix, so the
  // full matrix's off-diagonal order statistics are the upper triangle's), at positions k * P mod n^2
  // for a large prime P: distinct and scattered. (An even stride would sample a few columns only,
  // whose values cluster, and miss the bracket far more often than a random sample.)
  constexpr int64_t kScatter = 2654435761;  // prime
#pragma unroll 4
  for (int k = threadIdx.x; k < kBuffer; k += blockDim.x) {
    const int64_t t = static_cast<int64_t>(k) * kScatter % (n * n);
    int64_t i = t / n, j = t % n;
    if (i == j) j = j + 1 < n ? j + 1 : 0;
    buf[k] = i < j ? side.sq_distance(i, j) : side.sq_distance(j, i);
  }
  __syncthreads();
  bitonic_sort(buf, kBuffer);
  // The bracket: the sample ranks around hi's, 4 standard deviations of a sample rank plus a margin.
  const double f = (static_cast<double>(hi) + 0.5) / static_cast<double>(m);
  const double centre = f * kBuffer, spread = 4.0 * sqrt(kBuffer * f * (1.0 - f)) + 16.0;
  const int low_at = static_cast<int>(floor(centre - spread)), high_at = static_cast<int>(ceil(centre + spread));
  const double low = low_at < 0 ? -1.0 : buf[low_at];
  const double high = high_at >= kBuffer ? INFINITY : buf[high_at];
  if (threadIdx.x == 0) gathered = 0;
  __syncthreads();  // all have read the bracket before buf is overwritten
  int64_t below = 0;
  for_upper(side, [&](int64_t, int64_t, bool valid, double v) {
    below += valid && v < low;
    const bool inside = valid && v >= low && v <= high;
    const unsigned voters = __ballot_sync(kFullWarp, inside);
    if (voters == 0) return;
    unsigned base = 0;
    if (lane == __ffs(voters) - 1) base = atomicAdd(&gathered, __popc(voters));
    base = __shfl_sync(kFullWarp, base, __ffs(voters) - 1);
    const unsigned slot = base + __popc(voters & ((1u << lane) - 1));
    if (inside && slot < kBuffer) buf[slot] = v;
  });
  below = block_sum(below);
  __syncthreads();
  const int64_t count = gathered;
  const auto in_bracket = [&](int64_t r) { return r >= below && r < below + count; };
  if (count <= kBuffer && in_bracket(hi) && (lo < 0 || in_bracket(lo))) {
    const int size = next_pow2(static_cast<int>(count));
    fill(buf, static_cast<int>(count), size, INFINITY);
    bitonic_sort(buf, size);
    const RankPair result{lo < 0 ? 0.0 : buf[lo - below], buf[hi - below]};
    __syncthreads();
    return result;
  }
  const double hi_value = radix_select(side, hi, buf);
  return {lo < 0 ? 0.0 : (lo == hi ? hi_value : radix_select(side, lo, buf)), hi_value};
}

template <typename T>
__device__ double middle(const Gram<T>& side, int64_t lo, int64_t hi, double* buf) {
  const RankPair values = select_ranks(side, lo, hi, buf);
  return lo == hi ? values.hi : 0.5 * (values.lo + values.hi);
}

// The rule of the CPU path (csrc/cka.cpp): median of all n^2 squared distances, else of the positive
// ones, else NaN (all rows identical).
template <typename T>
__device__ double median_squared_distance(const Gram<T>& side, double* buf) {
  const MedianIndices mid = median_indices(side.n);
  const double median = middle(side, mid.lo, mid.hi, buf);
  if (median > 0.0) return median;
  int64_t zeros = 0;
  for_upper(side, [&](int64_t, int64_t, bool valid, double d) { zeros += valid && d == 0.0; });
  zeros = block_sum(zeros);
  const int64_t positives = side.n * (side.n - 1) / 2 - zeros;
  if (positives == 0) return NAN;
  return middle(side, zeros + (positives - 1) / 2, zeros + positives / 2, buf);
}

template <typename T>
__global__ void __launch_bounds__(kMedianThreads) bandwidth_kernel(const int64_t* desc, bool rbf, double threshold,
                                                                   double* scale, int32_t* nonfinite) {
  extern __shared__ double buf[];
  const int64_t m = blockIdx.x;
  const Gram<T> side{reinterpret_cast<const T*>(desc[2 * m]), desc[2 * m + 1]};
  bool bad = false;
  for (int64_t i = threadIdx.x; i < side.n; i += blockDim.x) bad |= !isfinite(side.diag(i));
  bad = __syncthreads_or(bad);
  if (bad || !rbf) {
    if (threadIdx.x == 0) {
      nonfinite[m] = bad;
      scale[m] = bad ? NAN : 0.0;
    }
    return;
  }
  const double median = median_squared_distance(side, buf);
  if (threadIdx.x == 0) {
    nonfinite[m] = 0;
    scale[m] = isnan(median) ? NAN : -1.0 / (2.0 * threshold * threshold * median);
  }
}

template <typename T, CkaKernel kKernel>
__device__ double kernel_value(const Gram<T>& side, int64_t i, int64_t j, double scale, bool unbiased) {
  if (i == j) {
    if (unbiased) return 0.0;  // the unbiased estimator works on kernels with zeroed diagonals
    return kKernel == CkaKernel::rbf ? 1.0 : side.diag(i);
  }
  if (kKernel == CkaKernel::linear) return side.at(i, j);
  return exp(side.sq_distance(i, j) * scale);
}

// desc layout (int64): {Gram address, n} per matrix (pair p: matrices p and pairs + p), then the
// prefix sums of the pairs' unit counts (pairs + 1 values). Unit u of pair p covers rows [c r, c r + r)
// with c = u - first unit of p and r = ceil(unit_entries / n).
template <typename T, CkaKernel kKernel>
__global__ void __launch_bounds__(kSumThreads) sums_kernel(const int64_t* desc, int64_t pairs, int64_t unit_entries,
                                                           const double* scale, bool unbiased, double* partials,
                                                           int32_t* finished, double* out) {
  const int64_t* first_unit = desc + 4 * pairs;
  const int64_t u = blockIdx.x;
  int64_t lo = 0, hi = pairs;  // the pair p with first_unit[p] <= u < first_unit[p + 1]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (first_unit[mid] <= u) lo = mid; else hi = mid;
  }
  const int64_t p = lo;
  const Gram<T> x{reinterpret_cast<const T*>(desc[2 * p]), desc[2 * p + 1]};
  const Gram<T> y{reinterpret_cast<const T*>(desc[2 * (pairs + p)]), desc[2 * (pairs + p) + 1]};
  const int64_t n = x.n;
  const int64_t rows = (unit_entries + n - 1) / n;
  const int64_t row_begin = (u - first_unit[p]) * rows, row_end = min(n, row_begin + rows);
  const double scale_x = scale[p], scale_y = scale[pairs + p];
  const bool undefined = isnan(scale_x) || isnan(scale_y);
  // <K,L>, <K,K>, <L,L>, 1'K1, 1'L1, r.s, r.r, s.s over this block's rows (full rows: r_i is complete).
  double sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t i = row_begin + warp; i < row_end && !undefined; i += warps) {
    double row[5] = {0, 0, 0, 0, 0};  // kl, kk, ll, r_i, s_i
    for (int64_t j = lane; j < n; j += 32) {
      const double k = kernel_value<T, kKernel>(x, i, j, scale_x, unbiased);
      const double l = kernel_value<T, kKernel>(y, i, j, scale_y, unbiased);
      row[0] += k * l;
      row[1] += k * k;
      row[2] += l * l;
      row[3] += k;
      row[4] += l;
    }
    for (int c = 0; c < 5; ++c)
      for (int offset = 16; offset > 0; offset /= 2) row[c] += __shfl_xor_sync(kFullWarp, row[c], offset);
    for (int c = 0; c < 5; ++c) sums[c] += row[c];
    sums[5] += row[3] * row[4];
    sums[6] += row[3] * row[3];
    sums[7] += row[4] * row[4];
  }
  __shared__ double warp_sums[kSumThreads / 32][8];
  if (lane == 0)
    for (int c = 0; c < 8; ++c) warp_sums[warp][c] = sums[c];
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int c = 0; c < 8; ++c) {
    double total = 0;
    for (int w = 0; w < warps; ++w) total += warp_sums[w][c];
    partials[8 * static_cast<int64_t>(blockIdx.x) + c] = total;
  }
  __threadfence();  // the partials are visible before the count that announces them
  const int64_t units = first_unit[p + 1] - first_unit[p];
  if (atomicAdd(&finished[p], 1) != units - 1) return;
  __threadfence();
  const volatile double* all = partials + 8 * first_unit[p];
  double total[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = 0; k < units; ++k)
    for (int c = 0; c < 8; ++c) total[c] += all[8 * k + c];
  HsicSums t;
  t.kl = total[0];
  t.kk = total[1];
  t.ll = total[2];
  t.r = total[3];
  t.s = total[4];
  t.rs = total[5];
  t.rr = total[6];
  t.ss = total[7];
  out[p] = undefined ? NAN : cka_from_sums(t, n, unbiased);
}

template <typename T>
void launch(const int64_t* desc, int64_t pairs, int64_t units, int64_t unit_entries, CkaKernel kernel,
            double threshold, bool unbiased, double* workspace, int32_t* flags, double* out, cudaStream_t stream) {
  double* scale = workspace;
  double* partials = workspace + 2 * pairs;
  int32_t* nonfinite = flags;
  int32_t* finished = flags + 2 * pairs;
  constexpr size_t kSharedBytes = kBuffer * sizeof(double);
  PYLTH_CUDA_CHECK(cudaFuncSetAttribute(bandwidth_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kSharedBytes)));
  bandwidth_kernel<T><<<static_cast<unsigned>(2 * pairs), kMedianThreads, kSharedBytes, stream>>>(
      desc, kernel == CkaKernel::rbf, threshold, scale, nonfinite);
  PYLTH_CUDA_CHECK_LAUNCH();
  const dim3 grid(static_cast<unsigned>(units));
  if (kernel == CkaKernel::rbf)
    sums_kernel<T, CkaKernel::rbf><<<grid, kSumThreads, 0, stream>>>(desc, pairs, unit_entries, scale, unbiased,
                                                                     partials, finished, out);
  else
    sums_kernel<T, CkaKernel::linear><<<grid, kSumThreads, 0, stream>>>(desc, pairs, unit_entries, scale,
                                                                        unbiased, partials, finished, out);
  PYLTH_CUDA_CHECK_LAUNCH();
}

}  // namespace

void cka_from_grams_cuda(const int64_t* desc, int64_t pairs, int64_t units, int64_t unit_entries, bool gram_double,
                         CkaKernel kernel, double threshold, bool unbiased, double* workspace, int32_t* flags,
                         double* out, std::uintptr_t stream) {
  if (pairs == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (gram_double)
    launch<double>(desc, pairs, units, unit_entries, kernel, threshold, unbiased, workspace, flags, out, s);
  else
    launch<float>(desc, pairs, units, unit_entries, kernel, threshold, unbiased, workspace, flags, out, s);
}

}  // namespace pylth
