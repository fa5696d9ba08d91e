// Packed-sequence kernels: curriculum window masks and per-segment sums (launchers.h).
#include <cuda_runtime.h>

#include "launchers.h"

namespace tcod {
namespace {

constexpr int kThreads = 256;

__global__ void window_mask_kernel(const bool* loss_mask, const int32_t* turn_ids, const int32_t* seq_ids,
                                   const int64_t* lo, const int64_t* hi, int64_t num_seqs, int64_t n, bool* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const int64_t s = seq_ids[t];
  bool keep = loss_mask[t] && s >= 0 && s < num_seqs;
  if (keep) {
    const int64_t turn = turn_ids[t];
    keep = lo[s] <= turn && turn < hi[s];
  }
  out[t] = keep;
}

template <typename T>
__global__ void segment_sum_kernel(const T* values, const int64_t* segment_ids, int64_t n, int64_t num_segments,
                                   T* out) {
  // One atomic add per counted token (grid-stride); the order of additions is not fixed.
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += stride) {
    const int64_t k = segment_ids[t];
    if (k >= 0 && k < num_segments) atomicAdd(out + k, values[t]);
  }
}

}  // namespace

int window_mask(const bool* loss_mask, const int32_t* turn_ids, const int32_t* seq_ids, const int64_t* lo,
                const int64_t* hi, int64_t num_seqs, int64_t n, bool* out, void* stream) {
  if (n == 0) return 0;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  window_mask_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(loss_mask, turn_ids, seq_ids, lo,
                                                                                 hi, num_seqs, n, out);
  return static_cast<int>(cudaGetLastError());
}

int segment_sum(const void* values, const int64_t* segment_ids, int64_t n, int64_t num_segments,
                bool double_precision, void* out, void* stream) {
  if (n == 0 || num_segments == 0) return 0;
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(wanted < 4096 ? wanted : 4096);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (double_precision) {
    segment_sum_kernel<double><<<blocks, kThreads, 0, s>>>(static_cast<const double*>(values), segment_ids, n,
                                                          num_segments, static_cast<double*>(out));
  } else {
    segment_sum_kernel<float><<<blocks, kThreads, 0, s>>>(static_cast<const float*>(values), segment_ids, n,
                                                         num_segments, static_cast<float*>(out));
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tcod
