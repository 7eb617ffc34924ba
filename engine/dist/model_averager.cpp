// Local SGD / FedAvg rounds; see model_averager.h.
#include "engine/dist/model_averager.h"

#include <ATen/CPUGeneratorImpl.h>

#include <stdexcept>

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
}

void ModelAverager::after_step(bool force) {
  ++since_;
  if (since_ >= settings_.every || force) average();
}

void ModelAverager::average() {
  torch::NoGradGuard no_grad;
  const double n = static_cast<double>(group_.size());
  std::vector<torch::Tensor> deltas;
  for (size_t i = 0; i < params_.size(); ++i) deltas.push_back((params_[i] - anchor_[i]).contiguous());
  if (settings_.clip_delta > 0) {
    auto norm = torch::zeros({}, deltas.front().options().dtype(torch::kDouble));
    for (const auto& d : deltas) norm += d.to(torch::kDouble).pow(2).sum();
    const auto scale = torch::clamp_max(settings_.clip_delta / (norm.sqrt() + 1e-12), 1.0).to(deltas.front().dtype());
    for (auto& d : deltas) d.mul_(scale);
  }
  if (settings_.noise_multiplier > 0) {
    // Each rank and round its own stream: (seed, round, rank).
    auto generator = at::make_generator<at::CPUGeneratorImpl>(settings_.seed * 1000003ULL +
                                                              static_cast<uint64_t>(rounds_) * 4099ULL +
                                                              static_cast<uint64_t>(group_.rank()));
    const double sigma = settings_.noise_multiplier * settings_.clip_delta;
    for (auto& d : deltas) {
      const auto noise = at::normal(0.0, sigma, d.sizes(), generator, torch::TensorOptions().dtype(d.dtype()));
      d.add_(noise.to(d.device()));
    }
  }
  group_.allreduce_sum(deltas);
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].copy_(anchor_[i] + deltas[i] / n);
    anchor_[i].copy_(params_[i]);
  }
  since_ = 0;
  ++rounds_;
}

void ModelAverager::restart() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) anchor_[i].copy_(params_[i]);
  since_ = 0;
}

}  // namespace freshrec
