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

// Items to leave out of each row's ranking, as (row, item) pairs.
struct SeenItems {
  std::vector<int64_t> rows, items;
  void add(int64_t row, int64_t item) { rows.push_back(row), items.push_back(item); }
};

// Ranks of targets[r] in row r of scores (B, V): column 0 (padding), columns from `candidates` on
// (spare rows of a grown table; -1: none) and the row's seen items are left out, never the target
// itself; ties count against the target, so constant scores rank last, not first.
torch::Tensor rank_targets(torch::Tensor scores, const std::vector<int64_t>& targets, const SeenItems& seen,
                           int64_t candidates = -1);

// rank_targets for a leave-one-out batch, the seen items being the user's history before the target.
torch::Tensor target_ranks(torch::Tensor scores, const SequenceBatch& batch, const UserSequences& sequences,
                           Split split, bool filter_seen);

RankingMetrics evaluate_model(SASRec& model, const UserSequences& sequences, Split split,
                              const EvalOptions& options, torch::Device device);

// Scores every item by its training interaction count.
RankingMetrics evaluate_popularity(const UserSequences& sequences, Split split, const EvalOptions& options);

}  // namespace freshrec
