// Local SGD / FedAvg rounds; see model_averager.h.
#include "engine/dist/model_averager.h"

#include <ATen/CPUGeneratorImpl.h>

#include <random>
#include <stdexcept>

#include "engine/splitmix.h"

namespace freshrec {

ModelAverager::ModelAverager(std::vector<torch::Tensor> params, ProcessGroup& group, const AveragingSettings& settings)
    : params_(std::move(params)), group_(group), settings_(settings) {
  if (settings.every <= 0) throw std::invalid_argument("dist.local_steps must be positive");
  if (settings.clip_delta < 0 || settings.noise_multiplier < 0)
    throw std::invalid_argument("dist.clip_delta and dist.noise_multiplier must be >= 0");
  if (settings.noise_multiplier > 0 && settings.clip_delta <= 0)
    throw std::invalid_argument("dist.noise_multiplier needs dist.clip_delta > 0 (the noise is scaled to the clip)");
  torch::NoGradGuard no_grad;
  for (const auto& p : params_) anchor_.push_back(p.detach().clone());
  // The noise's stream: the given seed, or fresh entropy (SplitMix64 mixes in the rank either way).
  uint64_t base = settings.seed;
  if (base == 0) {
    std::random_device entropy;
    base = (static_cast<uint64_t>(entropy()) << 32) ^ entropy();
  }
  noise_seed_ = splitmix64(base ^ splitmix64(static_cast<uint64_t>(group.rank()) + 1));
}

bool ModelAverager::after_step(bool trained, bool force, int64_t step) {
  ++since_;
  step_ = step;
  trained_ = trained_ || trained;
  if (since_ < settings_.every && !force) return false;
  average();
  return true;
}

void ModelAverager::average() {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> deltas;
  for (size_t i = 0; i < params_.size(); ++i) deltas.push_back((params_[i] - anchor_[i]).contiguous());
  if (!trained_) {  // waited the whole round: nothing to add, and no noise
    for (auto& d : deltas) d.zero_();
  } else if (settings_.clip_delta > 0) {
    auto norm = torch::zeros({}, deltas.front().options().dtype(torch::kDouble));
    for (const auto& d : deltas) norm += d.to(torch::kDouble).pow(2).sum();
    const auto scale = torch::clamp_max(settings_.clip_delta / (norm.sqrt() + 1e-12), 1.0).to(deltas.front().dtype());
    for (auto& d : deltas) d.mul_(scale);
  }
  if (trained_ && settings_.noise_multiplier > 0) {
    // Each rank and round its own stream, keyed by the job's step count (a resumed run goes on from it
    // and draws no round's noise twice).
    auto generator = at::make_generator<at::CPUGeneratorImpl>(splitmix64(noise_seed_ + static_cast<uint64_t>(step_)));
    const double sigma = settings_.noise_multiplier * settings_.clip_delta;
    for (auto& d : deltas) {
      const auto noise = at::normal(0.0, sigma, d.sizes(), generator, torch::TensorOptions().dtype(d.dtype()));
      d.add_(noise.to(d.device()));
    }
  }
  // The ranks that trained this round, counted in the same collective as their deltas.
  auto count = torch::full({1}, trained_ ? 1.0 : 0.0, deltas.front().options());
  deltas.push_back(count);
  group_.allreduce_sum(deltas);
  deltas.pop_back();
  const double ranks = count.item<double>();
  if (ranks > 0)
    for (size_t i = 0; i < params_.size(); ++i) params_[i].copy_(anchor_[i] + deltas[i] / ranks);
  for (size_t i = 0; i < params_.size(); ++i) anchor_[i].copy_(params_[i]);
  since_ = 0;
  trained_ = false;
}

void ModelAverager::restart() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) anchor_[i].copy_(params_[i]);
  since_ = 0;
}

}  // namespace freshrec
