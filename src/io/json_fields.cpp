#include "io/json_fields.h"

#include <cmath>
#include <fstream>
#include <set>
#include <vector>

namespace mambacpp {

using nlohmann::json;

namespace {
constexpr int kMaxDepth = 64;

// Tracks the keys of every open object so that a repeated key is refused (nlohmann would keep
// the last one silently, hiding a corrupt or tampered file).
class StrictParse {
 public:
  explicit StrictParse(const std::string& source) : source_(source) {}
  bool operator()(int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxDepth) fail(source_, ": JSON nested deeper than ", kMaxDepth, " levels");
    switch (event) {
      case json::parse_event_t::object_start:
        open_.emplace_back();
        break;
      case json::parse_event_t::object_end:
        open_.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open_.empty() && !open_.back().insert(key).second) fail(source_, ": duplicate JSON key \"", key, "\"");
        break;
      }
      default:
        break;
    }
    return true;
  }

 private:
  const std::string& source_;
  std::vector<std::set<std::string>> open_;
};
}  // namespace

json parse_json(std::string_view text, const std::string& source) {
  try {
    return json::parse(text.begin(), text.end(), StrictParse(source));
  } catch (const json::exception& e) {
    fail(source, ": invalid JSON: ", e.what());
  }
}

json read_json_file(const std::filesystem::path& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open");
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    text.append(buf, size_t(in.gcount()));
    if (text.size() > max_bytes) fail(path.string(), ": larger than ", max_bytes, " bytes; not a JSON file we read");
  }
  if (in.bad()) fail(path.string(), ": read error");
  return parse_json(text, path.string());
}

std::string json_excerpt(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 60;
  if (s.size() > kMax) s = s.substr(0, kMax) + "...";
  return s;
}

std::optional<int64_t> json_int64(const json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > uint64_t(INT64_MAX)) return std::nullopt;
    return int64_t(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

JsonObject::JsonObject(const json& j, std::string source, std::string path)
    : j_(&j), source_(std::move(source)), path_(std::move(path)) {
  if (!j.is_object())
    fail(source_, ": ", path_.empty() ? std::string("top level") : path_, ": expected a JSON object, found ",
         json_excerpt(j));
}

std::string JsonObject::key_path(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

const json* JsonObject::find(std::string_view key) const {
  auto it = j_->find(key);
  if (it == j_->end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<int64_t> JsonObject::integer(std::string_view key, int64_t min, int64_t max) const {
  const json* v = find(key);
  if (!v) return std::nullopt;
  const auto i = json_int64(*v);
  if (!i) fail_at(key, "expected an integer, found ", json_excerpt(*v));
  if (*i < min || *i > max) fail_at(key, "value ", *i, " is outside [", min, ", ", max, "]");
  return i;
}

std::optional<double> JsonObject::number(std::string_view key) const {
  const json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_number()) fail_at(key, "expected a number, found ", json_excerpt(*v));
  const double d = v->get<double>();
  if (!std::isfinite(d)) fail_at(key, "value is not finite");
  return d;
}

std::optional<bool> JsonObject::boolean(std::string_view key) const {
  const json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) fail_at(key, "expected true or false, found ", json_excerpt(*v));
  return v->get<bool>();
}

std::optional<std::string> JsonObject::string(std::string_view key) const {
  const json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) fail_at(key, "expected a string, found ", json_excerpt(*v));
  return v->get<std::string>();
}

JsonObject JsonObject::object(std::string_view key) const {
  static const json kEmpty = json::object();
  const json* v = find(key);
  return JsonObject(v ? *v : kEmpty, source_, key_path(key));
}

}  // namespace mambacpp
