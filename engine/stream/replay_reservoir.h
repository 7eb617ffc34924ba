// Past training examples kept by reservoir sampling (every example seen so far is equally likely to be
// in it), replayed beside each micro-batch against forgetting (stream.replay_share). Its choices come
// from counter-based random numbers: the n-th draw depends only on (seed, n), so a resumed run makes
// the same choices without saving generator state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/stream/stream_examples.h"

namespace freshrec {

struct CheckpointInfo;

class ReplayReservoir {
 public:
  ReplayReservoir(size_t capacity, uint64_t seed) : capacity_(capacity), seed_(seed) {}
  // Offers an example; the reservoir keeps its newest `maxlen` history items (what replay reads).
  void remember(const Example& example, int64_t maxlen);
  bool empty() const { return items_.empty(); }
  // The k-th example replayed beside micro-batch `batch`. A view into the reservoir: valid until the
  // next remember().
  Example draw(uint64_t batch, size_t k) const;
  // Into and out of a stream checkpoint (`known`: the items of its id map; `path` names it in errors).
  void save(CheckpointInfo& info) const;
  void restore(const CheckpointInfo& info, const std::string& path, int64_t known);

 private:
  size_t capacity_;
  uint64_t seed_;
  std::vector<std::vector<int32_t>> histories_;
  std::vector<int64_t> items_;
  uint64_t seen_ = 0;
};

}  // namespace freshrec
