// Full-ranking metrics from the 0-based rank of each target: HR@K, NDCG@K and MRR.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace freshrec {

class RankingMetrics {
 public:
  explicit RankingMetrics(std::vector<long long> ks = {1, 5, 10, 20});
  // rank: how many candidates scored strictly above the target (0 = top).
  void add(int64_t rank);
  void merge(const RankingMetrics& other);

  size_t count() const { return count_; }
  double hit_rate(long long k) const;  // share of targets ranked in the top k
  double ndcg(long long k) const;      // 1/log2(rank+2) within the top k, else 0
  double mrr() const;                  // mean 1/(rank+1), no cut-off
  const std::vector<long long>& ks() const { return ks_; }

  // {"users": n, "HR@10": ..., "NDCG@10": ..., "MRR": ...}
  std::string to_json() const;
  // The exact running sums, as JSON text, and back (for checkpoints: a restored object continues as
  // the saved one would have). from_state throws std::invalid_argument on a malformed state.
  std::string state() const;
  static RankingMetrics from_state(const std::string& state);
  // The running sums as numbers (count, reciprocal ranks, then hits and NDCG per cut-off), for a sum
  // over processes; from_sums reads such a vector back for the same cut-offs.
  std::vector<double> sums() const;
  static RankingMetrics from_sums(const std::vector<long long>& ks, const std::vector<double>& sums);

 private:
  std::vector<long long> ks_;
  std::map<long long, double> hits_, ndcg_;
  double reciprocal_rank_ = 0;
  size_t count_ = 0;
};

// The q-quantile (q in [0, 1]) of non-empty, ascending `sorted` by the nearest-rank rule.
template <typename T>
T quantile_of_sorted(const std::vector<T>& sorted, double q) {
  return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())))];
}

// A table with one row per model: "model | HR@1 ... | NDCG@1 ... | MRR".
std::string format_metrics_table(const std::vector<std::pair<std::string, RankingMetrics>>& rows);

}  // namespace freshrec
