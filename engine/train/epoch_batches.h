// Which users a process trains on at each step of an epoch. Torch-free.
//
// One process: the epoch's shuffled users in batches of `batch_size`. In a data-parallel job of N,
// the same global batches, each rank a contiguous share of every one (a share may be empty). With
// local SGD, rank r owns the users at positions r, r + N, r + 2N... of the training users (its
// clients' data, fixed for the run), shuffles them per epoch, and takes batches of batch_size / N
// of them; every rank runs as many steps as the rank with the most users, and a rank whose users have
// run out takes empty steps.
#pragma once

#include <cstdint>
#include <vector>

namespace freshrec {

class EpochBatches {
 public:
  // `users`: the training users in their fixed order; `seed`: the epoch's.
  EpochBatches(const std::vector<int32_t>& users, int64_t batch_size, int rank, int world_size, bool owned_users,
               uint64_t seed);
  int64_t steps() const { return steps_; }
  // This rank's users at step `b` (0 <= b < steps()), possibly none.
  std::vector<int32_t> users(int64_t b) const;

 private:
  std::vector<int32_t> order_;  // the epoch's users this rank draws from, shuffled
  int64_t batch_ = 1, steps_ = 0;
  int rank_ = 0, world_ = 1;
  bool owned_ = false;
};

// The seeded Fisher-Yates shuffle the trainer uses (the same order for the same seed everywhere).
void shuffle_users(std::vector<int32_t>& users, uint64_t seed);

}  // namespace freshrec
