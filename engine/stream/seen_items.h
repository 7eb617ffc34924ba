// Each user's distinct items so far, kept on the model's device, so that a micro-batch's excluded
// items (for each event, what its user saw before it) are gathered there from O(batch) host data,
// however long the histories grow. The ranking and the exclude_seen loss read them.
//
// Host side, per user: a segment of one device pool (offset, size, capacity) and membership in a
// flat hash set of (user, item). An item new to its user is appended to the user's segment; a full
// segment moves to the pool's end with twice the room. Appends and moves are queued and applied in
// one go when a micro-batch asks for its excluded items, so the host does O(1) work per event and
// the device O(batch x widest row) per micro-batch. Host-to-device copies go through pinned memory,
// asynchronously, so a GPU stream never waits for the host nor the host for it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace freshrec {

class SeenItems {
 public:
  explicit SeenItems(torch::Device device) : device_(device) {}

  // Records that the user in `slot` saw `item`; returns how many distinct items the user had seen
  // before it (the length of its excluded row).
  int64_t add(int32_t slot, int32_t item);

  // The excluded items of a micro-batch, (B, max(1, max size)) int64 on the device: row r holds the
  // first sizes[r] distinct items of the user in slots[r] except targets[r], padded with 0 (the
  // padding item, never a candidate).
  torch::Tensor excluded(const std::vector<int32_t>& slots, const std::vector<int64_t>& sizes,
                         const torch::Tensor& targets);

  int64_t users() const { return static_cast<int64_t>(segments_.size()); }
  int64_t pool_size() const { return pool_end_; }

 private:
  struct Segment {
    int64_t offset = 0, size = 0, capacity = 0;
    int64_t on_device = 0;  // how many of its items the device pool holds at `offset`
  };
  struct Move {
    int64_t from, to, count;
  };
  struct Append {
    int32_t slot;
    int64_t index;
    int32_t item;
  };
  bool insert(uint64_t key);  // false when present
  void apply();               // queued moves and appends onto the device pool

  torch::Device device_;
  std::vector<Segment> segments_;
  int64_t pool_end_ = 0;
  torch::Tensor pool_;  // int32 on device_, at least pool_end_ long once applied
  std::vector<Move> moves_;
  std::vector<Append> appends_;
  // Open addressing over (slot + 1) << 32 | item; 0 marks an empty cell.
  std::vector<uint64_t> cells_;
  size_t used_ = 0;
};

}  // namespace freshrec
