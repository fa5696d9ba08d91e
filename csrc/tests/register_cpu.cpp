// Test-only: registers the sweeps for CPU tensors, where host_launchers.cpp stands in for
// the CUDA kernels (built by host_emulation_check.py, never into the extension).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(tcod_kernels, CPU, m) {
  m.impl("kl_forward", &tcod::kl_forward);
  m.impl("kl_backward", &tcod::kl_backward);
  m.impl("logprobs_forward", &tcod::logprobs_forward);
  m.impl("logprobs_backward", &tcod::logprobs_backward);
  m.impl("window_mask", &tcod::window_mask);
  m.impl("segment_sum", &tcod::segment_sum);
}
