// Kafka source; see kafka_source.h.
#include "engine/stream/kafka_source.h"

#include <librdkafka/rdkafkacpp.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "engine/config/config.h"

namespace freshrec {

KafkaOptions KafkaOptions::from_config(const Config& config) {
  KafkaOptions o;
  o.brokers = config.get_string("stream.kafka.brokers");
  o.topic = config.get_string("stream.kafka.topic");
  o.group = config.get_string("stream.kafka.group");
  o.format = parse_line_format(config.get_string("stream.line_format"));
  o.idle_exit_ms = static_cast<int>(config.get_int("stream.kafka.idle_exit_ms"));
  if (o.brokers.empty() || o.topic.empty())
    throw ConfigError("stream.source=kafka needs stream.kafka.brokers and stream.kafka.topic");
  return o;
}

// On assignment, partitions start at the checkpoint's offsets (else at the group's committed
// offsets, else at the beginning).
class KafkaSource::Rebalance : public RdKafka::RebalanceCb {
 public:
  explicit Rebalance(KafkaSource& source) : source_(source) {}
  void rebalance_cb(RdKafka::KafkaConsumer* consumer, RdKafka::ErrorCode err,
                    std::vector<RdKafka::TopicPartition*>& partitions) override {
    if (err == RdKafka::ERR__ASSIGN_PARTITIONS) {
      for (auto* p : partitions) {
        auto it = source_.resume_offsets_.find(p->partition());
        if (it != source_.resume_offsets_.end()) p->set_offset(it->second);
      }
      consumer->assign(partitions);
      source_.last_message_ = std::chrono::steady_clock::now();  // idle time counts from the assignment
      source_.assigned_ = true;
      spdlog::info("kafka: assigned {} partition(s) of {}", partitions.size(), source_.options_.topic);
    } else {
      consumer->unassign();
    }
  }

 private:
  KafkaSource& source_;
};

KafkaSource::KafkaSource(const KafkaOptions& options) : options_(options), rebalance_(std::make_unique<Rebalance>(*this)) {
  std::string error;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  auto set = [&](const std::string& key, const std::string& value) {
    if (conf->set(key, value, error) != RdKafka::Conf::CONF_OK)
      throw std::runtime_error("kafka: cannot set " + key + "=" + value + ": " + error);
  };
  set("bootstrap.servers", options.brokers);
  set("group.id", options.group);
  set("enable.auto.commit", "false");  // offsets are committed with checkpoints only
  set("enable.auto.offset.store", "false");
  set("auto.offset.reset", "earliest");
  for (const auto& [key, value] : options.properties) set(key, value);
  if (conf->set("rebalance_cb", rebalance_.get(), error) != RdKafka::Conf::CONF_OK)
    throw std::runtime_error("kafka: " + error);
  consumer_.reset(RdKafka::KafkaConsumer::create(conf.get(), error));
  if (!consumer_) throw std::runtime_error("kafka: cannot create a consumer: " + error);
  const auto err = consumer_->subscribe({options.topic});
  if (err != RdKafka::ERR_NO_ERROR)
    throw std::runtime_error("kafka: cannot subscribe to " + options.topic + ": " + RdKafka::err2str(err));
}

KafkaSource::~KafkaSource() {
  if (consumer_) consumer_->close();
}

std::optional<StreamRecord> KafkaSource::next(int wait_ms) {
  std::unique_ptr<RdKafka::Message> message(consumer_->consume(std::max(wait_ms, 0)));
  switch (message->err()) {
    case RdKafka::ERR_NO_ERROR: {
      last_message_ = std::chrono::steady_clock::now();
      StreamRecord r;
      r.position = sequence_++;
      r.origin = "kafka:" + message->topic_name() + "[" + std::to_string(message->partition()) + "]@" +
                 std::to_string(message->offset());
      r.text.assign(static_cast<const char*>(message->payload()), message->len());
      while (!r.text.empty() && (r.text.back() == '\n' || r.text.back() == '\r')) r.text.pop_back();
      r.event = parse_stream_line(r.text, options_.format, r.error);
      next_offsets_[message->partition()] = message->offset() + 1;
      return r;
    }
    case RdKafka::ERR__TIMED_OUT:
    case RdKafka::ERR__PARTITION_EOF:
      return std::nullopt;
    default:  // broker trouble: librdkafka reconnects by itself; say so and keep polling
      spdlog::warn("kafka: {}", message->errstr());
      return std::nullopt;
  }
}

bool KafkaSource::finished() const {
  if (options_.idle_exit_ms <= 0) return false;
  // Joining the group can take seconds (the broker delays the first rebalance): give it 30 s more.
  const auto limit = std::chrono::milliseconds(options_.idle_exit_ms + (assigned_ ? 0 : 30000));
  return std::chrono::steady_clock::now() - last_message_ >= limit;
}

std::string KafkaSource::position() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [partition, offset] : next_offsets_) j[std::to_string(partition)] = offset;
  return j.dump();
}

void KafkaSource::seek(const std::string& position) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(position);
  } catch (const nlohmann::json::parse_error&) {
    throw DataError("kafka: checkpoint position '" + position + "' is not a partition -> offset map");
  }
  for (const auto& [partition, offset] : j.items()) {
    resume_offsets_[std::stoi(partition)] = offset.get<int64_t>();
    next_offsets_[std::stoi(partition)] = offset.get<int64_t>();
  }
}

void KafkaSource::checkpointed(const std::string&) {
  std::vector<RdKafka::TopicPartition*> offsets;
  for (const auto& [partition, offset] : next_offsets_)
    offsets.push_back(RdKafka::TopicPartition::create(options_.topic, partition, offset));
  const auto err = consumer_->commitSync(offsets);
  RdKafka::TopicPartition::destroy(offsets);
  // The checkpoint is the source of truth on resume, so a failed commit only costs re-reading.
  if (err != RdKafka::ERR_NO_ERROR) spdlog::warn("kafka: offset commit failed: {}", RdKafka::err2str(err));
}

}  // namespace freshrec
