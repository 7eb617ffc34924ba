// SASRec module; see sasrec.h.
#include "models/sasrec.h"

#include <cmath>
#include <stdexcept>

namespace freshrec {

void SASRecOptions::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument("SASRec: " + what); };
  if (num_items <= 0) fail("num_items must be positive, got " + std::to_string(num_items));
  if (hidden <= 0) fail("model.hidden must be positive, got " + std::to_string(hidden));
  if (blocks <= 0) fail("model.blocks must be positive, got " + std::to_string(blocks));
  if (heads <= 0 || hidden % heads != 0)
    fail("model.heads (" + std::to_string(heads) + ") must divide model.hidden (" + std::to_string(hidden) + ")");
  if (ffn_hidden < 0) fail("model.ffn_hidden must be >= 0, got " + std::to_string(ffn_hidden));
  if (dropout < 0 || dropout >= 1) fail("model.dropout must be in [0, 1), got " + std::to_string(dropout));
  if (maxlen <= 0) fail("model.maxlen must be positive, got " + std::to_string(maxlen));
  if (block != "prenorm" && block != "original")
    fail("model.block must be prenorm or original, got '" + block + "'");
  if (lora_rank < 0) fail("finetune.lora_rank must be >= 0, got " + std::to_string(lora_rank));
  if (lora_rank > 0 && !(lora_alpha > 0)) fail("finetune.lora_alpha must be positive, got " + std::to_string(lora_alpha));
  if (item_lora_rank < 0) fail("finetune.item_lora_rank must be >= 0, got " + std::to_string(item_lora_rank));
  if (item_lora_rank > 0 && !(lora_alpha > 0)) fail("finetune.lora_alpha must be positive, got " + std::to_string(lora_alpha));
  if (lora_dropout < 0 || lora_dropout >= 1) fail("finetune.lora_dropout must be in [0, 1), got " + std::to_string(lora_dropout));
}

LoraAdapterImpl::LoraAdapterImpl(int64_t in, int64_t out, int64_t rank, double alpha, double dropout)
    : scale_(alpha / static_cast<double>(rank)), dropout_(dropout) {
  a_ = register_parameter("a", torch::empty({rank, in}));
  b_ = register_parameter("b", torch::empty({out, rank}));
  reset();
}

void LoraAdapterImpl::reset() {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(a_, std::sqrt(5.0));  // as nn.Linear's weight, and the LoRA paper's code
  b_.zero_();
}

torch::Tensor LoraAdapterImpl::down(const torch::Tensor& x) { return torch::linear(torch::dropout(x, dropout_, is_training()), a_); }

torch::Tensor LoraAdapterImpl::up(const torch::Tensor& down, int64_t from, int64_t count) const {
  return torch::linear(down, b_.narrow(0, from, count)) * scale_;
}

torch::Tensor LoraAdapterImpl::merged(const torch::Tensor& weight) const {
  return weight + torch::mm(b_, a_) * scale_;
}

void SASRecBlockImpl::set_dropout(double p) {
  dropout_ = p;
  residual_dropout_->options.p(p);
}

