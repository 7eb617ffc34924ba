// A distributed stream's checkpoint versions; see stream_manifest.h.
#include "engine/stream/stream_manifest.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "engine/io/atomic_file.h"

namespace freshrec {
namespace {

namespace fs = std::filesystem;

// The version and rank of a shard's file name, when `name` is one.
bool parse_shard_name(const std::string& name, uint64_t& version, int& rank) {
  unsigned long long v = 0;
  int r = 0, consumed = 0;
  if (std::sscanf(name.c_str(), "stream-v%llu.rank%d.pt%n", &v, &r, &consumed) != 2 ||
      static_cast<size_t>(consumed) != name.size())
    return false;
  version = v, rank = r;
  return true;
}

}  // namespace

std::string stream_shard_name(uint64_t version, int rank) {
  char name[64];
  std::snprintf(name, sizeof name, "stream-v%06llu.rank%d.pt", static_cast<unsigned long long>(version), rank);
  return name;
}

void write_stream_manifest(const std::string& dir, const StreamManifest& m) {
  const nlohmann::json j{{"version", m.version},          {"world_size", m.world_size},
                         {"events", m.events},            {"source_position", m.source_position},
                         {"shards", m.shards},            {"run_id", m.run_id}};
  write_file_atomically((fs::path(dir) / kStreamManifest).string(), j.dump(2) + "\n");
}

std::optional<StreamManifest> read_stream_manifest(const std::string& dir) {
  const fs::path path = fs::path(dir) / kStreamManifest;
  if (!fs::exists(path)) return std::nullopt;
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  StreamManifest m;
  try {
    const auto j = nlohmann::json::parse(text.str());
    m.version = j.at("version").get<uint64_t>();
    m.world_size = j.at("world_size").get<int>();
    m.events = j.at("events").get<uint64_t>();
    m.source_position = j.at("source_position").get<std::string>();
    m.shards = j.at("shards").get<std::vector<std::string>>();
    m.run_id = j.value("run_id", "");
  } catch (const std::exception& e) {
    throw std::runtime_error(path.string() + ": not a stream manifest: " + e.what());
  }
  if (m.world_size < 2 || m.shards.size() != static_cast<size_t>(m.world_size))
    throw std::runtime_error(path.string() + ": names " + std::to_string(m.shards.size()) + " shards for a world size of " +
                             std::to_string(m.world_size));
  for (size_t r = 0; r < m.shards.size(); ++r) {
    uint64_t version = 0;
    int rank = -1;
    if (!parse_shard_name(m.shards[r], version, rank) || version != m.version || rank != static_cast<int>(r))
      throw std::runtime_error(path.string() + ": shard " + std::to_string(r) + " is '" + m.shards[r] + "', expected '" +
                               stream_shard_name(m.version, static_cast<int>(r)) + "'");
  }
  return m;
}

void remove_other_stream_shards(const std::string& dir, int rank, uint64_t keep) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    uint64_t version = 0;
    int owner = -1;
    const std::string name = entry.path().filename().string();
    if (parse_shard_name(name, version, owner) && owner == rank && version != keep) fs::remove(entry.path(), ec);
  }
}

void remove_stream_checkpoints(const std::string& dir) {
  std::error_code ec;
  fs::remove(fs::path(dir) / kStreamManifest, ec);  // first: no manifest names a file that is gone
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    uint64_t version = 0;
    int rank = -1;
    if (parse_shard_name(entry.path().filename().string(), version, rank)) fs::remove(entry.path(), ec);
  }
}

std::string stream_shard_to_resume(const std::string& dir, int rank, int world_size) {
  const auto manifest = read_stream_manifest(dir);
  if (!manifest) {
    const bool single = fs::exists(fs::path(dir) / "stream.pt");
    throw std::runtime_error(
        (fs::path(dir) / kStreamManifest).string() + ": nothing to resume for a job of " + std::to_string(world_size) +
        " processes" +
        (single ? " (stream.pt there was written by one process: resume it without a launcher)" : ""));
  }
  if (manifest->world_size != world_size)
    throw std::runtime_error((fs::path(dir) / kStreamManifest).string() + ": the stream was checkpointed by " +
                             std::to_string(manifest->world_size) + " processes and this job has " +
                             std::to_string(world_size) + " (WORLD_SIZE): each rank holds its own users' histories, "
                             "so the stream resumes on as many processes as wrote it");
  const fs::path shard = fs::path(dir) / manifest->shards[static_cast<size_t>(rank)];
  if (!fs::exists(shard))
    throw std::runtime_error(shard.string() + ": missing, but " + (fs::path(dir) / kStreamManifest).string() +
                             " names it (version " + std::to_string(manifest->version) + ")");
  return shard.string();
}

}  // namespace freshrec
