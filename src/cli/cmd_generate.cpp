// mambacpp generate: continues one prompt (streamed as it is generated) or several (one batch,
// printed in input order when all are done).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "infer/generator.h"

namespace mambacpp::cli {
namespace {

struct GenerateArgs {
  std::string model_dir, tokenizer, weights, threads;
  std::string prompt, ids, prompt_file, ids_file;
  std::string max_new_tokens = "128";
  std::string temperature = "0.8", top_k = "40", top_p = "0.95", min_p = "0.05", repeat_penalty = "1.0";
  std::string seed = "0";
  std::vector<std::string> stop;
  bool print_ids = false;
  bool ignore_eos = false;
  CLI::Option *prompt_opt = nullptr, *ids_opt = nullptr, *prompt_file_opt = nullptr, *ids_file_opt = nullptr;
};

struct Prompt {
  std::vector<int32_t> ids;
  std::string text;  // printed before the completion in text mode
};

// The flag that sets a sampling field, and the text given to it.
std::pair<std::string_view, const std::string&> sampling_flag(const GenerateArgs& a, SamplingField field) {
  switch (field) {
    case SamplingField::Temperature: return {"--temperature", a.temperature};
    case SamplingField::TopK: return {"--top-k", a.top_k};
    case SamplingField::TopP: return {"--top-p", a.top_p};
    case SamplingField::MinP: return {"--min-p", a.min_p};
    case SamplingField::RepetitionPenalty: return {"--repeat-penalty", a.repeat_penalty};
  }
  MAMBACPP_CHECK(false);
  return {"", a.seed};
}

// Parses and range-checks every numeric flag before anything is loaded.
GenerationOptions generation_options(const GenerateArgs& a) {
  GenerationOptions o;
  o.max_new_tokens = parse_int_flag("--max-new-tokens", a.max_new_tokens);
  require_in_range(o.max_new_tokens >= 0, "--max-new-tokens", a.max_new_tokens, "must be >= 0");
  SamplingParams& s = o.sampling;
  s.temperature = parse_float_flag("--temperature", a.temperature);
  s.top_k = parse_int_flag("--top-k", a.top_k);
  s.top_p = parse_float_flag("--top-p", a.top_p);
  s.min_p = parse_float_flag("--min-p", a.min_p);
  s.repetition_penalty = parse_float_flag("--repeat-penalty", a.repeat_penalty);
  s.seed = parse_uint64_flag("--seed", a.seed);
  if (auto problem = find_sampling_problem(s)) {
    const auto [flag, text] = sampling_flag(a, problem->field);
    require_in_range(false, flag, text, problem->rule);
  }
  for (const std::string& stop : a.stop)
    if (stop.empty()) fail("--stop: a stop string must not be empty");
  o.stop = a.stop;
  return o;
}

std::vector<Prompt> read_prompts(const GenerateArgs& a, const Tokenizer* tokenizer) {
  std::vector<Prompt> prompts;
  auto text_prompt = [&](std::string text) {
    if (!tokenizer)
      fail("--model ", a.model_dir, " has no tokenizer.json: pass --tokenizer FILE, or give token ids with --ids or --ids-file");
    prompts.push_back({tokenizer->encode(text), std::move(text)});
  };
  auto id_prompt = [&](std::vector<int32_t> ids) {
    std::string text = tokenizer ? tokenizer->decode(ids) : std::string();
    prompts.push_back({std::move(ids), std::move(text)});
  };
  if (a.prompt_opt->count()) text_prompt(a.prompt);
  if (a.ids_opt->count()) id_prompt(parse_ids(a.ids, "--ids", ErrorKind::Usage));
  if (a.prompt_file_opt->count())
    for (std::string& line : read_lines("--prompt-file", a.prompt_file)) text_prompt(std::move(line));
  if (a.ids_file_opt->count())
    for (auto& ids : read_id_lines("--ids-file", a.ids_file)) id_prompt(std::move(ids));
  return prompts;
}

// Names a prompt in error messages the way the user gave it.
std::string prompt_name(const GenerateArgs& a, size_t i) {
  if (a.prompt_opt->count()) return "--prompt";
  if (a.ids_opt->count()) return "--ids";
  return cat("line ", i + 1, " of ", a.prompt_file_opt->count() ? a.prompt_file : a.ids_file);
}

void run_generate(const GenerateArgs& a) {
  GenerationOptions options = generation_options(a);
  apply_threads(a.threads);
  check_model_dir(a.model_dir);
  const std::optional<Tokenizer> tokenizer = find_tokenizer(a.model_dir, a.tokenizer);
  const Tokenizer* tok = tokenizer ? &*tokenizer : nullptr;
  if (!a.stop.empty() && !tok)
    fail("--stop needs a tokenizer (stop strings match the text): pass --tokenizer FILE");
  const std::vector<Prompt> prompts = read_prompts(a, tok);
  MambaModel model = open_model(a.model_dir, a.weights);
  const MambaConfig& config = model.config();
  for (size_t i = 0; i < prompts.size(); ++i) check_token_ids(prompts[i].ids, config.vocab_size, prompt_name(a, i));
  if (config.eos_token_id && !a.ignore_eos) options.eos_id = int32_t(*config.eos_token_id);

  std::vector<std::vector<int32_t>> ids;
  for (const Prompt& p : prompts) ids.push_back(p.ids);
  const bool text_mode = tok && !a.print_ids;
  const bool stream = text_mode && prompts.size() == 1;
  if (stream) write_stdout(prompts[0].text);
  TextCallback on_text;
  if (stream) on_text = [](size_t, std::string_view text) { write_stdout(text); };

  Generator generator(model, tok);
  const std::vector<Completion> completions = generator.generate(ids, options, on_text);

  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!text_mode) {
      std::vector<int32_t> all = prompts[i].ids;
      all.insert(all.end(), completions[i].ids.begin(), completions[i].ids.end());
      write_stdout(join_ids(all) + "\n");
    } else if (stream) {
      write_stdout("\n");
    } else {
      write_stdout(prompts[i].text + completions[i].text + "\n");
    }
  }
  std::fprintf(stderr, "%s\n", generator.stats().summary().c_str());
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Continue a prompt (or a batch of prompts) with a model");
  cmd->footer(
      "Output: one prompt streams its text to stdout as tokens arrive; several prompts (--prompt-file,\n"
      "--ids-file) decode as one batch and each completion (prompt + new text) is printed when all are\n"
      "done, in input order. Every completion ends with a newline. With --print-ids, or with ids input\n"
      "and no tokenizer, each line is instead the prompt ids then the new ids, comma-separated.\n"
      "Generation stops at the model's EOS token (config eos_token_id; not printed), after\n"
      "--max-new-tokens tokens, or when the new text contains a --stop string (cut off before it).\n"
      "Sampling follows Hugging Face transformers: repetition penalty, then temperature, top-k, top-p,\n"
      "min-p. Every sequence draws from its own generator seeded with --seed, so a prompt gives the\n"
      "same tokens alone or in a batch, and the same seed repeats a run; --temperature 0 is greedy.\n"
      "Timing (prefill and decode tokens/s) goes to stderr. Exit codes: 0 ok, 1 bad input, 2 usage.");
  add_model_flag(*cmd, a->model_dir);

