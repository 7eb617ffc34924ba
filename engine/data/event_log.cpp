// IdMap and EventLog helpers.
#include "engine/data/event_log.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <sstream>
#include <stdexcept>

#include "engine/data/ids.h"

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

std::string IdMap::serialize() const { return nlohmann::json(externals_).dump(); }

IdMap IdMap::deserialize(const std::string& text, int32_t first_id) {
  // A JSON array of strings; maps stored one id a line (before ids were stored as JSON) read too.
  std::vector<std::string> ids;
  const bool json = !text.empty() && text.front() == '[';
  const nlohmann::json j = json ? nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false) : nlohmann::json();
  if (json && !j.is_discarded()) {
    if (!j.is_array()) throw std::runtime_error("id map: not a JSON array of ids");
    for (const auto& id : j) {
      if (!id.is_string()) throw std::runtime_error("id map: an entry is not a string: " + id.dump());
      ids.push_back(id.get<std::string>());
    }
  } else {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) ids.push_back(line);
  }
  IdMap map(first_id);
  for (const std::string& id : ids) {
    if (const std::string problem = id_problem(id); !problem.empty())
      throw std::runtime_error("id map: id '" + printable(id, 60) + "' is not a valid id: " + problem);
    if (map.find(id) >= 0) throw std::runtime_error("id map: duplicate external id '" + printable(id, 60) + "'");
    map.intern(id);
  }
  return map;
}

void EventLog::sort_by_time() {
  std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
    return a.timestamp != b.timestamp ? a.timestamp < b.timestamp : a.order < b.order;
  });
}

}  // namespace freshrec
