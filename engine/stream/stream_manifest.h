// A stream of several processes checkpoints as one version of N files and a manifest. Each rank writes
// its own file of version V (its users' histories, its replay reservoir and side files' sizes, with the
// model, the optimizers, the id maps, the counters and the source position, which every rank holds
// alike); once every rank's file is durable, rank 0 writes the manifest, stream.json, naming V and the
// world size; then each rank deletes its files of older versions. A crash anywhere leaves the manifest
// naming a version whose every file exists, so a resume needs no more than the manifest. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace freshrec {

struct StreamManifest {
  uint64_t version = 0;
  int world_size = 0;
  uint64_t events = 0;          // records consumed when the version was written
  std::string source_position;  // where the stream continues
  std::vector<std::string> shards;  // file names (in the manifest's folder), by rank
  std::string run_id;           // the launcher's id of the job that wrote it (TORCHELASTIC_RUN_ID; "": none)
};

// The manifest's file name in a stream's output folder, and a version's file of a rank there.
constexpr const char* kStreamManifest = "stream.json";
std::string stream_shard_name(uint64_t version, int rank);

// Writes `manifest` to `dir`/stream.json atomically (write_file_atomically).
void write_stream_manifest(const std::string& dir, const StreamManifest& manifest);
// The manifest in `dir`; nullopt when there is none. Throws naming the file when it does not parse,
// or names a shard outside the folder, or a count of shards other than its world size.
std::optional<StreamManifest> read_stream_manifest(const std::string& dir);
// Removes `rank`'s files in `dir` of versions other than `keep` (older ones left by a crash after the
// manifest moved on, and newer ones of a version a crash left unfinished).
void remove_other_stream_shards(const std::string& dir, int rank, uint64_t keep);
// Removes the manifest and every rank's files in `dir` (a fresh start).
void remove_stream_checkpoints(const std::string& dir);

// The file `rank` of a job of `world_size` resumes from, per the manifest in `dir`. Throws naming the
// folder when there is no manifest (with a note when a single process's stream.pt is there) and when
// the manifest's world size is not `world_size`: a stream's users are spread over its ranks, so it
// resumes on as many.
std::string stream_shard_to_resume(const std::string& dir, int rank, int world_size);

}  // namespace freshrec