SASRecBlockImpl::SASRecBlockImpl(int64_t hidden, int64_t heads, int64_t ffn_hidden, double dropout, bool original,
                                 int64_t lora_rank, double lora_alpha, double lora_dropout)
    : heads_(heads), dropout_(dropout), original_(original) {
  attention_norm_ = register_module("attention_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
  qkv_ = register_module("qkv", torch::nn::Linear(hidden, 3 * hidden));
  attention_out_ = register_module("attention_out", torch::nn::Linear(hidden, hidden));
  ffn_norm_ = register_module("ffn_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
  ffn_in_ = register_module("ffn_in", torch::nn::Linear(hidden, ffn_hidden));
  ffn_out_ = register_module("ffn_out", torch::nn::Linear(ffn_hidden, hidden));
  residual_dropout_ = register_module("residual_dropout", torch::nn::Dropout(dropout));
  if (lora_rank > 0) {
    auto adapter = [&](const char* name, int64_t in, int64_t out) {
      return register_module(name, LoraAdapter(in, out, lora_rank, lora_alpha, lora_dropout));
    };
    qkv_lora_ = adapter("qkv_lora", hidden, 3 * hidden);
    attention_out_lora_ = adapter("attention_out_lora", hidden, hidden);
    ffn_in_lora_ = adapter("ffn_in_lora", hidden, ffn_hidden);
    ffn_out_lora_ = adapter("ffn_out_lora", ffn_hidden, hidden);
  }
}

torch::Tensor SASRecBlockImpl::project(const torch::Tensor& x, torch::nn::Linear& layer, LoraAdapter& adapter,
                                       int64_t from, int64_t count, const torch::Tensor& down) {
  torch::Tensor y = count < 0 ? layer->forward(x)
                              : torch::linear(x, layer->weight.narrow(0, from, count), layer->bias.narrow(0, from, count));
  if (!adapter) return y;
  return y + adapter->up(down.defined() ? down : adapter->down(x), from, count < 0 ? layer->weight.size(0) : count);
}

std::vector<std::pair<std::string, torch::Tensor>> SASRecBlockImpl::merged_weights() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  torch::NoGradGuard no_grad;
  if (qkv_lora_) out.emplace_back("qkv.weight", qkv_lora_->merged(qkv_->weight));
  if (attention_out_lora_) out.emplace_back("attention_out.weight", attention_out_lora_->merged(attention_out_->weight));
  if (ffn_in_lora_) out.emplace_back("ffn_in.weight", ffn_in_lora_->merged(ffn_in_->weight));
  if (ffn_out_lora_) out.emplace_back("ffn_out.weight", ffn_out_lora_->merged(ffn_out_->weight));
  return out;
}

void SASRecBlockImpl::reset_adapters() {
  for (auto* adapter : {&qkv_lora_, &attention_out_lora_, &ffn_in_lora_, &ffn_out_lora_})
    if (*adapter) (*adapter)->reset();
}

torch::Tensor SASRecBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& mask, bool separate_products) {
  const auto B = x.size(0), T = x.size(1), C = x.size(2);
  const double attention_dropout = is_training() ? dropout_ : 0.0;
  if (original_) {
    // Queries from the normalised stream, keys and values from the raw one: the rows of qkv_ split.
    auto queries_in = attention_norm_->forward(x);
    auto q = project(queries_in, qkv_, qkv_lora_, 0, C).view({B, T, heads_, C / heads_}).transpose(1, 2);  // (B, heads, T, C/heads)
    auto kv = project(x, qkv_, qkv_lora_, C, 2 * C).view({B, T, 2, heads_, C / heads_}).permute({2, 0, 3, 1, 4}).unbind(0);
    auto attended = torch::scaled_dot_product_attention(q, kv[0], kv[1], mask, attention_dropout);
    attended = attended.transpose(1, 2).reshape({B, T, C});
    auto h = ffn_norm_->forward(queries_in + project(attended, attention_out_, attention_out_lora_));
    auto f = project(torch::dropout(torch::relu(project(h, ffn_in_, ffn_in_lora_)), dropout_, is_training()), ffn_out_, ffn_out_lora_);
    return h + residual_dropout_->forward(f);
  }
  // (B, T, 3C) -> 3 x (B, heads, T, C/heads)
  auto normed = attention_norm_->forward(x);
  torch::Tensor attended;
  if (separate_products) {
    // Queries, keys and values from the rows of qkv_, each its own product: no (B, T, 3C) tensor to
    // split, whose gradient would be assembled from three copies.
    const torch::Tensor down = qkv_lora_ ? qkv_lora_->down(normed) : torch::Tensor();  // one dropout mask for q, k, v
    auto part = [&](int64_t p) {
      return project(normed, qkv_, qkv_lora_, p * C, C, down).view({B, T, heads_, C / heads_}).transpose(1, 2);
    };
    attended = torch::scaled_dot_product_attention(part(0), part(1), part(2), mask, attention_dropout);
  } else {
    // unbind, not three selects: its gradient is one stack, where each select's is a zeroed copy of
    // the whole.
    auto qkv = project(normed, qkv_, qkv_lora_).view({B, T, 3, heads_, C / heads_}).permute({2, 0, 3, 1, 4}).unbind(0);
    attended = torch::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], mask, attention_dropout);
  }
  attended = attended.transpose(1, 2).reshape({B, T, C});
  auto h = x + residual_dropout_->forward(project(attended, attention_out_, attention_out_lora_));
  auto f = project(torch::dropout(torch::gelu(project(ffn_norm_->forward(h), ffn_in_, ffn_in_lora_)), dropout_, is_training()),
                   ffn_out_, ffn_out_lora_);
  return h + residual_dropout_->forward(f);
}

