#include "elastic/io/durable.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include <doctest/doctest.h>

#include "elastic/method/profile.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace io_durable_test {

using namespace elastic;
namespace fs = std::filesystem;

namespace {
std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}
fs::path temp(const char* name) {
  return fs::temp_directory_path() / fmt::format("elastic_durable_{}_{}", name, ::getpid());
}
}  // namespace

TEST_CASE("a durable write replaces the file whole and leaves no temporary") {
  const fs::path p = temp("plain");
  io::write_durably(p, "first\n");
  io::write_durably(p, [](const auto& put) {
    put("sec", 3);
    put("ond\n", 4);
  });
  CHECK(read(p) == "second\n");
  CHECK_FALSE(fs::exists(p.string() + ".tmp"));
  fs::remove(p);
}

TEST_CASE("a full disk fails naming the temporary, keeps the old file and removes the temporary") {
  const fs::path p = temp("full"), tmp = p.string() + ".tmp";
  io::write_durably(p, "old contents\n");
  fs::create_symlink("/dev/full", tmp);  // every write to the temporary fails with ENOSPC
  std::string message;
  try {
    io::write_durably(p, std::string(1 << 16, 'x'));
  } catch (const Error& e) {
    message = e.what();
  }
  CHECK(message.find(tmp.string()) != std::string::npos);
  CHECK(message.find("No space left on device") != std::string::npos);
  CHECK(read(p) == "old contents\n");
  CHECK_FALSE(fs::is_symlink(tmp));
  CHECK_FALSE(fs::exists(tmp));
  fs::remove(p);
}

TEST_CASE("profiles are written the same way") {
  const fs::path p = temp("profile"), tmp = p.string() + ".tmp";
  Profile prof;
  prof.key.model = "m";
  prof.units = {"a"};
  prof.t_fw = prof.t_dw = prof.t_dy = prof.t_dw_spread = prof.t_dy_spread = {1.0};
  prof.save(p);
  const std::string before = read(p);
  fs::create_symlink("/dev/full", tmp);
  CHECK_THROWS_WITH_AS(prof.save(p), doctest::Contains("No space left on device"), Error);
  CHECK(read(p) == before);
  CHECK_FALSE(fs::is_symlink(tmp));  // the failed temporary is gone
  fs::remove(p);
}

}  // namespace io_durable_test
