#include "cli/cli_util.h"

#include <charconv>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "core/threads.h"

namespace mambacpp::cli {

namespace {

// from_chars over the whole text: the value, or why not.
template <class T>
std::errc parse_whole(const std::string& text, T& value) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec == std::errc() && ptr != end) return std::errc::invalid_argument;
  return ec;
}

template <class T>
T parse_number_flag(std::string_view flag, const std::string& text, std::string_view kind) {
  T value{};
  const std::errc ec = parse_whole(text, value);
  if (ec == std::errc::result_out_of_range) fail(flag, " ", text, " is out of range for ", kind);
  if (ec != std::errc()) fail_usage(flag, ": '", text, "' is not ", kind);
  return value;
}

bool is_separator(char c) { return c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace

int64_t parse_int_flag(std::string_view flag, const std::string& text) {
  return parse_number_flag<int64_t>(flag, text, "an integer");
}

uint64_t parse_uint64_flag(std::string_view flag, const std::string& text) {
  // "-5" is a number, just not one in [0, 2^64): bad input rather than a usage error.
  if (!text.empty() && text[0] == '-') {
    int64_t negative = 0;
    if (parse_whole(text, negative) != std::errc::invalid_argument)
      fail(flag, " ", text, " is out of range: must be in [0, 18446744073709551615]");
  }
  return parse_number_flag<uint64_t>(flag, text, "an integer in [0, 18446744073709551615]");
}

double parse_float_flag(std::string_view flag, const std::string& text) {
  return parse_number_flag<double>(flag, text, "a number");
}

void require_in_range(bool ok, std::string_view flag, const std::string& text, std::string_view rule) {
  if (!ok) fail(flag, " ", text, " is out of range: ", rule);
}

std::vector<int32_t> parse_ids(std::string_view text, std::string_view what, ErrorKind syntax_error) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (true) {
    int commas = 0;
    while (i < text.size() && is_separator(text[i])) commas += text[i++] == ',';
    const bool at_end = i == text.size();
    // Exactly one comma (or none) between two ids; none before the first or after the last.
    if (commas > 1 || (commas == 1 && (ids.empty() || at_end)))
      throw Error(syntax_error, cat(what, ": a comma without an id on each side (after position ", ids.size(),
                                    "); ids are integers separated by commas or spaces"));
    if (at_end) break;
    size_t end = i;
    while (end < text.size() && !is_separator(text[end])) ++end;
    const std::string piece(text.substr(i, end - i));
    int64_t id = 0;
    const std::errc ec = parse_whole(piece, id);
    if (ec == std::errc::invalid_argument)
      throw Error(syntax_error, cat(what, ": '", piece, "' at position ", ids.size() + 1,
                                    " is not a token id (ids are integers separated by commas or spaces)"));
    if (ec == std::errc::result_out_of_range || id < 0 || id > std::numeric_limits<int32_t>::max())
      fail("id ", piece, " at position ", ids.size() + 1, " of ", what, " is outside the vocabulary");
    ids.push_back(int32_t(id));
    i = end;
  }
  return ids;
}

