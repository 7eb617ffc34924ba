// Test-then-train over a stream; see stream_learner.h. The stream's parts each have their own file:
// settings (stream_settings), step inputs (stream_examples), the models (stream_models) and their step
// (stream_step), replay (replay_reservoir) and the checkpoint's counters and side files (stream_state).
// This file runs them: micro-batches, readouts and metrics, publication and checkpoints.
#include "engine/stream/stream_learner.h"

#include <spdlog/spdlog.h>

#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

#include "engine/checkpoint/checkpoint.h"
#include "engine/data/ids.h"
#include "engine/export/publisher.h"
#include "engine/runtime.h"
#include "engine/stream/history_store.h"
#include "engine/stream/replay_reservoir.h"
#include "engine/stream/seen_items.h"
#include "engine/stream/stopwatch.h"
#include "engine/stream/stream_examples.h"
#include "engine/stream/stream_models.h"
#include "engine/stream/stream_settings.h"
#include "engine/stream/stream_state.h"
#include "engine/stream/stream_step.h"

namespace freshrec {
namespace {

namespace fs = std::filesystem;

// What a micro-batch sends back to the host: the ranks for the metrics, the losses and the guard's
// flags. On a GPU it is copied asynchronously and taken in once the next micro-batch's work is
// queued (StreamLearner::absorb), so no step waits for the device; on the CPU at once.
struct Readout {
  BatchRanks ranks;                    // (B) int64 each
  torch::Tensor losses;                // (4) float: teacher loss, skipped, student loss, skipped; undefined: no step
  std::vector<char> cold;
  std::vector<std::chrono::steady_clock::time_point> arrivals;
  int64_t known = 0;                   // the vocabulary's end when scored: a cold item's rank
  uint64_t batch = 0;
  // The stream's counters as of the micro-batch, for the metrics line that its ranks may close.
  struct AsOf {
    uint64_t events = 0, new_users = 0, new_items = 0, dead_letters = 0;
    std::string position;
    nlohmann::json published_version;
  } as_of;
  std::optional<c10::Event> copied;    // GPU: the copies to the host are done
};

constexpr size_t kMaxLatencySamples = 1 << 20;

// A device tensor's copy on the host, asynchronous from a GPU (pinned memory; valid once the
// readout's event has passed).
torch::Tensor to_host(const torch::Tensor& t) {
  if (!t.defined() || !t.is_cuda()) return t.defined() ? t.contiguous() : t;
  auto host = torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true));
  host.copy_(t, /*non_blocking=*/true);
  return host;
}

