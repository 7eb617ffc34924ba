// Checkpoint files; see checkpoint.h.
#include "engine/checkpoint/checkpoint.h"
#include "engine/io/atomic_file.h"
#include "engine/io/zip_check.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace freshrec {
namespace {

constexpr int kFormatVersion = 1;

std::string read_string(torch::serialize::InputArchive& archive, const std::string& key, const std::string& path) {
  c10::IValue value;
  if (!archive.try_read(key, value) || !value.isString())
    throw std::runtime_error(path + ": not a freshrec checkpoint (no '" + key + "' entry)");
  return value.toStringRef();
}

torch::serialize::InputArchive open_archive(const std::string& path) {
  if (!std::filesystem::exists(path)) throw std::runtime_error(path + ": checkpoint not found");
  check_archive_integrity(path);  // LibTorch's reader does not check the records' CRC-32s
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": cannot read checkpoint: " + e.what_without_backtrace());
  }
  return archive;
}

// The model and its optimizers' state as entries "model", "optimizer", "sparse_optimizer"; with
// `trained_only`, the weights that require gradients instead of the model, as entries "trained.N"
// named by the lines of "trained_names" (an archive's keys cannot hold a parameter's dotted name).
void write_training_state(torch::serialize::OutputArchive& archive, SASRec& model, torch::optim::Optimizer* optimizer,
                          torch::nn::Module* sparse_optimizer, bool trained_only = false) {
  if (trained_only) {
    std::string names;
    int64_t n = 0;
    for (const auto& p : model->named_parameters()) {
      if (!p.value().requires_grad()) continue;
      archive.write("trained." + std::to_string(n++), p.value().detach().cpu());
      names += p.key() + "\n";
    }
    archive.write("trained_names", c10::IValue(names));
  } else {
    torch::serialize::OutputArchive model_archive;
    model->save(model_archive);
    archive.write("model", model_archive);
  }
  if (optimizer) {
    torch::serialize::OutputArchive optimizer_archive;
    optimizer->save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
  }
  if (sparse_optimizer) {
    torch::serialize::OutputArchive sparse_archive;
    sparse_optimizer->save(sparse_archive);
    archive.write("sparse_optimizer", sparse_archive);
  }
}

}  // namespace

SASRecOptions sasrec_options_from_config(const Config& config, int64_t num_items) {
  SASRecOptions o;
  o.num_items = num_items;
  o.hidden = config.get_int("model.hidden");
  o.blocks = config.get_int("model.blocks");
  o.heads = config.get_int("model.heads");
  o.ffn_hidden = config.get_int("model.ffn_hidden");
  o.dropout = config.get_float("model.dropout");
  o.maxlen = config.get_int("model.maxlen");
  o.block = config.get_string("model.block");
  o.lora_rank = config.get_int("finetune.lora_rank");
  o.lora_alpha = config.get_float("finetune.lora_alpha");
  o.lora_dropout = config.get_float("finetune.lora_dropout");
  o.item_lora_rank = config.get_int("finetune.item_lora_rank");
  return o;
}

void save_checkpoint(const std::string& path, SASRec& model, torch::optim::Optimizer* optimizer,
                     const CheckpointInfo& info, torch::nn::Module* sparse_optimizer) {
  torch::serialize::OutputArchive archive;
  write_training_state(archive, model, optimizer, sparse_optimizer, /*trained_only=*/info.meta.contains("base"));
  nlohmann::json meta = info.meta;
  meta["format_version"] = kFormatVersion;
  meta["num_items"] = model->options().num_items;
  archive.write("config", c10::IValue(info.config_yaml));
  archive.write("items", c10::IValue(info.items.serialize()));
  archive.write("users", c10::IValue(info.users.serialize()));
  archive.write("meta", c10::IValue(meta.dump()));
  std::string names;
  for (const auto& [name, text] : info.texts) archive.write("text." + name, c10::IValue(text)), names += "t" + name + "\n";
  for (const auto& [name, tensor] : info.tensors) archive.write("tensor." + name, tensor.cpu()), names += "T" + name + "\n";
  archive.write("extra_names", c10::IValue(names));
  save_atomically(path, [&](std::ostream& out) { archive.save_to(out); });
}

