// Sparse embedding-gradient ops (schema in sparse_embedding.cpp, bodies in cpu/ and cuda/):
// only the rows a step touched are reduced and updated, never the whole table.
//
//  embedding_backward_sparse  lookup indices + output gradient -> unique rows and their summed
//                             gradients: sort the indices, reduce each run (segment) in fp32.
//  rowwise_adam_              Adam/AdamW on the given rows of weight and both moments, in place.
//  embedding_backward_adam_   both at once: each segment's gradient is reduced and applied to its
//                             row directly, with no (rows x dim) gradient in memory.
//
// Deterministic: the same inputs give bit-identical outputs (stable sort, fixed reduction order,
// no float atomics). Row-wise Adam is "lazy": rows not touched keep their moments unchanged (like
// torch.optim.SparseAdam). Bias correction uses the global `step` or, with per_row_step, each row's
// own count of updates (kept in row_step), so rarely seen rows are not over-corrected.
#pragma once

#include <ATen/Tensor.h>

#include <optional>
#include <tuple>

namespace freshrec::ops {

struct RowwiseAdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0;
  bool decoupled_weight_decay = false;  // true: AdamW; false: L2 added to the gradient
  bool per_row_step = false;
};

// indices: (N) int64 in [0, num_rows); grad_output: (N, D) fp32 (bf16/fp16 also on CUDA).
// Positions whose index equals padding_idx (if >= 0) are ignored.
// Returns rows (U) int64 ascending and row_grads (U, D) fp32.
std::tuple<at::Tensor, at::Tensor> embedding_backward_sparse(const at::Tensor& indices, const at::Tensor& grad_output,
                                                             int64_t num_rows, int64_t padding_idx = -1);

// weight, exp_avg, exp_avg_sq: (num_rows, D) fp32; row_step: (num_rows) int64; rows: (U) int64, any
// strides, each row once (as embedding_backward_sparse returns them: rows are updated in parallel; the
// CPU body checks it, on CUDA a repeated row is a data race, since checking would wait for the device);
// row_grads: (U, D) fp32. `step` is the global step count including this one (>= 1).
void rowwise_adam_(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                   const at::Tensor& rows, const at::Tensor& row_grads, int64_t step, const RowwiseAdamOptions& options);

// check_indices=false: the caller vouches for the indices (they went through a lookup that checked
// them), so on CUDA the range check, a read-back, is skipped and the whole op runs without waiting
// for the GPU; a row out of range then stops the kernel with a device-side assert. On the CPU the
// check always runs (it costs no wait there).
// skip: a float32 scalar on the weight's device; when it is nonzero the op changes nothing (a step
// guarded on the device, decided by a value the host never reads, like found_inf of a fused Adam).
void embedding_backward_adam_(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                              const at::Tensor& indices, const at::Tensor& grad_output, int64_t padding_idx,
                              int64_t step, const RowwiseAdamOptions& options, bool check_indices = true,
                              const std::optional<at::Tensor>& skip = std::nullopt);

}  // namespace freshrec::ops
