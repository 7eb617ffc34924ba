// Pre-trained sources; see pretrained.h.
#include "engine/finetune/pretrained.h"

#include <torch/script.h>
#include <caffe2/serialize/inline_container.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "engine/checkpoint/checkpoint.h"
#include "engine/data/ids.h"
#include "engine/finetune/safetensors.h"
#include "engine/finetune/state_dict.h"

namespace freshrec {
namespace {

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The ids file: one id a line, or a JSON list of strings or integers.
std::vector<std::string> read_ids(const std::string& path) {
  const std::string text = read_bytes(path);
  std::vector<std::string> ids;
  std::vector<size_t> lines;  // where each id came from, for messages
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    nlohmann::json list;
    try {
      list = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(path + ": not a JSON list of ids: " + e.what());
    }
    if (!list.is_array()) throw std::runtime_error(path + ": not a JSON list of ids");
    for (size_t i = 0; i < list.size(); ++i) {
      const auto& v = list[i];
      if (v.is_string()) ids.push_back(v.get<std::string>());
      else if (v.is_number_integer()) ids.push_back(v.dump());
      else throw std::runtime_error(path + ": element " + std::to_string(i) + " is " + v.dump() + ", not a string or an integer");
      lines.push_back(i);
    }
  } else {
    std::istringstream in(text);
    size_t line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() && in.peek() == std::char_traits<char>::eof()) break;  // a final newline
      ids.push_back(line);
      lines.push_back(line_no);
    }
  }
  const bool json = first != std::string::npos && text[first] == '[';
  auto where = [&](size_t i) { return json ? "element " + std::to_string(lines[i]) : "line " + std::to_string(lines[i]); };
  std::unordered_map<std::string, size_t> seen;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string problem = id_problem(ids[i]);
    if (!problem.empty()) throw std::runtime_error(path + ": " + where(i) + ": invalid item id '" + printable(ids[i]) + "': " + problem);
    const auto [it, fresh] = seen.emplace(ids[i], i);
    if (!fresh)
      throw std::runtime_error(path + ": " + where(i) + ": item id '" + printable(ids[i]) + "' is listed twice (first at " +
                               where(it->second) + ")");
  }
  return ids;
}

std::string strip_prefixes(std::string name) {
  for (bool again = true; again;) {
    again = false;
    for (const char* prefix : {"module.", "_orig_mod."})
      if (name.rfind(prefix, 0) == 0) name = name.substr(std::strlen(prefix)), again = true;
  }
  return name;
}

// Infers the architecture from the weights' shapes and checks every name and shape against the
// model it describes; the message lists every problem, not the first.
void place_weights(PretrainedModel& m) {
  auto dim = [&](const std::string& name, int64_t d) -> int64_t {
    const auto it = m.weights.find(name);
    if (it == m.weights.end() || it->second.dim() <= d)
      throw std::runtime_error(m.path + ": no '" + name + "' weight of " + std::to_string(d + 1) +
                               "+ dimensions, so the model's shape cannot be read (names found: " +
                               std::to_string(m.weights.size()) + ")");
    return it->second.size(d);
  };
  m.hidden = dim("item_embedding", 1);
  m.maxlen = dim("position_embedding", 0);
  std::set<int64_t> block_ids;
  for (const auto& [name, t] : m.weights)
    if (name.rfind("blocks.", 0) == 0) {
      try {
        block_ids.insert(std::stoll(name.substr(7)));
      } catch (const std::exception&) {
      }
    }
  m.blocks = static_cast<int64_t>(block_ids.size());
  if (m.blocks <= 0) throw std::runtime_error(m.path + ": no 'blocks.N.*' weights: not a SASRec model");
  if (*block_ids.begin() != 0 || *block_ids.rbegin() != m.blocks - 1 || m.blocks > 256)
    throw std::runtime_error(m.path + ": the blocks are numbered " + std::to_string(*block_ids.begin()) + " to " +
                             std::to_string(*block_ids.rbegin()) + " (" + std::to_string(m.blocks) +
                             " of them): a SASRec has blocks 0 to N - 1, at most 256");
  m.ffn_hidden = dim("blocks.0.ffn_in.weight", 0);
  if (m.hidden < 1 || m.maxlen < 1 || m.ffn_hidden < 1)
    throw std::runtime_error(m.path + ": item_embedding, position_embedding and blocks.0.ffn_in.weight must have "
                             "non-empty shapes (hidden " + std::to_string(m.hidden) + ", maxlen " + std::to_string(m.maxlen) +
                             ", feed-forward " + std::to_string(m.ffn_hidden) + ")");
  const int64_t rows = dim("item_embedding", 0);
  if (rows < 2) throw std::runtime_error(m.path + ": item_embedding has " + std::to_string(rows) + " rows; it needs padding and an item");

  SASRecOptions o;
  o.num_items = rows - 1, o.hidden = m.hidden, o.blocks = m.blocks, o.heads = 1, o.ffn_hidden = m.ffn_hidden;
  o.maxlen = m.maxlen, o.dropout = 0;
  if (m.block) o.block = *m.block;
  SASRec shape_model(o);
  std::vector<std::string> problems;
  std::set<std::string> expected;
  for (const auto& p : shape_model->named_parameters()) {
    expected.insert(p.key());
    const auto it = m.weights.find(p.key());
    if (it == m.weights.end()) problems.push_back("missing '" + p.key() + "' " + shape_of(p.value()));
    else if (it->second.sizes() != p.value().sizes())
      problems.push_back("'" + p.key() + "' is " + shape_of(it->second) + ", a model of this shape needs " + shape_of(p.value()));
  }
  for (const auto& [name, t] : m.weights)
    if (!expected.count(name)) problems.push_back("cannot place '" + name + "' " + shape_of(t));
  if (!problems.empty()) {
    std::string message = m.path + ": the weights do not fit a SASRec of hidden " + std::to_string(m.hidden) + ", " +
                          std::to_string(m.blocks) + " blocks, maxlen " + std::to_string(m.maxlen) + " (names as in "
                          "tools/bench/sasrec_reference.py):";
    for (const auto& p : problems) message += "\n  " + p;
    throw std::runtime_error(message);
  }
  for (auto& [name, t] : m.weights) {
    if (!t.is_floating_point()) throw std::runtime_error(m.path + ": '" + name + "' holds " + std::string(c10::toString(t.scalar_type())) + ", not floating point");
    t = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
    if (!torch::isfinite(t).all().item<bool>())
      throw std::runtime_error(m.path + ": '" + name + "' holds non-finite values (NaN or infinity)");
  }
  if (static_cast<int64_t>(m.item_ids.size()) != rows - 1)
    throw std::runtime_error(m.path + ": the item table has " + std::to_string(rows - 1) + " item rows (row 0 is padding), the ids name " +
                             std::to_string(m.item_ids.size()));
}

