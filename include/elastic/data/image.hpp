// Image decoding: JPEG through libjpeg (libjpeg-turbo on Debian) and PNG
// through libpng, always to 8-bit interleaved RGB. The format is taken from
// the bytes, never from the file name (datasets hold PNGs named .jpg).
// Grayscale is replicated to three channels, CMYK/YCCK is converted as
// (255 - C)(255 - K) / 255 per channel (Adobe files store CMYK inverted),
// PNG alpha is dropped. Every dimension is checked before any pixel buffer is
// allocated, and a decoder warning (a truncated or corrupt stream, which
// libjpeg would otherwise fill with gray) is an error: a file either decodes
// to the image it holds or throws an error naming it.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <png.h>
#include <setjmp.h>

#include <fmt/ranges.h>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>

#include "elastic/core/error.hpp"

namespace elastic::data {

// An 8-bit RGB image, rows top to bottom, pixels interleaved (H, W, 3).
struct Image {
  std::int64_t height = 0, width = 0;
  std::vector<std::uint8_t> rgb;

  const std::uint8_t* pixel(std::int64_t y, std::int64_t x) const { return rgb.data() + (y * width + x) * 3; }
};

// Limits checked from the header, before decoding: sides below kMinSide are
// not photographs, and above kMaxPixels the RGB buffer alone would take
// hundreds of MiB on a small device.
inline constexpr std::int64_t kMinSide = 2;
inline constexpr std::int64_t kMaxSide = 65535;
inline constexpr std::int64_t kMaxPixels = std::int64_t{1} << 26;  // 64 Mi pixels, 192 MiB of RGB

// A file that cannot be decoded to an image (the message names it).
class DecodeError : public Error {
 public:
  using Error::Error;
};

enum class ImageFormat { unknown, jpeg, png };

inline ImageFormat sniff_format(const std::uint8_t* data, std::size_t size) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return ImageFormat::jpeg;
  static constexpr std::uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size >= 8 && std::memcmp(data, kPng, 8) == 0) return ImageFormat::png;
  return ImageFormat::unknown;
}

namespace detail {

inline void check_dimensions(std::int64_t height, std::int64_t width, const std::string& name) {
  if (height < kMinSide || width < kMinSide)
    throw DecodeError(fmt::format("'{}': image of {}x{} pixels is too small (each side must be at least {})", name,
                                  width, height, kMinSide));
  if (height > kMaxSide || width > kMaxSide || height * width > kMaxPixels)
    throw DecodeError(fmt::format("'{}': image of {}x{} pixels is larger than the limit of {} pixels", name, width,
                                  height, kMaxPixels));
}

// libjpeg reports errors through error_exit, which must not return: it jumps
// back into the decoding function. Warnings (corrupt or truncated data) are
// recorded and turn the decode into an error.
struct JpegErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  int warnings;
};

extern "C" inline void elastic_jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

extern "C" inline void elastic_jpeg_emit_message(j_common_ptr cinfo, int level) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  if (level < 0 && err->warnings++ == 0) (*cinfo->err->format_message)(cinfo, err->message);
}

inline jpeg_error_mgr* install_error_manager(JpegErrorManager& err) {
  jpeg_error_mgr* mgr = jpeg_std_error(&err.pub);
  err.pub.error_exit = elastic_jpeg_error_exit;
  err.pub.emit_message = elastic_jpeg_emit_message;
  err.warnings = 0;
  err.message[0] = 0;
  return mgr;
}