torch::Tensor SASRecBlockImpl::forward_last(const torch::Tensor& x, const torch::Tensor& last_mask) {
  const auto B = x.size(0), T = x.size(1), C = x.size(2);
  const double attention_dropout = is_training() ? dropout_ : 0.0;
  const auto newest = x.narrow(1, T - 1, 1);  // (B, 1, C)
  if (original_) {
    auto query_in = attention_norm_->forward(newest);
    auto q = project(query_in, qkv_, qkv_lora_, 0, C).view({B, 1, heads_, C / heads_}).transpose(1, 2);
    auto kv = project(x, qkv_, qkv_lora_, C, 2 * C).view({B, T, 2, heads_, C / heads_}).permute({2, 0, 3, 1, 4}).unbind(0);
    auto attended = torch::scaled_dot_product_attention(q, kv[0], kv[1], last_mask, attention_dropout);
    attended = attended.transpose(1, 2).reshape({B, 1, C});
    auto h = ffn_norm_->forward(query_in + project(attended, attention_out_, attention_out_lora_));
    auto f = project(torch::dropout(torch::relu(project(h, ffn_in_, ffn_in_lora_)), dropout_, is_training()), ffn_out_, ffn_out_lora_);
    return h + residual_dropout_->forward(f);
  }
  // Keys and values of every position, the query of the newest: the rows of qkv_ split.
  auto normed = attention_norm_->forward(x);
  const torch::Tensor down = qkv_lora_ ? qkv_lora_->down(normed) : torch::Tensor();  // one dropout mask for q, k, v
  auto q = project(normed.narrow(1, T - 1, 1), qkv_, qkv_lora_, 0, C, down.defined() ? down.narrow(1, T - 1, 1) : down)
               .view({B, 1, heads_, C / heads_}).transpose(1, 2);  // (B, heads, 1, C/heads)
  auto part = [&](int64_t p) {
    return project(normed, qkv_, qkv_lora_, p * C, C, down).view({B, T, heads_, C / heads_}).transpose(1, 2);
  };
  auto attended = torch::scaled_dot_product_attention(q, part(1), part(2), last_mask, attention_dropout);
  attended = attended.transpose(1, 2).reshape({B, 1, C});
  auto h = newest + residual_dropout_->forward(project(attended, attention_out_, attention_out_lora_));
  auto f = project(torch::dropout(torch::gelu(project(ffn_norm_->forward(h), ffn_in_, ffn_in_lora_)), dropout_, is_training()),
                   ffn_out_, ffn_out_lora_);
  return h + residual_dropout_->forward(f);
}

SASRecImpl::SASRecImpl(const SASRecOptions& options) : options_(options) {
  options_.validate();
  const int64_t ffn = options_.ffn_hidden > 0 ? options_.ffn_hidden : options_.hidden;
  item_embedding_ = register_parameter("item_embedding", torch::empty({options_.num_items + 1, options_.hidden}));
  position_embedding_ = register_parameter("position_embedding", torch::empty({options_.maxlen, options_.hidden}));
  embedding_dropout_ = register_module("embedding_dropout", torch::nn::Dropout(options_.dropout));
  for (int64_t b = 0; b < options_.blocks; ++b)
    blocks_->push_back(SASRecBlock(options_.hidden, options_.heads, ffn, options_.dropout, options_.block == "original",
                                   options_.lora_rank, options_.lora_alpha, options_.lora_dropout));
  register_module("blocks", blocks_);
  final_norm_ = register_module("final_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({options_.hidden})));
  if (options_.item_lora_rank > 0) {  // registered last: the other weights draw the same values with or without it
    auto adapter = register_module("item_lora", std::make_shared<torch::nn::Module>());
    item_lora_a_ = adapter->register_parameter("a", torch::empty({options_.num_items + 1, options_.item_lora_rank}));
    item_lora_b_ = adapter->register_parameter("b", torch::empty({options_.item_lora_rank, options_.hidden}));
  }

  // Xavier-normal for every matrix and zero biases: with N(0, 1) embeddings SASRec sits on a long
  // plateau (seen on ML-1M, see docs), so initialisation is part of the recipe.
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    if (p.value().dim() >= 2) {
      torch::nn::init::xavier_normal_(p.value());
    } else if (p.key().find("norm") == std::string::npos) {
      p.value().zero_();
    }
  }
  item_embedding_[0].zero_();  // padding
  for (auto& block : *blocks_) block->as<SASRecBlock>()->reset_adapters();  // a new adapter changes nothing
  if (item_lora_a_.defined()) {  // as PEFT's embedding adapter: A zero (changes nothing), B N(0, 1)
    item_lora_a_.zero_();
    item_lora_b_.normal_();
  }
}

