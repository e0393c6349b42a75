// mambacpp bench: prefill and decode speed as llama-bench measures them (pp<p>, tg<n>), peak
// RSS, and each speed as a share of this machine's roofline (sgemm peak for prefill, memory read
// bandwidth for decode), stamped with the CPU, kernel level, threads, weights and command.
// --train: training steps of a random model (train/train_bench.h) with tokens/s, peak RSS and
// model FLOPs utilisation against the sgemm peak; --lengths repeats them at several sequence
// lengths with the same tokens per step, to show that time grows linearly with length.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/cpu_features.h"
#include "core/error.h"
#include "core/threads.h"
#include "infer/bench_model.h"
#include "infer/roofline.h"
#include "model/mamba_model.h"
#include "train/train_bench.h"

#ifndef MAMBACPP_COMMIT
#define MAMBACPP_COMMIT "unknown"
#endif

namespace mambacpp::cli {
namespace {

// Numbers arrive as text and are parsed by cli_util (not a number: exit 2; out of range: exit 1).
struct BenchArgs {
  std::string model_dir, shape, weights;  // weights empty: f32 for --shape, the checkpoint's own
  std::string prompt = "512", gen = "128", threads = "2", batch = "1", context = "0", repetitions = "3";
  bool json = false;
  // --train (batch defaults to 8 there when -b is not given)
  bool train = false, batch_given = false;
  std::string d_model = "512", n_layer = "8", vocab = "8192", d_state = "16", seq_len = "512", steps = "3", lengths;
};

struct BenchSettings {
  ModelBenchOptions run;
  int threads = 2;
};

int64_t int_in_range(std::string_view flag, const std::string& text, int64_t lo, int64_t hi) {
  const int64_t v = parse_int_flag(flag, text);
  require_in_range(v >= lo && v <= hi, flag, text, cat("must be in [", lo, ", ", hi, "]"));
  return v;
}

// Parses and range-checks every flag before anything is built or loaded.
BenchSettings settings(const BenchArgs& a) {
  if (a.model_dir.empty() == a.shape.empty()) fail_usage("bench: give exactly one of --model DIR or --shape 130m");
  constexpr int64_t kMaxTokens = 100'000'000;
  BenchSettings s;
  s.run.prompt_tokens = int_in_range("-p", a.prompt, 0, kMaxTokens);
  s.run.decode_tokens = int_in_range("-n", a.gen, 0, kMaxTokens);
  s.run.context = int_in_range("--context", a.context, 0, kMaxTokens);
  s.run.batch = int(int_in_range("-b", a.batch, 1, 4096));
  s.run.repetitions = int(int_in_range("-r", a.repetitions, 1, 1000));
  s.threads = int(int_in_range("-t", a.threads, 1, 4096));
  if (s.run.prompt_tokens == 0 && s.run.decode_tokens == 0) fail("bench: -p and -n are both 0: nothing to measure");
  return s;
}

std::string command_line(const BenchArgs& a, const BenchSettings& s, WeightType weights) {
  const std::string source = a.shape.empty() ? "--model " + a.model_dir : "--shape " + a.shape;
  return cat("mambacpp bench ", source, " -p ", s.run.prompt_tokens, " -n ", s.run.decode_tokens, " -t ", s.threads,
             " -b ", s.run.batch, " --context ", s.run.context, " --weights ", weight_type_name(weights), " -r ",
             s.run.repetitions);
}

// How idle OpenMP threads wait changes decode speed a lot on a busy machine, so it is stamped.
std::string omp_wait_policy() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  return policy ? policy : "unset";
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Bytes one decode step must read: every weight once (the tied embedding doubles as lm_head; an
// untied embedding only gives one row per sequence), plus the recurrent state read and written.
double decode_bytes_per_step(const MambaModel& model, int batch, size_t state_bytes) {
  const MambaConfig& c = model.config();
  double bytes = double(model.weight_bytes()) + 2.0 * double(state_bytes);
  if (!c.tie_embeddings) {
    const double matrix_elem = double(dtype_size(weight_dtype(model.weight_type())));
    bytes -= double(c.vocab_size - batch) * double(c.d_model) * matrix_elem;
  }
  return bytes;
}

struct Figures {
  ModelBenchResult run;
  double prefill_gflop = 0;  // GEMM work of one prefill run (all sequences)
  double step_bytes = 0;
  double rss_mib = 0;
  BandwidthResult bandwidth;
  SgemmResult sgemm;
  double prefill_share = 0, decode_share = 0;
};

Figures measure(MambaModel& model, const ModelBenchOptions& o) {
  Figures f;
  f.run = run_model_bench(model, o);
  // Peak RSS before the roofline measurements, whose buffers are not the model's.
  f.rss_mib = peak_rss_mib();

  // Well above any last-level cache a VM reports (glibc may give the whole socket's), and about
  // the size of the 130m model's F32 weights that decode streams.
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t stream_bytes = std::clamp<size_t>(l3 > 0 ? 2 * size_t(l3) : 0, size_t(512) << 20, size_t(2) << 30);
  f.bandwidth = measure_read_bandwidth(stream_bytes, 10);
  f.sgemm = measure_sgemm_peak(2048, 0.5);

  f.prefill_gflop = double(o.batch) * gemm_flops(model.config(), o.prompt_tokens, 1) / 1e9;
  f.step_bytes = decode_bytes_per_step(model, o.batch, f.run.state_bytes);
  if (o.prompt_tokens > 0) f.prefill_share = f.prefill_gflop / f.sgemm.gflop_per_s / f.run.prefill.mean_seconds;
  if (o.decode_tokens > 0) {
    const double step_seconds = f.run.decode.mean_seconds / double(o.decode_tokens);
    f.decode_share = f.step_bytes / (f.bandwidth.gb_per_s * 1e9) / step_seconds;
  }
  return f;
}

nlohmann::json or_null(bool present, double value) { return present ? nlohmann::json(value) : nlohmann::json(); }

struct Report {
  std::string model;    // the folder, or "random-130m"
  std::string command;  // every setting spelled out, to rerun it
  int threads = 0;
};

void print_json(const Report& r, const ModelBenchOptions& o, const MambaModel& model, const Figures& f) {
  const bool pp = o.prompt_tokens > 0, tg = o.decode_tokens > 0;
  nlohmann::ordered_json j;
  j["prefill_tok_s"] = or_null(pp, f.run.prefill.mean);
  j["prefill_tok_s_stddev"] = or_null(pp, f.run.prefill.stddev);
  j["decode_tok_s"] = or_null(tg, f.run.decode.mean);
  j["decode_tok_s_stddev"] = or_null(tg, f.run.decode.stddev);
  j["peak_rss_mib"] = f.rss_mib;
  j["prefill_peak_share"] = or_null(pp, f.prefill_share);
  j["decode_roofline_share"] = or_null(tg, f.decode_share);
  j["prefill_ms"] = or_null(pp, f.run.prefill.mean_seconds * 1e3);
  j["decode_ms_per_step"] = or_null(tg, f.run.decode.mean_seconds * 1e3 / double(std::max<int64_t>(o.decode_tokens, 1)));
  j["prefill_samples_tok_s"] = f.run.prefill.samples;
  j["decode_samples_tok_s"] = f.run.decode.samples;
  j["read_bandwidth_gb_s"] = f.bandwidth.gb_per_s;
  j["sgemm_gflop_s"] = f.sgemm.gflop_per_s;
  j["prefill_gemm_gflop"] = f.prefill_gflop;
  j["decode_bytes_per_step"] = f.step_bytes;
  j["weight_bytes"] = model.weight_bytes();
  j["parameters"] = model.parameter_count();
  j["model"] = r.model;
  j["weights"] = weight_type_name(model.weight_type());
  j["n_prompt"] = o.prompt_tokens;
  j["n_gen"] = o.decode_tokens;
  j["context"] = o.context;
  j["batch"] = o.batch;
  j["threads"] = r.threads;
  j["repetitions"] = o.repetitions;
  j["cpu"] = cpu_features().model_name;
  j["kernel_level"] = cpu_kernel_level();
  j["omp_wait_policy"] = omp_wait_policy();
  j["commit"] = MAMBACPP_COMMIT;
  j["command"] = r.command;
  std::printf("%s\n", j.dump().c_str());
}

// One row: test name, tokens/s mean ± stddev, time, and the share of the roofline.
void print_row(const std::string& test, const RateStats& s, const std::string& time, double share,
               const char* roof) {
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.2f ± %.2f", s.mean, s.stddev);
  const std::string of_roof =
      cat(int(share * 100 + 0.5), "% of ", roof, " (", int(s.mean / share + 0.5), " tok/s)");
  // "±" is two bytes and one column: one more byte of padding keeps the columns aligned.
  std::printf("| %-18s | %23s | %16s | %-36s |\n", test.c_str(), rate, time.c_str(), of_roof.c_str());
}

void print_table(const Report& r, const ModelBenchOptions& o, const MambaModel& model, const Figures& f) {
  std::printf("mambacpp bench: %s, %.1f M parameters, weights %s (%.1f MB in memory)\n", r.model.c_str(),
              double(model.parameter_count()) / 1e6, std::string(weight_type_name(model.weight_type())).c_str(),
              double(model.weight_bytes()) / 1e6);
  std::printf("command: %s\n", r.command.c_str());
  std::printf("cpu: %s | kernels: %s | threads: %d (OMP_WAIT_POLICY %s) | batch: %d | commit: %s\n\n",
              cpu_features().model_name.c_str(), cpu_kernel_level().c_str(), r.threads, omp_wait_policy().c_str(),
              o.batch, MAMBACPP_COMMIT);
  std::printf("| %-18s | %22s | %16s | %-36s |\n", "test", "tokens/s", "time", "roofline share");
  std::printf("|%s|%s|%s|%s|\n", std::string(20, '-').c_str(), std::string(24, '-').c_str(),
              std::string(18, '-').c_str(), std::string(38, '-').c_str());
  const std::string batch = o.batch > 1 ? cat(" x", o.batch) : "";
  char time[64];
  if (o.prompt_tokens > 0) {
    std::snprintf(time, sizeof time, "%.1f ms/run", f.run.prefill.mean_seconds * 1e3);
    print_row(cat("pp", o.prompt_tokens, batch), f.run.prefill, time, f.prefill_share, "sgemm peak");
  }
  if (o.decode_tokens > 0) {
    std::snprintf(time, sizeof time, "%.2f ms/step", f.run.decode.mean_seconds * 1e3 / double(o.decode_tokens));
    const std::string depth = o.context > 0 ? cat(" @ d", o.context) : "";
    print_row(cat("tg", o.decode_tokens, depth, batch), f.run.decode, time, f.decode_share, "read bandwidth");
  }
  std::printf("\nmachine: memory read %.1f GB/s (%zu MiB, best of %d), sgemm %.1f GFLOP/s (%d^3, best of %d)\n",
              f.bandwidth.gb_per_s, f.bandwidth.buffer_bytes >> 20, f.bandwidth.repetitions, f.sgemm.gflop_per_s,
              f.sgemm.n, f.sgemm.calls);
  std::printf("work: prefill %.2f GFLOP of GEMMs per run, decode reads %.1f MB per step\n", f.prefill_gflop,
              f.step_bytes / 1e6);
  std::printf("peak RSS: %.1f MiB\n", f.rss_mib);
}

void run_bench(const BenchArgs& a) {
  const BenchSettings s = settings(a);
  const std::optional<WeightType> weights = parse_weight_type("--weights", a.weights);
  set_num_threads(s.threads);
  MambaModel model = a.shape.empty()
                         ? open_model(a.model_dir, a.weights)
                         : MambaModel::random(published_shape(a.shape), 0, weights.value_or(WeightType::F32));
  const Report report{a.shape.empty() ? a.model_dir : "random-" + a.shape, command_line(a, s, model.weight_type()),
                      s.threads};
  const Figures f = measure(model, s.run);
  if (a.json) print_json(report, s.run, model, f);
  else print_table(report, s.run, model, f);
}


// --- --train ---------------------------------------------------------------------------------

struct TrainSettings {
  MambaConfig config;
  TrainBenchOptions run;
  std::vector<int64_t> lengths;  // one run per length at the same tokens per step; empty: one run
  int threads = 2;
};

// A Mamba-1 of the given size with the published models' other settings (expand 2, conv 4,
// dt rank ceil(d_model / 16), conv bias, no in/out bias, tied head).
MambaConfig train_shape(int64_t d_model, int64_t n_layer, int64_t vocab, int64_t d_state) {
  MambaConfig c;
  c.d_model = d_model;
  c.n_layer = n_layer;
  c.vocab_size = vocab;
  c.d_state = d_state;
  c.d_inner = 2 * d_model;
  c.dt_rank = (d_model + 15) / 16;
  return c;
}

std::vector<int64_t> parse_lengths(const std::string& text) {
  std::vector<int64_t> lengths;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string piece = text.substr(start, comma - start);
    lengths.push_back(int_in_range("--lengths", piece, 1, 1'000'000));
    start = comma + 1;
  }
  return lengths;
}

TrainSettings train_settings(const BenchArgs& a) {
  if (!a.model_dir.empty() || !a.shape.empty())
    fail_usage("bench --train builds a random model from --d-model, --n-layer, --vocab, --d-state: no --model or --shape");
  TrainSettings s;
  s.config = train_shape(int_in_range("--d-model", a.d_model, 1, 65536), int_in_range("--n-layer", a.n_layer, 1, 1024),
                         int_in_range("--vocab", a.vocab, 2, 10'000'000), int_in_range("--d-state", a.d_state, 1, 1024));
  s.run.batch = a.batch_given ? int(int_in_range("-b", a.batch, 1, 1 << 20)) : 8;
  s.run.length = int_in_range("--seq-len", a.seq_len, 1, 100'000'000);
  s.run.steps = int(int_in_range("--steps", a.steps, 1, 100'000));
  s.threads = int(int_in_range("-t", a.threads, 1, 4096));
  if (!a.lengths.empty()) {
    s.lengths = parse_lengths(a.lengths);
    const int64_t tokens = int64_t(s.run.batch) * s.run.length;
    for (int64_t length : s.lengths)
      if (tokens % length != 0)
        fail("--lengths ", length, ": the tokens per step (-b ", s.run.batch, " x --seq-len ", s.run.length, " = ", tokens,
             ") must be a multiple of every length");
  }
  return s;
}

std::string train_command_line(const TrainSettings& s, const std::string& lengths) {
  const MambaConfig& c = s.config;
  return cat("mambacpp bench --train --d-model ", c.d_model, " --n-layer ", c.n_layer, " --vocab ", c.vocab_size,
             " --d-state ", c.d_state, " -b ", s.run.batch, " --seq-len ", s.run.length, " --steps ", s.run.steps,
             " -t ", s.threads, lengths.empty() ? "" : " --lengths " + lengths);
}

struct TrainRow {
  int batch = 0;
  int64_t length = 0;
  RateStats rate;
  TrainBenchResult result;
};

struct TrainFigures {
  std::vector<TrainRow> rows;
  double flops_per_token = 0;  // forward GEMMs (lm_head included) x 3: forward + two for backward
  SgemmResult sgemm;
  double mfu(const TrainRow& r) const { return flops_per_token * r.rate.mean / (sgemm.gflop_per_s * 1e9); }
  double max_over_min() const {
    double lo = rows.front().rate.mean, hi = lo;
    for (const TrainRow& r : rows) lo = std::min(lo, r.rate.mean), hi = std::max(hi, r.rate.mean);
    return hi / lo;
  }
};

// The better of two sgemm measurements: a busy machine lowers one, never raises it.
SgemmResult best_sgemm(const SgemmResult& a, const SgemmResult& b) { return a.gflop_per_s >= b.gflop_per_s ? a : b; }

TrainFigures measure_training(const TrainSettings& s) {
  TrainFigures f;
  // Before and after the runs (each run's peak RSS is reset at its start, so the product's
  // buffers, freed by then, are not in it).
  const SgemmResult before = measure_sgemm_peak(2048, 0.5);
  const std::vector<int64_t> lengths = s.lengths.empty() ? std::vector<int64_t>{s.run.length} : s.lengths;
  const int64_t tokens = int64_t(s.run.batch) * s.run.length;
  for (int64_t length : lengths) {
    TrainBenchOptions o = s.run;
    o.length = length;
    o.batch = int(s.lengths.empty() ? s.run.batch : tokens / length);
    // A fresh model per run, so every length starts from the same weights.
    MambaModel model = MambaModel::random(s.config, 0, WeightType::F32);
    TrainRow row{o.batch, length, {}, run_train_bench(model, o)};
    row.rate = rate_stats(row.result.step_seconds, double(int64_t(o.batch) * length));
    f.rows.push_back(std::move(row));
  }
  f.flops_per_token = 3 * gemm_flops(s.config, 1, 1);
  f.sgemm = best_sgemm(before, measure_sgemm_peak(2048, 0.5));
  return f;
}

double mib(size_t bytes) { return double(bytes) / double(1 << 20); }

void print_train_json(const TrainSettings& s, const std::string& command, const TrainFigures& f) {
  nlohmann::ordered_json j;
  j["mode"] = "train";
  nlohmann::ordered_json runs = nlohmann::ordered_json::array();
  for (const TrainRow& r : f.rows) {
    nlohmann::ordered_json run;
    run["batch"] = r.batch;
    run["seq_len"] = r.length;
    run["tok_s"] = r.rate.mean;
    run["tok_s_stddev"] = r.rate.stddev;
    run["ms_per_step"] = r.rate.mean_seconds * 1e3;
    run["mfu"] = f.mfu(r);
    run["peak_rss_mib"] = mib(r.result.peak_rss_bytes);
    run["peak_rss_since_run_start"] = r.result.peak_rss_reset;
    run["activation_mib"] = mib(r.result.activation_bytes);
    run["grads_and_moments_mib"] = mib(r.result.state_bytes);
    run["loss_first"] = r.result.first_loss;
    run["loss_last"] = r.result.last_loss;
    run["samples_tok_s"] = r.rate.samples;
    runs.push_back(run);
  }
  j["runs"] = runs;
  if (f.rows.size() > 1) j["tok_s_max_over_min"] = f.max_over_min();
  j["flops_per_token"] = f.flops_per_token;
  j["sgemm_gflop_s"] = f.sgemm.gflop_per_s;
  j["parameters"] = ParameterTable(s.config).parameter_count();
  j["d_model"] = s.config.d_model;
  j["n_layer"] = s.config.n_layer;
  j["vocab"] = s.config.vocab_size;
  j["d_state"] = s.config.d_state;
  j["steps"] = s.run.steps;
  j["warmup_steps"] = s.run.warmup_steps;
  j["threads"] = s.threads;
  j["cpu"] = cpu_features().model_name;
  j["kernel_level"] = cpu_kernel_level();
  j["omp_wait_policy"] = omp_wait_policy();
  j["commit"] = MAMBACPP_COMMIT;
  j["command"] = command;
  std::printf("%s\n", j.dump().c_str());
}

void print_train_table(const TrainSettings& s, const std::string& command, const TrainFigures& f) {
  const MambaConfig& c = s.config;
  std::printf("mambacpp bench --train: random d_model %lld, n_layer %lld, d_state %lld, vocab %lld (%.1f M parameters, f32)\n",
              (long long)c.d_model, (long long)c.n_layer, (long long)c.d_state, (long long)c.vocab_size,
              double(ParameterTable(c).parameter_count()) / 1e6);
  std::printf("command: %s\n", command.c_str());
  std::printf("cpu: %s | kernels: %s | threads: %d (OMP_WAIT_POLICY %s) | commit: %s\n", cpu_features().model_name.c_str(),
              cpu_kernel_level().c_str(), s.threads, omp_wait_policy().c_str(), MAMBACPP_COMMIT);
  std::printf("step: loss with gradients + clip + AdamW; %d warm-up step(s), then %d timed\n\n", s.run.warmup_steps,
              s.run.steps);
  std::printf("| %-18s | %22s | %16s | %-10s | %14s |\n", "test", "tokens/s", "time", "MFU", "peak RSS");
  std::printf("|%s|%s|%s|%s|%s|\n", std::string(20, '-').c_str(), std::string(24, '-').c_str(),
              std::string(18, '-').c_str(), std::string(12, '-').c_str(), std::string(16, '-').c_str());
  for (const TrainRow& r : f.rows) {
    char rate[64], time[64], mfu[32], rss[32];
    std::snprintf(rate, sizeof rate, "%.1f ± %.1f", r.rate.mean, r.rate.stddev);
    std::snprintf(time, sizeof time, "%.1f ms/step", r.rate.mean_seconds * 1e3);
    std::snprintf(mfu, sizeof mfu, "%.1f%%", 100 * f.mfu(r));
    std::snprintf(rss, sizeof rss, "%.1f MiB", mib(r.result.peak_rss_bytes));
    // "±" is two bytes and one column: one more byte of padding keeps the columns aligned.
    std::printf("| %-18s | %23s | %16s | %-10s | %14s |\n", cat("train ", r.batch, "x", r.length).c_str(), rate, time, mfu,
                rss);
  }
  const TrainRow& first = f.rows.front();
  std::printf("\nwork: %.1f MFLOP per token (3 x the forward's GEMMs, lm_head included); sgemm %.1f GFLOP/s (%d^3, best of %d, before or after the runs)\n",
              f.flops_per_token / 1e6, f.sgemm.gflop_per_s, f.sgemm.n, f.sgemm.calls);
  std::printf("memory: activations %.1f MiB (%dx%lld), gradients + AdamW moments %.1f MiB%s\n",
              mib(first.result.activation_bytes), first.batch, (long long)first.length, mib(first.result.state_bytes),
              first.result.peak_rss_reset ? "" : "; peak RSS is process-wide (could not reset it)");
  std::printf("loss: %.4f at the first step, %.4f at the last\n", first.result.first_loss, f.rows.back().result.last_loss);
  if (f.rows.size() > 1)
    std::printf("linear time: tokens/s max / min over the lengths = %.3f (goal: <= 1.15)\n", f.max_over_min());
}

void run_train(const BenchArgs& a) {
  const TrainSettings s = train_settings(a);
  set_num_threads(s.threads);
  const std::string command = train_command_line(s, a.lengths);
  const TrainFigures f = measure_training(s);
  if (a.json) print_train_json(s, command, f);
  else print_train_table(s, command, f);
}

void add_train_flags(CLI::App& cmd, BenchArgs& a) {
  cmd.add_flag("--train", a.train,
               "Time training steps (loss with gradients, clip, AdamW) of a random model instead; -b defaults to 8");
  cmd.add_option("--d-model", a.d_model, "--train: model width")->type_name("N")->capture_default_str();
  cmd.add_option("--n-layer", a.n_layer, "--train: layers")->type_name("N")->capture_default_str();
  cmd.add_option("--vocab", a.vocab, "--train: vocabulary size")->type_name("N")->capture_default_str();
  cmd.add_option("--d-state", a.d_state, "--train: SSM state size")->type_name("N")->capture_default_str();
  cmd.add_option("--seq-len", a.seq_len, "--train: tokens per sequence")->type_name("N")->capture_default_str();
  cmd.add_option("--steps", a.steps, "--train: timed steps after one warm-up step")->type_name("N")
      ->capture_default_str();
  cmd.add_option("--lengths", a.lengths,
                 "--train: one run per sequence length, each with -b x --seq-len tokens per step (batch = tokens / L)")
      ->type_name("L1,L2,...");
}

}  // namespace

void register_bench(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Prefill and decode speed as llama-bench measures them, with peak RSS and roofline shares");
  cmd->footer(
      "pp<p>: one forward of a p-token prompt, logits for the last position only. tg<n>: n single-token\n"
      "steps with full-vocabulary logits, from an empty state (or after --context tokens). Each test runs\n"
      "once to warm up, then -r times; tokens/s is the mean ± stddev over those runs (with -b, summed over\n"
      "the sequences). Shares: prefill GEMM FLOPs / measured sgemm peak, decode bytes read per step /\n"
      "measured memory read bandwidth, each divided by the measured time.\n"
      "--train: one untimed warm-up step, then --steps timed steps, each a full optimizer step (zero the\n"
      "gradients, mean next-token loss with gradients, clip at norm 1, AdamW); tokens/s = -b x --seq-len /\n"
      "step time. MFU: 3 x the forward's GEMM FLOPs per token (lm_head included) x tokens/s / sgemm peak.\n"
      "Peak RSS: VmHWM, reset before each run. Exit codes: 0 ok, 1 bad input, 2 usage.");
  cmd->add_option("-m,--model", args->model_dir, "Checkpoint folder (HF or mamba_ssm)")->type_name("DIR");
  cmd->add_option("--shape", args->shape, "Random weights of a known shape instead: 130m or 370m")->type_name("NAME");
  cmd->add_option("-p,--n-prompt", args->prompt, "Prompt tokens per sequence for prefill, >= 0 (0: skip)")
      ->type_name("N")->capture_default_str();
  cmd->add_option("-n,--n-gen", args->gen, "Decode steps per sequence, >= 0 (0: skip)")->type_name("N")
      ->capture_default_str();
  cmd->add_option("-t,--threads", args->threads, "Threads, >= 1")->type_name("N")->capture_default_str();
  cmd->add_option("-b,--batch", args->batch, "Sequences run together, >= 1 (tokens/s summed over them)")
      ->type_name("N")->capture_default_str();
  cmd->add_option("--context", args->context, "Prompt tokens before the timed decode, >= 0 (0: empty state)")
      ->type_name("N")->capture_default_str();
  add_weights_flag(*cmd, args->weights);
  cmd->add_option("-r,--repetitions", args->repetitions, "Timed repetitions after one warm-up, >= 1")
      ->type_name("N")->capture_default_str();
  cmd->add_flag("--json", args->json, "Print one line of JSON instead of the table");
  add_train_flags(*cmd, *args);
  cmd->callback([args, cmd] {
    args->batch_given = cmd->count("--batch") > 0;
    if (args->train) run_train(*args);
    else run_bench(*args);
  });
}

}  // namespace mambacpp::cli
