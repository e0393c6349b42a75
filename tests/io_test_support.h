// Helpers shared by the io tests: a temporary folder, whole-file read/write, and an expectation
// that a call fails with a BadInput whose message names what it should.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"

namespace mambacpp::testing {

inline std::filesystem::path test_data(const std::string& rel) {
  return std::filesystem::path(MAMBACPP_TEST_DATA) / rel;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "mambacpp-io-XXXXXX").string();
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

}  // namespace mambacpp::testing
