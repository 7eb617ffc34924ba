// Test-then-train over a stream; see stream_learner.h.
#include "engine/stream/stream_learner.h"

#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "engine/checkpoint/checkpoint.h"
#include "engine/data/ids.h"
#include "engine/data/sequences.h"
#include "engine/eval/evaluator.h"
#include "engine/export/publisher.h"
#include "engine/runtime.h"
#include "engine/stream/history_store.h"
#include "engine/stream/seen_items.h"
#include "engine/train/dense_adam.h"
#include "engine/train/distill.h"
#include "engine/train/learner.h"
#include "engine/train/losses.h"
#include "engine/train/sparse_adam.h"

namespace freshrec {
namespace {

namespace fs = std::filesystem;

// One event waiting in the micro-batch. Its history is the first `length` items of the user's entry
// in the history store, which only appends within a micro-batch: nothing is copied per event.
struct Pending {
  int32_t slot, length;
  int64_t item;
  int64_t seen;  // distinct items of the user before this event (with SeenItems)
  bool cold;  // the item was new when the event arrived: the model could not have ranked it
  std::chrono::steady_clock::time_point arrival;
};

// An example as a model step takes it: a view of the items before it (oldest first: the user's kept
// items, or a replayed window; the model reads the newest maxlen, the ranking filters them all) and
// its target. Views into the store hold until the store settles, after the micro-batch.
struct Example {
  const int32_t* history;
  size_t length;
  int64_t item;
};

// What a micro-batch sends back to the host: the ranks for the metrics, the losses and the guard's
// flags. On a GPU it is copied asynchronously and taken in once the next micro-batch's work is
// queued (StreamLearner::absorb), so no step waits for the device; on the CPU at once.
struct Readout {
  torch::Tensor ranks, student_ranks;  // (B) int64
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

// A set of examples on the device, built once per micro-batch and shared by its ranking, the
// teacher's step and the student's.
struct StepInputs {
  torch::Tensor inputs;    // (B, maxlen) newest items, left-padded with 0
  torch::Tensor targets;   // (B)
  torch::Tensor excluded;  // (B, S) each row's history but its target, padded with 0 (ExcludedItems)
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

// Adds the time from its construction to its end to a profile field.
class Stopwatch {
 public:
  explicit Stopwatch(double& into) : into_(into), started_(std::chrono::steady_clock::now()) {}
  ~Stopwatch() { into_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count(); }
  Stopwatch(const Stopwatch&) = delete;
  Stopwatch& operator=(const Stopwatch&) = delete;

