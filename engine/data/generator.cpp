// Synthetic interaction logs; see generator.h for the structure they carry.
#include "engine/data/generator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <unordered_set>

#include "engine/config/config.h"

namespace freshrec {
namespace {

// std::mt19937_64 is specified bit for bit; the std distributions are not, so draw by hand.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  double uniform() { return (engine_() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  int below(int n) { return static_cast<int>(uniform() * n); }
  double exponential(double mean) { return -mean * std::log1p(-uniform()); }

 private:
  std::mt19937_64 engine_;
};

// Picks an index with probability proportional to its weight (cumulative weights given).
int pick(const std::vector<double>& cumulative, Rng& rng) {
  const double r = rng.uniform() * cumulative.back();
  return static_cast<int>(std::upper_bound(cumulative.begin(), cumulative.end(), r) - cumulative.begin());
}

void check(bool ok, const std::string& what) {
  if (!ok) throw ConfigError("generator: " + what);
}

}  // namespace

GeneratorOptions GeneratorOptions::from_config(const Config& c) {
  GeneratorOptions o;
  o.users = static_cast<int>(c.get_int("generator.users"));
  o.items = static_cast<int>(c.get_int("generator.items"));
  o.clusters = static_cast<int>(c.get_int("generator.clusters"));
  o.events_per_user = static_cast<int>(c.get_int("generator.events_per_user"));
  o.sequential = c.get_float("generator.sequential");
  o.popularity_exponent = c.get_float("generator.popularity_exponent");
  o.drift = c.get_float("generator.drift");
  o.new_item_fraction = c.get_float("generator.new_item_fraction");
  o.days = static_cast<int>(c.get_int("generator.days"));
  o.seed = static_cast<uint64_t>(c.get_int("generator.seed"));
  return o;
}

EventLog generate_event_log(const GeneratorOptions& o) {
  check(o.users > 0 && o.items > 0, "users and items must be positive");
  check(o.clusters > 0 && o.clusters <= o.items, "clusters must be in [1, items]");
  check(o.events_per_user >= 3, "events_per_user must be at least 3");
  check(o.sequential >= 0 && o.sequential <= 1, "sequential must be in [0, 1]");
  check(o.drift >= 0 && o.drift <= 1, "drift must be in [0, 1]");
  check(o.new_item_fraction >= 0 && o.new_item_fraction < 1, "new_item_fraction must be in [0, 1)");
  check(o.days > 0, "days must be positive");
  Rng rng(o.seed);
  const double span = o.days * 86400.0;
  const int64_t epoch = 1700000000;  // a fixed start, so timestamps look like real ones

  // Items: cluster, Zipf weight by rank within the cluster, introduction time.
  std::vector<int> cluster_of(o.items);
  std::vector<std::vector<int>> members(o.clusters);
  for (int i = 0; i < o.items; ++i) {
    cluster_of[i] = i < o.clusters ? i : rng.below(o.clusters);
    members[cluster_of[i]].push_back(i);
  }
  std::vector<double> introduced(o.items, 0.0), weight(o.items);
  for (int c = 0; c < o.clusters; ++c) {
    auto& m = members[c];
    for (size_t r = 0; r < m.size(); ++r) {  // shuffle, then rank = position
      std::swap(m[r], m[r + rng.below(static_cast<int>(m.size() - r))]);
    }
    for (size_t r = 0; r < m.size(); ++r) {
      const int item = m[r];
      const bool is_new = rng.uniform() < o.new_item_fraction && m.size() > 1;
      // New items arrive during the log and rank among the cluster's top fifth: they become hits.
      const size_t rank = is_new ? static_cast<size_t>(rng.below(std::max<int>(1, static_cast<int>(m.size()) / 5))) : r;
      weight[item] = 1.0 / std::pow(rank + 1.0, o.popularity_exponent);
      if (is_new) introduced[item] = span * (0.1 + 0.85 * rng.uniform());
    }
  }
  std::vector<std::vector<double>> cumulative(o.clusters);
  for (int c = 0; c < o.clusters; ++c) {
    double sum = 0;
    for (int item : members[c]) cumulative[c].push_back(sum += weight[item]);
  }
  // The transition that makes order matter: after an item of cluster c tends to come next_cluster[c].
  std::vector<int> next_cluster(o.clusters);
  for (int c = 0; c < o.clusters; ++c) next_cluster[c] = (c + 1 + rng.below(std::max(1, o.clusters - 1))) % o.clusters;

  struct Raw { int user, item; double time; };
  std::vector<Raw> raw;
  raw.reserve(static_cast<size_t>(o.users) * o.events_per_user);
  for (int u = 0; u < o.users; ++u) {
    const int count = 3 + static_cast<int>(rng.exponential(o.events_per_user - 3));
    double t = rng.uniform() * span * 0.8;
    const double gap = (span - t) / (count + 1);
    int favourite = rng.below(o.clusters);
    int last_cluster = -1;
    std::unordered_set<int> seen;
    for (int k = 0; k < count; ++k) {
      t += rng.exponential(gap);
      if (t >= span) break;
      if (rng.uniform() < o.drift) favourite = rng.below(o.clusters);
      int cluster;
      const double r = rng.uniform();
      if (last_cluster >= 0 && r < o.sequential) cluster = next_cluster[last_cluster];
      else if (r < o.sequential + (1 - o.sequential) * 0.7) cluster = favourite;
      else cluster = rng.below(o.clusters);
      // Draw an item that exists at time t and that the user has not seen; give up after a few tries.
      int item = -1;
      for (int attempt = 0; attempt < 30 && item < 0; ++attempt) {
        const int candidate = members[cluster][pick(cumulative[cluster], rng)];
        if (introduced[candidate] <= t && !seen.count(candidate)) item = candidate;
      }
      if (item < 0) continue;
      seen.insert(item);
      last_cluster = cluster;
      raw.push_back({u, item, t});
    }
  }
  std::stable_sort(raw.begin(), raw.end(), [](const Raw& a, const Raw& b) { return a.time < b.time; });
  EventLog log;
  log.events.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    Event e;
    e.user = log.users.intern(std::to_string(raw[i].user + 1));
    e.item = log.items.intern(std::to_string(raw[i].item + 1));
    e.timestamp = epoch + static_cast<int64_t>(raw[i].time);
    e.rating = std::numeric_limits<float>::quiet_NaN();
    e.order = i;
    log.events.push_back(e);
  }
  return log;
}

}  // namespace freshrec
