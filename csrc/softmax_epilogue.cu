// Epilogue kernels of the fused KL / log-prob sweeps: they read fp32 logits tiles written
// by cuBLAS and fold them into per-row softmax statistics, losses and gradient tiles.
// The math lives in online_softmax.cuh; see launchers.h for each launcher's contract.
//
// Grid: one block of kRowThreads threads per tile row (blockIdx.x = row); threads stride
// over the row's columns. All offsets into a tile are int64 (row * cols may exceed 2^31).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "block_reduce.cuh"
#include "launchers.h"
#include "online_softmax.cuh"

namespace tcod {
namespace {

__device__ __forceinline__ float tile_logit(const float* row, const float* bias, int64_t j, float inv_temp) {
  const float raw = row[j] + (bias != nullptr ? bias[j] : 0.f);
  return raw * inv_temp;
}

template <typename T>
__device__ __forceinline__ T convert_from_float(float v);
template <>
__device__ __forceinline__ float convert_from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half convert_from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 convert_from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ double convert_from_float<double>(float v) { return static_cast<double>(v); }

// ---------------------------------------------------------------- state init / finalize

__global__ void fill_state_kernel(float* state, int64_t rows, int floats_per_row, int64_t empty_mask) {
  // empty_mask bit k set: field k starts at -inf (a running max), else 0.
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * floats_per_row) return;
  const int field = static_cast<int>(i % floats_per_row);
  state[i] = ((empty_mask >> field) & 1) ? -INFINITY : 0.f;
}

int fill_state(float* state, int64_t rows, int floats_per_row, int64_t empty_mask, void* stream) {
  const int64_t total = rows * floats_per_row;
  if (total == 0) return 0;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  fill_state_kernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      state, rows, floats_per_row, empty_mask);
  return static_cast<int>(cudaGetLastError());
}

__global__ void kl_finalize_kernel(const KLState* state, int64_t rows, int div, float* loss, float* lse_s,
                                   float* lse_t, float* c) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const KLState st = state[r];
  const float kl = kl_value(st, div);
  lse_s[r] = softmax_lse(st.st);
  lse_t[r] = softmax_lse(st.te);
  loss[r] = kl;
  c[r] = div == kReverseKL ? kl : 0.f;
}

struct LogpState {
  SoftmaxMoment sm;
  float target_logit;
};

__global__ void logp_finalize_kernel(const LogpState* state, int64_t rows, float* logp, float* entropy, float* lse) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const LogpState st = state[r];
  const float l = st.sm.m + logf(st.sm.s);
  lse[r] = l;
  logp[r] = st.target_logit - l;
  entropy[r] = moment_entropy(st.sm);
}

// ---------------------------------------------------------------- KL passes

__global__ void __launch_bounds__(kRowThreads)
kl_stats_kernel(const float* zs, const float* zt, int64_t cols, const float* bias_s, const float* bias_t,
                float inv_temp, int div, KLState* state) {
  const int64_t r = blockIdx.x;
  const float* row_s = zs + r * cols;
  const float* row_t = zt + r * cols;
  KLState acc = kl_empty();
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    kl_push(acc, tile_logit(row_s, bias_s, j, inv_temp), tile_logit(row_t, bias_t, j, inv_temp), div);
  }
  acc = block_reduce(acc, kl_empty(), [div](const KLState& a, const KLState& b) { return kl_merge(a, b, div); });
  if (threadIdx.x == 0) state[r] = kl_merge(state[r], acc, div);
}

__global__ void __launch_bounds__(kRowThreads)
jsd_accumulate_kernel(const float* zs, const float* zt, int64_t cols, const float* bias_s, const float* bias_t,
                      float inv_temp, float beta, const float* lse_s, const float* lse_t, float* loss,
                      float* c) {
  const int64_t r = blockIdx.x;
  const float* row_s = zs + r * cols;
  const float* row_t = zt + r * cols;
  const float ls = lse_s[r], lt = lse_t[r];
  const float log_beta = logf(beta), log_1m_beta = log1pf(-beta);
  FloatPair acc{0.f, 0.f};
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float lps = tile_logit(row_s, bias_s, j, inv_temp) - ls;
    const float lpt = tile_logit(row_t, bias_t, j, inv_temp) - lt;
    const JSDTerms t = jsd_terms(lps, lpt, beta, log_beta, log_1m_beta);
    acc.a += t.loss;
    acc.b += t.ksm;
  }
  acc = block_reduce(acc, FloatPair{0.f, 0.f},
                     [](const FloatPair& x, const FloatPair& y) { return FloatPair{x.a + y.a, x.b + y.b}; });
  if (threadIdx.x == 0) {
    loss[r] += acc.a;
    c[r] += acc.b;
  }
}

