// Shared machinery of the fused sweeps; see sweep.h.
#include "sweep.h"

#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>

// mm/addmm with out_dtype (bf16/fp16 inputs -> fp32 output) exist from torch 2.8.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define TCOD_HAS_OUT_DTYPE_GEMM 1
#else
#define TCOD_HAS_OUT_DTYPE_GEMM 0
#endif

namespace tcod {

void* current_stream(const at::Device& device) {
  if (!device.is_cuda()) return nullptr;  // only the host-emulation test build runs on CPU
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "tcod_kernels: CUDA kernel ", what, " failed: ", error_string(code));
}

at::ScalarType accum_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

int grad_copy_kind(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return kNoCopy;
    case at::kHalf:
      return kCopyHalf;
    case at::kBFloat16:
      return kCopyBFloat16;
    case at::kDouble:
      return kCopyDouble;
    default:
      TORCH_CHECK(false, "tcod_kernels: unsupported dtype ", t);
  }
  return kNoCopy;
}

void logits_gemm(const at::Tensor& h, const at::Tensor& w, at::Tensor& out) {
  const at::ScalarType t = h.scalar_type();
  if (t == at::kFloat) {
    at::mm_out(out, h, w.t());
  } else if (t == at::kDouble) {
    out.copy_(at::mm(h, w.t()));
  } else {
#if TCOD_HAS_OUT_DTYPE_GEMM
    at::mm_out(out, h, w.t(), at::kFloat);
#else
    at::mm_out(out, h.to(at::kFloat), w.t().to(at::kFloat));
#endif
  }
}

void accumulate_gemm(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == acc.scalar_type()) {
    acc.addmm_(a, b);
    return;
  }
#if TCOD_HAS_OUT_DTYPE_GEMM
  // Accumulating straight into an fp32 `acc` from bf16/fp16 operands needs a torch whose
  // addmm.dtype accepts an fp32 self; older ones refuse it up front (before any work), and
  // we then fall back to a temporary product.
  static std::atomic<bool> in_place_ok{true};
  if (in_place_ok.load()) {
    try {
      at::addmm_out(acc, acc, a, b, at::kFloat);
      return;
    } catch (const c10::Error&) {
      in_place_ok.store(false);
    }
  }
  acc.add_(at::mm(a, b, at::kFloat));
#else
  acc.addmm_(a.to(acc.scalar_type()), b.to(acc.scalar_type()));
#endif
}

at::Tensor bias_f32(const std::optional<at::Tensor>& bias, int64_t vocab) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  return bias->narrow(0, 0, vocab).to(at::kFloat).contiguous();
}

const float* f32_ptr(const at::Tensor& t, int64_t offset) {
  return t.defined() ? t.data_ptr<float>() + offset : nullptr;
}

Geometry make_geometry(int64_t chunk_rows, int64_t vocab_tile, int64_t rows, int64_t vocab) {
  TORCH_CHECK(chunk_rows > 0, "tcod_kernels: chunk_rows must be > 0, got ", chunk_rows);
  TORCH_CHECK(vocab_tile > 0, "tcod_kernels: vocab_tile must be > 0, got ", vocab_tile);
  Geometry g;
  g.chunk_rows = std::max<int64_t>(1, std::min(chunk_rows, rows));
  g.vocab_tile = std::min(vocab_tile, vocab);
  g.num_tiles = (vocab + g.vocab_tile - 1) / g.vocab_tile;
  return g;
}

// ---------------------------------------------------------------- TileBuffers

TileBuffers::TileBuffers(const Geometry& g, int num_fp32, at::ScalarType input_dtype,
                         const at::TensorOptions& device_opts)
    : copy_kind_(grad_copy_kind(input_dtype)) {
  const int64_t elems = g.chunk_rows * g.vocab_tile;
  for (int k = 0; k < num_fp32; ++k) fp32_[k] = at::empty({elems}, device_opts.dtype(at::kFloat));
  if (copy_kind_ != kNoCopy) copy_ = at::empty({elems}, device_opts.dtype(input_dtype));
}

at::Tensor TileBuffers::fp32(int k, int64_t rows, int64_t cols) {
  return fp32_[k].narrow(0, 0, rows * cols).view({rows, cols});
}

at::Tensor TileBuffers::gemm_operand(int64_t rows, int64_t cols) {
  if (!copy_.defined()) return fp32(0, rows, cols);
  return copy_.narrow(0, 0, rows * cols).view({rows, cols});
}

// ---------------------------------------------------------------- LinearGrads

LinearGrads::LinearGrads(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         int64_t vocab, std::array<bool, 3> mask, int64_t chunk_rows)
    : hidden_(hidden), weight_(weight.narrow(0, 0, vocab)), mask_(mask) {
  const bool has_bias = bias.has_value() && bias->defined();
  mask_[2] = mask_[2] && has_bias;
  const at::ScalarType acc_t = accum_dtype(hidden.scalar_type());
  if (mask_[0]) {
    dh_ = at::empty_like(hidden);
    if (acc_t != hidden.scalar_type()) dh_acc_ = at::empty({chunk_rows, hidden.size(1)}, hidden.options().dtype(acc_t));
  }
  if (mask_[1]) {
    dw_ = at::zeros_like(weight);
    dw_acc_ = acc_t == weight.scalar_type() ? dw_.narrow(0, 0, vocab)
                                            : at::zeros({vocab, weight.size(1)}, weight.options().dtype(acc_t));
  }
  if (mask_[2]) {
    db_ = at::zeros_like(*bias);
    const at::ScalarType bacc = accum_dtype(bias->scalar_type());
    db_acc_ = bacc == bias->scalar_type() ? db_.narrow(0, 0, vocab)
                                          : at::zeros({vocab}, bias->options().dtype(bacc));
  }
}

void LinearGrads::begin_chunk(int64_t r0, int64_t rows) {
  r0_ = r0;
  rows_ = rows;
  if (mask_[0]) {
    dh_rows_ = dh_acc_.defined() ? dh_acc_.narrow(0, 0, rows) : dh_.narrow(0, r0, rows);
    dh_rows_.zero_();
  }
}

void LinearGrads::add_tile(int64_t v0, const at::Tensor& dz_f32, const at::Tensor& dz) {
  const int64_t cols = dz.size(1);
  if (mask_[0]) accumulate_gemm(dh_rows_, dz, weight_.narrow(0, v0, cols));
  if (mask_[1]) {
    at::Tensor dw_tile = dw_acc_.narrow(0, v0, cols);
    accumulate_gemm(dw_tile, dz.t(), hidden_.narrow(0, r0_, rows_));
  }
  if (mask_[2]) db_acc_.narrow(0, v0, cols).add_(dz_f32.sum(0));
}

void LinearGrads::end_chunk() {
  if (mask_[0] && dh_acc_.defined()) dh_.narrow(0, r0_, rows_).copy_(dh_rows_);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> LinearGrads::finish() {
  const auto empty = [this]() { return at::empty({0}, hidden_.options()); };
  at::Tensor dh = mask_[0] ? dh_ : empty();
  at::Tensor dw = empty(), db = empty();
  if (mask_[1]) {
    if (dw_acc_.data_ptr() != dw_.data_ptr()) dw_.narrow(0, 0, dw_acc_.size(0)).copy_(dw_acc_);
    dw = dw_;
  }
  if (mask_[2]) {
    if (db_acc_.data_ptr() != db_.data_ptr()) db_.narrow(0, 0, db_acc_.size(0)).copy_(db_acc_);
    db = db_;
  }
  return {dh, dw, db};
}

}  // namespace tcod
