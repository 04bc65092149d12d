// IDX files (the MNIST family's format), raw or gzip-compressed, and the
// Fashion-MNIST dataset as Debian's dataset-fashion-mnist package installs it.
// Every size in a header is checked against the bytes that follow it: a short or
// overlong file is an error naming the file, never a silently truncated dataset.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <zlib.h>

#include "elastic/core/error.hpp"

namespace elastic::data {

// An IDX array of unsigned bytes: dims and the data in row-major order.
struct IdxArray {
  std::vector<std::int64_t> dims;
  std::vector<std::uint8_t> data;
};

namespace detail {

// Whole-file bytes, inflated when the file starts with the gzip magic.
inline std::vector<std::uint8_t> read_maybe_gzip(const std::filesystem::path& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) fail("cannot open '{}'", path.string());
  std::array<unsigned char, 2> magic{};
  const bool gz = std::fread(magic.data(), 1, 2, file.get()) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
  std::vector<std::uint8_t> out;
  if (!gz) {
    std::fseek(file.get(), 0, SEEK_END);
    const long size = std::ftell(file.get());
    std::fseek(file.get(), 0, SEEK_SET);
    if (size < 0) fail("cannot read '{}'", path.string());
    out.resize(static_cast<std::size_t>(size));
    if (std::fread(out.data(), 1, out.size(), file.get()) != out.size()) fail("cannot read '{}'", path.string());
    return out;
  }
  file.reset();
  std::unique_ptr<gzFile_s, int (*)(gzFile)> gz_file(gzopen(path.c_str(), "rb"), &gzclose);
  if (!gz_file) fail("cannot open '{}'", path.string());
  std::array<std::uint8_t, 1 << 16> chunk;
  for (;;) {
    const int n = gzread(gz_file.get(), chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      fail("'{}' is not a valid gzip file: {}", path.string(), gzerror(gz_file.get(), &code));
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  return out;
}

inline std::uint32_t big_endian_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

}  // namespace detail

// Reads an IDX file of unsigned bytes (type code 0x08), raw or .gz.
inline IdxArray read_idx(const std::filesystem::path& path) {
  const auto bytes = detail::read_maybe_gzip(path);
  if (bytes.size() < 4) fail("'{}' is not an IDX file: {} bytes", path.string(), bytes.size());
  if (bytes[0] != 0 || bytes[1] != 0)
    fail("'{}' is not an IDX file: magic starts with {:#04x} {:#04x}, expected 0 0", path.string(), bytes[0], bytes[1]);
  if (bytes[2] != 0x08) fail("'{}': IDX element type {:#04x} is not unsigned byte (0x08)", path.string(), bytes[2]);
  const int rank = bytes[3];
  if (rank < 1 || rank > 4) fail("'{}': IDX rank {} is not in 1..4", path.string(), rank);
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(rank);
  if (bytes.size() < header) fail("'{}' is truncated inside its header", path.string());
  IdxArray a;
  std::uint64_t count = 1;
  for (int i = 0; i < rank; ++i) {
    const std::uint32_t d = detail::big_endian_u32(bytes.data() + 4 + 4 * i);
    a.dims.push_back(d);
    count *= d;
  }
  if (count != bytes.size() - header)
    fail("'{}': header declares {} bytes of data but the file holds {}", path.string(), count, bytes.size() - header);
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return a;
}

// Grayscale images with integer labels, 0-based.
struct ImageSet {
  std::int64_t height = 0, width = 0;
  std::vector<std::uint8_t> pixels;  // count x height x width
  std::vector<std::int32_t> labels;
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
};

// An IDX image file (N, H, W) and its label file (N), checked against each other.
inline ImageSet read_idx_images(const std::filesystem::path& images, const std::filesystem::path& labels) {
  IdxArray x = read_idx(images);
  const IdxArray y = read_idx(labels);
  if (x.dims.size() != 3) fail("'{}': expected a rank-3 image array, got rank {}", images.string(), x.dims.size());
  if (y.dims.size() != 1) fail("'{}': expected a rank-1 label array, got rank {}", labels.string(), y.dims.size());
  if (x.dims[0] != y.dims[0])
    fail("'{}' holds {} images but '{}' holds {} labels", images.string(), x.dims[0], labels.string(), y.dims[0]);
  ImageSet s;
  s.height = x.dims[1];
  s.width = x.dims[2];
  s.pixels = std::move(x.data);
  s.labels.assign(y.data.begin(), y.data.end());
  return s;
}

// Keeps the images whose label is in `classes`, relabelled 0..k-1 in the order given.
inline ImageSet keep_classes(const ImageSet& s, const std::vector<int>& classes) {
  ImageSet out;
  out.height = s.height;
  out.width = s.width;
  const auto pixels = static_cast<std::size_t>(s.height * s.width);
  for (std::int64_t i = 0; i < s.size(); ++i) {
    const auto it = std::find(classes.begin(), classes.end(), s.labels[static_cast<std::size_t>(i)]);
    if (it == classes.end()) continue;
    out.labels.push_back(static_cast<std::int32_t>(it - classes.begin()));
    const auto* p = s.pixels.data() + static_cast<std::size_t>(i) * pixels;
    out.pixels.insert(out.pixels.end(), p, p + pixels);
  }
  return out;
}

inline const std::filesystem::path kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

struct FashionMnist {
  ImageSet train, test;
  std::vector<std::string> class_names;
};

// Fashion-MNIST from `dir` (files named as the original archive, raw or .gz).
// With `classes`, only those classes are kept, relabelled 0..k-1 in that order.
inline FashionMnist load_fashion_mnist(const std::filesystem::path& dir = kFashionMnistDir,
                                       const std::vector<int>& classes = {}) {
  static const char* const kNames[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  const auto find = [&](const std::string& stem) {
    for (const auto& name : {stem, stem + ".gz"})
      if (std::filesystem::exists(dir / name)) return dir / name;
    fail("Fashion-MNIST: neither '{}' nor '{}.gz' exists", (dir / stem).string(), (dir / stem).string());
  };
  for (int c : classes)
    if (c < 0 || c > 9) fail("Fashion-MNIST has classes 0..9; class {} was asked for", c);
  FashionMnist d;
  d.train = read_idx_images(find("train-images-idx3-ubyte"), find("train-labels-idx1-ubyte"));
  d.test = read_idx_images(find("t10k-images-idx3-ubyte"), find("t10k-labels-idx1-ubyte"));
  for (const auto* set : {&d.train, &d.test})
    for (auto label : set->labels)
      if (label > 9) fail("Fashion-MNIST in '{}': label {} is not in 0..9", dir.string(), label);
  if (classes.empty()) {
    d.class_names.assign(std::begin(kNames), std::end(kNames));
    return d;
  }
  d.train = keep_classes(d.train, classes);
  d.test = keep_classes(d.test, classes);
  for (int c : classes) d.class_names.emplace_back(kNames[c]);
  return d;
}

}  // namespace elastic::data
