// Gradients summed over ranks during the backward pass; see gradient_reducer.h.
#include "engine/dist/gradient_reducer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace freshrec {
namespace {

// Runs after a parameter's gradient accumulator: its .grad is whole for this backward pass.
struct ReadyHook : public torch::autograd::FunctionPostHook {
  explicit ReadyHook(std::function<void()> ready) : ready_(std::move(ready)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    ready_();
    return outputs;
  }
  std::function<void()> ready_;
};

}  // namespace

GradientReducer::GradientReducer(std::vector<torch::Tensor> params, ProcessGroup& group, int64_t bucket_bytes)
    : params_(std::move(params)), group_(group), bucket_of_(params_.size()), seen_(params_.size(), 0) {
  // Reverse order, a new bucket when the dtype changes or the bucket would outgrow bucket_bytes.
  int64_t filled = 0;
  for (size_t i = params_.size(); i-- > 0;) {
    const auto& p = params_[i];
    TORCH_CHECK(p.requires_grad(), "GradientReducer: parameter ", i, " does not require grad");
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    if (buckets_.empty() || filled + bytes > bucket_bytes ||
        params_[buckets_.back().params.front()].scalar_type() != p.scalar_type()) {
      buckets_.emplace_back();
      filled = 0;
    }
    auto& b = buckets_.back();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel());
    b.params.push_back(i);
    bucket_of_[i] = buckets_.size() - 1;
    filled += bytes;
  }
  for (auto& b : buckets_) {
    const auto& last = params_[b.params.back()];
    b.flat = torch::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(params_[i]);
    const auto key = accumulator->add_post_hook(std::make_unique<ReadyHook>([this, i] { mark_ready(i); }));
    hooks_.emplace_back(std::move(accumulator), key);
  }
}

GradientReducer::~GradientReducer() {
  for (auto& [accumulator, key] : hooks_) accumulator->del_post_hook(key);
}

void GradientReducer::start(Bucket& bucket) {
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < bucket.params.size(); ++k) {
    const auto& p = params_[bucket.params[k]];
    auto slot = bucket.flat.narrow(0, bucket.offsets[k], p.numel());
    if (p.grad().defined())
      slot.copy_(p.grad().reshape({-1}));
    else
      slot.zero_();  // no gradient on this rank this step: it adds nothing to the sum
  }
  bucket.wait = group_.start_sum(bucket.flat);
}

void GradientReducer::mark_ready(size_t param) {
  // One backward pass a step: a second would sum partial gradients (no gradient accumulation here).
  TORCH_CHECK(!seen_[param], "GradientReducer: a second backward pass reached parameter ", param, " before finish()");
  seen_[param] = 1;
  ++buckets_[bucket_of_[param]].ready;
  // Start every complete bucket in index order: the same collectives in the same order on every rank.
  while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].params.size()) {
    start(buckets_[next_++]);
    ++started_in_backward_;
  }
}

void GradientReducer::finish() {
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    b.wait();
    for (size_t k = 0; k < b.params.size(); ++k) {
      auto& p = params_[b.params[k]];
      const auto sum = b.flat.narrow(0, b.offsets[k], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(sum);
      else
        p.mutable_grad() = sum.clone();
    }
    b.ready = 0;
    b.wait = nullptr;
  }
  std::fill(seen_.begin(), seen_.end(), 0);
  next_ = 0;
}

}  // namespace freshrec
