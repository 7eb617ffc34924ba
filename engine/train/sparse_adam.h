// Row-wise Adam for an embedding table whose gradient is kept sparse: per step it takes the lookups'
// gradients collected by ops::sparse_embedding_lookup and updates only the touched rows with the fused
// kernel (no dense gradient, no dense moments pass). Its state (moments, per-row steps, global step)
// is a module's buffers, so it is saved in and restored from checkpoints.
#pragma once

#include <torch/torch.h>

#include "kernels/sparse_embedding.h"
#include "kernels/sparse_embedding_autograd.h"

namespace freshrec {

class SparseRowAdamImpl : public torch::nn::Module {
 public:
  SparseRowAdamImpl(torch::Tensor weight, ops::RowwiseAdamOptions options, int64_t padding_idx = 0);

  // Where lookups of `weight` send their gradients.
  ops::SparseGradients& gradients() { return gradients_; }
  // Applies and clears the collected gradients at learning rate `lr`, with the table's dense .grad if
  // one was made (a full softmax over the table), then clears that too. Without gradients only the
  // step counter advances.
  // `skip` (a float32 scalar on the table's device, nonzero: skip) guards the step on the device:
  // the gradients are cleared and nothing else changes, but the step counter still advances (the
  // host keeps it without reading the flag back).
  void step(double lr, const std::optional<torch::Tensor>& skip = std::nullopt);
  // Whether every collected gradient (and the table's dense .grad, if any) is finite: a bool scalar on
  // the table's device, not read back.
  torch::Tensor gradients_finite() const;
  int64_t steps_taken() const { return step_.item<int64_t>(); }
  // Follows the table after it grew (SASRec::grow_items): new rows start with zero moments.
  void grow_to_weight();

 private:
  torch::Tensor weight_, exp_avg_, exp_avg_sq_, row_step_, step_;
  ops::RowwiseAdamOptions options_;
  int64_t padding_idx_;
  ops::SparseGradients gradients_;
};
TORCH_MODULE(SparseRowAdam);

}  // namespace freshrec
