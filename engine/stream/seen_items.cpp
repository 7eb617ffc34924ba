// Per-user distinct items on the device; see seen_items.h.
#include "engine/stream/seen_items.h"

#include <algorithm>

#include "engine/runtime.h"
#include "engine/splitmix.h"

namespace freshrec {

bool SeenItems::insert(uint64_t key) {
  if (2 * (used_ + 1) > cells_.size()) {  // at most half full
    std::vector<uint64_t> old(std::max<size_t>(cells_.size() * 2, 1024), 0);
    old.swap(cells_);
    used_ = 0;
    for (uint64_t k : old)
      if (k != 0) insert(k);
  }
  const size_t mask = cells_.size() - 1;
  for (size_t i = splitmix64_finalise(key) & mask;; i = (i + 1) & mask) {
    if (cells_[i] == key) return false;
    if (cells_[i] == 0) {
      cells_[i] = key;
      ++used_;
      return true;
    }
  }
}

int64_t SeenItems::add(int32_t slot, int32_t item) {
  if (slot >= static_cast<int32_t>(segments_.size())) segments_.resize(static_cast<size_t>(slot) + 1);
  Segment& s = segments_[static_cast<size_t>(slot)];
  const int64_t before = s.size;
  const uint64_t key = (static_cast<uint64_t>(slot) + 1) << 32 | static_cast<uint32_t>(item);
  if (!insert(key)) return before;
  if (s.size == s.capacity) {  // room for twice as many at the pool's end
    const int64_t capacity = std::max<int64_t>(8, 2 * s.capacity);
    if (s.on_device > 0) moves_.push_back({s.offset, pool_end_, s.on_device});
    s.offset = pool_end_, s.capacity = capacity;
    pool_end_ += capacity;
  }
  appends_.push_back({slot, s.size, item});
  ++s.size;
  return before;
}

void SeenItems::apply() {
  if (appends_.empty() && moves_.empty()) return;
  const auto options = torch::TensorOptions().dtype(torch::kInt).device(device_);
  if (!pool_.defined() || pool_.size(0) < pool_end_) {  // grow by doubling, keeping what is there
    auto bigger = torch::zeros({std::max<int64_t>(pool_end_, pool_.defined() ? 2 * pool_.size(0) : 1024)}, options);
    if (pool_.defined()) bigger.narrow(0, 0, pool_.size(0)).copy_(pool_);
    pool_ = bigger;
  }
  // Moves in the order they happened (a segment may move twice); their destinations are fresh space.
  for (const auto& m : moves_) pool_.narrow(0, m.to, m.count).copy_(pool_.narrow(0, m.from, m.count));
  if (!appends_.empty()) {
    std::vector<int64_t> positions, items;
    positions.reserve(appends_.size()), items.reserve(appends_.size());
    for (const auto& a : appends_) {
      positions.push_back(segments_[static_cast<size_t>(a.slot)].offset + a.index);
      items.push_back(a.item);
    }
    const auto n = static_cast<int64_t>(positions.size());
    pool_.index_put_({long_tensor(positions, {n}, device_)}, long_tensor(items, {n}, device_).to(torch::kInt));
  }
  for (const auto& a : appends_) {
    Segment& s = segments_[static_cast<size_t>(a.slot)];
    s.on_device = s.size;
  }
  moves_.clear();
  appends_.clear();
}

torch::Tensor SeenItems::excluded(const std::vector<int32_t>& slots, const std::vector<int64_t>& sizes,
                                  const torch::Tensor& targets) {
  TORCH_CHECK(slots.size() == sizes.size() && static_cast<int64_t>(slots.size()) == targets.size(0),
              "SeenItems::excluded: ", slots.size(), " slots, ", sizes.size(), " sizes, ", targets.size(0), " targets");
  apply();
  const auto rows = static_cast<int64_t>(slots.size());
  int64_t width = 1;
  std::vector<int64_t> offsets(slots.size());
  for (size_t r = 0; r < slots.size(); ++r) {
    const Segment& s = segments_.at(static_cast<size_t>(slots[r]));
    TORCH_CHECK(sizes[r] <= s.size, "SeenItems::excluded: row ", r, " asks for ", sizes[r], " items of ", s.size);
    offsets[r] = s.offset;
    width = std::max(width, sizes[r]);
  }
  if (!pool_.defined()) return torch::zeros({rows, width}, torch::TensorOptions().dtype(torch::kLong).device(device_));
  const auto columns = torch::arange(width, torch::TensorOptions().dtype(torch::kLong).device(device_)).unsqueeze(0);
  const auto valid = columns < long_tensor(sizes, {rows}, device_).unsqueeze(1);
  const auto index = (long_tensor(offsets, {rows}, device_).unsqueeze(1) + columns).clamp_max(pool_.size(0) - 1);
  const auto items = pool_.index_select(0, index.reshape({-1})).reshape({rows, width}).to(torch::kLong);
  return torch::where(valid & (items != targets.unsqueeze(1)), items, torch::zeros({}, items.options()));
}

}  // namespace freshrec
