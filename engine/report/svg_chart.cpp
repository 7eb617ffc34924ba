// SVG line charts: see svg_chart.h.
#include "engine/report/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace freshrec {
namespace {

// Colour-blind-safe (Okabe-Ito), dark enough on white.
const char* const kPalette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"};

std::string escape_xml(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A tick label: 12k / 1.5M for large values, else the shortest of %g.
std::string tick_label(double v, double step) {
  char buffer[32];
  const double a = std::fabs(v);
  if (a >= 1e6 && step >= 1e5) std::snprintf(buffer, sizeof buffer, "%gM", v / 1e6);
  else if (a >= 1e4 && step >= 1e3) std::snprintf(buffer, sizeof buffer, "%gk", v / 1e3);
  else std::snprintf(buffer, sizeof buffer, "%g", std::fabs(v) < step * 1e-6 ? 0.0 : v);
  return buffer;
}

std::string number(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f", v);
  return buffer;
}

void render_chart(std::ostringstream& svg, const LineChart& chart, double top, int width, int height) {
  const double left = 70, right = 170, head = 34, foot = 48;  // the legend sits in the right margin
  const double plot_w = width - left - right, plot_h = height - head - foot;
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const auto& s : chart.series)
    for (const auto& [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y)) {
        x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
        y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
      }
  svg << "<g transform=\"translate(0," << number(top) << ")\">\n"
      << "<text x=\"" << number(left) << "\" y=\"20\" font-size=\"15\" font-weight=\"bold\">" << escape_xml(chart.title)
      << "</text>\n";
  if (!std::isfinite(x_lo)) {
    svg << "<text x=\"" << number(left + plot_w / 2) << "\" y=\"" << number(head + plot_h / 2)
        << "\" text-anchor=\"middle\" fill=\"#777\">no data</text>\n</g>\n";
    return;
  }
  const std::vector<double> x_ticks = nice_ticks(x_lo, x_hi), y_ticks = nice_ticks(y_lo, y_hi);
  // The axes span the ticks, so the outermost ones sit on the frame.
  x_lo = std::min(x_lo, x_ticks.front()), x_hi = std::max(x_hi, x_ticks.back());
  y_lo = std::min(y_lo, y_ticks.front()), y_hi = std::max(y_hi, y_ticks.back());
  const double x_span = x_hi > x_lo ? x_hi - x_lo : 1, y_span = y_hi > y_lo ? y_hi - y_lo : 1;
  auto px = [&](double x) { return left + (x - x_lo) / x_span * plot_w; };
  auto py = [&](double y) { return head + plot_h - (y - y_lo) / y_span * plot_h; };

  svg << "<rect x=\"" << number(left) << "\" y=\"" << number(head) << "\" width=\"" << number(plot_w) << "\" height=\""
      << number(plot_h) << "\" fill=\"none\" stroke=\"#444\"/>\n";
  const double x_step = x_ticks.size() > 1 ? x_ticks[1] - x_ticks[0] : 1;
  const double y_step = y_ticks.size() > 1 ? y_ticks[1] - y_ticks[0] : 1;
  for (double t : y_ticks) {
    svg << "<line x1=\"" << number(left) << "\" x2=\"" << number(left + plot_w) << "\" y1=\"" << number(py(t))
        << "\" y2=\"" << number(py(t)) << "\" stroke=\"#e4e4e4\"/>"
        << "<text x=\"" << number(left - 6) << "\" y=\"" << number(py(t) + 4) << "\" text-anchor=\"end\">"
        << tick_label(t, y_step) << "</text>\n";
  }
  for (double t : x_ticks)
    svg << "<line x1=\"" << number(px(t)) << "\" x2=\"" << number(px(t)) << "\" y1=\"" << number(head + plot_h)
        << "\" y2=\"" << number(head + plot_h + 5) << "\" stroke=\"#444\"/>"
        << "<text x=\"" << number(px(t)) << "\" y=\"" << number(head + plot_h + 19) << "\" text-anchor=\"middle\">"
        << tick_label(t, x_step) << "</text>\n";
  svg << "<text x=\"" << number(left + plot_w / 2) << "\" y=\"" << number(head + plot_h + 40)
      << "\" text-anchor=\"middle\">" << escape_xml(chart.x_label) << "</text>\n"
      << "<text transform=\"translate(18," << number(head + plot_h / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
      << escape_xml(chart.y_label) << "</text>\n";

  for (size_t i = 0; i < chart.series.size(); ++i) {
    const ChartSeries& s = chart.series[i];
    const char* colour = kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
    std::string points;
    size_t drawn = 0;
    for (const auto& [x, y] : s.points)
      if (std::isfinite(x) && std::isfinite(y)) points += (drawn++ ? " " : "") + number(px(x)) + "," + number(py(y));
    if (drawn == 1)  // one point: a dot, since a one-point polyline draws nothing
      svg << "<circle cx=\"" << points.substr(0, points.find(',')) << "\" cy=\"" << points.substr(points.find(',') + 1)
          << "\" r=\"3\" fill=\"" << colour << "\"/>\n";
    else if (drawn > 1)
      svg << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\" points=\"" << points << "\">"
          << "<title>" << escape_xml(s.name) << "</title></polyline>\n";
    const double ly = head + 14 + 20.0 * i;
    svg << "<line x1=\"" << number(left + plot_w + 14) << "\" x2=\"" << number(left + plot_w + 38) << "\" y1=\""
        << number(ly) << "\" y2=\"" << number(ly) << "\" stroke=\"" << colour << "\" stroke-width=\"3\"/>"
        << "<text x=\"" << number(left + plot_w + 44) << "\" y=\"" << number(ly + 4) << "\">" << escape_xml(s.name)
        << "</text>\n";
  }
  svg << "</g>\n";
}

}  // namespace

std::vector<double> nice_ticks(double low, double high, int target) {
  if (!std::isfinite(low) || !std::isfinite(high)) return {};
  if (low > high) std::swap(low, high);
  if (high - low < 1e-12 * std::max(1.0, std::fabs(high))) {  // a flat series: a unit band around it
    const double pad = std::fabs(high) > 0 ? std::fabs(high) * 0.1 : 1;
    low -= pad, high += pad;
  }
  const double raw = (high - low) / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * magnitude >= raw) {
      step = m * magnitude;
      break;
    }
  // From the last multiple of step at or below low to the first at or above high (by index, so that
  // repeated additions do not drift).
  std::vector<double> ticks;
  const double first = std::floor(low / step + 1e-9) * step;
  for (int k = 0; k < 1000; ++k) {
    const double t = first + k * step;
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
    if (t >= high - step * 1e-9) break;
  }
  return ticks;
}

std::string render_svg(const std::vector<LineChart>& charts, int width, int height) {
  std::ostringstream svg;
  const int total = height * static_cast<int>(std::max<size_t>(charts.size(), 1));
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << total
      << "\" viewBox=\"0 0 " << width << " " << total << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (size_t i = 0; i < charts.size(); ++i) render_chart(svg, charts[i], static_cast<double>(height) * i, width, height);
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace freshrec
