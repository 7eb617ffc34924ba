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
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <unordered_set>

#include "engine/checkpoint/checkpoint.h"
#include "engine/data/ids.h"
#include "engine/dist/process_group.h"
#include "engine/splitmix.h"
#include "engine/export/publisher.h"
#include "engine/runtime.h"
#include "engine/stream/history_store.h"
#include "engine/stream/replay_reservoir.h"
#include "engine/stream/seen_items.h"
#include "engine/stream/stopwatch.h"
#include "engine/stream/stream_examples.h"
#include "engine/stream/stream_manifest.h"
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
  BatchRanks ranks;                    // (B) int64 each: this rank's events
  torch::Tensor losses;                // (4) float: teacher loss, skipped, student loss, skipped; undefined: no step
  std::vector<char> cold;
  std::vector<std::chrono::steady_clock::time_point> arrivals;
  std::vector<int64_t> index;          // each event's place in the micro-batch (Pending::index)
  int64_t events = 0;                  // the micro-batch's events, every rank's
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
  // `group`: a job of several processes, of which this is one rank (null: one process).
  StreamLearner(const Config& config, const StreamRun& run, const std::vector<RawEvent>& warm_history,
                EventSource& source, torch::Device device, ProcessGroup* group)
      : settings_(config),
        run_(run),
        source_(source),
        group_(group),
        rank_(group ? group->rank() : 0),
        ranks_(group ? group->size() : 1),
        partitioned_(group && source.partitioned()),
        device_(device),
        bf16_(configure_precision(config.get_string("train.precision"))),
        reservoir_(static_cast<size_t>(settings_.replay_capacity), settings_.seed) {
    fs::create_directories(run.output_dir);
    const std::string& start = run.resume.empty() ? run.teacher : run.resume;
    if (start.empty()) throw std::runtime_error("stream: a teacher checkpoint (or a stream checkpoint to resume) is needed");
    info_ = read_checkpoint_info(start);
    // dist.item_table=row_sharded: the teacher's table sharded by rows across the ranks.
    ProcessGroup* item_shards = group_ && config.get_string("dist.item_table") == "row_sharded" ? group_ : nullptr;
    step_.emplace(load_stream_models(config, settings_, run, info_, device_, item_shards), settings_, config, device_,
                  bf16_);
    if (group_) step_->set_process_group(group_, static_cast<int64_t>(config.get_float("dist.bucket_mb") * (1 << 20)));
    model_ = step_->teacher().model;
    shards_ = step_->teacher().item_shards();
    if (shards_)
      spdlog::info("{}: item table sharded by rows over {} processes: this one holds {} of its {} rows", run.label,
                   ranks_, shards_->local_rows(), shards_->rows());
    items_ = info_.items;
    store_ = HistoryStore(settings_.history_keep);
    has_student_ = static_cast<bool>(step_->student());
    publishing_ = settings_.publishing() && run.learn;
    if (publishing_ && rank_ == 0) {  // rank 0 publishes for the job
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
      // In a job of several every rank gives every item its id (the same ids on every rank) and keeps
      // its own users' histories.
      for (const auto& e : warm_history) {
        const int32_t item = item_id(e.item, nullptr);
        if (mine(e.user)) store_.push(store_.user_slot(e.user), item);
      }
      store_.settle();
      fill_seen();
      summary_.new_items = 0;
    }
    // On resume, drop what was written after the checkpoint: those records come again. A fresh
    // start begins both files anew, so they never mix two runs.
    const auto metrics_path = fs::path(run.output_dir) / "metrics.jsonl";
    // Every rank's dead letters are rank 0's to write when every rank reads the whole stream; each
    // rank writes its own when each reads its own records.
    const auto dead_path = fs::path(run.output_dir) / (rank_ == 0 ? std::string("dead_letters.jsonl")
                                                                  : "dead_letters.rank" + std::to_string(rank_) + ".jsonl");
    writes_dead_letters_ = rank_ == 0 || partitioned_;
    const uint64_t metrics_kept = run.resume.empty() ? 0 : info_.meta.value("metrics_bytes", uint64_t{0});
    const uint64_t dead_kept = run.resume.empty() ? 0 : info_.meta.value("dead_letter_bytes", uint64_t{0});
    if (run.resume.empty()) {
      if (rank_ == 0 && (fs::exists(metrics_path) || fs::exists(run.output_dir + "/stream.pt") ||
                         fs::exists(fs::path(run.output_dir) / kStreamManifest)))
        spdlog::warn("{}: a fresh start replaces the earlier run's checkpoints, metrics.jsonl and dead_letters.jsonl "
                     "(--resume continues it instead)", run.output_dir);
      // A fresh start forgets the folder's checkpoints of a job of several at once, so that nothing
      // resumes them later (the other ranks write nothing before rank 0's first collective).
      if (rank_ == 0) remove_stream_checkpoints(run.output_dir);
    }
    if (rank_ == 0) {  // the job's metrics: every rank holds them, rank 0 writes them
      truncate_to(metrics_path, metrics_kept);
      metrics_.open(metrics_path, std::ios::app);
    }
    if (writes_dead_letters_) {
      truncate_to(dead_path, dead_kept);
      dead_letters_.open(dead_path, std::ios::app);
    }
    dead_letters_path_ = dead_path;
  }

  // Where the source continues when resuming ("" on a fresh start).
  const std::string& saved_position() const { return saved_position_; }

  // In a job of several every rank consumes every record: each gives every item its id, so ids, the
  // table's growth and the micro-batches' bounds agree without a message, and each keeps and learns
  // from the events of its own users (ownership by a hash of the user's id).
  void consume(const StreamRecord& record) {
    if (partitioned_) {  // held until the ranks close the micro-batch together (exchange)
      ++consumed_here_;
      if (!record.event) {
        ++dead_here_;
        dead_letter(record);
      } else {
        if (raw_.empty()) oldest_raw_ = std::chrono::steady_clock::now();
        raw_.push_back({record.event->user, record.event->item, std::chrono::steady_clock::now()});
      }
      return;
    }
    ++summary_.events;
    if (batch_events_ == 0) oldest_pending_ = std::chrono::steady_clock::now();
    if (!record.event) {
      ++summary_.dead_letters;
      dead_letter(record);
    } else if (!mine(record.event->user)) {
      item_id(record.event->item, nullptr);
      ++batch_events_;
    } else {
      const int32_t slot = user_slot(record.event->user);
      bool cold = false;
      const int32_t item = item_id(record.event->item, &cold);
      add_pending(slot, item, cold, std::chrono::steady_clock::now(), batch_events_++);
    }
    if (batch_events_ >= settings_.batch_size) flush();
  }

  // A micro-batch also closes when its oldest event has waited stream.max_wait_ms (in one process: the
  // ranks of a job of several close theirs by count alone, where every rank sees the same).
  void tick() {
    if (group_) return;
    if (!pending_.empty() && std::chrono::steady_clock::now() - oldest_pending_ >=
                                 std::chrono::milliseconds(settings_.max_wait_ms))
      flush();
  }
  int wait_ms() const { return static_cast<int>(settings_.max_wait_ms); }

  // A job of several whose ranks read records of their own (a Kafka consumer's partitions).
  bool partitioned() const { return partitioned_; }
  // Whether this rank is ready to close the micro-batch with the others: it holds its share of
  // stream.batch_size events, or the oldest has waited stream.max_wait_ms, or (holding none) that long
  // has passed since the last micro-batch, or its source has finished.
  bool due(bool finished) const {
    const auto share = (settings_.batch_size + ranks_ - 1) / ranks_;
    const auto since = raw_.empty() ? last_exchange_ : oldest_raw_;
    return finished || static_cast<int64_t>(raw_.size()) >= share ||
           std::chrono::steady_clock::now() - since >= std::chrono::milliseconds(settings_.max_wait_ms);
  }
  // Closes a micro-batch of a partitioned job, every rank together. One sum tells each rank every
  // rank's events, records and dead letters and whether its source finished; the names of items new to
  // the vocabulary are gathered from every rank and given ids in rank order (the same ids on every
  // rank, the table grown alike); then each rank's events are the micro-batch's, after those of the
  // ranks before it, and the step runs as flush() does. An item new in the micro-batch is cold in each
  // of its events there. Returns true when every rank's source has finished and no rank had an event:
  // the stream is over.
  bool exchange(bool finished) {
    std::vector<std::string> unknown;
    std::unordered_set<std::string> listed;
    for (const auto& r : raw_)
      if (items_.find(r.item) < 0 && listed.insert(r.item).second) unknown.push_back(r.item);
    std::string names;
    for (const auto& name : unknown) {
      const auto length = static_cast<uint32_t>(name.size());
      names.append(reinterpret_cast<const char*>(&length), sizeof length).append(name);
    }
    constexpr int kFields = 5;  // events, records, dead letters, finished, bytes of new names
    std::vector<double> header(static_cast<size_t>(kFields * ranks_), 0.0);
    double* own = header.data() + kFields * rank_;
    own[0] = static_cast<double>(raw_.size()), own[1] = static_cast<double>(consumed_here_);
    own[2] = static_cast<double>(dead_here_), own[3] = finished ? 1 : 0, own[4] = static_cast<double>(names.size());
    header = group_->sum(header);
    int64_t events = 0, offset = 0, finished_ranks = 0;
    double name_bytes = 0;
    for (int r = 0; r < ranks_; ++r) {
      const double* h = header.data() + kFields * r;
      if (r < rank_) offset += static_cast<int64_t>(h[0]);
      events += static_cast<int64_t>(h[0]);
      summary_.events += static_cast<uint64_t>(h[1]);
      summary_.dead_letters += static_cast<uint64_t>(h[2]);
      finished_ranks += h[3] != 0;
      name_bytes += h[4];
    }
    const int32_t first_new = items_.end_id();
    if (name_bytes > 0) {
      auto bytes = torch::empty({static_cast<int64_t>(names.size())}, torch::kUInt8);
      if (!names.empty()) std::memcpy(bytes.data_ptr<uint8_t>(), names.data(), names.size());
      const auto all = group_->all_gather(bytes).contiguous();
      const auto* p = reinterpret_cast<const char*>(all.data_ptr<uint8_t>());
      const auto* end = p + all.numel();
      while (p < end) {
        uint32_t length = 0;
        std::memcpy(&length, p, sizeof length);
        p += sizeof length;
        item_id(std::string(p, length), nullptr);
        p += length;
      }
    }
    for (size_t i = 0; i < raw_.size(); ++i) {
      const auto& r = raw_[i];
      const int32_t slot = user_slot(r.user);
      const int32_t item = items_.find(r.item);
      add_pending(slot, item, item >= first_new, r.arrival, offset + static_cast<int64_t>(i));
    }
    raw_.clear();
    consumed_here_ = dead_here_ = 0;
    last_exchange_ = std::chrono::steady_clock::now();
    batch_events_ = events;
    if (events == 0) return finished_ranks == ranks_;
    flush();
    return false;
  }

  StreamSummary finish() {
    flush();
    {
      Stopwatch clock(profile_.readout);
      absorb(0);
    }
    {
      Stopwatch clock(profile_.saving);
      if (publishing_ && events_since_publish_ > 0) publish();  // every rank: publish() may be a collective
      write_window(current());
      save();
    }
    summary_.profile = profile_;
    if (!publish_delays_ms_.empty()) {
      std::sort(publish_delays_ms_.begin(), publish_delays_ms_.end());
      summary_.publish_delay_p50_ms = quantile_of_sorted(publish_delays_ms_, 0.5);
      summary_.publish_delay_p99_ms = quantile_of_sorted(publish_delays_ms_, 0.99);
    }
    summary_.checkpoint = last_checkpoint_path_;
    if (!latencies_ms_.empty()) {
      std::sort(latencies_ms_.begin(), latencies_ms_.end());
      summary_.latency_p50_ms = quantile_of_sorted(latencies_ms_, 0.5);
      summary_.latency_p99_ms = quantile_of_sorted(latencies_ms_, 0.99);
    }
    return summary_;
  }

 private:
  // A malformed record's dead letter, written where this rank writes them.
  void dead_letter(const StreamRecord& record) {
    if (writes_dead_letters_) dead_letters_ << dead_letter_json(record) << "\n";
    spdlog::debug("dead letter at {}: {}", record.origin, printable(record.error));
  }

  // This rank's history slot of `user`, counting a new user.
  int32_t user_slot(const std::string& user) {
    bool new_user = false;
    const int32_t slot = store_.user_slot(user, &new_user);
    new_users_here_ += new_user;
    return slot;
  }

  // An event of this rank's user into the open micro-batch (its place `index` among every rank's
  // events there) and the user's history.
  void add_pending(int32_t slot, int32_t item, bool cold, std::chrono::steady_clock::time_point arrival, int64_t index) {
    const auto length = static_cast<int32_t>(store_.history(slot).size());
    const int64_t seen = seen_ ? seen_->add(slot, item) : 0;
    pending_.push_back({slot, length, item, seen, cold, arrival, index});
    store_.push(slot, item);
  }

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
  // learned from it is known to be done. In a job of several the ranks pool their readouts (one sum
  // over the ranks per micro-batch), so every rank counts every event in the micro-batch's order, as
  // one process does.
  void absorb(size_t in_flight) {
    while (readouts_.size() > in_flight) {
      Readout& r = readouts_.front();
      if (r.copied) r.copied->synchronize();  // waits for that micro-batch only: later work stays queued
      const auto now = std::chrono::steady_clock::now();
      // Each event's teacher rank, student rank, coldness and latency, in the micro-batch's order.
      const auto events = static_cast<size_t>(r.events);
      std::vector<double> pooled(4 * events + 4, 0.0);
      const int64_t* ranks = r.cold.empty() ? nullptr : r.ranks.teacher.data_ptr<int64_t>();
      const int64_t* student_ranks = has_student_ && !r.cold.empty() ? r.ranks.student.data_ptr<int64_t>() : nullptr;
      for (size_t i = 0; i < r.cold.size(); ++i) {
        double* slot = pooled.data() + 4 * r.index[i];
        slot[0] = static_cast<double>(r.cold[i] ? r.known : ranks[i]);  // a new item is a miss: it could not be ranked
        slot[1] = has_student_ ? static_cast<double>(r.cold[i] ? r.known : student_ranks[i]) : 0.0;
        slot[2] = r.cold[i];
        slot[3] = std::chrono::duration<double, std::milli>(now - r.arrivals[i]).count();
      }
      const float* l = r.losses.defined() ? r.losses.data_ptr<float>() : nullptr;
      if (l) {
        pooled[4 * events] = l[0], pooled[4 * events + 1] = l[1], pooled[4 * events + 2] = 1;
        if (has_student_) pooled[4 * events + 3] = l[2];
      }
      if (group_) pooled = group_->sum(pooled);
      for (size_t k = 0; k < events; ++k) {
        const double* slot = pooled.data() + 4 * k;
        const auto rank = static_cast<int64_t>(slot[0]);
        summary_.cold_items += slot[2] != 0;
        summary_.overall.add(rank);
        window_.add(rank);
        if (has_student_) {
          const auto student_rank = static_cast<int64_t>(slot[1]);
          summary_.student_overall.add(student_rank);
          student_window_.add(student_rank);
        }
        ++summary_.scored;
        if (static_cast<int64_t>(window_.count()) >= settings_.window) write_window(r.as_of);
        if (latencies_ms_.size() < kMaxLatencySamples) latencies_ms_.push_back(slot[3]);
      }
      // The steps' losses (the ranks' shares summed) and the guard's flags (the same on every rank).
      if (pooled[4 * events + 2] > 0) {
        const double loss = pooled[4 * events], skipped = l ? l[1] : 0.f;
        if (skipped != 0) {  // the guard: this batch never reached the weights
          ++summary_.skipped_batches;
          spdlog::warn("batch {} skipped: loss {}", r.batch, loss);
        } else {
          last_loss_ = loss;
        }
      }
      if (l && has_student_) {
        if (l[3] != 0.f) {
          ++summary_.skipped_batches;
          spdlog::warn("batch {}: student step skipped, loss {}", r.batch, pooled[4 * events + 3]);
        } else {
          last_student_loss_ = pooled[4 * events + 3];
        }
      }
      readouts_.pop_front();
    }
  }

  // Exports the student (the teacher without one) as the next published version.
  void publish() {
    absorb(0);  // the manifest's rolling metrics cover every event learned from
    if (shards_) shards_->gather_whole();  // rank 0 exports the whole table
    if (!publisher_) {  // another rank of a job of several: rank 0 publishes; the counters stay alike
      ++summary_.publications;
      events_since_publish_ = 0;
      return;
    }
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
    if (shards_) shards_->keep_own_rows();
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
    if (batch_events_ == 0) return;
    Readout out;
    out.known = items_.end_id();  // rows past the vocabulary are spare capacity
    const uint64_t replayed_before = summary_.replayed;
    StreamStep::Context context{summary_.batches, out.known, reservoir_, profile_, summary_.replayed};
    if (!pending_.empty() || shards_) {  // a row-sharded table's ranks step in lockstep, empty or not
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
    } else if (run_.learn) {  // a rank of a job of several with no event in this micro-batch takes the step too
      out.losses = step_->learn({}, StepInputs{}, nullptr, context);
    }
    store_.settle();
    for (const auto& p : pending_) {
      out.cold.push_back(p.cold);
      out.arrivals.push_back(p.arrival);
      out.index.push_back(p.index);
      if (publisher_) unpublished_.push_back(p.arrival);
    }
    out.events = batch_events_;
    out.batch = summary_.batches;
    // The clock's triggers, the new users and the replayed examples: rank 0's clock decides for a job
    // of several, whose new users and replays are every rank's.
    const auto now = std::chrono::steady_clock::now();
    bool publish_by_time = publishing_ && settings_.publish_seconds > 0 &&
                           std::chrono::duration<double>(now - last_publish_).count() >= settings_.publish_seconds;
    bool checkpoint_by_time = settings_.checkpoint_seconds > 0 &&
                              std::chrono::duration<double>(now - last_checkpoint_).count() >= settings_.checkpoint_seconds;
    if (group_) {
      const auto agreed = group_->sum({static_cast<double>(new_users_here_), rank_ == 0 && publish_by_time ? 1.0 : 0.0,
                                       rank_ == 0 && checkpoint_by_time ? 1.0 : 0.0,
                                       static_cast<double>(summary_.replayed - replayed_before)});
      summary_.new_users += static_cast<uint64_t>(agreed[0]);
      publish_by_time = agreed[1] > 0, checkpoint_by_time = agreed[2] > 0;
      summary_.replayed = replayed_before + static_cast<uint64_t>(agreed[3]);
    } else {
      summary_.new_users += new_users_here_;
    }
    new_users_here_ = 0;
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
    ++summary_.batches;
    events_since_checkpoint_ += batch_events_;
    events_since_publish_ += batch_events_;
    pending_.clear();
    batch_events_ = 0;
    if (publishing_ && ((settings_.publish_every > 0 && events_since_publish_ >= settings_.publish_every) || publish_by_time)) {
      Stopwatch clock(profile_.saving);
      publish();
    }
    if ((settings_.checkpoint_every > 0 && events_since_checkpoint_ >= settings_.checkpoint_every) || checkpoint_by_time) {
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
    if (rank_ != 0) {  // rank 0 writes the job's metrics (every rank holds the same)
      window_ = RankingMetrics({10});
      student_window_ = RankingMetrics({10});
      return;
    }
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
    // back to these sizes, so each dead letter and metrics line appears once (rank 0's, in a job of
    // several).
    const uint64_t dead_letter_bytes = writes_dead_letters_ ? durable_size(dead_letters_, dead_letters_path_) : 0;
    const uint64_t metrics_bytes = rank_ == 0 ? durable_size(metrics_, fs::path(run_.output_dir) / "metrics.jsonl") : 0;
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
    if (!group_) {
      last_checkpoint_path_ = (fs::path(run_.output_dir) / "stream.pt").string();
      save_checkpoint(last_checkpoint_path_, model_, teacher.dense.get(), info, teacher.sparse.get());
    } else {
      // Version V: every rank's file, then (once all are durable) rank 0's manifest naming V, then
      // each rank drops its older files. A crash at any point leaves a manifest whose files all exist.
      // With a row-sharded table each rank's file holds its rows and their moments alone.
      const uint64_t version = version_ + 1;
      info.meta["version"] = version;
      info.meta["rank"] = rank_;
      info.meta["world_size"] = ranks_;
      if (shards_)
        info.meta["item_rows"] = {{"rank", rank_}, {"ranks", ranks_}, {"local", shards_->local_rows()}, {"rows", shards_->rows()}};
      last_checkpoint_path_ = (fs::path(run_.output_dir) / stream_shard_name(version, rank_)).string();
      if (shards_) shards_->rows_in_model(true);
      save_checkpoint(last_checkpoint_path_, model_, teacher.dense.get(), info, teacher.sparse.get());
      if (shards_) shards_->rows_in_model(false);
      group_->barrier();
      if (rank_ == 0) {
        StreamManifest manifest{version, ranks_, summary_.events, position, {}, DistEnv::from_environment().run_id};
        for (int r = 0; r < ranks_; ++r) manifest.shards.push_back(stream_shard_name(version, r));
        write_stream_manifest(run_.output_dir, manifest);
      }
      group_->barrier();
      remove_other_stream_shards(run_.output_dir, rank_, version);
      version_ = version;
    }
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
    if (m.value("world_size", 1) != ranks_ || m.value("rank", 0) != rank_)
      throw std::runtime_error(path + ": written by rank " + std::to_string(m.value("rank", 0)) + " of " +
                               std::to_string(m.value("world_size", 1)) + ", read by rank " + std::to_string(rank_) +
                               " of " + std::to_string(ranks_) + ": a stream resumes on as many processes as wrote it");
    version_ = m.value("version", uint64_t{0});
    visit_counters(CounterReader{m, info_.tensors, path});
    const auto known = static_cast<int64_t>(items_.size());
    store_ = HistoryStore::restore(
        settings_.history_keep, info_.texts.at("history_users"), stored_values(info_.tensors.at("history_lengths")),
        stored_item_ids(info_.tensors.at("history_items"), 1, known, path, "the histories"));
    fill_seen();
    reservoir_.restore(info_, path, known);
  }

  // Whether `user` is one of this rank's users (always, in one process): a hash of the id, modulo the ranks.
  bool mine(const std::string& user) const {
    return ranks_ == 1 || partitioned_ || static_cast<int>(splitmix64_finalise(chain_digest(0xcbf29ce484222325ULL, user)) %
                                           static_cast<uint64_t>(ranks_)) == rank_;
  }

  StreamSettings settings_;
  StreamRun run_;
  EventSource& source_;
  ProcessGroup* group_;  // null: one process
  int rank_, ranks_;
  bool partitioned_;              // each rank reads records of its own (exchange())
  struct Raw {                    // a partitioned job's event, until its micro-batch closes
    std::string user, item;
    std::chrono::steady_clock::time_point arrival;
  };
  std::vector<Raw> raw_;
  uint64_t consumed_here_ = 0, dead_here_ = 0;  // since the last exchange()
  std::chrono::steady_clock::time_point oldest_raw_, last_exchange_ = std::chrono::steady_clock::now();
  bool writes_dead_letters_ = false;
  fs::path dead_letters_path_;
  int64_t batch_events_ = 0;    // the open micro-batch's events, every rank's (in one process, pending_'s)
  uint64_t new_users_here_ = 0; // this rank's new users since the last micro-batch
  uint64_t version_ = 0;        // a job of several: the last checkpoint version written or resumed from
  std::string last_checkpoint_path_;
  bool publishing_ = false;     // stream.publish_* and learning (the publisher itself is rank 0's)
  ShardedItemTable* shards_ = nullptr;  // dist.item_table=row_sharded: the teacher's table, by rows
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
  // Started by a launcher (WORLD_SIZE > 1): one rank of a job of several.
  const DistEnv dist = DistEnv::from_environment();
  const torch::Device device = job_device(dist, select_device(config.get_string("train.device")));
  const std::unique_ptr<ProcessGroup> group = join_job(dist, config, device);
  if (group)
    spdlog::info("{}: rank {} of {} ({}): each rank learns from its users' events of every micro-batch", run.label,
                 group->rank(), group->size(), group->backend());
  StreamLearner learner(config, run, warm_history, source, device, group.get());
  if (!run.resume.empty()) {
    source.seek(learner.saved_position());
    spdlog::info("{}: resuming at source position {}", run.label, learner.saved_position());
  }
  const auto started = std::chrono::steady_clock::now();
  // Each rank reads its own records: the ranks close every micro-batch together.
  while (learner.partitioned()) {
    if (auto record = source.next(std::min(learner.wait_ms(), 50))) learner.consume(*record);
    const bool finished = source.finished();
    if (learner.due(finished) && learner.exchange(finished)) break;
  }
  while (!learner.partitioned()) {
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
