// Test-then-train over a stream; see stream_learner.h.
#include "engine/stream/stream_learner.h"

#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "engine/checkpoint/checkpoint.h"
#include "engine/data/sequences.h"
#include "engine/eval/evaluator.h"
#include "engine/runtime.h"
#include "engine/runtime.h"
#include "engine/stream/history_store.h"
#include "engine/train/losses.h"
#include "engine/train/sparse_adam.h"

namespace freshrec {
namespace {

namespace fs = std::filesystem;

// One event waiting in the micro-batch: the user's history as it was when the event arrived.
struct Pending {
  std::vector<int32_t> history;
  int64_t item;
  bool cold;  // the item was new when the event arrived: the model could not have ranked it
  std::chrono::steady_clock::time_point arrival;
};

constexpr size_t kMaxLatencySamples = 1 << 20;

// Counter-based random numbers: the n-th draw depends only on (seed, n), so a resumed run makes the
// same reservoir and replay choices without saving generator state.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Past training examples kept by reservoir sampling (every example seen so far is equally likely to
// be in it), replayed beside each micro-batch against forgetting.
struct Reservoir {
  std::vector<std::vector<int32_t>> histories;
  std::vector<int64_t> items;
  uint64_t seen = 0;
};

struct Settings {
  int64_t batch_size, window, checkpoint_every, negatives, grow_chunk, max_wait_ms, replay_capacity, ce_chunk;
  bool full_softmax, all_positions;
  double lr, clip, max_loss, replay_share, checkpoint_seconds;
  uint64_t seed;
  explicit Settings(const Config& c)
      : batch_size(c.get_int("stream.batch_size")),
        window(c.get_int("stream.window")),
        checkpoint_every(c.get_int("stream.checkpoint_every")),
        negatives(c.get_int("train.negatives")),
        grow_chunk(c.get_int("stream.grow_chunk")),
        max_wait_ms(c.get_int("stream.max_wait_ms")),
        ce_chunk(c.get_int("train.ce_chunk")),
        full_softmax(c.get_string("stream.loss") == "full"),
        all_positions(c.get_string("stream.train_positions") == "all"),
        replay_capacity(c.get_int("stream.replay_capacity")),
        lr(c.get_float("stream.lr")),
        clip(c.get_float("train.clip_norm")),
        max_loss(c.get_float("stream.max_loss")),
        replay_share(c.get_float("stream.replay_share")),
        checkpoint_seconds(c.get_float("stream.checkpoint_seconds")),
        seed(static_cast<uint64_t>(c.get_int("train.seed"))) {
    if (batch_size <= 0 || window <= 0 || grow_chunk <= 0 || negatives <= 0 || replay_capacity <= 0)
      throw ConfigError(
          "stream.batch_size, stream.window, stream.grow_chunk, stream.replay_capacity and train.negatives must be "
          "positive");
    if (replay_share < 0) throw ConfigError("stream.replay_share must be >= 0, got " + std::to_string(replay_share));
  }
};

class StreamLearner {
 public:
  StreamLearner(const Config& config, const StreamRun& run, const std::vector<RawEvent>& warm_history,
                EventSource& source)
      : settings_(config), run_(run), source_(source), device_(select_device(config.get_string("train.device"))) {
    fs::create_directories(run.output_dir);
    const std::string& start = run.resume.empty() ? run.teacher : run.resume;
    if (start.empty()) throw std::runtime_error("stream: a teacher checkpoint (or a stream checkpoint to resume) is needed");
    info_ = read_checkpoint_info(start);
    model_ = load_checkpoint_model(start, device_);
    items_ = info_.items;
    store_ = HistoryStore(model_->options().maxlen);
    std::vector<torch::Tensor> dense;
    for (const auto& p : model_->parameters())
      if (!p.is_same(model_->item_embedding())) dense.push_back(p);
    dense_ = std::make_unique<torch::optim::Adam>(
        dense, torch::optim::AdamOptions(settings_.lr).betas({config.get_float("train.beta1"), config.get_float("train.beta2")}));
    ops::RowwiseAdamOptions o;
    o.lr = settings_.lr, o.beta1 = config.get_float("train.beta1"), o.beta2 = config.get_float("train.beta2");
    o.per_row_step = config.get_string("train.sparse_bias_correction") == "per_row";
    sparse_ = SparseRowAdam(model_->item_embedding(), o, /*padding_idx=*/0);
    model_->set_sparse_gradients(&sparse_->gradients());
    if (!run.resume.empty()) {
      restore(run.resume);
    } else {
      // Histories from before the stream; items the teacher never saw get rows, but are not counted
      // as stream arrivals.
      for (const auto& e : warm_history) store_.push(store_.user_slot(e.user), item_id(e.item, nullptr));
      summary_.new_items = 0;
    }
    // On resume, drop what was written after the checkpoint: those records come again.
    const auto metrics_path = fs::path(run.output_dir) / "metrics.jsonl";
    const auto dead_path = fs::path(run.output_dir) / "dead_letters.jsonl";
    if (!run.resume.empty()) {
      truncate_to(metrics_path, info_.meta.value("metrics_bytes", uint64_t{0}));
      truncate_to(dead_path, info_.meta.value("dead_letter_bytes", uint64_t{0}));
    }
    metrics_.open(metrics_path, std::ios::app);
    dead_letters_.open(dead_path, std::ios::app);
  }

