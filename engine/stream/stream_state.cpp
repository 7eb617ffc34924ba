// A stream checkpoint's counters, side files and stored ids; see stream_state.h.
#include "engine/stream/stream_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <torch/torch.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace freshrec {

namespace fs = std::filesystem;

void CounterWriter::operator()(const char* name, const RankingMetrics& metrics) {
  meta[name] = nlohmann::json::parse(metrics.state());
}

void CounterWriter::operator()(const char* name, const std::vector<double>& samples) {
  tensors[std::string("counter.") + name] = torch::tensor(samples, torch::kDouble);
}

void CounterReader::operator()(const char* name, RankingMetrics& metrics) {
  if (!meta.contains(name)) return;
  metrics = RankingMetrics::from_state(meta.at(name).dump());
  if (metrics.ks() != std::vector<long long>{10})
    throw std::runtime_error(path + ": saved metrics '" + name + "' have other cut-offs");
}

void CounterReader::operator()(const char* name, std::vector<double>& samples) {
  const auto found = tensors.find(std::string("counter.") + name);
  if (found == tensors.end()) return;
  const auto values = found->second.to(torch::kDouble).contiguous();
  samples.assign(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
}

uint64_t durable_size(std::ofstream& out, const fs::path& path) {
  out.flush();
  if (!out) throw std::runtime_error(path.string() + ": cannot write: " + std::strerror(errno));
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int error = errno;
    if (fd >= 0) ::close(fd);
    throw std::runtime_error(path.string() + ": cannot make durable: " + std::strerror(error));
  }
  ::close(fd);
  return fs::file_size(path);
}

void truncate_to(const fs::path& path, uint64_t bytes) {
  if (fs::exists(path) && fs::file_size(path) > bytes) fs::resize_file(path, bytes);
}

std::vector<int64_t> stored_values(const at::Tensor& values) {
  auto c = values.to(torch::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::vector<int64_t> stored_item_ids(const at::Tensor& ids, int64_t lowest, int64_t known, const std::string& path,
                                     const char* what) {
  auto values = stored_values(ids);
  for (int64_t id : values)
    if (id < lowest || id > known)
      throw std::runtime_error(path + ": " + what + " name item " + std::to_string(id) + ", outside the " +
                               std::to_string(known) + " items of its id map");
  return values;
}

}  // namespace freshrec
