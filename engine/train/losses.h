// Next-item losses over the shared item table.
//  - full softmax cross-entropy over every item ("SASRec+"), fused with the output projection and
//    computed in row chunks so the (N, items) logits never exist whole; the same with a teacher term
//    for distillation;
//  - sampled softmax with N shared negatives and log-Q correction, for large catalogs.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace freshrec {

// hidden: (N, C); table: (V, C) with row 0 the padding item (never a candidate); targets: (N) int64
// in [1, V). Returns the mean loss. Gradients for hidden and table are computed in the forward pass
// (the loss is the graph's end), so the backward pass only scales them.
// excluded (optional): (N, L) int64 item ids left out of row n's softmax, as if not in the catalog
// (0 entries are ignored; a row's own target must not be among them): the user's earlier items, for
// data without repeats, where the ranking filters them anyway (train.exclude_seen).
torch::Tensor full_softmax_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& table,
                                         const torch::Tensor& targets, int64_t chunk_rows = 256,
                                         const torch::Tensor& excluded = {});

// For the given positions (flat indices into B * T) of a (B, T) batch of left-padded inputs and
// their targets: the items the row had up to and including that position, i.e. before its target,
// as a (positions, T) matrix for full_softmax_cross_entropy's `excluded` (0 for later positions,
// padding and the position's own target).
torch::Tensor earlier_items(const torch::Tensor& inputs, const torch::Tensor& targets, const torch::Tensor& positions);

// Knowledge distillation in the same fused form (Hinton et al. 2015), over items 1..V-1:
//   alpha * CE(targets) + (1 - alpha) * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)).
// teacher_hidden: (N, Ct) and teacher_table: (V, Ct), used without gradient. Mean over rows.
torch::Tensor full_softmax_distillation(const torch::Tensor& hidden, const torch::Tensor& table,
                                        const torch::Tensor& targets, const torch::Tensor& teacher_hidden,
                                        const torch::Tensor& teacher_table, double alpha, double temperature,
                                        int64_t chunk_rows = 256);

// Draws negatives from a fixed distribution over items 1..V-1 and knows log Q of each item.
class NegativeSampler {
 public:
  // counts: (V) interaction counts, index 0 unused. uniform=true ignores them.
  NegativeSampler(const std::vector<int64_t>& counts, bool uniform);
  // (n) item ids drawn with replacement.
  torch::Tensor sample(int64_t n, torch::Device device) const;
  const torch::Tensor& log_q() const { return log_q_; }  // (V) float, log of the draw probability

 private:
  torch::Tensor probabilities_, log_q_;
};

// Sampled softmax: each row's positive against `negatives` shared by all rows, every logit minus
// log Q of its item (Yi et al. 2019); a negative equal to the row's positive is masked out.
// positive_rows: (N, C) embeddings of targets; negative_rows: (K, C) embeddings of negatives.
torch::Tensor sampled_softmax_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& positive_rows,
                                            const torch::Tensor& negative_rows, const torch::Tensor& targets,
                                            const torch::Tensor& negatives, const torch::Tensor& log_q);

}  // namespace freshrec
