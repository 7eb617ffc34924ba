// Config: YAML files and key=value overrides, checked against the schema in schema.cpp.
#include "engine/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <sstream>

namespace freshrec {
namespace {

const KeySpec* find_spec(const std::string& key) {
  for (const auto& spec : config_schema())
    if (spec.name == key) return &spec;
  return nullptr;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

[[noreturn]] void bad_value(const KeySpec& spec, const std::string& text, const std::string& origin,
                            const std::string& expected) {
  throw ConfigError(origin + ": " + spec.name + ": '" + text + "' is not " + expected);
}

template <typename T>
T within_range(const KeySpec& spec, T value, const std::string& text, const std::string& origin) {
  if (static_cast<double>(value) < spec.min || static_cast<double>(value) > spec.max)
    bad_value(spec, text, origin, "within " + range_text(spec));
  return value;
}

ConfigValue parse_value(const KeySpec& spec, const YAML::Node& node, const std::string& origin) {
  const std::string text = node.IsScalar() ? node.Scalar() : YAML::Dump(node);
  try {
    switch (spec.type) {
      case KeyType::Int: {
        if (!node.IsScalar()) bad_value(spec, text, origin, "an integer");
        size_t used = 0;
        long long v = std::stoll(text, &used);
        if (used != text.size()) bad_value(spec, text, origin, "an integer");
        return within_range(spec, v, text, origin);
      }
      case KeyType::Float: {
        if (!node.IsScalar()) bad_value(spec, text, origin, "a number");
        size_t used = 0;
        double v = std::stod(text, &used);
        if (used != text.size() || !std::isfinite(v)) bad_value(spec, text, origin, "a finite number");
        return within_range(spec, v, text, origin);
      }
      case KeyType::Bool: {
        if (text == "true" || text == "yes" || text == "on" || text == "1") return true;
        if (text == "false" || text == "no" || text == "off" || text == "0") return false;
        bad_value(spec, text, origin, "true or false");
      }
      case KeyType::String:
        if (!node.IsScalar() && !node.IsNull()) bad_value(spec, text, origin, "a string");
        return node.IsNull() ? std::string() : text;
      case KeyType::Choice: {
        if (std::find(spec.choices.begin(), spec.choices.end(), text) == spec.choices.end())
          bad_value(spec, text, origin, "one of: " + join(spec.choices, ", "));
        return text;
      }
      case KeyType::IntList: {
        std::vector<long long> list;
        if (node.IsSequence()) {
          for (const auto& item : node) list.push_back(std::get<long long>(parse_value(
              KeySpec{spec.name, KeyType::Int, "", "", {}, spec.min, spec.max}, item, origin)));
        } else if (node.IsScalar()) {  // "1,5,10" from a command line
          std::stringstream ss(text);
          std::string part;
          while (std::getline(ss, part, ',')) {
            size_t used = 0;
            list.push_back(within_range(spec, std::stoll(part, &used), text, origin));
            if (used != part.size()) bad_value(spec, text, origin, "a list of integers");
          }
        } else {
          bad_value(spec, text, origin, "a list of integers");
        }
        if (list.empty()) bad_value(spec, text, origin, "a non-empty list of integers");
        return list;
      }
      case KeyType::StringMap: {
        StringMap map;
        if (node.IsNull()) return map;
        if (!node.IsMap()) bad_value(spec, text, origin, "a map of name: value");
        for (const auto& kv : node) {
          if (!kv.first.IsScalar() || !kv.second.IsScalar() || kv.first.Scalar().empty())
            bad_value(spec, text, origin, "a map of name: value (each value one string)");
          map[kv.first.Scalar()] = kv.second.Scalar();
        }
        return map;
      }
    }
  } catch (const std::logic_error&) {  // stoll/stod failures
    bad_value(spec, text, origin, spec.type == KeyType::Int ? "an integer" : "a number");
  }
  throw ConfigError(origin + ": " + spec.name + ": unhandled key type");
}

void flatten(const YAML::Node& node, const std::string& prefix, const std::string& file,
             std::vector<std::tuple<std::string, YAML::Node, std::string>>& out) {
  for (const auto& kv : node) {
    const std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    const std::string where = file + ":" + std::to_string(kv.first.Mark().line + 1);
    // A map is a section unless the key itself is a known leaf.
    if (kv.second.IsMap() && !find_spec(key)) {
      flatten(kv.second, key, file, out);
    } else {
      out.emplace_back(key, kv.second, where);
    }
  }
}

}  // namespace

std::string range_text(const KeySpec& spec) {
  std::ostringstream out;
  out << std::setprecision(15) << spec.min << " to " << spec.max;
  return out.str();
}

std::string closest_key(const std::string& unknown) {
  std::string best;
  size_t best_distance = 4;  // farther than this is no suggestion
  for (const auto& spec : config_schema()) {
    size_t d = edit_distance(unknown, spec.name);
    // A right leaf under the wrong section ("train.hidden") is also worth suggesting.
    const auto leaf = unknown.substr(unknown.rfind('.') + 1);
    if (spec.name.size() > leaf.size() &&
        spec.name.compare(spec.name.size() - leaf.size(), leaf.size(), leaf) == 0 &&
        spec.name[spec.name.size() - leaf.size() - 1] == '.')
      d = std::min<size_t>(d, 2);
    if (d < best_distance) best_distance = d, best = spec.name;
  }
  return best;
}

Config::Config() {
  for (const auto& spec : config_schema()) set(spec.name, spec.default_value, "default");
}

Config Config::from_yaml_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the config file");
  std::stringstream ss;
  ss << in.rdbuf();
  Config config;
  config.merge_yaml(ss.str(), path);
  return config;
}

Config Config::from_yaml_string(const std::string& text, const std::string& origin) {
  Config config;
  config.merge_yaml(text, origin);
  return config;
}

Config Config::from_stored_yaml(const std::string& text, const std::string& origin, std::vector<std::string>* skipped) {
  Config config;
  std::vector<std::string> local;
  config.merge_yaml(text, origin, skipped ? skipped : &local);
  return config;
}

void Config::merge_yaml(const std::string& text, const std::string& origin, std::vector<std::string>* skipped) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(origin + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  if (root.IsNull()) return;
  if (!root.IsMap()) throw ConfigError(origin + ": the config must be a map of sections");
  std::vector<std::tuple<std::string, YAML::Node, std::string>> entries;
  flatten(root, "", origin, entries);
  for (const auto& [key, node, where] : entries) {
    const KeySpec* spec = find_spec(key);
    if (!spec && skipped) {
      skipped->push_back(key);
      continue;
    }
    if (!spec) {
      const std::string hint = closest_key(key);
      throw ConfigError(where + ": unknown config key '" + key + "'" +
                        (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
    }
    values_[key] = parse_value(*spec, node, where);
    origins_[key] = where;
  }
}

void Config::apply_override(const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("command line: '" + assignment + "' is not key=value");
  set(assignment.substr(0, eq), assignment.substr(eq + 1), "command line");
}

void Config::set(const std::string& key, const std::string& text, const std::string& origin) {
  const KeySpec* spec = find_spec(key);
  if (!spec) {
    const std::string hint = closest_key(key);
    throw ConfigError(origin + ": unknown config key '" + key + "'" +
                      (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
  }
  // Strings are taken as written (so "," or "#" need no YAML quoting); other values are parsed as
  // YAML, which also gives "[1, 5, 10]" lists.
  YAML::Node node;
  if (spec->type == KeyType::String) {
    node = YAML::Node(text);
  } else {
    try {
      node = YAML::Load(text);
    } catch (const YAML::Exception&) {
      node = YAML::Node(text);  // not YAML: parse_value reports it against the key's type
    }
  }
  values_[key] = parse_value(*spec, node, origin);
  origins_[key] = origin;
}

const ConfigValue& Config::value(const std::string& key, KeyType expected) const {
  const KeySpec* spec = find_spec(key);
  if (!spec) throw ConfigError("internal: unknown config key '" + key + "'");
  const bool compatible = spec->type == expected ||
                          (expected == KeyType::String && spec->type == KeyType::Choice);
  if (!compatible) throw ConfigError("internal: config key '" + key + "' read with the wrong type");
  return values_.at(key);
}

long long Config::get_int(const std::string& key) const { return std::get<long long>(value(key, KeyType::Int)); }
double Config::get_float(const std::string& key) const { return std::get<double>(value(key, KeyType::Float)); }
bool Config::get_bool(const std::string& key) const { return std::get<bool>(value(key, KeyType::Bool)); }
const std::string& Config::get_string(const std::string& key) const {
  return std::get<std::string>(value(key, KeyType::String));
}
const std::vector<long long>& Config::get_int_list(const std::string& key) const {
  return std::get<std::vector<long long>>(value(key, KeyType::IntList));
}
const StringMap& Config::get_string_map(const std::string& key) const {
  return std::get<StringMap>(value(key, KeyType::StringMap));
}

namespace {
bool names_a_secret(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* word : {"password", "secret", "jaas", "key", "token", "credential"})
    if (name.find(word) != std::string::npos) return true;
  return false;
}
}  // namespace

std::string Config::origin(const std::string& key) const {
  auto it = origins_.find(key);
  return it == origins_.end() ? "unknown" : it->second;
}

std::string Config::to_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // section path currently open
  for (const auto& spec : config_schema()) {
    std::vector<std::string> parts;
    std::stringstream ss(spec.name);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    const std::vector<std::string> sections(parts.begin(), parts.end() - 1);
    size_t common = 0;
    while (common < open.size() && common < sections.size() && open[common] == sections[common]) ++common;
    for (size_t i = open.size(); i > common; --i) out << YAML::EndMap;
    open.resize(common);
    for (size_t i = common; i < sections.size(); ++i) {
      out << YAML::Key << sections[i] << YAML::Value << YAML::BeginMap;
      open.push_back(sections[i]);
    }
    out << YAML::Key << parts.back() << YAML::Value;
    const auto& v = values_.at(spec.name);
    std::visit([&](const auto& x) {
      using T = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<T, std::vector<long long>>) {
        out << YAML::Flow << YAML::BeginSeq;
        for (auto i : x) out << i;
        out << YAML::EndSeq;
      } else if constexpr (std::is_same_v<T, StringMap>) {
        out << YAML::BeginMap;
        for (const auto& [name, text] : x)
          out << YAML::Key << name << YAML::Value << YAML::DoubleQuoted << (names_a_secret(name) ? "<redacted>" : text);
        out << YAML::EndMap;
      } else if constexpr (std::is_same_v<T, std::string>) {
        out << YAML::DoubleQuoted << x;
      } else if constexpr (std::is_same_v<T, double>) {
        std::ostringstream num;
        num.precision(17);
        num << x;
        out << num.str();
      } else {
        out << x;
      }
    }, v);
  }
  for (size_t i = 0; i < open.size(); ++i) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace freshrec
