// Host-side entry points of the CUDA kernels in csrc/*.cu.
//
// Plain C++ (no CUDA or torch types): the torch bindings (*.cpp) include this with the host
// compiler, the kernels (*.cu) implement it with nvcc against the CUDA toolkit only. Every
// launcher enqueues on `stream` (a cudaStream_t passed as void*) and returns the
// cudaError_t of the launch as an int (0 = success); error_string() turns it into text.
//
// Logit tiles are row-major fp32 [rows, cols] with leading dimension `cols`, holding the
// raw GEMM output h @ W[v0:v0+cols]^T. Kernels add the bias (fp32, already offset to v0;
// nullptr = none) and multiply by inv_temp = 1 / temperature. One thread block per row.
#pragma once

#include <cstdint>

namespace tcod {

// Divergence codes of the KL ops.
enum Divergence : int { kForwardKL = 0, kReverseKL = 1, kJSD = 2 };

// Element type of the optional low-precision copy of a gradient tile.
enum GradCopy : int { kNoCopy = 0, kCopyHalf = 1, kCopyBFloat16 = 2, kCopyDouble = 3 };

// Number of floats per row in the running-state buffers below.
constexpr int kKLStateFloats = 5;   // m_s, s_s, m_t, s_t, x     (layout of tcod::KLState)
constexpr int kLogpStateFloats = 4; // m, s, a, target logit     (SoftmaxMoment + target)

const char* error_string(int code);

// ---- fused KL ------------------------------------------------------------------------
// Initializes `rows` KL states to empty.
int kl_state_init(float* state, int64_t rows, void* stream);

// Pass 1: folds the tile's columns into the per-row KL states.
int kl_stats(const float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s,
             const float* bias_t, float inv_temp, int divergence, float* state, void* stream);

// After pass 1: lse_s[r], lse_t[r]; loss[r] = KL for forward/reverse (0 for jsd);
// c[r] = KL for reverse, 0 otherwise (the jsd pass adds KL(p_s||M) into it).
int kl_finalize(const float* state, int64_t rows, int divergence, float* loss, float* lse_s,
                float* lse_t, float* c, void* stream);

// JSD pass: loss[r] += sum_v jsd term, c[r] += KL(p_s || M) (both zeroed by kl_finalize).
int jsd_accumulate(const float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s,
                   const float* bias_t, float inv_temp, float beta, const float* lse_s,
                   const float* lse_t, float* loss, float* c, void* stream);

// Gradient pass: overwrites zs with dL/d(raw student logit) =
//   row_scale[r] * inv_temp * kl_grad(...)   (row_scale nullptr = 1)
// and, unless copy == kNoCopy, writes the same values converted into `copy_out`.
int kl_grad(float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s,
            const float* bias_t, float inv_temp, int divergence, float beta, const float* lse_s,
            const float* lse_t, const float* c, const float* row_scale, int copy, void* copy_out,
            void* stream);

// ---- fused log-probs -----------------------------------------------------------------
int logp_state_init(float* state, int64_t rows, void* stream);

// Pass 1: per-row (max, sumexp, moment) and the target's logit when it lies in
// [v0, v0 + cols). targets are int64 row-aligned with the tile.
int logp_stats(const float* z, int64_t rows, int64_t cols, const float* bias, float inv_temp,
               const int64_t* targets, int64_t v0, float* state, void* stream);

// logp[r] = z_target - lse, entropy[r] = H, lse[r].
int logp_finalize(const float* state, int64_t rows, float* logp, float* entropy, float* lse,
                  void* stream);

// Gradient pass: overwrites z with inv_temp * logprob_grad(...) using per-row upstream
// gradients g_logp[r] and g_ent[r] (either may be nullptr = 0).
int logp_grad(float* z, int64_t rows, int64_t cols, const float* bias, float inv_temp,
              const int64_t* targets, int64_t v0, const float* lse, const float* entropy,
              const float* g_logp, const float* g_ent, int copy, void* copy_out, void* stream);

// ---- packing -------------------------------------------------------------------------
// out[t] = loss_mask[t] && 0 <= seq_ids[t] < num_seqs && lo[s] <= turn_ids[t] < hi[s].
int window_mask(const bool* loss_mask, const int32_t* turn_ids, const int32_t* seq_ids,
                const int64_t* lo, const int64_t* hi, int64_t num_seqs, int64_t n, bool* out,
                void* stream);

// out[k] += values[t] for every t with segment_ids[t] == k in [0, num_segments).
// `out` must be zeroed by the caller. double_precision selects float64 values/out.
int segment_sum(const void* values, const int64_t* segment_ids, int64_t n, int64_t num_segments,
                bool double_precision, void* out, void* stream);

}  // namespace tcod
