// Charts of a run folder (`freshrec plot RUN_DIR`, and the stream job at its end): the stream's rolling
// metrics from metrics.jsonl and the training curve from history.jsonl, written as SVG files.
#pragma once

#include <string>
#include <vector>

#include "engine/report/svg_chart.h"

namespace freshrec {

// The label of the pass of `stream --compare-frozen` whose student learns from the labels alone.
inline constexpr const char* kLabelsOnlyRun = "student-labels";

// The stream chart of `dir`: rolling NDCG@10 against events streamed, one series per metrics.jsonl
// in `dir` or in its immediate subfolders (frozen, continual, replay), plus each run's online student
// (of the labels-only pass, its student alone).
// Empty series list when there is none. Throws DataError naming file:line for a line that is not JSON.
LineChart stream_chart(const std::string& dir);

// The training charts of `dir`: loss and validation NDCG@10 per epoch, one series per history.jsonl in
// `dir` or in its immediate subfolders (teacher, student). When an epoch appears twice (a resumed
// run), its last line counts.
std::vector<LineChart> training_charts(const std::string& dir);

// Writes stream.svg and training.svg into `dir` (each only when it has data) and returns their paths.
// Throws DataError when `dir` is not a folder or holds neither kind of file.
std::vector<std::string> write_run_charts(const std::string& dir);

}  // namespace freshrec
