// SASRec (Kang & McAuley 2018): a causal transformer over a user's item history that predicts the
// next item. Teacher and student are this one class with different options.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/sparse_embedding_autograd.h"

namespace freshrec {

struct SASRecOptions {
  int64_t num_items = 0;  // items are 1..num_items; 0 is padding
  int64_t hidden = 64;
  int64_t blocks = 2;
  int64_t heads = 1;
  int64_t ffn_hidden = 0;  // 0: hidden
  double dropout = 0.2;
  int64_t maxlen = 200;
  // "prenorm": x + Attention(LN(x)), then + FFN(LN(.)), GELU. "original": the block of Kang &
  // McAuley's published code, which the SASRec+ reference implementations keep (see SASRecBlock).
  std::string block = "prenorm";
  // LoRA adapters (Hu et al. 2021) on each block's four linear layers (qkv, attention_out, ffn_in,
  // ffn_out) when lora_rank > 0: y = W x + b + (lora_alpha / lora_rank) B A dropout(x), with A
  // (rank, in) drawn as nn.Linear's weights and B (out, rank) zero, so a new adapter changes nothing.
  int64_t lora_rank = 0;
  double lora_alpha = 8;
  double lora_dropout = 0;
  // A LoRA adapter on the item table when item_lora_rank > 0 (as PEFT adapts an embedding): every
  // row reads E[i] + (lora_alpha / item_lora_rank) A[i] B, with A (num_items + 1, rank) zero at the
  // start and B (rank, hidden) drawn N(0, 1), so the rows move in a shared rank-r subspace while E
  // itself may stay frozen. The input lookup and the output scores both read the adapted table.
  int64_t item_lora_rank = 0;
  void validate() const;  // throws std::invalid_argument naming the bad option
};

// A low-rank update of one linear layer's weight: parameters "a" (rank, in) and "b" (out, rank).
class LoraAdapterImpl : public torch::nn::Module {
 public:
  LoraAdapterImpl(int64_t in, int64_t out, int64_t rank, double alpha, double dropout);
  // scale * B[from:from+count] A dropout(x): the adapter's share of rows [from, from + count) of the
  // output; down(x) = A dropout(x) and up(down, ...) are its two halves, so that several row ranges
  // of one input share one dropout mask and one down-projection.
  torch::Tensor delta(const torch::Tensor& x, int64_t from, int64_t count) { return up(down(x), from, count); }
  torch::Tensor down(const torch::Tensor& x);
  torch::Tensor up(const torch::Tensor& down, int64_t from, int64_t count) const;
  // The weight with the adapter folded in: W + scale * B A.
  torch::Tensor merged(const torch::Tensor& weight) const;
  void reset();  // A as nn.Linear initialises its weight, B zero

 private:
  torch::Tensor a_, b_;
  double scale_, dropout_;
};
TORCH_MODULE(LoraAdapter);

// One self-attention block, in one of two forms over the same parameters:
//  - pre-norm:  h = x + Attention(LN1(x));  out = h + FFN(LN2(h)), GELU;
//  - original (the SASRec authors' code): q = LN1(x) queries while keys and values come from x itself,
//    h = LN2(q + Attention(q, x, x));  out = h + FFN(h), ReLU; the residuals run through the
//    normalised stream (a post-norm transformer in effect).
class SASRecBlockImpl : public torch::nn::Module {
 public:
  SASRecBlockImpl(int64_t hidden, int64_t heads, int64_t ffn_hidden, double dropout, bool original = false,
                  int64_t lora_rank = 0, double lora_alpha = 8, double lora_dropout = 0);
  // x: (B, T, C); mask: (B, 1, T, T) bool, true where attention is allowed. With separate_products
  // the queries, keys and values are three products with qkv's rows instead of one split three ways:
  // the same values, and on a CPU a cheaper backward (its input gradient summed in another order, so
  // equal to the fused one within rounding). last_hidden uses them; offline training keeps the one.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, bool separate_products = false);
  // The newest position's output alone: forward(x, mask).narrow(1, T - 1, 1) without the queries,
  // attention rows and feed-forward of the other positions (their keys and values are still read).
  // last_mask: (B, 1, 1, T), the newest row of the full mask.
  torch::Tensor forward_last(const torch::Tensor& x, const torch::Tensor& last_mask);
  void set_dropout(double p);
  // The four linear layers' weights with their adapters folded in, by parameter name ("qkv.weight",
  // ...); empty without adapters.
  std::vector<std::pair<std::string, torch::Tensor>> merged_weights() const;
  void reset_adapters();

 private:
  // layer(x), or rows [from, from + count) of it; plus the layer's adapter when it has one (from
  // `down`, its down-projection of x, when given).
  torch::Tensor project(const torch::Tensor& x, torch::nn::Linear& layer, LoraAdapter& adapter, int64_t from = 0,
                        int64_t count = -1, const torch::Tensor& down = {});

