// Line-oriented readers for the supported log formats; see readers.h.
#include "engine/data/readers.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "engine/config/config.h"
#include "engine/data/generator.h"
#include "engine/data/ids.h"

namespace freshrec {
namespace {

constexpr size_t kMaxExamples = 20;

std::vector<std::string> split(const std::string& line, char separator, const std::string& multi) {
  std::vector<std::string> fields;
  if (!multi.empty()) {
    size_t start = 0;
    for (size_t pos; (pos = line.find(multi, start)) != std::string::npos; start = pos + multi.size())
      fields.push_back(line.substr(start, pos - start));
    fields.push_back(line.substr(start));
  } else if (separator == ' ') {  // whitespace-separated
    std::istringstream in(line);
    for (std::string f; in >> f;) fields.push_back(f);
  } else {
    size_t start = 0;
    for (size_t pos; (pos = line.find(separator, start)) != std::string::npos; start = pos + 1)
      fields.push_back(line.substr(start, pos - start));
    fields.push_back(line.substr(start));
  }
  return fields;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// The largest 0-based column index a header-less CSV layout may name.
constexpr int kMaxColumn = 1023;

// Timestamps become int64 seconds (or line orders): beyond this they would not fit.
constexpr double kLargestTimestamp = 9.0e18;

bool is_unsigned_integer(const std::string& s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::optional<double> parse_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace

std::vector<std::string> read_lines(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");  // reads plain files transparently too
  if (!file) throw DataError(path + ": cannot open (" + std::strerror(errno) + ")");
  std::string data;
  std::vector<char> buffer(1 << 20);
  for (int n; (n = gzread(file, buffer.data(), static_cast<unsigned>(buffer.size()))) > 0;)
    data.append(buffer.data(), n);
  int status = 0;
  const char* message = gzerror(file, &status);
  // zlib reports a compressed stream that ends early (a cut download, a full disk) as Z_BUF_ERROR.
  const bool truncated = status == Z_BUF_ERROR && !gzdirect(file);
  const std::string error = status < 0 && status != Z_BUF_ERROR ? message : "";
  gzclose(file);
  if (truncated) throw DataError(path + ": truncated compressed file: it ends before its end-of-stream marker");
  if (!error.empty()) throw DataError(path + ": read failed: " + error);
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < data.size()) {
    size_t end = data.find('\n', start);
    if (end == std::string::npos) end = data.size();
    std::string line = data.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

namespace {

int column_index(const std::vector<std::string>& header, const std::string& wanted, bool recbole,
                 const std::string& where) {
  if (wanted.empty()) return -1;
  for (size_t i = 0; i < header.size(); ++i) {
    std::string name = trim(header[i]);
    if (recbole) name = name.substr(0, name.find(':'));  // "user_id:token" -> "user_id"
    if (name == wanted) return static_cast<int>(i);
  }
  std::string names;
  for (const auto& h : header) names += (names.empty() ? "" : ", ") + trim(h);
  throw DataError(where + ": column '" + wanted + "' not in the header (columns: " + names + ")");
}

}  // namespace

LogFormat parse_log_format(const std::string& name) {
  static const std::map<std::string, LogFormat> formats = {
      {"sasrec", LogFormat::Sasrec},       {"movielens-dat", LogFormat::MovielensDat},
      {"movielens-csv", LogFormat::MovielensCsv}, {"movielens-udata", LogFormat::MovielensUdata},
      {"recbole", LogFormat::Recbole},     {"csv", LogFormat::Csv}};
  auto it = formats.find(name);
  if (it != formats.end()) return it->second;
  std::string known;
  for (const auto& [n, f] : formats) known += (known.empty() ? "" : ", ") + n;
  throw DataError("unknown data format '" + name + "' (known: " + known + ")");
}

ReaderOptions ReaderOptions::from_config(const Config& config) {
  ReaderOptions o;
  o.format = parse_log_format(config.get_string("data.format"));
  o.strict = config.get_bool("data.strict");
  o.min_rating = config.get_float("data.min_rating");
  const std::string& d = config.get_string("data.csv.delimiter");
  if (d == "tab" || d == "\\t" || d == "\t") {
    o.delimiter = '\t';
  } else if (d.size() == 1) {
    o.delimiter = d[0];
  } else {
    throw ConfigError(config.origin("data.csv.delimiter") + ": data.csv.delimiter: '" + d +
                      "' is not one character (or \"tab\")");
  }
  o.header = config.get_bool("data.csv.header");
  o.user_column = config.get_string("data.csv.user");
  o.item_column = config.get_string("data.csv.item");
  o.time_column = config.get_string("data.csv.time");
  o.rating_column = config.get_string("data.csv.rating");
  if (!o.header) {  // without a header, columns are 0-based indices
    for (const char* key : {"data.csv.user", "data.csv.item", "data.csv.time", "data.csv.rating"}) {
      const std::string& v = config.get_string(key);
      if (!v.empty() && !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
        throw ConfigError(config.origin(key) + ": " + key + ": '" + v +
                          "' is not a column index, and data.csv.header is false");
      if (v.size() > 4 || (!v.empty() && std::stoi(v) > kMaxColumn))
        throw ConfigError(config.origin(key) + ": " + key + ": column index " + v + " is not within 0 to " +
                          std::to_string(kMaxColumn));
    }
  }
  return o;
}

size_t ReadReport::error_count() const {
  size_t n = 0;
  for (const auto& [reason, count] : errors) n += count;
  return n;
}

std::string ReadReport::summary() const {
  std::ostringstream out;
  out << source << ": " << lines << " lines, " << events << " events";
  if (below_min_rating) out << ", " << below_min_rating << " below min_rating";
  if (!errors.empty()) {
    out << ", " << error_count() << " skipped (";
    bool first = true;
    for (const auto& [reason, count] : errors) out << (first ? "" : ", ") << reason << ": " << count, first = false;
    out << ")";
    for (const auto& e : examples) out << "\n  " << e;
    if (error_count() > examples.size()) out << "\n  ...";
  }
  return out.str();
}

bool LineParser::expects_header() const {
  return options_.format == LogFormat::MovielensCsv || options_.format == LogFormat::Recbole ||
         (options_.format == LogFormat::Csv && options_.header);
}

void LineParser::read_header(const std::string& line, const std::string& where) {
  switch (options_.format) {
    case LogFormat::MovielensCsv: {
      const auto header = split(line, ',', "");
      user_col_ = column_index(header, "userId", false, where);
      item_col_ = column_index(header, "movieId", false, where);
      rating_col_ = column_index(header, "rating", false, where);
      time_col_ = column_index(header, "timestamp", false, where);
      break;
    }
    case LogFormat::Recbole: {
      const auto header = split(line, '\t', "");
      user_col_ = column_index(header, "user_id", true, where);
      item_col_ = column_index(header, "item_id", true, where);
      // Rating and timestamp are optional in RecBole files.
      auto optional = [&](const std::string& name) {
        for (size_t i = 0; i < header.size(); ++i)
          if (trim(header[i]).substr(0, trim(header[i]).find(':')) == name) return static_cast<int>(i);
        return -1;
      };
      rating_col_ = optional("rating");
      time_col_ = optional("timestamp");
      numeric_ids_ = false;
      break;
    }
    case LogFormat::Csv: {
      const auto header = split(line, options_.delimiter, "");
      user_col_ = column_index(header, options_.user_column, false, where);
      item_col_ = column_index(header, options_.item_column, false, where);
      time_col_ = column_index(header, options_.time_column, false, where);
      rating_col_ = column_index(header, options_.rating_column, false, where);
      break;
    }
    default:
      break;
  }
}

std::optional<RawEvent> LineParser::parse(const std::string& line, std::string& reason,
                                          std::string& detail) const {
  // Layout of the header-less formats (the header formats set columns in read_header).
  int user_col = user_col_, item_col = item_col_, time_col = time_col_, rating_col = rating_col_;
  char separator = ',';
  std::string multi;
  bool numeric_ids = numeric_ids_;
  switch (options_.format) {
    case LogFormat::Sasrec: separator = ' ', user_col = 0, item_col = 1, time_col = rating_col = -1; break;
    case LogFormat::MovielensDat: multi = "::", user_col = 0, item_col = 1, rating_col = 2, time_col = 3; break;
    case LogFormat::MovielensUdata: separator = '\t', user_col = 0, item_col = 1, rating_col = 2, time_col = 3; break;
    case LogFormat::MovielensCsv: separator = ','; break;
    case LogFormat::Recbole: separator = '\t'; break;
    case LogFormat::Csv: {
      separator = options_.delimiter;
      numeric_ids = false;
      if (!options_.header) {  // columns given as 0-based indices
        auto index = [](const std::string& s) { return s.empty() ? -1 : std::stoi(s); };
        user_col = index(options_.user_column), item_col = index(options_.item_column);
        time_col = index(options_.time_column), rating_col = index(options_.rating_column);
      }
      break;
    }
  }
  const auto fields = split(line, separator, multi);
  const int needed = std::max({user_col, item_col, time_col, rating_col}) + 1;
  if (static_cast<int>(fields.size()) < needed) {
    reason = "too few fields";
    detail = "expected at least " + std::to_string(needed) + " fields, found " + std::to_string(fields.size());
    return std::nullopt;
  }
  RawEvent event;
  event.user = trim(fields[user_col]);
  event.item = trim(fields[item_col]);
  for (const auto* id : {&event.user, &event.item}) {
    const char* what = id == &event.user ? "user" : "item";
    if (id->empty()) {
      reason = std::string("empty ") + what + " id";
      detail = reason;
      return std::nullopt;
    }
    if (numeric_ids && !is_unsigned_integer(*id)) {
      reason = std::string("non-numeric ") + what + " id";
      detail = std::string(what) + " id '" + printable(*id, 60) + "' is not a non-negative integer";
      return std::nullopt;
    }
    if (const std::string problem = id_problem(*id); !problem.empty()) {
      reason = std::string("bad ") + what + " id";
      detail = std::string(what) + " id '" + printable(*id, 60) + "' is not a valid id: " + problem;
      return std::nullopt;
    }
  }
  if (time_col >= 0) {
    event.timestamp = parse_number(trim(fields[time_col]));
    if (!event.timestamp) {
      reason = "bad timestamp";
      detail = "timestamp '" + printable(trim(fields[time_col]), 60) + "' is not a number";
      return std::nullopt;
    }
    if (std::fabs(*event.timestamp) > kLargestTimestamp) {
      reason = "bad timestamp";
      detail = "timestamp '" + printable(trim(fields[time_col]), 60) + "' is out of range";
      return std::nullopt;
    }
  }
  if (rating_col >= 0) {
    event.rating = parse_number(trim(fields[rating_col]));
    if (!event.rating) {
      reason = "bad rating";
      detail = "rating '" + printable(trim(fields[rating_col]), 60) + "' is not a number";
      return std::nullopt;
    }
  }
  return event;
}

void append_event(EventLog& log, const RawEvent& raw, uint64_t order) {
  Event e;
  e.user = log.users.intern(raw.user);
  e.item = log.items.intern(raw.item);
  e.order = order;
  e.timestamp = raw.timestamp ? static_cast<int64_t>(std::llround(*raw.timestamp)) : static_cast<int64_t>(order);
  e.rating = raw.rating ? static_cast<float>(*raw.rating) : std::numeric_limits<float>::quiet_NaN();
  log.events.push_back(e);
}

EventLog event_log_from(const std::vector<RawEvent>& events) {
  EventLog log;
  for (size_t i = 0; i < events.size(); ++i) append_event(log, events[i], i);
  log.sort_by_time();
  return log;
}

bool is_blank_line(const std::string& line) { return trim(line).empty(); }

size_t skip_to_data(const std::vector<std::string>& lines, LineParser& parser, const std::string& path) {
  size_t first = 0;
  while (first < lines.size() && is_blank_line(lines[first])) ++first;
  if (first == lines.size()) throw DataError(path + ": empty file: no events");
  if (parser.expects_header()) parser.read_header(lines[first], path + ":" + std::to_string(first + 1)), ++first;
  return first;
}

EventLog read_event_log(const std::string& path, const ReaderOptions& options, ReadReport* report) {
  ReadReport local;
  ReadReport& r = report ? *report : local;
  r = ReadReport{};
  r.source = path;
  const auto lines = read_lines(path);
  LineParser parser(options);
  EventLog log;
  for (size_t i = skip_to_data(lines, parser, path); i < lines.size(); ++i) {
    if (is_blank_line(lines[i])) continue;
    ++r.lines;
    std::string reason, detail;
    auto raw = parser.parse(lines[i], reason, detail);
    if (!raw) {
      const std::string message = path + ":" + std::to_string(i + 1) + ": " + detail + ": '" + printable(lines[i]) + "'";
      if (options.strict) throw DataError(message);
      ++r.errors[reason];
      if (r.examples.size() < kMaxExamples) r.examples.push_back(message);
      continue;
    }
    if (options.min_rating > 0 && raw->rating && *raw->rating < options.min_rating) {
      ++r.below_min_rating;
      continue;
    }
    append_event(log, *raw, i);
  }
  r.events = log.events.size();
  if (log.events.empty())
    throw DataError(path + ": no valid events in " + std::to_string(r.lines) + " lines" +
                    (r.examples.empty() ? "" : " (first problem: " + r.examples.front() + ")"));
  log.sort_by_time();
  return log;
}

EventLog load_event_log(const Config& config, ReadReport* report) {
  if (config.get_string("data.format") == "generated") {
    EventLog log = generate_event_log(GeneratorOptions::from_config(config));
    if (report) {
      *report = ReadReport{};
      report->source = "generator";
      report->lines = report->events = log.events.size();
    }
    return log;
  }
  const std::string& path = config.get_string("data.path");
  if (path.empty())
    throw ConfigError(config.origin("data.format") + ": data.format is '" + config.get_string("data.format") +
                      "' but data.path is empty");
  return read_event_log(path, ReaderOptions::from_config(config), report);
}

}  // namespace freshrec
