// Publication of exported models; see publisher.h.
#include "engine/export/publisher.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/checkpoint/checkpoint.h"
#include "engine/export/torchscript.h"
#include "engine/io/atomic_file.h"

namespace freshrec {
namespace {

namespace fs = std::filesystem;

std::string version_file(int64_t version) {
  char name[64];
  std::snprintf(name, sizeof name, "model-v%06lld.pt", static_cast<long long>(version));
  return name;
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

std::optional<Manifest> Manifest::read(const std::string& dir) {
  const fs::path path = fs::path(dir) / "manifest.json";
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  Manifest m;
  try {
    m.json = nlohmann::json::parse(text.str());
    m.version = m.json.at("version").get<int64_t>();
    m.file = m.json.at("file").get<std::string>();
  } catch (const std::exception& e) {
    throw std::runtime_error(path.string() + ": malformed manifest: " + e.what());
  }
  if (m.file.empty() || m.file.find('/') != std::string::npos)
    throw std::runtime_error(path.string() + ": manifest names no model file in its own folder ('" + m.file + "')");
  return m;
}

int64_t highest_published_version(const std::string& dir) {
  int64_t highest = 0;
  if (auto manifest = Manifest::read(dir)) highest = manifest->version;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    long long version = 0;
    int consumed = 0;
    if (std::sscanf(name.c_str(), "model-v%lld.pt%n", &version, &consumed) == 1 &&
        consumed == static_cast<int>(name.size()))
      highest = std::max<int64_t>(highest, version);
  }
  return highest;
}

Publisher::Publisher(std::string dir, int64_t keep) : dir_(std::move(dir)), keep_(keep) {
  if (keep_ < 1) throw std::invalid_argument("publisher: keep must be at least 1, got " + std::to_string(keep_));
  fs::create_directories(dir_);
  // Versions only grow: a folder whose manifest was lost still holds its model files, and a server
  // may be serving the highest of them.
  version_ = highest_published_version(dir_);
}

int64_t Publisher::publish(SASRec& model, const IdMap& items, const std::string& config_yaml, nlohmann::json info) {
  const int64_t version = version_ + 1;
  const std::string file = version_file(version);
  info["version"] = version;
  info["file"] = file;
  info["published_at"] = unix_seconds();
  info["parameters"] = model->parameter_count();
  info["items"] = items.size();
  auto module = export_torchscript(model, items, config_yaml, info);
  save_torchscript(module, (fs::path(dir_) / file).string());
  write_file_atomically((fs::path(dir_) / "manifest.json").string(), info.dump(2) + "\n");
  version_ = version;
  // Old versions go only after the manifest names the new one.
  for (int64_t old = version - keep_; old >= 1; --old) {
    std::error_code ec;
    if (!fs::remove(fs::path(dir_) / version_file(old), ec)) break;
  }
  spdlog::debug("published {} (version {})", file, version);
  return version;
}

}  // namespace freshrec
