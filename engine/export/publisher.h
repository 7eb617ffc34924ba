// Continuous publication of exported models into a folder that servers watch:
//   DIR/model-v000001.pt, model-v000002.pt, ...   (each written atomically)
//   DIR/manifest.json                             (written atomically, last)
// The manifest names the newest version's file, so a reader that follows it never sees a
// half-written model; older versions beyond `keep` are removed after the manifest moves on.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "engine/data/event_log.h"
#include "models/sasrec.h"

namespace freshrec {

struct Manifest {
  int64_t version = 0;
  std::string file;     // model file name, relative to the folder
  nlohmann::json json;  // everything: version, file, events, source position, metrics, wall time, ...
  // The folder's manifest, or nullopt when there is none yet; a malformed one is an error naming it.
  static std::optional<Manifest> read(const std::string& dir);
};

// The highest version `dir` holds: its manifest's, or a model-vNNNNNN.pt file's if higher (0: none).
int64_t highest_published_version(const std::string& dir);

class Publisher {
 public:
  // Continues the numbering of `dir` (highest_published_version), so versions only grow.
  // keep: versions kept on disk (>= 1).
  Publisher(std::string dir, int64_t keep = 5);

  // Exports `model` with `items` and `config_yaml` as the next version; `info` (events seen, source
  // position, rolling metrics, ...) goes into the manifest and the model's meta. Returns the version.
  int64_t publish(SASRec& model, const IdMap& items, const std::string& config_yaml, nlohmann::json info);

  int64_t last_version() const { return version_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int64_t keep_;
  int64_t version_ = 0;
};

}  // namespace freshrec
