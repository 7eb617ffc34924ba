// The serving side's subcommands: export, recommend, serve (see jobs.h).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <numeric>
#include <random>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "engine/checkpoint/checkpoint.h"
#include "engine/eval/metrics.h"
#include "engine/export/publisher.h"
#include "engine/export/torchscript.h"
#include "engine/jobs.h"
#include "engine/runtime.h"
#ifdef FRESHREC_WITH_HTTP

#include "engine/io/atomic_file.h"
#include "engine/io/remove_tree.h"
#include "engine/serve/server.h"
#endif

namespace freshrec {
namespace {

// Ids of one history: separated by commas and/or whitespace.
std::vector<std::string> split_ids(const std::string& text) {
  std::vector<std::string> ids;
  std::string current;
  for (char c : text) {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!current.empty()) ids.push_back(current), current.clear();
    } else {
      current += c;
    }
  }
  if (!current.empty()) ids.push_back(current);
  return ids;
}

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

}  // namespace

int run_export_job(const std::string& checkpoint, const std::string& out, const std::string& publish_dir) {
  if (out.empty() == publish_dir.empty()) throw std::invalid_argument("export: give exactly one of --out and --publish");
  const CheckpointInfo info = read_checkpoint_info(checkpoint);
  SASRec model{nullptr};
  std::string config_yaml = info.config_yaml, which = "model";
  if (has_student(info)) {  // a stream checkpoint with a student: the student is what serves
    config_yaml = student_config_yaml(info);
    model = student_model(info);
    unpack_student(info, model);
    which = "student";
  } else {
    model = load_checkpoint_model(checkpoint, torch::kCPU);
  }
  model->to(torch::kCPU);
  model->eval();
  nlohmann::json meta = {{"source_checkpoint", checkpoint}, {"model", which}, {"checkpoint_meta", info.meta}};
  if (!publish_dir.empty()) {
    Publisher publisher(publish_dir);
    const int64_t version = publisher.publish(model, info.items, config_yaml, meta);
    std::printf("published the %s of %s as version %lld in %s\n", which.c_str(), checkpoint.c_str(),
                static_cast<long long>(version), publish_dir.c_str());
    return 0;
  }
  auto module = export_torchscript(model, info.items, config_yaml, meta);
  save_torchscript(module, out);
  std::printf("exported the %s of %s (%lld parameters, %zu items) to %s\n", which.c_str(), checkpoint.c_str(),
              static_cast<long long>(model->parameter_count()), info.items.size(), out.c_str());
  return 0;
}

int run_recommend_job(const std::string& model_path, const std::string& history, const std::string& histories_file,
                      int64_t k, bool include_seen) {
  if (history.empty() == histories_file.empty())
    throw std::invalid_argument("recommend: give exactly one of --history and --histories");
  ExportedModel model(model_path);
  if (!history.empty()) {
    const auto result = model.recommend({split_ids(history)}, k, !include_seen)[0];
    std::printf("%4s  %-16s %10s\n", "rank", "item", "score");
    for (size_t j = 0; j < result.ids.size(); ++j)
      std::printf("%4zu  %-16s %10.4f\n", j + 1, result.ids[j].c_str(), result.scores[j]);
    return 0;
  }
  std::ifstream in(histories_file);
  if (!in) throw std::runtime_error(histories_file + ": cannot open");
  // One JSON line per input line; a bad line gets an error line (naming file:line) and the rest go on.
  int64_t line_number = 0, failed = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    nlohmann::json out = {{"line", line_number}};
    try {
      const auto result = model.recommend({split_ids(line)}, k, !include_seen)[0];
      out["ids"] = result.ids;
      out["scores"] = result.scores;
    } catch (const std::exception& e) {
      out["error"] = histories_file + ":" + std::to_string(line_number) + ": " + e.what();
      ++failed;
    }
    std::printf("%s\n", out.dump().c_str());
  }
  if (failed) spdlog::warn("{} of {} lines could not be answered (see their \"error\")", failed, line_number);
  return failed ? 1 : 0;
}

