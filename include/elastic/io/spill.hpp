// Spill: floats written in order and read back in the same order, held in memory or in an
// unnamed temporary file. The file is unlinked as soon as it is created, so nothing is left
// behind on a crash; its pages live in the OS's page cache, not in the process's resident
// memory. The importance probe keeps the weights it moves here (ImportanceEvaluator).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <stdlib.h>
#include <unistd.h>

#include "elastic/core/error.hpp"

namespace elastic::io {

class Spill {
 public:
  Spill() = default;
  Spill(const Spill&) = delete;
  Spill& operator=(const Spill&) = delete;
  ~Spill() { close(); }

  // Starts empty: in memory (room for `floats` reserved) when `dir` is empty, else in a new
  // temporary file in `dir`.
  void open(const std::filesystem::path& dir, std::size_t floats) {
    close();
    dir_ = dir;
    if (dir.empty()) {
      memory_.reserve(floats);
      return;
    }
    std::string name = (dir / "elastic_spill_XXXXXX").string();
    fd_ = ::mkstemp(name.data());
    if (fd_ < 0) fail("cannot create a spill file in '{}': {}", dir.string(), std::strerror(errno));
    ::unlink(name.c_str());
  }
  bool in_file() const { return fd_ >= 0; }

  void write(const float* p, std::size_t n) {
    if (fd_ < 0) {
      memory_.insert(memory_.end(), p, p + n);
      return;
    }
    const auto* c = reinterpret_cast<const char*>(p);
    std::size_t left = n * sizeof(float);
    while (left > 0) {
      const ssize_t w = ::write(fd_, c, left);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail("cannot write the spill file in '{}': {}", dir_.string(), std::strerror(w < 0 ? errno : EIO));
      c += w;
      left -= static_cast<std::size_t>(w);
    }
  }

  // Reading starts again from the first float written.
  void rewind() {
    at_ = 0;
    if (fd_ >= 0 && ::lseek(fd_, 0, SEEK_SET) != 0)
      fail("cannot rewind the spill file in '{}': {}", dir_.string(), std::strerror(errno));
  }

  void read(float* p, std::size_t n) {
    if (fd_ < 0) {
      if (at_ + n > memory_.size()) fail("spill: reading past the {} floats written", memory_.size());
      std::memcpy(p, memory_.data() + at_, n * sizeof(float));
      at_ += n;
      return;
    }
    auto* c = reinterpret_cast<char*>(p);
    std::size_t left = n * sizeof(float);
    while (left > 0) {
      const ssize_t r = ::read(fd_, c, left);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0)
        fail("cannot read the spill file in '{}' back: {}", dir_.string(), r < 0 ? std::strerror(errno) : "too short");
      c += r;
      left -= static_cast<std::size_t>(r);
    }
  }

  // Gives the memory or the file back.
  void close() {
    std::vector<float>().swap(memory_);
    at_ = 0;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  std::filesystem::path dir_;
  std::vector<float> memory_;
  std::size_t at_ = 0;
  int fd_ = -1;
};

}  // namespace elastic::io
