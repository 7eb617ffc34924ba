// The one learner of the engine: a model with its optimizers and its training step. The trainer (and
// a fine-tune, and offline distillation) and the stream (its teacher, its online student) all update
// their models through it; LearnerSettings say how.
//
// The dense parameters learn with Adam or AdamW (FusedAdam: one fused kernel per step, LibTorch's
// state format); the item table either in that optimizer (its own parameter group when its learning
// rate differs) or row-wise from sparse gradients (SparseRowAdam: only the touched rows). A step is
// backward, clipping, both optimizer steps; with the guard, decided on the device without reading a
// value back.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "engine/dist/gradient_reducer.h"
#include "engine/dist/process_group.h"
#include "engine/dist/sharded_item_table.h"
#include "engine/train/dense_adam.h"
#include "engine/train/learner_settings.h"
#include "engine/train/sparse_adam.h"
#include "models/sasrec.h"

namespace freshrec {

// What the optimizers hold when it is not every weight.
struct TrainedParameters {
  // Instead of the model's dense parameters (all but the item table): a fine-tune's plan, adapters.
  std::optional<std::vector<torch::Tensor>> dense;
  // Learned at item_lr in the item table's parameter group (a fine-tune's item adapter).
  std::vector<torch::Tensor> with_items;
};

// The model's LoRA adapters alone; every other weight but the item table is frozen (requires_grad
// false). The model must have adapters.
TrainedParameters adapters_only(SASRec& model);

class Learner {
 public:
  SASRec model{nullptr};
  std::unique_ptr<torch::optim::Optimizer> dense;  // FusedAdam, or FusedAdamW with weight decay
  SparseRowAdam sparse{nullptr};                   // with settings.row_wise_items

  Learner() = default;
  // With `item_shards` (and settings.row_wise_items), the item table is sharded by rows across that
  // group (ShardedItemTable): `sparse` then updates this rank's rows. With `sharded_rows` > 0 the
  // model's table holds this rank's rows already, of a table of that many rows.
  Learner(SASRec model, const LearnerSettings& settings, TrainedParameters trained = {},
          ProcessGroup* item_shards = nullptr, int64_t sharded_rows = 0);
  explicit operator bool() const { return static_cast<bool>(model); }
  // The row-wise optimizer as checkpoints save it (null without one).
  torch::nn::Module* sparse_state() { return sparse ? sparse.get() : nullptr; }
  // The row-sharded table (null unless the learner was built with item_shards).
  ShardedItemTable* item_shards() { return shards_.get(); }

  // Data-parallel: every step sums the dense gradients over the group's ranks (bucketed allreduce)
  // before clipping, so every rank clips and steps alike and the replicas stay equal. Each rank's
  // loss must be its share of the global batch's mean (its own mean times its share of the
  // positions). A row-wise table must be sharded across the same group. Null: one process.
  // The sums start while the backward pass runs, a bucket of at most `bucket_bytes` at a time
  // (GradientReducer). With `replicate_rows`, a row-wise table that is not sharded is kept whole on
  // every rank: each step gathers every rank's row gradients (ProcessGroup::all_gather, in rank order)
  // and every rank applies them all alike, so the replicas stay equal; the table must then take no
  // dense gradient (no full softmax over it).
  void set_process_group(ProcessGroup* group, int64_t bucket_bytes = int64_t{25} << 20, bool replicate_rows = false);
  // The data-parallel reducer (null without a group).
  const GradientReducer* reducer() const { return reducer_.get(); }
  // The item table grew to `rows` (new rows start with zero moments).
  void grow(int64_t rows);
  // Backward from `loss`, clipping, both optimizer steps. `rate` maps each parameter group's base
  // learning rate (and item_lr) to this step's (warm-up, decay); without it the base rates hold.
  // With the guard, returns its flag (a float32 scalar on the device, 1: the step was skipped and
  // weights and moments stayed as they were; the step counts still advance) without reading it back;
  // without the guard, an undefined tensor.
  torch::Tensor step(const torch::Tensor& loss, const std::function<double(double)>& rate = {});

 private:
  void gather_row_gradients();

  LearnerSettings settings_;
  std::vector<double> base_lr_;                               // each parameter group's, as built
  std::function<void(const torch::Tensor&)> step_unless_;    // the dense optimizer's guarded step
  ProcessGroup* group_ = nullptr;
  bool replicated_rows_ = false;  // set_process_group's replicate_rows
  std::unique_ptr<GradientReducer> reducer_;
  std::unique_ptr<ShardedItemTable> shards_;
};

}  // namespace freshrec