  // Where the source continues when resuming ("" on a fresh start).
  const std::string& saved_position() const { return saved_position_; }

  void consume(const StreamRecord& record) {
    ++summary_.events;
    if (pending_.empty()) oldest_pending_ = std::chrono::steady_clock::now();
    if (!record.event) {
      ++summary_.dead_letters;
      dead_letters_ << nlohmann::json{{"position", record.position}, {"origin", record.origin},
                                      {"reason", record.error}, {"text", record.text}}.dump()
                    << "\n";
      spdlog::debug("dead letter at {}: {}", record.origin, record.error);
    } else {
      bool new_user = false;
      const int32_t slot = store_.user_slot(record.event->user, &new_user);
      summary_.new_users += new_user;
      bool cold = false;
      const int32_t item = item_id(record.event->item, &cold);
      pending_.push_back({store_.history(slot), item, cold, std::chrono::steady_clock::now()});
      store_.push(slot, item);
    }
    if (static_cast<int64_t>(pending_.size()) >= settings_.batch_size) flush();
  }

  // A micro-batch also closes when its oldest event has waited stream.max_wait_ms.
  void tick() {
    if (!pending_.empty() && std::chrono::steady_clock::now() - oldest_pending_ >=
                                 std::chrono::milliseconds(settings_.max_wait_ms))
      flush();
  }
  int wait_ms() const { return static_cast<int>(settings_.max_wait_ms); }

  StreamSummary finish() {
    flush();
    write_window();
    save();
    summary_.checkpoint = (fs::path(run_.output_dir) / "stream.pt").string();
    if (!latencies_ms_.empty()) {
      std::sort(latencies_ms_.begin(), latencies_ms_.end());
      auto at = [&](double q) { return latencies_ms_[std::min(latencies_ms_.size() - 1, static_cast<size_t>(q * latencies_ms_.size()))]; };
      summary_.latency_p50_ms = at(0.5), summary_.latency_p99_ms = at(0.99);
    }
    return summary_;
  }

 private:
  // Internal id of an external item, adding a row (the table grows by whole chunks) when new.
  int32_t item_id(const std::string& external, bool* cold) {
    int32_t id = items_.find(external);
    if (cold) *cold = id < 0;
    if (id >= 0) return id;
    id = items_.intern(external);
    ++summary_.new_items;
    if (id > model_->options().num_items) {
      const int64_t rows = ((id + settings_.grow_chunk - 1) / settings_.grow_chunk) * settings_.grow_chunk;
      torch::manual_seed(settings_.seed * 7919ULL + static_cast<uint64_t>(rows));  // new rows: same draws every run
      model_->grow_items(rows);
      sparse_->grow_to_weight();
      spdlog::debug("item table grown to {} rows", rows + 1);
    }
    return id;
  }

  torch::Tensor histories_tensor(const std::vector<Pending>& batch) const {
    const int64_t T = model_->options().maxlen;
    std::vector<int64_t> flat(batch.size() * T, 0);
    for (size_t r = 0; r < batch.size(); ++r) {
      const auto& h = batch[r].history;
      const size_t n = std::min<size_t>(h.size(), T);
      for (size_t k = 0; k < n; ++k) flat[r * T + T - n + k] = h[h.size() - n + k];
    }
    return torch::tensor(flat, torch::kLong).view({static_cast<int64_t>(batch.size()), T}).to(device_);
  }

