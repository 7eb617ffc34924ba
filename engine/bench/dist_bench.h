// `freshrec bench dist`: the same training job as one process and as several (torchrun, c10d), in one
// run, on the same global batches: the step time, the time in collectives, the bytes each rank hands
// to allreduce per step, and the item table's memory on each rank. Torch-free: it runs `freshrec
// train` twice and reads their test.json.
#pragma once

#include <string>

#include "engine/config/config.h"

namespace freshrec {

struct DistBenchOptions {
  int processes = 2;  // ranks of the distributed job, on this machine
  int threads = 2;    // CPU threads in all: the single process gets them all, each rank its share
  std::string torchrun = ".venv/bin/torchrun";
  std::string output_dir;  // empty: <train.output_dir>/bench-dist-<pid>
};

int run_dist_bench_job(const Config& config, const DistBenchOptions& options);

}  // namespace freshrec
