// Shared by the fuzz targets: a per-process scratch file for parsers that
// read paths, and the rule that only elastic::Error may escape a parser (any
// other exception, crash, leak or sanitizer report is a finding).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

#include "elastic/core/error.hpp"

namespace fuzz {

inline std::filesystem::path scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("elastic_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& path, const std::uint8_t* data, std::size_t size) {
  std::filesystem::create_directories(path.parent_path());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

// Runs `f`; an elastic::Error is the parser's correct answer to bad input.
template <class F>
int expect_ok_or_error(F&& f) {
  try {
    f();
  } catch (const elastic::Error&) {
  }
  return 0;
}

}  // namespace fuzz
