// The one way this project writes a whole file a user keeps (checkpoints,
// weights, profiles, summaries): into `<path>.tmp`, fsync, rename over
// `<path>`, fsync of the directory. A crash at any moment leaves either the
// old file or the new one, never a torn one; a failed write (a full disk)
// removes the temporary and keeps the old file. Errors name the file.
// Append-only logs (metrics.jsonl) are not written this way: they are flushed
// line by line and fsynced at each checkpoint, which records their length.
#pragma once

#include <cerrno>
#include <concepts>
#include <cstring>
#include <filesystem>
#include <string_view>

#include <fcntl.h>
#include <unistd.h>

#include "elastic/core/error.hpp"

namespace elastic::io {

// Content written through a callback, as opposed to text already in memory.
template <class F>
concept ContentWriter = !std::convertible_to<F, std::string_view>;

// `fill(put)` writes the content through put(data, bytes).
template <ContentWriter Fill>
void write_durably(const std::filesystem::path& path, Fill&& fill) {
  const auto tmp = std::filesystem::path(path.string() + ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '{}': {}", tmp.string(), std::strerror(errno));
  const auto give_up = [&](int err) {
    ::close(fd);
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    fail("cannot write '{}': {}", tmp.string(), std::strerror(err));
  };
  const auto put = [&](const void* p, std::size_t n) {
    const auto* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) give_up(w < 0 ? errno : EIO);
      c += w;
      n -= static_cast<std::size_t>(w);
    }
  };
  fill(put);
  if (::fsync(fd) != 0) give_up(errno);
  if (::close(fd) != 0) {
    const int err = errno;
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    fail("cannot write '{}': {}", tmp.string(), std::strerror(err));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("cannot rename '{}' to '{}': {}", tmp.string(), path.string(), ec.message());
  // The rename itself is durable only once the directory is synced.
  const auto dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

inline void write_durably(const std::filesystem::path& path, std::string_view text) {
  write_durably(path, [&](const auto& put) { put(text.data(), text.size()); });
}

}  // namespace elastic::io
