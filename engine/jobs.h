// The jobs behind the command-line subcommands, with a torch-free interface so that the program's
// front end compiles in seconds. Each prints its results and returns a process exit code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config/config.h"

namespace freshrec {

// `freshrec train`: read the data, train, print validation/test metrics beside popularity.
// `freshrec distill`: the same with a teacher checkpoint (the config describes the student); also
// prints the teacher's test metrics and the share of them the student keeps.
int run_train_job(const Config& config, const std::string& resume_path, const std::string& teacher_path = "");

// `freshrec eval`: full-ranking test metrics of a checkpoint (with the popularity baseline), as a
// table and as JSON at json_path (default: eval.json beside the checkpoint). `overrides` change the
// checkpoint's own config (say data.path, train.device).
int run_eval_job(const std::string& checkpoint, const std::vector<std::string>& overrides, const std::string& json_path);

// `freshrec data stats`: what the data set holds and what the reader skipped.
int run_data_stats_job(const Config& config);
// `freshrec data generate`: write the generator's log as CSV (user,item,timestamp) to `path`.
int run_data_generate_job(const Config& config, const std::string& path);

// `freshrec stream`: test-then-train over stream.source. Without a teacher (and not resuming) a
// replayed log pre-trains one on its events before stream.pretrain_fraction. compare_frozen also
// replays the stream through the frozen teacher and prints both.
int run_stream_job(const Config& config, const std::string& teacher, bool resume, bool compare_frozen);

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
