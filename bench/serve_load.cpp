// Loopback load test of `mambacpp serve` (bench/serve_load.sh starts the server and runs this).
//
//   serve_load --port N [--api openai|llamacpp] [--clients 64 --seconds 60] [--concurrency 1,8,32,64 --sweep-seconds 20]
//              [--max-tokens 64] [--server-pid PID] [--csv FILE] [--svg FILE] [--title TEXT]
//
// First a soak: --clients streaming clients for --seconds, every stream checked against a solo
// reference (serve_load_client.h) and the server's RSS sampled every second. Then the same at each
// --concurrency. Prints the command, machine and load, one summary line per run, writes a CSV row
// per run and an SVG plot of tokens/s and p50/p99 latency against concurrency. Exits 1 when any
// stream failed or differed from its reference.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "serve_load_client.h"

namespace mambacpp::bench {
namespace {

struct Run {
  std::string phase;  // "soak" or "sweep"
  LoadResult result;
};

std::string first_line_of(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string machine() {
  std::ifstream loadavg("/proc/loadavg");
  std::string one, five, fifteen;
  loadavg >> one >> five >> fifteen;
  return first_line_of("/proc/cpuinfo", "model name") + ", " + std::to_string(std::thread::hardware_concurrency()) +
         " CPUs, load average " + one + " " + five + " " + fifteen;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read --prompts-file " + path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  if (lines.empty()) throw std::runtime_error("--prompts-file " + path + " has no prompts");
  return lines;
}

int64_t peak_rss(const LoadResult& r) {
  int64_t peak = 0;
  for (const RssSample& s : r.rss) peak = std::max(peak, s.bytes);
  return peak;
}

void write_csv(const std::string& path, const std::vector<Run>& runs) {
  std::ofstream out(path);
  out << "phase,clients,seconds,requests,errors,mismatches,tokens,tokens_per_s,ttft_p50_ms,ttft_p99_ms,"
         "tpot_p50_ms,tpot_p99_ms,rss_first_mib,rss_max_mib,rss_last_mib\n";
  for (const Run& run : runs) {
    const LoadResult& r = run.result;
    char line[512];
    const double mib = 1.0 / (1 << 20);
    std::snprintf(line, sizeof line, "%s,%d,%.2f,%lld,%lld,%lld,%lld,%.2f,%.2f,%.2f,%.3f,%.3f,%.1f,%.1f,%.1f\n",
                  run.phase.c_str(), r.clients, r.seconds, (long long)r.requests, (long long)r.errors,
                  (long long)r.mismatches, (long long)r.tokens, r.tokens_per_second(),
                  1e3 * percentile(r.time_to_first_token, 0.5), 1e3 * percentile(r.time_to_first_token, 0.99),
                  1e3 * percentile(r.time_per_output_token, 0.5), 1e3 * percentile(r.time_per_output_token, 0.99),
                  r.rss.empty() ? 0.0 : r.rss.front().bytes * mib, peak_rss(r) * mib,
                  r.rss.empty() ? 0.0 : r.rss.back().bytes * mib);
    out << line;
  }
}

// --- the plot: two panels sharing the concurrency axis ----------------------------------------

constexpr double kPanelWidth = 440, kPanelHeight = 300, kLeft = 70, kTop = 60, kGap = 90;

struct Series {
  std::string name, color;
  bool dashed;
  std::vector<double> values;
};

std::string fmt(double v, int decimals = 1) {
  char text[32];
  std::snprintf(text, sizeof text, "%.*f", decimals, v);
  return text;
}

std::string escape_xml(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : std::string(1, c);
  return out;
}

// One panel at x offset `x0`: `to_y` maps a value to 0..1 of the height; `ticks` are the y grid.
void draw_panel(std::ostream& svg, double x0, const std::string& title, const std::string& y_label,
                const std::vector<int>& clients, const std::vector<Series>& series,
                const std::function<double(double)>& to_y, const std::vector<std::pair<double, std::string>>& ticks,
                bool label_points) {
  const auto px = [&](size_t i) {
    return x0 + (clients.size() == 1 ? kPanelWidth / 2 : kPanelWidth * (0.06 + 0.88 * double(i) / double(clients.size() - 1)));
  };
  const auto py = [&](double v) { return kTop + kPanelHeight * (1 - to_y(v)); };
  svg << "<text x='" << x0 + kPanelWidth / 2 << "' y='" << kTop - 24 << "' text-anchor='middle' font-size='15'>"
      << escape_xml(title) << "</text>\n";
  svg << "<rect x='" << x0 << "' y='" << kTop << "' width='" << kPanelWidth << "' height='" << kPanelHeight
      << "' fill='none' stroke='#999'/>\n";
  for (const auto& [value, label] : ticks) {
    svg << "<line x1='" << x0 << "' x2='" << x0 + kPanelWidth << "' y1='" << py(value) << "' y2='" << py(value)
        << "' stroke='#e4e4e4'/><text x='" << x0 - 6 << "' y='" << py(value) + 4
        << "' text-anchor='end' font-size='11'>" << label << "</text>\n";
  }
  for (size_t i = 0; i < clients.size(); ++i)
    svg << "<text x='" << px(i) << "' y='" << kTop + kPanelHeight + 18 << "' text-anchor='middle' font-size='11'>"
        << clients[i] << "</text>\n";
  svg << "<text x='" << x0 + kPanelWidth / 2 << "' y='" << kTop + kPanelHeight + 38
      << "' text-anchor='middle' font-size='12'>concurrent streams</text>\n";
  svg << "<text transform='translate(" << x0 - 52 << "," << kTop + kPanelHeight / 2
      << ") rotate(-90)' text-anchor='middle' font-size='12'>" << escape_xml(y_label) << "</text>\n";
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    svg << "<polyline fill='none' stroke='" << s.color << "' stroke-width='2'"
        << (s.dashed ? " stroke-dasharray='6 4'" : "") << " points='";
    for (size_t i = 0; i < s.values.size(); ++i) svg << fmt(px(i)) << ',' << fmt(py(s.values[i])) << ' ';
    svg << "'/>\n";
    for (size_t i = 0; i < s.values.size(); ++i) {
      svg << "<circle cx='" << fmt(px(i)) << "' cy='" << fmt(py(s.values[i])) << "' r='3' fill='" << s.color << "'/>\n";
      if (label_points)
        svg << "<text x='" << fmt(px(i)) << "' y='" << fmt(py(s.values[i]) - 8) << "' text-anchor='middle' font-size='11'>"
            << fmt(s.values[i]) << "</text>\n";
    }
    if (series.size() > 1) {  // legend, top left inside the panel
      const double ly = kTop + 14 + 16 * double(k);
      svg << "<line x1='" << x0 + 10 << "' x2='" << x0 + 34 << "' y1='" << ly << "' y2='" << ly << "' stroke='" << s.color
          << "' stroke-width='2'" << (s.dashed ? " stroke-dasharray='6 4'" : "") << "/><text x='" << x0 + 40 << "' y='"
          << ly + 4 << "' font-size='11'>" << escape_xml(s.name) << "</text>\n";
    }
  }
}

void write_svg(const std::string& path, const std::vector<Run>& sweep, const std::string& title) {
  std::vector<int> clients;
  Series rate{"tokens/s", "#2f6f4f", false, {}};
  std::vector<Series> latency = {{"time to first token p50", "#1f5fbf", false, {}},
                                 {"time to first token p99", "#1f5fbf", true, {}},
                                 {"time per output token p50", "#d9730d", false, {}},
                                 {"time per output token p99", "#d9730d", true, {}}};
  for (const Run& run : sweep) {
    const LoadResult& r = run.result;
    clients.push_back(r.clients);
    rate.values.push_back(r.tokens_per_second());
    latency[0].values.push_back(1e3 * percentile(r.time_to_first_token, 0.5));
    latency[1].values.push_back(1e3 * percentile(r.time_to_first_token, 0.99));
    latency[2].values.push_back(1e3 * percentile(r.time_per_output_token, 0.5));
    latency[3].values.push_back(1e3 * percentile(r.time_per_output_token, 0.99));
  }
  // Tokens/s: linear from 0 with about five round ticks.
  const double top = std::max(1.0, *std::max_element(rate.values.begin(), rate.values.end()) * 1.15);
  const double raw = top / 5, power = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw <= power ? power : raw <= 2 * power ? 2 * power : raw <= 5 * power ? 5 * power : 10 * power;
  std::vector<std::pair<double, std::string>> rate_ticks;
  for (double v = 0; v <= top; v += step) rate_ticks.push_back({v, fmt(v, 0)});
  // Latency: log scale over whole decades.
  double lo = 1e30, hi = 0;
  for (const Series& s : latency)
    for (double v : s.values)
      if (v > 0) lo = std::min(lo, v), hi = std::max(hi, v);
  if (hi == 0) lo = 1, hi = 10;
  const double d0 = std::floor(std::log10(lo)), d1 = std::max(d0 + 1, std::ceil(std::log10(hi)));
  std::vector<std::pair<double, std::string>> latency_ticks;
  for (double d = d0; d <= d1; ++d) latency_ticks.push_back({std::pow(10.0, d), fmt(std::pow(10.0, d), d < 0 ? int(-d) : 0)});
  for (Series& s : latency)
    for (double& v : s.values) v = std::max(v, std::pow(10.0, d0));

  const double width = kLeft + 2 * kPanelWidth + kGap + 20, height = kTop + kPanelHeight + 70;
  std::ofstream svg(path);
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
      << "' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n";
  svg << "<text x='" << width / 2 << "' y='20' text-anchor='middle' font-size='13' fill='#444'>" << escape_xml(title)
      << "</text>\n";
  draw_panel(svg, kLeft, "aggregate throughput", "tokens/s", clients, {rate}, [&](double v) { return v / top; },
             rate_ticks, true);
  draw_panel(svg, kLeft + kPanelWidth + kGap, "latency per stream", "milliseconds (log scale)", clients, latency,
             [&](double v) { return (std::log10(v) - d0) / (d1 - d0); }, latency_ticks, false);
  svg << "</svg>\n";
}

void report(const std::string& phase, const LoadResult& r) {
  std::cout << "[" << phase << "] " << summary(r) << "\n";
  for (const std::string& p : r.problems) std::cout << "  problem: " << p << "\n";
}

}  // namespace
}  // namespace mambacpp::bench