// Decodes into `img`, sizing its buffer and `row` (one row of up to four
// components) after the header has been checked. Between setjmp and any
// longjmp this function holds no object with a destructor: `img` and `row`
// live in the caller. Returns false with err.message, or with `refused` set to
// the reason the header was refused, on failure.
inline bool jpeg_decode(const std::uint8_t* data, std::size_t size, const std::string& name, Image& img,
                        std::vector<std::uint8_t>& row, JpegErrorManager& err, std::string& refused) {
  jpeg_decompress_struct cinfo;
  cinfo.err = install_error_manager(err);
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  const bool adobe = cinfo.saw_Adobe_marker;
  const int components = cinfo.num_components;
  try {
    if (!(components == 1 || components == 3 || (components == 4 && cmyk)))
      throw DecodeError(fmt::format("'{}': JPEG with {} components is not gray, RGB or CMYK", name, components));
    check_dimensions(cinfo.image_height, cinfo.image_width, name);
    img.height = cinfo.image_height;
    img.width = cinfo.image_width;
    img.rgb.resize(static_cast<std::size_t>(img.height * img.width * 3));
    row.resize(static_cast<std::size_t>(img.width * 4));
  } catch (const std::exception& e) {
    refused = e.what();
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  cinfo.out_color_space = cmyk ? JCS_CMYK : components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  const std::size_t w = cinfo.output_width;
  while (cinfo.output_scanline < cinfo.output_height) {
    const std::size_t y = cinfo.output_scanline;
    JSAMPROW rows[1] = {row.data()};
    if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) break;
    std::uint8_t* out = img.rgb.data() + y * w * 3;
    const std::uint8_t* in = row.data();
    if (cinfo.out_color_space == JCS_RGB) {
      std::memcpy(out, in, w * 3);
    } else if (cinfo.out_color_space == JCS_GRAYSCALE) {
      for (std::size_t x = 0; x < w; ++x) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = in[x];
    } else {
      for (std::size_t x = 0; x < w; ++x) {
        const std::uint8_t* p = in + 4 * x;
        // Inverted storage (Adobe): 255 - C is stored, so the ink-free share is p itself.
        const unsigned k = adobe ? p[3] : 255u - p[3];
        for (int c = 0; c < 3; ++c) {
          const unsigned v = adobe ? p[c] : 255u - p[c];
          out[3 * x + c] = static_cast<std::uint8_t>((v * k + 127) / 255);
        }
      }
    }
  }
  const bool complete = cinfo.output_scanline == cinfo.output_height;
  if (complete) jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (!complete && err.message[0] == 0) std::strcpy(err.message, "stream ended before the last row");
  return complete && err.warnings == 0;
}

inline Image decode_jpeg(const std::uint8_t* data, std::size_t size, const std::string& name) {
  JpegErrorManager err;
  Image img;
  std::vector<std::uint8_t> row;
  std::string refused;
  if (jpeg_decode(data, size, name, img, row, err, refused)) return img;
  if (!refused.empty()) throw DecodeError(refused);
  if (img.rgb.empty()) throw DecodeError(fmt::format("'{}' is not a readable JPEG: {}", name, err.message));
  throw DecodeError(fmt::format("'{}' is a corrupt or truncated JPEG: {}", name, err.message));
}

inline Image decode_png(const std::uint8_t* data, std::size_t size, const std::string& name) {
  png_image png;
  std::memset(&png, 0, sizeof png);
  png.version = PNG_IMAGE_VERSION;
  std::unique_ptr<png_image, void (*)(png_image*)> guard(&png, [](png_image* p) { png_image_free(p); });
  if (!png_image_begin_read_from_memory(&png, data, size))
    throw DecodeError(fmt::format("'{}' is not a readable PNG: {}", name, png.message));
  check_dimensions(png.height, png.width, name);
  // Read as RGBA and drop alpha rather than composite: the pixels stay what the file holds.
  png.format = PNG_FORMAT_RGBA;
  const std::size_t n = static_cast<std::size_t>(png.height) * png.width;
  std::vector<std::uint8_t> rgba(n * 4);
  if (!png_image_finish_read(&png, nullptr, rgba.data(), 0, nullptr))
    throw DecodeError(fmt::format("'{}' is a corrupt or truncated PNG: {}", name, png.message));
  Image img;
  img.height = png.height;
  img.width = png.width;
  img.rgb.resize(n * 3);
  for (std::size_t i = 0; i < n; ++i) std::memcpy(&img.rgb[3 * i], &rgba[4 * i], 3);
  return img;
}

}  // namespace detail

// Decodes JPEG or PNG bytes; `name` is used in error messages.
inline Image decode_image(const std::uint8_t* data, std::size_t size, const std::string& name) {
  switch (sniff_format(data, size)) {
    case ImageFormat::jpeg:
      return detail::decode_jpeg(data, size, name);
    case ImageFormat::png:
      return detail::decode_png(data, size, name);
    default:
      break;
  }
  if (size == 0) throw DecodeError(fmt::format("'{}' is empty", name));
  throw DecodeError(fmt::format("'{}' is neither JPEG nor PNG (first bytes {:02x})", name,
                                fmt::join(data, data + std::min<std::size_t>(size, 4), " ")));
}

// Whole-file bytes; an error names the file.
inline std::vector<std::uint8_t> read_file_bytes(const std::filesystem::path& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw DecodeError(fmt::format("cannot open '{}': {}", path.string(), std::strerror(errno)));
  std::vector<std::uint8_t> bytes;
  std::uint8_t chunk[1 << 16];
  for (;;) {
    const std::size_t n = std::fread(chunk, 1, sizeof chunk, file.get());
    bytes.insert(bytes.end(), chunk, chunk + n);
    if (n < sizeof chunk) break;
  }
  if (std::ferror(file.get())) throw DecodeError(fmt::format("cannot read '{}'", path.string()));
  return bytes;
}

inline Image read_image(const std::filesystem::path& path) {
  const auto bytes = read_file_bytes(path);
  return decode_image(bytes.data(), bytes.size(), path.string());
}

}  // namespace elastic::data