class StreamLearner {
 public:
  StreamLearner(const Config& config, const StreamRun& run, const std::vector<RawEvent>& warm_history,
                EventSource& source)
      : settings_(config),
        run_(run),
        source_(source),
        device_(select_device(config.get_string("train.device"))),
        bf16_(configure_precision(config.get_string("train.precision"))),
        reservoir_(static_cast<size_t>(settings_.replay_capacity), settings_.seed) {
    fs::create_directories(run.output_dir);
    const std::string& start = run.resume.empty() ? run.teacher : run.resume;
    if (start.empty()) throw std::runtime_error("stream: a teacher checkpoint (or a stream checkpoint to resume) is needed");
    info_ = read_checkpoint_info(start);
    step_.emplace(load_stream_models(config, settings_, run, info_, device_), settings_, config, device_, bf16_);
    model_ = step_->teacher().model;
    items_ = info_.items;
    store_ = HistoryStore(settings_.history_keep);
    has_student_ = static_cast<bool>(step_->student());
    if (settings_.publishing() && run.learn) {
      publisher_ = std::make_unique<Publisher>(
          run.publish_dir.empty() ? (fs::path(run.output_dir) / "published").string() : run.publish_dir,
          settings_.publish_keep);
      spdlog::info("{}: publishing the {} to {} every {}", run.label, has_student_ ? "student" : "teacher",
                   publisher_->dir(),
                   settings_.publish_every > 0 ? std::to_string(settings_.publish_every) + " events"
                                               : std::to_string(settings_.publish_seconds) + " s");
    }
    if (!run.resume.empty()) {
      restore(run.resume);
    } else {
      // Histories from before the stream; items the teacher never saw get rows, but are not counted
      // as stream arrivals.
      for (const auto& e : warm_history) store_.push(store_.user_slot(e.user), item_id(e.item, nullptr));
      store_.settle();
      fill_seen();
      summary_.new_items = 0;
    }
    // On resume, drop what was written after the checkpoint: those records come again. A fresh
    // start begins both files anew, so they never mix two runs.
    const auto metrics_path = fs::path(run.output_dir) / "metrics.jsonl";
    const auto dead_path = fs::path(run.output_dir) / "dead_letters.jsonl";
    const uint64_t metrics_kept = run.resume.empty() ? 0 : info_.meta.value("metrics_bytes", uint64_t{0});
    const uint64_t dead_kept = run.resume.empty() ? 0 : info_.meta.value("dead_letter_bytes", uint64_t{0});
    if (run.resume.empty() && (fs::exists(metrics_path) || fs::exists(run.output_dir + "/stream.pt")))
      spdlog::warn("{}: a fresh start replaces the earlier run's stream.pt, metrics.jsonl and dead_letters.jsonl "
                   "(--resume continues it instead)", run.output_dir);
    truncate_to(metrics_path, metrics_kept);
    truncate_to(dead_path, dead_kept);
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
      dead_letters_ << dead_letter_json(record) << "\n";
      spdlog::debug("dead letter at {}: {}", record.origin, printable(record.error));
    } else {
      bool new_user = false;
      const int32_t slot = store_.user_slot(record.event->user, &new_user);
      summary_.new_users += new_user;
      bool cold = false;
      const int32_t item = item_id(record.event->item, &cold);
      const auto length = static_cast<int32_t>(store_.history(slot).size());
      const int64_t seen = seen_ ? seen_->add(slot, item) : 0;
      pending_.push_back({slot, length, item, seen, cold, std::chrono::steady_clock::now()});
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
    {
      Stopwatch clock(profile_.readout);
      absorb(0);
    }
    {
      Stopwatch clock(profile_.saving);
      if (publisher_ && run_.learn && !unpublished_.empty()) publish();
      write_window(current());
      save();
    }
    summary_.profile = profile_;
    if (!publish_delays_ms_.empty()) {
      std::sort(publish_delays_ms_.begin(), publish_delays_ms_.end());
      summary_.publish_delay_p50_ms = quantile_of_sorted(publish_delays_ms_, 0.5);
      summary_.publish_delay_p99_ms = quantile_of_sorted(publish_delays_ms_, 0.99);
    }
    summary_.checkpoint = (fs::path(run_.output_dir) / "stream.pt").string();
    if (!latencies_ms_.empty()) {
      std::sort(latencies_ms_.begin(), latencies_ms_.end());
      summary_.latency_p50_ms = quantile_of_sorted(latencies_ms_, 0.5);
      summary_.latency_p99_ms = quantile_of_sorted(latencies_ms_, 0.99);
    }
    return summary_;
  }