  int64_t heads_;
  double dropout_;
  bool original_;
  torch::nn::LayerNorm attention_norm_{nullptr}, ffn_norm_{nullptr};
  torch::nn::Linear qkv_{nullptr}, attention_out_{nullptr}, ffn_in_{nullptr}, ffn_out_{nullptr};
  LoraAdapter qkv_lora_{nullptr}, attention_out_lora_{nullptr}, ffn_in_lora_{nullptr}, ffn_out_lora_{nullptr};
  torch::nn::Dropout residual_dropout_{nullptr};
};
TORCH_MODULE(SASRecBlock);

// Where the model's item rows live when its own table does not hold them (a table sharded by rows
// across a job's processes, engine/dist/sharded_item_table.h). Every process of the job must make the
// same calls in the same order: each one is a collective.
class ItemRows {
 public:
  virtual ~ItemRows() = default;
  // Rows for any shape of ids: (...) -> (..., C); in training, the lookup's gradient goes to the rows'
  // owners.
  virtual torch::Tensor lookup(const torch::Tensor& items) = 0;
  // Every item's score for each row of `hidden` (B, C) -> (B, num_items + 1), padding included; no gradient.
  virtual torch::Tensor score_all(const torch::Tensor& hidden) = 0;
  // Rows for ids up to `num_items`, the new ones drawn as SASRecImpl::grow_items draws them.
  virtual void grow(int64_t num_items) = 0;
};

class SASRecImpl : public torch::nn::Module {
 public:
  explicit SASRecImpl(const SASRecOptions& options);

  // items: (B, T) int64, left-padded with 0 (position T-1 is the newest). Returns (B, T, C).
  torch::Tensor forward(const torch::Tensor& items);
  // Scores of every item, padding included (column 0): (..., C) -> (..., num_items + 1).
  torch::Tensor score_all(const torch::Tensor& hidden) const;  // with item rows elsewhere: 2-D, no gradient
  // The item table the model reads: item_embedding() itself, or with the item adapter's update added
  // (differentiable in both; the padding row stays zero). (num_items + 1, C).
  torch::Tensor item_table() const;
  // Item embedding rows for any shape of ids: (...) -> (..., C). With a sparse-gradient sink set,
  // the lookup's gradient goes there instead of into a dense table gradient.
  torch::Tensor lookup_items(const torch::Tensor& items);
  void set_sparse_gradients(ops::SparseGradients* sink) { sparse_sink_ = sink; }
  // Lookups and score_all read `rows` instead of the model's own table (null: the model's own). The
  // owner of `rows` keeps the table; item_table() then refuses and grow_items() asks `rows` to grow.
  void set_item_rows(ItemRows* rows) { item_rows_ = rows; }
  bool rows_elsewhere() const { return item_rows_ != nullptr; }
  // The representation after the newest item: (B, T) -> (B, C), equal to forward(items).select(1, -1)
  // but the last block computes the newest position alone.
  torch::Tensor last_hidden(const torch::Tensor& items);

  // Adds item rows so ids up to `num_items` exist (a stream met new items). New rows are drawn with
  // the spread of the existing rows, so they start as plausible, unremarkable items. The table keeps
  // its identity (set_data), so optimizers and sparse sinks holding it stay valid. With item rows
  // elsewhere, their owner grows them (ItemRows::grow, a collective).
  void grow_items(int64_t num_items);
  // Changes the dropout rate of every layer (e.g. a stream's single-pass updates), in [0, 1).
  void set_dropout(double p);

  const SASRecOptions& options() const { return options_; }
  // The item table's own weights, shared by the input lookup and the output scores: (num_items + 1, C).
  // With an item adapter the model reads item_table() instead.
  const torch::Tensor& item_embedding() const { return item_embedding_; }
  // The item adapter's A and B (empty without one).
  std::vector<torch::Tensor> item_adapter() const;
  // Every parameter but the item table (the dense optimizer's share when the table is updated
  // row-wise), or every parameter when `with_item_table`.
  std::vector<torch::Tensor> dense_parameters(bool with_item_table = false) const;
  int64_t parameter_count() const;
  // The model as a plain SASRec: every parameter but the LoRA adapters, with each adapter folded
  // into its layer's weight and the item adapter into the item table (detached). Export and
  // fine-tuning sources read these.
  std::map<std::string, torch::Tensor> plain_parameters() const;

 private:
  // 1 where a position holds an item, 0 for padding, (B, T, 1); checks the input's shape.
  torch::Tensor real_positions(const torch::Tensor& items) const;
  // The blocks' input: item and position embeddings of the real positions, with embedding dropout.
  torch::Tensor embed(const torch::Tensor& items, const torch::Tensor& real);

  SASRecOptions options_;
  torch::Tensor item_embedding_, position_embedding_;
  torch::nn::Dropout embedding_dropout_{nullptr};
  torch::nn::ModuleList blocks_;
  torch::nn::LayerNorm final_norm_{nullptr};
  torch::Tensor item_lora_a_, item_lora_b_;  // the item adapter, when options_.item_lora_rank > 0
  ops::SparseGradients* sparse_sink_ = nullptr;
  ItemRows* item_rows_ = nullptr;
};
TORCH_MODULE(SASRec);

// The same model with its item adapter folded into the item table (item_lora_rank 0), the block
// adapters and every other weight kept; `model` itself when it has no item adapter. For consumers
// that grow the table or update its rows in place (the stream).
SASRec fold_item_adapter(const SASRec& model);

// Attention mask for left-padded histories: causal, padding keys hidden, and each position may
// always see itself (so rows of padding are never fully masked). (B, T) -> (B, 1, T, T) bool.
torch::Tensor history_attention_mask(const torch::Tensor& items);

}  // namespace freshrec
