// Segmented magnitude selection on the GPU: the same exact result as the CPU kernel in 9 launches
// for all segments. A three-digit radix select (11 + 10 + 10 bits of |w|'s float bits) finds each
// group's threshold key T and how many entries equal to T to prune; those ties go to the lowest
// flat indices through a scan of per-chunk tie counts, so masks match the CPU bit for bit.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "common.h"
#include "cuda_check.h"
#include "select.h"

namespace pylth {
namespace {

constexpr int kThreads = 256;
// 1024 threads leave 64 registers each: the kernels launched with it say so (__launch_bounds__), or
// the compiler uses more and the launch fails with "too many resources requested".
constexpr int kFindThreads = 1024;
constexpr int kBins = 2048;  // first digit: 11 bits; the next two use 1024 of them
constexpr uint32_t kAbsBits = 0x7fffffffu;
constexpr uint32_t kInfKey = 0x7f800000u;

struct Workspace {
  int64_t* hist;       // groups x kBins
  int64_t* active;     // per group
  int64_t* remaining;  // per group: rank still to find, finally the ties to prune
  int64_t* prefix;     // per group: digits found so far, finally the threshold key
  int64_t* ties;       // per chunk: ties, then the ties of earlier chunks of the group
  int64_t* scan;       // per chunk: exclusive scan of ties over all chunks
};

Workspace carve(int64_t* base, int64_t groups, int64_t chunks) {
  Workspace w;
  w.hist = base;
  w.active = w.hist + groups * kBins;
  w.remaining = w.active + groups;
  w.prefix = w.remaining + groups;
  w.ties = w.prefix + groups;
  w.scan = w.ties + chunks;
  return w;
}

struct Table {
  const int64_t* meta;
  int segments;
  bool global_mode;
  __device__ const int64_t* chunk_start() const { return meta + 4 * int64_t(segments); }
  // The segment owning `chunk` (empty segments own no chunk).
  __device__ int segment_of(int64_t chunk) const {
    const int64_t* start = chunk_start();
    int lo = 0, hi = segments;
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (start[mid] <= chunk) lo = mid; else hi = mid;
    }
    return lo;
  }
  __device__ int group_of(int segment) const { return global_mode ? 0 : segment; }
};

static_assert(kSelectColumns == 4, "the kernels read rows of 4 values: weight, mask, out, size");

struct ChunkView {
  const uint32_t* bits;
  const uint8_t* mask;
  uint8_t* out;
  int64_t begin, end;
  int segment, group;
};

__device__ ChunkView chunk_view(const Table& t, int64_t chunk) {
  ChunkView v;
  v.segment = t.segment_of(chunk);
  v.group = t.group_of(v.segment);
  const int64_t* row = t.meta + 4 * int64_t(v.segment);
  v.bits = reinterpret_cast<const uint32_t*>(row[0]);
  v.mask = reinterpret_cast<const uint8_t*>(row[1]);
  v.out = reinterpret_cast<uint8_t*>(row[2]);
  v.begin = (chunk - t.chunk_start()[v.segment]) * kSelectCudaChunk;
  v.end = min(v.begin + kSelectCudaChunk, row[3]);
  return v;
}

__device__ __forceinline__ bool is_active(const ChunkView& v, int64_t j) {
  return v.mask == nullptr || v.mask[j] != 0;
}

// Histogram of digit `level` of the active keys whose earlier digits equal the group's prefix.
// Level 0 also counts active entries and flags non-finite weights.
template <int kLevel>
__global__ void histogram_kernel(Table t, Workspace w, int* bad) {
  constexpr int shift = kLevel == 0 ? 20 : (kLevel == 1 ? 10 : 0);
  constexpr uint32_t digit_mask = kLevel == 0 ? 2047u : 1023u;
  constexpr int prefix_shift = shift + (kLevel == 0 ? 11 : 10);
  __shared__ unsigned int hist[kBins];
  using Reduce = cub::BlockReduce<int64_t, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  for (int i = threadIdx.x; i < kBins; i += kThreads) hist[i] = 0;
  __syncthreads();
  const ChunkView v = chunk_view(t, blockIdx.x);
  const uint32_t prefix = kLevel == 0 ? 0u : uint32_t(w.prefix[v.group]);
  int64_t active = 0;
  uint32_t nonfinite = 0;
  for (int64_t j = v.begin + threadIdx.x; j < v.end; j += kThreads) {
    const uint32_t key = v.bits[j] & kAbsBits;
    const bool a = is_active(v, j);
    if (kLevel == 0) {
      nonfinite |= key >= kInfKey;
      active += a;
    }
    if (a && (kLevel == 0 || (key >> prefix_shift) == prefix)) atomicAdd(&hist[(key >> shift) & digit_mask], 1u);
  }
  __syncthreads();
  int64_t* out = w.hist + int64_t(v.group) * kBins;
  for (int i = threadIdx.x; i <= int(digit_mask); i += kThreads)
    if (hist[i]) atomicAdd(reinterpret_cast<unsigned long long*>(out + i), (unsigned long long)hist[i]);
  if (kLevel == 0) {
    if (nonfinite) bad[v.segment] = 1;
    const int64_t total = Reduce(reduce_storage).Sum(active);
    if (threadIdx.x == 0 && total) atomicAdd(reinterpret_cast<unsigned long long*>(w.active + v.group),
                                             (unsigned long long)total);
  }
}

// One block per group: the digit whose bin holds the remaining rank; clears the histogram.
template <int kLevel>
__global__ void __launch_bounds__(kFindThreads) find_digit_kernel(const double* ratios, Workspace w) {
  constexpr int bins = kLevel == 0 ? 2048 : 1024;
  constexpr int per_thread = bins / kFindThreads;
  using Scan = cub::BlockScan<int64_t, kFindThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int found;
  const int g = blockIdx.x;
  int64_t* hist = w.hist + int64_t(g) * kBins;
  // Separately rounded multiply and add (no FMA contraction), exactly as the CPU and Python compute k.
  const int64_t rank = kLevel == 0 ? static_cast<int64_t>(floor(__dadd_rn(__dmul_rn(ratios[g], double(w.active[g])), 0.5)))
                                   : w.remaining[g];
  if (threadIdx.x == 0) found = 0;  // rank 0 (nothing to prune) keeps digit 0
  __syncthreads();  // found must be 0 before any thread may set it, whatever the scan does inside
  static_assert(per_thread >= 1 && bins % kFindThreads == 0, "bins must be a multiple of the block");
  int64_t counts[per_thread], inclusive[per_thread];
  const int first = threadIdx.x * per_thread;
  for (int i = 0; i < per_thread; ++i) counts[i] = hist[first + i];
  Scan(scan_storage).InclusiveSum(counts, inclusive);
  __syncthreads();
  int64_t below_found = 0;
  for (int i = 0; i < per_thread; ++i) {
    if (inclusive[i] - counts[i] < rank && rank <= inclusive[i]) found = first + i;
  }
  __syncthreads();
  const int digit = found;
  // Entries below the digit's bin come off the rank; every thread sees the same value.
  for (int i = 0; i < per_thread; ++i)
    if (first + i == digit) below_found = inclusive[i] - counts[i];
  __shared__ int64_t below;
  if (first <= digit && digit < first + per_thread) below = below_found;
  __syncthreads();
  for (int i = threadIdx.x; i < bins; i += kFindThreads) hist[i] = 0;
  if (threadIdx.x == 0) {
    w.remaining[g] = rank - below;
    w.prefix[g] = kLevel == 0 ? digit : (w.prefix[g] << 10) | digit;
  }
}

__global__ void count_ties_kernel(Table t, Workspace w) {
  using Reduce = cub::BlockReduce<int64_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const ChunkView v = chunk_view(t, blockIdx.x);
  const uint32_t threshold = uint32_t(w.prefix[v.group]);
  int64_t ties = 0;
  for (int64_t j = v.begin + threadIdx.x; j < v.end; j += kThreads)
    ties += is_active(v, j) && (v.bits[j] & kAbsBits) == threshold;
  const int64_t total = Reduce(storage).Sum(ties);
  if (threadIdx.x == 0) w.ties[blockIdx.x] = total;
}

// Single block: ties of the earlier chunks of the same group, for every chunk.
__global__ void __launch_bounds__(kFindThreads) scan_ties_kernel(Table t, Workspace w, int64_t chunks) {
  using Scan = cub::BlockScan<int64_t, kFindThreads>;
  __shared__ typename Scan::TempStorage storage;
  __shared__ int64_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t tile = 0; tile < chunks; tile += kFindThreads) {
    const int64_t c = tile + threadIdx.x;
    const int64_t value = c < chunks ? w.ties[c] : 0;
    int64_t exclusive, tile_total;
    Scan(storage).ExclusiveSum(value, exclusive, tile_total);
    if (c < chunks) w.scan[c] = carry + exclusive;
    __syncthreads();
    if (threadIdx.x == 0) carry += tile_total;
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < chunks; c += kFindThreads) {
    const int64_t first = t.global_mode ? 0 : t.chunk_start()[t.segment_of(c)];
    w.ties[c] = w.scan[c] - w.scan[first];
  }
}

