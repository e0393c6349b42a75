// The tokenizer alone, for bench/tokenizer/*.sh:
//   tokenizer_bench ids TOKENIZER.json TEXTS.jsonl [--check-roundtrip]
//       one JSON string per input line; prints each text's ids as a JSON array on its own line
//       (with --check-roundtrip, exits with 3 if decode(encode(text)) != text for some text)
//   tokenizer_bench time TOKENIZER.json FILE [whole|lines] [repeats]
//       encodes FILE as one string (whole) or line by line, on this one thread, and prints the
//       MB/s of the first pass (empty word cache), the best and the mean over the repeats
//   tokenizer_bench classes OUT   writes our character class (L, N, S, O) of every code point,
//       one byte each, for unicode_classes.js to compare with HF's
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) mambacpp::fail(path, ": cannot open");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int print_ids(const mambacpp::Tokenizer& tok, const std::string& texts_path, bool check_roundtrip) {
  std::ifstream in(texts_path, std::ios::binary);
  if (!in) mambacpp::fail(texts_path, ": cannot open");
  std::string line;
  int mismatches = 0;
  for (size_t n = 1; std::getline(in, line); ++n) {
    const auto text = nlohmann::json::parse(line).get<std::string>();
    const std::vector<int32_t> ids = tok.encode(text);
    if (check_roundtrip && tok.decode(ids) != text) {
      std::cerr << texts_path << ":" << n << ": decode(encode(text)) != text\n";
      ++mismatches;
    }
    std::cout << nlohmann::json(ids).dump() << '\n';
  }
  return mismatches == 0 ? 0 : 3;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t end = std::min(text.find('\n', begin), text.size());
    lines.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return lines;
}

int time_encoding(const mambacpp::Tokenizer& tok, const std::string& path, bool whole, int repeats) {
  const std::string text = read_file(path);
  const std::vector<std::string> lines = split_lines(text);
  double best = 1e30, total = 0, first = 0;
  size_t tokens = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    tokens = 0;
    if (whole) {
      tokens = tok.encode(text).size();
    } else {
      for (const std::string& l : lines) tokens += tok.encode(l).size();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r == 0) first = s;
    best = std::min(best, s);
    total += s;
  }
  const double mb = double(text.size()) / 1e6;
  std::printf("{\"engine\": \"mambacpp\", \"mode\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, "
              "\"repeats\": %d, \"first_mb_s\": %.3f, \"best_mb_s\": %.3f, \"mean_mb_s\": %.3f}\n",
              whole ? "whole" : "lines", text.size(), tokens, repeats, mb / first, mb / best,
              mb / (total / repeats));
  return 0;
}

}  // namespace

int write_classes(const std::string& path) {
  std::string classes(0x110000, 'X');  // X: surrogates, which are not characters
  for (char32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    classes[cp] = "LNSO"[int(mambacpp::text::char_class(cp))];
  }
  std::ofstream(path, std::ios::binary) << classes;
  return 0;
}

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() >= 3 && args[0] == "ids") {
      const bool check = args.size() >= 4 && args[3] == "--check-roundtrip";
      return print_ids(mambacpp::Tokenizer::from_file(args[1]), args[2], check);
    }
    if (args.size() >= 3 && args[0] == "time") {
      const bool whole = args.size() < 4 || args[3] == "whole";
      const int repeats = args.size() >= 5 ? std::stoi(args[4]) : 5;
      return time_encoding(mambacpp::Tokenizer::from_file(args[1]), args[2], whole, repeats);
    }
    if (args.size() == 2 && args[0] == "classes") return write_classes(args[1]);
    std::cerr << "usage: tokenizer_bench ids TOKENIZER.json TEXTS.jsonl [--check-roundtrip]\n"
                 "       tokenizer_bench time TOKENIZER.json FILE [whole|lines] [repeats]\n"
                 "       tokenizer_bench classes OUT\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
