// Pieces of the stream checkpoint shared by its writers and readers: the counters that the summary,
// the metrics lines and the manifest report, the side files' durable sizes, and stored item ids checked
// on read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "engine/eval/metrics.h"

namespace freshrec {

// Counters into a checkpoint: numbers and metrics in its meta, samples as tensors. Called with each
// (name, counter) of the stream's one list of counters.
struct CounterWriter {
  nlohmann::json& meta;
  std::map<std::string, at::Tensor>& tensors;
  void operator()(const char* name, uint64_t value) { meta[name] = value; }
  void operator()(const char* name, int64_t value) { meta[name] = value; }
  void operator()(const char* name, double value) { meta[name] = value; }  // NaN is written as null
  void operator()(const char* name, const RankingMetrics& metrics);
  void operator()(const char* name, const std::vector<double>& samples);
};

// And back; a checkpoint written by a build that kept fewer counters leaves the others at zero.
struct CounterReader {
  const nlohmann::json& meta;
  const std::map<std::string, at::Tensor>& tensors;
  const std::string& path;
  template <typename Integer>
  void operator()(const char* name, Integer& value) {
    value = meta.value(name, Integer{0});
  }
  void operator()(const char* name, double& value) {
    const auto found = meta.find(name);
    value = found != meta.end() && found->is_number() ? found->get<double>() : std::numeric_limits<double>::quiet_NaN();
  }
  void operator()(const char* name, RankingMetrics& metrics);  // throws when its cut-offs are not {10}
  void operator()(const char* name, std::vector<double>& samples);
};

// Flushes `out` and makes the file at `path` durable (fsync); returns its size. Throws naming the file.
uint64_t durable_size(std::ofstream& out, const std::filesystem::path& path);

// Cuts the file at `path` back to `bytes` when it is longer (a resume drops what came after its checkpoint).
void truncate_to(const std::filesystem::path& path, uint64_t bytes);

// The int64 values of a stored tensor of item ids, each checked to name an item of an id map of
// `known` items (`lowest`: 1, or 0 where padding may appear): a checkpoint that passed its CRC check
// can still come from another run's files. Throws naming `path` and `what`.
std::vector<int64_t> stored_item_ids(const at::Tensor& ids, int64_t lowest, int64_t known, const std::string& path,
                                     const char* what);

// The int64 values of a stored tensor.
std::vector<int64_t> stored_values(const at::Tensor& values);

}  // namespace freshrec
