// tcod_kernels::logprobs_forward / logprobs_backward: log p(target) and the entropy of
// softmax((h @ w^T + b) / T) per row, swept in [chunk, vocab-tile] logits tiles (sweep.h).
//
// Forward: one pass of online (max, sumexp, moment) per row plus the target's logit;
//   logp = z_target - lse,  H = log s - a / s  (online_softmax.cuh).
// Backward recomputes the tiles: dz = (g_logp (onehot - p) - g_ent p (log p + H)) / T, then
//   dh += dz @ W, dW += dz^T @ h, db += sum dz.
#include <c10/core/DeviceGuard.h>

#include "ops.h"
#include "sweep.h"

namespace tcod {
namespace {

struct LogpProblem {
  at::Tensor h, w, targets;  // contiguous; targets int64
  at::Tensor b;              // fp32 [V] or undefined
  float inv_temp;
  int64_t n;
  int64_t vocab;
};

LogpProblem make_problem(const at::Tensor& h, const at::Tensor& w, const OptTensor& b, const at::Tensor& targets,
                         double temperature) {
  TORCH_CHECK(w.device() == h.device() && targets.device() == h.device(),
              "tcod_kernels.logprobs: all tensors must be on one device");
  TORCH_CHECK(h.dim() == 2 && w.dim() == 2, "tcod_kernels.logprobs: hidden and weight must be 2-D");
  TORCH_CHECK(h.size(1) == w.size(1), "tcod_kernels.logprobs: hidden/weight widths differ");
  TORCH_CHECK(h.scalar_type() == w.scalar_type(), "tcod_kernels.logprobs: hidden and weight dtypes differ");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == h.size(0), "tcod_kernels.logprobs: targets must be [n]");
  TORCH_CHECK(w.size(0) > 0, "tcod_kernels.logprobs: empty vocabulary");
  TORCH_CHECK(temperature > 0, "tcod_kernels.logprobs: temperature must be > 0");
  LogpProblem p;
  p.h = h.contiguous();
  p.w = w.contiguous();
  p.targets = targets.to(at::kLong).contiguous();
  p.b = bias_f32(b, w.size(0));
  p.inv_temp = static_cast<float>(1.0 / temperature);
  p.n = h.size(0);
  p.vocab = w.size(0);
  return p;
}

class LogpSweep {
 public:
  LogpSweep(const LogpProblem& p, const Geometry& g)
      : p_(p), g_(g), bufs_(g, 1, p.h.scalar_type(), p.h.options()), stream_(current_stream(p.h.device())) {}

  void forward(int64_t r0, int64_t rows, float* state, at::Tensor& logp, at::Tensor& entropy, at::Tensor& lse) {
    check_launch(logp_state_init(state, rows, stream_), "logp_state_init");
    for (int64_t v0 = 0; v0 < p_.vocab; v0 += g_.vocab_tile) {
      const int64_t cols = std::min(g_.vocab_tile, p_.vocab - v0);
      at::Tensor z = logits(r0, rows, v0, cols);
      check_launch(logp_stats(z.data_ptr<float>(), rows, cols, f32_ptr(p_.b, v0), p_.inv_temp, targets(r0), v0,
                              state, stream_),
                   "logp_stats");
    }
    check_launch(logp_finalize(state, rows, logp.data_ptr<float>() + r0, entropy.data_ptr<float>() + r0,
                               lse.data_ptr<float>() + r0, stream_),
                 "logp_finalize");
  }

  void backward(int64_t r0, int64_t rows, const float* lse, const float* entropy, const float* g_logp,
                const float* g_ent, LinearGrads& grads) {
    grads.begin_chunk(r0, rows);
    for (int64_t v0 = 0; v0 < p_.vocab; v0 += g_.vocab_tile) {
      const int64_t cols = std::min(g_.vocab_tile, p_.vocab - v0);
      at::Tensor dz = logits(r0, rows, v0, cols);
      check_launch(logp_grad(dz.data_ptr<float>(), rows, cols, f32_ptr(p_.b, v0), p_.inv_temp, targets(r0), v0,
                             lse + r0, entropy + r0, g_logp != nullptr ? g_logp + r0 : nullptr,
                             g_ent != nullptr ? g_ent + r0 : nullptr, bufs_.copy_kind(), bufs_.copy_ptr(), stream_),
                   "logp_grad");
      grads.add_tile(v0, dz, bufs_.gemm_operand(rows, cols));
    }
    grads.end_chunk();
  }

