// Files that appear whole or not at all: data goes to a temporary sibling (same folder, so the
// final rename stays on one file system), is fsynced, then renamed over the target. If anything
// fails, or commit() is never reached, the temporary is removed and the target is untouched.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace mambacpp {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();  // removes the temporary unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // fsync, close, rename onto the target, fsync the folder.
  void commit();

 private:
  std::filesystem::path target_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes `text` to `path` atomically.
void write_file_atomically(const std::filesystem::path& path, std::string_view text);

// A folder that appears whole or not at all: files go into path(), a fresh temporary sibling of
// the target, and commit() moves it into place. An existing target is moved aside first and
// removed only once the new folder is in place; if the swap fails, the old one is put back.
// Without commit() the temporary folder is removed. Whether an existing target may be replaced
// is the caller's decision (check target() before writing).
class AtomicDir {
 public:
  // "out/", "out/." and "out" are the same target; the root folder is refused (BadInput).
  explicit AtomicDir(const std::filesystem::path& target);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::filesystem::path& path() const { return temp_; }
  const std::filesystem::path& target() const { return target_; }  // absolute, normalized
  // fsync the folder, swap it into place, fsync the parent.
  void commit();

 private:
  std::filesystem::path target_, temp_;
  bool committed_ = false;
};

// A fresh, empty, uniquely named entry beside `target` ("<parent>/.<name>.<tag>-<random>"); the
// path is free at the time of the call (used for temporary folders).
std::filesystem::path unique_sibling(const std::filesystem::path& target, std::string_view tag);

// fsync of a folder, so a rename inside it is durable.
void sync_directory(const std::filesystem::path& dir);

}  // namespace mambacpp
