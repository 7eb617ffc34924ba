// Evaluation; see evaluator.h.
#include "engine/eval/evaluator.h"

#include <algorithm>
#include <limits>

#include "engine/runtime.h"

namespace freshrec {
namespace {

template <typename ScoreBatch>
RankingMetrics evaluate(const UserSequences& sequences, Split split, const EvalOptions& options, ScoreBatch score) {
  RankingMetrics metrics(options.ks);
  const auto all = sequences.evaluation_users();
  const size_t n = all.size(), shards = static_cast<size_t>(std::max(options.shards, 1));
  const std::vector<int32_t> users(all.begin() + n * options.shard / shards, all.begin() + n * (options.shard + 1) / shards);
  const size_t batch_size = static_cast<size_t>(options.batch_size);
  size_t batches = (users.size() + batch_size - 1) / batch_size;
  if (options.lockstep)
    for (size_t s = 0; s < shards; ++s)
      batches = std::max(batches, (n * (s + 1) / shards - n * s / shards + batch_size - 1) / batch_size);
  for (size_t b = 0; b < batches; ++b) {
    const size_t start = std::min(users.size(), b * batch_size);
    const std::vector<int32_t> chunk(users.begin() + start, users.begin() + std::min(users.size(), start + batch_size));
    SequenceBatch batch = score.make_batch(chunk);
    auto scores = score(batch);
    if (chunk.empty()) continue;
    auto ranks = target_ranks(std::move(scores), batch, sequences, split, options.filter_seen).cpu();
    auto r = ranks.template accessor<int64_t, 1>();
    for (int64_t i = 0; i < r.size(0); ++i) metrics.add(r[i]);
  }
  return metrics;
}

}  // namespace

torch::Tensor ExcludedItems::matrix(torch::Device device) const {
  size_t longest = 1, begin = 0;
  for (size_t end : ends_) longest = std::max(longest, end - begin), begin = end;
  std::vector<int64_t> flat(ends_.size() * longest, 0);
  begin = 0;
  for (size_t r = 0; r < ends_.size(); begin = ends_[r++])
    std::copy(items_.begin() + begin, items_.begin() + ends_[r], flat.begin() + r * longest);
  return long_tensor(flat, {rows(), static_cast<int64_t>(longest)}, device);
}

torch::Tensor rank_targets(torch::Tensor scores, const torch::Tensor& targets, const torch::Tensor& excluded,
                           int64_t candidates) {
  TORCH_CHECK(scores.dim() == 2 && targets.dim() == 1 && scores.size(0) == targets.size(0), "rank_targets: scores ",
              scores.sizes(), " do not match targets ", targets.sizes());
  TORCH_CHECK(!excluded.defined() || (excluded.dim() == 2 && excluded.size(0) == scores.size(0)),
              "rank_targets: excluded items ", excluded.sizes(), " do not match scores ", scores.sizes());
  scores = scores.to(torch::kFloat).clone();
  const float minus_inf = -std::numeric_limits<float>::infinity();
  scores.select(1, 0).fill_(minus_inf);
  if (candidates >= 0 && candidates < scores.size(1)) scores.narrow(1, candidates, scores.size(1) - candidates).fill_(minus_inf);
  if (excluded.defined()) scores.scatter_(1, excluded, minus_inf);  // padding (0) lands on column 0
  auto target_scores = scores.gather(1, targets.unsqueeze(1));     // (B, 1), after filtering: never the target
  return (scores >= target_scores).sum(1) - 1;                     // the target counts itself once
}

torch::Tensor target_ranks(torch::Tensor scores, const SequenceBatch& batch, const UserSequences& sequences,
                           Split split, bool filter_seen) {
  ExcludedItems seen;
  if (filter_seen) {
    for (int64_t r = 0; r < batch.rows; ++r) {
      const auto& seq = sequences.items[batch.users[r]];
      const size_t end = sequences.prefix_length(batch.users[r], split);
      for (size_t i = 0; i < end; ++i)
        if (seq[i] != batch.targets[r]) seen.add(seq[i]);
      seen.end_row();
    }
  }
  const auto device = scores.device();
  return rank_targets(std::move(scores), long_tensor(batch.targets, {batch.rows}, device),
                      filter_seen ? seen.matrix(device) : torch::Tensor());
}

RankingMetrics evaluate_model(SASRec& model, const UserSequences& sequences, Split split,
                              const EvalOptions& options, torch::Device device) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  struct {
    SASRec& model;
    const UserSequences& sequences;
    Split split;
    torch::Device device;
    SequenceBatch make_batch(const std::vector<int32_t>& users) const {
      return make_eval_batch(sequences, users, split, model->options().maxlen);
    }
    torch::Tensor operator()(const SequenceBatch& b) const {
      auto items = long_tensor(b.inputs, {b.rows, b.length}, device);
      return model->score_all(model->last_hidden(items));
    }
  } score{model, sequences, split, device};
  auto metrics = evaluate(sequences, split, options, score);
  model->train(was_training);
  return metrics;
}

RankingMetrics evaluate_popularity(const UserSequences& sequences, Split split, const EvalOptions& options) {
  const auto counts = sequences.training_item_counts();
  auto popularity = torch::tensor(std::vector<int64_t>(counts.begin(), counts.end())).to(torch::kFloat);
  struct {
    const UserSequences& sequences;
    Split split;
    torch::Tensor popularity;
    SequenceBatch make_batch(const std::vector<int32_t>& users) const {
      return make_eval_batch(sequences, users, split, 1);  // the model-free baseline needs no history window
    }
    torch::Tensor operator()(const SequenceBatch& b) const { return popularity.unsqueeze(0).expand({b.rows, -1}); }
  } score{sequences, split, popularity};
  return evaluate(sequences, split, options, score);
}

}  // namespace freshrec
