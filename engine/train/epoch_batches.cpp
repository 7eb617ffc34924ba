// The users of each step; see epoch_batches.h.
#include "engine/train/epoch_batches.h"

#include <algorithm>
#include <random>
#include <stdexcept>

namespace freshrec {

void shuffle_users(std::vector<int32_t>& v, uint64_t seed) {
  std::mt19937_64 engine(seed);
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(((engine() >> 11) * (1.0 / 9007199254740992.0)) * i);
    std::swap(v[i - 1], v[j]);
  }
}

EpochBatches::EpochBatches(const std::vector<int32_t>& users, int64_t batch_size, int rank, int world_size,
                           bool owned_users, uint64_t seed)
    : rank_(rank), world_(world_size), owned_(owned_users) {
  if (batch_size <= 0 || world_size <= 0 || rank < 0 || rank >= world_size)
    throw std::invalid_argument("epoch batches: bad batch size, rank or world size");
  const auto n = static_cast<int64_t>(users.size());
  if (!owned_) {
    order_ = users;
    shuffle_users(order_, seed);
    batch_ = batch_size;
    steps_ = (n + batch_ - 1) / batch_;
    return;
  }
  for (int64_t i = rank; i < n; i += world_size) order_.push_back(users[static_cast<size_t>(i)]);
  // A seed of its own per rank: each shuffles its own users.
  shuffle_users(order_, seed * 31 + static_cast<uint64_t>(rank) + 1);
  batch_ = std::max<int64_t>(1, batch_size / world_size);
  const int64_t most = (n + world_size - 1) / world_size;  // rank 0 owns the most
  steps_ = (most + batch_ - 1) / batch_;
}

std::vector<int32_t> EpochBatches::users(int64_t b) const {
  const auto n = static_cast<int64_t>(order_.size());
  const int64_t first = std::min(n, b * batch_), last = std::min(n, (b + 1) * batch_);
  if (owned_) return {order_.begin() + first, order_.begin() + last};
  const int64_t rows = last - first;  // the global batch; this rank's contiguous share of it
  return {order_.begin() + first + rows * rank_ / world_, order_.begin() + first + rows * (rank_ + 1) / world_};
}

}  // namespace freshrec