 private:
  double& into_;
  std::chrono::steady_clock::time_point started_;
};

// Past training examples kept by reservoir sampling (every example seen so far is equally likely to
// be in it), replayed beside each micro-batch against forgetting.
struct Reservoir {
  std::vector<std::vector<int32_t>> histories;
  std::vector<int64_t> items;
  uint64_t seen = 0;
};

struct Settings {
  int64_t batch_size, window, history_keep, checkpoint_every, negatives, grow_chunk, max_wait_ms, replay_capacity, ce_chunk;
  int64_t publish_every, publish_keep;
  bool full_softmax, all_positions, exclude_seen, adapters_only;
  double lr, clip, max_loss, replay_share, checkpoint_seconds, publish_seconds;
  uint64_t seed;
  explicit Settings(const Config& c)
      : batch_size(c.get_int("stream.batch_size")),
        window(c.get_int("stream.window")),
        history_keep(c.get_int("stream.history_keep")),
        checkpoint_every(c.get_int("stream.checkpoint_every")),
        negatives(c.get_int("train.negatives")),
        grow_chunk(c.get_int("stream.grow_chunk")),
        max_wait_ms(c.get_int("stream.max_wait_ms")),
        replay_capacity(c.get_int("stream.replay_capacity")),
        ce_chunk(c.get_int("train.ce_chunk")),
        publish_every(c.get_int("stream.publish_every")),
        publish_keep(c.get_int("stream.publish_keep")),
        full_softmax(c.get_string("stream.loss") == "full"),
        all_positions(c.get_string("stream.train_positions") == "all"),
        exclude_seen(c.get_bool("train.exclude_seen")),
        adapters_only(c.get_string("stream.update") == "adapters"),
        lr(c.get_float("stream.lr")),
        clip(c.get_float("train.clip_norm")),
        max_loss(c.get_float("stream.max_loss")),
        replay_share(c.get_float("stream.replay_share")),
        checkpoint_seconds(c.get_float("stream.checkpoint_seconds")),
        publish_seconds(c.get_float("stream.publish_seconds")),
        seed(static_cast<uint64_t>(c.get_int("train.seed"))) {
    if (batch_size <= 0 || window <= 0 || grow_chunk <= 0 || negatives <= 0 || replay_capacity <= 0)
      throw ConfigError(
          "stream.batch_size, stream.window, stream.grow_chunk, stream.replay_capacity and train.negatives must be "
          "positive");
    if (exclude_seen && !full_softmax)
      throw ConfigError(c.origin("train.exclude_seen") +
                        ": train.exclude_seen needs stream.loss=full in the stream (it shapes the full-softmax loss)");
    if (history_keep < 0) throw ConfigError("stream.history_keep must be >= 0, got " + std::to_string(history_keep));
    if (replay_share < 0) throw ConfigError("stream.replay_share must be >= 0, got " + std::to_string(replay_share));
    if (publish_every < 0 || publish_seconds < 0 || publish_keep < 1)
      throw ConfigError("stream.publish_every and stream.publish_seconds must be >= 0, stream.publish_keep >= 1");
  }
  bool publishing() const { return publish_every > 0 || publish_seconds > 0; }
};

class StreamLearner {
 public:
  StreamLearner(const Config& config, const StreamRun& run, const std::vector<RawEvent>& warm_history,
                EventSource& source)
      : settings_(config),
        run_(run),
        source_(source),
        device_(select_device(config.get_string("train.device"))),
        bf16_(configure_precision(config.get_string("train.precision"))) {
    fs::create_directories(run.output_dir);
    const std::string& start = run.resume.empty() ? run.teacher : run.resume;
    if (start.empty()) throw std::runtime_error("stream: a teacher checkpoint (or a stream checkpoint to resume) is needed");
    info_ = read_checkpoint_info(start);
    if (!run.resume.empty()) {  // the optimizer state saved is that of one update mode
      const std::string saved = info_.meta.value("update", "all"), now = settings_.adapters_only ? "adapters" : "all";
      if (saved != now)
        throw ConfigError(config.origin("stream.update") + ": " + run.resume + " was written with stream.update=" + saved +
                          ", this run asks for " + now + ": resume with the same, or start a new run from its teacher");
    }
    SASRec teacher = without_item_adapter(load_checkpoint_model(start, device_), info_.config_yaml);
    if (settings_.adapters_only && teacher->options().lora_rank == 0) teacher = with_adapters(teacher, config);
    teacher_ = Learner(teacher, config, settings_.lr, settings_.adapters_only);
    model_ = teacher_.model;
    model_->set_dropout(update_dropout(config, model_->options().dropout));
    items_ = info_.items;
    if (settings_.history_keep > 0 && settings_.history_keep < model_->options().maxlen)
      throw ConfigError(config.origin("stream.history_keep") + ": stream.history_keep (" +
                        std::to_string(settings_.history_keep) +
                        ") must be 0 (all) or at least the model's maxlen (" +
                        std::to_string(model_->options().maxlen) + ")");
    store_ = HistoryStore(settings_.history_keep);
    // The student: from the stream checkpoint when resuming, else from --student.
    if (!run.resume.empty() && has_student(info_)) {
      student_config_ = student_config_yaml(info_);
      student_ = Learner(student_model(info_), config, settings_.lr);
      student_.model->to(device_);
      unpack_student(info_, student_.model, student_.dense.get(), student_.sparse.get());
    } else if (run.resume.empty() && !run.student.empty()) {
      const auto student_info = read_checkpoint_info(run.student);
      if (student_info.items.serialize() != items_.serialize())
        throw std::runtime_error(run.student + ": the student knows other items than the teacher (" +
                                 std::to_string(student_info.items.size()) + " vs " + std::to_string(items_.size()) +
                                 "); distil it from this teacher");
      student_config_ = student_info.config_yaml;
      student_ = Learner(without_item_adapter(load_checkpoint_model(run.student, device_), student_config_), config, settings_.lr);
      if (student_.model->options().maxlen > model_->options().maxlen)
        throw std::runtime_error(run.student + ": the student's maxlen exceeds the teacher's");
      if (student_.model->options().num_items < model_->options().num_items) {  // the teacher's spare rows
        torch::manual_seed(settings_.seed * 7919ULL + static_cast<uint64_t>(model_->options().num_items));
        student_.grow(model_->options().num_items);
      }
    }
    if (student_) distill_ = DistillOptions::from_config(config);
    if (student_) student_.model->set_dropout(update_dropout(config, student_.model->options().dropout));
    if (settings_.publishing() && run.learn) {
      publisher_ = std::make_unique<Publisher>(
          run.publish_dir.empty() ? (fs::path(run.output_dir) / "published").string() : run.publish_dir,
          settings_.publish_keep);
      spdlog::info("{}: publishing the {} to {} every {}", run.label, student_ ? "student" : "teacher",
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
      teacher_.grow(rows);
      if (student_) student_.grow(rows);
      spdlog::debug("item table grown to {} rows", rows + 1);
    }
    return id;
  }

  // The teacher's (B, T) input cut to the student's history length (left-padded: keep the newest).
  torch::Tensor student_inputs(const torch::Tensor& inputs) const {
    const int64_t T = inputs.size(1), Ts = std::min<int64_t>(T, student_.model->options().maxlen);
    return inputs.narrow(1, T - Ts, Ts);
  }

  // The model's inputs, the targets and (for the ranking, and the loss with train.exclude_seen) each
  // example's excluded items, in one walk over the histories.
  StepInputs step_inputs(const std::vector<Example>& examples, bool with_excluded) const {
    const int64_t T = model_->options().maxlen, rows = static_cast<int64_t>(examples.size());
    std::vector<int64_t> flat(examples.size() * T, 0), targets;
    targets.reserve(examples.size());
    ExcludedItems excluded;
    for (size_t r = 0; r < examples.size(); ++r) {
      const Example& e = examples[r];
      const size_t n = std::min<size_t>(e.length, T);
      std::copy(e.history + e.length - n, e.history + e.length, flat.begin() + r * T + T - n);
      targets.push_back(e.item);
      if (!with_excluded) continue;
      for (size_t k = 0; k < e.length; ++k)
        if (e.history[k] != e.item) excluded.add(e.history[k]);
      excluded.end_row();
    }
    return {long_tensor(flat, {rows, T}, device_), long_tensor(targets, {rows}, device_),
            with_excluded ? excluded.matrix(device_) : torch::Tensor()};
  }

  // Test: rank each event's item among the known items, the user's earlier items filtered. The ranks
  // stay on the device; absorb() counts them.
  void score(const StepInputs& in, Readout& out) {
    torch::NoGradGuard no_grad;
    model_->eval();
    // Under bf16 the forward runs in autocast and the scores in fp32: bf16 scores would tie.
    auto last_hidden = [&](SASRec& m, const torch::Tensor& inputs) {
      const Autocast autocast(device_, bf16_);
      return m->last_hidden(inputs);
    };
    out.ranks = ranks_from(model_, last_hidden(model_, in.inputs), in, out.known);
    if (student_) {
      student_.model->eval();
      out.student_ranks = ranks_from(student_.model, last_hidden(student_.model, student_inputs(in.inputs)), in, out.known);
    }
  }

  // Takes in the readouts of finished micro-batches, oldest first, until at most `in_flight` remain:
  // metrics, the guard's skips, losses, and each event's latency up to this point, when the step that
  // learned from it is known to be done.
  void absorb(size_t in_flight) {
    while (readouts_.size() > in_flight) {
      Readout& r = readouts_.front();
      if (r.copied) r.copied->synchronize();  // waits for that micro-batch only: later work stays queued
      const auto now = std::chrono::steady_clock::now();
      const int64_t* ranks = r.ranks.data_ptr<int64_t>();
      const int64_t* student_ranks = student_ ? r.student_ranks.data_ptr<int64_t>() : nullptr;
      for (size_t i = 0; i < r.cold.size(); ++i) {
        const int64_t rank = r.cold[i] ? r.known : ranks[i];  // a new item is a miss: it could not be ranked
        summary_.cold_items += r.cold[i];
        summary_.overall.add(rank);
        window_.add(rank);
        if (student_) {
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
        if (student_ && l[3] != 0.f) {
          ++summary_.skipped_batches;
          spdlog::warn("batch {}: student step skipped, loss {}", r.batch, l[2]);
        } else if (student_) {
          last_student_loss_ = l[2];
        }
      }
      readouts_.pop_front();
    }
  }

  // A device tensor's copy on the host, asynchronous from a GPU (pinned memory; valid once the
  // readout's event has passed).
  static torch::Tensor to_host(const torch::Tensor& t) {
    if (!t.defined() || !t.is_cuda()) return t.defined() ? t.contiguous() : t;
    auto host = torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true));
    host.copy_(t, /*non_blocking=*/true);
    return host;
  }

