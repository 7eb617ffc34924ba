// Fused dense Adam/AdamW and a host-sync-free gradient clip; see dense_adam.h.
#include "engine/train/dense_adam.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include <type_traits>

namespace freshrec {
namespace {

template <class Base>
struct AdamKind;
template <>
struct AdamKind<torch::optim::Adam> {
  using Options = torch::optim::AdamOptions;
  using State = torch::optim::AdamParamState;
};
template <>
struct AdamKind<torch::optim::AdamW> {
  using Options = torch::optim::AdamWOptions;
  using State = torch::optim::AdamWParamState;
};

}  // namespace

template <class Base>
torch::Tensor FusedAdamT<Base>::step(torch::optim::Optimizer::LossClosure closure) {
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode enable_grad(true);
    loss = closure();
  }
  fused_step(std::nullopt);
  return loss;
}

template <class Base>
void FusedAdamT<Base>::step_unless(const torch::Tensor& found_inf) {
  fused_step(found_inf);
}

template <class Base>
void FusedAdamT<Base>::fused_step(const std::optional<torch::Tensor>& found_inf) {
  using Kind = AdamKind<Base>;
  torch::NoGradGuard no_grad;
  for (auto& group : this->param_groups_) {
    const auto& options = static_cast<const typename Kind::Options&>(group.options());
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, advanced;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      TORCH_CHECK(!p.grad().is_sparse(), "FusedAdam: sparse gradients are not supported (parameter of shape ",
                  p.sizes(), "); the item table's sparse gradients go to SparseRowAdam");
      TORCH_CHECK(params.empty() || p.device() == params.front().device(),
                  "FusedAdam: the parameters of one group must share a device, got ", params.front().device(),
                  " and ", p.device());
      auto& slot = this->state_[p.unsafeGetTensorImpl()];
      if (!slot) {  // as torch::optim::Adam initialises its state
        auto fresh = std::make_unique<typename Kind::State>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        if (options.amsgrad()) fresh->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& state = static_cast<typename Kind::State&>(*slot);
      state.step(state.step() + 1);
      auto& device_step = device_steps_[p.unsafeGetTensorImpl()];
      if (device_step.tensor.defined() && device_step.tensor.device() == p.device() &&
          device_step.value == state.step() - 1) {
        advanced.push_back(device_step.tensor);  // one multi-tensor add for all of them below
      } else {  // first step, or the state was loaded: a fill kernel, no copy from the host
        device_step.tensor = torch::full({}, static_cast<double>(state.step()), p.options().dtype(torch::kFloat));
      }
      device_step.value = state.step();
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(state.exp_avg());
      exp_avg_sqs.push_back(state.exp_avg_sq());
      if (options.amsgrad()) max_exp_avg_sqs.push_back(state.max_exp_avg_sq());
      steps.push_back(device_step.tensor);
    }
    if (!advanced.empty()) at::_foreach_add_(advanced, 1);
    if (params.empty()) continue;
    const auto [beta1, beta2] = options.betas();
    if constexpr (std::is_same_v<Base, torch::optim::AdamW>) {
      at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, options.lr(), beta1, beta2,
                        options.weight_decay(), options.eps(), options.amsgrad(), /*maximize=*/false,
                        /*grad_scale=*/std::nullopt, found_inf);
    } else {
      at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, options.lr(), beta1, beta2,
                       options.weight_decay(), options.eps(), options.amsgrad(), /*maximize=*/false,
                       /*grad_scale=*/std::nullopt, found_inf);
    }
  }
}

template class FusedAdamT<torch::optim::Adam>;
template class FusedAdamT<torch::optim::AdamW>;

namespace {

std::vector<torch::Tensor> gradients_of(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  return grads;
}

torch::Tensor norm_of(const std::vector<torch::Tensor>& grads) { return torch::stack(at::_foreach_norm(grads, 2)).norm(); }

}  // namespace

torch::Tensor gradient_norm(const std::vector<torch::Tensor>& params) {
  const auto grads = gradients_of(params);
  return grads.empty() ? torch::Tensor() : norm_of(grads);
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  TORCH_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got ", max_norm);
  const auto grads = gradients_of(params);
  if (grads.empty()) return {};
  const auto total = norm_of(grads);
  // Same coefficient as torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6), at most 1.
  const auto coefficient = (max_norm / (total + 1e-6)).clamp_max(1.0);
  at::_foreach_mul_(grads, coefficient);
  return total;
}

}  // namespace freshrec
