// Line charts as self-contained SVG text: axes with round ticks, one polyline per series, a legend.
// Torch-free and dependency-free, so any run folder can be charted wherever freshrec runs.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace freshrec {

struct ChartSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite points are left out
};

struct LineChart {
  std::string title, x_label, y_label;
  std::vector<ChartSeries> series;
};

// The charts stacked top to bottom in one SVG document, each `width` x `height` pixels.
// Series take the palette's colours in order; a chart without any finite point shows "no data".
std::string render_svg(const std::vector<LineChart>& charts, int width = 760, int height = 340);

// Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten, about `target` of
// them. Exposed for tests.
std::vector<double> nice_ticks(double low, double high, int target = 5);

}  // namespace freshrec
