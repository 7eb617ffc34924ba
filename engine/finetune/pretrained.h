// A model trained elsewhere, read for fine-tuning: its weights under this engine's parameter names
// and the external item id of each row of its item table.
//
// Sources (found by content, not by file name; a zip's reader is chosen from its record names, so a
// state_dict is never handed to TorchScript; checkpoints and exports are TorchScript archives, whose
// loading runs their code: trusted files only):
// - a freshrec checkpoint (`train`, `distill`, `stream`): weights, config and item ids inside;
// - a freshrec TorchScript export: the same;
// - a PyTorch state_dict saved with `torch.save(model.state_dict(), path)`, or a safetensors file,
//   with the parameter names of tools/bench/sasrec_reference.py (the names this engine uses;
//   the prefixes `module.` of DataParallel and `_orig_mod.` of torch.compile are removed), plus an
//   ids file: the external id of rows 1..N of `item_embedding` (row 0 is padding), one a line, or a
//   JSON list of strings or integers.
// The architecture (hidden, blocks, feed-forward width, history length) is read from the shapes;
// the attention heads and block kind from the source's config where it has one.
#pragma once

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "models/sasrec.h"

namespace freshrec {

struct PretrainedModel {
  std::string path;
  std::string kind;  // "freshrec checkpoint", "TorchScript export", "PyTorch state_dict", "safetensors"
  std::map<std::string, torch::Tensor> weights;  // SASRec parameter names, CPU, float32
  std::vector<std::string> item_ids;             // the external id of row r + 1
  int64_t hidden = 0, blocks = 0, ffn_hidden = 0, maxlen = 0;
  std::optional<int64_t> heads;       // freshrec sources only
  std::optional<std::string> block;   // "prenorm" or "original"; freshrec sources only
};

// Reads `path` (and `ids_path`, required for a state_dict or safetensors file, refused for a
// freshrec source, which holds its own). Refuses, naming the file and the tensor or line: weights
// that are not finite, names it cannot place or names missing (each with its shape), shapes that
// disagree, an ids file whose length is not the table's rows - 1, invalid or duplicate ids.
PretrainedModel load_pretrained(const std::string& path, const std::string& ids_path = "");

// Throws std::invalid_argument naming the first model.* field where `target` (the config's model)
// and the source differ, with both values.
void check_same_architecture(const PretrainedModel& source, const SASRecOptions& target);

}  // namespace freshrec
