// librdkafka's built-in mock cluster for tests: real Kafka-protocol brokers on loopback, inside the
// test process, which other processes (freshrec ranks) can reach at bootstraps().
#pragma once

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>  // after rdkafka.h, as it requires
#include <librdkafka/rdkafkacpp.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace freshrec::testing_support {

class MockKafka {
 public:
  explicit MockKafka(int brokers) {
    char error[512];
    handle_ = rd_kafka_new(RD_KAFKA_PRODUCER, rd_kafka_conf_new(), error, sizeof error);
    if (!handle_) throw std::runtime_error(error);
    cluster_ = rd_kafka_mock_cluster_new(handle_, brokers);
    if (!cluster_) throw std::runtime_error("cannot start the mock Kafka cluster");
  }
  ~MockKafka() {
    producer_.reset();
    rd_kafka_mock_cluster_destroy(cluster_);
    rd_kafka_destroy(handle_);
  }
  MockKafka(const MockKafka&) = delete;
  MockKafka& operator=(const MockKafka&) = delete;
  std::string bootstraps() const { return rd_kafka_mock_cluster_bootstraps(cluster_); }
  void create_topic(const std::string& topic, int partitions) {
    rd_kafka_mock_topic_create(cluster_, topic.c_str(), partitions, 1);
  }
  void restart_broker(int id) {
    rd_kafka_mock_broker_set_down(cluster_, id);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    rd_kafka_mock_broker_set_up(cluster_, id);
  }
  // Messages [first, last) of `messages`, message i to partition `partition_of(i)` (i % 2 without it).
  void produce(const std::string& topic, const std::vector<std::string>& messages, size_t first = 0,
               size_t last = std::string::npos, const std::function<int32_t(size_t)>& partition_of = {}) {
    if (!producer_) {
      std::string error;
      std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
      conf->set("bootstrap.servers", bootstraps(), error);
      producer_.reset(RdKafka::Producer::create(conf.get(), error));
      if (!producer_) throw std::runtime_error("mock Kafka: " + error);
    }
    for (size_t i = first; i < std::min(last, messages.size()); ++i) {
      auto& m = messages[i];
      const int32_t partition = partition_of ? partition_of(i) : static_cast<int32_t>(i % 2);
      while (producer_->produce(topic, partition, RdKafka::Producer::RK_MSG_COPY, const_cast<char*>(m.data()),
                                m.size(), nullptr, 0, 0, nullptr) == RdKafka::ERR__QUEUE_FULL)
        producer_->poll(10);
    }
    if (producer_->flush(10000) != RdKafka::ERR_NO_ERROR) throw std::runtime_error("mock Kafka: messages not delivered");
  }

 private:
  rd_kafka_t* handle_;
  rd_kafka_mock_cluster_t* cluster_;
  std::unique_ptr<RdKafka::Producer> producer_;
};

}  // namespace freshrec::testing_support
