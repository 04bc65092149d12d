// Decoding against Pillow's decoding of the same files (the generator's
// expected/*.rgb), and every way a file can fail to be an image.
#include "elastic/data/image.hpp"

#include <zlib.h>

#include <doctest/doctest.h>

#include "support/dataset_fixtures.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace data_image_test {

using namespace elastic;
using namespace elastic::data;

namespace {

std::vector<std::uint8_t> bytes_of(const std::filesystem::path& p) { return read_file_bytes(p); }

int max_abs_diff(const Image& img, const std::vector<std::uint8_t>& ref) {
  REQUIRE(img.rgb.size() == ref.size());
  int worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(int(img.rgb[i]) - int(ref[i])));
  return worst;
}

std::string decode_error(const std::vector<std::uint8_t>& b, const std::string& name) {
  try {
    decode_image(b.data(), b.size(), name);
  } catch (const DecodeError& e) {
    return e.what();
  }
  return "";
}

// A JPEG's first SOF segment: the offset of its height field.
std::size_t sof_dims_offset(const std::vector<std::uint8_t>& b) {
  for (std::size_t i = 2; i + 9 < b.size();) {
    REQUIRE(b[i] == 0xFF);
    const int marker = b[i + 1];
    const std::size_t len = (std::size_t(b[i + 2]) << 8) | b[i + 3];
    if (marker == 0xC0 || marker == 0xC1 || marker == 0xC2) return i + 5;
    i += 2 + len;
  }
  FAIL("no SOF marker");
  return 0;
}

void put_be16(std::vector<std::uint8_t>& b, std::size_t at, unsigned v) {
  b[at] = std::uint8_t(v >> 8);
  b[at + 1] = std::uint8_t(v);
}

// Sets a PNG's IHDR width and height and fixes the chunk's CRC.
void set_png_size(std::vector<std::uint8_t>& b, std::uint32_t w, std::uint32_t h) {
  REQUIRE(std::string(b.begin() + 12, b.begin() + 16) == "IHDR");
  for (int k = 0; k < 4; ++k) {
    b[16 + k] = std::uint8_t(w >> (24 - 8 * k));
    b[20 + k] = std::uint8_t(h >> (24 - 8 * k));
  }
  const auto crc = crc32(crc32(0, nullptr, 0), b.data() + 12, 17);
  for (int k = 0; k < 4; ++k) b[29 + k] = std::uint8_t(crc >> (24 - 8 * k));
}

}  // namespace

TEST_CASE("every special file decodes to what Pillow decodes") {
  const auto& fx = fixtures::datasets();
  std::map<std::string, int> kinds;
  for (const auto& e : fx.manifest["expected"]) {
    const auto path = fx.dir / e["file"].get<std::string>();
    const std::string kind = e["kind"];
    CAPTURE(path);
    const Image img = read_image(path);
    CHECK(img.width == e["width"].get<std::int64_t>());
    CHECK(img.height == e["height"].get<std::int64_t>());
    const auto ref = bytes_of(fx.dir / e["raw"].get<std::string>());
    // Same libjpeg-turbo underneath: identical, but for CMYK's rounding of the product.
    CHECK(max_abs_diff(img, ref) <= (kind == "cmyk" ? 1 : 0));
    ++kinds[kind];
  }
  for (const char* k : {"progressive", "gray", "cmyk", "png_as_jpg"}) CHECK(kinds[k] >= 4);
}

TEST_CASE("grayscale files give three equal channels; the format comes from the bytes, not the name") {
  const auto& fx = fixtures::datasets();
  for (const auto& e : fx.manifest["expected"]) {
    const auto path = fx.dir / e["file"].get<std::string>();
    const auto b = bytes_of(path);
    if (e["kind"] == "gray") {
      const Image img = read_image(path);
      for (std::int64_t i = 0; i < img.height * img.width; ++i) {
        REQUIRE(img.rgb[3 * i] == img.rgb[3 * i + 1]);
        REQUIRE(img.rgb[3 * i] == img.rgb[3 * i + 2]);
      }
    }
    if (e["kind"] == "png_as_jpg") {
      CHECK(path.extension() != ".png");
      CHECK(sniff_format(b.data(), b.size()) == ImageFormat::png);
    }
  }
}