  // Test: rank each event's item among the known items, the user's earlier items filtered.
  void score(const std::vector<Pending>& batch, const torch::Tensor& inputs) {
    torch::NoGradGuard no_grad;
    model_->eval();
    std::vector<int64_t> targets;
    SeenItems seen;
    for (size_t r = 0; r < batch.size(); ++r) {
      targets.push_back(batch[r].item);
      for (int32_t item : batch[r].history)
        if (item != batch[r].item) seen.add(static_cast<int64_t>(r), item);
    }
    const int64_t known = items_.end_id();  // rows past the vocabulary are spare capacity
    auto ranks = rank_targets(model_->score_all(model_->last_hidden(inputs)), targets, seen, known).cpu();
    auto r = ranks.accessor<int64_t, 1>();
    for (size_t i = 0; i < batch.size(); ++i) {
      const int64_t rank = batch[i].cold ? known : r[i];  // a new item is a miss: it could not be ranked
      summary_.cold_items += batch[i].cold;
      summary_.overall.add(rank);
      window_.add(rank);
      ++summary_.scored;
      if (static_cast<int64_t>(window_.count()) >= settings_.window) write_window();
    }
  }

  // Train: one step on the events of the batch that have a history, loss on the newest position,
  // plus stream.replay_share as many examples replayed from the reservoir.
  void learn(const std::vector<Pending>& batch) {
    std::vector<Pending> examples;
    for (const auto& p : batch)
      if (!p.history.empty()) examples.push_back(p);
    if (examples.empty()) return;
    const size_t fresh = examples.size();
    const auto replayed = static_cast<size_t>(std::llround(settings_.replay_share * static_cast<double>(fresh)));
    for (size_t k = 0; k < replayed && !reservoir_.items.empty(); ++k) {
      const size_t j = mix(settings_.seed * 31 + summary_.batches * 1000003ULL + k) % reservoir_.items.size();
      examples.push_back({reservoir_.histories[j], reservoir_.items[j], false, {}});
      ++summary_.replayed;
    }
    torch::manual_seed(settings_.seed * 1000003ULL + summary_.batches);  // same draws when resumed
    model_->train();
    torch::Tensor hidden, target;
    if (settings_.all_positions) {
      // The user's recent sequence with the new item appended: every position predicts its next item.
      const int64_t T = model_->options().maxlen;
      std::vector<int64_t> inputs(examples.size() * T, 0), targets(examples.size() * T, 0);
      for (size_t r = 0; r < examples.size(); ++r) {
        std::vector<int32_t> seq = examples[r].history;
        seq.push_back(static_cast<int32_t>(examples[r].item));
        fill_training_row(seq.data(), seq.size(), T, &inputs[r * T], &targets[r * T]);
      }
      const auto rows = static_cast<int64_t>(examples.size());
      auto flat_targets = long_tensor(targets, {rows * T}, device_);
      auto positions = flat_targets.nonzero().squeeze(1);
      hidden = model_->forward(long_tensor(inputs, {rows, T}, device_)).reshape({rows * T, -1}).index_select(0, positions);
      target = flat_targets.index_select(0, positions);
    } else {
      std::vector<int64_t> targets;
      for (const auto& e : examples) targets.push_back(e.item);
      target = torch::tensor(targets).to(device_);
      hidden = model_->last_hidden(histories_tensor(examples));
    }
    auto negatives = torch::randint(1, items_.end_id(), {settings_.negatives}, target.options());
    auto log_q = torch::zeros({model_->options().num_items + 1}, hidden.options());  // uniform draws
    // Full softmax: the output side gives the whole table a gradient, which the row-wise optimizer
    // takes as every row touched (a small catalog's table is cheap to update whole).
    auto loss = settings_.full_softmax
                    ? full_softmax_cross_entropy(hidden, model_->item_embedding(), target, settings_.ce_chunk)
                    : sampled_softmax_cross_entropy(hidden, model_->lookup_items(target), model_->lookup_items(negatives),
                                                    target, negatives, log_q);
    const double value = loss.item<double>();
    if (!std::isfinite(value) || value > settings_.max_loss) {
      // Guard: a bad batch never reaches the weights.
      ++summary_.skipped_batches;
      sparse_->gradients().clear();
      spdlog::warn("batch {} skipped: loss {}", summary_.batches, value);
    } else {
      dense_->zero_grad();
      loss.backward();
      if (settings_.clip > 0) torch::nn::utils::clip_grad_norm_(dense_->param_groups()[0].params(), settings_.clip);
      dense_->step();
      sparse_->step(settings_.lr);
      last_loss_ = value;
    }
    if (settings_.replay_share > 0)
      for (size_t i = 0; i < fresh; ++i) remember(examples[i]);
  }