// Keep active entries above T, prune those below, and prune the first `remaining` ties in index order.
__global__ void write_masks_kernel(Table t, Workspace w) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  const ChunkView v = chunk_view(t, blockIdx.x);
  const uint32_t threshold = uint32_t(w.prefix[v.group]);
  const int64_t prune_ties = w.remaining[v.group];
  int64_t rank_base = w.ties[blockIdx.x];
  for (int64_t tile = v.begin; tile < v.end; tile += kThreads) {
    const int64_t j = tile + threadIdx.x;
    const bool inside = j < v.end;
    const uint32_t key = inside ? v.bits[j] & kAbsBits : 0u;
    const bool a = inside && is_active(v, j);
    const int tie = a && key == threshold;
    int rank, tile_ties;
    Scan(storage).ExclusiveSum(tie, rank, tile_ties);
    if (inside) {
      const bool pruned = key < threshold || (tie && rank_base + rank < prune_ties);
      v.out[j] = a && !pruned;
    }
    rank_base += tile_ties;
    __syncthreads();
  }
}

}  // namespace

int64_t select_cuda_workspace_words(int64_t segments, int64_t groups, int64_t chunks) {
  require(segments > 0 && groups > 0 && chunks >= 0, "select_cuda: bad sizes");
  return groups * kBins + 3 * groups + 2 * chunks;
}