TEST_CASE("a truncated JPEG is an error naming the file, never a gray-filled image") {
  const auto& fx = fixtures::datasets();
  const auto corrupt = fx.dir / fx.manifest["caltech_birds2011"]["corrupt"][0].get<std::string>();
  const auto b = bytes_of(corrupt);
  const std::string msg = decode_error(b, corrupt.string());
  CHECK(msg.find(corrupt.string()) != std::string::npos);
  CHECK(msg.find("corrupt or truncated JPEG") != std::string::npos);
}

TEST_CASE("files that are not images, empty or cut anywhere give a DecodeError") {
  const auto& fx = fixtures::datasets();
  CHECK(decode_error({}, "empty.jpg").find("'empty.jpg' is empty") != std::string::npos);
  const std::vector<std::uint8_t> text{'h', 'e', 'l', 'l', 'o'};
  CHECK(decode_error(text, "notes.jpg").find("neither JPEG nor PNG (first bytes 68 65 6c 6c)") != std::string::npos);
  // Every prefix of a JPEG and of a PNG fails cleanly (or, for the full file, decodes).
  std::filesystem::path jpeg, png;
  for (const auto& e : fx.manifest["expected"]) {
    if (e["kind"] == "progressive") jpeg = fx.dir / e["file"].get<std::string>();
    if (e["kind"] == "png_as_jpg") png = fx.dir / e["file"].get<std::string>();
  }
  for (const auto& path : {jpeg, png}) {
    const auto b = bytes_of(path);
    for (std::size_t n = 0; n < b.size(); n += std::max<std::size_t>(1, b.size() / 97)) {
      const std::vector<std::uint8_t> cut(b.begin(), b.begin() + std::ptrdiff_t(n));
      CAPTURE(n);
      CHECK_FALSE(decode_error(cut, "cut").empty());
    }
    CHECK(decode_error(b, "whole").empty());
  }
  // Flipped bytes in a PNG's data fail its CRC or zlib check.
  auto b = bytes_of(png);
  b[b.size() / 2] ^= 0xFF;
  CHECK(decode_error(b, "flipped.png").find("'flipped.png'") != std::string::npos);
}

TEST_CASE("image sizes are checked from the header before any pixel buffer is allocated") {
  const auto& fx = fixtures::datasets();
  std::filesystem::path jpeg, png;
  for (const auto& e : fx.manifest["expected"]) {
    if (e["kind"] == "progressive") jpeg = fx.dir / e["file"].get<std::string>();
    if (e["kind"] == "png_as_jpg") png = fx.dir / e["file"].get<std::string>();
  }
  auto j = bytes_of(jpeg);
  const auto at = sof_dims_offset(j);
  put_be16(j, at, 20000);
  put_be16(j, at + 2, 20000);
  CHECK(decode_error(j, "huge.jpg").find("'huge.jpg': image of 20000x20000 pixels is larger than the limit") !=
        std::string::npos);
  put_be16(j, at, 1);
  put_be16(j, at + 2, 1);
  CHECK(decode_error(j, "dot.jpg").find("'dot.jpg': image of 1x1 pixels is too small") != std::string::npos);

  auto p = bytes_of(png);
  set_png_size(p, 20000, 20000);
  CHECK(decode_error(p, "huge.png").find("'huge.png': image of 20000x20000 pixels is larger than the limit") !=
        std::string::npos);
  set_png_size(p, 1, 1);
  CHECK(decode_error(p, "dot.png").find("'dot.png': image of 1x1 pixels is too small") != std::string::npos);
}

TEST_CASE("a missing file names the path") {
  try {
    read_image("/nonexistent/dir/x.jpg");
    FAIL("expected an error");
  } catch (const DecodeError& e) {
    CHECK(std::string(e.what()).find("cannot open '/nonexistent/dir/x.jpg'") != std::string::npos);
  }
}

}  // namespace data_image_test
