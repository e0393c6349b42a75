// GET /metrics: the engine's counters, gauges and histograms (and the server's responses by HTTP
// status) in the Prometheus text exposition format 0.0.4. Every family is prefixed "mambacpp_";
// counters end in _total, durations are in seconds.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "serve/engine.h"

namespace mambacpp::serve {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

// `http_responses`: responses sent so far, by status code.
std::string prometheus_text(const EngineMetrics& engine, const std::map<int, int64_t>& http_responses);

}  // namespace mambacpp::serve