std::string read_file(std::string_view flag, const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(flag, " ", path, ": is a folder, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(flag, " ", path, ": cannot open the file");
  std::ostringstream all;
  all << in.rdbuf();
  if (in.bad()) fail(flag, " ", path, ": read error");
  return all.str();
}

std::vector<std::string> read_lines(std::string_view flag, const std::string& path) {
  const std::string text = read_file(flag, path);
  if (text.empty()) fail(flag, " ", path, ": the file is empty (one item a line is expected)");

  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) fail(flag, " ", path, ": line ", lines.size() + 1, " is empty");
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

std::vector<std::vector<int32_t>> read_id_lines(std::string_view flag, const std::string& path) {
  std::vector<std::vector<int32_t>> sequences;
  for (const std::string& line : read_lines(flag, path)) {
    const std::string where = cat("line ", sequences.size() + 1, " of ", path);
    sequences.push_back(parse_ids(line, where, ErrorKind::BadInput));
    if (sequences.back().empty()) fail(flag, " ", path, ": line ", sequences.size(), " holds no ids");
  }
  return sequences;
}

void add_ids_input(CLI::App& cmd, std::string& ids, std::string& ids_file) {
  CLI::Option_group* input = cmd.add_option_group("input", "Exactly one of these gives the ids");
  input->add_option("--ids", ids, "One sequence of token ids, e.g. 1,2,3")->type_name("IDS");
  input
      ->add_option("--ids-file", ids_file,
                   "File of id sequences, one a line, all of the same length, ids separated by commas and/or spaces")
      ->type_name("FILE");
  input->require_option(1);
}

std::vector<std::vector<int32_t>> read_id_batch(const std::string& ids, const std::string& ids_file) {
  if (ids_file.empty()) return {parse_ids(ids, "--ids", ErrorKind::Usage)};
  auto sequences = read_id_lines("--ids-file", ids_file);
  for (size_t i = 1; i < sequences.size(); ++i)
    if (sequences[i].size() != sequences[0].size())
      fail("--ids-file ", ids_file, ": line ", i + 1, " has ", sequences[i].size(), " ids but line 1 has ",
           sequences[0].size(), "; every line must have the same length");
  return sequences;
}

void add_threads_flag(CLI::App& cmd, std::string& threads) {
  threads = std::to_string(std::max(1u, std::thread::hardware_concurrency()));
  cmd.add_option("-t,--threads", threads, "Compute threads, >= 1 (default: the number of cores)")
      ->type_name("N")
      ->capture_default_str();
}

void apply_threads(const std::string& threads) {
  const int64_t n = parse_int_flag("--threads", threads);
  require_in_range(n >= 1 && n <= 4096, "--threads", threads, "must be in [1, 4096]");
  set_num_threads(int(n));
}

void add_weights_flag(CLI::App& cmd, std::string& weights) {
  cmd.add_option("--weights", weights,
                 "How weight matrices are held in memory: f32, bf16 or f16 (compute is fp32 either way; "
                 "default: the checkpoint's own dtype when all its matrices are bf16/f16, else f32)")
      ->type_name("TYPE")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
}

std::optional<WeightType> parse_weight_type(std::string_view flag, const std::string& text) {
  if (text.empty()) return std::nullopt;
  if (text == "f32") return WeightType::F32;
  if (text == "bf16") return WeightType::BF16;
  if (text == "f16") return WeightType::F16;
  fail_usage(flag, " must be f32, bf16 or f16, not '", text, "'");
}

void add_model_flag(CLI::App& cmd, std::string& model_dir) {
  cmd.add_option("-m,--model", model_dir,
                 "Checkpoint folder: config.json with model.safetensors (or shards named by "
                 "model.safetensors.index.json) or mamba_ssm's pytorch_model.bin")
      ->type_name("DIR")
      ->required();
}

void check_model_dir(const std::string& model_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(model_dir, ec)) fail("--model ", model_dir, ": no such folder");
}

MambaModel open_model(const std::string& model_dir, const std::string& weights) {
  check_model_dir(model_dir);
  LoadOptions options;
  options.weights = parse_weight_type("--weights", weights);
  return MambaModel::load(model_dir, options);
}

Tokenizer open_tokenizer(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    const auto file = std::filesystem::path(path) / "tokenizer.json";
    if (!std::filesystem::exists(file, ec)) fail("--tokenizer ", path, ": the folder holds no tokenizer.json");
    return Tokenizer::from_file(file);
  }
  if (!std::filesystem::exists(path, ec)) fail("--tokenizer ", path, ": no such file");
  return Tokenizer::from_file(path);
}

std::optional<Tokenizer> find_tokenizer(const std::string& model_dir, const std::string& tokenizer_flag) {
  if (!tokenizer_flag.empty()) return open_tokenizer(tokenizer_flag);
  std::error_code ec;
  const auto file = std::filesystem::path(model_dir) / "tokenizer.json";
  if (std::filesystem::exists(file, ec)) return Tokenizer::from_file(file);
  return std::nullopt;
}

void write_stdout(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

std::string join_ids(std::span<const int32_t> ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  return out;
}

}  // namespace mambacpp::cli
