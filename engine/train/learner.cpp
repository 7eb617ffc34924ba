// A model with its optimizers and a guarded step; see learner.h.
#include "engine/train/learner.h"

namespace freshrec {

Learner::Learner(SASRec m, const Config& config, double lr, bool adapters_only) : model(std::move(m)) {
  const double beta1 = config.get_float("train.beta1"), beta2 = config.get_float("train.beta2");
  std::vector<torch::Tensor> trained = model->dense_parameters();
  if (adapters_only) {
    trained.clear();
    for (const auto& p : model->named_parameters()) {
      if (p.value().is_same(model->item_embedding())) continue;
      const bool adapter = p.key().find("_lora.") != std::string::npos;
      p.value().set_requires_grad(adapter);
      if (adapter) trained.push_back(p.value());
    }
    if (trained.empty()) throw std::invalid_argument("adapter-only updates need a model with LoRA adapters");
  }
  dense = std::make_unique<FusedAdam>(trained, torch::optim::AdamOptions(lr).betas({beta1, beta2}));
  ops::RowwiseAdamOptions o;
  o.lr = lr, o.beta1 = beta1, o.beta2 = beta2;
  o.per_row_step = config.get_string("train.sparse_bias_correction") == "per_row";
  sparse = SparseRowAdam(model->item_embedding(), o, /*padding_idx=*/0);
  model->set_sparse_gradients(&sparse->gradients());
}

void Learner::grow(int64_t rows) {
  model->grow_items(rows);
  sparse->grow_to_weight();
}

torch::Tensor Learner::step(const torch::Tensor& loss, double clip, double lr, double max_loss) {
  const auto value = loss.detach();
  dense->zero_grad();
  loss.backward();
  const auto& params = dense->param_groups()[0].params();
  // A finite loss can still have non-finite gradients (an overflow inside the backward pass): those
  // skip the step as a bad loss does. The norm is computed on the device either way.
  const auto norm = clip > 0 ? clip_grad_norm(params, clip) : gradient_norm(params);
  auto bad = value.isfinite().logical_and(value <= max_loss).logical_not();
  if (norm.defined()) bad = bad.logical_or(norm.isfinite().logical_not());
  bad = bad.logical_or(sparse->gradients_finite().logical_not());
  const auto skip = bad.to(torch::kFloat);
  dense->step_unless(skip);
  sparse->step(lr, skip);
  return skip;
}

}  // namespace freshrec
