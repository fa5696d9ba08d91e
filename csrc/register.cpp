// Registers the extension's ops as torch.ops.tcod_kernels.* with CUDA kernels.
// Their fake (meta) implementations, for torch.compile, live in tcod_kernels/cuda.py.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(tcod_kernels, m) {
  // The fake kernels are registered from this Python module (torch checks the pairing).
  m.set_python_module("tcod_kernels.cuda");
  m.def(
      "kl_forward(Tensor sh, Tensor sw, Tensor? sb, Tensor th, Tensor tw, Tensor? tb, int divergence, "
      "float beta, float temperature, int vocab_size, bool[3] grad_mask, int chunk_rows, int vocab_tile) "
      "-> (Tensor loss, Tensor stats, Tensor d_sh, Tensor d_sw, Tensor d_sb)");
  m.def(
      "kl_backward(Tensor grad_rows, Tensor sh, Tensor sw, Tensor? sb, Tensor th, Tensor tw, Tensor? tb, "
      "Tensor stats, int divergence, float beta, float temperature, int vocab_size, bool[3] grad_mask, "
      "int chunk_rows, int vocab_tile) -> (Tensor d_sh, Tensor d_sw, Tensor d_sb)");
  m.def(
      "logprobs_forward(Tensor h, Tensor w, Tensor? b, Tensor targets, float temperature, int chunk_rows, "
      "int vocab_tile) -> (Tensor logp, Tensor entropy, Tensor lse)");
  m.def(
      "logprobs_backward(Tensor? grad_logp, Tensor? grad_entropy, Tensor h, Tensor w, Tensor? b, "
      "Tensor targets, Tensor lse, Tensor entropy, float temperature, bool[3] grad_mask, int chunk_rows, "
      "int vocab_tile) -> (Tensor d_h, Tensor d_w, Tensor d_b)");
  m.def("window_mask(Tensor loss_mask, Tensor turn_ids, Tensor seq_ids, Tensor lo, Tensor hi) -> Tensor");
  m.def("segment_sum(Tensor values, Tensor segment_ids, int num_segments) -> Tensor");
}

TORCH_LIBRARY_IMPL(tcod_kernels, CUDA, m) {
  m.impl("kl_forward", &tcod::kl_forward);
  m.impl("kl_backward", &tcod::kl_backward);
  m.impl("logprobs_forward", &tcod::logprobs_forward);
  m.impl("logprobs_backward", &tcod::logprobs_backward);
  m.impl("window_mask", &tcod::window_mask);
  m.impl("segment_sum", &tcod::segment_sum);
}
