// Helpers every test program may use: fixture paths, a temporary folder, whole-file read/write,
// an expectation that a call fails with a BadInput naming what it should, and running the built
// `mambacpp` binary (MAMBACPP_CLI) with its output captured.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

extern char** environ;

namespace mambacpp::testing {

inline std::filesystem::path test_data(const std::string& rel) {
  return std::filesystem::path(MAMBACPP_TEST_DATA) / rel;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "mambacpp-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline std::vector<std::byte> read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  for (size_t i = 0; i < chars.size(); ++i) out[i] = std::byte(chars[i]);
  return out;
}

inline void write_bytes(const std::filesystem::path& p, const void* data, size_t size) {
  std::ofstream out(p, std::ios::binary);
  out.write(static_cast<const char*>(data), std::streamsize(size));
}
inline void write_bytes(const std::filesystem::path& p, const std::vector<std::byte>& b) {
  write_bytes(p, b.data(), b.size());
}
inline void write_text(const std::filesystem::path& p, const std::string& s) { write_bytes(p, s.data(), s.size()); }
inline std::string read_text(const std::filesystem::path& p) {
  const std::vector<std::byte> b = read_bytes(p);
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Runs `f`, which must throw a BadInput whose message contains every one of `parts`.
inline void expect_bad_input(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadInput) << e.what();
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message \"" << e.what() << "\" does not mention \"" << p << "\"";
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-mambacpp exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw; expected an error mentioning " << *parts.begin();
}

// Names in a folder, to check that nothing (e.g. a temporary file) was left behind.
inline std::vector<std::string> list_dir(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

struct CliRun {
  int code = -1;  // exit code, or 128 + signal
  std::string out, err;
  double seconds = 0;  // wall time
};

// Runs `args` (no shell; args[0] looked up in PATH), stdout and stderr captured through files in
// a folder of its own. With limit_s > 0, a program still running after limit_s seconds fails the
// test and is ended (SIGTERM, so that e.g. mpirun ends its ranks, then SIGKILL 2 s later).
inline CliRun run_program(const std::vector<std::string>& args, double limit_s = 0) {
  using Clock = std::chrono::steady_clock;
  static TempDir scratch;
  const std::filesystem::path out = scratch / "stdout", err = scratch / "stderr";
  std::vector<std::string> strings = args;
  std::vector<char*> argv;
  for (auto& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  CliRun run;
  const Clock::time_point start = Clock::now();
  const int spawn_error = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error != 0) {
    ADD_FAILURE() << "cannot run " << args[0];
    return run;
  }
  int status = 0;
  if (limit_s <= 0) {
    waitpid(pid, &status, 0);
  } else {
    bool over_time = false;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (!over_time && std::chrono::duration<double>(Clock::now() - start).count() > limit_s) {
        over_time = true;
        ADD_FAILURE() << args[0] << " " << (args.size() > 1 ? args[1] : "") << "... still ran after " << limit_s
                      << " s: ended";
        kill(pid, SIGTERM);
        std::this_thread::sleep_for(std::chrono::seconds(2));
        kill(pid, SIGKILL);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  run.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  run.out = read_text(out);
  run.err = read_text(err);
  return run;
}

// Runs the CLI (MAMBACPP_CLI) with `args`, as run_program.
inline CliRun run_cli(const std::vector<std::string>& args) {
  std::vector<std::string> all = {MAMBACPP_CLI};
  all.insert(all.end(), args.begin(), args.end());
  return run_program(all);
}

}  // namespace mambacpp::testing
