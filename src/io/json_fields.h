// Strict JSON for the io layer: parsing that refuses duplicate keys and absurd nesting, and
// typed field access whose errors name the file and the key ("config.json: ssm_cfg.d_state: ...").
// nlohmann exceptions never leave these functions: everything becomes a BadInput.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"

namespace mambacpp {

// Parses `text`; a syntax error, a duplicate key or nesting deeper than 64 levels is a BadInput
// naming `source`.
nlohmann::json parse_json(std::string_view text, const std::string& source);
// Reads and parses a whole file (at most `max_bytes`).
nlohmann::json read_json_file(const std::filesystem::path& path, size_t max_bytes = size_t(64) << 20);

// The value shortened for a message: "\"abc\"", "[1, 2, ...]".
std::string json_excerpt(const nlohmann::json& v);
// An integer that fits int64_t, or nullopt (floats, booleans, huge unsigned values are not).
std::optional<int64_t> json_int64(const nlohmann::json& v);

// The fields of one JSON object, read with type and range checks. Absent and null keys read
// as nullopt. Errors: "<source>: <path>.<key>: expected ..., found ...".
class JsonObject {
 public:
  // Fails unless `j` is an object; `path` is its key path ("" for the top level).
  JsonObject(const nlohmann::json& j, std::string source, std::string path = "");

  const nlohmann::json* find(std::string_view key) const;  // null if absent or JSON null
  std::optional<int64_t> integer(std::string_view key, int64_t min, int64_t max) const;
  std::optional<double> number(std::string_view key) const;  // finite
  std::optional<bool> boolean(std::string_view key) const;
  std::optional<std::string> string(std::string_view key) const;
  // The nested object (an empty one when absent or null).
  JsonObject object(std::string_view key) const;
  const nlohmann::json& value() const { return *j_; }

  std::string key_path(std::string_view key) const;
  template <class... Args>
  [[noreturn]] void fail_at(std::string_view key, Args&&... args) const {
    fail(source_, ": ", key_path(key), ": ", std::forward<Args>(args)...);
  }

 private:
  const nlohmann::json* j_;
  std::string source_, path_;
};

}  // namespace mambacpp