  // One forward serves the ranking and the step when the two would compute the same thing: no
  // dropout in the updates (train mode is then eval mode), the loss on the newest position (the
  // ranking's), and no replayed rows (which the ranking does not need).
  bool fused_step() const {
    const auto no_dropout = [](const SASRec& m) { return m->options().dropout == 0.0; };
    return no_dropout(model_) && (!student_ || no_dropout(student_.model)) && !settings_.all_positions &&
           settings_.replay_share == 0;
  }

  // The ranks of a batch's targets from its rows' last hidden states (detached, scored in fp32).
  torch::Tensor ranks_from(const SASRec& model, const torch::Tensor& hidden, const StepInputs& in, int64_t known) const {
    torch::NoGradGuard no_grad;
    return rank_targets(model->score_all(hidden.detach().to(torch::kFloat)), in.targets, in.excluded, known);
  }

  // Train: one step on the events of the batch that have a history, loss on the newest position,
  // plus stream.replay_share as many examples replayed from the reservoir. `in` is the batch's
  // StepInputs (the ranking's), reused for the rows that train.
  // With `ranked` (fused_step()), the forward runs over every row of the batch and its detached
  // output ranks them into `ranked` (the teacher's, and the student's from its own forward) before any
  // weight changes: the ranking's forward, taken from the step's.
  // Returns (teacher loss, skipped, student loss, skipped) on the device; undefined without a step.
  torch::Tensor learn(const std::vector<Example>& batch, const StepInputs& in, Readout* ranked) {
    std::vector<Example> examples;
    std::vector<int64_t> fresh_rows;
    for (size_t r = 0; r < batch.size(); ++r)
      if (batch[r].length > 0) examples.push_back(batch[r]), fresh_rows.push_back(static_cast<int64_t>(r));
    if (examples.empty()) {
      if (ranked) {
        Stopwatch clock(profile_.ranking);
        score(in, *ranked);
      }
      return {};
    }
    const size_t fresh = examples.size();
    const auto replayed = static_cast<size_t>(std::llround(settings_.replay_share * static_cast<double>(fresh)));
    for (size_t k = 0; k < replayed && !reservoir_.items.empty(); ++k) {
      const size_t j = mix(settings_.seed * 31 + summary_.batches * 1000003ULL + k) % reservoir_.items.size();
      examples.push_back({reservoir_.histories[j].data(), reservoir_.histories[j].size(), reservoir_.items[j]});
      ++summary_.replayed;
    }
    // The step's rows: the batch's own tensors when every event trains, else its training rows,
    // then the replayed examples.
    StepInputs step = in;
    torch::Tensor rows;  // the batch's training rows, when not all of them
    if (fresh < batch.size()) {
      rows = long_tensor(fresh_rows, {static_cast<int64_t>(fresh)}, device_);
      step = {in.inputs.index_select(0, rows), in.targets.index_select(0, rows),
              settings_.exclude_seen ? in.excluded.index_select(0, rows) : torch::Tensor()};
    }
    if (examples.size() > fresh) {
      const std::vector<Example> replay(examples.begin() + static_cast<std::ptrdiff_t>(fresh), examples.end());
      const StepInputs more = step_inputs(replay, settings_.exclude_seen);
      torch::Tensor excluded;
      if (settings_.exclude_seen) {
        const int64_t width = std::max(step.excluded.size(1), more.excluded.size(1));
        auto widen = [&](const torch::Tensor& t) { return torch::constant_pad_nd(t, {0, width - t.size(1)}, 0); };
        excluded = torch::cat({widen(step.excluded), widen(more.excluded)});
      }
      step = {torch::cat({step.inputs, more.inputs}), torch::cat({step.targets, more.targets}), excluded};
    }
    if (!settings_.exclude_seen) step.excluded = torch::Tensor();
    torch::manual_seed(settings_.seed * 1000003ULL + summary_.batches);  // same draws when resumed
    model_->train();
    torch::Tensor loss, batch_hidden;
    {
      Stopwatch clock(profile_.forward);
      const Autocast autocast(device_, bf16_);  // train.precision=bf16: the forward and the loss
      torch::Tensor hidden, target, excluded;  // excluded: items left out of each row's softmax (exclude_seen)
      if (settings_.all_positions) {
        // The user's recent sequence with the new item appended: every position predicts its next item.
        const int64_t T = model_->options().maxlen;
        std::vector<int64_t> inputs(examples.size() * T, 0), targets(examples.size() * T, 0);
        std::vector<int32_t> seq;
        for (size_t r = 0; r < examples.size(); ++r) {
          const Example& e = examples[r];
          const size_t n = std::min<size_t>(e.length, T);  // the newest T items and the new one
          seq.assign(e.history + e.length - n, e.history + e.length);
          seq.push_back(static_cast<int32_t>(e.item));
          fill_training_row(seq.data(), seq.size(), T, &inputs[r * T], &targets[r * T]);
        }
        const auto rows = static_cast<int64_t>(examples.size());
        const std::vector<int64_t> target_positions = nonzero_positions(targets);
        auto positions = long_tensor(target_positions, {static_cast<int64_t>(target_positions.size())}, device_);
        auto input_tensor = long_tensor(inputs, {rows, T}, device_), all_targets = long_tensor(targets, {rows * T}, device_);
        hidden = model_->forward(input_tensor).reshape({rows * T, -1}).index_select(0, positions);
        target = all_targets.index_select(0, positions);
        if (settings_.exclude_seen) excluded = earlier_items(input_tensor, all_targets, positions);
      } else {
        target = step.targets;
        excluded = step.excluded;
        if (ranked) {
          batch_hidden = model_->last_hidden(in.inputs);  // every row: the ranking reads it
          hidden = rows.defined() ? batch_hidden.index_select(0, rows) : batch_hidden;
        } else {
          hidden = model_->last_hidden(step.inputs);
        }
      }
      auto negatives = torch::randint(1, items_.end_id(), {settings_.negatives}, target.options());
      auto log_q = torch::zeros({model_->options().num_items + 1}, hidden.options().dtype(torch::kFloat));  // uniform
      // Full softmax over the known items (the padding row and the rows reserved for items yet to come
      // are not candidates, as in the ranking): the output side gives the table a gradient, which the
      // row-wise optimizer takes as every row touched (a small catalog's table is cheap to update whole;
      // the reserved rows' gradient is zero, so their weights and moments stay as they are).
      loss = settings_.full_softmax
                 ? full_softmax_cross_entropy(hidden, model_->item_embedding().narrow(0, 0, items_.end_id()), target,
                                              settings_.ce_chunk, excluded)
                 : sampled_softmax_cross_entropy(hidden, model_->lookup_items(target), model_->lookup_items(negatives),
                                                 target, negatives, log_q);
    }
    if (ranked) {
      Stopwatch clock(profile_.ranking);
      ranked->ranks = ranks_from(model_, batch_hidden, in, ranked->known);  // before the step
    }
    // Guard: a bad batch never reaches the weights (decided on the device; absorb() counts it).
    torch::Tensor skip, student;
    {
      Stopwatch clock(profile_.update);
      skip = teacher_.step(loss, settings_.clip, settings_.lr, settings_.max_loss);
    }
    {
      Stopwatch clock(profile_.student);
      student = student_ ? learn_student(step, in, rows, ranked)
                         : torch::stack({torch::full({}, std::numeric_limits<float>::quiet_NaN(), skip.options()),
                                         torch::zeros({}, skip.options())});
    }
    if (settings_.replay_share > 0)
      for (size_t i = 0; i < fresh; ++i) remember(examples[i]);  // the store's views: still valid
    return torch::cat({torch::stack({loss.detach().to(torch::kFloat), skip}), student});
  }

