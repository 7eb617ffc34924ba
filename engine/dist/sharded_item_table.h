// An item table sharded by rows across a job's processes (TorchRec's row-wise sharding), on c10d's
// all-to-all. Rank r of N holds the rows of the ids with id % N == r, at local row id / N, with their
// row-wise Adam state: each process keeps about 1/N of the table and of its two moments.
//
// Why ids modulo N and not contiguous blocks: ids are given in order of first appearance, so the
// catalogue's newest (and often hottest) items sit at the end; a modulo spreads them, and the items a
// growing vocabulary adds, evenly over the ranks, where blocks would put them all on the last rank.
//
//  lookup      the unique ids of a lookup go to their owners (all-to-all), which answer with their
//              rows (all-to-all); repeated ids are asked for once.
//  backward    each lookup's gradient is summed per unique id on the asking rank (the deterministic
//              segment reduction of ops::embedding_backward_sparse), kept until exchange_gradients
//              sends every lookup's sums to the owners in one all-to-all; the owner's fused row-wise
//              Adam reduces what it received in a fixed order (by sending rank, then lookup, then id).
//  score_all   every rank's query rows go to every rank (all-to-all), each scores them against its
//              own rows, and the scores come back to the asking rank (all-to-all): each rank ranks its
//              users against the whole catalogue while no rank holds it. No gradient.
//  full softmax  the same queries' logits against each shard's rows, never gathered: each shard sends
//              back, per query, the maximum and the sum of exponentials of its logits and the target's
//              logit when it owns the target (three numbers a query), from which the asking rank has
//              the log-sum-exp and the loss; then every query's log-sum-exp goes to every shard, which
//              computes its rows' gradients (kept, local) and its share of each query's gradient (sent
//              back and summed). Five exchanges a loss, all in the forward pass.
//
// Checkpoints hold the whole table, as one process's do, so that evaluation, export and serving read
// them unchanged and a job may resume on another number of processes: gather_whole() assembles it on
// rank 0 to write, and after a checkpoint was read whole, keep_own_rows() keeps this rank's share.
//
// Every rank must make the same calls in the same order (each is a collective); an empty lookup is a
// valid call.
#pragma once

#include <torch/torch.h>

#include <tuple>
#include <vector>

#include "engine/dist/process_group.h"
#include "engine/train/sparse_adam.h"
#include "models/sasrec.h"

namespace freshrec {

class ShardedItemTable final : public ItemRows {
 public:
  // Takes this rank's rows of `model`'s table (every rank's model holds the same whole table, as
  // initialised from one seed), frees the model's copy and makes the model read its rows here. With
  // `rows` > 0, the model's table holds this rank's rows already (a rank's file of a row-sharded
  // checkpoint), of a whole table of `rows` rows.
  ShardedItemTable(SASRec model, ProcessGroup& group, const ops::RowwiseAdamOptions& adam, int64_t rows = 0);
  ~ShardedItemTable() override;
  ShardedItemTable(const ShardedItemTable&) = delete;
  ShardedItemTable& operator=(const ShardedItemTable&) = delete;

  torch::Tensor lookup(const torch::Tensor& items) override;
  torch::Tensor score_all(const torch::Tensor& hidden) override;
  // The mean full-softmax cross-entropy of this rank's rows `hidden` (B, C) against every item (the
  // padding item never a candidate), for `targets` (B) int64 in [1, rows): one process's
  // full_softmax_cross_entropy without the table. Differentiable in `hidden`; in the backward pass the
  // table's gradients go to this rank's rows' optimizer: those of the global batch's mean loss (every
  // query weighted 1 / every rank's rows), as data parallelism weights each rank's mean by its share
  // of the rows (the trainer's loss times B / sum of B), whatever scale the backward pass brings.
  // Queries are scored `chunk` at a time. A collective: every rank calls it, with B = 0 when it has no
  // rows.
  torch::Tensor full_softmax_loss(const torch::Tensor& hidden, const torch::Tensor& targets, int64_t chunk);
  // Collective: the table grew to ids 0..num_items. Every rank draws the new rows whole, as one process
  // draws them (SASRecImpl::grow_items: the current generator, scaled by the existing rows' spread,
  // which the ranks' sums give), and keeps its own; their moments start at zero.
  void grow(int64_t num_items) override;

