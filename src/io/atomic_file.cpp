#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "core/error.h"

namespace mambacpp {

namespace fs = std::filesystem;

namespace {
std::string random_suffix() {
  static thread_local std::mt19937_64 gen(std::random_device{}() ^ uint64_t(::getpid()));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(12, '0');
  for (char& c : s) c = kHex[gen() & 15];
  return s;
}

fs::path parent_of(const fs::path& p) {
  const fs::path parent = p.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}
}  // namespace

fs::path unique_sibling(const fs::path& target, std::string_view tag) {
  std::error_code ec;
  for (int attempt = 0; attempt < 100; ++attempt) {
    fs::path p = parent_of(target) / cat(".", target.filename().string(), ".", tag, "-", random_suffix());
    if (!fs::exists(fs::symlink_status(p, ec))) return p;
  }
  fail(target.string(), ": cannot find a free temporary name beside it");
}

void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the data itself is already synced
  ::fsync(fd);
  ::close(fd);
}

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    temp_ = unique_sibling(target_, "tmp");
    // O_EXCL: never reuse a name someone else just took; mode 0666 lets the umask decide.
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0 && errno != EEXIST)
      fail(target_.string(), ": cannot create a temporary file in ", parent_of(target_).string(), ": ",
           std::strerror(errno));
  }
  if (fd_ < 0) fail(target_.string(), ": cannot create a temporary file");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  MAMBACPP_CHECK(fd_ >= 0);
  auto p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(target_.string(), ": write failed: ", std::strerror(n < 0 ? errno : ENOSPC));
    p += n;
    size -= size_t(n);
  }
}

void AtomicFile::commit() {
  MAMBACPP_CHECK(fd_ >= 0);
  if (::fsync(fd_) != 0) fail(target_.string(), ": fsync failed: ", std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail(target_.string(), ": close failed: ", std::strerror(errno));
  if (::rename(temp_.c_str(), target_.c_str()) != 0)
    fail(target_.string(), ": cannot rename the temporary file into place: ", std::strerror(errno));
  committed_ = true;
  sync_directory(parent_of(target_));
}

void write_file_atomically(const fs::path& path, std::string_view text) {
  AtomicFile f(path);
  f.write(text);
  f.commit();
}

namespace {
fs::path normalized_folder(const fs::path& target) {
  fs::path dir = fs::absolute(target).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();
  if (dir == dir.root_path()) fail(target.string(), ": cannot replace the root folder");
  return dir;
}

// Moves the finished folder `staged` to `dir`, an old `dir` aside first (put back on failure).
void swap_into_place(const fs::path& staged, const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) {
    fs::rename(staged, dir, ec);
    if (ec) fail(dir.string(), ": cannot move the written folder into place: ", ec.message());
    return;
  }
  const fs::path old = unique_sibling(dir, "old");
  fs::rename(dir, old, ec);
  if (ec) fail(dir.string(), ": cannot move the existing folder aside: ", ec.message());
  fs::rename(staged, dir, ec);
  if (ec) {
    std::error_code restore;
    fs::rename(old, dir, restore);
    if (restore)
      fail(dir.string(), ": cannot move the written folder into place (", ec.message(),
           "), nor the old one back: it is at ", old.string());
    fail(dir.string(), ": cannot move the written folder into place: ", ec.message());
  }
  fs::remove_all(old, ec);  // the new folder is in place; a leftover is only untidy
}
}  // namespace

AtomicDir::AtomicDir(const fs::path& target) : target_(normalized_folder(target)) {
  temp_ = unique_sibling(target_, "tmp");
  std::error_code ec;
  if (!fs::create_directory(temp_, ec))
    fail(target_.string(), ": cannot create a temporary folder beside it (", temp_.string(), "): ", ec.message());
}

AtomicDir::~AtomicDir() {
  std::error_code ec;
  if (!committed_) fs::remove_all(temp_, ec);
}

void AtomicDir::commit() {
  sync_directory(temp_);
  swap_into_place(temp_, target_);
  committed_ = true;
  sync_directory(target_.parent_path());
}

}  // namespace mambacpp