nlohmann::json write_base_checkpoint(const std::string& path, SASRec& model, const CheckpointInfo& info) {
  std::random_device entropy;
  std::ostringstream id;
  id << std::hex << entropy() << entropy() << entropy() << entropy();
  CheckpointInfo base = info;
  base.meta = {{"kind", "base"}, {"base_id", id.str()}};
  save_checkpoint(path, model, nullptr, base);
  return {{"file", std::filesystem::path(path).filename().string()}, {"id", id.str()}};
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  auto archive = open_archive(path);
  CheckpointInfo info;
  info.config_yaml = read_string(archive, "config", path);
  info.items = IdMap::deserialize(read_string(archive, "items", path), 1);
  info.users = IdMap::deserialize(read_string(archive, "users", path), 0);
  info.meta = nlohmann::json::parse(read_string(archive, "meta", path));
  c10::IValue names;
  if (archive.try_read("extra_names", names) && names.isString()) {
    std::istringstream lines(names.toStringRef());
    for (std::string line; std::getline(lines, line);) {
      const std::string name = line.substr(1);
      if (line[0] == 't') {
        info.texts[name] = read_string(archive, "text." + name, path);
      } else {
        torch::Tensor tensor;
        archive.read("tensor." + name, tensor);
        info.tensors[name] = tensor;
      }
    }
  }
  const int version = info.meta.value("format_version", 0);
  if (version != kFormatVersion)
    throw std::runtime_error(path + ": checkpoint format " + std::to_string(version) + ", this build reads " +
                             std::to_string(kFormatVersion));
  return info;
}

SASRec load_checkpoint_model(const std::string& path, torch::Device device) {
  const auto info = read_checkpoint_info(path);
  if (info.meta.contains("item_rows"))
    throw std::runtime_error(path + ": holds one rank's rows of a row-sharded item table (a stream of several "
                             "processes' checkpoint), not a whole model: resume the stream from it, or use a model it "
                             "published");
  SASRec model(sasrec_options_from_config(info.config(), info.meta.at("num_items").get<int64_t>()));
  load_checkpoint_weights(path, model);
  model->to(device);
  return model;
}

namespace {

// A checkpoint of trained weights alone: its base's weights, then its own over them.
void load_over_base(const std::string& path, torch::serialize::InputArchive& archive, const nlohmann::json& base,
                    SASRec& model) {
  if (!base.is_object() || !base.contains("file") || !base["file"].is_string() || !base.contains("id") || !base["id"].is_string())
    throw std::runtime_error(path + ": its base entry is not {\"file\": NAME, \"id\": ID}: " + base.dump());
  const std::string file = base["file"].get<std::string>(), id = base["id"].get<std::string>();
  if (file.empty() || file != std::filesystem::path(file).filename().string() || file == "." || file == "..")
    throw std::runtime_error(path + ": its base is not a file name beside it: '" + file + "'");
  const auto base_path = (std::filesystem::path(path).parent_path() / file).string();
  if (!std::filesystem::exists(base_path))
    throw std::runtime_error(path + " holds the weights its run trained alone, and their base " + base_path +
                             " is missing: keep the two files together (freshrec export writes a self-contained model)");
  const CheckpointInfo base_info = read_checkpoint_info(base_path);
  if (base_info.meta.value("kind", "") != "base" || base_info.meta.value("base_id", "") != id)
    throw std::runtime_error(path + ": " + base_path + " is not its base (another run wrote over it?): its id is '" +
                             base_info.meta.value("base_id", "") + "', the checkpoint's '" + id + "'");
  load_checkpoint_weights(base_path, model);
  const std::string names = read_string(archive, "trained_names", path);
  auto params = model->named_parameters();
  std::istringstream lines(names);
  int64_t n = 0;
  torch::NoGradGuard no_grad;
  for (std::string name; std::getline(lines, name); ++n) {
    torch::Tensor* target = params.find(name);
    torch::Tensor value;
    try {
      if (!target || !archive.try_read("trained." + std::to_string(n), value) || !value.sizes().equals(target->sizes()) ||
          value.scalar_type() != target->scalar_type())
        throw std::runtime_error(path + ": its trained weight '" + name + "' does not fit this model" +
                                 (target && value.defined() ? " (" + c10::str(value.sizes(), " ", value.scalar_type()) + " for " +
                                                                  c10::str(target->sizes(), " ", target->scalar_type()) + ")"
                                                            : ""));
      target->copy_(value);
    } catch (const c10::Error& e) {
      throw std::runtime_error(path + ": cannot read its trained weight '" + name + "': " + e.what_without_backtrace());
    }
  }
}

}  // namespace

