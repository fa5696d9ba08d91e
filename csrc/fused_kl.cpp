// tcod_kernels::kl_forward / kl_backward: teacher-student divergence straight from hidden
// states and lm_head weights, swept in [chunk, vocab-tile] logits tiles (sweep.h).
//
// Per row chunk:
//   pass 1  (all tiles)  online (max, sumexp) of student and teacher plus the cross term
//                        -> lse_s, lse_t and, for forward/reverse, the KL itself;
//   pass 2  (jsd only)   with both lse known: sum of the JSD terms and KL(p_s || M);
//   grad    (all tiles)  dz = row_scale * dL/dz / T (online_softmax.cuh: kl_grad), then
//                        dh += dz @ W, dW += dz^T @ h, db += sum dz.
// With a single vocab tile the logits stay in the buffers between passes (no recompute).
// stats = (lse_s, lse_t, c) per row lets kl_backward redo only the grad pass, where c is
// KL(p_s||p_t) for reverse, KL(p_s||M) for jsd and unused (0) for forward.
#include <c10/core/DeviceGuard.h>

#include "ops.h"
#include "sweep.h"

namespace tcod {
namespace {

struct KLProblem {
  at::Tensor sh, sw_full, th, tw_full;  // contiguous inputs
  at::Tensor sw, tw;                    // their first V rows
  at::Tensor bs, bt;                    // fp32 [V] biases or undefined
  int div;
  float beta;
  float inv_temp;
  int64_t n;
  int64_t vocab;
};

KLProblem make_problem(const at::Tensor& sh, const at::Tensor& sw, const OptTensor& sb, const at::Tensor& th,
                       const at::Tensor& tw, const OptTensor& tb, int64_t divergence, double beta,
                       double temperature, int64_t vocab_size) {
  TORCH_CHECK(sw.device() == sh.device() && th.device() == sh.device() && tw.device() == sh.device(),
              "tcod_kernels.kl: all tensors must be on one device");
  TORCH_CHECK(sh.dim() == 2 && sw.dim() == 2 && th.dim() == 2 && tw.dim() == 2,
              "tcod_kernels.kl: hidden states and weights must be 2-D");
  TORCH_CHECK(sh.size(0) == th.size(0), "tcod_kernels.kl: student and teacher row counts differ");
  TORCH_CHECK(sh.size(1) == sw.size(1) && th.size(1) == tw.size(1), "tcod_kernels.kl: hidden/weight widths differ");
  TORCH_CHECK(sh.scalar_type() == sw.scalar_type() && th.scalar_type() == tw.scalar_type(),
              "tcod_kernels.kl: hidden and weight dtypes differ");
  TORCH_CHECK(divergence >= 0 && divergence <= 2, "tcod_kernels.kl: divergence code must be 0, 1 or 2");
  TORCH_CHECK(vocab_size > 0 && vocab_size <= sw.size(0) && vocab_size <= tw.size(0),
              "tcod_kernels.kl: vocab_size out of range");
  TORCH_CHECK(temperature > 0, "tcod_kernels.kl: temperature must be > 0");
  KLProblem p;
  p.sh = sh.contiguous();
  p.th = th.contiguous();
  p.sw_full = sw.contiguous();
  p.tw_full = tw.contiguous();
  p.sw = p.sw_full.narrow(0, 0, vocab_size);
  p.tw = p.tw_full.narrow(0, 0, vocab_size);
  p.bs = bias_f32(sb, vocab_size);
  p.bt = bias_f32(tb, vocab_size);
  p.div = static_cast<int>(divergence);
  p.beta = static_cast<float>(beta);
  p.inv_temp = static_cast<float>(1.0 / temperature);
  p.n = sh.size(0);
  p.vocab = vocab_size;
  return p;
}

class KLSweep {
 public:
  KLSweep(const KLProblem& p, const Geometry& g)
      : p_(p),
        g_(g),
        bufs_(g, 2, p.sh.scalar_type(), p.sh.options()),
        state_(at::empty({g.chunk_rows, kKLStateFloats}, p.sh.options().dtype(at::kFloat))),
        stream_(current_stream(p.sh.device())) {}

