// Fine-tuning: alignment and what is trained; see finetune.h.
#include "engine/finetune/finetune.h"

#include <spdlog/spdlog.h>

#include <stdexcept>

namespace freshrec {

FinetuneOptions FinetuneOptions::from_config(const Config& config) {
  FinetuneOptions o;
  o.new_items = config.get_string("finetune.new_items");
  o.item_features = config.get_string("finetune.item_features");
  if (o.new_items == "content" && o.item_features.empty())
    throw ConfigError(config.origin("finetune.new_items") +
                      ": finetune.new_items=content needs finetune.item_features (a file of the items' side features)");
  o.keep_unmentioned = config.get_string("finetune.unmentioned_items") == "keep";
  o.train = config.get_string("finetune.train");
  o.top_blocks = config.get_int("finetune.top_blocks");
  o.freeze_known_rows = config.get_string("finetune.known_rows") == "freeze";
  o.item_lr = config.get_float("finetune.item_lr");
  const int64_t blocks = config.get_int("model.blocks");
  if (o.train == "adapters" && config.get_int("finetune.lora_rank") == 0)
    throw ConfigError(config.origin("finetune.train") + ": finetune.train=adapters needs adapters: set finetune.lora_rank > 0");
  if (o.train == "top_blocks" && o.top_blocks > blocks)
    throw ConfigError(config.origin("finetune.top_blocks") + ": finetune.top_blocks (" + std::to_string(o.top_blocks) +
                      ") exceeds model.blocks (" + std::to_string(blocks) + ")");
  return o;
}

int64_t add_unmentioned_items(EventLog& log, const PretrainedModel& source) {
  int64_t added = 0;
  for (const auto& id : source.item_ids)
    if (log.items.find(id) < 0) log.items.intern(id), ++added;
  return added;
}

Alignment align_to_catalogue(SASRec& model, const PretrainedModel& source, const IdMap& items, const std::string& new_items,
                             const ItemFeatures* features) {
  check_same_architecture(source, model->options());
  if (static_cast<int64_t>(items.size()) > model->options().num_items)
    throw std::invalid_argument("align_to_catalogue: the model has " + std::to_string(model->options().num_items) +
                                " item rows for " + std::to_string(items.size()) + " items");
  if (new_items != "random" && new_items != "mean" && new_items != "content")
    throw std::invalid_argument("finetune.new_items must be random, mean or content, got '" + new_items + "'");
  if (new_items == "content" && !features) throw std::invalid_argument("finetune.new_items=content needs the items' features");
  torch::NoGradGuard no_grad;
  auto params = model->named_parameters();
  for (const auto& [name, weight] : source.weights)
    if (name != "item_embedding") params[name].copy_(weight);

  // Source row r + 1 holds item source.item_ids[r]; the model's row id holds items.external(id).
  std::unordered_map<std::string, int64_t> source_row;
  for (size_t r = 0; r < source.item_ids.size(); ++r) source_row.emplace(source.item_ids[r], static_cast<int64_t>(r) + 1);
  Alignment a;
  std::vector<int64_t> from, fresh_rows;
  for (int32_t id = items.first_id(); id < items.end_id(); ++id) {
    const auto it = source_row.find(items.external(id));
    if (it == source_row.end()) {
      fresh_rows.push_back(id);
      continue;
    }
    a.known_rows.push_back(id);
    from.push_back(it->second);
  }
  a.known = static_cast<int64_t>(a.known_rows.size());
  a.fresh = static_cast<int64_t>(fresh_rows.size());
  auto table = model->item_embedding();
  const auto& source_table = source.weights.at("item_embedding");
  const auto device = table.device();
  if (a.known > 0) {
    const auto rows = torch::tensor(a.known_rows, torch::kLong).to(device);
    table.index_copy_(0, rows, source_table.index_select(0, torch::tensor(from, torch::kLong)).to(device, table.scalar_type()));
  }
  if (new_items != "random" && a.fresh > 0) {
    if (a.known == 0)
      throw std::invalid_argument(source.path + ": finetune.new_items=" + new_items +
                                  " needs items the source knows; the new data shares none with it");
    const auto known_rows = table.index_select(0, torch::tensor(a.known_rows, torch::kLong).to(device)).cpu();
    const auto mean = known_rows.mean(0);
    auto fresh_values = mean.expand({a.fresh, mean.size(0)}).clone();
    if (new_items == "content") {
      // The mean row of the known items with each feature, then each new item's mean over its features.
      std::unordered_map<std::string, std::pair<torch::Tensor, int64_t>> by_feature;
      for (size_t k = 0; k < a.known_rows.size(); ++k) {
        const auto it = features->find(items.external(static_cast<int32_t>(a.known_rows[k])));
        if (it == features->end()) continue;
        for (const auto& f : it->second) {
          auto& [sum, count] = by_feature[f];
          sum = sum.defined() ? sum + known_rows[k] : known_rows[k].clone();
          ++count;
        }
      }
      for (size_t n = 0; n < fresh_rows.size(); ++n) {
        const auto it = features->find(items.external(static_cast<int32_t>(fresh_rows[n])));
        if (it == features->end()) continue;
        torch::Tensor sum;
        int64_t shared = 0;
        for (const auto& f : it->second) {
          const auto found = by_feature.find(f);
          if (found == by_feature.end()) continue;
          const auto feature_mean = found->second.first / static_cast<double>(found->second.second);
          sum = sum.defined() ? sum + feature_mean : feature_mean;
          ++shared;
        }
        if (shared == 0) continue;
        fresh_values[static_cast<int64_t>(n)] = sum / static_cast<double>(shared);
        ++a.from_features;
      }
    }
    table.index_copy_(0, torch::tensor(fresh_rows, torch::kLong).to(device), fresh_values.to(device, table.scalar_type()));
  }
  table[0].zero_();  // padding
  return a;
}

FinetunePlan::FinetunePlan(SASRec& model, const FinetuneOptions& options, const std::vector<int64_t>& known_rows)
    : model_(model) {
  const int64_t blocks = model->options().blocks;
  auto trained = [&](const std::string& name) {
    if (name == "item_embedding" || name.rfind("item_lora.", 0) == 0) return true;  // the item side always learns
    if (options.train == "all") return true;
    if (options.train == "adapters") return name.find("_lora.") != std::string::npos;
    if (options.train == "embeddings") return name == "position_embedding";
    // top_blocks: the last K blocks and the final norm
    if (name.rfind("final_norm.", 0) == 0) return true;
    if (name.rfind("blocks.", 0) != 0) return false;
    return std::stoll(name.substr(7)) >= blocks - options.top_blocks;
  };
  int64_t dense_total = 0;
  for (const auto& p : model->named_parameters()) {
    const bool on = trained(p.key());
    p.value().set_requires_grad(on);
    freezes_weights_ = freezes_weights_ || !on;
    if (p.key() == "item_embedding") continue;
    if (p.key().rfind("item_lora.", 0) == 0) {
      item_adapter_.push_back(p.value());
      item_adapter_values_ += p.value().numel();
      continue;
    }
    dense_total += p.value().numel();
    if (on) dense_.push_back(p.value()), trained_ += p.value().numel();
  }
  const auto& table = model->item_embedding();
  const int64_t hidden = table.size(1);
  const int64_t table_rows = table.size(0) - 1;
  int64_t item_rows = table_rows;
  if (options.freeze_known_rows && !known_rows.empty()) {
    frozen_rows_ = torch::tensor(known_rows, torch::kLong).to(table.device());
    frozen_values_ = table.detach().index_select(0, frozen_rows_).clone();
    item_rows -= static_cast<int64_t>(known_rows.size());
  }
  const int64_t dense_trained = trained_;
  trained_ += item_rows * hidden + item_adapter_values_;
  description_ = "training " + options.train + (options.train == "top_blocks" ? "=" + std::to_string(options.top_blocks) : "") +
                 ": " + std::to_string(dense_.size()) + " transformer tensors (" + std::to_string(dense_trained) + " of " +
                 std::to_string(dense_total) + " values) and " + std::to_string(item_rows) + " of " +
                 std::to_string(table_rows) + " item rows" +
                 (item_adapter_.empty() ? "" : ", and the item adapter (" + std::to_string(item_adapter_values_) + " values)");
}

void FinetunePlan::snapshot() {
  if (frozen_rows_.defined()) frozen_values_ = model_->item_embedding().detach().index_select(0, frozen_rows_).clone();
}

void FinetunePlan::restore() {
  if (!frozen_rows_.defined()) return;
  torch::NoGradGuard no_grad;
  model_->item_embedding().index_copy_(0, frozen_rows_, frozen_values_);
}

}  // namespace freshrec
