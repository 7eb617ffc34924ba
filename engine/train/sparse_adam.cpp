// Row-wise Adam over sparse lookup gradients; see sparse_adam.h.
#include "engine/train/sparse_adam.h"

namespace freshrec {

SparseRowAdamImpl::SparseRowAdamImpl(torch::Tensor weight, ops::RowwiseAdamOptions options, int64_t padding_idx)
    : weight_(std::move(weight)), options_(options), padding_idx_(padding_idx) {
  exp_avg_ = register_buffer("exp_avg", torch::zeros_like(weight_));
  exp_avg_sq_ = register_buffer("exp_avg_sq", torch::zeros_like(weight_));
  row_step_ = register_buffer("row_step", torch::zeros({weight_.size(0)}, weight_.options().dtype(torch::kLong)));
  step_ = register_buffer("step", torch::zeros({}, torch::kLong));  // on the CPU: read every step
}

void SparseRowAdamImpl::step(double lr, const std::optional<torch::Tensor>& skip) {
  if (weight_.grad().defined()) {  // a dense gradient too (a full softmax): every row touched
    gradients_.indices.push_back(torch::arange(weight_.size(0), weight_.options().dtype(torch::kLong)));
    gradients_.grad_outputs.push_back(weight_.grad().detach());
    weight_.mutable_grad() = torch::Tensor();
  }
  step_ += 1;  // every step counts, with or without rows to update: ranks of a sharded table stay in step
  if (gradients_.empty()) return;
  auto indices = torch::cat(gradients_.indices);
  auto grads = torch::cat(gradients_.grad_outputs);
  gradients_.clear();
  auto options = options_;
  options.lr = lr;
  torch::NoGradGuard no_grad;
  auto weight = weight_.detach();  // the same storage, updated in place
  // The indices went through the forward lookups (index_select checks them) or are the table's own
  // rows, so the op need not read their range back from a GPU.
  ops::embedding_backward_adam_(weight, exp_avg_, exp_avg_sq_, row_step_, indices, grads, padding_idx_,
                                step_.item<int64_t>(), options, /*check_indices=*/false, skip);
}

torch::Tensor SparseRowAdamImpl::gradients_finite() const {
  std::vector<torch::Tensor> all_finite;
  for (const auto& g : gradients_.grad_outputs) all_finite.push_back(g.isfinite().all());
  if (weight_.grad().defined()) all_finite.push_back(weight_.grad().isfinite().all());
  if (all_finite.empty()) return torch::ones({}, weight_.options().dtype(torch::kBool));
  return torch::stack(all_finite).all();
}

void SparseRowAdamImpl::grow_to_weight() {
  const int64_t rows = weight_.size(0), old = exp_avg_.size(0);
  if (rows <= old) return;
  torch::NoGradGuard no_grad;
  const auto zeros = torch::zeros({rows - old, weight_.size(1)}, exp_avg_.options());
  exp_avg_.set_data(torch::cat({exp_avg_, zeros}));
  exp_avg_sq_.set_data(torch::cat({exp_avg_sq_, zeros}));
  row_step_.set_data(torch::cat({row_step_, torch::zeros({rows - old}, row_step_.options())}));
}

}  // namespace freshrec
