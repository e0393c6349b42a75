// mambacpp prepare: text files -> a data folder for training: train.tokens, val.tokens (token
// files, train/token_data.h), tokenizer.json (given, or a byte-level BPE trained on the text) and
// prepare.json (what went in and how many tokens came out). The folder appears whole or not at all.
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "text/bpe_trainer.h"
#include "text/utf8.h"
#include "train/token_data.h"

namespace mambacpp::cli {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr const char* kEndOfText = "<|endoftext|>";

struct PrepareArgs {
  std::vector<std::string> inputs;
  std::string out, tokenizer, train_vocab, val_fraction = "0.01", seed = "0", threads;
};

enum class SkipReason { Duplicate, Binary, Empty };

struct Skipped {
  std::string path;
  SkipReason reason;
  std::string detail;
};

struct Corpus {
  std::vector<std::string> paths, texts;
  std::vector<Skipped> skipped;
  size_t bytes = 0;
};

// "1.3 s"
std::string seconds_since(Clock::time_point start) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f s", std::chrono::duration<double>(Clock::now() - start).count());
  return text;
}

// Progress lines on stderr, at most one every two seconds.
class Progress {
 public:
  void report(const std::string& line) {
    if (Clock::now() - last_ < std::chrono::seconds(2)) return;
    last_ = Clock::now();
    std::fprintf(stderr, "prepare: %s\n", line.c_str());
  }

 private:
  Clock::time_point last_ = Clock::now();
};

void note(const std::string& line) { std::fprintf(stderr, "prepare: %s\n", line.c_str()); }

// An earlier prepare output, or an empty folder, may be replaced; anything else is most likely a
// mistake.
void check_replaceable(const fs::path& dir) {
  std::error_code ec;
  const auto status = fs::symlink_status(dir, ec);
  if (!fs::exists(status)) return;
  if (!fs::is_directory(status)) fail("--out ", dir.string(), ": exists and is not a folder");
  if (!fs::is_empty(dir, ec) && !fs::exists(dir / "prepare.json", ec))
    fail("--out ", dir.string(), ": the folder is not empty and holds no prepare.json (it is not an earlier "
         "prepare output); choose another folder");
}

const char* describe(SkipReason r) {
  switch (r) {
    case SkipReason::Duplicate: return "that repeat an earlier input (a link to it, or its name again)";
    case SkipReason::Binary: return "that hold NUL bytes (binary)";
    case SkipReason::Empty: return "that are empty";
  }
  return "";
}

// One line per reason: how many files and the first few.
void report_skipped(const std::vector<Skipped>& skipped) {
  for (const SkipReason r : {SkipReason::Duplicate, SkipReason::Binary, SkipReason::Empty}) {
    std::string names;
    int count = 0;
    for (const Skipped& s : skipped) {
      if (s.reason != r) continue;
      if (++count <= 4) names += (count > 1 ? ", " : "") + s.path;
    }
    if (count > 4) names += cat(" and ", count - 4, " more");
    if (count) note(cat("skipped ", count, " input file(s) ", describe(r), ": ", names));
  }
}

Corpus read_corpus(const std::vector<std::string>& inputs) {
  Corpus corpus;
  std::map<fs::path, std::string> seen;  // real path -> the input that named it first
  for (const std::string& input : inputs) {
    std::error_code ec;
    const auto status = fs::status(input, ec);
    if (!fs::exists(status)) fail("--input ", input, ": no such file");
    if (fs::is_directory(status)) fail("--input ", input, ": is a folder; give the files in it (e.g. ", input, "/*)");
    const auto [first, fresh] = seen.emplace(fs::canonical(input, ec), input);
    if (!fresh) {
      corpus.skipped.push_back({input, SkipReason::Duplicate, "the same file as " + first->second});
      continue;
    }
    std::string text = read_file("--input", input);
    if (const size_t nul = text.find('\0'); nul != std::string::npos) {
      corpus.skipped.push_back({input, SkipReason::Binary, cat("a NUL byte at offset ", nul)});
      continue;
    }
    if (text.empty()) {
      corpus.skipped.push_back({input, SkipReason::Empty, "no bytes"});
      continue;
    }
    if (!text::is_valid_utf8(text))
      note(cat(input, " is not valid UTF-8: its invalid bytes become U+FFFD, as in HF tokenizers"));
    corpus.bytes += text.size();
    corpus.paths.push_back(input);
    corpus.texts.push_back(std::move(text));
  }
  report_skipped(corpus.skipped);
  if (corpus.texts.empty()) fail("no text to prepare: all ", inputs.size(), " --input file(s) were skipped");
  return corpus;
}

