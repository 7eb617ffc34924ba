// Subsets of interaction logs; see prepare.h.
#include "engine/data/prepare.h"

#include <zlib.h>

#include <filesystem>
#include <unordered_map>
#include <vector>

#include "engine/data/ids.h"
#include "engine/io/atomic_file.h"

namespace freshrec {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::optional<int64_t> parse_integer(const std::string& text) {
  if (text.empty()) return std::nullopt;
  size_t used = 0;
  try {
    const long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// Gzip (RFC 1952) of the lines, one deflate stream, written as it is made.
void write_gzip(std::ostream& out, const std::vector<const std::string*>& lines) {
  z_stream z{};
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw DataError("gzip: cannot start the compressor");
  std::vector<unsigned char> chunk(1 << 16);
  auto feed = [&](const char* data, size_t size, int flush) {
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data));
    z.avail_in = static_cast<uInt>(size);
    do {
      z.next_out = chunk.data();
      z.avail_out = static_cast<uInt>(chunk.size());
      deflate(&z, flush);
      out.write(reinterpret_cast<const char*>(chunk.data()), static_cast<std::streamsize>(chunk.size() - z.avail_out));
    } while (z.avail_out == 0 || (flush == Z_FINISH && z.avail_in > 0));
  };
  for (const std::string* line : lines) {
    feed(line->data(), line->size(), Z_NO_FLUSH);
    feed("\n", 1, Z_NO_FLUSH);
  }
  feed(nullptr, 0, Z_FINISH);
  deflateEnd(&z);
}

void write_lines(const std::string& path, const std::vector<const std::string*>& lines) {
  save_atomically(path, [&](std::ostream& out) {
    if (ends_with(path, ".gz")) {
      write_gzip(out, lines);
    } else {
      for (const std::string* line : lines) out << *line << '\n';
    }
  });
}

}  // namespace

std::pair<int64_t, int64_t> parse_id_range(const std::string& text) {
  const size_t dash = text.find('-', 1);  // from 1: a leading '-' would be a sign
  const auto first = dash == std::string::npos ? std::nullopt : parse_integer(text.substr(0, dash));
  const auto last = dash == std::string::npos ? std::nullopt : parse_integer(text.substr(dash + 1));
  if (!first || !last || *first > *last)
    throw DataError("--users '" + text + "': expected FIRST-LAST, two integers with FIRST <= LAST (e.g. 1-2999)");
  return {*first, *last};
}

PrepareReport prepare_log(const std::string& input, const ReaderOptions& reader, const PrepareOptions& options,
                          const std::string& output) {
  std::error_code ec;
  if (std::filesystem::exists(output, ec) && std::filesystem::equivalent(input, output, ec))
    throw DataError(output + ": the output would overwrite the input");
  const std::vector<std::string> lines = read_lines(input);
  LineParser parser(reader);
  PrepareReport report;
  // The same lines the reader takes (prepare keeps what read_event_log would read).
  const size_t first_data = skip_to_data(lines, parser, input);
  std::vector<const std::string*> kept;
  if (parser.expects_header()) kept.push_back(&lines[first_data - 1]);  // the header stays
  const size_t header_lines = kept.size();

  struct Candidate {
    const std::string* line;
    std::string user, item;
  };
  std::vector<Candidate> candidates;
  std::unordered_map<std::string, int64_t> user_events, item_events;
  for (size_t i = first_data; i < lines.size(); ++i) {
    if (is_blank_line(lines[i])) continue;
    ++report.lines;
    const std::string where = input + ":" + std::to_string(i + 1);
    std::string reason, detail;
    const auto raw = parser.parse(lines[i], reason, detail);
    if (!raw) {
      if (reader.strict) throw DataError(where + ": " + detail + ": '" + printable(lines[i]) + "'");
      ++report.malformed;
      continue;
    }
    if (reader.min_rating > 0 && raw->rating && *raw->rating < reader.min_rating) {
      ++report.below_min_rating;
      continue;
    }
    if (options.users) {
      const auto user = parse_integer(raw->user);
      if (!user) throw DataError(where + ": user id '" + raw->user + "' is not an integer, which --users needs");
      if (*user < options.users->first || *user > options.users->second) {
        ++report.outside_users;
        continue;
      }
    }
    ++user_events[raw->user], ++item_events[raw->item];
    candidates.push_back({&lines[i], raw->user, raw->item});
  }
  for (const Candidate& c : candidates) {
    if (user_events[c.user] < options.min_user_events) {
      ++report.few_user_events;
    } else if (item_events[c.item] < options.min_item_events) {
      ++report.few_item_events;
    } else {
      kept.push_back(c.line);
    }
  }
  report.kept = kept.size() - header_lines;
  if (report.kept == 0) throw DataError(input + ": no event passes the filters; nothing written to " + output);
  write_lines(output, kept);
  return report;
}

}  // namespace freshrec
