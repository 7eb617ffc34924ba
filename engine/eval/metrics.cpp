// Ranking metrics; see metrics.h.
#include "engine/eval/metrics.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace freshrec {

RankingMetrics::RankingMetrics(std::vector<long long> ks) : ks_(std::move(ks)) {
  for (auto k : ks_) {
    if (k <= 0) throw std::invalid_argument("metrics: cut-off K must be positive, got " + std::to_string(k));
    hits_[k] = ndcg_[k] = 0;
  }
}

void RankingMetrics::add(int64_t rank) {
  if (rank < 0) throw std::invalid_argument("metrics: negative rank " + std::to_string(rank));
  for (auto k : ks_) {
    if (rank < k) {
      hits_[k] += 1;
      ndcg_[k] += 1.0 / std::log2(static_cast<double>(rank) + 2.0);
    }
  }
  reciprocal_rank_ += 1.0 / (static_cast<double>(rank) + 1.0);
  ++count_;
}

void RankingMetrics::merge(const RankingMetrics& other) {
  if (other.ks_ != ks_) throw std::invalid_argument("metrics: merging different cut-offs");
  for (auto k : ks_) hits_[k] += other.hits_.at(k), ndcg_[k] += other.ndcg_.at(k);
  reciprocal_rank_ += other.reciprocal_rank_;
  count_ += other.count_;
}

double RankingMetrics::hit_rate(long long k) const { return count_ ? hits_.at(k) / count_ : 0.0; }
double RankingMetrics::ndcg(long long k) const { return count_ ? ndcg_.at(k) / count_ : 0.0; }
double RankingMetrics::mrr() const { return count_ ? reciprocal_rank_ / count_ : 0.0; }

std::string RankingMetrics::state() const {
  nlohmann::json j{{"ks", ks_}, {"count", count_}, {"reciprocal_rank", reciprocal_rank_}};
  for (auto k : ks_) j["hits"].push_back(hits_.at(k)), j["ndcg"].push_back(ndcg_.at(k));
  return j.dump();  // doubles are written with enough digits to read back exactly
}

std::vector<double> RankingMetrics::sums() const {
  std::vector<double> v{static_cast<double>(count_), reciprocal_rank_};
  for (auto k : ks_) v.push_back(hits_.at(k)), v.push_back(ndcg_.at(k));
  return v;
}

RankingMetrics RankingMetrics::from_sums(const std::vector<long long>& ks, const std::vector<double>& sums) {
  RankingMetrics m(ks);
  if (sums.size() != 2 + 2 * ks.size() || !(sums[0] >= 0))
    throw std::invalid_argument("metrics: " + std::to_string(sums.size()) + " sums for " + std::to_string(ks.size()) +
                                " cut-offs");
  m.count_ = static_cast<size_t>(sums[0]);
  m.reciprocal_rank_ = sums[1];
  for (size_t i = 0; i < ks.size(); ++i) m.hits_[ks[i]] = sums[2 + 2 * i], m.ndcg_[ks[i]] = sums[3 + 2 * i];
  return m;
}

RankingMetrics RankingMetrics::from_state(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    RankingMetrics m(j.at("ks").get<std::vector<long long>>());
    m.count_ = j.at("count").get<size_t>();
    m.reciprocal_rank_ = j.at("reciprocal_rank").get<double>();
    for (size_t i = 0; i < m.ks_.size(); ++i)
      m.hits_[m.ks_[i]] = j.at("hits").at(i).get<double>(), m.ndcg_[m.ks_[i]] = j.at("ndcg").at(i).get<double>();
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("metrics: malformed saved state: ") + e.what());
  }
}

std::string RankingMetrics::to_json() const {
  nlohmann::ordered_json j;
  j["users"] = count_;
  for (auto k : ks_) j["HR@" + std::to_string(k)] = hit_rate(k);
  for (auto k : ks_) j["NDCG@" + std::to_string(k)] = ndcg(k);
  j["MRR"] = mrr();
  return j.dump();
}

std::string format_metrics_table(const std::vector<std::pair<std::string, RankingMetrics>>& rows) {
  if (rows.empty()) return "";
  const auto& ks = rows.front().second.ks();
  std::string out;
  char cell[64];
  std::snprintf(cell, sizeof cell, "%-14s", "model");
  out += cell;
  for (auto k : ks) std::snprintf(cell, sizeof cell, " %8s", ("HR@" + std::to_string(k)).c_str()), out += cell;
  for (auto k : ks) std::snprintf(cell, sizeof cell, " %8s", ("NDCG@" + std::to_string(k)).c_str()), out += cell;
  out += "      MRR  users\n";
  for (const auto& [name, m] : rows) {
    std::snprintf(cell, sizeof cell, "%-14s", name.c_str());
    out += cell;
    for (auto k : ks) std::snprintf(cell, sizeof cell, " %8.4f", m.hit_rate(k)), out += cell;
    for (auto k : ks) std::snprintf(cell, sizeof cell, " %8.4f", m.ndcg(k)), out += cell;
    std::snprintf(cell, sizeof cell, " %8.4f %6zu\n", m.mrr(), m.count());
    out += cell;
  }
  return out;
}

}  // namespace freshrec