  // The student's distillation step on the step's examples (newest position), against the teacher
  // as it is after its own step; with `ranked`, its forward covers every row of the batch (`in`; the
  // step's are `rows` of it, or all when undefined) and ranks them. Returns (loss, skipped) on the
  // device.
  torch::Tensor learn_student(const StepInputs& step, const StepInputs& in, const torch::Tensor& rows, Readout* ranked) {
    const auto& inputs = step.inputs;
    const auto& target = step.targets;
    torch::Tensor loss, student_hidden;
    {
      const Autocast autocast(device_, bf16_);  // train.precision=bf16: the forwards and the loss
      torch::Tensor teacher_hidden;
      {
        torch::NoGradGuard no_grad;
        model_->eval();
        teacher_hidden = model_->last_hidden(inputs);
      }
      auto& student = student_.model;
      student->train();
      const int64_t known = items_.end_id();
      SampledCandidates sampled;
      if (!settings_.full_softmax)
        sampled = {torch::randint(1, known, {settings_.negatives}, target.options()),
                   torch::zeros({student->options().num_items + 1}, teacher_hidden.options().dtype(torch::kFloat))};
      torch::Tensor hidden;
      if (ranked) {
        student_hidden = student->last_hidden(student_inputs(in.inputs));
        hidden = rows.defined() ? student_hidden.index_select(0, rows) : student_hidden;
      } else {
        hidden = student->last_hidden(student_inputs(inputs));
      }
      loss = distillation_loss(distill_, student, model_, hidden, teacher_hidden, target, known,
                               settings_.full_softmax ? nullptr : &sampled, settings_.ce_chunk);
    }
    if (ranked) ranked->student_ranks = ranks_from(student_.model, student_hidden, in, ranked->known);
    const auto skip = student_.step(loss, settings_.clip, settings_.lr, settings_.max_loss);
    return torch::stack({loss.detach().to(torch::kFloat), skip});
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
    if (student_) {
      info["model"] = "student";
      info["student_overall_ndcg10"] = summary_.student_overall.ndcg(10);
      info["student_overall_hr10"] = summary_.student_overall.hit_rate(10);
    } else {
      info["model"] = "teacher";
    }
    Learner& published = student_ ? student_ : teacher_;
    published.model->eval();
    publisher_->publish(published.model, items_, student_ ? student_config_ : info_.config_yaml, info);
    ++summary_.publications;
    const auto done = std::chrono::steady_clock::now();
    for (const auto& arrival : unpublished_)
      if (publish_delays_ms_.size() < kMaxLatencySamples)
        publish_delays_ms_.push_back(std::chrono::duration<double, std::milli>(done - arrival).count());
    unpublished_.clear();
    events_since_publish_ = 0;
    last_publish_ = done;
  }

