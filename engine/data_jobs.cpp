// The subcommands that need no LibTorch (see jobs.h): data stats / generate / prepare, plot, and the
// configuration reference. Kept out of the torch translation units so they build in seconds.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "engine/data/prepare.h"
#include "engine/data/readers.h"
#include "engine/data/sequences.h"
#include "engine/eval/metrics.h"
#include "engine/io/atomic_file.h"
#include "engine/jobs.h"
#include "engine/report/run_charts.h"

namespace freshrec {

int run_data_stats_job(const Config& config) {
  ReadReport report;
  const EventLog log = load_event_log(config, &report);
  const UserSequences s = UserSequences::from_log(log);
  std::vector<size_t> lengths;
  for (const auto& seq : s.items) lengths.push_back(seq.size());
  std::sort(lengths.begin(), lengths.end());
  auto quantile = [&](double q) { return quantile_of_sorted(lengths, q); };
  const double density = static_cast<double>(log.events.size()) / (static_cast<double>(log.num_users()) * log.num_items());
  std::printf("%s\n", report.summary().c_str());
  std::printf("users %d, items %d, events %zu, density %.4f%%\n", log.num_users(), log.num_items(), log.events.size(),
              100.0 * density);
  std::printf("events per user: min %zu, median %zu, p90 %zu, max %zu\n", lengths.front(), quantile(0.5),
              quantile(0.9), lengths.back());
  std::printf("users with a validation and test item (3+ events): %zu\n", s.evaluation_users().size());
  if (!log.events.empty())
    std::printf("timestamps: %lld .. %lld\n", static_cast<long long>(log.events.front().timestamp),
                static_cast<long long>(log.events.back().timestamp));
  return 0;
}

int run_data_generate_job(const Config& config, const std::string& path) {
  Config generated = config;
  generated.set("data.format", "generated", "data generate");
  const EventLog log = load_event_log(generated, nullptr);
  std::string text = "user,item,timestamp\n";
  for (const auto& e : log.events)
    text += log.users.external(e.user) + "," + log.items.external(e.item) + "," + std::to_string(e.timestamp) + "\n";
  write_file_atomically(path, text);
  std::printf("wrote %zu events (%d users, %d items) to %s\n", log.events.size(), log.num_users(), log.num_items(),
              path.c_str());
  return 0;
}

int run_data_prepare_job(const Config& config, const DataPrepareJobOptions& options) {
  if (config.get_string("data.format") == "generated")
    throw ConfigError("data prepare reads a file (data.format and data.path); `freshrec data generate` writes the "
                      "generator's log");
  PrepareOptions prepare;
  if (!options.users.empty()) prepare.users = parse_id_range(options.users);
  prepare.min_user_events = options.min_user_events;
  prepare.min_item_events = options.min_item_events;
  const std::string input = config.get_string("data.path");
  const PrepareReport r = prepare_log(input, ReaderOptions::from_config(config), prepare, options.out);
  std::printf("%s: %zu data lines; dropped: %zu malformed, %zu below data.min_rating, %zu outside --users, "
              "%zu of users with fewer than %lld events, %zu of items with fewer than %lld events\n",
              input.c_str(), r.lines, r.malformed, r.below_min_rating, r.outside_users, r.few_user_events,
              static_cast<long long>(prepare.min_user_events), r.few_item_events,
              static_cast<long long>(prepare.min_item_events));
  std::printf("wrote %zu events to %s\n", r.kept, options.out.c_str());
  return 0;
}

int run_plot_job(const std::string& run_dir) {
  for (const std::string& path : write_run_charts(run_dir)) std::printf("chart: %s\n", path.c_str());
  return 0;
}

int run_config_job(const Config& config, bool markdown) {
  std::cout << (markdown ? config_markdown() : config.to_yaml());
  return 0;
}

}  // namespace freshrec