PretrainedModel from_checkpoint(const std::string& path, const CheckpointInfo& info) {
  PretrainedModel m;
  m.path = path, m.kind = "freshrec checkpoint";
  const Config config = info.config();
  SASRec model = load_checkpoint_model(path, torch::kCPU);
  for (const auto& [name, weight] : model->plain_parameters()) m.weights[name] = weight.clone();  // adapters folded in
  // A grown table's spare rows past the vocabulary are not items.
  const int64_t items = static_cast<int64_t>(info.items.size());
  m.weights["item_embedding"] = m.weights["item_embedding"].narrow(0, 0, items + 1).clone();
  for (int32_t id = 1; id <= items; ++id) m.item_ids.push_back(info.items.external(id));
  m.heads = config.get_int("model.heads");
  m.block = config.get_string("model.block");
  return m;
}

PretrainedModel from_torchscript(const std::string& path, torch::jit::Module& module) {
  PretrainedModel m;
  m.path = path, m.kind = "TorchScript export";
  std::map<std::string, torch::Tensor> found;
  for (const auto& named : module.named_parameters(/*recurse=*/false)) found[named.name] = named.value;
  struct Named {
    const std::map<std::string, torch::Tensor>& map;
    const std::string& path;
    const torch::Tensor& at(const std::string& name) const {
      const auto it = map.find(name);
      if (it == map.end()) throw std::runtime_error(path + ": the export has no parameter '" + name + "'");
      return it->second;
    }
  } p{found, path};
  const int64_t blocks = module.attr("blocks").toInt();
  m.weights["item_embedding"] = p.at("item_embedding");
  m.weights["position_embedding"] = p.at("position_embedding");
  m.weights["final_norm.weight"] = p.at("final_norm_weight");
  m.weights["final_norm.bias"] = p.at("final_norm_bias");
  for (const char* n : {"attention_norm", "qkv", "attention_out", "ffn_norm", "ffn_in", "ffn_out"})
    for (int64_t b = 0; b < blocks; ++b)
      for (const char* part : {"weight", "bias"})
        m.weights["blocks." + std::to_string(b) + "." + n + "." + part] = p.at(std::string(n) + "_" + part)[b];
  const auto ids = module.attr("item_ids");
  if (ids.isIntList()) {  // rows 1..N
    for (int64_t id : ids.toIntVector()) m.item_ids.push_back(std::to_string(id));
  } else {  // "" for the padding row, then rows 1..N
    for (const auto& id : ids.toListRef()) m.item_ids.push_back(id.toStringRef());
    if (!m.item_ids.empty()) m.item_ids.erase(m.item_ids.begin());
  }
  m.heads = module.attr("heads").toInt();
  m.block = module.attr("original_block").toBool() ? "original" : "prenorm";
  return m;
}


}  // namespace

