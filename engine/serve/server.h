// `freshrec serve`: an HTTP endpoint (engine/serve/http_server.h) answering JSON recommendation requests from the
// newest model published in a folder (engine/export/publisher.h). A watcher thread follows the
// folder's manifest; a new version is loaded and warmed up beside the serving one, then swapped in
// atomically, so requests in flight finish on the old one and none is dropped.
//
//   POST /recommend  {"history": [ids...], "k": 10, "exclude_seen": true}
//                    or {"histories": [[ids...], ...], "k": 10} for a batch
//        -> {"version": 3, "items": [{"id": "12", "score": 4.1}, ...]}   (batch: "results": [[...], ...])
//        ids are taken as JSON strings or integers and always answered as strings
//   GET  /healthz    200 once a model is loaded (status ok, or degraded with the reason), else 503
//   GET  /metrics    Prometheus text: requests by status, latency quantiles, model version and age
// Bad requests get a 4xx and {"error": "..."} saying what is wrong and where.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/serve/http_server.h"

namespace freshrec {

struct ServeOptions {
  std::string models_dir;
  // Address, port (0: any free one, start() returns it), workers, queue, connection, size and time
  // limits; the host is loopback unless one is given (0.0.0.0: every interface).
  HttpLimits http;
  // When not empty, POST /recommend and GET /metrics need "Authorization: Bearer <token>" (401 without);
  // a bodiless GET /healthz stays open for load balancers.
  std::string token;
  int poll_ms = 500;            // how often the manifest is checked
  int64_t max_history = 10000;  // items per history (the model reads only its newest maxlen)
  int64_t max_batch = 256;      // histories per request
  int64_t max_k = 1000;
};

class ModelServer {
 public:
  explicit ModelServer(ServeOptions options);
  ~ModelServer();
  ModelServer(const ModelServer&) = delete;
  ModelServer& operator=(const ModelServer&) = delete;

  // Binds, loads the folder's newest model if there is one, starts the listener and the watcher.
  // Returns the bound port. Throws when the port cannot be bound.
  int start();
  void stop();
  // The version being served (0: none yet).
  int64_t model_version() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshrec
