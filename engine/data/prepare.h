// `freshrec data prepare`: a subset of an interaction log in the log's own format (users by id range,
// minimum events per user and per item), so a published data set can be cut to what a config expects.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/data/readers.h"

namespace freshrec {

struct PrepareOptions {
  // Keep users whose external id is an integer in [first, last] (all users when unset).
  std::optional<std::pair<int64_t, int64_t>> users;
  // Keep events whose user / item has at least this many events among those the user range keeps
  // (one pass: both counts are taken before either filter, as SASRec's preprocessing does).
  int64_t min_user_events = 0, min_item_events = 0;
};

struct PrepareReport {
  size_t lines = 0;             // data lines read (blank lines and the header not counted)
  size_t malformed = 0;         // lines the reader could not parse (dropped; fatal with data.strict)
  size_t below_min_rating = 0;  // dropped by data.min_rating
  size_t outside_users = 0;     // dropped by the user range
  size_t few_user_events = 0;   // dropped by min_user_events
  size_t few_item_events = 0;   // dropped by min_item_events (and not already by the user count)
  size_t kept = 0;
};

// Parses "FIRST-LAST" (e.g. "1-2999"); throws DataError naming the text otherwise.
std::pair<int64_t, int64_t> parse_id_range(const std::string& text);

// Reads `input` with `reader` and writes the kept lines, as read (header included, line endings
// normalised to \n, input order), to `output`, gzipped when its name ends in ".gz". The output is
// written atomically and is never the input. Throws DataError for a missing or empty input, a
// malformed line under reader.strict, a non-integer user id with a user range, or nothing kept.
PrepareReport prepare_log(const std::string& input, const ReaderOptions& reader, const PrepareOptions& options,
                          const std::string& output);

}  // namespace freshrec
