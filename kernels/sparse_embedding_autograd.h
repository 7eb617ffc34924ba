// Embedding lookups whose backward pass keeps the table's gradient sparse: instead of a dense
// (rows x dim) gradient it records each lookup's (indices, output gradient) for a row-wise optimizer
// (engine/train/sparse_adam.h) to reduce and apply with the fused op.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace freshrec::ops {

// Lookup gradients collected during one backward pass.
struct SparseGradients {
  std::vector<torch::Tensor> indices;       // each (n_i) int64
  std::vector<torch::Tensor> grad_outputs;  // each (n_i, D)
  bool empty() const { return indices.empty(); }
  void clear() { indices.clear(), grad_outputs.clear(); }
};

// weight[indices] with shape indices.shape + (D). `weight` must require grad for the backward pass
// to run; its .grad stays undefined, and the lookup's gradient goes to `sink`.
torch::Tensor sparse_embedding_lookup(const torch::Tensor& weight, const torch::Tensor& indices, SparseGradients& sink);

}  // namespace freshrec::ops
