#include "elastic/io/safetensors.hpp"

#include <fstream>

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace io_safetensors_test {

using namespace elastic;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path path;
  explicit TempDir(const char* name)
      : path(fs::temp_directory_path() / fmt::format("elastic_st_{}_{}", name, ::getpid())) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// A file from a raw header string and data bytes, as any writer might produce it.
void write_file(const fs::path& p, const std::string& header, const std::vector<std::uint8_t>& data) {
  std::ofstream f(p, std::ios::binary);
  const std::uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(header.data(), std::streamsize(header.size()));
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
}

template <class T>
std::vector<std::uint8_t> bytes_of(std::initializer_list<T> values) {
  std::vector<std::uint8_t> out;
  for (T v : values) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
  }
  return out;
}
}  // namespace

TEST_CASE("safetensors round-trips f32 and i64 tensors with metadata") {
  TempDir t("rt");
  io::SafetensorsWriter w;
  const std::vector<float> a{1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, 7.0f};
  const std::vector<std::int64_t> labels{3, 0, 9};
  w.add_f32("layer.weight", {2, 3}, a);
  w.add_i64("labels", {3}, labels);
  w.add_f32("scalar", {}, std::vector<float>{42.0f});
  w.set_metadata("format", "pt");
  w.write(t.path / "x.safetensors");
  CHECK_FALSE(fs::exists(t.path / "x.safetensors.tmp"));

  io::SafetensorsFile f(t.path / "x.safetensors");
  REQUIRE(f.tensors().size() == 3);
  CHECK(f.metadata().at("format") == "pt");
  const Tensor back = f.read_f32("layer.weight");
  CHECK(back.shape() == Shape{2, 3});
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(back[std::int64_t(i)] == a[i]);
  CHECK(f.read_i64("labels") == labels);
  CHECK(f.read_f32("scalar").shape().empty());
  CHECK(f.read_f32("scalar")[0] == 42.0f);
  CHECK(f.find("missing") == nullptr);
  CHECK_THROWS_WITH_AS(f.read_f32("missing"), doctest::Contains("no tensor named 'missing'"), Error);
  CHECK_THROWS_WITH_AS(f.read_f32("labels"), doctest::Contains("'labels' has dtype I64"), Error);
  CHECK_THROWS_WITH_AS(f.read_i64("layer.weight"), doctest::Contains("integer"), Error);
}

TEST_CASE("F16, BF16, F64 and I32 convert exactly where the values are representable") {
  TempDir t("conv");
  // half: 1.0 = 0x3c00, -2.5 = 0xc100, 65504 = 0x7bff, smallest subnormal 2^-24 = 0x0001
  // bf16: 1.0 = 0x3f80, -3.0 = 0xc040
  auto data = bytes_of<std::uint16_t>({0x3c00, 0xc100, 0x7bff, 0x0001});
  const auto bf = bytes_of<std::uint16_t>({0x3f80, 0xc040});
  const auto f64 = bytes_of<double>({0.25, -1e10});
  const auto i32 = bytes_of<std::int32_t>({-7, 2147483647});
  data.insert(data.end(), bf.begin(), bf.end());
  data.insert(data.end(), f64.begin(), f64.end());
  data.insert(data.end(), i32.begin(), i32.end());
  write_file(t.path / "m.safetensors",
             R"({"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
             R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},)"
             R"("d":{"dtype":"F64","shape":[2],"data_offsets":[12,28]},)"
             R"("i":{"dtype":"I32","shape":[2],"data_offsets":[28,36]}})",
             data);
  io::SafetensorsFile f(t.path / "m.safetensors");
  const Tensor h = f.read_f32("h");
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -2.5f);
  CHECK(h[2] == 65504.0f);
  CHECK(h[3] == std::ldexp(1.0f, -24));
  const Tensor b = f.read_f32("b");
  CHECK(b[0] == 1.0f);
  CHECK(b[1] == -3.0f);
  const Tensor d = f.read_f32("d");
  CHECK(d[0] == 0.25f);
  CHECK(d[1] == -1e10f);
  CHECK(f.read_i64("i") == std::vector<std::int64_t>{-7, 2147483647});
}

TEST_CASE("malformed safetensors files are refused with the file and tensor named") {
  TempDir t("bad");
  const auto four = bytes_of<float>({1, 2, 3, 4});
  struct Bad {
    const char* label;
    std::string header;
    std::vector<std::uint8_t> data;
    const char* message;
  };
  const Bad cases[] = {
      {"offsets past the end", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", four,
       "'w' has data_offsets"},
      {"shape disagrees with span", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", four, "needs 12"},
      {"unknown dtype", R"({"w":{"dtype":"F8","shape":[4],"data_offsets":[0,16]}})", four, "unknown dtype 'F8'"},
      {"negative dim", R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", four, "not a non-negative"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       four, "overlap or hole"},
      {"trailing bytes", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four, "cover 8 bytes"},
      {"not json", R"({"w": oops)", four, "not valid JSON"},
      {"no offsets", R"({"w":{"dtype":"F32","shape":[4]}})", four, "no data_offsets"},
      {"huge shape", R"({"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,16]}})", four,
       "too large"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.label);
    write_file(t.path / "bad.safetensors", c.header, c.data);
    CHECK_THROWS_WITH_AS(io::SafetensorsFile(t.path / "bad.safetensors"), doctest::Contains(c.message), Error);
    CHECK_THROWS_WITH_AS(io::SafetensorsFile(t.path / "bad.safetensors"), doctest::Contains("bad.safetensors"), Error);
  }
  // Header length larger than the file: truncated download.
  {
    std::ofstream f(t.path / "trunc.safetensors", std::ios::binary);
    const std::uint64_t n = 1000;
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << "{}";
  }
  CHECK_THROWS_WITH_AS(io::SafetensorsFile(t.path / "trunc.safetensors"), doctest::Contains("truncated"), Error);
  std::ofstream(t.path / "tiny.safetensors") << "abc";
  CHECK_THROWS_WITH_AS(io::SafetensorsFile(t.path / "tiny.safetensors"), doctest::Contains("not a safetensors"), Error);
  CHECK_THROWS_WITH_AS(io::SafetensorsFile(t.path / "absent.safetensors"), doctest::Contains("absent.safetensors"),
                       Error);
}

TEST_CASE("a failed write keeps the previous file intact") {
  TempDir t("atomic");
  io::SafetensorsWriter first;
  first.add_f32("w", {2}, std::vector<float>{1, 2});
  first.write(t.path / "ckpt.safetensors");
  io::SafetensorsWriter second;
  second.add_f32("w", {2}, std::vector<float>{3, 4});
  // A directory in place of the temporary file makes the write fail before the rename.
  fs::create_directories(t.path / "ckpt.safetensors.tmp");
  CHECK_THROWS_WITH_AS(second.write(t.path / "ckpt.safetensors"), doctest::Contains("ckpt.safetensors.tmp"), Error);
  io::SafetensorsFile f(t.path / "ckpt.safetensors");
  CHECK(f.read_f32("w")[0] == 1.0f);
  CHECK_THROWS_AS(second.add_f32("w", {2}, std::vector<float>{0, 0}), Error);
  CHECK_THROWS_AS(second.add_f32("v", {3}, std::vector<float>{0, 0}), Error);
}

}  // namespace io_safetensors_test
