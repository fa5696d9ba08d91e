// Block-wide reductions of small POD structs of floats (one block = one logits row).
#pragma once

#include <cuda_runtime.h>

namespace tcod {

constexpr int kRowThreads = 256;  // threads per row block; a multiple of 32, at most 1024

// Shuffles every float field of a POD struct down by `offset` lanes.
template <typename T>
__device__ __forceinline__ T shfl_down_fields(const T& v, int offset) {
  static_assert(sizeof(T) % sizeof(float) == 0, "struct of floats expected");
  constexpr int kFields = sizeof(T) / sizeof(float);
  T out;
  const float* src = reinterpret_cast<const float*>(&v);
  float* dst = reinterpret_cast<float*>(&out);
#pragma unroll
  for (int i = 0; i < kFields; ++i) dst[i] = __shfl_down_sync(0xffffffffu, src[i], offset);
  return out;
}

// Reduces one value per thread with the associative `merge`; the result is valid in
// thread 0 only. `empty` is the identity. Every thread of the block must call it, at most
// once per kernel and type (the shared scratch is not re-synchronized for a second call).
template <typename T, typename Merge>
__device__ T block_reduce(T v, const T& empty, Merge merge) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = merge(v, shfl_down_fields(v, offset));
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    v = lane < warps ? partial[lane] : empty;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = merge(v, shfl_down_fields(v, offset));
  }
  return v;
}

struct FloatPair {
  float a;
  float b;
};

}  // namespace tcod
