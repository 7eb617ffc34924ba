// HTTP model server; see server.h.
#include "engine/serve/server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "engine/eval/metrics.h"
#include "engine/export/publisher.h"
#include "engine/export/torchscript.h"
#include "engine/serve/http_server.h"

namespace freshrec {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct LoadedModel {
  std::shared_ptr<ExportedModel> model;
  int64_t version = 0;
  double published_at = 0;  // unix seconds, from the manifest
};

// A request the client got wrong: status and message.
struct BadRequest {
  int status;
  std::string message;
};

// Recent request latencies for the quantiles of /metrics, plus counts by status.
class RequestStats {
 public:
  void record(int status, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++by_status_[status];
    sum_ += seconds;
    ++count_;
    if (recent_.size() < kWindow) {
      recent_.push_back(seconds);
    } else {
      recent_[next_++ % kWindow] = seconds;
    }
  }
  std::string prometheus() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::ostringstream out;
    out << "# HELP freshrec_requests_total Requests answered, by HTTP status.\n"
        << "# TYPE freshrec_requests_total counter\n";
    for (const auto& [status, n] : by_status_) out << "freshrec_requests_total{code=\"" << status << "\"} " << n << "\n";
    auto sorted = recent_;
    std::sort(sorted.begin(), sorted.end());
    out << "# HELP freshrec_request_duration_seconds Request latency (quantiles over the last " << kWindow
        << " requests).\n# TYPE freshrec_request_duration_seconds summary\n";
    for (double q : {0.5, 0.9, 0.99}) {
      const double v = sorted.empty() ? 0.0 : quantile_of_sorted(sorted, q);
      out << "freshrec_request_duration_seconds{quantile=\"" << q << "\"} " << v << "\n";
    }
    out << "freshrec_request_duration_seconds_sum " << sum_ << "\n"
        << "freshrec_request_duration_seconds_count " << count_ << "\n";
    return out.str();
  }

 private:
  static constexpr size_t kWindow = 8192;
  mutable std::mutex mutex_;
  std::map<int, uint64_t> by_status_;
  std::vector<double> recent_;
  size_t next_ = 0;
  double sum_ = 0;
  uint64_t count_ = 0;
};

// An id from JSON: a string, or an integer written as text.
std::string id_text(const nlohmann::json& v, const std::string& where) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  throw BadRequest{400, where + " must be an item id (integer or string), got " + v.dump()};
}

std::vector<std::string> parse_history(const nlohmann::json& v, const std::string& where, int64_t max_history) {
  if (!v.is_array()) throw BadRequest{400, where + " must be an array of item ids, got " + v.dump().substr(0, 80)};
  if (static_cast<int64_t>(v.size()) > max_history)
    throw BadRequest{413, where + " has " + std::to_string(v.size()) + " items, at most " + std::to_string(max_history) +
                              " are accepted"};
  std::vector<std::string> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) ids.push_back(id_text(v[i], where + "[" + std::to_string(i) + "]"));
  return ids;
}

}  // namespace

struct ModelServer::Impl {
  ServeOptions options;
  std::unique_ptr<HttpServer> http;
  std::thread watcher;
  std::atomic<bool> stopping{false};
  std::mutex wake_mutex;
  std::condition_variable wake;
  mutable std::mutex model_mutex;
  std::shared_ptr<const LoadedModel> current;
  int64_t failed_version = 0;  // a version that would not load: not retried until a newer one appears
  // What the watcher saw last, for /healthz and /metrics: the manifest's version, and why the served
  // model is not that version ("" when it is, or when nothing is published yet).
  mutable std::mutex watch_mutex;
  int64_t manifest_version = 0;
  std::string watch_problem;
  uint64_t load_failures = 0, manifest_errors = 0;
  std::string last_manifest_error;  // the watcher's own: logged once
  RequestStats stats;
  Clock::time_point started = Clock::now();

  std::shared_ptr<const LoadedModel> model() const {
    std::lock_guard<std::mutex> lock(model_mutex);
    return current;
  }

  // Records what the watcher found, under one lock, so that a reader sees a failure's count and its
  // problem together; a new problem is logged once.
  void report(int64_t version, const std::string& problem, bool manifest_error = false, bool load_failure = false) {
    std::lock_guard<std::mutex> lock(watch_mutex);
    if (version > 0) manifest_version = version;
    manifest_errors += manifest_error;
    load_failures += load_failure;
    if (!problem.empty() && problem != watch_problem) spdlog::warn("models folder {}: {}", options.models_dir, problem);
    watch_problem = problem;
  }

