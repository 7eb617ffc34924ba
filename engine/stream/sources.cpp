// Stream sources; see sources.h.
#include "engine/stream/sources.h"

#include <nlohmann/json.hpp>

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "engine/data/ids.h"

#include <spdlog/spdlog.h>

#include <cstdio>

namespace freshrec {
namespace {

constexpr double kLatestTimestamp = 4102444800.0;  // 2100-01-01: later (or negative) is a unit error

// Checks shared by every source: ids valid (ids.h; a leading '-' reads as a negative id), timestamps
// plausible (seconds).
bool valid_event(const RawEvent& e, std::string& error) {
  for (const auto* id : {&e.user, &e.item}) {
    const char* what = id == &e.user ? "user" : "item";
    if (id->empty()) return error = std::string("empty ") + what + " id", false;
    if ((*id)[0] == '-') return error = std::string("negative ") + what + " id '" + printable(*id, 60) + "'", false;
    if (const std::string problem = id_problem(*id); !problem.empty())
      return error = std::string(what) + " id '" + printable(*id, 60) + "' is not a valid id: " + problem, false;
  }
  if (e.timestamp && (*e.timestamp < 0 || *e.timestamp > kLatestTimestamp))
    return error = "timestamp " + std::to_string(static_cast<long long>(*e.timestamp)) +
                   " is outside 1970..2100 (seconds expected)",
           false;
  return true;
}

std::string id_text(const nlohmann::json& v, const char* field, std::string& error) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<long long>());
  if (v.is_number_unsigned()) return std::to_string(v.get<unsigned long long>());
  error = std::string("field '") + field + "' must be a string or an integer";
  return "";
}

}  // namespace

uint64_t chain_digest(uint64_t digest, const std::string& line) {
  // FNV-1a, 64 bits, over the line and a separator: any change to any consumed line changes it.
  for (const char c : line) digest = (digest ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
  return (digest ^ 0x0a) * 0x100000001b3ULL;
}

std::string dead_letter_json(const StreamRecord& record) {
  nlohmann::ordered_json j{{"origin", printable(record.origin)}, {"position", record.position},
                           {"reason", printable(record.error, 400)}};
  if (is_valid_utf8(record.text)) {
    j["text"] = record.text;
  } else {
    j["text"] = printable(record.text, record.text.size() * 4);  // for reading; the bytes are below
    j["text_base64"] = base64_encode(record.text);
  }
  return j.dump();
}

LineFormat parse_line_format(const std::string& name) {
  if (name == "csv") return LineFormat::Csv;
  if (name == "json") return LineFormat::Json;
  throw DataError("unknown stream line format '" + name + "' (known: csv, json)");
}

std::optional<RawEvent> parse_stream_line(const std::string& line, LineFormat format, std::string& error) {
  RawEvent e;
  if (format == LineFormat::Json) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& x) {  // a syntax error, invalid UTF-8, a number out of range
      error = std::string("invalid JSON: ") + x.what();
      return std::nullopt;
    }
    if (!j.is_object()) return error = "a JSON event must be an object", std::nullopt;
    for (const auto& [key, value] : j.items()) {
      if (key == "user") e.user = id_text(value, "user", error);
      else if (key == "item") e.item = id_text(value, "item", error);
      else if (key == "timestamp" || key == "rating") {
        if (!value.is_number()) return error = "field '" + key + "' must be a number", std::nullopt;
        (key == "timestamp" ? e.timestamp : e.rating) = value.get<double>();
      } else {
        return error = "unknown field '" + key + "' (known: user, item, timestamp, rating)", std::nullopt;
      }
      if (!error.empty()) return std::nullopt;
    }
    if (!j.contains("user") || !j.contains("item")) return error = "missing field 'user' or 'item'", std::nullopt;
  } else {
    std::string reason;
    ReaderOptions csv;
    csv.format = LogFormat::Csv;
    csv.header = false;
    csv.user_column = "0", csv.item_column = "1";
    const auto fields = std::count(line.begin(), line.end(), ',') + 1;
    if (fields > 4) return error = "expected user,item[,timestamp[,rating]], found " + std::to_string(fields) + " fields", std::nullopt;
    if (fields >= 3) csv.time_column = "2";
    if (fields >= 4) csv.rating_column = "3";
    auto parsed = LineParser(csv).parse(line, reason, error);
    if (!parsed) return std::nullopt;
    e = *parsed;
  }
  if (!valid_event(e, error)) return std::nullopt;
  return e;
}