std::vector<std::string_view> views(const std::vector<std::string>& texts) {
  return std::vector<std::string_view>(texts.begin(), texts.end());
}

struct ChosenTokenizer {
  Tokenizer tokenizer;
  std::string json;  // the tokenizer.json text written beside the data
  Json description;  // for prepare.json
};

ChosenTokenizer load_tokenizer(const std::string& path) {
  Tokenizer tokenizer = open_tokenizer(path);
  std::error_code ec;
  const fs::path file = fs::is_directory(path, ec) ? fs::path(path) / "tokenizer.json" : fs::path(path);
  return {std::move(tokenizer), read_file("--tokenizer", file.string()),
          Json{{"source", "file"}, {"path", fs::absolute(file).string()}}};
}

ChosenTokenizer train_tokenizer(int64_t vocab_size, const Corpus& corpus) {
  const Clock::time_point start = Clock::now();
  text::BpeTrainingOptions options;
  options.vocab_size = vocab_size;
  const text::WordCounts words = text::count_words(views(corpus.texts), options.special_tokens);
  note(cat("training a byte-level BPE of ", vocab_size, " tokens on ", words.size(), " distinct words"));
  Progress progress;
  options.progress = [&](int64_t tokens, int64_t total) { progress.report(cat("BPE: ", tokens, "/", total, " tokens")); };
  const text::BpeVocabulary vocab = text::train_bpe(words, options);
  if (int64_t(vocab.tokens.size()) < vocab_size)
    note(cat("the text has no pair left to merge after ", vocab.tokens.size(), " tokens: the vocabulary stops there"));
  note(cat("trained the tokenizer in ", seconds_since(start)));
  std::string json = text::to_tokenizer_json(vocab);
  Tokenizer tokenizer = Tokenizer::from_json_text(json, "the trained tokenizer");
  return {std::move(tokenizer), std::move(json),
          Json{{"source", "trained"},
               {"requested_vocab_size", vocab_size},
               {"merges", vocab.merges.size()},
               {"special_tokens", vocab.special_tokens}}};
}

// Every document's ids, documents encoded in parallel.
std::vector<std::vector<int32_t>> encode_all(const Tokenizer& tokenizer, const Corpus& corpus) {
  std::vector<std::vector<int32_t>> ids(corpus.texts.size());
  std::exception_ptr error;
  size_t done_bytes = 0;
  Progress progress;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < ids.size(); ++i) {
    try {
      ids[i] = tokenizer.encode(corpus.texts[i]);
    } catch (...) {  // exceptions must not leave an OpenMP region
#pragma omp critical(prepare_error)
      error = std::current_exception();
    }
#pragma omp critical(prepare_progress)
    {
      done_bytes += corpus.texts[i].size();
      progress.report(cat("encoded ", done_bytes >> 20, "/", corpus.bytes >> 20, " MiB"));
    }
  }
  if (error) std::rethrow_exception(error);
  return ids;
}

Json describe_inputs(const Corpus& corpus, const std::vector<std::vector<int32_t>>& ids) {
  Json inputs = Json::array();
  for (size_t i = 0; i < ids.size(); ++i)
    inputs.push_back({{"path", corpus.paths[i]}, {"bytes", corpus.texts[i].size()}, {"tokens", ids[i].size()}});
  Json skipped = Json::array();
  for (const Skipped& s : corpus.skipped)
    skipped.push_back({{"path", s.path}, {"reason", s.detail}});
  return Json{{"inputs", std::move(inputs)}, {"skipped", std::move(skipped)}};
}

