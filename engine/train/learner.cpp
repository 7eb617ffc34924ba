// The engine's learner; see learner.h.
#include "engine/train/learner.h"

#include <stdexcept>
#include <string>
#include <type_traits>

namespace freshrec {

TrainedParameters adapters_only(SASRec& model) {
  TrainedParameters trained;
  trained.dense.emplace();
  for (const auto& p : model->named_parameters()) {
    if (p.value().is_same(model->item_embedding())) continue;
    const bool adapter = p.key().find("_lora.") != std::string::npos;
    p.value().set_requires_grad(adapter);
    if (adapter) trained.dense->push_back(p.value());
  }
  if (trained.dense->empty()) throw std::invalid_argument("adapter-only updates need a model with LoRA adapters");
  return trained;
}

Learner::Learner(SASRec m, const LearnerSettings& settings, TrainedParameters trained, ProcessGroup* item_shards,
                 int64_t sharded_rows)
    : model(std::move(m)), settings_(settings) {
  if (item_shards && !settings.row_wise_items)
    throw std::invalid_argument("a row-sharded item table learns row-wise (LearnerSettings::row_wise_items)");
  const double lr = settings.lr, item_lr = settings.item_lr, wd = settings.weight_decay;
  const bool custom = trained.dense.has_value();
  const std::vector<torch::Tensor> dense_params = custom ? *trained.dense : model->dense_parameters(/*with_item_table=*/false);
  // The item table's group: its weights (unless row-wise) and an item adapter.
  std::vector<torch::Tensor> table;
  if (!settings.row_wise_items) table.push_back(model->item_embedding());
  table.insert(table.end(), trained.with_items.begin(), trained.with_items.end());
  if (settings.row_wise_items) {
    ops::RowwiseAdamOptions o;
    o.lr = item_lr, o.beta1 = settings.beta1, o.beta2 = settings.beta2;
    o.weight_decay = wd, o.decoupled_weight_decay = wd > 0;
    o.per_row_step = settings.per_row_step;
    if (item_shards) {
      shards_ = std::make_unique<ShardedItemTable>(model, *item_shards, o, sharded_rows);
      model->grow_items(shards_->rows() - 1);  // the whole table's item count (a table read as one rank's rows)
      sparse = shards_->optimizer();
    } else {
      sparse = SparseRowAdam(model->item_embedding(), o, /*padding_idx=*/0);
      model->set_sparse_gradients(&sparse->gradients());
    }
  }
  const auto betas = std::make_tuple(settings.beta1, settings.beta2);
  // One group when the table learns at the dense rate (in the order dense_parameters(true) gives,
  // or the table's first), else the table's group, then the dense one. Checkpoints keep this order.
  auto make = [&](auto options_of) {
    using Options = decltype(options_of(lr));
    using Optimizer = std::conditional_t<std::is_same_v<Options, torch::optim::AdamWOptions>, FusedAdamW, FusedAdam>;
    std::unique_ptr<Optimizer> optimizer;
    if (table.empty() || item_lr == lr) {
      std::vector<torch::Tensor> all = custom ? dense_params : model->dense_parameters(!settings.row_wise_items);
      if (custom) all.insert(all.begin(), table.begin(), table.end());
      optimizer = std::make_unique<Optimizer>(all, options_of(lr));
    } else {
      std::vector<torch::optim::OptimizerParamGroup> groups;
      groups.emplace_back(table, std::make_unique<Options>(options_of(item_lr)));
      if (!dense_params.empty()) groups.emplace_back(dense_params, std::make_unique<Options>(options_of(lr)));
      optimizer = std::make_unique<Optimizer>(std::move(groups), options_of(lr));
    }
    Optimizer* raw = optimizer.get();
    step_unless_ = [raw](const torch::Tensor& skip) { raw->step_unless(skip); };
    dense = std::move(optimizer);
  };
  if (wd > 0)
    make([&](double rate) { return torch::optim::AdamWOptions(rate).betas(betas).weight_decay(wd); });
  else
    make([&](double rate) { return torch::optim::AdamOptions(rate).betas(betas); });
  for (const auto& group : dense->param_groups()) base_lr_.push_back(group.options().get_lr());
}

void Learner::set_process_group(ProcessGroup* group, int64_t bucket_bytes, bool replicate_rows) {
  if (group && sparse && !shards_ && !replicate_rows)
    throw std::invalid_argument("a job of several processes shards a row-wise item table across its ranks "
                                "(dist.item_table=row_sharded) or trains it in the dense optimizer");
  group_ = group;
  replicated_rows_ = group && sparse && !shards_ && replicate_rows;
  reducer_.reset();
  if (!group) return;
  std::vector<torch::Tensor> params;
  for (const auto& g : dense->param_groups())
    for (const auto& p : g.params()) params.push_back(p);
  reducer_ = std::make_unique<GradientReducer>(std::move(params), *group, bucket_bytes);
}

// Every rank's row gradients of this step, on every rank, in rank order: each rank's touched rows
// (summed over its lookups) and their ids, in one gather. The row-wise Adam then reduces them by id in
// one order on every rank.
void Learner::gather_row_gradients() {
  auto& g = sparse->gradients();
  TORCH_CHECK(!model->item_embedding().grad().defined(),
              "a replicated row-wise item table takes row gradients only (no full softmax over it)");
  const auto& weight = model->item_embedding();
  const int64_t width = weight.size(1);
  torch::Tensor ids = torch::empty({0}, torch::dtype(torch::kLong).device(weight.device()));
  torch::Tensor rows = torch::empty({0, width}, weight.options().requires_grad(false));
  if (!g.empty()) {
    std::vector<torch::Tensor> flat_ids, flat_rows;
    for (size_t i = 0; i < g.indices.size(); ++i) {
      flat_ids.push_back(g.indices[i].reshape({-1}).to(torch::kLong));
      flat_rows.push_back(g.grad_outputs[i].reshape({-1, width}).to(weight.scalar_type()));
    }
    // Each touched row once, its gradients summed (the row-wise kernels' deterministic segment sum):
    // what crosses the network is one row per distinct item, not one per lookup.
    std::tie(ids, rows) = ops::embedding_backward_sparse(torch::cat(flat_ids), torch::cat(flat_rows).to(torch::kFloat),
                                                         weight.size(0), /*padding_idx=*/0);
    rows = rows.to(weight.scalar_type());
  }
  g.clear();
  torch::Tensor all_ids, all_rows;
  if (rows.scalar_type() == torch::kFloat) {
    // One gather: each id's eight bytes as two float32 columns beside its row, bit for bit.
    const auto packed = group_->all_gather(torch::cat({rows, ids.contiguous().view(torch::kFloat).view({-1, 2})}, 1));
    all_rows = packed.narrow(1, 0, width).contiguous();
    all_ids = packed.narrow(1, width, 2).contiguous().view(torch::kLong).view({-1});
  } else {
    all_ids = group_->all_gather(ids);
    all_rows = group_->all_gather(rows);
  }
  if (all_ids.size(0) > 0) g.indices.push_back(all_ids), g.grad_outputs.push_back(all_rows);
}

void Learner::grow(int64_t rows) {
  model->grow_items(rows);  // a row-sharded table grows itself (a collective)
  if (shards_) return;
  if (sparse) sparse->grow_to_weight();
}

torch::Tensor Learner::step(const torch::Tensor& loss, const std::function<double(double)>& rate) {
  const auto value = loss.detach();
  dense->zero_grad();
  loss.backward();
  std::vector<torch::Tensor> params;
  for (const auto& group : dense->param_groups())
    for (const auto& p : group.params()) params.push_back(p);
  // The same gradients on every rank (summed while the backward pass ran): a parameter this rank's
  // share did not reach counts 0 in the sum (so, unlike in one process, a parameter that no rank
  // reached still takes Adam's momentum step).
  if (reducer_) reducer_->finish();
  // Then every lookup's row gradients to the rows' owners: after every bucket's allreduce, so each
  // rank makes its collectives in one order, whatever its backward pass reached.
  if (shards_) shards_->exchange_gradients();
  if (replicated_rows_) gather_row_gradients();
  // With the row-wise table the norm covers the dense parameters only: the table's gradient is never
  // reduced before the fused update (and Adam's step is scale-free per row).
  const double clip = settings_.clip_norm;
  torch::Tensor skip;
  if (settings_.guard) {
    // A finite loss can still have non-finite gradients (an overflow inside the backward pass): those
    // skip the step as a bad loss does. The norm is computed on the device either way.
    const auto norm = clip > 0 ? clip_grad_norm(params, clip) : gradient_norm(params);
    auto bad = value.isfinite().logical_and(value <= settings_.max_loss).logical_not();
    if (norm.defined()) bad = bad.logical_or(norm.isfinite().logical_not());
    if (sparse) bad = bad.logical_or(sparse->gradients_finite().logical_not());
    skip = bad.to(torch::kFloat);
    if (group_) {  // a step skipped on one rank is skipped on all (the gradients already agree; losses may not)
      auto votes = skip.reshape({1}).contiguous();
      group_->allreduce_sum({votes});
      skip = (votes.reshape({}) > 0).to(torch::kFloat);
    }
  } else if (clip > 0) {
    clip_grad_norm(params, clip);
  }
  if (rate)
    for (size_t g = 0; g < base_lr_.size(); ++g) dense->param_groups()[g].options().set_lr(rate(base_lr_[g]));
  if (skip.defined())
    step_unless_(skip);
  else
    dense->step();
  if (sparse)
    sparse->step(rate ? rate(settings_.item_lr) : settings_.item_lr,
                 skip.defined() ? std::optional<torch::Tensor>(skip) : std::nullopt);
  return skip;
}

}  // namespace freshrec
