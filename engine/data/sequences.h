// Per-user item sequences in time order, the leave-one-out split, and padded batches built from them.
// Torch-free: batches are row-major int64 buffers that the trainer wraps as tensors without copying.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/data/event_log.h"

namespace freshrec {

// Leave-one-out: each user's last item is the test target, the one before it the validation target,
// and the rest trains. Users with fewer than 3 items only train.
enum class Split { Train, Validation, Test };

struct UserSequences {
  std::vector<std::vector<int32_t>> items;  // [user] -> internal item ids in time order
  int32_t num_items = 0;

  static UserSequences from_log(const EventLog& log);
  int32_t num_users() const { return static_cast<int32_t>(items.size()); }
  // Length of the user's history that `split` may see: the whole training prefix for Train, and for
  // Validation/Test the items before that split's target.
  size_t prefix_length(int32_t user, Split split) const;
  // Users that have a validation and a test target (at least 3 items).
  std::vector<int32_t> evaluation_users() const;
  // Users with at least one training pair (2 or more items in the training prefix).
  std::vector<int32_t> training_users() const;
  // Interaction counts per item over the training prefixes (index 0 unused): the popularity baseline.
  std::vector<int64_t> training_item_counts() const;
};

struct SequenceBatch {
  int64_t rows = 0, length = 0;
  std::vector<int64_t> inputs;   // (rows, length), left-padded with 0: the newest item is last
  std::vector<int64_t> targets;  // Train: (rows, length) next item per position (0: none);
                                 // Validation/Test: (rows) the one target per row
  std::vector<int32_t> users;    // (rows)
};

// One right-aligned training row from the items seq[0..n): the last min(n - 1, maxlen) items but
// the newest are inputs, each position's target the item after it. inputs/targets: (maxlen), zeroed.
void fill_training_row(const int32_t* seq, size_t n, int64_t maxlen, int64_t* inputs, int64_t* targets);

// The flat positions whose target is an item (not 0), ascending: the rows a loss is computed on.
std::vector<int64_t> nonzero_positions(const std::vector<int64_t>& targets);

// Training batch: for each user, the last `maxlen + 1` items of the training prefix give inputs
// (all but the newest) and targets (all but the oldest).
SequenceBatch make_train_batch(const UserSequences& sequences, const std::vector<int32_t>& users, int64_t maxlen);
// Evaluation batch: the last `maxlen` items before the split's target, and the target.
SequenceBatch make_eval_batch(const UserSequences& sequences, const std::vector<int32_t>& users, Split split,
                              int64_t maxlen);

}  // namespace freshrec