  void remember(const Example& example) {
    const uint64_t n = reservoir_.seen++;
    const size_t kept = std::min<size_t>(example.length, model_->options().maxlen);  // replay reads the model's window
    const std::vector<int32_t> history(example.history + example.length - kept, example.history + example.length);
    if (reservoir_.items.size() < static_cast<size_t>(settings_.replay_capacity)) {
      reservoir_.histories.push_back(history);
      reservoir_.items.push_back(example.item);
      return;
    }
    const uint64_t j = mix(settings_.seed ^ (n * 0x2545f4914f6cdd1dULL)) % (n + 1);
    if (j < reservoir_.items.size()) reservoir_.histories[j] = history, reservoir_.items[j] = example.item;
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
      in = step_inputs(batch, /*with_excluded=*/!seen_);
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
    if (run_.learn && fused_step()) {
      out.losses = learn(batch, in, &out);  // ranks from the step's own forward
    } else {
      {
        Stopwatch clock(profile_.ranking);
        score(in, out);
      }
      if (run_.learn) out.losses = learn(batch, in, nullptr);
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
      out.ranks = to_host(out.ranks);
      out.student_ranks = to_host(out.student_ranks);
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
                               {"student_NDCG@10", student_ ? nlohmann::json(student_window_.ndcg(10)) : nlohmann::json()},
                               {"student_HR@10", student_ ? nlohmann::json(student_window_.hit_rate(10)) : nlohmann::json()},
                               {"student_loss", student_ ? nlohmann::json(last_student_loss_) : nlohmann::json()},
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
    if (student_)
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

  // Counters into a checkpoint: numbers and metrics in its meta, samples as tensors.
  struct CounterWriter {
    nlohmann::json& meta;
    std::map<std::string, torch::Tensor>& tensors;
    void operator()(const char* name, uint64_t value) { meta[name] = value; }
    void operator()(const char* name, int64_t value) { meta[name] = value; }
    void operator()(const char* name, double value) { meta[name] = value; }  // NaN is written as null
    void operator()(const char* name, const RankingMetrics& metrics) { meta[name] = nlohmann::json::parse(metrics.state()); }
    void operator()(const char* name, const std::vector<double>& samples) {
      tensors[std::string("counter.") + name] = torch::tensor(samples, torch::kDouble);
    }
  };

  // And back; a checkpoint written by a build that kept fewer counters leaves the others at zero.
  struct CounterReader {
    const nlohmann::json& meta;
    const std::map<std::string, torch::Tensor>& tensors;
    const std::string& path;
    template <typename Integer>
    void operator()(const char* name, Integer& value) {
      value = meta.value(name, Integer{0});
    }
    void operator()(const char* name, double& value) {
      const auto found = meta.find(name);
      value = found != meta.end() && found->is_number() ? found->get<double>() : std::numeric_limits<double>::quiet_NaN();
    }
    void operator()(const char* name, RankingMetrics& metrics) {
      if (!meta.contains(name)) return;
      metrics = RankingMetrics::from_state(meta.at(name).dump());
      if (metrics.ks() != std::vector<long long>{10})
        throw std::runtime_error(path + ": saved metrics '" + name + "' have other cut-offs");
    }
    void operator()(const char* name, std::vector<double>& samples) {
      const auto found = tensors.find(std::string("counter.") + name);
      if (found == tensors.end()) return;
      const auto values = found->second.to(torch::kDouble).contiguous();
      samples.assign(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
    }
  };

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
    std::vector<int64_t> lengths, flat;
    for (const auto& h : reservoir_.histories) {
      lengths.push_back(static_cast<int64_t>(h.size()));
      flat.insert(flat.end(), h.begin(), h.end());
    }
    info.tensors["reservoir_lengths"] = torch::tensor(lengths, torch::kLong);
    info.tensors["reservoir_histories"] = torch::tensor(flat, torch::kLong);
    info.tensors["reservoir_items"] = torch::tensor(reservoir_.items, torch::kLong);
    info.meta["reservoir_seen"] = reservoir_.seen;
    if (student_) pack_student(info, student_.model, student_config_, student_.dense.get(), student_.sparse.get());
    save_checkpoint((fs::path(run_.output_dir) / "stream.pt").string(), model_, teacher_.dense.get(), info,
                    teacher_.sparse.get());
    source_.checkpointed(position);
    events_since_checkpoint_ = 0;
    last_checkpoint_ = std::chrono::steady_clock::now();
  }

  static uint64_t durable_size(std::ofstream& out, const fs::path& path) {
    out.flush();
    if (!out) throw std::runtime_error(path.string() + ": cannot write: " + std::strerror(errno));
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0 || ::fsync(fd) != 0) {
      const int error = errno;
      if (fd >= 0) ::close(fd);
      throw std::runtime_error(path.string() + ": cannot make durable: " + std::strerror(error));
    }
    ::close(fd);
    return fs::file_size(path);
  }

  static void truncate_to(const fs::path& path, uint64_t bytes) {
    if (fs::exists(path) && fs::file_size(path) > bytes) fs::resize_file(path, bytes);
  }

  void restore(const std::string& path) {
    load_checkpoint_optimizer(path, *teacher_.dense, teacher_.sparse.get());
    const auto& m = info_.meta;
    if (m.value("kind", "") != "stream") throw std::runtime_error(path + ": not a stream checkpoint (kind is not 'stream')");
    saved_position_ = m.at("source_position").get<std::string>();
    visit_counters(CounterReader{m, info_.tensors, path});
    auto to_vector = [](const torch::Tensor& t) {
      auto c = t.to(torch::kLong).contiguous();
      return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
    };
    // Every stored item id must name a known item: a checkpoint that passed its CRC check can still
    // come from another run's files.
    const auto known = static_cast<int64_t>(items_.size());
    auto check_items = [&](const std::vector<int64_t>& ids, int64_t lowest, const char* what) {
      for (int64_t id : ids)
        if (id < lowest || id > known)
          throw std::runtime_error(path + ": " + what + " name item " + std::to_string(id) + ", outside the " +
                                   std::to_string(known) + " items of its id map");
      return ids;
    };
    store_ = HistoryStore::restore(settings_.history_keep, info_.texts.at("history_users"),
                                   to_vector(info_.tensors.at("history_lengths")),
                                   check_items(to_vector(info_.tensors.at("history_items")), 1, "the histories"));
    fill_seen();
    reservoir_.seen = m.at("reservoir_seen");
    reservoir_.items = check_items(to_vector(info_.tensors.at("reservoir_items")), 1, "the replay reservoir's targets");
    const auto lengths = to_vector(info_.tensors.at("reservoir_lengths"));
    const auto flat = check_items(to_vector(info_.tensors.at("reservoir_histories")), 0, "the replay reservoir's histories");
    size_t at = 0;
    for (int64_t n : lengths) {
      if (n < 0 || at + static_cast<size_t>(n) > flat.size()) throw std::runtime_error(path + ": corrupt replay reservoir");
      reservoir_.histories.emplace_back(flat.begin() + at, flat.begin() + at + n);
      at += n;
    }
  }

  // `model` with its item adapter (a fine-tune's finetune.item_lora_rank) folded into the item table,
  // which the stream grows and updates row by row; `config_yaml`, the config saved with the model,
  // then says it has none, so that checkpoints and published models rebuild the same shape.
  static SASRec without_item_adapter(SASRec model, std::string& config_yaml) {
    if (model->options().item_lora_rank == 0) return model;
    Config saved = Config::from_stored_yaml(config_yaml, "checkpoint config", nullptr);
    saved.apply_override("finetune.item_lora_rank=0");
    config_yaml = saved.to_yaml();
    spdlog::info("stream: the item adapter (rank {}) is folded into the item table, whose rows the stream updates",
                 model->options().item_lora_rank);
    return fold_item_adapter(model);
  }

  // The teacher with LoRA adapters of the stream config's finetune.lora_* added (they start at zero,
  // so the model's answers do not change); the checkpoints' config records them, so a resume builds
  // the same model.
  SASRec with_adapters(SASRec& plain, const Config& config) {
    auto options = plain->options();
    options.lora_rank = config.get_int("finetune.lora_rank");
    options.lora_alpha = config.get_float("finetune.lora_alpha");
    options.lora_dropout = config.get_float("finetune.lora_dropout");
    if (options.lora_rank == 0)
      throw ConfigError(config.origin("stream.update") + ": stream.update=adapters needs adapters: a teacher fine-tuned "
                        "with them, or finetune.lora_rank > 0 to add them");
    torch::manual_seed(settings_.seed * 7919ULL + 17);  // the adapters' A: the same in every run of this config
    SASRec adapted(options);
    {
      torch::NoGradGuard no_grad;
      auto params = adapted->named_parameters();
      for (const auto& p : plain->named_parameters()) params[p.key()].copy_(p.value());
    }
    adapted->to(device_);
    Config saved = info_.config();
    auto exact = [](double v) {  // 17 significant digits: the same double when read back
      std::ostringstream out;
      out.precision(17);
      out << v;
      return out.str();
    };
    saved.apply_override("finetune.lora_rank=" + std::to_string(options.lora_rank));
    saved.apply_override("finetune.lora_alpha=" + exact(options.lora_alpha));
    saved.apply_override("finetune.lora_dropout=" + exact(options.lora_dropout));
    info_.config_yaml = saved.to_yaml();
    spdlog::info("stream: the teacher's updates change its rank-{} LoRA adapters and the touched item rows alone",
                 options.lora_rank);
    return adapted;
  }

  Settings settings_;
  StreamRun run_;
  EventSource& source_;
  std::string saved_position_;
  std::chrono::steady_clock::time_point oldest_pending_;
  std::chrono::steady_clock::time_point last_checkpoint_ = std::chrono::steady_clock::now();
  torch::Device device_;
  bool bf16_;  // train.precision=bf16
  CheckpointInfo info_;
  Learner teacher_, student_;
  SASRec model_{nullptr};  // the teacher's model
  std::string student_config_;
  DistillOptions distill_;
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
  Reservoir reservoir_;
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

void check_stream_settings(const Config& config) {
  Settings{config};
  update_dropout(config, 0.0);
}

double update_dropout(const Config& config, double model_dropout) {
  const double dropout = config.get_float("stream.dropout");
  if (dropout == -1) return model_dropout;
  if (dropout < 0 || dropout >= 1)
    throw ConfigError(config.origin("stream.dropout") +
                      ": stream.dropout must be in [0, 1), or -1 for the model's own, got " + std::to_string(dropout));
  return dropout;
}

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
