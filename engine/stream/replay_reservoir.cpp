// The replay reservoir; see replay_reservoir.h.
#include "engine/stream/replay_reservoir.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>

#include "engine/checkpoint/checkpoint.h"
#include "engine/splitmix.h"
#include "engine/stream/stream_state.h"

namespace freshrec {

void ReplayReservoir::remember(const Example& example, int64_t maxlen) {
  const uint64_t n = seen_++;
  const size_t kept = std::min<size_t>(example.length, static_cast<size_t>(maxlen));
  const std::vector<int32_t> history(example.history + example.length - kept, example.history + example.length);
  if (items_.size() < capacity_) {
    histories_.push_back(history);
    items_.push_back(example.item);
    return;
  }
  const uint64_t j = splitmix64(seed_ ^ (n * 0x2545f4914f6cdd1dULL)) % (n + 1);
  if (j < items_.size()) histories_[j] = history, items_[j] = example.item;
}

Example ReplayReservoir::draw(uint64_t batch, size_t k) const {
  const size_t j = splitmix64(seed_ * 31 + batch * 1000003ULL + k) % items_.size();
  return {histories_[j].data(), histories_[j].size(), items_[j]};
}

void ReplayReservoir::save(CheckpointInfo& info) const {
  std::vector<int64_t> lengths, flat;
  for (const auto& h : histories_) {
    lengths.push_back(static_cast<int64_t>(h.size()));
    flat.insert(flat.end(), h.begin(), h.end());
  }
  info.tensors["reservoir_lengths"] = torch::tensor(lengths, torch::kLong);
  info.tensors["reservoir_histories"] = torch::tensor(flat, torch::kLong);
  info.tensors["reservoir_items"] = torch::tensor(items_, torch::kLong);
  info.meta["reservoir_seen"] = seen_;
}

void ReplayReservoir::restore(const CheckpointInfo& info, const std::string& path, int64_t known) {
  seen_ = info.meta.at("reservoir_seen");
  items_ = stored_item_ids(info.tensors.at("reservoir_items"), 1, known, path, "the replay reservoir's targets");
  const auto lengths = stored_values(info.tensors.at("reservoir_lengths"));
  const auto flat = stored_item_ids(info.tensors.at("reservoir_histories"), 0, known, path,
                                    "the replay reservoir's histories");
  histories_.clear();
  size_t at = 0;
  for (int64_t n : lengths) {
    if (n < 0 || at + static_cast<size_t>(n) > flat.size()) throw std::runtime_error(path + ": corrupt replay reservoir");
    histories_.emplace_back(flat.begin() + at, flat.begin() + at + n);
    at += n;
  }
}

}  // namespace freshrec