void select_cuda(const ArgTable& segments, std::uintptr_t ratios, std::uintptr_t workspace, std::uintptr_t bad,
                 int64_t chunks, bool global_mode, std::uintptr_t stream) {
  require(segments.rows() > 0 && segments.rows() < (int64_t(1) << 31), "select_cuda: segments out of range");
  require(chunks > 0 && chunks < (int64_t(1) << 31), "select_cuda: chunks out of range");
  const int64_t groups = global_mode ? 1 : segments.rows();
  const Table t{segments.data(), int(segments.rows()), global_mode};
  const Workspace w = carve(as_ptr<int64_t>(workspace), groups, chunks);
  const double* r = as_ptr<const double>(ratios);
  int* flags = as_ptr<int>(bad);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned grid = unsigned(chunks), group_grid = unsigned(groups);
  histogram_kernel<0><<<grid, kThreads, 0, s>>>(t, w, flags);
  PYLTH_CUDA_CHECK_LAUNCH();
  find_digit_kernel<0><<<group_grid, kFindThreads, 0, s>>>(r, w);
  PYLTH_CUDA_CHECK_LAUNCH();
  histogram_kernel<1><<<grid, kThreads, 0, s>>>(t, w, flags);
  PYLTH_CUDA_CHECK_LAUNCH();
  find_digit_kernel<1><<<group_grid, kFindThreads, 0, s>>>(r, w);
  PYLTH_CUDA_CHECK_LAUNCH();
  histogram_kernel<2><<<grid, kThreads, 0, s>>>(t, w, flags);
  PYLTH_CUDA_CHECK_LAUNCH();
  find_digit_kernel<2><<<group_grid, kFindThreads, 0, s>>>(r, w);
  PYLTH_CUDA_CHECK_LAUNCH();
  count_ties_kernel<<<grid, kThreads, 0, s>>>(t, w);
  PYLTH_CUDA_CHECK_LAUNCH();
  scan_ties_kernel<<<1, kFindThreads, 0, s>>>(t, w, chunks);
  PYLTH_CUDA_CHECK_LAUNCH();
  write_masks_kernel<<<grid, kThreads, 0, s>>>(t, w);
  PYLTH_CUDA_CHECK_LAUNCH();
}

}  // namespace pylth