void load_checkpoint_weights(const std::string& path, SASRec& model) {
  auto archive = open_archive(path);
  const auto meta = nlohmann::json::parse(read_string(archive, "meta", path));
  if (meta.contains("base")) {
    if (meta.value("kind", "") == "base") throw std::runtime_error(path + ": a base checkpoint that names a base");
    return load_over_base(path, archive, meta.at("base"), model);
  }
  torch::serialize::InputArchive model_archive;
  if (!archive.try_read("model", model_archive)) throw std::runtime_error(path + ": checkpoint has no model");
  try {
    model->load(model_archive);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": weights do not fit this model: " + e.what_without_backtrace());
  }
}

void load_checkpoint_optimizer(const std::string& path, torch::optim::Optimizer& optimizer,
                               torch::nn::Module* sparse_optimizer) {
  auto archive = open_archive(path);
  torch::serialize::InputArchive optimizer_archive;
  if (!archive.try_read("optimizer", optimizer_archive))
    throw std::runtime_error(path + ": checkpoint has no optimizer state (cannot resume training from it)");
  optimizer.load(optimizer_archive);
  if (sparse_optimizer) {
    torch::serialize::InputArchive sparse_archive;
    if (!archive.try_read("sparse_optimizer", sparse_archive))
      throw std::runtime_error(path + ": checkpoint has no row-wise optimizer state (trained without sparse embeddings?)");
    sparse_optimizer->load(sparse_archive);
  }
}

namespace {

const char* const kStudentConfig = "student_config";
const char* const kStudentState = "student_state";
const char* const kStudentItems = "student_num_items";

// A model with its optimizers' state as bytes (a uint8 tensor).
torch::Tensor pack_training_state(SASRec& model, torch::optim::Optimizer* optimizer, torch::nn::Module* sparse_optimizer) {
  torch::serialize::OutputArchive archive;
  write_training_state(archive, model, optimizer, sparse_optimizer);
  std::ostringstream out;
  archive.save_to(out);
  const std::string bytes = out.str();
  return torch::from_blob(const_cast<char*>(bytes.data()), {static_cast<int64_t>(bytes.size())}, torch::kUInt8).clone();
}

void unpack_training_state(const torch::Tensor& bytes, SASRec& model, torch::optim::Optimizer* optimizer,
                           torch::nn::Module* sparse_optimizer) {
  const auto data = bytes.to(torch::kCPU).contiguous();
  torch::serialize::InputArchive archive;
  archive.load_from(reinterpret_cast<const char*>(data.data_ptr<uint8_t>()), static_cast<size_t>(data.numel()));
  torch::serialize::InputArchive model_archive;
  if (!archive.try_read("model", model_archive)) throw std::runtime_error("packed training state has no model");
  model->load(model_archive);
  for (auto [name, target] : {std::pair<const char*, void*>{"optimizer", optimizer}, {"sparse_optimizer", sparse_optimizer}}) {
    if (!target) continue;
    torch::serialize::InputArchive a;
    if (!archive.try_read(name, a)) throw std::runtime_error(std::string("packed training state has no ") + name);
    if (target == optimizer) optimizer->load(a);
    else sparse_optimizer->load(a);
  }
}

}  // namespace

void pack_student(CheckpointInfo& info, SASRec& student, const std::string& config_yaml,
                  torch::optim::Optimizer* optimizer, torch::nn::Module* sparse_optimizer) {
  info.texts[kStudentConfig] = config_yaml;
  info.tensors[kStudentState] = pack_training_state(student, optimizer, sparse_optimizer);
  info.meta[kStudentItems] = student->options().num_items;
}

bool has_student(const CheckpointInfo& info) { return info.texts.count(kStudentConfig) > 0; }

const std::string& student_config_yaml(const CheckpointInfo& info) {
  const auto found = info.texts.find(kStudentConfig);
  if (found == info.texts.end()) throw std::runtime_error("the checkpoint holds no student");
  return found->second;
}

SASRec student_model(const CheckpointInfo& info) {
  const Config config = Config::from_stored_yaml(student_config_yaml(info), "student config", nullptr);
  if (!info.meta.contains(kStudentItems)) throw std::runtime_error("the checkpoint's student has no item count");
  return SASRec(sasrec_options_from_config(config, info.meta.at(kStudentItems).get<int64_t>()));
}

void unpack_student(const CheckpointInfo& info, SASRec& student, torch::optim::Optimizer* optimizer,
                    torch::nn::Module* sparse_optimizer) {
  const auto state = info.tensors.find(kStudentState);
  if (state == info.tensors.end()) throw std::runtime_error("the checkpoint's student has no weights");
  unpack_training_state(state->second, student, optimizer, sparse_optimizer);
}

}  // namespace freshrec
