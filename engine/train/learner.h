// A model with its optimizers and one guarded training step: Adam (fused) for the dense parameters and
// the fused row-wise Adam for the item table. The stream's teacher is one, its student another.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "engine/config/config.h"
#include "engine/train/dense_adam.h"
#include "engine/train/sparse_adam.h"
#include "models/sasrec.h"

namespace freshrec {

struct Learner {
  SASRec model{nullptr};
  std::unique_ptr<FusedAdam> dense;
  SparseRowAdam sparse{nullptr};

  Learner() = default;
  // Optimizers at learning rate `lr`, with train.beta1 / beta2 / sparse_bias_correction from `config`.
  // With adapters_only, the dense optimizer holds the model's LoRA adapters alone and the other dense
  // weights are frozen (the item table still learns its touched rows); the model must have adapters.
  Learner(SASRec m, const Config& config, double lr, bool adapters_only = false);
  explicit operator bool() const { return static_cast<bool>(model); }
  // The item table grew to `rows` (new rows start with zero moments).
  void grow(int64_t rows);
  // Backward, clipping of the dense parameters (clip > 0), both optimizer steps, guarded on the
  // device: when the loss is not finite or above max_loss, or any gradient (dense or of the item
  // table) is not finite, weights and moments stay as they were (the step counts still advance).
  // Returns the guard's flag (float32 scalar, 1: skipped) without reading it back.
  torch::Tensor step(const torch::Tensor& loss, double clip, double lr, double max_loss);
};

}  // namespace freshrec
