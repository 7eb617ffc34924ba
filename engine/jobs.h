// The jobs behind the command-line subcommands, with a torch-free interface so that the program's
// front end compiles in seconds. Each prints its results and returns a process exit code. The data,
// plot and config jobs are in data_jobs.cpp (no LibTorch); the rest in jobs.cpp and serving_jobs.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/serve/http_server.h"

namespace freshrec {

// `freshrec train`: read the data, train, print validation/test metrics beside popularity.
// `freshrec distill`: the same with a teacher checkpoint (the config describes the student); also
// prints the teacher's test metrics and the share of them the student keeps.
int run_train_job(const Config& config, const std::string& resume_path, const std::string& teacher_path = "");

// `freshrec finetune`: train the config's model starting from a pre-trained source (a freshrec
// checkpoint or export, or a PyTorch state_dict or safetensors file with its ids file), aligned to
// this data's items by external id (engine/finetune/); prints the fine-tuned model's metrics beside
// popularity and beside the source as it is (also written to source_test.json in train.output_dir).
int run_finetune_job(const Config& config, const std::string& from, const std::string& ids_path,
                     const std::string& resume_path);
// `freshrec eval`: full-ranking test metrics of a checkpoint (with the popularity baseline), as a
// table and as JSON at json_path (default: eval.json beside the checkpoint). `overrides` change the
// checkpoint's own config (say data.path, train.device).
int run_eval_job(const std::string& checkpoint, const std::vector<std::string>& overrides, const std::string& json_path);

// `freshrec data stats`: what the data set holds and what the reader skipped.
int run_data_stats_job(const Config& config);
// `freshrec data generate`: write the generator's log as CSV (user,item,timestamp) to `path`.
int run_data_generate_job(const Config& config, const std::string& path);
// `freshrec data prepare`: the lines of data.path that pass the filters, in its own format (see
// engine/data/prepare.h), written to `out`.
struct DataPrepareJobOptions {
  std::string out;
  std::string users;  // "FIRST-LAST", empty: all
  int64_t min_user_events = 0, min_item_events = 0;
};
int run_data_prepare_job(const Config& config, const DataPrepareJobOptions& options);

// `freshrec plot`: stream.svg and training.svg of a run folder (engine/report/run_charts.h).
int run_plot_job(const std::string& run_dir);

// `freshrec config`: the resulting configuration as YAML, or (markdown) the reference of every key.
int run_config_job(const Config& config, bool markdown);

// `freshrec stream`: test-then-train over stream.source. Without a teacher (and not resuming) a
// replayed log pre-trains one on its events before stream.pretrain_fraction, and with student.hidden
// > 0 (and no student checkpoint) distils a student from it on the same events; the student then
// learns online from the teacher and is published (stream.publish_*). compare_frozen also replays
// the stream through the frozen teacher and, with a student, once more with the student updated on
// the labels alone (distill.alpha=1), and prints them all.
// reference_python (bench stream): also time the PyTorch-eager reference's test-then-train step
// (tools/bench/sasrec_reference.py --mode stream) on the same device and shapes with that Python.
int run_stream_job(const Config& config, const std::string& teacher, const std::string& student, bool resume,
                   bool compare_frozen, const std::string& reference_python = "");

// `freshrec export`: a checkpoint's model (a stream checkpoint's student when it has one) as a
// self-contained TorchScript file, or as the next version in a publication folder.
int run_export_job(const std::string& checkpoint, const std::string& out, const std::string& publish_dir);

// `freshrec recommend`: top-k of an exported model for one history ("12,45,7") or for every line of
// a file (one history a line, ids separated by commas or spaces; JSON lines out).
int run_recommend_job(const std::string& model, const std::string& history, const std::string& histories_file,
                      int64_t k, bool include_seen);

// `freshrec serve`: HTTP recommendations from the newest model published in models_dir, reloaded
// when a new version appears; runs until SIGINT or SIGTERM.
struct ServeJobOptions {
  std::string models_dir;
  std::string token_file;  // a file holding the bearer token (first line); empty: no token
  HttpLimits http;         // address, port, workers and the transport's limits
  int poll_ms = 500;
  int64_t max_history = 10000;
  int64_t max_batch = 256;
  int64_t max_k = 1000;
};
int run_serve_job(const ServeJobOptions& options);

// `freshrec bench serve`: latency (p50, p99) of one recommendation call for an exported model, each
// call answering `batch` histories, and the requests (histories) answered per second, as a direct
// TorchScript call and through the HTTP server, in one run.
int run_serve_bench_job(const std::string& model, int64_t requests, int64_t history_length, int64_t k, int64_t batch = 1);

// `freshrec bench train`: freshrec's SASRec training step beside the PyTorch-eager reference
// (tools/bench/sasrec_reference.py, run with `python`), same device, shapes, loss and precision.
struct TrainBenchOptions {
  std::string device = "auto";
  int64_t items = 3416, hidden = 64, blocks = 2, heads = 1, batch = 128, length = 200;
  std::string loss = "full";  // full | sampled
  int64_t negatives = 256;
  bool sparse = false;  // row-wise Adam for the item table (sampled loss)
  int64_t steps = 10, warmup = 3, ce_chunk = 0, threads = 0, seed = 1;
  std::string precision = "fp32";  // fp32 | tf32 | bf16
  std::string python = ".venv/bin/python";
  std::string reference = "tools/bench/sasrec_reference.py";
};
int run_train_bench_job(const TrainBenchOptions& options);

// `freshrec bench kernels`: the embedding-table update step by each variant, in one run.
struct KernelBenchOptions {
  int64_t rows = 0;  // 0: 10,000,000 on a GPU, 1,000,000 on the CPU
  int64_t dim = 0;   // 0: 128 on a GPU, 64 on the CPU
  int64_t lookups = 65536;
  int64_t steps = 0;  // timed steps (0: 50 on a GPU, 5 on the CPU)
  std::string device = "auto";
};
int run_kernel_bench_job(const KernelBenchOptions& options);

}  // namespace freshrec