  // Pass 1 + finalize: loss[r0:r0+rows] and stats[:, r0:r0+rows].
  void stats_pass(int64_t r0, int64_t rows, at::Tensor& loss, at::Tensor& stats) {
    float* st = state_.data_ptr<float>();
    check_launch(kl_state_init(st, rows, stream_), "kl_state_init");
    for (int64_t v0 = 0; v0 < p_.vocab; v0 += g_.vocab_tile) {
      const int64_t cols = std::min(g_.vocab_tile, p_.vocab - v0);
      logits(r0, rows, v0, cols);
      check_launch(kl_stats(zs(rows, cols).data_ptr<float>(), zt(rows, cols).data_ptr<float>(), rows, cols,
                            f32_ptr(p_.bs, v0), f32_ptr(p_.bt, v0), p_.inv_temp, p_.div, st, stream_),
                   "kl_stats");
    }
    check_launch(kl_finalize(st, rows, p_.div, loss.data_ptr<float>() + r0, stat_row(stats, 0, r0),
                             stat_row(stats, 1, r0), stat_row(stats, 2, r0), stream_),
                 "kl_finalize");
  }

  // JSD pass: adds the JSD terms into loss and KL(p_s || M) into stats[2].
  void jsd_pass(int64_t r0, int64_t rows, at::Tensor& loss, at::Tensor& stats) {
    for (int64_t v0 = 0; v0 < p_.vocab; v0 += g_.vocab_tile) {
      const int64_t cols = std::min(g_.vocab_tile, p_.vocab - v0);
      logits(r0, rows, v0, cols);
      check_launch(jsd_accumulate(zs(rows, cols).data_ptr<float>(), zt(rows, cols).data_ptr<float>(), rows, cols,
                                  f32_ptr(p_.bs, v0), f32_ptr(p_.bt, v0), p_.inv_temp, p_.beta,
                                  stat_row(stats, 0, r0), stat_row(stats, 1, r0), loss.data_ptr<float>() + r0,
                                  stat_row(stats, 2, r0), stream_),
                   "jsd_accumulate");
    }
  }

  // Gradient pass for rows [r0, r0 + rows); row_scale (nullable) is already offset to r0.
  void grad_pass(int64_t r0, int64_t rows, at::Tensor& stats, const float* row_scale, LinearGrads& grads) {
    grads.begin_chunk(r0, rows);
    for (int64_t v0 = 0; v0 < p_.vocab; v0 += g_.vocab_tile) {
      const int64_t cols = std::min(g_.vocab_tile, p_.vocab - v0);
      logits(r0, rows, v0, cols);
      at::Tensor dz = zs(rows, cols);
      check_launch(kl_grad(dz.data_ptr<float>(), zt(rows, cols).data_ptr<float>(), rows, cols, f32_ptr(p_.bs, v0),
                           f32_ptr(p_.bt, v0), p_.inv_temp, p_.div, p_.beta, stat_row(stats, 0, r0),
                           stat_row(stats, 1, r0), stat_row(stats, 2, r0), row_scale, bufs_.copy_kind(),
                           bufs_.copy_ptr(), stream_),
                   "kl_grad");
      cached_chunk_ = -1;  // the student buffer now holds dz
      grads.add_tile(v0, dz, bufs_.gemm_operand(rows, cols));
    }
    grads.end_chunk();
  }

 private:
  at::Tensor zs(int64_t rows, int64_t cols) { return bufs_.fp32(0, rows, cols); }
  at::Tensor zt(int64_t rows, int64_t cols) { return bufs_.fp32(1, rows, cols); }

  static float* stat_row(at::Tensor& stats, int64_t k, int64_t r0) {
    return stats.data_ptr<float>() + k * stats.size(1) + r0;
  }

