// Shared machinery of the fused linear + softmax sweeps (fused_kl.cpp, fused_logprobs.cpp).
//
// A sweep walks the n rows in chunks of C rows and the vocabulary in tiles of VT columns.
// For each (chunk, tile) cuBLAS writes the fp32 logits tile h[chunk] @ W[tile]^T into a
// [C, VT] buffer; epilogue kernels (launchers.h) fold it into per-row statistics or turn it
// into the gradient tile dz = dL/dlogits, after which two GEMMs accumulate
//   dh[chunk] += dz @ W[tile]        dW[tile] += dz^T @ h[chunk]        db[tile] += sum_rows dz.
// Nothing of size [n, V] is ever allocated.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "launchers.h"

namespace tcod {

// cudaStream_t of the current torch stream on `device`, as void* (nullptr off CUDA).
void* current_stream(const at::Device& device);

// Raises a torch error naming `what` when a launcher returned a CUDA error.
void check_launch(int code, const char* what);

// Accumulator dtype for an input dtype: float64 stays float64, everything else is float32.
at::ScalarType accum_dtype(at::ScalarType t);

// Which low-precision copy of a gradient tile the GEMMs need for inputs of dtype t.
int grad_copy_kind(at::ScalarType t);

// out (fp32 [rows, cols], contiguous) = h @ w^T, accumulated and stored in fp32 (never
// rounded to the input dtype).
void logits_gemm(const at::Tensor& h, const at::Tensor& w, at::Tensor& out);

// acc += a @ b for a, b of one dtype and acc of accum_dtype(that dtype).
void accumulate_gemm(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b);

// The first `vocab` entries of an optional bias as a contiguous fp32 tensor (undefined if none).
at::Tensor bias_f32(const std::optional<at::Tensor>& bias, int64_t vocab);

// Pointer to element `offset` of a defined fp32 tensor, nullptr for an undefined one.
const float* f32_ptr(const at::Tensor& t, int64_t offset = 0);

// Row-chunk / vocab-tile sizes, clamped to the problem.
struct Geometry {
  int64_t chunk_rows;
  int64_t vocab_tile;
  int64_t num_tiles;
};
Geometry make_geometry(int64_t chunk_rows, int64_t vocab_tile, int64_t rows, int64_t vocab);

// The fp32 tile buffers of one sweep (and the low-precision copy of dz the GEMMs read).
class TileBuffers {
 public:
  TileBuffers(const Geometry& g, int num_fp32, at::ScalarType input_dtype, const at::TensorOptions& device_opts);
  // View [rows, cols] of fp32 buffer k.
  at::Tensor fp32(int k, int64_t rows, int64_t cols);
  // dz as the GEMMs read it: the low-precision copy, or fp32 buffer 0 itself.
  at::Tensor gemm_operand(int64_t rows, int64_t cols);
  int copy_kind() const { return copy_kind_; }
  void* copy_ptr() { return copy_.defined() ? copy_.data_ptr() : nullptr; }

 private:
  std::array<at::Tensor, 2> fp32_;
  at::Tensor copy_;
  int copy_kind_;
};

// Gradients w.r.t. the hidden states, weight and bias of one linear head, built tile by tile.
class LinearGrads {
 public:
  // mask: which of (hidden, weight, bias) to compute. weight is the full [V_full, H] weight;
  // only its first `vocab` rows receive gradient (the rest stay 0).
  LinearGrads(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
              int64_t vocab, std::array<bool, 3> mask, int64_t chunk_rows);
  void begin_chunk(int64_t r0, int64_t rows);
  // dz_f32: fp32 [rows, cols] gradient tile; dz: the same as the GEMMs read it.
  void add_tile(int64_t v0, const at::Tensor& dz_f32, const at::Tensor& dz);
  void end_chunk();
  // (d hidden, d weight, d bias); empty tensors for the ones not requested.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish();

 private:
  at::Tensor hidden_, weight_;
  std::array<bool, 3> mask_;
  at::Tensor dh_, dh_acc_, dh_rows_;
  at::Tensor dw_, dw_acc_;
  at::Tensor db_, db_acc_;
  int64_t r0_ = 0, rows_ = 0;
};

}  // namespace tcod
