// Host emulation of the launchers in csrc/launchers.h, for testing the torch-side sweeps
// (fused_kl.cpp, fused_logprobs.cpp, sweep.cpp, packing_ops.cpp) on a machine without a GPU.
//
// Each launcher runs the same per-row math as its CUDA kernel (online_softmax.cuh): a row
// is split over kThreads emulated threads that visit columns t, t + kThreads, ..., and
// their states are merged as the block reduction does. Built only by
// csrc/tests/host_emulation_check.py, never into the extension.
#include <cstring>
#include <vector>

#include "../launchers.h"
#include "../online_softmax.cuh"

namespace tcod {
namespace {

constexpr int kThreads = 256;  // mirrors kRowThreads in block_reduce.cuh
constexpr int kUnsupported = 1;

struct LogpState {
  SoftmaxMoment sm;
  float target_logit;
};

float tile_logit(const float* row, const float* bias, int64_t j, float inv_temp) {
  return (row[j] + (bias != nullptr ? bias[j] : 0.f)) * inv_temp;
}

// Folds a row with per-thread states, then merges them pairwise like a tree reduction.
template <typename State, typename Push, typename Merge>
State reduce_row(int64_t cols, State empty, Push push, Merge merge) {
  std::vector<State> threads(kThreads, empty);
  for (int t = 0; t < kThreads; ++t)
    for (int64_t j = t; j < cols; j += kThreads) push(threads[t], j);
  for (int width = kThreads / 2; width > 0; width /= 2)
    for (int t = 0; t < width; ++t) threads[t] = merge(threads[t], threads[t + width]);
  return threads[0];
}

int write_copy(int copy, void* copy_out, int64_t index, float v) {
  if (copy == kNoCopy) return 0;
  if (copy == kCopyDouble) {
    static_cast<double*>(copy_out)[index] = v;
    return 0;
  }
  return kUnsupported;  // half/bfloat16 conversions are the device's; tests use fp32/fp64
}

}  // namespace

const char* error_string(int code) { return code == 0 ? "no error" : "unsupported in the host emulation"; }

int kl_state_init(float* state, int64_t rows, void*) {
  auto* st = reinterpret_cast<KLState*>(state);
  for (int64_t r = 0; r < rows; ++r) st[r] = kl_empty();
  return 0;
}

int kl_stats(const float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s, const float* bias_t,
             float inv_temp, int divergence, float* state, void*) {
  auto* st = reinterpret_cast<KLState*>(state);
  for (int64_t r = 0; r < rows; ++r) {
    const float* rs = zs + r * cols;
    const float* rt = zt + r * cols;
    const KLState acc = reduce_row(
        cols, kl_empty(),
        [&](KLState& s, int64_t j) {
          kl_push(s, tile_logit(rs, bias_s, j, inv_temp), tile_logit(rt, bias_t, j, inv_temp), divergence);
        },
        [&](const KLState& a, const KLState& b) { return kl_merge(a, b, divergence); });
    st[r] = kl_merge(st[r], acc, divergence);
  }
  return 0;
}

int kl_finalize(const float* state, int64_t rows, int divergence, float* loss, float* lse_s, float* lse_t, float* c,
                void*) {
  const auto* st = reinterpret_cast<const KLState*>(state);
  for (int64_t r = 0; r < rows; ++r) {
    const float kl = kl_value(st[r], divergence);
    lse_s[r] = softmax_lse(st[r].st);
    lse_t[r] = softmax_lse(st[r].te);
    loss[r] = kl;
    c[r] = divergence == kReverseKL ? kl : 0.f;
  }
  return 0;
}

int jsd_accumulate(const float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s,
                   const float* bias_t, float inv_temp, float beta, const float* lse_s, const float* lse_t,
                   float* loss, float* c, void*) {
  const float log_beta = logf(beta), log_1m_beta = log1pf(-beta);
  for (int64_t r = 0; r < rows; ++r) {
    float total = 0.f, ksm = 0.f;
    for (int64_t j = 0; j < cols; ++j) {
      const JSDTerms t = jsd_terms(tile_logit(zs + r * cols, bias_s, j, inv_temp) - lse_s[r],
                                   tile_logit(zt + r * cols, bias_t, j, inv_temp) - lse_t[r], beta, log_beta,
                                   log_1m_beta);
      total += t.loss;
      ksm += t.ksm;
    }
    loss[r] += total;
    c[r] += ksm;
  }
  return 0;
}

int kl_grad(float* zs, const float* zt, int64_t rows, int64_t cols, const float* bias_s, const float* bias_t,
            float inv_temp, int divergence, float beta, const float* lse_s, const float* lse_t, const float* c,
            const float* row_scale, int copy, void* copy_out, void*) {
  const float log_beta = logf(beta), log_1m_beta = log1pf(-beta);
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = inv_temp * (row_scale != nullptr ? row_scale[r] : 1.f);
    for (int64_t j = 0; j < cols; ++j) {
      const float lps = tile_logit(zs + r * cols, bias_s, j, inv_temp) - lse_s[r];
      const float lpt = tile_logit(zt + r * cols, bias_t, j, inv_temp) - lse_t[r];
      const float d = scale * kl_grad(lps, lpt, c[r], divergence, beta, log_beta, log_1m_beta);
      zs[r * cols + j] = d;
      if (write_copy(copy, copy_out, r * cols + j, d)) return kUnsupported;
    }
  }
  return 0;
}

