// The torch ops of the extension (registered in register.cpp as tcod_kernels::<name>).
//
// All take flat, already mask-compacted CUDA tensors (the Python API validates inputs; these
// only check what they index with). Outputs are float32 except gradients, which have their
// input's dtype. Divergence codes: 0 forward KL(p_t||p_s), 1 reverse KL(p_s||p_t), 2 jsd.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace tcod {

using OptTensor = std::optional<at::Tensor>;

// Per-row divergence over the first vocab_size columns, and (grad_mask) the gradients of
// sum(loss) w.r.t. (sh, sw, sb). Returns (loss [n], stats [3, n] = (lse_s, lse_t, c),
// d_sh, d_sw, d_sb); gradients not requested are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> kl_forward(
    const at::Tensor& sh, const at::Tensor& sw, const OptTensor& sb, const at::Tensor& th, const at::Tensor& tw,
    const OptTensor& tb, int64_t divergence, double beta, double temperature, int64_t vocab_size,
    std::array<bool, 3> grad_mask, int64_t chunk_rows, int64_t vocab_tile);

// Gradients of sum_r grad_rows[r] * loss[r] given kl_forward's stats.
std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_backward(
    const at::Tensor& grad_rows, const at::Tensor& sh, const at::Tensor& sw, const OptTensor& sb,
    const at::Tensor& th, const at::Tensor& tw, const OptTensor& tb, const at::Tensor& stats, int64_t divergence,
    double beta, double temperature, int64_t vocab_size, std::array<bool, 3> grad_mask, int64_t chunk_rows,
    int64_t vocab_tile);

// (logp [n], entropy [n], lse [n]) of log_softmax((h @ w^T + b) / T) at targets.
std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_forward(const at::Tensor& h, const at::Tensor& w,
                                                                 const OptTensor& b, const at::Tensor& targets,
                                                                 double temperature, int64_t chunk_rows,
                                                                 int64_t vocab_tile);

// Gradients of sum_r (g_logp[r] logp[r] + g_entropy[r] entropy[r]) w.r.t. (h, w, b).
std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_backward(
    const OptTensor& grad_logp, const OptTensor& grad_entropy, const at::Tensor& h, const at::Tensor& w,
    const OptTensor& b, const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& entropy,
    double temperature, std::array<bool, 3> grad_mask, int64_t chunk_rows, int64_t vocab_tile);

// bool [T]: loss_mask[t] && seq_ids[t] >= 0 && lo[s] <= turn_ids[t] < hi[s], s = seq_ids[t].
at::Tensor window_mask(const at::Tensor& loss_mask, const at::Tensor& turn_ids, const at::Tensor& seq_ids,
                       const at::Tensor& lo, const at::Tensor& hi);

// [num_segments]: per-segment sums of values (float32 or float64); ids < 0 ignored.
at::Tensor segment_sum(const at::Tensor& values, const at::Tensor& segment_ids, int64_t num_segments);

}  // namespace tcod
