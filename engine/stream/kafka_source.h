// A Kafka topic as a stream source, through librdkafka, as a member of a consumer group. The model's
// position is its own next offset in each partition, saved in its checkpoints; the group's committed
// offsets follow (committed only once a checkpoint holding them is durable). On resume, and on every
// assignment a rebalance brings, a partition continues at the model's own next offset, so no event
// is lost or applied twice. One model per consumer group: a partition held by another member is not
// read by this one meanwhile.
//
// In a stream of several processes each rank is one consumer of the group and owns a fixed share of
// the topic's partitions, those numbered p with p % ranks == rank, assigned to it directly rather than
// balanced by the group: a partition's users' histories live on the rank that reads it, so it never
// moves while the job runs, and a resume (on as many ranks) reads each partition where its rank's
// checkpoint stopped. Offsets are still committed to the group, so lag monitoring sees the job.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <set>
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
  int member = 0, members = 1;  // a job of several: this rank, of how many (partitions p % members == member)
  static KafkaOptions from_config(const Config& config);
};

class KafkaSource : public EventSource {
 public:
  explicit KafkaSource(const KafkaOptions& options);
  ~KafkaSource() override;
  std::optional<StreamRecord> next(int wait_ms) override;
  bool finished() const override;
  // {"topic": {"partition": next offset, ...}} as JSON text; seek() refuses another topic's.
  std::string position() const override;
  void seek(const std::string& position) override;
  void checkpointed(const std::string& position) override;
  bool partitioned() const override { return options_.members > 1; }

 private:
  class Rebalance;
  // A job of several: assigns this rank's partitions (its checkpoint's offsets, else the group's
  // committed ones), waiting up to 30 s for the topic's metadata. Throws naming the topic.
  void assign_share();
  KafkaOptions options_;
  std::unique_ptr<Rebalance> rebalance_;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer_;
  // partition -> next offset this model reads there: after the last record returned, or from the
  // checkpoint it resumed from. Kept for partitions currently held by another group member.
  std::map<int32_t, int64_t> next_offsets_;
  std::set<int32_t> assigned_partitions_;
  uint64_t sequence_ = 0;
  bool assigned_ = false;
  std::chrono::steady_clock::time_point last_message_ = std::chrono::steady_clock::now();
};

}  // namespace freshrec