  // After a backward pass: sends the gradients of every lookup since the last call to the rows'
  // owners (one all-to-all), which hand them to optimizer(). Every rank calls it once a step.
  void exchange_gradients();
  // Row-wise Adam over this rank's rows (padding row 0 on rank 0 only).
  SparseRowAdam& optimizer() { return optimizer_; }

  int64_t rows() const { return rows_; }  // the whole table's, padding included
  int64_t local_rows() const { return weight_.size(0); }
  // This rank's rows (local row l holds id l * N + rank).
  const torch::Tensor& weight() const { return weight_; }
  // Bytes this rank holds of the table: its rows and both Adam moments.
  int64_t bytes() const;

  // Collective: rank 0's model holds the whole table again and optimizer()'s state is the whole
  // table's (for save_checkpoint); the other ranks only send their rows.
  void gather_whole();
  // After the model's table (and maybe optimizer()'s state) was made whole (a checkpoint read, or
  // gather_whole on rank 0): keeps this rank's rows of them and frees the rest. Not a collective.
  void keep_own_rows();
  // The model's table holds this rank's rows (shared with weight()), for a checkpoint of this rank's
  // share; false: it holds none again. Not a collective.
  void rows_in_model(bool shown);

 private:
  friend struct ShardedLookup;
  friend struct ShardedSoftmax;
  friend struct TableStep;
  // full_softmax_loss's exchanges: the mean loss, the gradient of `hidden`, and this rank's rows' gradient.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> softmax_pass(const torch::Tensor& hidden,
                                                                       const torch::Tensor& targets, int64_t chunk);
  struct Pending {
    torch::Tensor ids, grads;  // unique ids of one lookup, and their summed gradients
  };
  // The lookups of step `generation` wait in pending_ (a backward pass of an older step's lookup is refused).
  int64_t generation_ = 0;
  // This rank's share (`local`, its local rows' count) of a whole tensor's rows: whole[rank::N].
  torch::Tensor own_rows(const torch::Tensor& whole) const;
  // Rank 0: the whole tensor from every rank's `local` rows (interleaved back by id), on their device;
  // others: undefined.
  torch::Tensor gather_rows(const torch::Tensor& local);
  // `ids` sent to their owners (after their counts): `order` groups them by owner, `send` and
  // `receive` are the exchange's row counts, `local` the owner-local rows this rank was sent.
  struct Routed {
    torch::Tensor order, local;
    std::vector<int64_t> send, receive;
  };
  Routed route(const torch::Tensor& ids);
  // The rows of the unique `ids`, from their owners.
  torch::Tensor fetch(const torch::Tensor& ids);
  // Rows for any shape of ids, (...) -> (..., C), each distinct id asked for once; its unique ids and
  // each position's index among them when asked for.
  torch::Tensor rows_of(const torch::Tensor& items, torch::Tensor* unique_ids = nullptr, torch::Tensor* inverse = nullptr);

  SASRec model_;
  ProcessGroup& group_;
  int rank_, size_;
  int64_t rows_, hidden_;
  torch::Tensor weight_;  // (local rows, C), requires grad so that lookups' backward runs
  SparseRowAdam optimizer_{nullptr};
  std::vector<Pending> pending_;  // one slot per differentiable lookup since exchange_gradients
};

// How many rows rank `rank` of `ranks` owns of a table of `rows` (ids rank, rank + ranks, ...).
int64_t owned_rows(int64_t rows, int rank, int ranks);

}  // namespace freshrec
