// Local SGD and federated averaging over c10d: each rank trains its own replica on its own users for a
// number of steps, then the replicas' weights are averaged (FedAvg: only model deltas cross the
// network, one allreduce per round instead of one per step).
//
// With clip_delta > 0 each rank's delta since the last round is clipped to that L2 norm, and with
// noise_multiplier z > 0 each rank adds Gaussian noise of standard deviation z x clip_delta to each
// coordinate of its clipped delta before the sum: the averaged update then carries noise of standard
// deviation z x clip_delta / sqrt(ranks) per coordinate (the distributed, local-noise form; central
// DP-FedAvg adds z x clip_delta to the sum once). That bounds each rank's, i.e. each group of users',
// influence on a round and hides it in noise; it is not a privacy guarantee by itself: no privacy
// accounting is done (no epsilon is computed), the optimizer state stays local and unnoised, and the
// checkpoints and metrics each rank sees are not protected. The noise comes from the operating
// system's entropy unless a seed is given (reproducible runs: then anyone who knows the seed can
// remove it).
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
  uint64_t seed = 0;              // the noise's, 0: the operating system's entropy (each rank and round its own)
};

class ModelAverager {
 public:
  // `params`: the replica's weights that are averaged (the same list in the same order on every rank).
  ModelAverager(std::vector<torch::Tensor> params, ProcessGroup& group, const AveragingSettings& settings);
  // After a step (`trained`: this rank took one; false when its users have run out): a round when
  // `every` steps have passed since the last one, or when `force` (the end of an epoch: replicas agree
  // before they are evaluated and saved). `step`: the job's steps so far, the same on every rank, which
  // keys a seeded noise. Returns whether a round happened.
  bool after_step(bool trained, bool force, int64_t step);
  // Averages now (every rank must call it at the same point): the mean of the deltas of the ranks that
  // trained since the last round (a rank that only waited adds neither delta nor noise).
  void average();
  // The weights were replaced (a resume, a return to the best checkpoint): the next delta counts
  // from them.
  void restart();

 private:
  std::vector<torch::Tensor> params_, anchor_;  // anchor: the weights after the last round
  ProcessGroup& group_;
  AveragingSettings settings_;
  int64_t since_ = 0, step_ = 0;
  bool trained_ = false;  // this rank took a step since the last round
  uint64_t noise_seed_ = 0;
};

}  // namespace freshrec
