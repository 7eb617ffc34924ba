// The row-sharded item table; see sharded_item_table.h.
#include "engine/dist/sharded_item_table.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "kernels/sparse_embedding.h"

namespace freshrec {

int64_t owned_rows(int64_t rows, int rank, int ranks) {
  return rank < rows ? (rows - rank + ranks - 1) / ranks : 0;
}

namespace {

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU, torch::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

// The table an autograd function's forward used and the step it ran in, kept in its context; its
// backward pass recalls the table, and is refused after that step exchanged the gradients.
struct TableStep {
  static void remember(torch::autograd::AutogradContext* ctx, ShardedItemTable* table) {
    ctx->saved_data["table"] = reinterpret_cast<int64_t>(table);
    ctx->saved_data["generation"] = table->generation_;
  }
  static ShardedItemTable* recall(torch::autograd::AutogradContext* ctx, const char* what) {
    auto* table = reinterpret_cast<ShardedItemTable*>(ctx->saved_data["table"].toInt());
    TORCH_CHECK(ctx->saved_data["generation"].toInt() == table->generation_, "a row-sharded item table's ", what,
                " was differentiated after its step exchanged the gradients");
    return table;
  }
};

// The lookup as an autograd function: the forward fetches the unique ids' rows from their owners;
// the backward sums each unique id's gradient and leaves it in the table's slot for this lookup.
struct ShardedLookup : public torch::autograd::Function<ShardedLookup> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& /*weight*/,
                               const torch::Tensor& items, ShardedItemTable* table) {
    torch::Tensor unique, inverse;
    auto rows = table->rows_of(items, &unique, &inverse);
    const int64_t slot = static_cast<int64_t>(table->pending_.size());
    table->pending_.push_back({unique, torch::Tensor()});
    TableStep::remember(ctx, table);
    ctx->saved_data["slot"] = slot;
    ctx->save_for_backward({inverse});
    return rows;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad_outputs) {
    auto* table = TableStep::recall(ctx, "lookup");
    auto& slot = table->pending_.at(static_cast<size_t>(ctx->saved_data["slot"].toInt()));
    const auto inverse = ctx->get_saved_variables()[0];
    const int64_t unique = slot.ids.size(0);
    if (unique == 0) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};  // an empty share's lookup
    if (!grad_outputs[0].defined()) return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
    auto grad = grad_outputs[0].reshape({inverse.size(0), grad_outputs[0].size(-1)}).to(torch::kFloat);
    // Positions -> unique ids: the deterministic segment sum (every unique id has a position).
    auto [ids, sums] = ops::embedding_backward_sparse(inverse, grad, unique);
    auto summed = torch::zeros({unique, grad.size(1)}, sums.options());
    summed.index_copy_(0, ids, sums);
    slot.grads = slot.grads.defined() ? slot.grads + summed : summed;
    return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// The full softmax as an autograd function: the forward makes every exchange and computes the loss and
// both gradients; the backward scales them (the loss is the graph's end, as in full_softmax_cross_entropy).
struct ShardedSoftmax : public torch::autograd::Function<ShardedSoftmax> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& targets, ShardedItemTable* table, int64_t chunk) {
    auto [loss, grad_hidden, grad_rows] = table->softmax_pass(hidden.detach(), targets, chunk);
    TableStep::remember(ctx, table);
    ctx->save_for_backward({grad_hidden.to(hidden.scalar_type()), grad_rows});
    return loss;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad_outputs) {
    auto* table = TableStep::recall(ctx, "full softmax");
    const auto saved = ctx->get_saved_variables();
    const auto scale = grad_outputs[0];
    const auto& rows = saved[1];
    if (rows.size(0) > 0) {  // every row of this rank: a full softmax touches them all (weighted in the forward)
      table->optimizer_->gradients().indices.push_back(
          torch::arange(rows.size(0), torch::TensorOptions().dtype(torch::kLong).device(rows.device())));
      table->optimizer_->gradients().grad_outputs.push_back(rows);
    }
    return {saved[0] * scale.to(saved[0].scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

ShardedItemTable::ShardedItemTable(SASRec model, ProcessGroup& group, const ops::RowwiseAdamOptions& adam, int64_t rows)
    : model_(std::move(model)), group_(group), rank_(group.rank()), size_(group.size()) {
  const auto& whole = model_->item_embedding();
  rows_ = rows > 0 ? rows : whole.size(0), hidden_ = whole.size(1);
  TORCH_CHECK(model_->item_adapter().empty(), "a row-sharded item table cannot carry an item adapter");
  TORCH_CHECK(rows == 0 || whole.size(0) == owned_rows(rows, rank_, size_), "a row-sharded table's rank ", rank_,
              " of ", size_, " holds ", owned_rows(rows, rank_, size_), " of ", rows, " rows; the model has ", whole.size(0));
  weight_ = (rows > 0 ? whole.detach() : own_rows(whole.detach())).clone().set_requires_grad(true);
  optimizer_ = SparseRowAdam(weight_, adam, /*padding_idx=*/rank_ == 0 ? 0 : -1);
  whole.set_data(torch::empty({0, hidden_}, whole.options()));
  model_->set_sparse_gradients(nullptr);
  model_->set_item_rows(this);
}

ShardedItemTable::~ShardedItemTable() { model_->set_item_rows(nullptr); }

int64_t ShardedItemTable::bytes() const {
  return 3 * weight_.numel() * static_cast<int64_t>(weight_.element_size());
}

torch::Tensor ShardedItemTable::own_rows(const torch::Tensor& whole) const {
  return whole.slice(0, rank_, whole.size(0), size_);
}

ShardedItemTable::Routed ShardedItemTable::route(const torch::Tensor& ids) {
  Routed r;
  const auto owner = ids.remainder(size_);
  r.order = owner.argsort(/*stable=*/true);  // ids grouped by owner, in their order within each
  r.send = to_vector(owner.bincount({}, size_));
  r.receive = group_.exchange_counts(r.send);
  r.local = group_.all_to_all(ids.index_select(0, r.order), r.send, r.receive).div(size_, "floor");
  return r;
}

torch::Tensor ShardedItemTable::fetch(const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  const Routed r = route(ids);
  const auto answers = group_.all_to_all(weight_.detach().index_select(0, r.local), r.receive, r.send);
  auto rows = torch::empty({ids.size(0), hidden_}, weight_.options().requires_grad(false));
  return rows.index_copy_(0, r.order, answers);
}

torch::Tensor ShardedItemTable::rows_of(const torch::Tensor& items, torch::Tensor* unique_ids, torch::Tensor* inverse) {
  auto [unique, positions] = at::_unique(items.reshape({-1}), /*sorted=*/true, /*return_inverse=*/true);
  auto shape = items.sizes().vec();
  shape.push_back(hidden_);
  auto rows = fetch(unique).index_select(0, positions).view(shape);
  if (unique_ids) *unique_ids = std::move(unique);
  if (inverse) *inverse = std::move(positions);
  return rows;
}

torch::Tensor ShardedItemTable::lookup(const torch::Tensor& items) {
  TORCH_CHECK(items.scalar_type() == torch::kLong, "item lookup: ids must be int64, got ", items.scalar_type());
  if (items.numel() > 0) {
    // A wrong id is this rank's error, so it is checked here (one read-back; the exchange reads the
    // counts back anyway). The other ranks stop at their next collective (dist.timeout_seconds).
    const auto [low_t, high_t] = torch::aminmax(items);
    const auto range = torch::stack({low_t, high_t}).cpu();
    const int64_t low = range[0].item<int64_t>(), high = range[1].item<int64_t>();
    TORCH_CHECK(low >= 0 && high < rows_, "item lookup: id ", low < 0 ? low : high, " outside the table's ", rows_,
                " rows");
  }
  if (!torch::GradMode::is_enabled()) return rows_of(items);
  return ShardedLookup::apply(weight_, items, this);
}

void ShardedItemTable::exchange_gradients() {
  std::vector<torch::Tensor> ids, grads;
  for (auto& p : pending_)
    if (p.grads.defined()) ids.push_back(p.ids), grads.push_back(p.grads);
  pending_.clear();
  ++generation_;
  const auto all_ids = ids.empty() ? torch::empty({0}, torch::dtype(torch::kLong).device(weight_.device())) : torch::cat(ids);
  const auto all_grads = grads.empty() ? torch::empty({0, hidden_}, weight_.options().requires_grad(false)) : torch::cat(grads);
  const Routed r = route(all_ids);
  const auto received = group_.all_to_all(all_grads.index_select(0, r.order), r.send, r.receive);
  if (r.local.size(0) == 0) return;
  optimizer_->gradients().indices.push_back(r.local);
  optimizer_->gradients().grad_outputs.push_back(received);
}

void ShardedItemTable::grow(int64_t num_items) {
  const int64_t rows = num_items + 1;
  if (rows <= rows_) return;
  torch::NoGradGuard no_grad;
  // The spread (standard deviation, unbiased) of every weight of the rows past the padding row, from
  // every rank's count, sum and sum of squares.
  const auto mine = rank_ == 0 ? weight_.detach().narrow(0, 1, weight_.size(0) - 1) : weight_.detach();
  const auto wide = mine.to(torch::kDouble);
  const auto sums = group_.sum({static_cast<double>(mine.numel()), wide.sum().item<double>(), wide.square().sum().item<double>()});
  const double n = sums[0];
  const double spread = rows_ > 2 && n > 1 ? std::sqrt(std::max(0.0, (sums[2] - sums[1] * sums[1] / n) / (n - 1))) : 0.02;
  const auto extra = torch::randn({rows - rows_, hidden_}, weight_.options().requires_grad(false)) * spread;
  // The new ids rows_, rows_ + 1, ...: this rank's are those with id % N == rank.
  const int64_t first = ((rank_ - rows_) % size_ + size_) % size_;
  if (first < extra.size(0)) weight_.set_data(torch::cat({weight_.detach(), extra.slice(0, first, extra.size(0), size_)}));
  optimizer_->grow_to_weight();
  rows_ = rows;
}

torch::Tensor ShardedItemTable::full_softmax_loss(const torch::Tensor& hidden, const torch::Tensor& targets,
                                                  int64_t chunk) {
  TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) == hidden_ && targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "full_softmax_loss: hidden (B, ", hidden_, ") and targets (B) expected, got ", hidden.sizes(), " and ",
              targets.sizes());
  return ShardedSoftmax::apply(hidden, targets, this, std::max<int64_t>(chunk, 1));
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> ShardedItemTable::softmax_pass(const torch::Tensor& hidden,
                                                                                       const torch::Tensor& targets,
                                                                                       int64_t chunk) {
  torch::NoGradGuard no_grad;
  const int64_t mine = hidden.size(0), local = weight_.size(0);
  const std::vector<int64_t> send(static_cast<size_t>(size_), mine);
  const auto receive = group_.exchange_counts(send);  // every rank's query rows, in rank order
  const auto queries = group_.all_to_all(hidden.to(torch::kFloat).repeat({size_, 1}), send, receive);
  const auto asked = group_.all_to_all(targets.to(torch::kLong).repeat({size_}), send, receive);
  const int64_t total = queries.size(0);
  const auto W = weight_.detach().to(torch::kFloat);
  // The queries whose target this rank owns, and the target's local row.
  const auto owned = asked.remainder(size_) == rank_;
  const auto column = asked.div(size_, "floor").clamp_max(std::max<int64_t>(local - 1, 0));
  const auto padding = rank_ == 0 && local > 0;  // local row 0 of rank 0 is id 0: never a candidate
  auto logits = [&](int64_t a, int64_t n) {
    auto l = torch::matmul(queries.narrow(0, a, n), W.t());
    if (padding) l.select(1, 0).fill_(-std::numeric_limits<float>::infinity());
    return l;
  };
  // Per query: this shard's maximum, sum of exponentials and target logit (0 unless owned).
  auto stats = torch::zeros({total, 3}, queries.options());
  stats.select(1, 0).fill_(-std::numeric_limits<float>::infinity());
  if (local > 0)
    for (int64_t a = 0; a < total; a += chunk) {
      const int64_t n = std::min(chunk, total - a);
      const auto l = logits(a, n);
      const auto top = std::get<0>(l.max(1));
      const auto finite = torch::where(torch::isfinite(top), top, torch::zeros_like(top));  // a shard of padding alone
      stats.narrow(0, a, n).select(1, 0).copy_(top);
      stats.narrow(0, a, n).select(1, 1).copy_((l - finite.unsqueeze(1)).exp().sum(1));
      const auto target = l.gather(1, column.narrow(0, a, n).unsqueeze(1)).squeeze(1);
      stats.narrow(0, a, n).select(1, 2).copy_(torch::where(owned.narrow(0, a, n), target, torch::zeros_like(target)));
    }
  // Back to each asking rank: its rows' numbers from every shard, (N, mine, 3).
  const auto back = group_.all_to_all(stats, receive, send).view({size_, mine, 3});
  const auto top = std::get<0>(back.select(2, 0).max(0));  // (mine)
  const auto lse = top + (back.select(2, 1) * (back.select(2, 0) - top.unsqueeze(0)).exp()).sum(0).log();
  const auto loss = mine > 0 ? (lse - back.select(2, 2).sum(0)).mean() : torch::zeros({}, queries.options());
  // Every query's log-sum-exp to every shard. A query's gradient is that of its rank's mean (1 / the
  // asking rank's rows); the rows' gradient is that of the global batch's mean (1 / every rank's rows).
  const auto lse_all = group_.all_to_all(lse.repeat({size_}), send, receive);
  std::vector<float> inverse;
  inverse.reserve(static_cast<size_t>(total));
  for (int r = 0; r < size_; ++r)
    inverse.insert(inverse.end(), static_cast<size_t>(receive[r]), 1.0f / static_cast<float>(std::max<int64_t>(receive[r], 1)));
  const auto weight_of = torch::tensor(inverse, queries.options());
  const double global = 1.0 / static_cast<double>(std::max<int64_t>(total, 1));
  auto grad_rows = torch::zeros({local, hidden_}, queries.options());
  auto grad_queries = torch::zeros({total, hidden_}, queries.options());
  if (local > 0)
    for (int64_t a = 0; a < total; a += chunk) {
      const int64_t n = std::min(chunk, total - a);
      auto p = (logits(a, n) - lse_all.narrow(0, a, n).unsqueeze(1)).exp();
      // Minus one at each owned target's column.
      p.scatter_add_(1, column.narrow(0, a, n).unsqueeze(1), -owned.narrow(0, a, n).to(p.scalar_type()).unsqueeze(1));
      grad_rows.add_(torch::matmul(p.t(), queries.narrow(0, a, n)), global);
      grad_queries.narrow(0, a, n).copy_(torch::matmul(p.mul_(weight_of.narrow(0, a, n).unsqueeze(1)), W));
    }
  // Each query's gradient from every shard, summed on its asking rank.
  const auto grad_hidden = group_.all_to_all(grad_queries, receive, send).view({size_, mine, hidden_}).sum(0);
  return {loss, grad_hidden, grad_rows};
}

torch::Tensor ShardedItemTable::score_all(const torch::Tensor& hidden) {
  TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) == hidden_, "score_all: hidden must be (rows, ", hidden_, "), got ",
              hidden.sizes());
  TORCH_CHECK(!(torch::GradMode::is_enabled() && hidden.requires_grad()),
              "score_all: a row-sharded table scores without gradients (a full softmax over it is not supported)");
  torch::NoGradGuard no_grad;
  const int64_t mine = hidden.size(0), widest = owned_rows(rows_, 0, size_);
  const std::vector<int64_t> send(static_cast<size_t>(size_), mine);
  const auto receive = group_.exchange_counts(send);  // every rank's query rows
  const auto queries = group_.all_to_all(hidden.repeat({size_, 1}), send, receive);
  auto scores = torch::zeros({queries.size(0), widest}, queries.options());
  scores.narrow(1, 0, weight_.size(0)).copy_(torch::matmul(queries, weight_.detach().to(queries.dtype()).t()));
  // Back to each asking rank: its rows' scores against every shard, (N * mine, widest) in rank order.
  const auto back = group_.all_to_all(scores, receive, send);
  // Column l * N + s is item l * N + s (shard s's local row l); the padding of narrower shards
  // lands past the last item.
  return back.view({size_, mine, widest}).permute({1, 2, 0}).reshape({mine, widest * size_}).narrow(1, 0, rows_);
}

