// Charts of a run folder; see run_charts.h.
#include "engine/report/run_charts.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include "engine/data/readers.h"
#include "engine/io/atomic_file.h"

namespace freshrec {
namespace fs = std::filesystem;
namespace {

constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();

// `dir`'s own file first, then those of its immediate subfolders in name order.
std::vector<fs::path> files_named(const fs::path& dir, const std::string& name) {
  std::vector<fs::path> found;
  if (fs::is_regular_file(dir / name)) found.push_back(dir / name);
  std::vector<fs::path> subfolders;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_directory() && fs::is_regular_file(entry.path() / name)) subfolders.push_back(entry.path() / name);
  std::sort(subfolders.begin(), subfolders.end());
  found.insert(found.end(), subfolders.begin(), subfolders.end());
  return found;
}

// The JSON objects of a .jsonl file, each with its line number; blank lines are skipped.
std::vector<std::pair<size_t, nlohmann::json>> read_jsonl(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw DataError(path.string() + ": cannot open");
  std::vector<std::pair<size_t, nlohmann::json>> lines;
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
      throw DataError(path.string() + ":" + std::to_string(number) + ": not a JSON object");
    lines.emplace_back(number, std::move(j));
  }
  return lines;
}

// A numeric field, NaN when absent or null (a metric the run does not have, or a non-finite value,
// which JSON writes as null).
double number_at(const nlohmann::json& object, const std::string& key) {
  const auto it = object.find(key);
  return it != object.end() && it->is_number() ? it->get<double>() : kMissing;
}

// What to call a run in a legend: its folder's name, or `fallback` when the file is in `dir` itself.
std::string run_name(const fs::path& file, const fs::path& dir, const std::string& fallback) {
  return file.parent_path() == dir ? fallback : file.parent_path().filename().string();
}

}  // namespace

LineChart stream_chart(const std::string& dir_name) {
  const fs::path dir(dir_name);
  LineChart chart{"Rolling NDCG@10 over the stream (each event scored before it is learned from)", "events streamed",
                  "NDCG@10 per window", {}};
  for (const fs::path& file : files_named(dir, "metrics.jsonl")) {
    const auto lines = read_jsonl(file);
    if (lines.empty()) continue;
    std::string label = run_name(file, dir, "stream");
    if (const auto it = lines.front().second.find("label"); it != lines.front().second.end() && it->is_string())
      label = it->get<std::string>();
    // The labels-only pass of `stream --compare-frozen` (its student updated without the teacher)
    // repeats the continual run's teacher: only its student is drawn.
    const bool student_only = label == kLabelsOnlyRun;
    ChartSeries model{label, {}}, student{student_only ? "student (labels only)" : "student (" + label + ")", {}};
    for (const auto& [number, j] : lines) {
      const double events = number_at(j, "events");
      model.points.emplace_back(events, number_at(j, "NDCG@10"));
      student.points.emplace_back(events, number_at(j, "student_NDCG@10"));
    }
    if (!student_only) chart.series.push_back(std::move(model));
    const bool has_student = std::any_of(student.points.begin(), student.points.end(),
                                         [](const auto& p) { return std::isfinite(p.second); });
    if (has_student) chart.series.push_back(std::move(student));
  }
  return chart;
}

std::vector<LineChart> training_charts(const std::string& dir_name) {
  const fs::path dir(dir_name);
  LineChart loss{"Training loss per epoch", "epoch", "mean training loss", {}};
  LineChart validation{"Validation NDCG@10 per epoch (full ranking, seen items filtered)", "epoch",
                       "validation NDCG@10", {}};
  for (const fs::path& file : files_named(dir, "history.jsonl")) {
    std::map<double, std::pair<double, double>> by_epoch;  // a resumed run may repeat an epoch: the last line wins
    for (const auto& [number, j] : read_jsonl(file)) {
      const double epoch = number_at(j, "epoch");
      if (!std::isfinite(epoch))
        throw DataError(file.string() + ":" + std::to_string(number) + ": no numeric \"epoch\" field");
      const auto v = j.find("validation");
      by_epoch[epoch] = {number_at(j, "loss"), v != j.end() && v->is_object() ? number_at(*v, "NDCG@10") : kMissing};
    }
    if (by_epoch.empty()) continue;
    const std::string name = run_name(file, dir, "training");
    ChartSeries loss_series{name, {}}, validation_series{name, {}};
    for (const auto& [epoch, values] : by_epoch) {
      loss_series.points.emplace_back(epoch, values.first);
      validation_series.points.emplace_back(epoch, values.second);
    }
    loss.series.push_back(std::move(loss_series));
    validation.series.push_back(std::move(validation_series));
  }
  if (loss.series.empty()) return {};
  return {validation, loss};
}

std::vector<std::string> write_run_charts(const std::string& dir_name) {
  const fs::path dir(dir_name);
  if (!fs::is_directory(dir)) throw DataError(dir_name + ": not a folder");
  std::vector<std::string> written;
  const LineChart stream = stream_chart(dir_name);
  if (!stream.series.empty()) {
    const std::string path = (dir / "stream.svg").string();
    write_file_atomically(path, render_svg({stream}));
    written.push_back(path);
  }
  const std::vector<LineChart> training = training_charts(dir_name);
  if (!training.empty()) {
    const std::string path = (dir / "training.svg").string();
    write_file_atomically(path, render_svg(training));
    written.push_back(path);
  }
  if (written.empty())
    throw DataError(dir_name + ": no metrics.jsonl (a stream run) or history.jsonl (a training run) in it or in its "
                    "subfolders");
  return written;
}

}  // namespace freshrec