  // Loads the manifest's version if it is newer than the one served; warm-up runs before the swap.
  void refresh() {
    std::optional<Manifest> manifest;
    try {
      manifest = Manifest::read(options.models_dir);
    } catch (const std::exception& e) {
      if (e.what() != last_manifest_error) spdlog::warn("{}", e.what());
      last_manifest_error = e.what();
      return report(0, "the manifest cannot be read (the server's log says why)", true);
    }
    last_manifest_error.clear();
    const auto serving = model();
    if (!manifest) {
      std::error_code ec;
      return report(0, fs::is_directory(options.models_dir, ec) ? (serving ? "the manifest is gone" : "")
                                                                 : "the models folder is missing");
    }
    if (serving && manifest->version < serving->version)
      return report(manifest->version, "the manifest names version " + std::to_string(manifest->version) +
                                           ", older than the served " + std::to_string(serving->version) +
                                           ": refused (versions only grow; restart the server to serve it)");
    if (serving && manifest->version == serving->version) return report(manifest->version, "");
    if (manifest->version == failed_version) return;  // reported when it failed
    const std::string path = (fs::path(options.models_dir) / manifest->file).string();
    try {
      auto loaded = std::make_shared<LoadedModel>();
      loaded->model = std::make_shared<ExportedModel>(path);
      loaded->version = manifest->version;
      loaded->published_at = manifest->json.value("published_at", unix_seconds());
      // Warm-up: the first calls of a TorchScript method profile and optimise it.
      const std::vector<std::vector<std::string>> warm = {{}};
      for (int i = 0; i < 3; ++i) loaded->model->recommend(warm, 1);
      {
        std::lock_guard<std::mutex> lock(model_mutex);
        current = loaded;
      }
      spdlog::info("serving {} (version {}, {} items)", path, loaded->version, loaded->model->num_items());
      report(manifest->version, "");
    } catch (const std::exception& e) {
      failed_version = manifest->version;
      spdlog::error("cannot load version {}: {}", manifest->version, e.what());
      report(manifest->version, "version " + std::to_string(manifest->version) + " failed to load", false, true);
    }
  }

  void watch() {
    while (!stopping) {
      refresh();
      std::unique_lock<std::mutex> lock(wake_mutex);
      wake.wait_for(lock, std::chrono::milliseconds(options.poll_ms), [&] { return stopping.load(); });
    }
  }

  // "Bearer <token>", compared in time independent of where it differs.
  bool authorized(const std::string& header) const {
    const std::string expected = "Bearer " + options.token;
    if (header.size() != expected.size()) return false;
    unsigned char difference = 0;
    for (size_t i = 0; i < header.size(); ++i) difference |= static_cast<unsigned char>(header[i] ^ expected[i]);
    return difference == 0;
  }

