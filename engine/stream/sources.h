// Where a stream's events come from: a log file replayed in timestamp order, or lines arriving on an
// input stream (standard input) as CSV `user,item[,timestamp[,rating]]` or JSON lines
// {"user": ..., "item": ..., "timestamp": ...}. Each record carries its position, so a checkpoint can
// say exactly where to continue; a record that does not parse carries the reason instead.
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include "engine/data/readers.h"

namespace freshrec {

struct StreamRecord {
  uint64_t position = 0;          // 0-based index in the source's delivery order
  std::optional<RawEvent> event;  // empty: malformed, see error
  std::string error;
  std::string text;  // the line as received (for dead letters)
  std::string origin;  // "file:line" or "stdin:line"
};

class EventSource {
 public:
  virtual ~EventSource() = default;
  // The next record; a live source waits at most `wait_ms` and returns nullopt when nothing came
  // (then finished() tells whether the source has ended).
  virtual std::optional<StreamRecord> next(int wait_ms) = 0;
  virtual bool finished() const = 0;
  // Where to continue after every record returned so far, as text for checkpoints ...
  virtual std::string position() const = 0;
  // ... and going back there on resume.
  virtual void seek(const std::string& position) = 0;
  // Told once a checkpoint holding position() is durable (a Kafka source commits its offsets then).
  virtual void checkpointed(const std::string& /*position*/) {}
  // In a stream of several processes: whether each rank's source delivers records of its own (a Kafka
  // consumer's share of the partitions) rather than the whole stream (a replayed log, which every rank
  // reads whole).
  virtual bool partitioned() const { return false; }
};

// A recorded log delivered in timestamp order: a file parsed whole (stable: ties keep file order; a
// malformed line is delivered where its predecessor's timestamp puts it), or an event log in memory
// (the generator's).
class ReplaySource : public EventSource {
 public:
  static ReplaySource from_file(const std::string& path, const ReaderOptions& options);
  static ReplaySource from_log(const EventLog& log, const std::string& name);
  std::optional<StreamRecord> next(int wait_ms = 0) override;
  bool finished() const override { return next_ >= records_.size(); }
  std::string position() const override { return std::to_string(next_); }
  void seek(const std::string& position) override;
  void skip_to(uint64_t position) { next_ = std::min<uint64_t>(position, records_.size()); }
  const std::vector<StreamRecord>& records() const { return records_; }
  // Position of the first record at or after the `fraction` time quantile: what comes before it is
  // history for pre-training, the rest is the stream.
  uint64_t quantile_position(double fraction) const;
  // The well-formed events before `position`, in delivery order (the history a stream starts from).
  std::vector<RawEvent> events_before(uint64_t position) const;

 private:
  std::vector<StreamRecord> records_;
  uint64_t next_ = 0;
};

// The dead-letter line (one JSON object) of a malformed record: origin, position, reason and the
// record's bytes, losslessly: `text` when they are valid UTF-8; otherwise `text_base64` holds them and
// `text` shows them with \xNN escapes. Never throws on any bytes.
std::string dead_letter_json(const StreamRecord& record);

enum class LineFormat { Csv, Json };
LineFormat parse_line_format(const std::string& name);

// Parses one CSV or JSON line into an event; on failure sets `error` and returns nullopt.
std::optional<RawEvent> parse_stream_line(const std::string& line, LineFormat format, std::string& error);

// A running digest of the lines a source consumed (FNV-1a over each line and a separator).
uint64_t chain_digest(uint64_t digest, const std::string& line);

// Lines from an input stream (standard input), one event per line, in arrival order. The contract
// on resume: the producer sends the same input again from its start; the lines the checkpoint
// consumed are read and skipped. Its position is "COUNT:DIGEST", the count of non-blank lines read and
// a digest of all of them, so seek() can tell a producer that did not replay from the start (an
// error) from one whose input ended early (a warning: nothing new).
class LineStreamSource : public EventSource {
 public:
  LineStreamSource(std::istream& in, LineFormat format, std::string name = "stdin")
      : in_(in), format_(format), name_(std::move(name)) {}
  std::optional<StreamRecord> next(int wait_ms = 0) override;
  bool finished() const override { return finished_; }
  std::string position() const override;
  void seek(const std::string& position) override;

 private:
  static constexpr uint64_t kDigestSeed = 0xcbf29ce484222325ULL;  // FNV-1a's offset basis
  std::istream& in_;
  LineFormat format_;
  std::string name_;
  uint64_t position_ = 0;
  uint64_t digest_ = kDigestSeed;
  bool finished_ = false;
};

}  // namespace freshrec
