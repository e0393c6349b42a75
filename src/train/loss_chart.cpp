// loss.svg, written by hand: a frame with nice-numbered ticks, the train curve as a polyline,
// the val points joined by a line, a legend.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "train/loss_chart.h"

namespace mambacpp {
namespace {

constexpr double kWidth = 800, kHeight = 480;
constexpr double kLeft = 72, kRight = 24, kTop = 44, kBottom = 56;
constexpr size_t kMaxPoints = 1000;  // the train curve is averaged down to this many points

struct Point {
  double x, y;
};

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return lo > hi; }
};

std::string num(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", v);
  return text;
}

std::string escape_xml(const std::string& s) {
  std::string out;
  for (char c : s) {
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

// 1, 2 or 5 times a power of ten, giving about `count` intervals over [lo, hi].
double nice_step(double lo, double hi, int count) {
  const double raw = std::max(hi - lo, 1e-12) / count;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0})
    if (raw <= m * power) return m * power;
  return 10 * power;
}

// The tick label: as many decimals as the step needs.
std::string tick_label(double v, double step) {
  const int decimals = std::clamp(int(-std::floor(std::log10(step))), 0, 6);
  char text[32];
  std::snprintf(text, sizeof text, "%.*f", decimals, std::abs(v) < step * 1e-6 ? 0.0 : v);
  return text;
}

// Consecutive groups of points averaged so that at most kMaxPoints remain.
std::vector<Point> bucketed(const std::vector<Point>& points) {
  const size_t group = (points.size() + kMaxPoints - 1) / kMaxPoints;
  if (group <= 1) return points;
  std::vector<Point> out;
  for (size_t i = 0; i < points.size(); i += group) {
    const size_t end = std::min(points.size(), i + group);
    Point mean{0, 0};
    for (size_t k = i; k < end; ++k) mean = {mean.x + points[k].x, mean.y + points[k].y};
    out.push_back({mean.x / double(end - i), mean.y / double(end - i)});
  }
  return out;
}

class Chart {
 public:
  Chart(Range x, Range y) : x_(x), y_(y) {}
  double px(double x) const { return kLeft + (x - x_.lo) / (x_.hi - x_.lo) * (kWidth - kLeft - kRight); }
  double py(double y) const { return kHeight - kBottom - (y - y_.lo) / (y_.hi - y_.lo) * (kHeight - kTop - kBottom); }

  std::string polyline(const std::vector<Point>& points, const char* color) const {
    std::string s = cat("<polyline fill=\"none\" stroke=\"", color, "\" stroke-width=\"1.5\" points=\"");
    for (const Point& p : points) s += num(px(p.x)) + "," + num(py(p.y)) + " ";
    return s + "\"/>\n";
  }
  std::string dots(const std::vector<Point>& points, const char* color) const {
    std::string s;
    for (const Point& p : points)
      s += cat("<circle cx=\"", num(px(p.x)), "\" cy=\"", num(py(p.y)), "\" r=\"3\" fill=\"", color, "\"/>\n");
    return s;
  }
  std::string axes() const {
    const double x0 = kLeft, x1 = kWidth - kRight, y0 = kHeight - kBottom, y1 = kTop;
    std::string s = cat("<rect x=\"", num(x0), "\" y=\"", num(y1), "\" width=\"", num(x1 - x0), "\" height=\"",
                        num(y0 - y1), "\" fill=\"none\" stroke=\"#444\"/>\n");
    const double xs = nice_step(x_.lo, x_.hi, 8), ys = nice_step(y_.lo, y_.hi, 6);
    for (double v = std::ceil(x_.lo / xs) * xs; v <= x_.hi + xs * 1e-9; v += xs)
      s += cat("<line x1=\"", num(px(v)), "\" y1=\"", num(y0), "\" x2=\"", num(px(v)), "\" y2=\"", num(y0 + 5),
               "\" stroke=\"#444\"/><text x=\"", num(px(v)), "\" y=\"", num(y0 + 19),
               "\" text-anchor=\"middle\">", tick_label(v, xs), "</text>\n");
    for (double v = std::ceil(y_.lo / ys) * ys; v <= y_.hi + ys * 1e-9; v += ys)
      s += cat("<line x1=\"", num(x0 - 5), "\" y1=\"", num(py(v)), "\" x2=\"", num(x1), "\" y2=\"", num(py(v)),
               "\" stroke=\"#ddd\"/><text x=\"", num(x0 - 8), "\" y=\"", num(py(v) + 4),
               "\" text-anchor=\"end\">", tick_label(v, ys), "</text>\n");
    s += cat("<text x=\"", num((x0 + x1) / 2), "\" y=\"", num(kHeight - 14), "\" text-anchor=\"middle\">step</text>\n");
    s += cat("<text transform=\"translate(18 ", num((y0 + y1) / 2),
             ") rotate(-90)\" text-anchor=\"middle\">loss (nats per token)</text>\n");
    return s;
  }

 private:
  Range x_, y_;
};

std::string legend(bool has_val) {
  const double x = kWidth - kRight - 130, y = kTop + 10;
  std::string s = cat("<rect x=\"", num(x), "\" y=\"", num(y), "\" width=\"120\" height=\"", has_val ? 44 : 24,
                      "\" fill=\"white\" stroke=\"#999\"/>\n");
  auto entry = [&](double row, const char* color, const char* label) {
    s += cat("<line x1=\"", num(x + 8), "\" y1=\"", num(row), "\" x2=\"", num(x + 32), "\" y2=\"", num(row),
             "\" stroke=\"", color, "\" stroke-width=\"2\"/><text x=\"", num(x + 40), "\" y=\"", num(row + 4), "\">",
             label, "</text>\n");
  };
  entry(y + 12, "#1f77b4", "train loss");
  if (has_val) entry(y + 32, "#d62728", "val loss");
  return s;
}

}  // namespace

std::string loss_chart_svg(const std::vector<MetricsRow>& rows, const std::string& title) {
  std::vector<Point> train, val;
  Range x, y;
  for (const MetricsRow& r : rows) {
    x.add(double(r.step));
    if (r.train_loss && std::isfinite(*r.train_loss)) train.push_back({double(r.step), *r.train_loss});
    if (r.val_loss && std::isfinite(*r.val_loss)) val.push_back({double(r.step), *r.val_loss});
  }
  train = bucketed(train);
  for (const auto* points : {&train, &val})
    for (const Point& p : *points) y.add(p.y);
  if (x.empty()) x = {0, 1};
  if (y.empty()) y = {0, 1};
  x.lo = std::min(x.lo, 0.0);
  x.hi = std::max(x.hi, x.lo + 1);
  const double pad = std::max((y.hi - y.lo) * 0.05, 1e-3);
  y = {std::max(0.0, y.lo - pad), y.hi + pad};

  const Chart chart(x, y);
  std::string svg = cat("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"",
                        kWidth, "\" height=\"", kHeight, "\" viewBox=\"0 0 ", kWidth, " ", kHeight,
                        "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
                        "fill=\"white\"/>\n<text x=\"", num(kWidth / 2), "\" y=\"24\" text-anchor=\"middle\" "
                        "font-size=\"15\">", escape_xml(title), "</text>\n");
  svg += chart.axes();
  if (!train.empty()) svg += chart.polyline(train, "#1f77b4");
  if (!val.empty()) svg += chart.polyline(val, "#d62728") + chart.dots(val, "#d62728");
  svg += legend(!val.empty());
  return svg + "</svg>\n";
}

}  // namespace mambacpp