namespace {

// What kind of zip archive `path` is, from its record names alone (nothing in it is run): TorchScript
// archives (checkpoints, exports) hold code/ or constants.pkl; a torch.save file holds data.pkl and data/.
bool is_torchscript_archive(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader archive(path);
  for (const auto& name : archive.getAllRecords())
    if (name.rfind("code/", 0) == 0 || name == "constants.pkl") return true;
  return false;
}

PretrainedModel read_source(const std::string& path, bool with_ids) {
  PretrainedModel m;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  if (in && std::memcmp(magic, "PK\x03\x04", 4) == 0) {
    const bool torchscript = is_torchscript_archive(path);
    if (torchscript && with_ids)  // never loaded: a source given with ids must be a state_dict
      throw std::runtime_error(path + ": a TorchScript archive (a freshrec checkpoint or export, which holds its own "
                               "item ids): drop the ids file, or give a torch.save state_dict");
    if (!torchscript) {
      m.kind = "PyTorch state_dict", m.weights = read_state_dict(path);
      return m;
    }
    // A TorchScript archive: a freshrec checkpoint, or an export. Loading one runs its code, as
    // torch.jit.load does: load only files you trust.
    std::string checkpoint_error;
    try {
      return from_checkpoint(path, read_checkpoint_info(path));
    } catch (const std::exception& e) {
      checkpoint_error = e.what();
    }
    torch::jit::Module module;
    try {
      module = torch::jit::load(path, torch::kCPU);
    } catch (const c10::Error& e) {
      throw std::runtime_error(path + ": a TorchScript archive that does not load (" + e.what_without_backtrace() +
                               "); as a checkpoint: " + checkpoint_error);
    }
    if (!module.hasattr("item_ids") || !module.hasattr("blocks") || !module.hasattr("heads") || !module.hasattr("original_block"))
      throw std::runtime_error(path + ": a TorchScript archive but not a freshrec export (no item_ids, blocks, heads); "
                               "as a checkpoint: " + checkpoint_error);
    return from_torchscript(path, module);
  }
  if (in && static_cast<unsigned char>(magic[0]) == 0x80)
    throw std::runtime_error(path + ": a pickle without its zip archive (torch.save before PyTorch 1.6, or "
                             "_use_new_zipfile_serialization=False): save it again with a current torch");
  m.kind = "safetensors", m.weights = read_safetensors(path);
  return m;
}

}  // namespace

PretrainedModel load_pretrained(const std::string& path, const std::string& ids_path) {
  if (!std::filesystem::is_regular_file(path)) throw std::runtime_error(path + ": no such file");
  PretrainedModel m;
  try {
    m = read_source(path, !ids_path.empty());
  } catch (const c10::Error& e) {  // LibTorch's readers name no file
    throw std::runtime_error(path + ": cannot read: " + e.what_without_backtrace());
  }
  m.path = path;
  const bool own_ids = m.kind == "freshrec checkpoint" || m.kind == "TorchScript export";
  if (own_ids && !ids_path.empty())
    throw std::runtime_error(path + ": a " + m.kind + " holds its own item ids; drop the ids file " + ids_path);
  if (!own_ids) {
    if (ids_path.empty())
      throw std::runtime_error(path + ": a " + m.kind + " holds no item ids: give the external id of each row of "
                               "item_embedding (rows 1..N, one a line) with --ids");
    std::map<std::string, torch::Tensor> renamed;
    for (auto& [name, t] : m.weights) {
      const std::string ours = strip_prefixes(name);
      if (renamed.count(ours)) throw std::runtime_error(path + ": '" + name + "' and another key both name '" + ours + "'");
      renamed[ours] = t;
    }
    m.weights = std::move(renamed);
    m.item_ids = read_ids(ids_path);
  }
  try {
    place_weights(m);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": " + e.what_without_backtrace());
  }
  return m;
}

void check_same_architecture(const PretrainedModel& source, const SASRecOptions& target) {
  auto differ = [&](const std::string& field, const std::string& theirs, const std::string& ours) {
    throw std::invalid_argument(source.path + ": the source model has " + field + " " + theirs + ", the config asks for " +
                                ours + " (set " + field + ": " + theirs + " to fine-tune it)");
  };
  const int64_t ffn = target.ffn_hidden > 0 ? target.ffn_hidden : target.hidden;
  if (source.hidden != target.hidden) differ("model.hidden", std::to_string(source.hidden), std::to_string(target.hidden));
  if (source.blocks != target.blocks) differ("model.blocks", std::to_string(source.blocks), std::to_string(target.blocks));
  if (source.ffn_hidden != ffn)
    differ("model.ffn_hidden", std::to_string(source.ffn_hidden), std::to_string(ffn));
  if (source.maxlen != target.maxlen) differ("model.maxlen", std::to_string(source.maxlen), std::to_string(target.maxlen));
  if (source.heads && *source.heads != target.heads) differ("model.heads", std::to_string(*source.heads), std::to_string(target.heads));
  if (source.block && *source.block != target.block) differ("model.block", *source.block, target.block);
}

}  // namespace freshrec