torch::Tensor history_attention_mask(const torch::Tensor& items) {
  const auto T = items.size(1);
  auto causal = torch::ones({T, T}, torch::dtype(torch::kBool).device(items.device())).tril();
  auto self = torch::eye(T, torch::dtype(torch::kBool).device(items.device()));
  auto key_real = (items != 0).unsqueeze(1).unsqueeze(2);  // (B, 1, 1, T)
  return causal & (key_real | self);                       // (B, 1, T, T)
}

torch::Tensor SASRecImpl::real_positions(const torch::Tensor& items) const {
  TORCH_CHECK(items.dim() == 2, "SASRec: items must be (batch, length), got ", items.sizes());
  TORCH_CHECK(items.size(1) <= options_.maxlen, "SASRec: history length ", items.size(1), " exceeds model.maxlen ",
              options_.maxlen);
  return (items != 0).unsqueeze(-1).to(item_embedding_.dtype());  // (B, T, 1)
}

torch::Tensor SASRecImpl::embed(const torch::Tensor& items, const torch::Tensor& real) {
  const auto T = items.size(1);
  // Positions count from the newest item, so the newest always has the same embedding.
  auto positions = position_embedding_.narrow(0, options_.maxlen - T, T);
  auto x = lookup_items(items) * std::sqrt(static_cast<double>(options_.hidden));
  return embedding_dropout_->forward((x + positions) * real);
}

torch::Tensor SASRecImpl::forward(const torch::Tensor& items) {
  const auto real = real_positions(items);
  auto x = embed(items, real);
  auto mask = history_attention_mask(items);
  for (auto& block : *blocks_) x = block->as<SASRecBlock>()->forward(x, mask) * real;
  return final_norm_->forward(x);
}

torch::Tensor SASRecImpl::last_hidden(const torch::Tensor& items) {
  const auto real = real_positions(items);
  auto x = embed(items, real);
  const auto T = items.size(1);
  const int64_t blocks = static_cast<int64_t>(blocks_->size());
  if (blocks > 1) {
    auto mask = history_attention_mask(items);
    for (int64_t i = 0; i + 1 < blocks; ++i)
      x = (*blocks_)[i]->as<SASRecBlock>()->forward(x, mask, /*separate_products=*/true) * real;
  }
  // The newest row of the mask: every real key, and the newest position itself.
  auto last_mask = (items != 0);
  last_mask.select(1, T - 1).fill_(true);
  last_mask = last_mask.unsqueeze(1).unsqueeze(2);  // (B, 1, 1, T)
  x = (*blocks_)[blocks - 1]->as<SASRecBlock>()->forward_last(x, last_mask) * real.narrow(1, T - 1, 1);
  return final_norm_->forward(x.squeeze(1));
}

namespace {
double item_lora_scale(const SASRecOptions& o) { return o.lora_alpha / static_cast<double>(o.item_lora_rank); }
}  // namespace

