// tcod_kernels::window_mask / segment_sum: torch bindings of the kernels in packing.cu.
#include <c10/core/DeviceGuard.h>

#include "ops.h"
#include "sweep.h"

namespace tcod {

at::Tensor window_mask(const at::Tensor& loss_mask, const at::Tensor& turn_ids, const at::Tensor& seq_ids,
                       const at::Tensor& lo, const at::Tensor& hi) {
  for (const at::Tensor* t : {&turn_ids, &seq_ids, &lo, &hi})
    TORCH_CHECK(t->device() == loss_mask.device(), "tcod_kernels.window_mask: all tensors must be on one device");
  TORCH_CHECK(loss_mask.scalar_type() == at::kBool, "tcod_kernels.window_mask: loss_mask must be bool");
  TORCH_CHECK(turn_ids.scalar_type() == at::kInt && seq_ids.scalar_type() == at::kInt,
              "tcod_kernels.window_mask: turn_ids and seq_ids must be int32");
  TORCH_CHECK(lo.scalar_type() == at::kLong && hi.scalar_type() == at::kLong,
              "tcod_kernels.window_mask: lo and hi must be int64");
  const int64_t n = loss_mask.numel();
  TORCH_CHECK(turn_ids.numel() == n && seq_ids.numel() == n, "tcod_kernels.window_mask: shapes differ");
  TORCH_CHECK(lo.dim() == 1 && hi.sizes() == lo.sizes(), "tcod_kernels.window_mask: lo and hi must be [S]");
  const c10::DeviceGuard guard(loss_mask.device());
  at::Tensor m = loss_mask.contiguous(), t = turn_ids.contiguous(), s = seq_ids.contiguous();
  at::Tensor l = lo.contiguous(), h = hi.contiguous();
  at::Tensor out = at::empty_like(m);
  check_launch(tcod::window_mask(m.data_ptr<bool>(), t.data_ptr<int32_t>(), s.data_ptr<int32_t>(),
                                 l.data_ptr<int64_t>(), h.data_ptr<int64_t>(), l.size(0), n, out.data_ptr<bool>(),
                                 current_stream(m.device())),
               "window_mask");
  return out;
}

at::Tensor segment_sum(const at::Tensor& values, const at::Tensor& segment_ids, int64_t num_segments) {
  TORCH_CHECK(segment_ids.device() == values.device(), "tcod_kernels.segment_sum: all tensors must be on one device");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "tcod_kernels.segment_sum: values must be float32 or float64");
  TORCH_CHECK(segment_ids.scalar_type() == at::kLong, "tcod_kernels.segment_sum: segment_ids must be int64");
  TORCH_CHECK(segment_ids.numel() == values.numel(), "tcod_kernels.segment_sum: shapes differ");
  TORCH_CHECK(num_segments >= 0, "tcod_kernels.segment_sum: num_segments must be >= 0");
  const c10::DeviceGuard guard(values.device());
  at::Tensor v = values.contiguous(), ids = segment_ids.contiguous();
  at::Tensor out = at::zeros({num_segments}, v.options());
  check_launch(tcod::segment_sum(v.data_ptr(), ids.data_ptr<int64_t>(), v.numel(), num_segments,
                                 v.scalar_type() == at::kDouble, out.data_ptr(), current_stream(v.device())),
               "segment_sum");
  return out;
}

}  // namespace tcod
