// freshrec: the command-line program. Each subcommand takes --config FILE and key=value overrides
// of any config key; errors print one clear message and exit non-zero.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>
#include <iostream>

#include <unistd.h>

#include "engine/bench/dist_bench.h"
#include "engine/config/config.h"
#include "engine/dist/dist_env.h"
#include "engine/jobs.h"

#ifdef FRESHREC_JEMALLOC_LINKED
// jemalloc's options, which MALLOC_CONF overrides: the pages a step frees stay with the process for the
// next step instead of going back to the kernel and being faulted in again (a training or stream step
// frees and allocates the same sizes every time; docs/BENCHMARKS.md, "Allocator").
extern "C" {
extern const char* malloc_conf;
const char* malloc_conf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
}
#endif

namespace {

struct ConfigArgs {
  std::string file;
  std::vector<std::string> overrides;
  bool print = false;

  void attach(CLI::App* command) {
    command->add_option("--config,-c", file, "YAML config file (keys not given keep their defaults)")
        ->check(CLI::ExistingFile);
    command->add_option("overrides", overrides, "key=value overrides of config keys, e.g. model.hidden=128");
    command->add_flag("--print-config", print, "print the resulting config and exit");
  }

  freshrec::Config build() const {
    freshrec::Config config = file.empty() ? freshrec::Config() : freshrec::Config::from_yaml_file(file);
    for (const auto& o : overrides) config.apply_override(o);
    return config;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"freshrec: train, keep fresh, distil and serve sequential recommenders (SASRec) on LibTorch"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  ConfigArgs train_args;
  std::string resume;
  auto* train = app.add_subcommand("train", "train a SASRec model on a leave-one-out split, keep the best checkpoint");
  train_args.attach(train);
  train->add_option("--resume", resume, "continue from the last.pt of a run with the same config")
      ->check(CLI::ExistingFile);

  ConfigArgs distill_args;
  std::string distill_teacher, distill_resume;
  auto* distill = app.add_subcommand(
      "distill", "train a student (the config's model) from a frozen teacher: labels plus the teacher's softened scores");
  distill_args.attach(distill);
  distill->add_option("--teacher", distill_teacher, "teacher checkpoint trained on the same data (best.pt)")
      ->required()->check(CLI::ExistingFile);
  distill->add_option("--resume", distill_resume, "continue from the last.pt of a run with the same config")
      ->check(CLI::ExistingFile);

  ConfigArgs finetune_args;
  std::string finetune_from, finetune_ids, finetune_resume;
  auto* finetune = app.add_subcommand(
      "finetune", "train the config's model on its data starting from a model trained elsewhere (see docs/FINETUNING.md)");
  finetune_args.attach(finetune);
  finetune->add_option("--from", finetune_from,
                       "the pre-trained model: a freshrec checkpoint or export, a torch.save state_dict, or safetensors")
      ->required()->check(CLI::ExistingFile);
  finetune->add_option("--ids", finetune_ids,
                       "for a state_dict or safetensors source: the external id of each item row (rows 1..N), one a line or a JSON list")
      ->check(CLI::ExistingFile);
  finetune->add_option("--resume", finetune_resume, "continue from the last.pt of a fine-tune with the same config and source")
      ->check(CLI::ExistingFile);

  std::string checkpoint, json_out;
  std::vector<std::string> eval_overrides;
  auto* eval = app.add_subcommand("eval", "full-ranking test metrics of a checkpoint beside the popularity baseline");
  eval->add_option("--checkpoint", checkpoint, "a best.pt or last.pt written by train")->required()->check(CLI::ExistingFile);
  eval->add_option("--json", json_out, "where to write the metrics (default: eval.json beside the checkpoint)");
  eval->add_option("overrides", eval_overrides, "key=value changes to the checkpoint's config, e.g. data.path=...");

  auto* data = app.add_subcommand("data", "inspect, generate or prepare interaction logs");
  data->require_subcommand(1);
  ConfigArgs stats_args, generate_args, prepare_args;
  auto* stats = data->add_subcommand("stats", "read a data set and print its statistics and reader problems");
  stats_args.attach(stats);
  std::string generate_out;
  auto* generate = data->add_subcommand("generate", "write the synthetic generator's log as CSV");
  generate_args.attach(generate);
  generate->add_option("--out,-o", generate_out, "output CSV file")->required();
  freshrec::DataPrepareJobOptions prepare_options;
  auto* prepare = data->add_subcommand(
      "prepare", "write the lines of data.path that pass the filters, in its own format (gzipped when --out ends in .gz)");
  prepare_args.attach(prepare);
  prepare->add_option("--out,-o", prepare_options.out, "output file")->required();
  prepare->add_option("--users", prepare_options.users, "keep users whose integer id is in FIRST-LAST, e.g. 1-2999");
  prepare->add_option("--min-user-events", prepare_options.min_user_events,
                      "keep users with at least this many events (counted before either minimum is applied)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  prepare->add_option("--min-item-events", prepare_options.min_item_events,
                      "keep items with at least this many events (counted before either minimum is applied)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);

  std::string plot_dir;
  auto* plot = app.add_subcommand(
      "plot", "draw a run folder's charts as SVG: stream.svg (rolling NDCG@10) and training.svg (loss, validation)");
  plot->add_option("run_dir", plot_dir, "a stream's stream.output_dir or a training's train.output_dir")
      ->required()->check(CLI::ExistingDirectory);

  ConfigArgs config_args;
  bool config_markdown = false;
  auto* config_cmd = app.add_subcommand("config", "print the resulting configuration, or the reference of every key");
  config_args.attach(config_cmd);
  config_cmd->add_flag("--markdown", config_markdown, "print the reference of every key as Markdown (docs/CONFIG.md)");

  std::string export_checkpoint, export_out, export_publish;
  auto* export_cmd = app.add_subcommand(
      "export", "a checkpoint's model (a stream checkpoint's student) as one self-contained TorchScript file");
  export_cmd->add_option("--checkpoint", export_checkpoint, "best.pt of train/distill, or a stream.pt")
      ->required()->check(CLI::ExistingFile);
  export_cmd->add_option("--out,-o", export_out, "TorchScript file to write");
  export_cmd->add_option("--publish", export_publish, "or: publish it as the next version in this folder (with manifest.json)");

  std::string recommend_model, recommend_history, recommend_file;
  int64_t recommend_k = 10;
  bool include_seen = false;
  auto* recommend = app.add_subcommand("recommend", "top-k items of an exported model for a history");
  recommend->add_option("--model", recommend_model, "exported TorchScript file")->required()->check(CLI::ExistingFile);
  recommend->add_option("--history", recommend_history, "item ids, oldest first, e.g. 12,45,7");
  recommend->add_option("--histories", recommend_file, "a file with one history a line (JSON lines out)")
      ->check(CLI::ExistingFile);
  recommend->add_option("-k", recommend_k, "how many items")->capture_default_str();
  recommend->add_flag("--include-seen", include_seen, "allow items of the history in the answer");

  freshrec::ServeJobOptions serve_options;
  auto* serve = app.add_subcommand("serve", "HTTP recommendations from the newest published model, with hot reload");
  serve->add_option("--models", serve_options.models_dir, "publication folder (manifest.json + model files)")->required();
  auto& limits = serve_options.http;
  serve->add_option("--port", limits.port, "TCP port (0: any free one)")->capture_default_str()->check(CLI::Range(0, 65535));
  serve->add_option("--host", limits.host, "address to listen on (0.0.0.0: every interface)")->capture_default_str();
  serve->add_option("--token-file", serve_options.token_file,
                    "file whose first line is a bearer token that /recommend and /metrics then require")
      ->check(CLI::ExistingFile);
  serve->add_option("--threads", limits.workers, "request worker threads")->capture_default_str()->check(CLI::Range(1, 1024));
  serve->add_option("--max-queue", limits.max_queue, "requests waiting for a worker; beyond: 503")
      ->capture_default_str()->check(CLI::Range(0, 1000000));
  serve->add_option("--max-connections", limits.max_connections, "open connections; beyond: 503 and closed")
      ->capture_default_str()->check(CLI::Range(1, 1000000));
  serve->add_option("--max-body-bytes", limits.max_body_bytes, "largest request body, however sent; beyond: 413")
      ->capture_default_str()->check(CLI::Range(1, 1 << 30));
  serve->add_option("--header-timeout-ms", limits.header_timeout_ms, "a new connection's request header must arrive whole within this")
      ->capture_default_str()->check(CLI::Range(1, 3600000));
  serve->add_option("--idle-timeout-ms", limits.idle_timeout_ms, "a kept-alive connection's next request header, whole, within this")
      ->capture_default_str()->check(CLI::Range(1, 3600000));
  serve->add_option("--request-timeout-ms", limits.request_timeout_ms, "a whole request (header and body) within this")
      ->capture_default_str()->check(CLI::Range(1, 3600000));
  serve->add_option("--write-timeout-ms", limits.write_timeout_ms, "the client must read the answer within this")
      ->capture_default_str()->check(CLI::Range(1, 3600000));
  serve->add_option("--poll-ms", serve_options.poll_ms, "how often the manifest is checked")
      ->capture_default_str()->check(CLI::Range(1, 3600000));
  serve->add_option("--max-history", serve_options.max_history, "longest history accepted")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  serve->add_option("--max-batch", serve_options.max_batch, "most histories per request")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{100000}));
  serve->add_option("--max-k", serve_options.max_k, "most items per answer")
      ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1000000}));

  ConfigArgs stream_args;
  std::string teacher, stream_student;
  bool stream_resume = false, compare_frozen = false;
  auto* stream = app.add_subcommand("stream", "continual updates from a stream of events: test-then-train");
  stream_args.attach(stream);
  stream->add_option("--teacher", teacher, "checkpoint to start from (replay without one pre-trains it)")
      ->check(CLI::ExistingFile);
  stream->add_option("--student", stream_student, "student checkpoint (from distill) to train online and publish")
      ->check(CLI::ExistingFile);
  stream->add_flag("--resume", stream_resume, "continue from the stream checkpoint in stream.output_dir");
  stream->add_flag("--compare-frozen", compare_frozen, "also replay through the frozen teacher and compare");

  auto* bench = app.add_subcommand("bench", "measure the engine beside its baselines, in one run");
  bench->require_subcommand(1);
  freshrec::KernelBenchOptions kernel_bench;
  auto* bench_kernels = bench->add_subcommand(
      "kernels", "embedding-table update step: fused row-wise Adam vs LibTorch dense and sparse paths, and the bound");
  bench_kernels->add_option("--rows", kernel_bench.rows, "table rows (default 10,000,000 on a GPU, 1,000,000 on the CPU)");
  bench_kernels->add_option("--dim", kernel_bench.dim, "embedding width (default 128 on a GPU, 64 on the CPU)");
  bench_kernels->add_option("--lookups", kernel_bench.lookups, "lookups per step")->capture_default_str();
  bench_kernels->add_option("--steps", kernel_bench.steps, "timed steps (default 50 on a GPU, 5 on the CPU)");
  bench_kernels->add_option("--device", kernel_bench.device, "auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();

  std::string bench_serve_model;
  int64_t bench_serve_requests = 2000, bench_serve_history = 200, bench_serve_k = 10, bench_serve_batch = 1;
  auto* bench_serve = bench->add_subcommand(
      "serve", "latency of one recommendation request: direct TorchScript call and through HTTP serve");
  bench_serve->add_option("--model", bench_serve_model, "exported TorchScript file")->required()->check(CLI::ExistingFile);
  bench_serve->add_option("--requests", bench_serve_requests, "timed requests")->capture_default_str();
  bench_serve->add_option("--history", bench_serve_history, "history items per request")->capture_default_str();
  bench_serve->add_option("-k", bench_serve_k, "items per answer")->capture_default_str();
  bench_serve->add_option("--batch", bench_serve_batch, "histories per call (one HTTP request with `histories`)")
      ->capture_default_str();

  freshrec::TrainBenchOptions train_bench;
  auto* bench_train = bench->add_subcommand(
      "train", "SASRec training step: freshrec beside the PyTorch-eager reference (tools/bench), same shapes");
  bench_train->add_option("--device", train_bench.device, "auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  bench_train->add_option("--items", train_bench.items, "catalog size")->capture_default_str();
  bench_train->add_option("--hidden", train_bench.hidden, "width")->capture_default_str();
  bench_train->add_option("--blocks", train_bench.blocks, "blocks")->capture_default_str();
  bench_train->add_option("--heads", train_bench.heads, "attention heads")->capture_default_str();
  bench_train->add_option("--batch", train_bench.batch, "sequences per step")->capture_default_str();
  bench_train->add_option("--length", train_bench.length, "history length")->capture_default_str();
  bench_train->add_option("--loss", train_bench.loss, "full or sampled")
      ->check(CLI::IsMember({"full", "sampled"}))->capture_default_str();
  bench_train->add_option("--negatives", train_bench.negatives, "shared negatives (sampled loss)")->capture_default_str();
  bench_train->add_flag("--sparse", train_bench.sparse, "row-wise Adam kernels for the item table (sampled loss)");
  bench_train->add_option("--steps", train_bench.steps, "timed steps")->capture_default_str();
  bench_train->add_option("--warmup", train_bench.warmup, "untimed steps first")->capture_default_str();
  bench_train->add_option("--precision", train_bench.precision, "fp32, tf32 (GPU matmuls) or bf16 (autocast)")
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}))->capture_default_str();
  bench_train->add_option("--ce-chunk", train_bench.ce_chunk, "rows per fused cross-entropy chunk (0: 256 CPU, 8192 GPU)");
  bench_train->add_option("--threads", train_bench.threads, "CPU threads (0: all cores)");
  bench_train->add_option("--python", train_bench.python, "Python with torch for the reference (\"\": skip it)")
      ->capture_default_str();
  bench_train->add_option("--reference", train_bench.reference, "the reference script")->capture_default_str();

  ConfigArgs bench_stream_args;
  std::string bench_teacher, bench_python = ".venv/bin/python";
  auto* bench_stream = bench->add_subcommand(
      "stream", "stream throughput (events/s) and arrival-to-update latency, continual beside frozen scoring");
  bench_stream_args.attach(bench_stream);
  bench_stream->add_option("--teacher", bench_teacher, "checkpoint to start from (default: pre-train one)")
      ->check(CLI::ExistingFile);
  bench_stream->add_option("--python", bench_python,
                           "Python with torch for the PyTorch-eager reference step (\"\": skip it)")->capture_default_str();

  ConfigArgs bench_dist_args;
  freshrec::DistBenchOptions dist_bench;
  auto* bench_dist = bench->add_subcommand(
      "dist", "a training job as one process and as several (torchrun, c10d) on the same batches: step time, "
              "time in collectives, bytes reduced, the item table's memory per rank");
  bench_dist_args.attach(bench_dist);
  bench_dist->add_option("--processes", dist_bench.processes, "ranks of the distributed job")->capture_default_str();
  bench_dist->add_option("--threads", dist_bench.threads, "CPU threads in all (each rank gets its share)")
      ->capture_default_str();
  bench_dist->add_option("--torchrun", dist_bench.torchrun, "the torchrun program")->capture_default_str();
  bench_dist->add_option("--out", dist_bench.output_dir, "folder of the two runs (default: under train.output_dir)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  // In a job of several processes each line names its rank, and ranks other than 0 log only their
  // warnings and errors (a malformed variable is reported by the job that needs it).
  try {
    if (const auto env = freshrec::DistEnv::from_environment(); env.distributed()) {
      spdlog::set_pattern("[%H:%M:%S.%e] [rank " + std::to_string(env.rank) + "] [%^%l%$] %v");
      if (env.rank > 0) spdlog::set_level(std::max(spdlog::get_level(), spdlog::level::warn));
    }
  } catch (const std::exception&) {
  }

  try {
    auto with_config = [](const ConfigArgs& args, auto job) {
      const freshrec::Config config = args.build();
      if (args.print) {
        std::cout << config.to_yaml();
        return 0;
      }
      return job(config);
    };
    if (*train) return with_config(train_args, [&](const freshrec::Config& c) { return freshrec::run_train_job(c, resume); });
    if (*distill)
      return with_config(distill_args, [&](const freshrec::Config& c) {
        return freshrec::run_train_job(c, distill_resume, distill_teacher);
      });
    if (*finetune)
      return with_config(finetune_args, [&](const freshrec::Config& c) {
        return freshrec::run_finetune_job(c, finetune_from, finetune_ids, finetune_resume);
      });
    if (*export_cmd) return freshrec::run_export_job(export_checkpoint, export_out, export_publish);
    if (*recommend)
      return freshrec::run_recommend_job(recommend_model, recommend_history, recommend_file, recommend_k, include_seen);
    if (*serve) return freshrec::run_serve_job(serve_options);
    if (*eval) return freshrec::run_eval_job(checkpoint, eval_overrides, json_out);
    if (*stream)
      return with_config(stream_args, [&](const freshrec::Config& c) {
        return freshrec::run_stream_job(c, teacher, stream_student, stream_resume, compare_frozen);
      });
    if (*bench_dist)
      return with_config(bench_dist_args, [&](const freshrec::Config& c) { return freshrec::run_dist_bench_job(c, dist_bench); });
    if (*bench_stream)
      return with_config(bench_stream_args, [&](freshrec::Config c) {
        // A fresh output folder, so a benchmark never resumes or appends to another run.
        const std::string out = c.get_string("stream.output_dir") + "/bench-" + std::to_string(::getpid());
        c.set("stream.output_dir", out, "bench stream");
        // First the teacher alone (frozen vs continual, beside the reference's step), then, when the
        // config has a student or publication, the whole loop for the event-to-published delay.
        const bool publishing = c.get_int("stream.publish_every") > 0 || c.get_float("stream.publish_seconds") > 0;
        const bool student = c.get_int("student.hidden") > 0;
        freshrec::Config teacher_only = c;
        teacher_only.set("student.hidden", "0", "bench stream");
        teacher_only.set("stream.publish_every", "0", "bench stream");
        teacher_only.set("stream.publish_seconds", "0", "bench stream");
        int rc = freshrec::run_stream_job(teacher_only, bench_teacher, "", false, true, bench_python);
        if (rc != 0 || (!publishing && !student)) return rc;
        freshrec::Config whole = c;
        whole.set("stream.output_dir", out + "/with-student", "bench stream");
        std::printf("\nthe whole loop: %s%s\n", student ? "online distillation of the student" : "the teacher alone",
                    publishing ? ", publication on" : "");
        const std::string teacher = bench_teacher.empty() ? out + "/teacher/best.pt" : bench_teacher;
        return freshrec::run_stream_job(whole, teacher, "", false, false);
      });
    if (*bench_serve)
      return freshrec::run_serve_bench_job(bench_serve_model, bench_serve_requests, bench_serve_history, bench_serve_k,
                                           bench_serve_batch);
    if (*bench_train) return freshrec::run_train_bench_job(train_bench);
    if (*bench_kernels) return freshrec::run_kernel_bench_job(kernel_bench);
    if (*stats) return with_config(stats_args, [](const freshrec::Config& c) { return freshrec::run_data_stats_job(c); });
    if (*prepare)
      return with_config(prepare_args, [&](const freshrec::Config& c) { return freshrec::run_data_prepare_job(c, prepare_options); });
    if (*plot) return freshrec::run_plot_job(plot_dir);
    if (*config_cmd)
      return with_config(config_args, [&](const freshrec::Config& c) { return freshrec::run_config_job(c, config_markdown); });
    if (*generate)
      return with_config(generate_args, [&](const freshrec::Config& c) { return freshrec::run_data_generate_job(c, generate_out); });
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
