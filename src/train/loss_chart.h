// RUN/loss.svg: the train and val loss curves of a run's metrics, as a hand-written SVG.
#pragma once

#include <string>
#include <vector>

#include "train/metrics.h"

namespace mambacpp {

// The train loss (every finite one; consecutive steps averaged when there are more than 1000)
// and the val loss against the step: labelled axes with ticks, a legend, `title` on top.
std::string loss_chart_svg(const std::vector<MetricsRow>& rows, const std::string& title);

}  // namespace mambacpp
