#include "elastic/data/idx.hpp"

#include <fstream>

#include <zlib.h>

#include <doctest/doctest.h>

// One namespace per test file: the tests of a directory build as one translation unit.
namespace data_idx_test {

using namespace elastic;
namespace fs = std::filesystem;

namespace {
std::vector<std::uint8_t> idx_bytes(std::vector<std::uint32_t> dims, const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> b{0, 0, 0x08, static_cast<std::uint8_t>(dims.size())};
  for (auto d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(d >> s));
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

void write_raw(const fs::path& p, const std::vector<std::uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

void write_gz(const fs::path& p, const std::vector<std::uint8_t>& b) {
  gzFile f = gzopen(p.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, b.data(), static_cast<unsigned>(b.size())) == int(b.size()));
  gzclose(f);
}

struct TempDir {
  fs::path path;
  explicit TempDir(const char* name)
      : path(fs::temp_directory_path() / fmt::format("elastic_idx_{}_{}", name, ::getpid())) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// A tiny Fashion-MNIST-shaped set: n images of 3x2 pixels whose first pixel is the index.
void write_set(const fs::path& dir, const std::string& prefix, int n, bool gz) {
  std::vector<std::uint8_t> pixels, labels;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < 6; ++j) pixels.push_back(static_cast<std::uint8_t>(j == 0 ? i : 7 * j));
    labels.push_back(static_cast<std::uint8_t>(i % 10));
  }
  auto put = gz ? write_gz : write_raw;
  const std::string ext = gz ? ".gz" : "";
  put(dir / (prefix + "-images-idx3-ubyte" + ext), idx_bytes({std::uint32_t(n), 3, 2}, pixels));
  put(dir / (prefix + "-labels-idx1-ubyte" + ext), idx_bytes({std::uint32_t(n)}, labels));
}
}  // namespace

TEST_CASE("idx files read the same raw and gzip-compressed") {
  TempDir t("rawgz");
  const std::vector<std::uint8_t> data{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  write_raw(t.path / "a", idx_bytes({2, 3, 2}, data));
  write_gz(t.path / "a.gz", idx_bytes({2, 3, 2}, data));
  for (const char* name : {"a", "a.gz"}) {
    CAPTURE(name);
    const auto a = data::read_idx(t.path / name);
    CHECK(a.dims == std::vector<std::int64_t>{2, 3, 2});
    CHECK(a.data == data);
  }
}

TEST_CASE("idx files whose data does not match the header are errors naming the file") {
  TempDir t("bad");
  write_raw(t.path / "short", idx_bytes({2, 3, 2}, {1, 2, 3}));
  write_raw(t.path / "long", idx_bytes({1, 2}, {1, 2, 3}));
  write_raw(t.path / "float", {0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0});
  write_raw(t.path / "header", {0, 0, 8, 3, 0, 0});
  write_raw(t.path / "text", {'h', 'e', 'l', 'l', 'o'});
  std::ofstream(t.path / "broken.gz", std::ios::binary) << "\x1f\x8b garbage that is not deflate";
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "short"), doctest::Contains("short"), Error);
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "short"), doctest::Contains("declares 12 bytes"), Error);
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "long"), doctest::Contains("holds 3"), Error);
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "float"), doctest::Contains("unsigned byte"), Error);
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "header"), doctest::Contains("truncated"), Error);
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "text"), doctest::Contains("not an IDX file"), Error);
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "broken.gz"), doctest::Contains("broken.gz"), Error);
  CHECK_THROWS_WITH_AS(data::read_idx(t.path / "missing"), doctest::Contains("missing"), Error);
}

TEST_CASE("images and labels must agree in count") {
  TempDir t("count");
  write_raw(t.path / "x", idx_bytes({3, 1, 1}, {1, 2, 3}));
  write_raw(t.path / "y", idx_bytes({2}, {0, 1}));
  CHECK_THROWS_WITH_AS(data::read_idx_images(t.path / "x", t.path / "y"), doctest::Contains("2 labels"), Error);
}

TEST_CASE("fashion-mnist layout loads with a class subset relabelled in the order given") {
  TempDir t("fm");
  write_set(t.path, "train", 30, true);
  write_set(t.path, "t10k", 20, false);
  const auto all = data::load_fashion_mnist(t.path);
  CHECK(all.train.size() == 30);
  CHECK(all.test.size() == 20);
  CHECK(all.train.height == 3);
  CHECK(all.train.width == 2);
  CHECK(all.class_names.size() == 10);
  CHECK(all.train.pixels[6 * 13] == 13);

  const auto sub = data::load_fashion_mnist(t.path, {7, 5});
  REQUIRE(sub.train.size() == 6);  // indices 5, 7, 15, 17, 25, 27
  CHECK(sub.train.labels == std::vector<std::int32_t>{1, 0, 1, 0, 1, 0});
  CHECK(sub.train.pixels[0] == 5);
  CHECK(sub.train.pixels[6] == 7);
  CHECK(sub.train.pixels[6 * 5] == 27);
  CHECK(sub.class_names == std::vector<std::string>{"Sneaker", "Sandal"});
  CHECK(sub.test.size() == 4);

  CHECK_THROWS_WITH_AS(data::load_fashion_mnist(t.path, {10}), doctest::Contains("class 10"), Error);
  fs::remove(t.path / "t10k-labels-idx1-ubyte");
  CHECK_THROWS_WITH_AS(data::load_fashion_mnist(t.path), doctest::Contains("t10k-labels-idx1-ubyte"), Error);
}

TEST_CASE("the installed Fashion-MNIST has 60000 + 10000 28x28 images with balanced labels") {
  if (!fs::exists(data::kFashionMnistDir)) {
    MESSAGE("dataset-fashion-mnist is not installed; skipped");
    return;
  }
  const auto d = data::load_fashion_mnist();
  CHECK(d.train.size() == 60000);
  CHECK(d.test.size() == 10000);
  CHECK(d.train.height == 28);
  CHECK(d.train.width == 28);
  std::vector<int> counts(10);
  for (auto l : d.test.labels) ++counts[static_cast<std::size_t>(l)];
  for (int c : counts) CHECK(c == 1000);
}

}  // namespace data_idx_test
