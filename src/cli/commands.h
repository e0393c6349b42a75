// Each command lives in its own file and adds itself to the app as a subcommand whose callback
// does the work. Callbacks throw mambacpp::Error on bad input; main.cpp turns that into the
// exit code (1 bad input, 2 usage) and one line on stderr.
#pragma once

#include <CLI/CLI.hpp>

namespace mambacpp::cli {

void register_info(CLI::App& app);        // cmd_info.cpp
void register_generate(CLI::App& app);    // cmd_generate.cpp
void register_logits(CLI::App& app);      // cmd_logits.cpp
void register_tokenize(CLI::App& app);    // cmd_tokenize.cpp (tokenize, detokenize)
void register_convert(CLI::App& app);     // cmd_convert.cpp
void register_bench(CLI::App& app);       // cmd_bench.cpp
void register_prepare(CLI::App& app);     // cmd_prepare.cpp
void register_train(CLI::App& app);       // cmd_train.cpp
void register_eval(CLI::App& app);        // cmd_eval.cpp
void register_grad(CLI::App& app);        // cmd_grad.cpp
void register_serve(CLI::App& app);       // cmd_serve.cpp

}  // namespace mambacpp::cli