template <typename CopyT>
__global__ void __launch_bounds__(kRowThreads)
kl_grad_kernel(float* zs, const float* zt, int64_t cols, const float* bias_s, const float* bias_t, float inv_temp,
               int div, float beta, const float* lse_s, const float* lse_t, const float* c,
               const float* row_scale, CopyT* copy_out) {
  const int64_t r = blockIdx.x;
  float* row_s = zs + r * cols;
  const float* row_t = zt + r * cols;
  const float ls = lse_s[r], lt = lse_t[r], cr = c[r];
  const float scale = inv_temp * (row_scale != nullptr ? row_scale[r] : 1.f);
  const float log_beta = logf(beta), log_1m_beta = log1pf(-beta);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float lps = tile_logit(row_s, bias_s, j, inv_temp) - ls;
    const float lpt = tile_logit(row_t, bias_t, j, inv_temp) - lt;
    const float d = scale * kl_grad(lps, lpt, cr, div, beta, log_beta, log_1m_beta);
    row_s[j] = d;
    if (copy_out != nullptr) copy_out[r * cols + j] = convert_from_float<CopyT>(d);
  }
}

// ---------------------------------------------------------------- log-prob passes

__global__ void __launch_bounds__(kRowThreads)
logp_stats_kernel(const float* z, int64_t cols, const float* bias, float inv_temp, const int64_t* targets,
                  int64_t v0, LogpState* state) {
  const int64_t r = blockIdx.x;
  const float* row = z + r * cols;
  SoftmaxMoment acc = moment_empty();
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) moment_push(acc, tile_logit(row, bias, j, inv_temp));
  acc = block_reduce(acc, moment_empty(), [](const SoftmaxMoment& a, const SoftmaxMoment& b) { return moment_merge(a, b); });
  if (threadIdx.x == 0) {
    state[r].sm = moment_merge(state[r].sm, acc);
    const int64_t j = targets[r] - v0;
    if (j >= 0 && j < cols) state[r].target_logit = tile_logit(row, bias, j, inv_temp);
  }
}

template <typename CopyT>
__global__ void __launch_bounds__(kRowThreads)
logp_grad_kernel(float* z, int64_t cols, const float* bias, float inv_temp, const int64_t* targets, int64_t v0,
                 const float* lse, const float* entropy, const float* g_logp, const float* g_ent,
                 CopyT* copy_out) {
  const int64_t r = blockIdx.x;
  float* row = z + r * cols;
  const float l = lse[r], h = entropy[r];
  const float gl = g_logp != nullptr ? g_logp[r] : 0.f;
  const float ge = g_ent != nullptr ? g_ent[r] : 0.f;
  const int64_t target = targets[r] - v0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const float lp = tile_logit(row, bias, j, inv_temp) - l;
    const float d = inv_temp * logprob_grad(lp, j == target, h, gl, ge);
    row[j] = d;
    if (copy_out != nullptr) copy_out[r * cols + j] = convert_from_float<CopyT>(d);
  }
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

int last_error() { return static_cast<int>(cudaGetLastError()); }

// Row grids use blockIdx.x (up to 2^31 - 1 rows).
unsigned row_blocks(int64_t rows) { return static_cast<unsigned>(rows); }

