// Full-ranking evaluation of a model or of the popularity baseline on a leave-one-out split:
// every item is ranked, the user's earlier items filtered out (the target never is).
#pragma once

#include <torch/torch.h>

#include "engine/data/sequences.h"
#include "engine/eval/metrics.h"
#include "models/sasrec.h"

namespace freshrec {

struct EvalOptions {
  std::vector<long long> ks = {1, 5, 10, 20};
  int64_t batch_size = 256;
  bool filter_seen = true;
};

// Ranks of the targets among all items: scores (B, V) (column 0 is padding and never ranked);
// ties count against the target, so constant scores rank last, not first.
torch::Tensor target_ranks(torch::Tensor scores, const SequenceBatch& batch, const UserSequences& sequences,
                           Split split, bool filter_seen);

RankingMetrics evaluate_model(SASRec& model, const UserSequences& sequences, Split split,
                              const EvalOptions& options, torch::Device device);

// Scores every item by its training interaction count.
RankingMetrics evaluate_popularity(const UserSequences& sequences, Split split, const EvalOptions& options);

}  // namespace freshrec