torch::Tensor SASRecImpl::lookup_items(const torch::Tensor& items) {
  if (item_rows_) {
    TORCH_CHECK(!item_lora_a_.defined(), "SASRec: an item adapter needs the model's own item table");
    return item_rows_->lookup(items);
  }
  auto rows = sparse_sink_ && is_training() ? ops::sparse_embedding_lookup(item_embedding_, items, *sparse_sink_)
                                            : torch::embedding(item_embedding_, items, /*padding_idx=*/0);
  if (!item_lora_a_.defined()) return rows;
  const auto down = torch::embedding(item_lora_a_, items, /*padding_idx=*/0);  // (..., rank)
  return rows + torch::matmul(down, item_lora_b_) * item_lora_scale(options_);
}

torch::Tensor SASRecImpl::item_table() const {
  TORCH_CHECK(!item_rows_, "SASRec: the item table is sharded across the job's processes; no process holds it whole");
  if (!item_lora_a_.defined()) return item_embedding_;
  const auto rows = item_lora_a_.size(0);
  // Row 0 (padding) takes no update, so that A's padding row never learns from the scores.
  auto update = torch::mm(item_lora_a_.narrow(0, 1, rows - 1), item_lora_b_) * item_lora_scale(options_);
  return item_embedding_ + torch::constant_pad_nd(update, {0, 0, 1, 0});
}

std::vector<torch::Tensor> SASRecImpl::item_adapter() const {
  if (!item_lora_a_.defined()) return {};
  return {item_lora_a_, item_lora_b_};
}

torch::Tensor SASRecImpl::score_all(const torch::Tensor& hidden) const {
  if (item_rows_) return item_rows_->score_all(hidden);
  return torch::matmul(hidden, item_table().t());
}

void SASRecImpl::set_dropout(double p) {
  if (p < 0 || p >= 1) throw std::invalid_argument("SASRec: dropout must be in [0, 1), got " + std::to_string(p));
  options_.dropout = p;
  embedding_dropout_->options.p(p);
  for (const auto& block : *blocks_) block->as<SASRecBlockImpl>()->set_dropout(p);
}

void SASRecImpl::grow_items(int64_t num_items) {
  if (num_items <= options_.num_items) return;
  if (item_rows_) {
    item_rows_->grow(num_items);
    options_.num_items = num_items;
    return;
  }
  torch::NoGradGuard no_grad;
  const auto old = item_embedding_.detach();
  const double spread = old.size(0) > 2 ? old.narrow(0, 1, old.size(0) - 1).std().item<double>() : 0.02;
  auto extra = torch::randn({num_items - options_.num_items, options_.hidden}, old.options()) * spread;
  item_embedding_.set_data(torch::cat({old, extra}));
  if (item_lora_a_.defined())  // new rows start without an update
    item_lora_a_.set_data(torch::cat({item_lora_a_.detach(), torch::zeros({extra.size(0), options_.item_lora_rank}, old.options())}));
  options_.num_items = num_items;
}

std::vector<torch::Tensor> SASRecImpl::dense_parameters(bool with_item_table) const {
  std::vector<torch::Tensor> dense;
  for (const auto& p : parameters())
    if (with_item_table || !p.is_same(item_embedding_)) dense.push_back(p);
  return dense;
}

std::map<std::string, torch::Tensor> SASRecImpl::plain_parameters() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : named_parameters())
    if (p.key().find("_lora.") == std::string::npos) out[p.key()] = p.value().detach();
  if (item_lora_a_.defined()) {
    torch::NoGradGuard no_grad;
    out["item_embedding"] = item_table();
  }
  for (size_t b = 0; b < blocks_->size(); ++b)
    for (auto& [name, weight] : (*blocks_)[b]->as<SASRecBlock>()->merged_weights())
      out["blocks." + std::to_string(b) + "." + name] = weight;
  return out;
}

SASRec fold_item_adapter(const SASRec& model) {
  if (model->options().item_lora_rank == 0) return model;
  auto options = model->options();
  options.item_lora_rank = 0;
  SASRec folded(options);
  torch::NoGradGuard no_grad;
  auto params = folded->named_parameters();
  for (const auto& p : model->named_parameters())
    if (p.key().rfind("item_lora.", 0) != 0) params[p.key()].copy_(p.value());
  params["item_embedding"].copy_(model->item_table());
  folded->to(model->item_embedding().device());
  folded->train(model->is_training());
  return folded;
}

int64_t SASRecImpl::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace freshrec
