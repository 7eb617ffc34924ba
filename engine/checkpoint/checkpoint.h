// Checkpoints: model weights, optimizer state, the config, the id maps and metadata in one file,
// written atomically (a temporary file, fsync, then rename), so a crash never leaves half a file.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <map>
#include <string>

#include "engine/config/config.h"
#include "engine/data/event_log.h"
#include "models/sasrec.h"

namespace freshrec {

struct CheckpointInfo {
  std::string config_yaml;
  IdMap items{1}, users{0};
  nlohmann::json meta;  // epoch, step, best validation, versions, ...
  // Further named state (a stream's history store and source position, ...).
  std::map<std::string, std::string> texts;
  std::map<std::string, torch::Tensor> tensors;
  // The config the checkpoint was written with; keys from other versions of freshrec are skipped.
  Config config() const { return Config::from_stored_yaml(config_yaml, "checkpoint config", nullptr); }
};

// `sparse_optimizer` (optional): the row-wise optimizer's state module (moments of the item table).
// With info.meta["base"] = {"file": NAME, "id": ID} (a base checkpoint of write_base_checkpoint in the
// same folder), the checkpoint holds only the weights that require gradients, the ones its run
// trains; loading reads the base's weights first, then these over them.
void save_checkpoint(const std::string& path, SASRec& model, torch::optim::Optimizer* optimizer,
                     const CheckpointInfo& info, torch::nn::Module* sparse_optimizer = nullptr);

// Writes `model`'s weights (no optimizer state) as the base of checkpoints that hold their trained
// weights alone, and returns the meta["base"] entry they carry: the file's name and an id drawn here,
// so that a base another run wrote over is recognised. `path`'s folder is the checkpoints' folder.
nlohmann::json write_base_checkpoint(const std::string& path, SASRec& model, const CheckpointInfo& info);

// Everything but the tensors.
CheckpointInfo read_checkpoint_info(const std::string& path);
// The model, rebuilt from the checkpoint's own config and item count, on `device`. Refuses a rank's
// file of a row-sharded stream checkpoint (meta "item_rows"), which holds part of the item table.
SASRec load_checkpoint_model(const std::string& path, torch::Device device);
// Loads the checkpoint's weights into a model of the same shape (its base's first, when it has one).
void load_checkpoint_weights(const std::string& path, SASRec& model);
// Restores optimizer state saved with the checkpoint (the optimizer must hold the same parameters).
// With `sparse_optimizer`, its state is restored too (and must be in the checkpoint).
void load_checkpoint_optimizer(const std::string& path, torch::optim::Optimizer& optimizer,
                               torch::nn::Module* sparse_optimizer = nullptr);

// The stream's student, nested in the stream's checkpoint with its optimizers' state, so that one
// atomic file holds both models. pack_student stores it in `info`; student_model builds a model of its
// shape (its own config and item count), which unpack_student fills, and its optimizers when given
// (made for that model).
void pack_student(CheckpointInfo& info, SASRec& student, const std::string& config_yaml,
                  torch::optim::Optimizer* optimizer, torch::nn::Module* sparse_optimizer);
bool has_student(const CheckpointInfo& info);
const std::string& student_config_yaml(const CheckpointInfo& info);
SASRec student_model(const CheckpointInfo& info);
void unpack_student(const CheckpointInfo& info, SASRec& student, torch::optim::Optimizer* optimizer = nullptr,
                    torch::nn::Module* sparse_optimizer = nullptr);

// The model options a config asks for, with the item count of the data.
SASRecOptions sasrec_options_from_config(const Config& config, int64_t num_items);


}  // namespace freshrec
