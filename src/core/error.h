// Errors are data: every failure the user can cause (a bad file, value or flag) is an Error
// whose message names the file, tensor, field or value at fault. The CLI maps the kind to an
// exit code (BadInput -> 1, Usage -> 2). Asserts (MAMBACPP_CHECK) guard our own invariants.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mambacpp {

enum class ErrorKind {
  BadInput,  // a value out of range, a missing or malformed file, an id outside the vocabulary
  Usage,     // an unknown flag or one that does not parse
  Internal,  // a broken invariant of our own
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Concatenates anything streamable: cat("tensor ", name, " has shape ", shape_str(s)).
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

template <class... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(ErrorKind::BadInput, cat(std::forward<Args>(args)...));
}

template <class... Args>
[[noreturn]] void fail_usage(Args&&... args) {
  throw Error(ErrorKind::Usage, cat(std::forward<Args>(args)...));
}

[[noreturn]] void internal_error(const char* file, int line, const char* what);

}  // namespace mambacpp

#define MAMBACPP_CHECK(cond)                                          \
  do {                                                                \
    if (!(cond)) ::mambacpp::internal_error(__FILE__, __LINE__, #cond); \
  } while (0)