torch::Tensor ShardedItemTable::gather_rows(const torch::Tensor& local) {
  std::vector<int64_t> send(static_cast<size_t>(size_), 0), receive(static_cast<size_t>(size_), 0);
  send[0] = local.size(0);
  if (rank_ == 0)
    for (int r = 0; r < size_; ++r) receive[r] = owned_rows(rows_, r, size_);
  const auto received = group_.all_to_all(local.detach().contiguous(), send, receive);
  if (rank_ != 0) return {};
  auto shape = local.sizes().vec();
  shape[0] = rows_;
  auto whole = torch::empty(shape, local.options().requires_grad(false));
  int64_t offset = 0;
  for (int r = 0; r < size_; ++r) {
    whole.slice(0, r, rows_, size_).copy_(received.narrow(0, offset, receive[r]));
    offset += receive[r];
  }
  return whole;
}

void ShardedItemTable::gather_whole() {
  torch::NoGradGuard no_grad;
  const auto table = gather_rows(weight_);
  std::vector<std::pair<std::string, torch::Tensor>> state;
  for (const auto& b : optimizer_->named_buffers())
    if (b.value().dim() >= 1) state.emplace_back(b.key(), gather_rows(b.value()));  // exp_avg, exp_avg_sq, row_step
  if (rank_ != 0) return;
  model_->item_embedding().set_data(table);
  for (auto& [name, whole] : state) optimizer_->named_buffers()[name].set_data(whole);
}

void ShardedItemTable::rows_in_model(bool shown) {
  torch::NoGradGuard no_grad;
  model_->item_embedding().set_data(shown ? weight_.detach() : torch::empty({0, hidden_}, weight_.options().requires_grad(false)));
}

void ShardedItemTable::keep_own_rows() {
  torch::NoGradGuard no_grad;
  const auto& table = model_->item_embedding();
  if (table.size(0) == rows_) {
    weight_.detach().copy_(own_rows(table.detach()));
    table.set_data(torch::empty({0, hidden_}, weight_.options().requires_grad(false)));
  }
  for (const auto& b : optimizer_->named_buffers())
    if (b.value().dim() >= 1 && b.value().size(0) == rows_ && rows_ != weight_.size(0))
      b.value().set_data(own_rows(b.value()).to(weight_.device()).clone());
}

}  // namespace freshrec
