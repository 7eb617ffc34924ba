// Item side features; see item_features.h.
#include "engine/data/item_features.h"

#include "engine/data/ids.h"
#include "engine/data/readers.h"

namespace freshrec {
namespace {

std::vector<std::string> split_features(const std::string& list) {
  std::vector<std::string> out;
  if (list == "(no genres listed)") return out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t bar = list.find('|', start);
    const std::string feature = list.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
    if (!feature.empty()) out.push_back(feature);
    if (bar == std::string::npos) break;
    start = bar + 1;
  }
  return out;
}

}  // namespace

std::unordered_map<std::string, std::vector<std::string>> read_item_features(const std::string& path) {
  const std::vector<std::string> lines = read_lines(path);
  std::unordered_map<std::string, std::vector<std::string>> features;
  std::unordered_map<std::string, size_t> first_line;
  bool dat = false, decided = false;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (is_blank_line(line)) continue;
    auto fail = [&](const std::string& what) {
      throw DataError(path + ":" + std::to_string(i + 1) + ": " + what + ": '" + printable(line) + "'");
    };
    if (!decided) {
      decided = true;
      dat = line.find("::") != std::string::npos;
      // A header: its first field is not an id of the data (movieId, item, id).
      if (!dat) {
        const std::string first = line.substr(0, line.find(','));
        if (first == "movieId" || first == "item" || first == "id" || first == "item_id") continue;
      }
    }
    std::string id, list;
    if (dat) {
      const size_t a = line.find("::"), b = line.rfind("::");
      if (a == std::string::npos) fail("no '::' separator");
      id = line.substr(0, a);
      list = b == a ? "" : line.substr(b + 2);
    } else {
      const size_t a = line.find(','), b = line.rfind(',');
      if (a == std::string::npos) fail("no ',' separator");
      id = line.substr(0, a);
      list = line.substr(b + 1);
      if (list.find('"') != std::string::npos)
        fail("a quoted features field (features are the last, unquoted field: Feature|Feature)");
    }
    const std::string problem = id_problem(id);
    if (!problem.empty()) fail("invalid item id (" + problem + ")");
    const auto [it, fresh] = first_line.emplace(id, i + 1);
    if (!fresh) fail("item " + id + " is listed twice (first at line " + std::to_string(it->second) + ")");
    features[id] = split_features(list);
  }
  if (features.empty()) throw DataError(path + ": no item features in it");
  return features;
}

}  // namespace freshrec
