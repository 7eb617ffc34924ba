// The event log every reader produces: (user, item, timestamp, rating) with external ids mapped to
// dense internal ids. Item id 0 is reserved for padding, so items are 1..num_items; users 0..n-1.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace freshrec {

// External id (as written in the source) <-> dense internal id, in order of first appearance.
class IdMap {
 public:
  explicit IdMap(int32_t first_id = 0) : first_id_(first_id) {}

  // Internal id of `external`, adding it if new.
  int32_t intern(const std::string& external);
  // Internal id, or -1 when unknown.
  int32_t find(const std::string& external) const;
  const std::string& external(int32_t internal) const;
  size_t size() const { return externals_.size(); }
  int32_t first_id() const { return first_id_; }
  int32_t end_id() const { return first_id_ + static_cast<int32_t>(externals_.size()); }

  // The external ids in internal-id order as a JSON array of strings (any valid id round-trips);
  // deserialize also reads the older one-id-a-line form, and checks every id (ids.h) and duplicates.
  std::string serialize() const;
  static IdMap deserialize(const std::string& text, int32_t first_id);

 private:
  int32_t first_id_;
  std::vector<std::string> externals_;
  std::unordered_map<std::string, int32_t> index_;
};

struct Event {
  int32_t user;       // internal user id
  int32_t item;       // internal item id, >= 1
  int64_t timestamp;  // seconds, or the line order when the source has no time
  float rating;       // NaN when the source has none
  uint64_t order;     // position in the source, breaks timestamp ties stably
};

struct EventLog {
  std::vector<Event> events;
  IdMap users{0};
  IdMap items{1};
  int32_t num_users() const { return static_cast<int32_t>(users.size()); }
  int32_t num_items() const { return static_cast<int32_t>(items.size()); }
  // Sort by (timestamp, source order): the order a stream would deliver them.
  void sort_by_time();
};

}  // namespace freshrec