  // Student and teacher logits of one tile, unless the buffers already hold them.
  void logits(int64_t r0, int64_t rows, int64_t v0, int64_t cols) {
    if (g_.num_tiles == 1 && cached_chunk_ == r0) return;
    at::Tensor s = zs(rows, cols), t = zt(rows, cols);
    logits_gemm(p_.sh.narrow(0, r0, rows), p_.sw.narrow(0, v0, cols), s);
    logits_gemm(p_.th.narrow(0, r0, rows), p_.tw.narrow(0, v0, cols), t);
    cached_chunk_ = g_.num_tiles == 1 ? r0 : -1;
  }

  const KLProblem& p_;
  Geometry g_;
  TileBuffers bufs_;
  at::Tensor state_;
  void* stream_;
  int64_t cached_chunk_ = -1;
};

at::Tensor empty_like_rows(const at::Tensor& t) { return at::empty({0}, t.options()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> kl_forward(
    const at::Tensor& sh, const at::Tensor& sw, const OptTensor& sb, const at::Tensor& th, const at::Tensor& tw,
    const OptTensor& tb, int64_t divergence, double beta, double temperature, int64_t vocab_size,
    std::array<bool, 3> grad_mask, int64_t chunk_rows, int64_t vocab_tile) {
  const KLProblem p = make_problem(sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size);
  const c10::DeviceGuard guard(p.sh.device());
  const Geometry g = make_geometry(chunk_rows, vocab_tile, p.n, p.vocab);
  const at::TensorOptions f32 = p.sh.options().dtype(at::kFloat);
  at::Tensor loss = at::zeros({p.n}, f32);
  at::Tensor stats = at::zeros({3, p.n}, f32);
  const bool want_grad = grad_mask[0] || grad_mask[1] || grad_mask[2];
  std::optional<LinearGrads> grads;
  if (want_grad) grads.emplace(p.sh, p.sw_full, sb, p.vocab, grad_mask, g.chunk_rows);
  KLSweep sweep(p, g);
  for (int64_t r0 = 0; r0 < p.n; r0 += g.chunk_rows) {
    const int64_t rows = std::min(g.chunk_rows, p.n - r0);
    sweep.stats_pass(r0, rows, loss, stats);
    if (p.div == kJSD) sweep.jsd_pass(r0, rows, loss, stats);
    if (want_grad) sweep.grad_pass(r0, rows, stats, nullptr, *grads);
  }
  if (!want_grad) return {loss, stats, empty_like_rows(p.sh), empty_like_rows(p.sh), empty_like_rows(p.sh)};
  auto [dh, dw, db] = grads->finish();
  return {loss, stats, dh, dw, db};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_backward(
    const at::Tensor& grad_rows, const at::Tensor& sh, const at::Tensor& sw, const OptTensor& sb,
    const at::Tensor& th, const at::Tensor& tw, const OptTensor& tb, const at::Tensor& stats_in, int64_t divergence,
    double beta, double temperature, int64_t vocab_size, std::array<bool, 3> grad_mask, int64_t chunk_rows,
    int64_t vocab_tile) {
  const KLProblem p = make_problem(sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size);
  TORCH_CHECK(grad_rows.dim() == 1 && grad_rows.size(0) == p.n, "tcod_kernels.kl_backward: grad_rows must be [n]");
  TORCH_CHECK(stats_in.dim() == 2 && stats_in.size(0) == 3 && stats_in.size(1) == p.n,
              "tcod_kernels.kl_backward: stats must be [3, n]");
  const c10::DeviceGuard guard(p.sh.device());
  const Geometry g = make_geometry(chunk_rows, vocab_tile, p.n, p.vocab);
  at::Tensor scale = grad_rows.to(at::kFloat).contiguous();
  at::Tensor stats = stats_in.to(at::kFloat).contiguous();
  LinearGrads grads(p.sh, p.sw_full, sb, p.vocab, grad_mask, g.chunk_rows);
  KLSweep sweep(p, g);
  for (int64_t r0 = 0; r0 < p.n; r0 += g.chunk_rows) {
    const int64_t rows = std::min(g.chunk_rows, p.n - r0);
    sweep.grad_pass(r0, rows, stats, scale.data_ptr<float>() + r0, grads);
  }
  return grads.finish();
}

}  // namespace tcod