  CLI::Option_group* input = cmd->add_option_group("input", "Exactly one of these gives the prompt(s)");
  a->prompt_opt = input->add_option("-p,--prompt", a->prompt, "Prompt text (needs a tokenizer)")->type_name("TEXT");
  a->ids_opt = input->add_option("--ids", a->ids, "Prompt as token ids, e.g. 1,2,3")->type_name("IDS");
  a->prompt_file_opt =
      input->add_option("--prompt-file", a->prompt_file, "File of prompts, one a line (decoded as one batch)")
          ->type_name("FILE");
  a->ids_file_opt = input
                        ->add_option("--ids-file", a->ids_file,
                                     "File of id sequences, one a line, ids separated by commas and/or spaces")
                        ->type_name("FILE");
  input->require_option(1);

  cmd->add_option("-n,--max-new-tokens", a->max_new_tokens, "Tokens to generate at most per prompt, >= 0")
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--temperature", a->temperature, "Sampling temperature, >= 0; 0 = greedy (argmax)")
      ->type_name("T")
      ->capture_default_str();
  cmd->add_option("--top-k", a->top_k, "Keep the K most likely tokens, >= 0; 0 = off")->type_name("K")->capture_default_str();
  cmd->add_option("--top-p", a->top_p, "Keep the smallest set of tokens with probability >= P, in (0, 1]; 1 = off")
      ->type_name("P")
      ->capture_default_str();
  cmd->add_option("--min-p", a->min_p, "Drop tokens less likely than P times the most likely one, in [0, 1); 0 = off")
      ->type_name("P")
      ->capture_default_str();
  cmd->add_option("--repeat-penalty", a->repeat_penalty,
                  "Penalty for tokens already in the sequence (HF repetition_penalty), > 0; 1 = off")
      ->type_name("R")
      ->capture_default_str();
  cmd->add_option("--stop", a->stop, "Stop when the new text contains this string (repeatable)")->type_name("S");
  cmd->add_option("--seed", a->seed, "Seed of the sampler, any integer in [0, 2^64-1]")->type_name("S")->capture_default_str();
  add_threads_flag(*cmd, a->threads);
  cmd->add_option("--tokenizer", a->tokenizer,
                  "tokenizer.json to use (default: the one in the --model folder; ids input needs none)")
      ->type_name("FILE");
  add_weights_flag(*cmd, a->weights);
  cmd->add_flag("--print-ids", a->print_ids, "Print prompt ids and new ids, comma-separated, one line per prompt");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Keep generating after the end-of-sequence token");
  cmd->callback([a] { run_generate(*a); });
}

}  // namespace mambacpp::cli
