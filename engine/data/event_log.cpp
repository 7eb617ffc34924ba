// IdMap and EventLog helpers.
#include "engine/data/event_log.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace freshrec {

int32_t IdMap::intern(const std::string& external) {
  auto [it, inserted] = index_.try_emplace(external, end_id());
  if (inserted) externals_.push_back(external);
  return it->second;
}

int32_t IdMap::find(const std::string& external) const {
  auto it = index_.find(external);
  return it == index_.end() ? -1 : it->second;
}

const std::string& IdMap::external(int32_t internal) const {
  if (internal < first_id_ || internal >= end_id())
    throw std::out_of_range("id map: internal id " + std::to_string(internal) + " is outside [" +
                            std::to_string(first_id_) + ", " + std::to_string(end_id()) + ")");
  return externals_[internal - first_id_];
}

std::string IdMap::serialize() const {
  std::string out;
  for (const auto& e : externals_) out += e + "\n";
  return out;
}

IdMap IdMap::deserialize(const std::string& text, int32_t first_id) {
  IdMap map(first_id);
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (map.find(line) >= 0) throw std::runtime_error("id map: duplicate external id '" + line + "'");
    map.intern(line);
  }
  return map;
}

void EventLog::sort_by_time() {
  std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    return a.timestamp != b.timestamp ? a.timestamp < b.timestamp : a.order < b.order;
  });
}

}  // namespace freshrec