unsigned elem_blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// Dispatches a gradient kernel on the optional copy's element type.
template <template <typename> class Launch, typename... Args>
int with_copy_type(int copy, void* copy_out, Args... args) {
  switch (copy) {
    case kNoCopy:
      return Launch<float>::run(static_cast<float*>(nullptr), args...);
    case kCopyHalf:
      return Launch<__half>::run(static_cast<__half*>(copy_out), args...);
    case kCopyBFloat16:
      return Launch<__nv_bfloat16>::run(static_cast<__nv_bfloat16*>(copy_out), args...);
    case kCopyDouble:
      return Launch<double>::run(static_cast<double*>(copy_out), args...);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

template <typename CopyT>
struct KLGradLaunch {
  static int run(CopyT* copy_out, float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s,
                 const float* bias_t, float inv_temp, int div, float beta, const float* lse_s, const float* lse_t,
                 const float* c, const float* row_scale, cudaStream_t stream) {
    kl_grad_kernel<CopyT><<<row_blocks(rows), kRowThreads, 0, stream>>>(
        zs, zt, cols, bias_s, bias_t, inv_temp, div, beta, lse_s, lse_t, c, row_scale, copy_out);
    return last_error();
  }
};

template <typename CopyT>
struct LogpGradLaunch {
  static int run(CopyT* copy_out, float* z, int64_t rows, int64_t cols, const float* bias, float inv_temp,
                 const int64_t* targets, int64_t v0, const float* lse, const float* entropy, const float* g_logp,
                 const float* g_ent, cudaStream_t stream) {
    logp_grad_kernel<CopyT><<<row_blocks(rows), kRowThreads, 0, stream>>>(
        z, cols, bias, inv_temp, targets, v0, lse, entropy, g_logp, g_ent, copy_out);
    return last_error();
  }
};

}  // namespace

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

// ---------------------------------------------------------------- launchers: KL

int kl_state_init(float* state, int64_t rows, void* stream) {
  static_assert(sizeof(KLState) == kKLStateFloats * sizeof(float), "KLState layout");
  // fields: m_s (-inf), s_s, m_t (-inf), s_t, x
  return fill_state(state, rows, kKLStateFloats, 0b00101, stream);
}

int kl_stats(const float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s, const float* bias_t,
             float inv_temp, int divergence, float* state, void* stream) {
  if (rows == 0) return 0;
  kl_stats_kernel<<<row_blocks(rows), kRowThreads, 0, as_stream(stream)>>>(
      zs, zt, cols, bias_s, bias_t, inv_temp, divergence, reinterpret_cast<KLState*>(state));
  return last_error();
}

int kl_finalize(const float* state, int64_t rows, int divergence, float* loss, float* lse_s, float* lse_t, float* c,
                void* stream) {
  if (rows == 0) return 0;
  kl_finalize_kernel<<<elem_blocks(rows, 256), 256, 0, as_stream(stream)>>>(
      reinterpret_cast<const KLState*>(state), rows, divergence, loss, lse_s, lse_t, c);
  return last_error();
}

int jsd_accumulate(const float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s,
                   const float* bias_t, float inv_temp, float beta, const float* lse_s, const float* lse_t,
                   float* loss, float* c, void* stream) {
  if (rows == 0) return 0;
  jsd_accumulate_kernel<<<row_blocks(rows), kRowThreads, 0, as_stream(stream)>>>(
      zs, zt, cols, bias_s, bias_t, inv_temp, beta, lse_s, lse_t, loss, c);
  return last_error();
}

int kl_grad(float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s, const float* bias_t,
            float inv_temp, int divergence, float beta, const float* lse_s, const float* lse_t, const float* c,
            const float* row_scale, int copy, void* copy_out, void* stream) {
  if (rows == 0) return 0;
  return with_copy_type<KLGradLaunch>(copy, copy_out, zs, zt, rows, cols, bias_s, bias_t, inv_temp, divergence,
                                      beta, lse_s, lse_t, c, row_scale, as_stream(stream));
}

// ---------------------------------------------------------------- launchers: log-probs

int logp_state_init(float* state, int64_t rows, void* stream) {
  static_assert(sizeof(LogpState) == kLogpStateFloats * sizeof(float), "LogpState layout");
  // fields: m (-inf), s, a, target logit
  return fill_state(state, rows, kLogpStateFloats, 0b0001, stream);
}

int logp_stats(const float* z, int64_t rows, int64_t cols, const float* bias, float inv_temp, const int64_t* targets,
               int64_t v0, float* state, void* stream) {
  if (rows == 0) return 0;
  logp_stats_kernel<<<row_blocks(rows), kRowThreads, 0, as_stream(stream)>>>(
      z, cols, bias, inv_temp, targets, v0, reinterpret_cast<LogpState*>(state));
  return last_error();
}

int logp_finalize(const float* state, int64_t rows, float* logp, float* entropy, float* lse, void* stream) {
  if (rows == 0) return 0;
  logp_finalize_kernel<<<elem_blocks(rows, 256), 256, 0, as_stream(stream)>>>(
      reinterpret_cast<const LogpState*>(state), rows, logp, entropy, lse);
  return last_error();
}

int logp_grad(float* z, int64_t rows, int64_t cols, const float* bias, float inv_temp, const int64_t* targets,
              int64_t v0, const float* lse, const float* entropy, const float* g_logp, const float* g_ent, int copy,
              void* copy_out, void* stream) {
  if (rows == 0) return 0;
  return with_copy_type<LogpGradLaunch>(copy, copy_out, z, rows, cols, bias, inv_temp, targets, v0, lse, entropy,
                                        g_logp, g_ent, as_stream(stream));
}

}  // namespace tcod
