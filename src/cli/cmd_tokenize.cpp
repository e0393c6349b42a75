// mambacpp tokenize / detokenize: text to ids and back with a tokenizer.json, exactly as Hugging
// Face tokenizers does it.
#include <memory>
#include <string>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"

namespace mambacpp::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer, text, text_file, ids;
  CLI::Option* text_opt = nullptr;
};

void run_tokenize(const TokenizeArgs& a) {
  const Tokenizer tokenizer = open_tokenizer(a.tokenizer);
  const std::string text = a.text_opt->count() ? a.text : read_file("--text-file", a.text_file);
  write_stdout(join_ids(tokenizer.encode(text)) + "\n");
}

void run_detokenize(const TokenizeArgs& a) {
  const std::vector<int32_t> ids = parse_ids(a.ids, "--ids", ErrorKind::Usage);
  const Tokenizer tokenizer = open_tokenizer(a.tokenizer);
  const int64_t vocab = tokenizer.vocab_size();
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= vocab)
      fail("id ", ids[i], " at position ", i + 1, " of --ids is outside the tokenizer's vocabulary (", vocab, " tokens)");
  write_stdout(tokenizer.decode(ids));
}

void add_tokenizer_flag(CLI::App& cmd, std::string& path) {
  cmd.add_option("--tokenizer", path, "tokenizer.json, or a folder holding one")->type_name("FILE")->required();
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  CLI::App* tok = app.add_subcommand("tokenize", "Print the token ids of a text, comma-separated on one line");
  tok->footer("Special tokens written in the text (e.g. <|endoftext|>) become their ids. Exit codes: 0 ok, 1 bad input, 2 usage.");
  add_tokenizer_flag(*tok, a->tokenizer);
  CLI::Option_group* input = tok->add_option_group("input", "Exactly one of these gives the text");
  a->text_opt = input->add_option("--text", a->text, "The text")->type_name("TEXT");
  input->add_option("--text-file", a->text_file, "A file whose whole content (bytes as they are) is the text")
      ->type_name("FILE");
  input->require_option(1);
  tok->callback([a] { run_tokenize(*a); });

  CLI::App* detok = app.add_subcommand("detokenize", "Print the text of token ids exactly (no newline added)");
  detok->footer("Special tokens are kept. Exit codes: 0 ok, 1 bad input (an id outside the vocabulary), 2 usage.");
  add_tokenizer_flag(*detok, a->tokenizer);
  detok->add_option("--ids", a->ids, "Token ids separated by commas and/or spaces, e.g. 1,2,3")
      ->type_name("IDS")
      ->required();
  detok->callback([a] { run_detokenize(*a); });
}

}  // namespace mambacpp::cli
