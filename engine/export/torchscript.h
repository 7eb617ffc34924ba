// Export of a SASRec model (the student, usually) as one self-contained TorchScript file: weights,
// the item id map (external ids in and out), the config and metadata inside, and plain aten ops only,
// so it loads with torch::jit::load in C++ or torch.jit.load in Python without this project's ops.
//
// Methods of the exported module (Id is int when every external item id is a canonical integer, else
// str; histories are a user's items oldest first, the newest maxlen used):
//   recommend(histories: List[List[Id]], k: int, exclude_seen: bool = True)
//       -> (ids, scores): ids a (B, k) int64 tensor (List[List[str]] for str ids), scores (B, k) float
//   score(histories: List[List[Id]], candidates: List[List[Id]]) -> (B, M) float scores
//   item_ids: List[Id] attribute, the vocabulary in row order (List[int]: rows 1..N; List[str]: "" for
//   the padding row 0, then rows 1..N), meta: str attribute (JSON), config: str (YAML)
// Unknown ids raise an error naming them.
#pragma once

#include <torch/script.h>

#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>
#include <vector>

#include "engine/data/event_log.h"
#include "models/sasrec.h"

namespace freshrec {

// The module for `model` (copied; items 1..items.size() of its table are exported, spare rows of a
// growing table are not). `meta` is stored as JSON text.
torch::jit::Module export_torchscript(SASRec& model, const IdMap& items, const std::string& config_yaml,
                                      const nlohmann::json& meta);

// Saves atomically (temporary file, fsync, rename).
void save_torchscript(torch::jit::Module& module, const std::string& path);

// Loads an exported model for inference (eval mode, on the CPU); errors name the file.
torch::jit::Module load_torchscript(const std::string& path);

// The `meta` JSON of an exported model.
nlohmann::json torchscript_meta(const torch::jit::Module& module);

// An exported model loaded for serving: requests name items by their external ids as text, and bad
// requests are refused with a message before reaching the TorchScript code.
class ExportedModel {
 public:
  explicit ExportedModel(const std::string& path);

  struct Recommendation {
    std::vector<std::string> ids;
    std::vector<float> scores;
  };
  // One recommendation list per history. Throws std::invalid_argument naming an unknown id (and the
  // history and position holding it) or a k outside [1, num_items()].
  std::vector<Recommendation> recommend(const std::vector<std::vector<std::string>>& histories, int64_t k,
                                        bool exclude_seen = true);

  bool knows(const std::string& id) const { return known_.count(id) > 0; }
  bool integer_ids() const { return integer_ids_; }
  const std::vector<std::string>& vocabulary() const { return vocabulary_; }  // external ids, in id order  // ids are canonical integers (else any text)
  int64_t num_items() const { return num_items_; }
  int64_t maxlen() const { return maxlen_; }
  const nlohmann::json& meta() const { return meta_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  torch::jit::Module module_;
  bool integer_ids_ = true;
  std::unordered_set<std::string> known_;
  std::vector<std::string> vocabulary_;
  int64_t num_items_ = 0, maxlen_ = 0;
  nlohmann::json meta_;
};

}  // namespace freshrec