 private:
  const int64_t* targets(int64_t r0) const { return p_.targets.data_ptr<int64_t>() + r0; }

  at::Tensor logits(int64_t r0, int64_t rows, int64_t v0, int64_t cols) {
    at::Tensor z = bufs_.fp32(0, rows, cols);
    logits_gemm(p_.h.narrow(0, r0, rows), p_.w.narrow(0, v0, cols), z);
    return z;
  }

  const LogpProblem& p_;
  Geometry g_;
  TileBuffers bufs_;
  void* stream_;
};

// fp32 contiguous data of an optional per-row gradient, or undefined when absent.
at::Tensor optional_rows(const OptTensor& t, int64_t n) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "tcod_kernels.logprobs_backward: row gradients must be [n]");
  return t->to(at::kFloat).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_forward(const at::Tensor& h, const at::Tensor& w,
                                                                 const OptTensor& b, const at::Tensor& targets,
                                                                 double temperature, int64_t chunk_rows,
                                                                 int64_t vocab_tile) {
  const LogpProblem p = make_problem(h, w, b, targets, temperature);
  const c10::DeviceGuard guard(p.h.device());
  const Geometry g = make_geometry(chunk_rows, vocab_tile, p.n, p.vocab);
  const at::TensorOptions f32 = p.h.options().dtype(at::kFloat);
  at::Tensor logp = at::zeros({p.n}, f32), entropy = at::zeros({p.n}, f32), lse = at::zeros({p.n}, f32);
  at::Tensor state = at::empty({g.chunk_rows, kLogpStateFloats}, f32);
  LogpSweep sweep(p, g);
  for (int64_t r0 = 0; r0 < p.n; r0 += g.chunk_rows) {
    const int64_t rows = std::min(g.chunk_rows, p.n - r0);
    sweep.forward(r0, rows, state.data_ptr<float>(), logp, entropy, lse);
  }
  return {logp, entropy, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprobs_backward(
    const OptTensor& grad_logp, const OptTensor& grad_entropy, const at::Tensor& h, const at::Tensor& w,
    const OptTensor& b, const at::Tensor& targets, const at::Tensor& lse_in, const at::Tensor& entropy_in,
    double temperature, std::array<bool, 3> grad_mask, int64_t chunk_rows, int64_t vocab_tile) {
  const LogpProblem p = make_problem(h, w, b, targets, temperature);
  TORCH_CHECK(lse_in.dim() == 1 && lse_in.size(0) == p.n && entropy_in.dim() == 1 && entropy_in.size(0) == p.n,
              "tcod_kernels.logprobs_backward: lse and entropy must be [n]");
  const c10::DeviceGuard guard(p.h.device());
  const Geometry g = make_geometry(chunk_rows, vocab_tile, p.n, p.vocab);
  at::Tensor lse = lse_in.to(at::kFloat).contiguous(), entropy = entropy_in.to(at::kFloat).contiguous();
  at::Tensor gl = optional_rows(grad_logp, p.n), ge = optional_rows(grad_entropy, p.n);
  LinearGrads grads(p.h, p.w, b, p.vocab, grad_mask, g.chunk_rows);
  LogpSweep sweep(p, g);
  for (int64_t r0 = 0; r0 < p.n; r0 += g.chunk_rows) {
    const int64_t rows = std::min(g.chunk_rows, p.n - r0);
    sweep.backward(r0, rows, lse.data_ptr<float>(), entropy.data_ptr<float>(), f32_ptr(gl), f32_ptr(ge), grads);
  }
  return grads.finish();
}

}  // namespace tcod
