// Fine-tuning a pre-trained model on new data (`freshrec finetune`): the source's rows are aligned
// to the new catalogue by external id, new items get rows, and the finetune.* keys choose what is
// trained. The trainer (engine/train/trainer.h) runs the rest as for any model.
#pragma once

#include <torch/torch.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "engine/config/config.h"
#include "engine/data/event_log.h"
#include "engine/finetune/pretrained.h"
#include "models/sasrec.h"

namespace freshrec {

// External item id -> its side features (engine/data/item_features.h).
using ItemFeatures = std::unordered_map<std::string, std::vector<std::string>>;

struct FinetuneOptions {
  std::string new_items = "mean";  // random | mean | content: the rows of items the source does not know
  std::string item_features;       // with content: the file of items' side features
  bool keep_unmentioned = false;   // items the source knows and the new data never mentions
  std::string train = "all";       // all | embeddings | top_blocks | adapters
  int64_t top_blocks = 1;          // with train=top_blocks: how many of the last blocks are trained
  bool freeze_known_rows = false;  // the known items' rows keep the source's values
  double item_lr = 0;              // the item table's learning rate (0: train.lr)
  static FinetuneOptions from_config(const Config& config);
};

// Adds to `log`'s catalogue the source's items it never mentions (finetune.unmentioned_items=keep),
// after its own items, so the new data's ids keep their numbers. Returns how many were added.
int64_t add_unmentioned_items(EventLog& log, const PretrainedModel& source);

struct Alignment {
  int64_t known = 0, fresh = 0;          // rows copied from the source; rows initialised here
  int64_t from_features = 0;             // with content: new rows made from known items sharing a feature
  std::vector<int64_t> known_rows;        // the model's rows (item ids) of known items
};

// Copies the source's weights into `model` (same architecture, checked), its item rows by external
// id onto `items`; the rows of items it does not know are `new_items`: random keeps the model's own
// initialisation, mean is the mean of the known rows, content (with `features`) is the mean over the
// item's features of the mean row of the known items with that feature (the mean of all known rows
// for an item none of whose features a known item has).
Alignment align_to_catalogue(SASRec& model, const PretrainedModel& source, const IdMap& items, const std::string& new_items,
                             const ItemFeatures* features = nullptr);

// What a fine-tune trains: sets requires_grad on `model`'s parameters as `options` says and keeps
// the known rows' values when they are frozen (restore() after each optimizer step).
class FinetunePlan {
 public:
  FinetunePlan(SASRec& model, const FinetuneOptions& options, const std::vector<int64_t>& known_rows);
  // The dense parameters the optimizer updates (the item table and its adapter apart).
  std::vector<torch::Tensor> dense_trainable() const { return dense_; }
  // The item adapter's A and B (finetune.item_lora_rank > 0), which learn with the item table.
  std::vector<torch::Tensor> item_adapter() const { return item_adapter_; }
  // Writes the frozen rows back (an optimizer's step moves every row it is given).
  void restore();
  // Takes the frozen rows' values from the model again (after a resumed run loaded its weights).
  void snapshot();
  int64_t trained_parameters() const { return trained_; }
  // Whether some weights are not trained at all (rows frozen in a trained table do not count).
  bool freezes_weights() const { return freezes_weights_; }
  std::string describe() const { return description_; }

 private:
  SASRec model_;
  std::vector<torch::Tensor> dense_, item_adapter_;
  int64_t item_adapter_values_ = 0;
  torch::Tensor frozen_rows_, frozen_values_;
  int64_t trained_ = 0;
  bool freezes_weights_ = false;
  std::string description_;
};

}  // namespace freshrec
