// Configuration as data: a flat map of dotted keys ("model.hidden") validated against one schema.
// Every key has a type, a default and a help line; unknown keys and bad values are errors that name
// the key, the value and where it came from (file:line or the command line).
#pragma once

#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace freshrec {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class KeyType { Int, Float, Bool, String, Choice, IntList, StringMap };

struct KeySpec {
  std::string name;
  KeyType type;
  std::string default_value;         // written as in YAML
  std::string help;
  std::vector<std::string> choices = {};  // KeyType::Choice only
  // Int, Float and IntList (each element): the allowed range, both ends included. Every numeric key
  // has one, so no value can ask for an allocation or a setting the engine cannot take.
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
};

// The schema: every known key. Defined in schema.cpp.
const std::vector<KeySpec>& config_schema();

// The schema's sections, by key prefix ("stream.kafka" before "stream"), each with a title and a
// paragraph for the reference (`freshrec config --markdown`). Every key belongs to one.
struct ConfigSection {
  std::string prefix;
  std::string title;
  std::string description;
};
const std::vector<ConfigSection>& config_sections();
// The section a key belongs to: the longest prefix that matches it (nullptr when none does).
const ConfigSection* config_section_of(const std::string& key);

// The reference of every key as Markdown (docs/CONFIG.md is this text, checked by a test).
std::string config_markdown();

using StringMap = std::map<std::string, std::string>;
using ConfigValue = std::variant<long long, double, bool, std::string, std::vector<long long>, StringMap>;

class Config {
 public:
  // All keys at their defaults.
  Config();
  static Config from_yaml_file(const std::string& path);
  static Config from_yaml_string(const std::string& text, const std::string& origin = "<string>");
  // For configs stored in checkpoints by other versions: keys this build does not know are skipped
  // (and listed in `skipped`), the rest is checked as usual.
  static Config from_stored_yaml(const std::string& text, const std::string& origin, std::vector<std::string>* skipped);

  // "key=value" from the command line; the value is parsed as YAML scalar or flow list.
  void apply_override(const std::string& assignment);
  void set(const std::string& key, const std::string& value, const std::string& origin);

  long long get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;  // String and Choice keys
  const std::vector<long long>& get_int_list(const std::string& key) const;
  const StringMap& get_string_map(const std::string& key) const;

  // Nested YAML with every key, for checkpoints and `--print-config`. Values of a StringMap entry
  // whose name says it is a secret (password, secret, jaas, key) are written as "<redacted>".
  std::string to_yaml() const;
  // Where a key's value came from: "default", "file.yaml:12", "command line".
  std::string origin(const std::string& key) const;

 private:
  void merge_yaml(const std::string& text, const std::string& origin, std::vector<std::string>* skipped = nullptr);
  const ConfigValue& value(const std::string& key, KeyType expected) const;

  std::map<std::string, ConfigValue> values_;
  std::map<std::string, std::string> origins_;
};

// A numeric key's range as text, "1 to 65536", for messages and the reference.
std::string range_text(const KeySpec& spec);

// Closest known key to a misspelt one ("" if none is close): for "did you mean" messages.
std::string closest_key(const std::string& unknown);

}  // namespace freshrec
