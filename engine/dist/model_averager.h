// Local SGD and federated averaging over c10d: each rank trains its own replica on its own users for a
// number of steps, then the replicas' weights are averaged (FedAvg: only model deltas cross the
// network, one allreduce per round instead of one per step).
//
// With clip_delta > 0 each rank's delta since the last round is clipped to that L2 norm, and with
// noise_multiplier > 0 Gaussian noise of standard deviation noise_multiplier x clip_delta is added to
// each coordinate before averaging (DP-FedAvg's mechanism). That bounds each rank's, i.e. each group of
// users', influence on a round and hides it in noise; it is not a privacy guarantee by itself: no
// privacy accounting is done (no epsilon is computed), the optimizer state stays local and unnoised,
// and the checkpoints and metrics each rank sees are not protected.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "engine/dist/process_group.h"

namespace freshrec {

struct AveragingSettings {
  int64_t every = 8;              // local steps per round
  double clip_delta = 0;          // 0: deltas unclipped
  double noise_multiplier = 0;    // 0: no noise
  uint64_t seed = 0;              // the noise's (each rank and round draws its own)
};

class ModelAverager {
 public:
  // `params`: the replica's weights that are averaged (the same list in the same order on every rank).
  ModelAverager(std::vector<torch::Tensor> params, ProcessGroup& group, const AveragingSettings& settings);
  // After a local step: a round when `every` steps have passed since the last one, or when `force`
  // (the end of an epoch: replicas agree before they are evaluated and saved).
  void after_step(bool force);
  // Averages now (every rank must call it at the same point).
  void average();
  // The weights were replaced (a resume, a return to the best checkpoint): the next delta counts
  // from them.
  void restart();
  int64_t rounds() const { return rounds_; }

 private:
  std::vector<torch::Tensor> params_, anchor_;  // anchor: the weights after the last round
  ProcessGroup& group_;
  AveragingSettings settings_;
  int64_t since_ = 0, rounds_ = 0;
};

}  // namespace freshrec
