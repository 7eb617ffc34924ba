// TorchScript export; see torchscript.h.
#include "engine/export/torchscript.h"

#include <cmath>
#include <stdexcept>

#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/frontend/sugared_value.h>

#include "engine/checkpoint/checkpoint.h"
#include "engine/io/atomic_file.h"
#include "engine/io/zip_check.h"

namespace freshrec {
namespace {

// The SASRec forward of models/sasrec.cpp in eval mode, op for op (the parity test holds them to
// 1e-5), plus the id mapping. Block weights are stacked along a leading block dimension, so the
// source does not depend on the number of blocks. Only aten ops (torch.<op>) and builtins: the
// C++ compiler's resolver knows nothing else. $ID_TYPE is int or str; $OUT_IDS_TYPE / $RETURN_OUT_IDS differ by it.
constexpr const char* kSource = R"TS(
def internal_rows(self, histories: List[List[$ID_TYPE]]) -> List[List[int]]:
    if len(histories) == 0:
        raise ValueError("freshrec: empty batch of histories")
    rows: List[List[int]] = []
    for history in histories:
        row: List[int] = []
        for item in history:
            if item not in self.item_index:
                raise ValueError("freshrec: unknown item id " + str(item))
            row.append(self.item_index[item])
        rows.append(row)
    return rows

def left_padded(self, rows: List[List[int]], limit: int) -> Tensor:
    width = 1
    for row in rows:
        width = max(width, min(len(row), limit))
    padded: List[List[int]] = []
    for row in rows:
        n = min(len(row), limit)
        padded.append([0] * (width - n) + row[len(row) - n:])
    return torch.tensor(padded)

def encode_last(self, items: Tensor) -> Tensor:
    # The representation after the newest item, (B, C): every block but the last over all positions,
    # the last one for the newest position alone (its keys and values still from every position).
    B = items.size(0)
    T = items.size(1)
    C = self.hidden
    H = self.heads
    real = (items != 0).unsqueeze(-1).to(self.item_embedding.dtype)
    positions = self.position_embedding.narrow(0, self.maxlen - T, T)
    x = torch.embedding(self.item_embedding, items, 0) * self.scale
    x = (x + positions) * real
    index = torch.arange(T, device=items.device)
    causal = index.unsqueeze(1) >= index.unsqueeze(0)
    itself = index.unsqueeze(1) == index.unsqueeze(0)
    key_real = (items != 0).unsqueeze(1).unsqueeze(2)
    mask = causal & (key_real | itself)
    for b in range(self.blocks):
        last = b == self.blocks - 1
        rows = 1 if last else T
        block_mask = mask.narrow(2, T - 1, 1) if last else mask
        w = self.qkv_weight[b]
        bias = self.qkv_bias[b]
        if self.original_block:
            q_in = torch.layer_norm(x.narrow(1, T - rows, rows), [C], self.attention_norm_weight[b], self.attention_norm_bias[b], 1e-5)
            q = torch.linear(q_in, w.narrow(0, 0, C), bias.narrow(0, 0, C)).view([B, rows, H, C // H]).transpose(1, 2)
            kv = torch.linear(x, w.narrow(0, C, 2 * C), bias.narrow(0, C, 2 * C)).view([B, T, 2, H, C // H]).permute([2, 0, 3, 1, 4])
            attended = torch.scaled_dot_product_attention(q, kv[0], kv[1], block_mask, 0.0).transpose(1, 2).reshape([B, rows, C])
            h = q_in + torch.linear(attended, self.attention_out_weight[b], self.attention_out_bias[b])
            h = torch.layer_norm(h, [C], self.ffn_norm_weight[b], self.ffn_norm_bias[b], 1e-5)
            f = torch.linear(torch.relu(torch.linear(h, self.ffn_in_weight[b], self.ffn_in_bias[b])),
                             self.ffn_out_weight[b], self.ffn_out_bias[b])
        else:
            normed = torch.layer_norm(x, [C], self.attention_norm_weight[b], self.attention_norm_bias[b], 1e-5)
            q = torch.linear(normed.narrow(1, T - rows, rows), w.narrow(0, 0, C), bias.narrow(0, 0, C)).view([B, rows, H, C // H]).transpose(1, 2)
            kv = torch.linear(normed, w.narrow(0, C, 2 * C), bias.narrow(0, C, 2 * C)).view([B, T, 2, H, C // H]).permute([2, 0, 3, 1, 4])
            attended = torch.scaled_dot_product_attention(q, kv[0], kv[1], block_mask, 0.0)
            attended = attended.transpose(1, 2).reshape([B, rows, C])
            h = x.narrow(1, T - rows, rows) + torch.linear(attended, self.attention_out_weight[b], self.attention_out_bias[b])
            f = torch.layer_norm(h, [C], self.ffn_norm_weight[b], self.ffn_norm_bias[b], 1e-5)
            f = torch.linear(torch.gelu(torch.linear(f, self.ffn_in_weight[b], self.ffn_in_bias[b])),
                             self.ffn_out_weight[b], self.ffn_out_bias[b])
        x = (h + f) * real.narrow(1, T - rows, rows)
    return torch.layer_norm(x.select(1, 0), [C], self.final_norm_weight, self.final_norm_bias, 1e-5)

def scores_of(self, items: Tensor) -> Tensor:
    return torch.matmul(self.encode_last(items), self.item_embedding.t())

def recommend(self, histories: List[List[$ID_TYPE]], k: int, exclude_seen: bool = True) -> Tuple[$OUT_IDS_TYPE, Tensor]:
    if k < 1 or k > self.num_items:
        raise ValueError("freshrec: k must be in [1, " + str(self.num_items) + "], got " + str(k))
    rows = self.internal_rows(histories)
    scores = self.scores_of(self.left_padded(rows, self.maxlen))
    if exclude_seen:
        scores = scores.scatter(1, self.left_padded(rows, 1 << 62), float("-inf"))
    scores[:, 0] = float("-inf")
    top = torch.topk(scores, k, 1)
    index = top[1]
$RETURN_OUT_IDS

def score(self, histories: List[List[$ID_TYPE]], candidates: List[List[$ID_TYPE]]) -> Tensor:
    if len(candidates) != len(histories):
        raise ValueError("freshrec: " + str(len(histories)) + " histories but " + str(len(candidates)) + " candidate lists")
    rows = self.internal_rows(candidates)
    width = len(rows[0])
    if width == 0:
        raise ValueError("freshrec: no candidates to score")
    for row in rows:
        if len(row) != width:
            raise ValueError("freshrec: every candidate list must have the same length")
    scores = self.scores_of(self.left_padded(self.internal_rows(histories), self.maxlen))
    return scores.gather(1, torch.tensor(rows))
)TS";

constexpr const char* kReturnIntIds = R"TS(    return self.item_id_tensor.index_select(0, index.reshape([-1])).view(index.size()), top[0])TS";
constexpr const char* kReturnStrIds = R"TS(    out: List[List[str]] = []
    positions: List[List[int]] = index.tolist()
    for row in positions:
        out.append([self.item_ids[i] for i in row])
    return out, top[0])TS";

// LibTorch's native resolver knows only `torch`; the source also raises ValueError.
struct ExportResolver : public torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string& name, torch::jit::GraphFunction& m,
                                                         const torch::jit::SourceRange& loc) override {
    if (name == "ValueError") return std::make_shared<torch::jit::ExceptionValue>("ValueError");
    return torch::jit::nativeResolver()->resolveValue(name, m, loc);
  }
  c10::TypePtr resolveType(const std::string& name, const torch::jit::SourceRange& loc) override {
    return torch::jit::nativeResolver()->resolveType(name, loc);
  }
};

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
}

bool canonical_integer(const std::string& s, int64_t* value) {
  if (s.empty() || s.size() > 19) return false;
  size_t used = 0;
  try {
    *value = std::stoll(s, &used);
  } catch (const std::exception&) {
    return false;
  }
  return used == s.size() && std::to_string(*value) == s;
}

}  // namespace

torch::jit::Module export_torchscript(SASRec& model, const IdMap& items, const std::string& config_yaml,
                                      const nlohmann::json& meta) {
  torch::NoGradGuard no_grad;
  const auto& o = model->options();
  const int64_t vocabulary = static_cast<int64_t>(items.size());
  if (vocabulary < 1 || vocabulary > o.num_items)
    throw std::invalid_argument("export: the id map has " + std::to_string(vocabulary) + " items, the model " +
                                std::to_string(o.num_items));
  // LoRA adapters are folded into their layers' weights: the export is a plain SASRec.
  std::map<std::string, torch::Tensor> p;
  for (const auto& [name, value] : model->plain_parameters()) {
    p[name] = value.to(torch::kCPU, torch::kFloat);
    // Rows past the vocabulary (spare rows of a grown table) are never exported, so they may hold anything.
    const auto exported = name == "item_embedding" ? p[name].narrow(0, 0, vocabulary + 1) : p[name];
    if (!torch::isfinite(exported).all().item<bool>())
      throw std::invalid_argument("export: parameter '" + name + "' holds non-finite values (NaN or infinity); nothing was exported");
  }
  auto stacked = [&](const std::string& name) {
    std::vector<torch::Tensor> per_block;
    for (int64_t b = 0; b < o.blocks; ++b) per_block.push_back(p.at("blocks." + std::to_string(b) + "." + name));
    return torch::stack(per_block).contiguous();
  };

  torch::jit::Module module("freshrec.SASRecStudent");
  module.register_parameter("item_embedding", p.at("item_embedding").narrow(0, 0, vocabulary + 1).clone(), false);
  module.register_parameter("position_embedding", p.at("position_embedding").clone(), false);
  for (const char* n : {"attention_norm", "qkv", "attention_out", "ffn_norm", "ffn_in", "ffn_out"}) {
    module.register_parameter(std::string(n) + "_weight", stacked(std::string(n) + ".weight"), false);
    module.register_parameter(std::string(n) + "_bias", stacked(std::string(n) + ".bias"), false);
  }
  module.register_parameter("final_norm_weight", p.at("final_norm.weight").clone(), false);
  module.register_parameter("final_norm_bias", p.at("final_norm.bias").clone(), false);
  module.register_attribute("hidden", c10::IntType::get(), o.hidden);
  module.register_attribute("heads", c10::IntType::get(), o.heads);
  module.register_attribute("blocks", c10::IntType::get(), o.blocks);
  module.register_attribute("maxlen", c10::IntType::get(), o.maxlen);
  module.register_attribute("original_block", c10::BoolType::get(), o.block == "original");
  module.register_attribute("num_items", c10::IntType::get(), vocabulary);
  module.register_attribute("scale", c10::FloatType::get(), std::sqrt(static_cast<double>(o.hidden)));
  module.register_attribute("config", c10::StringType::get(), config_yaml);
  nlohmann::json stored = meta.is_object() ? meta : nlohmann::json::object();
  if (!stored.contains("parameters")) {  // the exported (plain) model's
    int64_t parameters = 0;
    for (const auto& [name, value] : p) parameters += value.numel();
    stored["parameters"] = parameters;
  }
  module.register_attribute("meta", c10::StringType::get(), stored.dump());

  // Integer ids when every external id is a canonical integer (ML-1M, the generator), else strings.
  bool integers = true;
  std::vector<int64_t> int_ids = {0};  // index 0: padding
  for (int32_t id = 1; id <= vocabulary && integers; ++id) {
    int64_t v = 0;
    integers = canonical_integer(items.external(id), &v);
    int_ids.push_back(v);
  }
  std::string source = kSource;
  if (integers) {
    c10::Dict<int64_t, int64_t> index;
    c10::List<int64_t> ids;
    for (int32_t id = 1; id <= vocabulary; ++id) index.insert(int_ids[id], id), ids.push_back(int_ids[id]);
    module.register_attribute("item_index", c10::DictType::create(c10::IntType::get(), c10::IntType::get()), index);
    module.register_attribute("item_ids", c10::ListType::ofInts(), ids);
    module.register_buffer("item_id_tensor", torch::tensor(int_ids, torch::kLong));
    replace_all(source, "$ID_TYPE", "int");
    replace_all(source, "$OUT_IDS_TYPE", "Tensor");
    replace_all(source, "$RETURN_OUT_IDS", kReturnIntIds);
  } else {
    c10::Dict<std::string, int64_t> index;
    c10::List<std::string> ids;
    ids.push_back("");  // padding
    for (int32_t id = 1; id <= vocabulary; ++id) index.insert(items.external(id), id), ids.push_back(items.external(id));
    module.register_attribute("item_index", c10::DictType::create(c10::StringType::get(), c10::IntType::get()), index);
    module.register_attribute("item_ids", c10::ListType::ofStrings(), ids);
    replace_all(source, "$ID_TYPE", "str");
    replace_all(source, "$OUT_IDS_TYPE", "List[List[str]]");
    replace_all(source, "$RETURN_OUT_IDS", kReturnStrIds);
  }
  module.define(source, std::make_shared<ExportResolver>());
  module.eval();
  return module;
}

void save_torchscript(torch::jit::Module& module, const std::string& path) {
  save_atomically(path, [&](std::ostream& out) { module.save(out); });
}

torch::jit::Module load_torchscript(const std::string& path) {
  check_archive_integrity(path);
  try {
    auto module = torch::jit::load(path, torch::kCPU);
    module.eval();
    if (!module.find_method("recommend") || !module.hasattr("item_ids"))
      throw std::runtime_error(path + ": not a freshrec export (no recommend method or item_ids)");
    return module;
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": cannot load TorchScript model: " + e.what_without_backtrace());
  }
}

nlohmann::json torchscript_meta(const torch::jit::Module& module) {
  return nlohmann::json::parse(module.attr("meta").toStringRef());
}

ExportedModel::ExportedModel(const std::string& path) : path_(path), module_(load_torchscript(path)) {
  const auto ids = module_.attr("item_ids");
  integer_ids_ = ids.isIntList();
  if (integer_ids_) {
    for (int64_t id : ids.toIntVector()) known_.insert(std::to_string(id));
  } else {
    for (const auto& id : ids.toListRef()) known_.insert(id.toStringRef());
  }
  if (integer_ids_) {
    for (int64_t id : ids.toIntVector()) vocabulary_.push_back(std::to_string(id));
  } else {
    for (const auto& id : ids.toListRef()) vocabulary_.push_back(id.toStringRef());
  }
  if (!integer_ids_) vocabulary_.erase(vocabulary_.begin());  // the padding slot (string ids only) is not an item
  known_.erase(integer_ids_ ? "0" : "");
  num_items_ = module_.attr("num_items").toInt();
  maxlen_ = module_.attr("maxlen").toInt();
  meta_ = torchscript_meta(module_);
}

std::vector<ExportedModel::Recommendation> ExportedModel::recommend(
    const std::vector<std::vector<std::string>>& histories, int64_t k, bool exclude_seen) {
  if (histories.empty()) throw std::invalid_argument("no history to recommend for");
  if (k < 1 || k > num_items_)
    throw std::invalid_argument("k must be in [1, " + std::to_string(num_items_) + "], got " + std::to_string(k));
  for (size_t r = 0; r < histories.size(); ++r)
    for (size_t j = 0; j < histories[r].size(); ++j)
      if (!knows(histories[r][j]))
        throw std::invalid_argument("unknown item id '" + histories[r][j] + "' (history " + std::to_string(r) +
                                    ", position " + std::to_string(j) + ")");
  c10::IValue batch;
  if (integer_ids_) {
    c10::List<c10::List<int64_t>> rows;
    for (const auto& h : histories) {
      c10::List<int64_t> row;
      for (const auto& id : h) row.push_back(std::stoll(id));
      rows.push_back(row);
    }
    batch = rows;
  } else {
    c10::List<c10::List<std::string>> rows;
    for (const auto& h : histories) rows.push_back(c10::List<std::string>(h));
    batch = rows;
  }
  torch::NoGradGuard no_grad;
  auto out = module_.get_method("recommend")({batch, k, exclude_seen}).toTuple();
  auto scores = out->elements()[1].toTensor().contiguous();
  const auto id_tensor = integer_ids_ ? out->elements()[0].toTensor().contiguous() : torch::Tensor();
  std::vector<Recommendation> result(histories.size());
  for (size_t r = 0; r < histories.size(); ++r) {
    auto& rec = result[r];
    const float* s = scores.data_ptr<float>() + r * k;
    for (int64_t j = 0; j < k; ++j) {
      if (std::isinf(s[j])) break;  // fewer than k items left after excluding the history
      rec.scores.push_back(s[j]);
      rec.ids.push_back(integer_ids_ ? std::to_string(id_tensor.data_ptr<int64_t>()[r * k + j])
                                     : out->elements()[0].toListRef()[r].toListRef()[j].toStringRef());
    }
  }
  return result;
}

}  // namespace freshrec