int main(int argc, char** argv) {
  using namespace mambacpp::bench;
  LoadOptions o;
  std::vector<int> concurrency = {1, 8, 32, 64};
  double sweep_seconds = 20;
  std::string csv, svg, title = "mambacpp serve, loopback load", prompts_file;
  CLI::App app{"Loopback load test of `mambacpp serve`: streaming clients, every stream checked"};
  app.add_option("--api", o.api, "Completion API: openai (mambacpp serve) or llamacpp (llama-server's /completion)")
      ->transform(CLI::CheckedTransformer(std::map<std::string, Api>{{"openai", Api::OpenAI}, {"llamacpp", Api::LlamaCpp}}))
      ->default_str("openai");
  app.add_option("--host", o.host, "Server address")->capture_default_str();
  app.add_option("--port", o.port, "Server port")->required();
  app.add_option("--api-key", o.api_key, "Sent as Authorization: Bearer");
  app.add_option("--clients", o.clients, "Concurrent clients of the soak run (0: no soak)")->capture_default_str();
  app.add_option("--seconds", o.seconds, "Length of the soak run")->capture_default_str();
  app.add_option("--concurrency", concurrency, "Client counts of the sweep (empty: none)")->delimiter(',')->capture_default_str();
  app.add_option("--sweep-seconds", sweep_seconds, "Length of each sweep run")->capture_default_str();
  app.add_option("--max-tokens", o.max_tokens, "max_tokens of every request")->capture_default_str();
  app.add_option("--temperature", o.temperature, "Sampling temperature (> 0: the seed matters)")->capture_default_str();
  app.add_option("--references", o.references, "(prompt, seed) pairs with a solo reference")->capture_default_str();
  app.add_option("--prompts-file", prompts_file, "Prompts, one per line (default: a built-in list)");
  int64_t id_prompt_vocab = 0;
  app.add_option("--id-prompts", id_prompt_vocab,
                 "Send random token-id prompts below this vocabulary size instead of text (models without a tokenizer)");
  app.add_option("--server-pid", o.server_pid, "Sample this process's VmRSS every second");
  app.add_option("--csv", csv, "Write one row per run");
  app.add_option("--svg", svg, "Plot tokens/s and latency against the sweep's concurrency");
  app.add_option("--title", title, "Plot subtitle (model, machine)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (!prompts_file.empty()) o.prompts = read_lines(prompts_file);
    if (id_prompt_vocab > 0) o.id_prompts = random_id_prompts(std::max(o.references, 1), id_prompt_vocab, o.seed);
    std::cout << "command:";
    for (int i = 0; i < argc; ++i) std::cout << ' ' << argv[i];
    std::cout << "\nmachine: " << machine() << "\n";
    const std::vector<Reference> references = fetch_references(o);
    std::cout << "references: " << references.size() << " solo completions of " << o.max_tokens << " tokens\n";

    std::vector<Run> runs;
    if (o.clients > 0) {
      runs.push_back({"soak", run_load(o, references)});
      report("soak", runs.back().result);
      if (!runs.back().result.rss.empty()) {
        std::cout << "  server RSS (MiB, one sample a second):";
        for (const RssSample& s : runs.back().result.rss) std::cout << ' ' << (s.bytes >> 20);
        std::cout << "\n";
      }
    }
    std::vector<Run> sweep;
    for (int c : concurrency) {
      LoadOptions at = o;
      at.clients = c;
      at.seconds = sweep_seconds;
      sweep.push_back({"sweep", run_load(at, references)});
      report("concurrency " + std::to_string(c), sweep.back().result);
    }
    runs.insert(runs.end(), sweep.begin(), sweep.end());
    if (!sweep.empty() && sweep.front().result.clients == 1)
      for (const Run& run : sweep)
        std::printf("  %d streams: %.2fx the tokens/s of 1 stream\n", run.result.clients,
                    run.result.tokens_per_second() / std::max(1e-9, sweep.front().result.tokens_per_second()));
    if (!csv.empty()) write_csv(csv, runs);
    if (!svg.empty() && !sweep.empty()) write_svg(svg, sweep, title);
    for (const Run& run : runs)
      if (run.result.errors > 0 || run.result.mismatches > 0) return 1;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "serve_load: " << e.what() << "\n";
    return 1;
  }
}
