// A seeded generator of synthetic interaction logs with known structure, for tests and demos:
// items in clusters with Zipf popularity, users with a favourite cluster that drifts over time,
// a cluster-to-cluster transition that makes order matter (so sequence models can beat popularity),
// and items that appear only later in time and are popular once they do.
#pragma once

#include <cstdint>

#include "engine/data/event_log.h"

namespace freshrec {

class Config;

struct GeneratorOptions {
  int users = 1500;
  int items = 600;
  int clusters = 12;
  int events_per_user = 40;
  double sequential = 0.7;
  double popularity_exponent = 1.0;
  double drift = 0.002;
  double new_item_fraction = 0.2;
  int days = 120;
  uint64_t seed = 7;

  static GeneratorOptions from_config(const Config& config);
};

// Same options and seed give the same log, on every platform (own RNG and distributions).
EventLog generate_event_log(const GeneratorOptions& options);

}  // namespace freshrec