void run_prepare(const PrepareArgs& a) {
  const Clock::time_point start = Clock::now();
  apply_threads(a.threads);
  const double val_fraction = parse_float_flag("--val-fraction", a.val_fraction);
  require_in_range(val_fraction >= 0 && val_fraction <= 0.5, "--val-fraction", a.val_fraction, "must be in [0, 0.5]");
  const uint64_t seed = parse_uint64_flag("--seed", a.seed);
  int64_t vocab_size = 0;
  if (!a.train_vocab.empty()) {
    vocab_size = parse_int_flag("--train-tokenizer", a.train_vocab);
    require_in_range(vocab_size >= 258 && vocab_size <= text::kMaxTrainedVocab, "--train-tokenizer", a.train_vocab,
                     cat("must be in [258, ", text::kMaxTrainedVocab, "] (2 special tokens + 256 bytes at least)"));
  }
  // Before the long work: a folder we may replace, and one we can write beside.
  AtomicDir staging(a.out);
  check_replaceable(staging.target());

  const Corpus corpus = read_corpus(a.inputs);
  note(cat(corpus.texts.size(), " file(s), ", corpus.bytes, " bytes"));
  const ChosenTokenizer chosen = a.train_vocab.empty() ? load_tokenizer(a.tokenizer) : train_tokenizer(vocab_size, corpus);
  const std::optional<int32_t> eos = chosen.tokenizer.token_to_id(kEndOfText);
  if (!eos) fail("the tokenizer has no ", kEndOfText, " token, which prepare puts after every document");

  const std::vector<std::vector<int32_t>> ids = encode_all(chosen.tokenizer, corpus);
  Rng rng(seed);
  const TrainValSplit split = split_train_val(ids, *eos, val_fraction, rng);
  if (val_fraction > 0 && split.val.empty())
    fail("--val-fraction ", a.val_fraction, " leaves no validation tokens: the documents are too short; give more text "
         "or --val-fraction 0");

  const int64_t vocab = chosen.tokenizer.vocab_size();
  write_token_file(staging.path() / "train.tokens", split.train, vocab);
  write_token_file(staging.path() / "val.tokens", split.val, vocab);
  write_file_atomically(staging.path() / "tokenizer.json", chosen.json);
  Json summary = describe_inputs(corpus, ids);
  summary["tokenizer"] = chosen.description;
  summary["vocab_size"] = vocab;
  summary["eos_id"] = *eos;
  summary["val_fraction"] = val_fraction;
  summary["seed"] = seed;
  summary["bytes_per_id"] = vocab <= 65536 ? 2 : 4;
  summary["train_tokens"] = split.train.size();
  summary["val_tokens"] = split.val.size();
  write_file_atomically(staging.path() / "prepare.json",
                        summary.dump(2, ' ', false, Json::error_handler_t::replace) + "\n");
  staging.commit();
  write_stdout(cat("prepared ", staging.target().string(), ": ", split.train.size(), " train + ", split.val.size(),
                   " val tokens, vocabulary ", vocab, ", from ", corpus.texts.size(), " file(s) (", corpus.bytes,
                   " bytes) in ", seconds_since(start), "\n"));
}

}  // namespace

void register_prepare(CLI::App& app) {
  auto a = std::make_shared<PrepareArgs>();
  CLI::App* cmd = app.add_subcommand("prepare", "Tokenize text files into train/val token files for training");
  cmd->footer(
      "Writes DIR/train.tokens, DIR/val.tokens, DIR/tokenizer.json and DIR/prepare.json; the folder\n"
      "appears whole or not at all (an earlier prepare output there is replaced).\n"
      "Each input file is one document; every document's tokens are followed by <|endoftext|>.\n"
      "Validation: from each document, a contiguous span of --val-fraction of its tokens, at a\n"
      "position drawn from --seed (the rest, with <|endoftext|> where the span was cut out, is for\n"
      "training).\n"
      "Token files: a 32-byte header (\"MCTK\", version 1, bytes per id, vocabulary size, id count),\n"
      "then the ids, uint16 when the vocabulary has <= 65536 tokens, else uint32, little-endian.\n"
      "--train-tokenizer trains a byte-level BPE (HF tokenizers' BpeTrainer with the ByteLevel\n"
      "pre-tokenizer) with <|endoftext|> = 0 and <|padding|> = 1; HF tokenizers loads its tokenizer.json.\n"
      "Input files that hold NUL bytes (binary) or are named twice (e.g. through a link) are skipped\n"
      "with a note. Exit codes: 0 ok, 1 bad input, 2 usage.");
  cmd->add_option("-i,--input", a->inputs, "Text files (UTF-8), one document each")
      ->type_name("FILE")
      ->required();
  cmd->add_option("-o,--out", a->out, "Output folder (new, empty, or an earlier prepare output)")
      ->type_name("DIR")
      ->required();
  CLI::Option_group* source = cmd->add_option_group("tokenizer", "Exactly one of these gives the tokenizer");
  source->add_option("--tokenizer", a->tokenizer, "tokenizer.json, or a folder holding one")->type_name("FILE");
  source->add_option("--train-tokenizer", a->train_vocab,
                     "Train a byte-level BPE of this many tokens (special tokens included), 258 to 1048576")
      ->type_name("VOCAB");
  source->require_option(1);
  cmd->add_option("--val-fraction", a->val_fraction, "Fraction of each document's tokens kept for validation, 0 to 0.5")
      ->type_name("X")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the validation spans' positions")->type_name("N")->capture_default_str();
  add_threads_flag(*cmd, a->threads);
  cmd->callback([a] { run_prepare(*a); });
}

}  // namespace mambacpp::cli