 private:
  // With every item of every history kept (stream.history_keep=0), each user's distinct items live on
  // the device (SeenItems), filled here from the store once; a bounded store walks its kept items.
  void fill_seen() {
    if (settings_.history_keep != 0) return;
    seen_.emplace(device_);
    for (size_t slot = 0; slot < store_.users(); ++slot)
      for (int32_t item : store_.history(static_cast<int32_t>(slot))) seen_->add(static_cast<int32_t>(slot), item);
  }

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
      step_->grow(rows);
      spdlog::debug("item table grown to {} rows", rows + 1);
    }
    return id;
  }

  // Takes in the readouts of finished micro-batches, oldest first, until at most `in_flight` remain:
  // metrics, the guard's skips, losses, and each event's latency up to this point, when the step that
  // learned from it is known to be done.
  void absorb(size_t in_flight) {
    while (readouts_.size() > in_flight) {
      Readout& r = readouts_.front();
      if (r.copied) r.copied->synchronize();  // waits for that micro-batch only: later work stays queued
      const auto now = std::chrono::steady_clock::now();
      const int64_t* ranks = r.ranks.teacher.data_ptr<int64_t>();
      const int64_t* student_ranks = has_student_ ? r.ranks.student.data_ptr<int64_t>() : nullptr;
      for (size_t i = 0; i < r.cold.size(); ++i) {
        const int64_t rank = r.cold[i] ? r.known : ranks[i];  // a new item is a miss: it could not be ranked
        summary_.cold_items += r.cold[i];
        summary_.overall.add(rank);
        window_.add(rank);
        if (has_student_) {
          const int64_t student_rank = r.cold[i] ? r.known : student_ranks[i];
          summary_.student_overall.add(student_rank);
          student_window_.add(student_rank);
        }
        ++summary_.scored;
        if (static_cast<int64_t>(window_.count()) >= settings_.window) write_window(r.as_of);
        if (latencies_ms_.size() < kMaxLatencySamples)
          latencies_ms_.push_back(std::chrono::duration<double, std::milli>(now - r.arrivals[i]).count());
      }
      if (r.losses.defined()) {
        const float* l = r.losses.data_ptr<float>();
        if (l[1] != 0.f) {  // the guard: this batch never reached the weights
          ++summary_.skipped_batches;
          spdlog::warn("batch {} skipped: loss {}", r.batch, l[0]);
        } else {
          last_loss_ = l[0];
        }
        if (has_student_ && l[3] != 0.f) {
          ++summary_.skipped_batches;
          spdlog::warn("batch {}: student step skipped, loss {}", r.batch, l[2]);
        } else if (has_student_) {
          last_student_loss_ = l[2];
        }
      }
      readouts_.pop_front();
    }
  }

  // Exports the student (the teacher without one) as the next published version.
  void publish() {
    absorb(0);  // the manifest's rolling metrics cover every event learned from
    nlohmann::json info = {{"events", summary_.events},
                           {"source_position", source_.position()},
                           {"batches", summary_.batches},
                           {"label", run_.label},
                           {"teacher_overall_ndcg10", summary_.overall.ndcg(10)},
                           {"teacher_overall_hr10", summary_.overall.hit_rate(10)},
                           {"wall_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count()}};
    if (has_student_) {
      info["model"] = "student";
      info["student_overall_ndcg10"] = summary_.student_overall.ndcg(10);
      info["student_overall_hr10"] = summary_.student_overall.hit_rate(10);
    } else {
      info["model"] = "teacher";
    }
    Learner& published = has_student_ ? step_->student() : step_->teacher();
    published.model->eval();
    publisher_->publish(published.model, items_, has_student_ ? step_->student_config() : info_.config_yaml, info);
    ++summary_.publications;
    const auto done = std::chrono::steady_clock::now();
    for (const auto& arrival : unpublished_)
      if (publish_delays_ms_.size() < kMaxLatencySamples)
        publish_delays_ms_.push_back(std::chrono::duration<double, std::milli>(done - arrival).count());
    unpublished_.clear();
    events_since_publish_ = 0;
    last_publish_ = done;
  }

  void flush() {
    if (pending_.empty()) return;
    // Each event's history as of its arrival: the newest stream.history_keep (0: all) of the user's
    // items before it. The store is not cut until settle() below, so these views hold.
    std::vector<Example> batch;
    StepInputs in;
    {
      Stopwatch clock(profile_.batching);
      batch.reserve(pending_.size());
      for (const auto& p : pending_) {
        const size_t n = store_.kept(p.length);
        batch.push_back({store_.history(p.slot).data() + (p.length - n), n, p.item});
      }
      in = make_step_inputs(batch, model_->options().maxlen, /*with_excluded=*/!seen_, device_);
    }
    if (seen_) {  // each event's excluded items gathered on the device: O(batch) host work
      Stopwatch clock(profile_.excluded);
      std::vector<int32_t> slots;
      std::vector<int64_t> sizes;
      slots.reserve(pending_.size()), sizes.reserve(pending_.size());
      for (const auto& p : pending_) slots.push_back(p.slot), sizes.push_back(p.seen);
      in.excluded = seen_->excluded(slots, sizes, in.targets);
    }
    Readout out;
    out.known = items_.end_id();  // rows past the vocabulary are spare capacity
    StreamStep::Context context{summary_.batches, out.known, reservoir_, profile_, summary_.replayed};
    if (run_.learn && step_->fused()) {
      out.losses = step_->learn(batch, in, &out.ranks, context);  // ranks from the step's own forward
    } else {
      {
        Stopwatch clock(profile_.ranking);
        out.ranks = step_->score(in, out.known);
      }
      if (run_.learn) out.losses = step_->learn(batch, in, nullptr, context);
    }
    if (seen_) {  // freeing the gathered rows is the device's work too (O(batch x widest row) on a CPU)
      Stopwatch clock(profile_.excluded);
      in = StepInputs{};
    }
    store_.settle();
    for (const auto& p : pending_) {
      out.cold.push_back(p.cold);
      out.arrivals.push_back(p.arrival);
      if (publisher_ && run_.learn) unpublished_.push_back(p.arrival);
    }
    out.batch = summary_.batches;
    out.as_of = current();
    {
      Stopwatch clock(profile_.readout);
      out.ranks.teacher = to_host(out.ranks.teacher);
      out.ranks.student = to_host(out.ranks.student);
      out.losses = to_host(out.losses);
      if (device_.is_cuda()) {
        out.copied.emplace(device_.type());
        out.copied->record(c10::impl::VirtualGuardImpl(device_.type()).getStream(device_));
      }
      readouts_.push_back(std::move(out));
      // On a GPU one micro-batch stays in flight, so the host queues the next while this one runs.
      absorb(device_.is_cuda() ? 1 : 0);
    }
    const auto done = std::chrono::steady_clock::now();
    ++summary_.batches;
    events_since_checkpoint_ += static_cast<int64_t>(pending_.size());
    events_since_publish_ += static_cast<int64_t>(pending_.size());
    pending_.clear();
    if (publisher_ && run_.learn) {
      const bool publish_by_count = settings_.publish_every > 0 && events_since_publish_ >= settings_.publish_every;
      const bool publish_by_time = settings_.publish_seconds > 0 &&
                                   std::chrono::duration<double>(done - last_publish_).count() >= settings_.publish_seconds;
      if (publish_by_count || publish_by_time) {
        Stopwatch clock(profile_.saving);
        publish();
      }
    }
    const bool by_count = settings_.checkpoint_every > 0 && events_since_checkpoint_ >= settings_.checkpoint_every;
    const bool by_time = settings_.checkpoint_seconds > 0 &&
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint_).count() >=
                             settings_.checkpoint_seconds;
    if (by_count || by_time) {
      Stopwatch clock(profile_.saving);
      save();
    }
  }

  Readout::AsOf current() const {
    return {summary_.events, summary_.new_users, summary_.new_items, summary_.dead_letters, source_.position(),
            publisher_ ? nlohmann::json(publisher_->last_version()) : nlohmann::json()};
  }

  // One metrics line for the window, its counters as of its last micro-batch.
  void write_window(const Readout::AsOf& as_of) {
    if (window_.count() == 0) return;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    const uint64_t events = as_of.events;
    metrics_ << nlohmann::json{{"label", run_.label},
                               {"events", events},
                               {"position", as_of.position},
                               {"window_events", window_.count()},
                               {"HR@10", window_.hit_rate(10)},
                               {"NDCG@10", window_.ndcg(10)},
                               {"MRR", window_.mrr()},
                               {"loss", last_loss_},
                               {"student_NDCG@10", has_student_ ? nlohmann::json(student_window_.ndcg(10)) : nlohmann::json()},
                               {"student_HR@10", has_student_ ? nlohmann::json(student_window_.hit_rate(10)) : nlohmann::json()},
                               {"student_loss", has_student_ ? nlohmann::json(last_student_loss_) : nlohmann::json()},
                               {"published_version", as_of.published_version},
                               {"cold_items", summary_.cold_items},
                               {"new_users", as_of.new_users},
                               {"new_items", as_of.new_items},
                               {"dead_letters", as_of.dead_letters},
                               {"seconds", seconds}}
                    .dump()
             << "\n"
             << std::flush;
    spdlog::info("{} {} events, window NDCG@10 {:.4f} HR@10 {:.4f}, overall NDCG@10 {:.4f}, {:.0f} events/s",
                 run_.label, events, window_.ndcg(10), window_.hit_rate(10), summary_.overall.ndcg(10),
                 summary_.events / std::max(seconds, 1e-9));
    if (has_student_)
      spdlog::info("{} {} events, student window NDCG@10 {:.4f} HR@10 {:.4f}, overall NDCG@10 {:.4f}", run_.label,
                   events, student_window_.ndcg(10), student_window_.hit_rate(10),
                   summary_.student_overall.ndcg(10));
    window_ = RankingMetrics({10});
    student_window_ = RankingMetrics({10});
  }

  // Every counter that the summary, the metrics lines, the latency quantiles and the manifest report:
  // the one list that save() writes and restore() reads, so a resumed run reports what an
  // uninterrupted one would. (Wall-clock seconds and the arrival times of events not yet published
  // are not kept: they do not survive a process.)
  template <typename Visit>
  void visit_counters(Visit&& visit) {
    visit("events", summary_.events);
    visit("scored", summary_.scored);
    visit("cold_items", summary_.cold_items);
    visit("new_users", summary_.new_users);
    visit("new_items", summary_.new_items);
    visit("dead_letters", summary_.dead_letters);
    visit("batches", summary_.batches);
    visit("skipped_batches", summary_.skipped_batches);
    visit("replayed", summary_.replayed);
    visit("publications", summary_.publications);
    visit("events_since_publish", events_since_publish_);
    visit("last_loss", last_loss_);
    visit("last_student_loss", last_student_loss_);
    visit("overall", summary_.overall);
    visit("student_overall", summary_.student_overall);
    visit("window", window_);
    visit("student_window", student_window_);
    visit("latencies_ms", latencies_ms_);
    visit("publish_delays_ms", publish_delays_ms_);
  }


  // Everything needed to continue at exactly the next event, written atomically. Checkpoints are
  // taken only between micro-batches, so every event before the saved position has been applied.
  void save() {
    absorb(0);  // the checkpoint's counters cover every micro-batch before its position
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
                 {"learn", run_.learn},
                 {"update", settings_.adapters_only ? "adapters" : "all"}};
    visit_counters(CounterWriter{info.meta, info.tensors});
    info.texts["history_users"] = store_.serialize_users();
    info.tensors["history_lengths"] = torch::tensor(store_.lengths(), torch::kLong);
    info.tensors["history_items"] = torch::tensor(store_.flat_items(), torch::kLong);
    reservoir_.save(info);
    if (has_student_) {
      Learner& student = step_->student();
      pack_student(info, student.model, step_->student_config(), student.dense.get(), student.sparse.get());
    }
    Learner& teacher = step_->teacher();
    save_checkpoint((fs::path(run_.output_dir) / "stream.pt").string(), model_, teacher.dense.get(), info,
                    teacher.sparse.get());
    source_.checkpointed(position);
    events_since_checkpoint_ = 0;
    last_checkpoint_ = std::chrono::steady_clock::now();
  }

  // The stream's state from its checkpoint at `path` (the models are loaded by then).
  void restore(const std::string& path) {
    load_checkpoint_optimizer(path, *step_->teacher().dense, step_->teacher().sparse.get());
    const auto& m = info_.meta;
    if (m.value("kind", "") != "stream") throw std::runtime_error(path + ": not a stream checkpoint (kind is not 'stream')");
    saved_position_ = m.at("source_position").get<std::string>();
    visit_counters(CounterReader{m, info_.tensors, path});
    const auto known = static_cast<int64_t>(items_.size());
    store_ = HistoryStore::restore(
        settings_.history_keep, info_.texts.at("history_users"), stored_values(info_.tensors.at("history_lengths")),
        stored_item_ids(info_.tensors.at("history_items"), 1, known, path, "the histories"));
    fill_seen();
    reservoir_.restore(info_, path, known);
  }

  StreamSettings settings_;
  StreamRun run_;
  EventSource& source_;
  std::string saved_position_;
  std::chrono::steady_clock::time_point oldest_pending_;
  std::chrono::steady_clock::time_point last_checkpoint_ = std::chrono::steady_clock::now();
  torch::Device device_;
  bool bf16_;  // train.precision=bf16
  CheckpointInfo info_;
  std::optional<StreamStep> step_;  // the models and their step
  SASRec model_{nullptr};           // the teacher's model
  bool has_student_ = false;
  std::unique_ptr<Publisher> publisher_;
  std::vector<std::chrono::steady_clock::time_point> unpublished_;  // arrivals learned but not yet published
  std::vector<double> publish_delays_ms_;
  int64_t events_since_publish_ = 0;
  std::chrono::steady_clock::time_point last_publish_ = std::chrono::steady_clock::now();
  RankingMetrics student_window_{{10}};
  double last_student_loss_ = std::numeric_limits<double>::quiet_NaN();
  IdMap items_{1};
  HistoryStore store_;
  std::vector<Pending> pending_;
  std::deque<Readout> readouts_;  // micro-batches whose results are still on their way to the host
  std::vector<double> latencies_ms_;
  ReplayReservoir reservoir_;
  RankingMetrics window_{{10}};
  StreamSummary summary_;
  StreamProfile profile_;
  std::optional<SeenItems> seen_;  // with stream.history_keep=0
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
  auto& p = summary.profile;
  p.source = std::max(0.0, summary.seconds - (p.batching + p.excluded + p.model_step() + p.readout + p.saving));
  return summary;
}

}  // namespace freshrec
