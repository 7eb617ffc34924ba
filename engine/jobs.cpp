// Subcommand jobs; see jobs.h.
#include "engine/jobs.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "engine/bench/reference.h"
#include "engine/checkpoint/checkpoint.h"
#include "engine/data/readers.h"
#include "engine/dist/dist_env.h"
#include "engine/dist/process_group.h"
#include "engine/data/sequences.h"
#include "engine/eval/evaluator.h"
#include "engine/finetune/finetune.h"
#include "engine/finetune/pretrained.h"
#include "engine/runtime.h"
#include "engine/stream/sources.h"
#ifdef FRESHREC_WITH_KAFKA
#include "engine/stream/kafka_source.h"
#endif
#include "engine/stream/stream_learner.h"
#include "engine/stream/stream_manifest.h"
#include "engine/train/trainer.h"
#include "engine/io/atomic_file.h"
#include "engine/report/run_charts.h"

namespace freshrec {
namespace {

// A run folder's charts (engine/report): a chart that cannot be drawn is reported, never fatal to the job.
void write_charts(const std::string& dir) {
  try {
    for (const std::string& path : write_run_charts(dir)) std::printf("chart: %s\n", path.c_str());
  } catch (const std::exception& e) {
    spdlog::warn("charts of {} not written: {}", dir, e.what());
  }
}

EventLog load_and_report(const Config& config) {
  ReadReport report;
  EventLog log = load_event_log(config, &report);
  if (report.error_count() > 0) spdlog::warn("{}", report.summary());
  else spdlog::info("{}", report.summary());
  return log;
}

// Re-expresses a log in a checkpoint's item ids; events of items the model never saw are dropped
// (and counted), since a model cannot rank an item it has no row for.
EventLog remap_items(const EventLog& log, const IdMap& items, size_t* dropped) {
  EventLog out;
  out.items = items;
  out.users = log.users;
  *dropped = 0;
  for (const auto& e : log.events) {
    const int32_t id = items.find(log.items.external(e.item));
    if (id < 0) { ++*dropped; continue; }
    Event copy = e;
    copy.item = id;
    out.events.push_back(copy);
  }
  return out;
}


// The PyTorch eager reference's test-then-train step (tools/bench/sasrec_reference.py) at a stream
// pass's final shapes: its model as the pass's checkpoint has it, the stream's micro-batch, for about
// half as many steps as the pass had micro-batches (the reference's step is the slower, so it runs
// about as long as the pass did).
struct ReferenceStep {
  double events_per_s = 0;
  int64_t steps = 0;
  std::string device, torch;
};

ReferenceStep measure_reference(const Config& config, const StreamSummary& pass, const std::string& python) {
  const auto info = read_checkpoint_info(pass.checkpoint);
  const SASRecOptions m = sasrec_options_from_config(info.config(), info.meta.at("num_items").get<int64_t>());
  ReferenceStep result;
  result.device = select_device(config.get_string("train.device")).str();
  const int64_t batch = config.get_int("stream.batch_size");
  result.steps = std::max<int64_t>(20, (static_cast<int64_t>(pass.events) + 2 * batch - 1) / (2 * batch));
  const std::string command =
      python + " -W ignore tools/bench/sasrec_reference.py --mode stream --device " + result.device + " --items " +
      std::to_string(m.num_items) + " --hidden " + std::to_string(m.hidden) + " --blocks " + std::to_string(m.blocks) +
      " --heads " + std::to_string(m.heads) + " --length " + std::to_string(m.maxlen) + " --batch " +
      std::to_string(batch) + " --loss " + config.get_string("stream.loss") + " --negatives " +
      std::to_string(config.get_int("train.negatives")) + " --threads " + std::to_string(torch::get_num_threads()) +
      " --dropout " + std::to_string(update_dropout(config, m.dropout)) + " --precision " +
      config.get_string("train.precision") + " --steps " + std::to_string(result.steps) + " --warmup 3";
  const nlohmann::json r = run_python_reference(command);
  result.events_per_s = r.at("events_per_s").get<double>();
  result.torch = r.at("torch").get<std::string>();
  return result;
}
}  // namespace

int run_train_job(const Config& config, const std::string& resume_path, const std::string& teacher_path) {
  const EventLog log = load_and_report(config);
  const TrainSummary s = train_model(config, log, resume_path, teacher_path);
  if (DistEnv::from_environment().rank != 0) return 0;  // in a job of several, rank 0 reports
  std::printf("\nbest epoch %lld of %lld%s, %.0f s, %lld parameters\n", static_cast<long long>(s.best_epoch),
              static_cast<long long>(s.epochs_run), s.early_stopped ? " (early stop)" : "", s.seconds,
              static_cast<long long>(s.parameters));
  std::printf("validation (best epoch):\n%s", format_metrics_table({{"SASRec", s.best_validation}}).c_str());
  if (teacher_path.empty()) {
    std::printf("test:\n%s", format_metrics_table({{"SASRec", s.test}, {"popularity", s.popularity_test}}).c_str());
  } else {
    // The teacher on the same split, for the retained share of its quality.
    const torch::Device device = select_device(config.get_string("train.device"));
    SASRec teacher = load_checkpoint_model(teacher_path, device);
    EvalOptions options;
    options.ks = config.get_int_list("eval.ks");
    options.batch_size = config.get_int("eval.batch_size");
    options.filter_seen = config.get_bool("eval.filter_seen");
    const RankingMetrics teacher_test =
        evaluate_model(teacher, UserSequences::from_log(log), Split::Test, options, device);
    std::printf("test:\n%s", format_metrics_table({{"student", s.test}, {"teacher", teacher_test},
                                                     {"popularity", s.popularity_test}})
                                 .c_str());
    std::printf("student %lld parameters (%.1f%% of the teacher's %lld), NDCG@10 %.1f%% of the teacher's\n",
                static_cast<long long>(s.parameters), 100.0 * s.parameters / teacher->parameter_count(),
                static_cast<long long>(teacher->parameter_count()), 100.0 * s.test.ndcg(10) / teacher_test.ndcg(10));
  }
  std::printf("checkpoint: %s\n", s.best_checkpoint.c_str());
  write_charts(config.get_string("train.output_dir"));
  return 0;
}

int run_finetune_job(const Config& config, const std::string& from, const std::string& ids_path,
                     const std::string& resume_path) {
  // The source and the data are read and checked before anything is written.
  const PretrainedModel source = load_pretrained(from, ids_path);
  EventLog log = load_and_report(config);
  check_same_architecture(source, sasrec_options_from_config(config, log.num_items()));
  const FinetuneOptions finetune = FinetuneOptions::from_config(config);
  if (finetune.keep_unmentioned) {
    const int64_t added = add_unmentioned_items(log, source);
    spdlog::info("kept {} items the source knows and the data never mentions", added);
  }
  const TrainSummary s = train_model(config, log, resume_path, "", &source);  // sets the threads
  if (DistEnv::from_environment().rank != 0) return 0;  // in a job of several, rank 0 reports

  // The source as it is, on this data restricted to the items it knows (its own leave-one-out split).
  const torch::Device device = select_device(config.get_string("train.device"));
  IdMap source_items(1);
  for (const auto& id : source.item_ids) source_items.intern(id);
  size_t dropped = 0;
  const EventLog known = remap_items(log, source_items, &dropped);
  SASRecOptions options = sasrec_options_from_config(config, static_cast<int64_t>(source_items.size()));
  SASRec as_is(options);
  align_to_catalogue(as_is, source, source_items, "random");
  as_is->to(device);
  EvalOptions eval;
  eval.ks = config.get_int_list("eval.ks");
  eval.batch_size = config.get_int("eval.batch_size");
  eval.filter_seen = config.get_bool("eval.filter_seen");
  const UserSequences known_sequences = UserSequences::from_log(known);
  const RankingMetrics source_test = evaluate_model(as_is, known_sequences, Split::Test, eval, device);
  const RankingMetrics known_popularity = evaluate_popularity(known_sequences, Split::Test, eval);

  std::printf("\nbest epoch %lld of %lld%s, %.0f s, %lld parameters, %lld trained\n", static_cast<long long>(s.best_epoch),
              static_cast<long long>(s.epochs_run), s.early_stopped ? " (early stop)" : "", s.seconds,
              static_cast<long long>(s.parameters), static_cast<long long>(s.trained_parameters));
  std::printf("validation (best epoch):\n%s", format_metrics_table({{"fine-tuned", s.best_validation}}).c_str());
  std::printf("test:\n%s", format_metrics_table({{"fine-tuned", s.test}, {"popularity", s.popularity_test}}).c_str());
  std::printf("test of the source as it is (%s), on this data without the items it does not know (their %zu events "
              "removed from every history, leave-one-out on what remains: another split than the one above):\n%s",
              source.kind.c_str(), dropped,
              format_metrics_table({{"source", source_test}, {"popularity", known_popularity}}).c_str());
  const std::filesystem::path out_dir = config.get_string("train.output_dir");
  write_file_atomically((out_dir / "source_test.json").string(),
                        nlohmann::json{{"source", source.path},
                                       {"kind", source.kind},
                                       {"events_left_out", dropped},
                                       {"test", nlohmann::json::parse(source_test.to_json())},
                                       {"popularity_test", nlohmann::json::parse(known_popularity.to_json())}}
                                .dump(2) + "\n");
  std::printf("checkpoint: %s\n", s.best_checkpoint.c_str());
  write_charts(config.get_string("train.output_dir"));
  return 0;
}

int run_eval_job(const std::string& checkpoint, const std::vector<std::string>& overrides, const std::string& json_path) {
  const CheckpointInfo info = read_checkpoint_info(checkpoint);
  Config config = info.config();
  for (const auto& o : overrides) config.apply_override(o);
  configure_threads(config.get_int("train.threads"));
  // Under a launcher each rank ranks its share of the users and the metrics' sums are reduced.
  const DistEnv dist = DistEnv::from_environment();
  const torch::Device device = job_device(dist, select_device(config.get_string("train.device")));
  const std::unique_ptr<ProcessGroup> group = join_job(dist, config, device);
  size_t dropped = 0;
  const EventLog log = remap_items(load_and_report(config), info.items, &dropped);
  if (dropped) spdlog::warn("{} events name items the checkpoint does not know; they are left out", dropped);
  const UserSequences sequences = UserSequences::from_log(log);
  EvalOptions options;
  options.ks = config.get_int_list("eval.ks");
  options.batch_size = config.get_int("eval.batch_size");
  options.filter_seen = config.get_bool("eval.filter_seen");
  options.shard = dist.rank, options.shards = dist.world_size;
  SASRec model = load_checkpoint_model(checkpoint, device);
  const RankingMetrics test = summed(group.get(), evaluate_model(model, sequences, Split::Test, options, device));
  const RankingMetrics popularity = summed(group.get(), evaluate_popularity(sequences, Split::Test, options));
  if (dist.rank != 0) return 0;  // rank 0 reports
  std::printf("test (full ranking%s), %s:\n%s", options.filter_seen ? ", seen items filtered" : "", checkpoint.c_str(),
              format_metrics_table({{"SASRec", test}, {"popularity", popularity}}).c_str());
  const std::string out = json_path.empty()
                              ? (std::filesystem::path(checkpoint).parent_path() / "eval.json").string()
                              : json_path;
  write_file_atomically(out, nlohmann::json{{"checkpoint", checkpoint},
                                            {"split", "test"},
                                            {"filter_seen", options.filter_seen},
                                            {"model", nlohmann::json::parse(test.to_json())},
                                            {"popularity", nlohmann::json::parse(popularity.to_json())},
                                            {"checkpoint_meta", info.meta}}
                                 .dump(2) + "\n");
  std::printf("metrics written to %s\n", out.c_str());
  return 0;
}

int run_stream_job(const Config& config, const std::string& teacher_path, const std::string& student_path, bool resume,
                   bool compare_frozen, const std::string& reference_python) {
  check_stream_settings(config);
  const DistEnv dist = DistEnv::from_environment();
  const std::filesystem::path out = config.get_string("stream.output_dir");
  if (dist.distributed()) {
    // A job of several replays a log (each rank learning from its users' events) or consumes a Kafka
    // topic (each rank its share of the partitions); what else the stream job does runs as one process.
    const std::string job = "a stream of several processes (WORLD_SIZE=" + std::to_string(dist.world_size) + ")";
    const std::string source = config.get_string("stream.source");
    if (source != "replay" && source != "kafka")
      throw ConfigError(job + " replays a log or consumes Kafka (stream.source=replay or kafka); stream.source=" +
                        source + " runs as one process");
    // A rank whose share is late waits for it in a collective at most stream.max_wait_ms.
    if (source == "kafka" && config.get_int("stream.max_wait_ms") >= 1000 * config.get_float("dist.timeout_seconds"))
      throw ConfigError(job + " closes a micro-batch at least every stream.max_wait_ms (" +
                        std::to_string(config.get_int("stream.max_wait_ms")) +
                        " ms), which must be shorter than dist.timeout_seconds, the longest a rank waits for the others");
    if (compare_frozen || !reference_python.empty())
      throw ConfigError(job + " runs the continual pass alone: --compare-frozen and the reference run as one process");
    if (config.get_string("stream.loss") != "sampled")
      throw ConfigError(job + " needs stream.loss=sampled: each step gathers the touched item rows' gradients from "
                        "every rank, and a full softmax touches every row");
    // torchrun --max-restarts starts the same command again after a rank failed: it resumes from the
    // job's last complete checkpoint, when it has one.
    // torchrun's run id (TORCHELASTIC_RUN_ID) in the manifest tells this job's checkpoints from an
    // earlier job's in the same folder.
    if (!resume && dist.restart_count > 0) {
      const auto manifest = read_stream_manifest((out / "continual").string());
      if (manifest && !dist.run_id.empty() && manifest->run_id == dist.run_id) {
        spdlog::warn("restart {} of the job: resuming from {}", dist.restart_count,
                     (out / "continual" / kStreamManifest).string());
        resume = true;
      } else if (manifest) {
        spdlog::warn("restart {} of the job: {} is another job's (run id '{}', this one's '{}'): starting afresh",
                     dist.restart_count, (out / "continual" / kStreamManifest).string(), manifest->run_id, dist.run_id);
      }
    }
    if (teacher_path.empty() && !resume)
      throw ConfigError(job + " needs --teacher CHECKPOINT (`freshrec train` pre-trains one, under the launcher too)");
    const bool sharded = config.get_string("dist.item_table") == "row_sharded";
    if (sharded && (!student_path.empty() || config.get_int("student.hidden") > 0))
      throw ConfigError(job + " with dist.item_table=row_sharded updates the teacher alone (the student would need "
                        "the whole table): no --student, student.hidden=0");
    if (student_path.empty() && !resume && config.get_int("student.hidden") > 0)
      throw ConfigError(job + " distils no student before it starts: give one with --student CHECKPOINT "
                        "(`freshrec distill` trains one, under the launcher too), or student.hidden=0");
  }
  if (!reference_python.empty() && config.get_string("stream.source") != "replay")
    throw ConfigError("the PyTorch reference's step is measured on a replayed stream (stream.source=" +
                      config.get_string("stream.source") + " given; --python \"\" skips the reference)");
  StreamRun continual;
  continual.output_dir = (out / "continual").string();
  continual.teacher = teacher_path;
  continual.student = student_path;
  continual.publish_dir = config.get_string("stream.publish_dir");
  if (resume && dist.distributed()) {
    continual.resume = stream_shard_to_resume(continual.output_dir, dist.rank, dist.world_size);
  } else if (resume) {
    continual.resume = (out / "continual" / "stream.pt").string();
    if (const auto manifest = read_stream_manifest(continual.output_dir))
      throw std::runtime_error(continual.output_dir + ": the stream was checkpointed by " +
                               std::to_string(manifest->world_size) + " processes (" + kStreamManifest +
                               "); resume it under a launcher of as many (WORLD_SIZE=" +
                               std::to_string(manifest->world_size) + ")");
    if (!std::filesystem::exists(continual.resume))
      throw std::runtime_error(continual.resume + ": nothing to resume (no stream checkpoint there)");
  }
  std::vector<std::pair<std::string, StreamSummary>> results;
  std::optional<StreamSummary> labels_only;  // --compare-frozen with a student: the student without the teacher
  std::optional<ReferenceStep> reference;     // the PyTorch reference's step, with a replayed source
  std::optional<StreamSummary> repeat;        // the last pass again, after the reference
  if (config.get_string("stream.source") == "stdin") {
    if (continual.teacher.empty() && !resume) throw ConfigError("stream.source=stdin needs --teacher CHECKPOINT");
    LineStreamSource source(std::cin, parse_line_format(config.get_string("stream.line_format")));
    results.emplace_back("continual", run_stream(config, source, {}, continual));
  } else if (config.get_string("stream.source") == "kafka") {
#ifdef FRESHREC_WITH_KAFKA
    if (continual.teacher.empty() && !resume) throw ConfigError("stream.source=kafka needs --teacher CHECKPOINT");
    KafkaOptions options = KafkaOptions::from_config(config);
    options.member = dist.rank, options.members = dist.world_size;
    KafkaSource source(options);
    results.emplace_back("continual", run_stream(config, source, {}, continual));
#else
    throw ConfigError("stream.source=kafka: this build has no Kafka support (librdkafka was not found)");
#endif
  } else {
    ReplaySource source = config.get_string("data.format") == "generated"
                              ? ReplaySource::from_log(load_event_log(config, nullptr), "generator")
                              : ReplaySource::from_file(config.get_string("data.path"), ReaderOptions::from_config(config));
    const uint64_t cut = source.quantile_position(config.get_float("stream.pretrain_fraction"));
    const std::vector<RawEvent> warm = source.events_before(cut);
    spdlog::info("replay: {} events before the {:.0f}% time quantile, {} to stream", warm.size(),
                 100 * config.get_float("stream.pretrain_fraction"), source.records().size() - cut);
    if (continual.teacher.empty() && !resume) {
      if (warm.empty()) throw ConfigError("stream.pretrain_fraction leaves no events to pre-train a teacher on");
      Config teacher_config = config;
      teacher_config.set("train.output_dir", (out / "teacher").string(), "stream job");
      continual.teacher = train_model(teacher_config, event_log_from(warm)).best_checkpoint;
    }
    if (continual.student.empty() && !resume && config.get_int("student.hidden") > 0) {
      // A student distilled from the teacher on the same events: model.* from student.*.
      Config student_config = config;
      for (const char* key : {"hidden", "blocks", "heads"})
        student_config.set(std::string("model.") + key, std::to_string(config.get_int(std::string("student.") + key)),
                           config.origin(std::string("student.") + key));
      if (config.get_int("student.maxlen") > 0)
        student_config.set("model.maxlen", std::to_string(config.get_int("student.maxlen")), config.origin("student.maxlen"));
      student_config.set("train.output_dir", (out / "student").string(), "stream job");
      spdlog::info("distilling a student (hidden {}, {} blocks) from {}", config.get_int("student.hidden"),
                   config.get_int("student.blocks"), continual.teacher);
      continual.student = train_model(student_config, event_log_from(warm), "", continual.teacher).best_checkpoint;
    }
    const double replay_share = config.get_float("stream.replay_share");
    if (compare_frozen) {
      StreamRun frozen = continual;
      frozen.learn = false, frozen.resume.clear(), frozen.label = "frozen", frozen.student.clear();
      frozen.output_dir = (out / "frozen").string();
      source.skip_to(cut);
      results.emplace_back("frozen", run_stream(config, source, warm, frozen));
      if (replay_share > 0) {  // continual without replay too, so the replay's effect shows
        Config plain = config;
        plain.set("stream.replay_share", "0", "stream job");
        source.skip_to(cut);
        StreamRun without_replay = continual;
        without_replay.publish_dir.clear();  // the run with replay publishes to stream.publish_dir
        results.emplace_back("continual", run_stream(plain, source, warm, without_replay));
        continual.output_dir = (out / "replay").string(), continual.label = "replay";
      }
      if (!continual.student.empty()) {
        // The same student updated on the stream's labels alone (distill.alpha=1: no teacher term), so
        // that what online distillation adds shows; its teacher's updates repeat the continual run's.
        Config alone = config;
        alone.set("distill.alpha", "1", "stream job");
        alone.set("distill.ranking_k", "0", "stream job");
        alone.set("distill.ranking_weight", "0", "stream job");
        alone.set("stream.publish_every", "0", "stream job");
        alone.set("stream.publish_seconds", "0", "stream job");
        StreamRun labels = continual;
        labels.resume.clear(), labels.publish_dir.clear(), labels.label = kLabelsOnlyRun;
        labels.output_dir = (out / "student-labels").string();
        source.skip_to(cut);
        labels_only = run_stream(alone, source, warm, labels);
      }
    }
    source.skip_to(cut);
    results.emplace_back(continual.label, run_stream(config, source, warm, continual));
    if (!reference_python.empty()) {
      // The reference's step is timed between two equal passes of ours (the second streams the same
      // events from the same teacher, unpublished), so that a drift of this machine's speed during
      // the run weighs on both sides alike.
      reference = measure_reference(config, results.back().second, reference_python);
      StreamRun again = continual;
      again.publish_dir.clear(), again.label = "repeat";
      again.output_dir = (out / "repeat").string();
      source.skip_to(cut);
      repeat = run_stream(config, source, warm, again);
    }
  }
  if (dist.rank != 0) return 0;  // rank 0 reports for the job
  std::printf("\nprequential (test-then-train) metrics over the stream:\n%-10s %9s %9s %9s %8s %9s %9s %8s %8s %9s %9s %9s\n",
              "model", "events", "HR@10", "NDCG@10", "MRR", "cold", "new items", "dead", "s", "events/s",
              "p50 ms", "p99 ms");
  for (const auto& [name, s] : results)
    std::printf("%-10s %9llu %9.4f %9.4f %8.4f %9llu %9llu %8llu %8.1f %9.0f %9.1f %9.1f\n", name.c_str(),
                static_cast<unsigned long long>(s.scored), s.overall.hit_rate(10), s.overall.ndcg(10), s.overall.mrr(),
                static_cast<unsigned long long>(s.cold_items), static_cast<unsigned long long>(s.new_items),
                static_cast<unsigned long long>(s.dead_letters), s.seconds, s.events / std::max(s.seconds, 1e-9),
                s.latency_p50_ms, s.latency_p99_ms);
  for (const auto& [name, s] : results)
    if (s.student_overall.count() > 0)
      std::printf("%-10s %9llu %9.4f %9.4f %8.4f   (the student of '%s', distilled online, scored before each step)\n",
                  "student", static_cast<unsigned long long>(s.student_overall.count()), s.student_overall.hit_rate(10),
                  s.student_overall.ndcg(10), s.student_overall.mrr(), name.c_str());
  if (labels_only && labels_only->student_overall.count() > 0)
    std::printf("%-10s %9llu %9.4f %9.4f %8.4f   (the same student updated on the labels alone, no teacher term)\n",
                "student", static_cast<unsigned long long>(labels_only->student_overall.count()),
                labels_only->student_overall.hit_rate(10), labels_only->student_overall.ndcg(10),
                labels_only->student_overall.mrr());
  if (results.size() >= 2 && results[0].second.overall.ndcg(10) > 0)
    for (size_t i = 1; i < results.size(); ++i)
      std::printf("%s / frozen NDCG@10: %.3f\n", results[i].first.c_str(),
                  results[i].second.overall.ndcg(10) / results[0].second.overall.ndcg(10));
  for (const auto& [name, s] : results)
    if (s.publications > 0)
      std::printf("%s: %llu versions published; event arrival to the first published model that learned from it: "
                  "p50 %.1f ms, p99 %.1f ms\n",
                  name.c_str(), static_cast<unsigned long long>(s.publications), s.publish_delay_p50_ms,
                  s.publish_delay_p99_ms);
  {
    // Where the last run's time went, and its model step alone (what the reference's step does).
    const auto& [name, s] = results.back();
    const auto& p = s.profile;
    const double total = std::max(s.seconds, 1e-9);
    auto share = [&](const char* what, double seconds) {
      std::printf("  %-9s %7.2f s %5.1f%%\n", what, seconds, 100 * seconds / total);
    };
    std::printf("where %s's %.1f s went (host clock; on a GPU the device's time shows as readout):\n", name.c_str(),
                s.seconds);
    share("source", p.source);
    share("batching", p.batching);
    if (p.excluded > 0) share("excluded", p.excluded);
    share("ranking", p.ranking);
    share("forward", p.forward);
    share("update", p.update);
    if (p.student > 0) share("student", p.student);
    share("readout", p.readout);
    share("saving", p.saving);
    if (p.model_step() > 0)
      std::printf("%s model step alone (ranking, forward, update%s): %.0f events/s; whole loop: %.0f events/s\n",
                  name.c_str(), p.student > 0 ? ", student" : "", s.events / p.model_step(), s.events / total);
    if (s.events > 0)
      std::printf("host work (source, batching, readout): %.1f us an event\n", 1e6 * p.host() / static_cast<double>(s.events));
  }
  std::printf("checkpoint: %s\n", results.back().second.checkpoint.c_str());
  write_charts(out.string());
  if (reference) {
    const auto& s = results.back().second;
    const double steps[2] = {s.events / std::max(s.profile.model_step(), 1e-9),
                             repeat->events / std::max(repeat->profile.model_step(), 1e-9)};
    const double wholes[2] = {s.events / std::max(s.seconds, 1e-9), repeat->events / std::max(repeat->seconds, 1e-9)};
    if (repeat->overall.ndcg(10) != s.overall.ndcg(10) || repeat->events != s.events)
      spdlog::warn("the repeated pass differs from the first: NDCG@10 {} vs {}, {} vs {} events",
                   repeat->overall.ndcg(10), s.overall.ndcg(10), repeat->events, s.events);
    const double step = (steps[0] + steps[1]) / 2, whole = (wholes[0] + wholes[1]) / 2;
    std::printf("PyTorch eager reference, test-then-train step alone (same shapes, %s, %s, torch %s, %lld steps): "
                "%.0f events/s\n"
                "%s model step: %.0f events/s before the reference, %.0f after; whole loop: %.0f, %.0f\n"
                "%s model step / reference step: %.2fx; whole loop / reference step: %.2fx (the two passes' mean)\n",
                reference->device.c_str(), config.get_string("train.precision").c_str(), reference->torch.c_str(),
                static_cast<long long>(reference->steps), reference->events_per_s, results.back().first.c_str(), steps[0], steps[1],
                wholes[0], wholes[1], results.back().first.c_str(), step / reference->events_per_s,
                whole / reference->events_per_s);
  }
  return 0;
}

}  // namespace freshrec
