// The generated dataset fixtures of the data tests: tests/data/make_datasets.py
// run once per test process into a private temporary directory, removed at
// exit, and its manifest.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace fixtures {

namespace fs = std::filesystem;

inline fs::path source_dir() {
  const char* dir = std::getenv("ELASTIC_SOURCE_DIR");
  REQUIRE_MESSAGE(dir != nullptr, "ELASTIC_SOURCE_DIR must name the source tree (ctest sets it)");
  return dir;
}

struct Generated {
  fs::path dir;
  nlohmann::json manifest;

  Generated() {
    dir = fs::temp_directory_path() / fmt::format("elastic_datasets_{}", ::getpid());
    fs::remove_all(dir);
    const auto script = source_dir() / "tests" / "data" / "make_datasets.py";
    const std::string cmd = fmt::format("/usr/bin/python3 '{}' '{}'", script.string(), dir.string());
    const int rc = std::system(cmd.c_str());
    REQUIRE_MESSAGE(rc == 0, "fixture generator failed: " << cmd);
    std::ifstream in(dir / "manifest.json");
    manifest = nlohmann::json::parse(in);
  }
  ~Generated() { fs::remove_all(dir); }
};

// Generated on first use.
inline const Generated& datasets() {
  static const Generated g;
  return g;
}

// A fresh copy of one fixture dataset directory, to be broken by a test.
struct Copy {
  fs::path dir;
  Copy(const std::string& name, const std::string& tag) {
    dir = fs::temp_directory_path() / fmt::format("elastic_copy_{}_{}_{}", name, tag, ::getpid());
    fs::remove_all(dir);
    fs::copy(datasets().dir / name, dir, fs::copy_options::recursive);
  }
  ~Copy() { fs::remove_all(dir); }
};

inline std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_text(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

}  // namespace fixtures
