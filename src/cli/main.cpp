// mambacpp: the command line. Exit codes: 0 success, 1 bad input (one line on stderr naming
// what is wrong), 2 usage (unknown flag, a value that does not parse).
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"mambacpp: Mamba (selective state-space) language models in C++: load, run, generate", "mambacpp"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mambacpp 0.1.0");
  mambacpp::cli::register_info(app);
  mambacpp::cli::register_generate(app);
  mambacpp::cli::register_logits(app);
  mambacpp::cli::register_tokenize(app);
  mambacpp::cli::register_convert(app);
  mambacpp::cli::register_bench(app);
  mambacpp::cli::register_prepare(app);
  mambacpp::cli::register_train(app);
  mambacpp::cli::register_eval(app);
  mambacpp::cli::register_grad(app);
  mambacpp::cli::register_serve(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  } catch (const mambacpp::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.kind() == mambacpp::ErrorKind::Usage ? 2 : 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