  // Never throws on text that is not UTF-8 (a parser's message quoting a request's bytes, say): such
  // bytes are written as U+FFFD.
  static HttpResponse json_response(int status, const nlohmann::json& body) {
    return {status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json", {}};
  }

  HttpResponse recommend(const HttpRequest& req) {
    const auto serving = model();
    if (!serving) throw BadRequest{503, "no model is published yet"};
    nlohmann::json body;
    try {
      body = nlohmann::json::parse(req.body);
    } catch (const nlohmann::json::parse_error& e) {
      throw BadRequest{400, std::string("request body is not valid JSON: ") + e.what()};
    }
    if (!body.is_object()) throw BadRequest{400, "request body must be a JSON object"};
    for (const auto& [key, value] : body.items())
      if (key != "history" && key != "histories" && key != "k" && key != "exclude_seen")
        throw BadRequest{400, "unknown field '" + key + "' (expected history or histories, k, exclude_seen)"};
    const bool batch = body.contains("histories");
    if (batch == body.contains("history")) throw BadRequest{400, "give exactly one of 'history' and 'histories'"};
    int64_t k = 10;
    if (body.contains("k")) {
      if (!body["k"].is_number_integer()) throw BadRequest{400, "k must be an integer, got " + body["k"].dump()};
      k = body["k"].get<int64_t>();
    }
    const int64_t k_limit = std::min(options.max_k, serving->model->num_items());
    if (k < 1 || k > k_limit) throw BadRequest{400, "k must be in [1, " + std::to_string(k_limit) + "], got " + std::to_string(k)};
    bool exclude_seen = true;
    if (body.contains("exclude_seen")) {
      if (!body["exclude_seen"].is_boolean()) throw BadRequest{400, "exclude_seen must be true or false"};
      exclude_seen = body["exclude_seen"].get<bool>();
    }
    std::vector<std::vector<std::string>> histories;
    if (batch) {
      const auto& list = body["histories"];
      if (!list.is_array() || list.empty()) throw BadRequest{400, "histories must be a non-empty array of arrays"};
      if (static_cast<int64_t>(list.size()) > options.max_batch)
        throw BadRequest{413, "histories has " + std::to_string(list.size()) + " entries, at most " +
                                  std::to_string(options.max_batch) + " are accepted"};
      for (size_t i = 0; i < list.size(); ++i)
        histories.push_back(parse_history(list[i], "histories[" + std::to_string(i) + "]", options.max_history));
    } else {
      histories.push_back(parse_history(body["history"], "history", options.max_history));
    }
    for (size_t r = 0; r < histories.size(); ++r)
      for (size_t j = 0; j < histories[r].size(); ++j)
        if (!serving->model->knows(histories[r][j]))
          throw BadRequest{400, "unknown item id '" + histories[r][j] + "' at " +
                                    (batch ? "histories[" + std::to_string(r) + "]" : std::string("history")) + "[" +
                                    std::to_string(j) + "] (model version " + std::to_string(serving->version) + ")"};
    const auto results = serving->model->recommend(histories, k, exclude_seen);
    // Ids go out as JSON strings, whatever they look like, so a model's answers never change type
    // when its catalogue grows.
    auto items = [&](const ExportedModel::Recommendation& r) {
      nlohmann::json list = nlohmann::json::array();
      for (size_t j = 0; j < r.ids.size(); ++j) list.push_back({{"id", r.ids[j]}, {"score", r.scores[j]}});
      return list;
    };
    nlohmann::json out = {{"version", serving->version}};
    if (batch) {
      out["results"] = nlohmann::json::array();
      for (const auto& r : results) out["results"].push_back(items(r));
    } else {
      out["items"] = items(results[0]);
    }
    HttpResponse response = json_response(200, out);
    response.headers.emplace_back("X-Model-Version", std::to_string(serving->version));
    return response;
  }

  // What the HTTP transport refused or cut (see http_server.h).
  std::string transport_metrics() const {
    const HttpCounters c = http->counters();
    std::ostringstream out;
    out << "# HELP freshrec_http_connections_total Connections accepted.\n"
        << "# TYPE freshrec_http_connections_total counter\n"
        << "freshrec_http_connections_total " << c.connections << "\n"
        << "# HELP freshrec_http_open_connections Connections open now.\n"
        << "# TYPE freshrec_http_open_connections gauge\n"
        << "freshrec_http_open_connections " << c.open_connections << "\n"
        << "# HELP freshrec_http_queued_requests Requests waiting for a worker now.\n"
        << "# TYPE freshrec_http_queued_requests gauge\n"
        << "freshrec_http_queued_requests " << c.queued << "\n"
        << "# HELP freshrec_http_refused_total Answered 503 by the transport: over the connection limit, or the queue full.\n"
        << "# TYPE freshrec_http_refused_total counter\n"
        << "freshrec_http_refused_total{reason=\"connections\"} " << c.refused_connections << "\n"
        << "freshrec_http_refused_total{reason=\"queue\"} " << c.refused_queue_full << "\n"
        << "# HELP freshrec_http_timeouts_total Connections closed at a deadline (header, request or write).\n"
        << "# TYPE freshrec_http_timeouts_total counter\n"
        << "freshrec_http_timeouts_total " << c.timeouts << "\n"
        << "# HELP freshrec_http_rejected_total Requests the transport refused: body over the limit (413), or malformed (400, 415, 431).\n"
        << "# TYPE freshrec_http_rejected_total counter\n"
        << "freshrec_http_rejected_total{reason=\"too_large\"} " << c.bodies_too_large << "\n"
        << "freshrec_http_rejected_total{reason=\"malformed\"} " << c.malformed << "\n";
    return out.str();
  }

  std::string metrics() const {
    std::ostringstream out;
    out << stats.prometheus();
    const auto serving = model();
    out << "# HELP freshrec_model_version Version of the model being served (0: none).\n"
        << "# TYPE freshrec_model_version gauge\n"
        << "freshrec_model_version " << (serving ? serving->version : 0) << "\n"
        << "# HELP freshrec_model_age_seconds Seconds since the served model was published.\n"
        << "# TYPE freshrec_model_age_seconds gauge\n"
        << "freshrec_model_age_seconds " << (serving ? std::max(0.0, unix_seconds() - serving->published_at) : 0.0)
        << "\n"
        << "# HELP freshrec_manifest_version Version the folder's manifest names (0: none read yet).\n"
        << "# TYPE freshrec_manifest_version gauge\n";
    std::lock_guard<std::mutex> lock(watch_mutex);
    out << "freshrec_manifest_version " << manifest_version << "\n"
        << "# HELP freshrec_model_stale 1 when the served model is not the manifest's version (it failed to load, it is "
           "older than the served one, or the manifest or folder is unreadable).\n"
        << "# TYPE freshrec_model_stale gauge\n"
        << "freshrec_model_stale " << (watch_problem.empty() ? 0 : 1) << "\n"
        << "# HELP freshrec_model_load_failures_total Published versions that failed to load.\n"
        << "# TYPE freshrec_model_load_failures_total counter\n"
        << "freshrec_model_load_failures_total " << load_failures << "\n"
        << "# HELP freshrec_manifest_errors_total Manifest reads that failed (malformed or unreadable).\n"
        << "# TYPE freshrec_manifest_errors_total counter\n"
        << "freshrec_manifest_errors_total " << manifest_errors << "\n"
        << transport_metrics()
        << "# HELP freshrec_uptime_seconds Seconds since the server started.\n"
        << "# TYPE freshrec_uptime_seconds gauge\n"
        << "freshrec_uptime_seconds " << std::chrono::duration<double>(Clock::now() - started).count() << "\n";
    return out.str();
  }

  // Every request a worker answers: the routes.
  HttpResponse handle(const HttpRequest& req) {
    if (req.path == "/recommend") {
      if (req.method != "POST") return error_response(405, "use POST /recommend");
      const auto begun = Clock::now();
      HttpResponse response;
      try {
        response = recommend(req);
      } catch (const BadRequest& e) {
        response = error_response(e.status, e.message);
      } catch (const std::invalid_argument& e) {
        response = error_response(400, e.what());
      } catch (const std::exception& e) {
        spdlog::error("request failed: {}", e.what());  // the details stay in the log, never in the answer
        response = internal_error();
      }
      stats.record(response.status, std::chrono::duration<double>(Clock::now() - begun).count());
      return response;
    }
    if (req.path == "/healthz" && req.method == "GET") {
      // 503 without a model; 200 with one, "degraded" (and why) when it is not the manifest's version.
      const auto serving = model();
      std::string problem;
      {
        std::lock_guard<std::mutex> lock(watch_mutex);
        problem = watch_problem;
      }
      nlohmann::json body = {{"status", !serving ? "no model yet" : problem.empty() ? "ok" : "degraded"},
                             {"version", serving ? serving->version : 0}};
      if (!problem.empty()) body["problem"] = problem;
      return json_response(serving ? 200 : 503, body);
    }
    if (req.path == "/metrics" && req.method == "GET") return {200, metrics(), "text/plain; version=0.0.4", {}};
    return error_response(404, "no such endpoint (POST /recommend, GET /healthz, GET /metrics)");
  }

  // Before a body is read: the bearer token, when one is set (/healthz stays open).
  std::optional<HttpResponse> check(const HttpRequest& req) {
    const bool health = req.path == "/healthz" && req.method == "GET" && req.header("content-length").empty() &&
                        req.header("transfer-encoding").empty();  // open, but only as a bodiless GET
    if (options.token.empty() || health || authorized(req.header("authorization"))) return std::nullopt;
    HttpResponse denied = error_response(401, "missing or wrong bearer token");
    denied.headers.emplace_back("WWW-Authenticate", "Bearer");
    if (req.path == "/recommend") stats.record(401, 0.0);
    return denied;
  }
};

ModelServer::ModelServer(ServeOptions options) : impl_(std::make_unique<Impl>()) {
  auto& d = *impl_;
  d.options = std::move(options);
  if (d.options.models_dir.empty()) throw std::invalid_argument("serve: --models needs a folder");
  if (d.options.http.port < 0 || d.options.http.port > 65535)
    throw std::invalid_argument("serve: port " + std::to_string(d.options.http.port) + " is not within 0 to 65535");
  d.http = std::make_unique<HttpServer>(
      d.options.http, [&d](const HttpRequest& req) { return d.handle(req); },
      [&d](const HttpRequest& req) { return d.check(req); });
}

ModelServer::~ModelServer() { stop(); }

int ModelServer::start() {
  auto& d = *impl_;
  d.refresh();
  if (!d.model()) spdlog::warn("no model published in {} yet; answering 503 until one appears", d.options.models_dir);
  const int port = d.http->start();
  d.watcher = std::thread([&d] { d.watch(); });
  return port;
}

void ModelServer::stop() {
  auto& d = *impl_;
  if (d.stopping.exchange(true)) return;
  d.wake.notify_all();
  d.http->stop();
  if (d.watcher.joinable()) d.watcher.join();
}

int64_t ModelServer::model_version() const {
  const auto serving = impl_->model();
  return serving ? serving->version : 0;
}

}  // namespace freshrec
