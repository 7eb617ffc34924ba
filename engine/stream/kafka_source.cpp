// Kafka source; see kafka_source.h.
#include "engine/stream/kafka_source.h"

#include <librdkafka/rdkafkacpp.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <stdexcept>
#include <thread>

#include "engine/config/config.h"

namespace freshrec {

KafkaOptions KafkaOptions::from_config(const Config& config) {
  KafkaOptions o;
  o.brokers = config.get_string("stream.kafka.brokers");
  o.topic = config.get_string("stream.kafka.topic");
  o.group = config.get_string("stream.kafka.group");
  o.format = parse_line_format(config.get_string("stream.line_format"));
  o.idle_exit_ms = static_cast<int>(config.get_int("stream.kafka.idle_exit_ms"));
  o.properties = config.get_string_map("stream.kafka.properties");
  for (const auto& [key, value] : o.properties)
    if (key == "group.id" || key == "bootstrap.servers" || key == "enable.auto.commit" || key == "enable.auto.offset.store")
      throw ConfigError(config.origin("stream.kafka.properties") + ": stream.kafka.properties: '" + key +
                        "' is set by freshrec (" +
                        (key == "group.id" ? "use stream.kafka.group" : key == "bootstrap.servers" ? "use stream.kafka.brokers" : "offsets are committed with checkpoints") + ")");
  if (o.brokers.empty() || o.topic.empty())
    throw ConfigError("stream.source=kafka needs stream.kafka.brokers and stream.kafka.topic");
  return o;
}

// Where an assigned partition starts: where this model stopped reading it (its own next offset,
// kept across revocations, or the checkpoint's after a resume); a partition it never read starts at
// the group's committed offset (else at the beginning). So a rebalance (a member joining or leaving, a
// session timeout) never makes the model read an event twice or skip one. Both the eager and the
// cooperative (incremental) protocols are handled.
class KafkaSource::Rebalance : public RdKafka::RebalanceCb {
 public:
  explicit Rebalance(KafkaSource& source) : source_(source) {}
  void rebalance_cb(RdKafka::KafkaConsumer* consumer, RdKafka::ErrorCode err,
                    std::vector<RdKafka::TopicPartition*>& partitions) override {
    const bool incremental = consumer->rebalance_protocol() == "COOPERATIVE";
    if (err == RdKafka::ERR__ASSIGN_PARTITIONS) {
      for (auto* p : partitions) {
        auto it = source_.next_offsets_.find(p->partition());
        if (it != source_.next_offsets_.end()) p->set_offset(it->second);
        source_.assigned_partitions_.insert(p->partition());
      }
      const bool assigned = incremental ? report(consumer->incremental_assign(partitions), "assign")
                                        : report(consumer->assign(partitions), "assign");
      if (!assigned)  // not held: nothing to commit for them
        for (auto* p : partitions) source_.assigned_partitions_.erase(p->partition());
      source_.last_message_ = std::chrono::steady_clock::now();  // idle time counts from the assignment
      source_.assigned_ = true;
      spdlog::info("kafka: assigned {} partition(s) of {}", partitions.size(), source_.options_.topic);
    } else {
      for (auto* p : partitions) source_.assigned_partitions_.erase(p->partition());
      if (incremental) report(consumer->incremental_unassign(partitions), "unassign");
      else report(consumer->unassign(), "unassign");
      spdlog::info("kafka: {} partition(s) of {} revoked", partitions.size(), source_.options_.topic);
    }
  }

