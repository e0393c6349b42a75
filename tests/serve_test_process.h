// Child processes for the serve tests that need a live server or a browser driver: spawn a
// program with its output in a log file, pick a free loopback port, wait until an HTTP endpoint
// answers, and stop the child (SIGTERM, then SIGKILL) when the test ends.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

extern char** environ;

namespace mambacpp::testing {

// A loopback port nobody listens on right now (the kernel's pick for port 0).
inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof address;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot find a free loopback port");
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

// The first executable named `name` on PATH, or empty.
inline std::filesystem::path find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::filesystem::path candidate = std::filesystem::path(dirs.substr(start, end - start)) / name;
    if (!candidate.parent_path().empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return {};
}

// Polls `ready` every 50 ms until it returns true or `timeout` passes.
inline bool wait_until(const std::function<bool()>& ready, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return ready();
}

class ChildProcess {
 public:
  // Starts `argv` (argv[0] is the program path); stdout and stderr go to `log`.
  ChildProcess(std::vector<std::string> argv, std::filesystem::path log) : log_(std::move(log)) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int error = posix_spawn(&pid_, argv[0].c_str(), &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(error));
  }
  ~ChildProcess() { stop(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) pid_ = -1;
    return pid_ > 0;
  }
  std::string log() const { return read_text(log_); }

  // SIGTERM, then SIGKILL if it has not exited within 5 s.
  void stop() {
    if (!running()) return;
    ::kill(pid_, SIGTERM);
    if (!wait_until([&] { return !running(); }, std::chrono::seconds(5))) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

 private:
  std::filesystem::path log_;
  pid_t pid_ = -1;
};

// True once GET `path` on 127.0.0.1:`port` answers 200 (false after `timeout` or if `child` exits).
inline bool wait_for_http(ChildProcess& child, int port, const std::string& path, std::chrono::milliseconds timeout) {
  return wait_until(
      [&] {
        if (!child.running()) return true;  // stop waiting; the caller checks running()
        httplib::Client client("127.0.0.1", port);
        client.set_connection_timeout(std::chrono::milliseconds(200));
        const auto res = client.Get(path.c_str());
        return res && res->status == 200;
      },
      timeout) &&
         child.running();
}

// A folder holding the tiny fixture model with the fixture tokenizer beside it. The tokenizer has
// 2000 tokens and the model 512: prompts must encode to ids < 512 ("Hello, is the", "he is not a
// man", "is it on the", "as it is" do).
inline std::filesystem::path tiny_model_with_tokenizer(const TempDir& dir) {
  const std::filesystem::path model = dir / "tiny-with-tokenizer";
  std::filesystem::create_directories(model);
  for (const char* f : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(test_data("hf-tiny-mamba") / f, model / f);
  std::filesystem::copy_file(test_data("tokenizer/tokenizer.json"), model / "tokenizer.json");
  return model;
}

// `mambacpp serve` on a free port, ready (GET /health answers 200) when the constructor returns.
// Its output goes to `work`/serve.log and its saved states to `work`/states.
class ServeProcess {
 public:
  ServeProcess(const std::filesystem::path& model, const std::filesystem::path& work, std::vector<std::string> extra = {})
      : port_(free_loopback_port()), child_(arguments(model, work, port_, std::move(extra)), work / "serve.log") {
    if (!wait_for_http(child_, port_, "/health", std::chrono::seconds(30)))
      throw std::runtime_error("mambacpp serve did not become healthy on port " + std::to_string(port_) +
                               "; its output:\n" + child_.log());
  }
  int port() const { return port_; }
  pid_t pid() const { return child_.pid(); }
  std::string log() const { return child_.log(); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  static std::vector<std::string> arguments(const std::filesystem::path& model, const std::filesystem::path& work, int port,
                                            std::vector<std::string> extra) {
    std::vector<std::string> argv = {MAMBACPP_CLI, "serve",       "--model", model.string(), "--port", std::to_string(port),
                                     "--state-dir", (work / "states").string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }
  int port_;
  ChildProcess child_;
};

}  // namespace mambacpp::testing