ReplaySource ReplaySource::from_file(const std::string& path, const ReaderOptions& options) {
  ReplaySource source;
  const auto lines = read_lines(path);
  LineParser parser(options);
  size_t first = 0;
  while (first < lines.size() && lines[first].find_first_not_of(" \t") == std::string::npos) ++first;
  if (first == lines.size()) throw DataError(path + ": empty file: no events");
  if (parser.expects_header()) parser.read_header(lines[first], path + ":" + std::to_string(first + 1)), ++first;
  struct Keyed {
    double time;
    StreamRecord record;
  };
  std::vector<Keyed> keyed;
  double last_time = -1;
  for (size_t i = first; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
    StreamRecord r;
    r.text = lines[i];
    r.origin = path + ":" + std::to_string(i + 1);
    std::string reason;
    r.event = parser.parse(lines[i], reason, r.error);
    if (r.event && !valid_event(*r.event, r.error)) r.event.reset();
    if (r.event) last_time = r.event->timestamp.value_or(static_cast<double>(i));
    keyed.push_back({last_time, std::move(r)});
  }
  std::stable_sort(keyed.begin(), keyed.end(), [](const Keyed& a, const Keyed& b) { return a.time < b.time; });
  for (auto& k : keyed) {
    k.record.position = source.records_.size();
    source.records_.push_back(std::move(k.record));
  }
  return source;
}

ReplaySource ReplaySource::from_log(const EventLog& log, const std::string& name) {
  ReplaySource source;
  for (const auto& e : log.events) {  // event logs are sorted by time already
    StreamRecord r;
    r.position = source.records_.size();
    r.event = RawEvent{log.users.external(e.user), log.items.external(e.item), static_cast<double>(e.timestamp),
                       std::nullopt};
    r.origin = name + ":" + std::to_string(r.position + 1);
    r.text = r.event->user + "," + r.event->item + "," + std::to_string(e.timestamp);
    source.records_.push_back(std::move(r));
  }
  return source;
}

uint64_t ReplaySource::quantile_position(double fraction) const {
  if (fraction <= 0 || records_.empty()) return 0;
  if (fraction >= 1) return records_.size();
  // The cut is a time, so that events sharing a second land on the same side.
  const auto& cut_record = records_[static_cast<size_t>(fraction * records_.size())];
  const double cut = cut_record.event ? cut_record.event->timestamp.value_or(0) : 0;
  uint64_t p = 0;
  while (p < records_.size() && (!records_[p].event || records_[p].event->timestamp.value_or(0) < cut)) ++p;
  return p;
}

uint64_t parse_position(const std::string& text, const char* source) {
  size_t used = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &used);
  } catch (const std::logic_error&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    throw DataError(std::string(source) + ": checkpoint position '" + text + "' is not an event count");
  return v;
}

void ReplaySource::seek(const std::string& position) { skip_to(parse_position(position, "replay source")); }

std::vector<RawEvent> ReplaySource::events_before(uint64_t position) const {
  std::vector<RawEvent> events;
  for (uint64_t p = 0; p < std::min<uint64_t>(position, records_.size()); ++p)
    if (records_[p].event) events.push_back(*records_[p].event);
  return events;
}

std::optional<StreamRecord> ReplaySource::next(int) {
  if (finished()) return std::nullopt;
  return records_[next_++];
}

std::optional<StreamRecord> LineStreamSource::next(int wait_ms) {
  // Standard input: wait for a line at most wait_ms, so a half-filled micro-batch can still be
  // flushed on time. Other streams (files, tests) are read directly.
  if (&in_ == &std::cin && wait_ms >= 0 && std::cin.rdbuf()->in_avail() <= 0) {
    pollfd fd{STDIN_FILENO, POLLIN, 0};
    if (::poll(&fd, 1, wait_ms) == 0) return std::nullopt;
  }
  std::string line;
  while (std::getline(in_, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank: not an event
    StreamRecord r;
    r.position = position_++;
    r.origin = name_ + ":" + std::to_string(r.position + 1);
    digest_ = chain_digest(digest_, line);
    r.text = line;
    r.event = parse_stream_line(line, format_, r.error);
    return r;
  }
  finished_ = true;
  return std::nullopt;
}

std::string LineStreamSource::position() const {
  char digest[17];
  std::snprintf(digest, sizeof digest, "%016llx", static_cast<unsigned long long>(digest_));
  return std::to_string(position_) + ":" + digest;
}

void LineStreamSource::seek(const std::string& text) {
  // "COUNT:DIGEST"; a bare count (checkpoints that kept no digest) skips unchecked.
  const size_t colon = text.find(':');
  const uint64_t position = parse_position(text.substr(0, colon), name_.c_str());
  while (position_ < position && next(-1)) {
  }
  if (position_ < position) {
    spdlog::warn("{}: the input ended after {} of the {} lines the checkpoint consumed: nothing new to learn from "
                 "(send the same input again from its start, then the new lines)",
                 name_, position_, position);
    return;
  }
  if (colon == std::string::npos) {
    spdlog::warn("{}: the checkpoint keeps no digest of its input; its first {} lines are skipped unchecked", name_,
                 position);
    return;
  }
  const std::string expected = text.substr(colon + 1);
  const std::string now = this->position();
  const std::string found = now.substr(now.find(':') + 1);
  if (found != expected)
    throw DataError(name_ + ": the first " + std::to_string(position) +
                    " lines of this input are not the ones the checkpoint consumed (digest " + found + ", saved " +
                    expected + "): on --resume, send the same input again from its start; the checkpoint skips what "
                    "it has applied");
}

}  // namespace freshrec
