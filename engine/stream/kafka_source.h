// A Kafka topic as a stream source, through librdkafka, as a member of a consumer group. Offsets are
// committed only when a checkpoint that holds them is durable, and on resume the consumer starts at
// the checkpoint's offsets, so no event is lost or applied twice.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "engine/stream/sources.h"

namespace RdKafka {
class KafkaConsumer;
}

namespace freshrec {

class Config;

struct KafkaOptions {
  std::string brokers;  // bootstrap servers, host:port[,host:port]
  std::string topic;
  std::string group = "freshrec";
  LineFormat format = LineFormat::Json;
  int idle_exit_ms = 0;  // > 0: the source ends after this long without a message (replays, tests)
  std::map<std::string, std::string> properties;  // further librdkafka settings (session.timeout.ms, ...)
  static KafkaOptions from_config(const Config& config);
};

class KafkaSource : public EventSource {
 public:
  explicit KafkaSource(const KafkaOptions& options);
  ~KafkaSource() override;
  std::optional<StreamRecord> next(int wait_ms) override;
  bool finished() const override;
  // {"partition": next offset, ...} as JSON text.
  std::string position() const override;
  void seek(const std::string& position) override;
  void checkpointed(const std::string& position) override;

 private:
  class Rebalance;
  KafkaOptions options_;
  std::unique_ptr<Rebalance> rebalance_;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer_;
  std::map<int32_t, int64_t> next_offsets_;  // partition -> next offset to read
  std::map<int32_t, int64_t> resume_offsets_;  // from a checkpoint, applied when partitions are assigned
  uint64_t sequence_ = 0;
  bool assigned_ = false;
  std::chrono::steady_clock::time_point last_message_ = std::chrono::steady_clock::now();
};

}  // namespace freshrec