int run_serve_bench_job(const std::string& model_path, int64_t requests, int64_t history_length, int64_t k, int64_t batch) {
  if (requests <= 0 || history_length < 0 || k <= 0 || batch <= 0 || batch > requests)
    throw std::invalid_argument("bench serve: --requests, -k and --batch must be positive, --batch at most --requests, "
                                "--history >= 0");
  configure_threads(0);
  ExportedModel model(model_path);
  const int64_t parameters = model.meta().value("parameters", int64_t{-1});
  // Histories drawn from the model's own vocabulary with a fixed seed: the same requests every run.
  const auto& vocabulary = model.vocabulary();
  std::mt19937_64 rng(7);
  std::vector<std::vector<std::string>> histories(static_cast<size_t>(requests));
  for (auto& h : histories)
    for (int64_t j = 0; j < history_length; ++j) h.push_back(vocabulary[rng() % vocabulary.size()]);
  // Calls of `batch` consecutive histories, the last call's wrapping around to the first.
  const int64_t calls = (requests + batch - 1) / batch, warmup = std::min<int64_t>(20, calls);
  auto call_histories = [&](int64_t call) {
    std::vector<std::vector<std::string>> out;
    for (int64_t j = 0; j < batch; ++j) out.push_back(histories[static_cast<size_t>((call * batch + j) % requests)]);
    return out;
  };
  // p50 and p99 of the calls' milliseconds, and histories answered per second over all the calls.
  auto summary = [&](std::vector<double> v) {
    const double total = std::accumulate(v.begin(), v.end(), 0.0);
    std::sort(v.begin(), v.end());
    return std::make_tuple(quantile_of_sorted(v, 0.5), quantile_of_sorted(v, 0.99),
                           static_cast<double>(batch) * static_cast<double>(v.size()) / (total / 1000.0));
  };
  std::vector<double> direct;
  for (int64_t i = 0; i < calls + warmup; ++i) {
    const auto call = call_histories(i % calls);
    const auto begun = std::chrono::steady_clock::now();
    model.recommend(call, k);
    if (i >= warmup) direct.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begun).count());
  }
  const auto [direct_p50, direct_p99, direct_rate] = summary(direct);
  std::printf("serving latency of %s (%lld parameters, %lld items, maxlen %lld), calls of %lld histories of %lld items, "
              "k=%lld, %lld calls, %d threads:\n",
              model_path.c_str(), static_cast<long long>(parameters), static_cast<long long>(model.num_items()),
              static_cast<long long>(model.maxlen()), static_cast<long long>(batch), static_cast<long long>(history_length),
              static_cast<long long>(k), static_cast<long long>(calls), torch::get_num_threads());
  std::printf("%-34s %10s %10s %14s\n", "path", "p50 ms", "p99 ms", "requests/s");
  std::printf("%-34s %10.3f %10.3f %14.1f\n", "TorchScript call (in process)", direct_p50, direct_p99, direct_rate);
#ifdef FRESHREC_WITH_HTTP
  // The same calls through `serve`: JSON over HTTP on loopback, one connection, one at a time.
  const auto dir = std::filesystem::temp_directory_path() / ("freshrec-bench-serve-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(model_path, dir / "model.pt", std::filesystem::copy_options::overwrite_existing);
  write_file_atomically((dir / "manifest.json").string(), nlohmann::json{{"version", 1}, {"file", "model.pt"}}.dump());
  ServeOptions options;
  options.models_dir = dir.string(), options.http.host = "127.0.0.1", options.http.port = 0, options.http.workers = 2;
  options.max_batch = std::max(options.max_batch, batch);
  options.max_history = std::max(options.max_history, history_length);
  size_t body_bytes = 0;  // the largest request the bench sends, with room for the JSON around each id
  for (int64_t c = 0; c < calls; ++c) {
    size_t bytes = 64;
    for (const auto& h : call_histories(c)) {
      bytes += 8;
      for (const auto& id : h) bytes += id.size() + 4;
    }
    body_bytes = std::max(body_bytes, bytes);
  }
  options.http.max_body_bytes = std::max(options.http.max_body_bytes, body_bytes);
  ModelServer server(options);
  const int port = server.start();
  HttpClient client("127.0.0.1", port);
  std::vector<double> http;
  for (int64_t i = 0; i < calls + warmup; ++i) {
    const auto call = call_histories(i % calls);
    const std::string body = (batch == 1 ? nlohmann::json{{"history", call[0]}, {"k", k}}
                                         : nlohmann::json{{"histories", call}, {"k", k}}).dump();
    const auto begun = std::chrono::steady_clock::now();
    auto r = client.post("/recommend", body);
    if (!r || r->status != 200)
      throw std::runtime_error("bench serve: request failed: " + (r ? r->body : client.last_error()));
    if (i >= warmup) http.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begun).count());
  }
  server.stop();
  remove_tree(dir);
  const auto [http_p50, http_p99, http_rate] = summary(http);
  std::printf("%-34s %10.3f %10.3f %14.1f\n", "HTTP POST /recommend (serve)", http_p50, http_p99, http_rate);
#endif
  return 0;
}

int run_serve_job(const ServeJobOptions& o) {
#ifdef FRESHREC_WITH_HTTP
  ServeOptions options;
  options.models_dir = o.models_dir, options.http = o.http;
  options.poll_ms = o.poll_ms, options.max_history = o.max_history, options.max_batch = o.max_batch, options.max_k = o.max_k;
  if (!o.token_file.empty()) {
    std::ifstream in(o.token_file);
    if (!in) throw std::runtime_error(o.token_file + ": cannot read the token file");
    std::getline(in, options.token);
    while (!options.token.empty() && (options.token.back() == '\r' || options.token.back() == ' '))
      options.token.pop_back();
    if (options.token.size() < 16)
      throw std::runtime_error(o.token_file + ": the token must be at least 16 characters on the file's first line");
  }
  ModelServer server(options);
  const int port = server.start();
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  spdlog::info("listening on {}:{} (POST /recommend, GET /healthz, GET /metrics{}), models from {}", o.http.host, port,
               options.token.empty() ? "" : "; bearer token required but for /healthz", o.models_dir);
  std::printf("listening on port %d\n", port);
  std::fflush(stdout);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  spdlog::info("stopping");
  server.stop();
  return 0;
#else
  (void)o;
  throw std::runtime_error("serve: this build has no HTTP server (the Boost headers were not found at build time)");
#endif
}

}  // namespace freshrec
