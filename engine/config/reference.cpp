// The configuration reference as Markdown, rendered from the schema so that it cannot drift from it
// (`freshrec config --markdown`; docs/CONFIG.md is its output, checked by a test).
#include <sstream>

#include "engine/config/config.h"

namespace freshrec {
namespace {

std::string range(const KeySpec& spec) { return ", " + range_text(spec); }

std::string type_name(const KeySpec& spec) {
  switch (spec.type) {
    case KeyType::Int: return "integer" + range(spec);
    case KeyType::Float: return "number" + range(spec);
    case KeyType::Bool: return "true / false";
    case KeyType::String: return "string";
    case KeyType::IntList: return "list of integers" + range(spec);
    case KeyType::StringMap: return "map of name: value";
    case KeyType::Choice: {
      std::string out;
      for (size_t i = 0; i < spec.choices.size(); ++i) out += (i ? " \\| " : "") + ("`" + spec.choices[i] + "`");
      return out;
    }
  }
  return "";
}

// Table cells: a '|' would end the cell, a newline the row.
std::string cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

}  // namespace

std::string config_markdown() {
  std::ostringstream md;
  md << "# Configuration reference\n\n"
     << "Every key `freshrec` accepts, with its type, default and meaning. Generated from the schema in\n"
     << "`engine/config/schema.cpp` by `./build/freshrec config --markdown > docs/CONFIG.md`; a test fails when this\n"
     << "file and the schema disagree, so edit the schema, not this file.\n\n"
     << "Keys are set in a YAML file (`--config FILE`, nested: `model:` then `hidden: 64`) or on the command line\n"
     << "(`model.hidden=64`, after the file, so they win). An unknown key or a bad value is an error that names the\n"
     << "key, the value and where it came from (`file.yaml:12` or `command line`). `--print-config` shows the\n"
     << "resulting configuration of any subcommand.\n";
  for (const auto& section : config_sections()) {
    md << "\n## " << section.title << "\n\n" << section.description << "\n\n"
       << "| key | type | default | meaning |\n|---|---|---|---|\n";
    for (const auto& spec : config_schema()) {
      const ConfigSection* owner = config_section_of(spec.name);
      if (owner != &section) continue;
      const std::string default_value = spec.default_value.empty() ? "\"\"" : spec.default_value;
      md << "| `" << spec.name << "` | " << type_name(spec) << " | `" << cell(default_value) << "` | " << cell(spec.help)
         << " |\n";
    }
  }
  return md.str();
}

}  // namespace freshrec
