// Readers of interaction logs: SASRec `user item` text, MovieLens ratings.dat / ratings.csv / u.data,
// RecBole atomic .inter files, and a generic CSV/TSV with a column mapping. Files may be gzipped.
// A malformed line is reported with file and line number: fatal in strict mode, else counted.
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/data/event_log.h"

namespace freshrec {

class Config;

class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class LogFormat { Sasrec, MovielensDat, MovielensCsv, MovielensUdata, Recbole, Csv };
LogFormat parse_log_format(const std::string& name);  // throws DataError naming the known formats

struct ReaderOptions {
  LogFormat format = LogFormat::Sasrec;
  bool strict = false;
  double min_rating = 0;  // events rated below are dropped (counted, not errors)
  // Generic CSV only.
  char delimiter = ',';
  bool header = true;
  std::string user_column = "user", item_column = "item", time_column, rating_column;

  static ReaderOptions from_config(const Config& config);
};

// What a read saw: counts by reason and the first messages, so nothing passes silently.
struct ReadReport {
  std::string source;
  size_t lines = 0;
  size_t events = 0;
  size_t below_min_rating = 0;
  std::map<std::string, size_t> errors;  // reason -> count
  std::vector<std::string> examples;     // first messages, "file:line: reason: text"
  size_t error_count() const;
  std::string summary() const;
};

// One parsed line before ids are interned.
struct RawEvent {
  std::string user, item;
  std::optional<double> timestamp;
  std::optional<double> rating;
};

// Parses the lines of one source. Holds the column layout found in the header, if any.
class LineParser {
 public:
  explicit LineParser(ReaderOptions options) : options_(std::move(options)) {}
  bool expects_header() const;
  // Reads the header line; throws DataError (always fatal) when a needed column is missing.
  void read_header(const std::string& line, const std::string& where);
  // Parses one data line; on error returns nullopt and sets `reason` (a short category) and
  // `detail` (what exactly was wrong).
  std::optional<RawEvent> parse(const std::string& line, std::string& reason, std::string& detail) const;

 private:
  ReaderOptions options_;
  // Columns found in a header; the header-less formats have fixed layouts (see parse).
  int user_col_ = 0, item_col_ = 1, time_col_ = -1, rating_col_ = -1;
  bool numeric_ids_ = true;
};

// Interns one parsed event into a log (ids mapped, line order kept for ties; no timestamp: `order`).
void append_event(EventLog& log, const RawEvent& raw, uint64_t order);

// An event log of parsed events, ids interned in order of appearance.
EventLog event_log_from(const std::vector<RawEvent>& events);

// All lines of a plain or gzipped file (trailing \r removed).
std::vector<std::string> read_lines(const std::string& path);

// Whether a line holds only spaces, tabs or line ends: not an event, wherever it stands.
bool is_blank_line(const std::string& line);
// Where a file's data lines start: after its leading blank lines and, when the format has one, the
// header, which `parser` reads. Throws DataError naming `path` when the file has only blank lines.
size_t skip_to_data(const std::vector<std::string>& lines, LineParser& parser, const std::string& path);

// Reads a whole file into an event log (ids interned, sorted by time). Throws DataError when the
// file is missing or empty, a header lacks a column, or (strict) at the first malformed line.
EventLog read_event_log(const std::string& path, const ReaderOptions& options, ReadReport* report);

// The event log named by a config: the generator or a file reader.
EventLog load_event_log(const Config& config, ReadReport* report);

}  // namespace freshrec