int logp_state_init(float* state, int64_t rows, void*) {
  auto* st = reinterpret_cast<LogpState*>(state);
  for (int64_t r = 0; r < rows; ++r) st[r] = LogpState{moment_empty(), 0.f};
  return 0;
}

int logp_stats(const float* z, int64_t rows, int64_t cols, const float* bias, float inv_temp, const int64_t* targets,
               int64_t v0, float* state, void*) {
  auto* st = reinterpret_cast<LogpState*>(state);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = z + r * cols;
    const SoftmaxMoment acc = reduce_row(
        cols, moment_empty(), [&](SoftmaxMoment& s, int64_t j) { moment_push(s, tile_logit(row, bias, j, inv_temp)); },
        [](const SoftmaxMoment& a, const SoftmaxMoment& b) { return moment_merge(a, b); });
    st[r].sm = moment_merge(st[r].sm, acc);
    const int64_t j = targets[r] - v0;
    if (j >= 0 && j < cols) st[r].target_logit = tile_logit(row, bias, j, inv_temp);
  }
  return 0;
}

int logp_finalize(const float* state, int64_t rows, float* logp, float* entropy, float* lse, void*) {
  const auto* st = reinterpret_cast<const LogpState*>(state);
  for (int64_t r = 0; r < rows; ++r) {
    const float l = st[r].sm.m + logf(st[r].sm.s);
    lse[r] = l;
    logp[r] = st[r].target_logit - l;
    entropy[r] = moment_entropy(st[r].sm);
  }
  return 0;
}

int logp_grad(float* z, int64_t rows, int64_t cols, const float* bias, float inv_temp, const int64_t* targets,
              int64_t v0, const float* lse, const float* entropy, const float* g_logp, const float* g_ent, int copy,
              void* copy_out, void*) {
  for (int64_t r = 0; r < rows; ++r) {
    const float gl = g_logp != nullptr ? g_logp[r] : 0.f;
    const float ge = g_ent != nullptr ? g_ent[r] : 0.f;
    for (int64_t j = 0; j < cols; ++j) {
      const float lp = tile_logit(z + r * cols, bias, j, inv_temp) - lse[r];
      const float d = inv_temp * logprob_grad(lp, j == targets[r] - v0, entropy[r], gl, ge);
      z[r * cols + j] = d;
      if (write_copy(copy, copy_out, r * cols + j, d)) return kUnsupported;
    }
  }
  return 0;
}

int window_mask(const bool* loss_mask, const int32_t* turn_ids, const int32_t* seq_ids, const int64_t* lo,
                const int64_t* hi, int64_t num_seqs, int64_t n, bool* out, void*) {
  for (int64_t t = 0; t < n; ++t) {
    const int64_t s = seq_ids[t];
    out[t] = loss_mask[t] && s >= 0 && s < num_seqs && lo[s] <= turn_ids[t] && turn_ids[t] < hi[s];
  }
  return 0;
}

int segment_sum(const void* values, const int64_t* segment_ids, int64_t n, int64_t num_segments,
                bool double_precision, void* out, void*) {
  for (int64_t t = 0; t < n; ++t) {
    const int64_t k = segment_ids[t];
    if (k < 0 || k >= num_segments) continue;
    if (double_precision) {
      static_cast<double*>(out)[k] += static_cast<const double*>(values)[t];
    } else {
      static_cast<float*>(out)[k] += static_cast<const float*>(values)[t];
    }
  }
  return 0;
}

}  // namespace tcod