 private:
  // True when it went well; else logs why.
  static bool report(RdKafka::Error* error, const char* what) {
    if (!error) return true;
    spdlog::error("kafka: {} failed: {}", what, error->str());
    delete error;
    return false;
  }
  static bool report(RdKafka::ErrorCode code, const char* what) {
    if (code == RdKafka::ERR_NO_ERROR) return true;
    spdlog::error("kafka: {} failed: {}", what, RdKafka::err2str(code));
    return false;
  }
  KafkaSource& source_;
};

KafkaSource::KafkaSource(const KafkaOptions& options) : options_(options), rebalance_(std::make_unique<Rebalance>(*this)) {
  std::string error;
  std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
  auto set = [&](const std::string& key, const std::string& value) {
    if (conf->set(key, value, error) != RdKafka::Conf::CONF_OK)
      throw ConfigError("kafka: cannot set " + key + ": " + error);
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
  if (options.members > 1) return;  // assigned its share at the first next(), after a resume's seek()
  const auto err = consumer_->subscribe({options.topic});
  if (err != RdKafka::ERR_NO_ERROR)
    throw std::runtime_error("kafka: cannot subscribe to " + options.topic + ": " + RdKafka::err2str(err));
}

KafkaSource::~KafkaSource() {
  if (consumer_) consumer_->close();
}

void KafkaSource::assign_share() {
  std::string error;
  std::unique_ptr<RdKafka::Topic> topic(RdKafka::Topic::create(consumer_.get(), options_.topic, nullptr, error));
  if (!topic) throw std::runtime_error("kafka: topic " + options_.topic + ": " + error);
  int partitions = 0;
  std::string why;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (partitions == 0 && std::chrono::steady_clock::now() < deadline) {
    RdKafka::Metadata* raw = nullptr;
    const auto err = consumer_->metadata(false, topic.get(), &raw, 5000);
    std::unique_ptr<RdKafka::Metadata> metadata(raw);
    why = RdKafka::err2str(err);
    if (err == RdKafka::ERR_NO_ERROR && metadata && !metadata->topics()->empty()) {
      const auto* t = metadata->topics()->front();
      why = RdKafka::err2str(t->err());
      if (t->err() == RdKafka::ERR_NO_ERROR) partitions = static_cast<int>(t->partitions()->size());
    }
    if (partitions == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (partitions == 0)
    throw std::runtime_error("kafka: no partitions of topic " + options_.topic + " found in 30 s (" + why + ")");
  std::vector<RdKafka::TopicPartition*> share;
  for (int p = options_.member; p < partitions; p += options_.members) {
    auto it = next_offsets_.find(p);
    share.push_back(RdKafka::TopicPartition::create(
        options_.topic, p, it != next_offsets_.end() ? it->second : RdKafka::Topic::OFFSET_STORED));
    assigned_partitions_.insert(p);
  }
  const auto err = consumer_->assign(share);
  RdKafka::TopicPartition::destroy(share);
  if (err != RdKafka::ERR_NO_ERROR)
    throw std::runtime_error("kafka: cannot assign partitions of " + options_.topic + ": " + RdKafka::err2str(err));
  spdlog::info("kafka: rank {} of {} reads {} of the {} partitions of {}", options_.member, options_.members,
               assigned_partitions_.size(), partitions, options_.topic);
  if (assigned_partitions_.empty())
    spdlog::warn("kafka: topic {} has {} partitions for {} ranks: rank {} reads none", options_.topic, partitions,
                 options_.members, options_.member);
  last_message_ = std::chrono::steady_clock::now();  // idle time counts from the assignment
  assigned_ = true;
}

std::optional<StreamRecord> KafkaSource::next(int wait_ms) {
  if (options_.members > 1 && !assigned_) assign_share();
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
  nlohmann::json offsets = nlohmann::json::object();
  for (const auto& [partition, offset] : next_offsets_) offsets[std::to_string(partition)] = offset;
  return nlohmann::json{{options_.topic, offsets}}.dump();
}

void KafkaSource::seek(const std::string& position) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(position);
  } catch (const nlohmann::json::parse_error&) {
    throw DataError("kafka: checkpoint position '" + position + "' is not {topic: {partition: next offset}}");
  }
  if (!j.is_object() || j.size() != 1 || !j.begin().value().is_object())
    throw DataError("kafka: checkpoint position '" + position + "' is not {topic: {partition: next offset}}");
  if (j.begin().key() != options_.topic)
    throw DataError("kafka: the checkpoint read topic '" + j.begin().key() + "', not stream.kafka.topic '" +
                    options_.topic + "': its offsets mean nothing here (a new stream.output_dir starts afresh)");
  std::map<int32_t, int64_t> offsets;
  for (const auto& [partition, offset] : j.begin().value().items()) {
    size_t used = 0;
    int partition_number = -1;
    try {
      partition_number = std::stoi(partition, &used);
    } catch (const std::logic_error&) {
    }
    if (used != partition.size() || partition_number < 0 || !offset.is_number_integer() || offset.get<int64_t>() < 0)
      throw DataError("kafka: checkpoint position '" + position + "': '" + partition + "': " + offset.dump() +
                      " is not a partition and its next offset");
    offsets[partition_number] = offset.get<int64_t>();
  }
  next_offsets_ = std::move(offsets);
}

void KafkaSource::checkpointed(const std::string&) {
  // Only the partitions this member holds: a partition another member holds now is that member's to
  // commit (this model's own offset for it stays in its checkpoint).
  std::vector<RdKafka::TopicPartition*> offsets;
  for (const auto& [partition, offset] : next_offsets_)
    if (assigned_partitions_.count(partition)) offsets.push_back(RdKafka::TopicPartition::create(options_.topic, partition, offset));
  if (offsets.empty()) return;
  const auto err = consumer_->commitSync(offsets);
  RdKafka::TopicPartition::destroy(offsets);
  // The checkpoint is the source of truth on resume, so a failed commit only costs re-reading.
  if (err != RdKafka::ERR_NO_ERROR) spdlog::warn("kafka: offset commit failed: {}", RdKafka::err2str(err));
}

}  // namespace freshrec
