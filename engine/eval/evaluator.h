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
  // This process's share of the users, in a job of several: the contiguous `shard` of `shards`
  // (RankingMetrics::sums of every share add up to the whole's).
  int shard = 0, shards = 1;
  // Every share scores as many batches as the largest share does (its last ones empty): a model whose
  // item rows are sharded across the processes (ItemRows) needs every process in each of its calls.
  bool lockstep = false;
};

// Items to leave out of each row (of a ranking, or of a full-softmax loss), built row by row and
// handed over as one (rows, longest) int64 matrix padded with 0, the padding item that neither a
// ranking nor a loss counts. Never put a row's target in it.
class ExcludedItems {
 public:
  void add(int64_t item) { items_.push_back(item); }
  void end_row() { ends_.push_back(items_.size()); }  // closes the current row (possibly empty)
  int64_t rows() const { return static_cast<int64_t>(ends_.size()); }
  // (rows, max(1, longest)) on `device`.
  torch::Tensor matrix(torch::Device device) const;

 private:
  std::vector<int64_t> items_;
  std::vector<size_t> ends_;
};

// Ranks of targets[r] (int64 (B), on the scores' device) in row r of scores (B, V): column 0
// (padding), columns from `candidates` on (spare rows of a grown table; -1: none) and the row's
// excluded items ((B, S) as ExcludedItems makes them; undefined: none) are left out; ties count
// against the target, so constant scores rank last, not first.
torch::Tensor rank_targets(torch::Tensor scores, const torch::Tensor& targets, const torch::Tensor& excluded,
                           int64_t candidates = -1);

// rank_targets for a leave-one-out batch, the seen items being the user's history before the target.
torch::Tensor target_ranks(torch::Tensor scores, const SequenceBatch& batch, const UserSequences& sequences,
                           Split split, bool filter_seen);

RankingMetrics evaluate_model(SASRec& model, const UserSequences& sequences, Split split,
                              const EvalOptions& options, torch::Device device);

// Scores every item by its training interaction count.
RankingMetrics evaluate_popularity(const UserSequences& sequences, Split split, const EvalOptions& options);

}  // namespace freshrec