  void remember(const Pending& example) {
    const uint64_t n = reservoir_.seen++;
    if (reservoir_.items.size() < static_cast<size_t>(settings_.replay_capacity)) {
      reservoir_.histories.push_back(example.history);
      reservoir_.items.push_back(example.item);
      return;
    }
    const uint64_t j = mix(settings_.seed ^ (n * 0x2545f4914f6cdd1dULL)) % (n + 1);
    if (j < reservoir_.items.size()) reservoir_.histories[j] = example.history, reservoir_.items[j] = example.item;
  }

  void flush() {
    if (pending_.empty()) return;
    score(pending_, histories_tensor(pending_));
    if (run_.learn) learn(pending_);
    const auto done = std::chrono::steady_clock::now();
    for (const auto& p : pending_)
      if (latencies_ms_.size() < kMaxLatencySamples)
        latencies_ms_.push_back(std::chrono::duration<double, std::milli>(done - p.arrival).count());
    ++summary_.batches;
    events_since_checkpoint_ += static_cast<int64_t>(pending_.size());
    pending_.clear();
    const bool by_count = settings_.checkpoint_every > 0 && events_since_checkpoint_ >= settings_.checkpoint_every;
    const bool by_time = settings_.checkpoint_seconds > 0 &&
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint_).count() >=
                             settings_.checkpoint_seconds;
    if (by_count || by_time) save();
  }

  void write_window() {
    if (window_.count() == 0) return;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    metrics_ << nlohmann::json{{"label", run_.label},
                               {"events", summary_.events},
                               {"position", source_.position()},
                               {"window_events", window_.count()},
                               {"HR@10", window_.hit_rate(10)},
                               {"NDCG@10", window_.ndcg(10)},
                               {"MRR", window_.mrr()},
                               {"loss", last_loss_},
                               {"cold_items", summary_.cold_items},
                               {"new_users", summary_.new_users},
                               {"new_items", summary_.new_items},
                               {"dead_letters", summary_.dead_letters},
                               {"seconds", seconds}}
                    .dump()
             << "\n"
             << std::flush;
    spdlog::info("{} {} events, window NDCG@10 {:.4f} HR@10 {:.4f}, overall NDCG@10 {:.4f}, {:.0f} events/s",
                 run_.label, summary_.events, window_.ndcg(10), window_.hit_rate(10), summary_.overall.ndcg(10),
                 summary_.events / std::max(seconds, 1e-9));
    window_ = RankingMetrics({10});
  }

  // Everything needed to continue at exactly the next event, written atomically. Checkpoints are
  // taken only between micro-batches, so every event before the saved position has been applied.
  void save() {
    CheckpointInfo info;
    info.config_yaml = info_.config_yaml;
    info.items = items_;
    info.users = store_.user_ids();
    const std::string position = source_.position();
    // The side files first, durable, with their sizes in the checkpoint: a resume truncates them
    // back to these sizes, so each dead letter and metrics line appears once.
    const uint64_t dead_letter_bytes = durable_size(dead_letters_, fs::path(run_.output_dir) / "dead_letters.jsonl");
    const uint64_t metrics_bytes = durable_size(metrics_, fs::path(run_.output_dir) / "metrics.jsonl");
    info.meta = {{"kind", "stream"},
                 {"dead_letter_bytes", dead_letter_bytes},
                 {"metrics_bytes", metrics_bytes},
                 {"source_position", position},
                 {"events", summary_.events},
                 {"scored", summary_.scored},
                 {"cold_items", summary_.cold_items},
                 {"new_users", summary_.new_users},
                 {"new_items", summary_.new_items},
                 {"dead_letters", summary_.dead_letters},
                 {"batches", summary_.batches},
                 {"skipped_batches", summary_.skipped_batches},
                 {"learn", run_.learn}};
    info.texts["history_users"] = store_.serialize_users();
    info.tensors["history_lengths"] = torch::tensor(store_.lengths(), torch::kLong);
    info.tensors["history_items"] = torch::tensor(store_.flat_items(), torch::kLong);
    std::vector<int64_t> lengths, flat;
    for (const auto& h : reservoir_.histories) {
      lengths.push_back(static_cast<int64_t>(h.size()));
      flat.insert(flat.end(), h.begin(), h.end());
    }
    info.tensors["reservoir_lengths"] = torch::tensor(lengths, torch::kLong);
    info.tensors["reservoir_histories"] = torch::tensor(flat, torch::kLong);
    info.tensors["reservoir_items"] = torch::tensor(reservoir_.items, torch::kLong);
    info.meta["reservoir_seen"] = reservoir_.seen;
    info.meta["replayed"] = summary_.replayed;
    save_checkpoint((fs::path(run_.output_dir) / "stream.pt").string(), model_, dense_.get(), info, sparse_.get());
    source_.checkpointed(position);
    events_since_checkpoint_ = 0;
    last_checkpoint_ = std::chrono::steady_clock::now();
  }

