// The per-user history store of the stream: each user's last `maxlen` items (internal ids), keyed by
// external user id. New users get a fresh slot; nothing is hashed, so users never collide.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/event_log.h"

namespace freshrec {

class HistoryStore {
 public:
  explicit HistoryStore(int64_t maxlen = 200) : maxlen_(maxlen) {}

  // Slot of a user, created if new (`created` tells which).
  int32_t user_slot(const std::string& external_user, bool* created = nullptr);
  // The user's items, oldest first (at most maxlen).
  const std::vector<int32_t>& history(int32_t slot) const { return histories_.at(slot); }
  void push(int32_t slot, int32_t item);
  size_t users() const { return histories_.size(); }
  int64_t maxlen() const { return maxlen_; }
  const IdMap& user_ids() const { return users_; }

  // Flat form for checkpoints: the user map as text, lengths and items as int64 arrays.
  std::string serialize_users() const { return users_.serialize(); }
  std::vector<int64_t> lengths() const;
  std::vector<int64_t> flat_items() const;
  static HistoryStore restore(int64_t maxlen, const std::string& users, const std::vector<int64_t>& lengths,
                              const std::vector<int64_t>& items);

 private:
  int64_t maxlen_;
  IdMap users_{0};
  std::vector<std::vector<int32_t>> histories_;
};

}  // namespace freshrec
