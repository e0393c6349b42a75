// What several commands share: numeric flags parsed and range-checked the same way everywhere
// (not a number -> usage error, exit 2; a number out of range -> bad input, exit 1, naming the
// flag and the value), token id lists and files of lines, --threads, --weights, and opening a
// model folder and its tokenizer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/error.h"
#include "model/mamba_model.h"
#include "text/tokenizer.h"

namespace mambacpp::cli {

// Decimal numbers as typed on the command line (no hex, no octal; "nan"/"inf" parse as doubles
// and are then refused by the range checks).
int64_t parse_int_flag(std::string_view flag, const std::string& text);
uint64_t parse_uint64_flag(std::string_view flag, const std::string& text);
double parse_float_flag(std::string_view flag, const std::string& text);

// Throws BadInput "<flag> <text> is out of range: <rule>" unless `ok`.
void require_in_range(bool ok, std::string_view flag, const std::string& text, std::string_view rule);

// Token ids separated by commas and/or whitespace ("1,2,3", "1 2 3", "1, 2, 3"). A piece that is
// not a decimal integer is an error of `syntax_error` kind (Usage for a flag, BadInput for a
// file); a negative or too large id is BadInput. `what` names the source in messages.
std::vector<int32_t> parse_ids(std::string_view text, std::string_view what, ErrorKind syntax_error);

// The bytes of a file; BadInput naming `flag` and the file when it cannot be read.
std::string read_file(std::string_view flag, const std::string& path);
// The lines of a text file (a final newline ends the last line; "\r\n" counts as a newline).
// Missing file, no line at all or an empty line: BadInput naming `flag`, the file and the line.
std::vector<std::string> read_lines(std::string_view flag, const std::string& path);
// One id sequence a line, as read_lines and parse_ids.
std::vector<std::vector<int32_t>> read_id_lines(std::string_view flag, const std::string& path);
// The --ids / --ids-file pair (exactly one required) of commands that take a batch of equal-length
// id sequences, and the batch they give: one sequence from --ids, or a line each from the file.
void add_ids_input(CLI::App& cmd, std::string& ids, std::string& ids_file);
std::vector<std::vector<int32_t>> read_id_batch(const std::string& ids, const std::string& ids_file);

// --threads N, default: the number of cores. apply_threads checks N >= 1 and sets it.
void add_threads_flag(CLI::App& cmd, std::string& threads);
void apply_threads(const std::string& threads);

// --weights f32|bf16|f16 (how matrices are held in memory); empty = the checkpoint's own.
void add_weights_flag(CLI::App& cmd, std::string& weights);
// "f32", "bf16", "f16" -> the type; "" -> nullopt; anything else is a usage error naming `flag`.
std::optional<WeightType> parse_weight_type(std::string_view flag, const std::string& text);

// --model DIR (required).
void add_model_flag(CLI::App& cmd, std::string& model_dir);
// BadInput "--model DIR: no such folder" unless it is one.
void check_model_dir(const std::string& model_dir);
MambaModel open_model(const std::string& model_dir, const std::string& weights);

// A tokenizer file, or a folder holding tokenizer.json.
Tokenizer open_tokenizer(const std::string& path);
// --tokenizer if given, else the model folder's tokenizer.json if there is one.
std::optional<Tokenizer> find_tokenizer(const std::string& model_dir, const std::string& tokenizer_flag);

// Writes bytes to stdout exactly as they are and flushes.
void write_stdout(std::string_view text);
// "1,2,3"
std::string join_ids(std::span<const int32_t> ids);

}  // namespace mambacpp::cli