  static uint64_t durable_size(std::ofstream& out, const fs::path& path) {
    out.flush();
    if (!out) throw std::runtime_error(path.string() + ": write failed");
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd >= 0) ::fsync(fd), ::close(fd);
    return fs::exists(path) ? fs::file_size(path) : 0;
  }

  static void truncate_to(const fs::path& path, uint64_t bytes) {
    if (fs::exists(path) && fs::file_size(path) > bytes) fs::resize_file(path, bytes);
  }

  void restore(const std::string& path) {
    load_checkpoint_optimizer(path, *dense_, sparse_.get());
    const auto& m = info_.meta;
    if (m.value("kind", "") != "stream") throw std::runtime_error(path + ": not a stream checkpoint (kind is not 'stream')");
    saved_position_ = m.at("source_position").get<std::string>();
    summary_.events = m.at("events");
    summary_.scored = m.at("scored");
    summary_.cold_items = m.at("cold_items");
    summary_.new_users = m.at("new_users");
    summary_.new_items = m.at("new_items");
    summary_.dead_letters = m.at("dead_letters");
    summary_.batches = m.at("batches");
    summary_.skipped_batches = m.at("skipped_batches");
    auto to_vector = [](const torch::Tensor& t) {
      auto c = t.to(torch::kLong).contiguous();
      return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
    };
    store_ = HistoryStore::restore(model_->options().maxlen, info_.texts.at("history_users"),
                                   to_vector(info_.tensors.at("history_lengths")),
                                   to_vector(info_.tensors.at("history_items")));
    summary_.replayed = m.at("replayed");
    reservoir_.seen = m.at("reservoir_seen");
    reservoir_.items = to_vector(info_.tensors.at("reservoir_items"));
    const auto lengths = to_vector(info_.tensors.at("reservoir_lengths"));
    const auto flat = to_vector(info_.tensors.at("reservoir_histories"));
    size_t at = 0;
    for (int64_t n : lengths) {
      reservoir_.histories.emplace_back(flat.begin() + at, flat.begin() + at + n);
      at += n;
    }
  }

  Settings settings_;
  StreamRun run_;
  EventSource& source_;
  std::string saved_position_;
  std::chrono::steady_clock::time_point oldest_pending_;
  std::chrono::steady_clock::time_point last_checkpoint_ = std::chrono::steady_clock::now();
  torch::Device device_;
  CheckpointInfo info_;
  SASRec model_{nullptr};
  IdMap items_{1};
  HistoryStore store_;
  std::unique_ptr<torch::optim::Adam> dense_;
  SparseRowAdam sparse_{nullptr};
  std::vector<Pending> pending_;
  std::vector<double> latencies_ms_;
  Reservoir reservoir_;
  RankingMetrics window_{{10}};
  StreamSummary summary_;
  int64_t events_since_checkpoint_ = 0;
  double last_loss_ = std::numeric_limits<double>::quiet_NaN();
  std::ofstream metrics_, dead_letters_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace

StreamSummary run_stream(const Config& config, EventSource& source, const std::vector<RawEvent>& warm_history,
                         const StreamRun& run) {
  configure_threads(config.get_int("train.threads"));
  StreamLearner learner(config, run, warm_history, source);
  if (!run.resume.empty()) {
    source.seek(learner.saved_position());
    spdlog::info("{}: resuming at source position {}", run.label, learner.saved_position());
  }
  const auto started = std::chrono::steady_clock::now();
  while (true) {
    if (auto record = source.next(learner.wait_ms())) {
      learner.consume(*record);
    } else if (source.finished()) {
      break;
    }
    learner.tick();
  }
  StreamSummary summary = learner.finish();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return summary;
}

}  // namespace freshrec
