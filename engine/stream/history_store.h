// The per-user history store of the stream: each user's items (internal ids, oldest first), keyed by
// external user id: all of them, or the last `keep`. The model reads the newest maxlen of them; all
// are filtered from the ranking of the user's next event, as the offline evaluation filters every
// seen item. New users get a fresh slot; nothing is hashed, so users never collide.
//
// Within a micro-batch the store only appends (settle() cuts the users it touched back to `keep`
// between micro-batches), so an event's history is named by (slot, length at arrival), never copied.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/event_log.h"

namespace freshrec {

class HistoryStore {
 public:
  // keep: items kept per user (0: all).
  explicit HistoryStore(int64_t keep = 0) : keep_(keep) {}

  // Slot of a user, created if new (`created` tells which).
  int32_t user_slot(const std::string& external_user, bool* created = nullptr);
  // The user's items, oldest first (at most keep after settle()).
  const std::vector<int32_t>& history(int32_t slot) const { return histories_.at(slot); }
  // Appends; the items pushed since the last settle() are never cut before it.
  void push(int32_t slot, int32_t item);
  // Cuts every user pushed to since the last settle() to the newest `keep` items.
  void settle();
  size_t users() const { return histories_.size(); }
  // How many of a history of n items are kept: the newest `keep` (all with keep 0).
  size_t kept(size_t n) const { return keep_ > 0 ? std::min<size_t>(n, static_cast<size_t>(keep_)) : n; }
  int64_t keep() const { return keep_; }
  const IdMap& user_ids() const { return users_; }

  // Flat form for checkpoints (settled: at most keep items per user): the user map as text, lengths
  // and items as int64 arrays.
  std::string serialize_users() const { return users_.serialize(); }
  std::vector<int64_t> lengths() const;
  std::vector<int64_t> flat_items() const;
  // A store written with a larger `keep` is cut to this one's newest items.
  static HistoryStore restore(int64_t keep, const std::string& users, const std::vector<int64_t>& lengths,
                              const std::vector<int64_t>& items);

 private:
  int64_t keep_;
  IdMap users_{0};
  std::vector<std::vector<int32_t>> histories_;
  std::vector<int32_t> unsettled_;  // slots pushed to since the last settle(), once each
  std::vector<bool> is_unsettled_;
};

}  // namespace freshrec
