// One process against several on the same training job; see dist_bench.h.
#include "engine/bench/dist_bench.h"

#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "engine/dist/dist_env.h"
#include "engine/io/atomic_file.h"

namespace freshrec {
namespace {

// Single quotes for the shell, for paths that may hold spaces.
std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string this_program() {
  std::error_code error;
  const auto path = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) throw std::runtime_error("bench dist: cannot find this program (/proc/self/exe): " + error.message());
  return path.string();
}

// Runs `command` with its output to `log`; throws with the log's tail when it fails.
void run(const std::string& what, const std::string& command, const std::string& log) {
  spdlog::info("bench dist: {}", what);
  const int status = std::system((command + " >" + quoted(log) + " 2>&1").c_str());
  if (status != 0) {
    const std::string how = status == -1                ? "could not start"
                            : WIFSIGNALED(status)       ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                                        : "failed (exit status " + std::to_string(WEXITSTATUS(status)) + ")";
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.size() > 3000) text = "..." + text.substr(text.size() - 3000);
    throw std::runtime_error("bench dist: " + what + " " + how + "; " + log + " ends with:\n" + text);
  }
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("bench dist: " + path + " was not written");
  return nlohmann::json::parse(in);
}

}  // namespace

int run_dist_bench_job(const Config& config, const DistBenchOptions& o) {
  if (DistEnv::from_environment().distributed())
    throw std::invalid_argument("bench dist starts its own jobs: run it without a launcher (WORLD_SIZE is set)");
  if (o.processes < 2) throw std::invalid_argument("bench dist: --processes must be at least 2");
  if (o.threads < o.processes || o.threads % o.processes != 0)
    throw std::invalid_argument("bench dist: --threads (" + std::to_string(o.threads) + ") must be a multiple of --processes (" +
                                std::to_string(o.processes) + ")");
  if (!std::filesystem::exists(o.torchrun))
    throw std::invalid_argument("bench dist: no torchrun at " + o.torchrun + " (tools/quickstart.sh makes the .venv; --torchrun)");
  const std::filesystem::path out =
      o.output_dir.empty() ? std::filesystem::path(config.get_string("train.output_dir")) / ("bench-dist-" + std::to_string(::getpid()))
                           : std::filesystem::path(o.output_dir);
  if (std::filesystem::exists(out) && !std::filesystem::is_empty(out))
    throw std::invalid_argument("bench dist: " + out.string() + " is not empty: the runs need a folder of their own");
  std::filesystem::create_directories(out);
  const std::string yaml = (out / "config.yaml").string();
  write_file_atomically(yaml, config.to_yaml());
  // The children start clean of any launcher's variables: the first is one process, the second's ranks
  // get torchrun's own.
  const std::string clean = "env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE -u MASTER_ADDR -u MASTER_PORT "
                            "-u TORCHELASTIC_USE_AGENT_STORE -u TORCHELASTIC_RESTART_COUNT ";
  const std::string program = quoted(this_program());
  const std::string train = " train -c " + quoted(yaml);
  const std::string one = (out / "one").string(), many = (out / "many").string();
  run("1 process x " + std::to_string(o.threads) + " threads",
      clean + program + train + " train.threads=" + std::to_string(o.threads) + " train.output_dir=" + quoted(one),
      (out / "one.log").string());
  run(std::to_string(o.processes) + " processes x " + std::to_string(o.threads / o.processes) + " threads (torchrun)",
      clean + quoted(o.torchrun) + " --no-python --standalone --nproc-per-node=" + std::to_string(o.processes) + " " +
          program + train + " train.threads=" + std::to_string(o.threads / o.processes) + " train.output_dir=" + quoted(many),
      (out / "many.log").string());
  const nlohmann::json a = read_json(one + "/test.json"), b = read_json(many + "/test.json");

  const bool local = config.get_string("dist.mode") == "local_sgd";
  std::printf("\nbench dist: the job of %s as 1 process and as %d (c10d, %s, %s), batches of %lld users%s\n",
              config.get_string("data.format") == "generated" ? "generated data" : config.get_string("data.path").c_str(),
              o.processes, config.get_string("train.device") == "cuda" ? "NCCL" : "Gloo",
              local ? "local SGD" : "data-parallel", static_cast<long long>(config.get_int("train.batch_size")),
              local ? " (the job of several: each rank its share of that size, on its own users)" : " (the same global batches)");
  std::printf("%-26s %7s %12s %16s %18s %18s %19s %14s %9s\n", "job", "steps", "step ms", "collectives ms",
              "allreduce MB/step", "ring MB/step/rank", "all-to-all MB/step", "table MB/rank", "NDCG@10");
  for (const auto& [name, j] : {std::pair<std::string, const nlohmann::json&>{"1 process x " + std::to_string(o.threads) + " threads", a},
                                {std::to_string(o.processes) + " processes x " + std::to_string(o.threads / o.processes) + " threads", b}}) {
    const double steps = std::max(1.0, j.at("steps").get<double>()), n = j.at("world_size").get<double>();
    const double payload = j.at("step_allreduce_bytes").get<double>() / steps / 1e6;
    std::printf("%-26s %7.0f %12.2f %16.2f %18.3f %18.3f %19.3f %14.3f %9.4f\n", name.c_str(), steps,
                1e3 * j.at("step_seconds").get<double>() / steps, 1e3 * j.at("step_collective_seconds").get<double>() / steps,
                payload, payload * 2 * (n - 1) / n, j.at("step_all_to_all_bytes").get<double>() / steps / 1e6,
                j.at("item_table_bytes_per_rank").get<double>() / 1e6,
                j.at("test").at("NDCG@10").get<double>());
  }
  const double speedup = (a.at("step_seconds").get<double>() / std::max(1.0, a.at("steps").get<double>())) /
                         (b.at("step_seconds").get<double>() / std::max(1.0, b.at("steps").get<double>()));
  std::printf("step time, 1 process / %d processes: %.2fx\n", o.processes, speedup);
  if (const double buckets = b.value("allreduce_buckets", 0.0); buckets > 0)
    std::printf("gradients summed in %.0f bucket%s of at most %g MB; %.0f%% of them started before the backward pass "
                "ended\n", buckets, buckets == 1 ? "" : "s", config.get_float("dist.bucket_mb"),
                100 * b.value("buckets_started_in_backward", 0.0) / (buckets * std::max(1.0, b.at("steps").get<double>())));
  if (config.get_string("dist.item_table") == "row_sharded")
    std::printf("the item table is sharded by rows: each rank holds 1/%d of its weights and Adam moments; all-to-all "
                "MB/step is what rank 0 sent the others (ids, rows, row gradients)\n", o.processes);
  else
    std::printf("the item table is replicated: each rank holds its weights and both Adam moments whole\n");
  std::printf("runs: %s\n", out.string().c_str());
  return 0;
}

}  // namespace freshrec
