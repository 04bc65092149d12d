// The datasets of the method's experiments, read from the layouts their
// authors distribute, plus a generic folder-per-class layout and Fashion-MNIST.
// Opening a dataset reads its index files only; images are decoded later by
// the loader. Every index line is checked (columns, ids, labels, that the
// image it names exists), and an error names the file and line at fault.
//
//   caltech_birds2011  CUB_200_2011/{images.txt, image_class_labels.txt,
//                      train_test_split.txt, classes.txt, images/}
//   oxford_iiit_pet    images/, annotations/{trainval.txt, test.txt}
//   stanford_dogs      Images/<wnid>-<name>/, lists/{train_list.mat, test_list.mat}
//   image_folder       train/<class>/*, test/<class>/*
//   fashion_mnist      the four IDX files, raw or .gz
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <matio.h>
#include <zlib.h>

#include "elastic/data/idx.hpp"
#include "elastic/data/image.hpp"

namespace elastic::data {

// One split: image files with 0-based labels, or in-memory grayscale images.
struct Split {
  std::vector<std::filesystem::path> files;  // empty when `memory` holds the images
  std::vector<std::int32_t> labels;
  std::shared_ptr<const ImageSet> memory;

  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }

  // A name for sample i in messages: its path, or its index.
  std::string name(std::int64_t i) const {
    return memory ? fmt::format("image {}", i) : files[static_cast<std::size_t>(i)].string();
  }

  // Sample i as RGB (gray replicated for in-memory sets).
  Image image(std::int64_t i) const {
    if (!memory) return read_image(files[static_cast<std::size_t>(i)]);
    Image img;
    img.height = memory->height;
    img.width = memory->width;
    const std::int64_t n = img.height * img.width;
    img.rgb.resize(static_cast<std::size_t>(n * 3));
    const std::uint8_t* p = memory->pixels.data() + i * n;
    for (std::int64_t k = 0; k < n; ++k) img.rgb[3 * k] = img.rgb[3 * k + 1] = img.rgb[3 * k + 2] = p[k];
    return img;
  }
};

struct Dataset {
  std::string name;
  std::filesystem::path root;
  std::vector<std::string> class_names;  // indexed by 0-based label
  Split train, test;

  std::int64_t num_classes() const { return static_cast<std::int64_t>(class_names.size()); }
};

inline const std::vector<std::string>& dataset_names() {
  static const std::vector<std::string> names{"caltech_birds2011", "oxford_iiit_pet", "stanford_dogs", "image_folder",
                                              "fashion_mnist"};
  return names;
}

// Whether a file is an image by its extension (.jpg, .jpeg, .png in any case).
inline bool is_image_file(const std::filesystem::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

namespace detail {

// A whitespace-separated text file read line by line, for messages of the
// form 'file:line: ...'. Blank lines and, when asked, '#' comments are skipped.
class IndexFile {
 public:
  explicit IndexFile(std::filesystem::path path, bool comments = false)
      : path_(std::move(path)), in_(path_), comments_(comments) {
    if (!std::filesystem::is_regular_file(path_)) fail("missing index file '{}'", path_.string());
    if (!in_) fail("cannot open '{}'", path_.string());
  }

  // The next non-blank line's fields; false at the end.
  bool next(std::vector<std::string>& fields) {
    std::string text;
    while (std::getline(in_, text)) {
      ++line_;
      if (!text.empty() && text.back() == '\r') text.pop_back();
      fields.clear();
      std::size_t i = 0;
      while (i < text.size()) {
        while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
        std::size_t j = i;
        while (j < text.size() && text[j] != ' ' && text[j] != '\t') ++j;
        if (j > i) fields.push_back(text.substr(i, j - i));
        i = j;
      }
      if (fields.empty() || (comments_ && fields[0].starts_with("#"))) continue;
      return true;
    }
    if (in_.bad()) fail("cannot read '{}'", path_.string());
    return false;
  }

  template <class... Args>
  [[noreturn]] void error(fmt::format_string<Args...> format, Args&&... args) const {
    fail("{}:{}: {}", path_.string(), line_, fmt::format(format, std::forward<Args>(args)...));
  }

  void expect_columns(const std::vector<std::string>& fields, std::size_t n, const char* what) const {
    if (fields.size() < n) error("expected {} columns ({}), found {}", n, what, fields.size());
  }

  // A decimal integer field in [lo, hi].
  std::int64_t integer(const std::string& field, std::int64_t lo, std::int64_t hi, const char* what) const {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
    if (ec != std::errc() || end != field.data() + field.size()) error("{} '{}' is not an integer", what, field);
    if (v < lo || v > hi) error("{} {} is outside [{}, {}]", what, v, lo, hi);
    return v;
  }

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::ifstream in_;
  bool comments_;
  std::int64_t line_ = 0;
};

inline void require_dir(const std::filesystem::path& dir, const std::string& dataset) {
  if (!std::filesystem::is_directory(dir)) fail("{}: missing directory '{}'", dataset, dir.string());
}

inline void require_nonempty(const Dataset& d) {
  if (d.class_names.empty()) fail("{} at '{}': no classes", d.name, d.root.string());
  if (d.train.size() == 0) fail("{} at '{}': the train split is empty", d.name, d.root.string());
  if (d.test.size() == 0) fail("{} at '{}': the test split is empty", d.name, d.root.string());
}

inline constexpr std::int64_t kMaxIndexId = std::int64_t{1} << 40;

inline Dataset open_cub200(const std::filesystem::path& data_dir) {
  Dataset d;
  d.name = "caltech_birds2011";
  if (std::filesystem::is_regular_file(data_dir / "images.txt"))
    d.root = data_dir;
  else if (std::filesystem::is_regular_file(data_dir / "CUB_200_2011" / "images.txt"))
    d.root = data_dir / "CUB_200_2011";
  else
    fail("caltech_birds2011: neither '{}' nor '{}' exists (give the extracted CUB_200_2011 folder or its parent)",
         (data_dir / "CUB_200_2011" / "images.txt").string(), (data_dir / "images.txt").string());
  require_dir(d.root / "images", d.name);
  std::vector<std::string> f;

  IndexFile classes(d.root / "classes.txt");
  while (classes.next(f)) {
    classes.expect_columns(f, 2, "class id, name");
    const auto id = classes.integer(f[0], 1, kMaxIndexId, "class id");
    if (id != d.num_classes() + 1) classes.error("class id {} out of order (expected {})", id, d.num_classes() + 1);
    const auto dot = f[1].find('.');
    d.class_names.push_back(dot == std::string::npos ? f[1] : f[1].substr(dot + 1));
  }

  // images.txt: id -> relative path; ids are 1-based and dense.
  std::vector<std::string> paths;
  IndexFile images(d.root / "images.txt");
  while (images.next(f)) {
    images.expect_columns(f, 2, "image id, path");
    const auto id = images.integer(f[0], 1, kMaxIndexId, "image id");
    if (id != static_cast<std::int64_t>(paths.size()) + 1)
      images.error("image id {} out of order (expected {})", id, paths.size() + 1);
    if (!std::filesystem::is_regular_file(d.root / "images" / f[1]))
      images.error("image '{}' does not exist", (d.root / "images" / f[1]).string());
    paths.push_back(f[1]);
  }
  const auto n = static_cast<std::int64_t>(paths.size());

  const auto read_column = [&](const char* file, const char* what, std::int64_t lo, std::int64_t hi) {
    std::vector<std::int64_t> column(static_cast<std::size_t>(n), -1);
    IndexFile index(d.root / file);
    while (index.next(f)) {
      index.expect_columns(f, 2, what);
      const auto id = index.integer(f[0], 1, n, "image id");
      auto& slot = column[static_cast<std::size_t>(id - 1)];
      if (slot != -1) index.error("image id {} appears twice", id);
      slot = index.integer(f[1], lo, hi, what);
    }
    for (std::int64_t i = 0; i < n; ++i)
      if (column[static_cast<std::size_t>(i)] == -1)
        fail("'{}': image id {} of images.txt has no entry", index.path().string(), i + 1);
    return column;
  };
  const auto labels = read_column("image_class_labels.txt", "class id", 1, d.num_classes());
  const auto is_train = read_column("train_test_split.txt", "is_training_image 0 or 1", 0, 1);
  for (std::int64_t i = 0; i < n; ++i) {
    Split& s = is_train[static_cast<std::size_t>(i)] ? d.train : d.test;
    s.files.push_back(d.root / "images" / paths[static_cast<std::size_t>(i)]);
    s.labels.push_back(static_cast<std::int32_t>(labels[static_cast<std::size_t>(i)] - 1));
  }
  return d;
}

inline Dataset open_oxford_pet(const std::filesystem::path& data_dir) {
  Dataset d;
  d.name = "oxford_iiit_pet";
  d.root = data_dir;
  require_dir(d.root / "images", d.name);
  std::map<std::int64_t, std::string> names;  // class id -> breed name
  std::vector<std::string> f;
  const auto read = [&](const char* file, Split& s) {
    IndexFile index(d.root / "annotations" / file, true);
    while (index.next(f)) {
      index.expect_columns(f, 4, "image name, class id, species, breed id");
      const auto id = index.integer(f[1], 1, 1000, "class id");
      index.integer(f[2], 1, 2, "species");
      const auto path = d.root / "images" / (f[0] + ".jpg");
      if (!std::filesystem::is_regular_file(path)) index.error("image '{}' does not exist", path.string());
      // The breed is the image name without its trailing _<number>.
      const auto us = f[0].find_last_of('_');
      const std::string breed = us == std::string::npos ? f[0] : f[0].substr(0, us);
      const auto [it, fresh] = names.emplace(id, breed);
      if (!fresh && it->second != breed)
        index.error("class id {} names breed '{}' but earlier lines gave it '{}'", id, breed, it->second);
      s.files.push_back(path);
      s.labels.push_back(static_cast<std::int32_t>(id - 1));
    }
  };
  read("trainval.txt", d.train);
  read("test.txt", d.test);
  const std::int64_t classes = names.empty() ? 0 : names.rbegin()->first;
  for (std::int64_t c = 1; c <= classes; ++c) {
    const auto it = names.find(c);
    if (it == names.end())
      fail("oxford_iiit_pet: class id {} never appears in '{}' or '{}' (ids go up to {})", c,
           (d.root / "annotations" / "trainval.txt").string(), (d.root / "annotations" / "test.txt").string(), classes);
    d.class_names.push_back(it->second);
  }
  return d;
}

// libmatio allocates what a MATLAB file's headers claim before it reads the
// data, so a few corrupt bytes could make it ask for gigabytes. Before a file
// reaches it, its MATLAB 5 structure is checked against the bytes present:
// every element fits in its parent, every array's element count is backed by
// its data (so allocations stay within a small multiple of the file size),
// compressed elements inflate to at most kMaxMatInflated bytes, and only the
// classes a list file holds (cells, chars, numbers) are accepted.
inline constexpr std::size_t kMaxMatFile = std::size_t{256} << 20;
inline constexpr std::size_t kMaxMatInflated = std::size_t{256} << 20;

class MatChecker {
 public:
  MatChecker(const std::filesystem::path& path, bool swap) : path_(path), swap_(swap) {}

  // The elements of a whole file after its 128-byte header.
  void check_file(const std::uint8_t* p, std::size_t n) {
    for (std::size_t at = 128; at < n;) {
      const Element e = element(p, n, at, false);
      if (e.type == kMatrix) {
        check_matrix(p + e.data, e.size, 0);
      } else if (e.type == kCompressed) {
        const std::vector<std::uint8_t> inflated = inflate(p + e.data, e.size);
        const Element inner = element(inflated.data(), inflated.size(), 0, false);
        if (inner.type != kMatrix) bad("a compressed element holds type {}, not a matrix", inner.type);
        check_matrix(inflated.data() + inner.data, inner.size, 0);
      } else {
        bad("top-level element of type {} is not a matrix", e.type);
      }
      at = e.next;
    }
  }

 private:
  static constexpr std::uint32_t kMatrix = 14, kCompressed = 15;
  struct Element {
    std::uint32_t type;
    std::size_t size, data, next;
  };

  template <class... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> format, Args&&... args) const {
    fail("'{}' is not a valid MATLAB 5 list file: {}", path_.string(),
         fmt::format(format, std::forward<Args>(args)...));
  }

  std::uint32_t u32(const std::uint8_t* p) const {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return swap_ ? __builtin_bswap32(v) : v;
  }

  // The element whose tag starts at `at` in [0, n).
  Element element(const std::uint8_t* p, std::size_t n, std::size_t at, bool padded) const {
    if (at > n || n - at < 8) bad("an element tag is cut off at byte {}", at);
    const std::uint32_t first = u32(p + at);
    Element e;
    if (first >> 16) {  // small element: type and size in one word, data in the next
      e.type = first & 0xFFFF;
      e.size = first >> 16;
      if (e.size > 4) bad("a small element claims {} bytes", e.size);
      e.data = at + 4;
      e.next = at + 8;
      return e;
    }
    e.type = first;
    e.size = u32(p + at + 4);
    e.data = at + 8;
    if (e.size > n - e.data) bad("an element claims {} bytes but {} remain", e.size, n - e.data);
    e.next = e.data + e.size;
    if (padded) e.next = std::min(n, (e.next + 7) & ~std::size_t{7});
    return e;
  }

  static std::size_t type_size(std::uint32_t type) {
    switch (type) {
      case 1:
      case 2:
      case 16:
        return 1;  // int8, uint8, utf8
      case 3:
      case 4:
      case 17:
        return 2;  // int16, uint16, utf16
      case 5:
      case 6:
      case 7:
      case 18:
        return 4;  // int32, uint32, single, utf32
      case 9:
      case 12:
      case 13:
        return 8;  // double, int64, uint64
      default:
        return 0;
    }
  }

  void check_matrix(const std::uint8_t* p, std::size_t n, int depth) const {
    if (depth > 3) bad("cells nested deeper than 3");
    if (n == 0) return;  // an empty matrix
    const Element flags = element(p, n, 0, true);
    if (flags.type != 6 || flags.size != 8) bad("array flags of type {} and {} bytes", flags.type, flags.size);
    const std::uint32_t word = u32(p + flags.data);
    const std::uint32_t cls = word & 0xFF;
    const bool complex = (word >> 11) & 1;
    const Element dims = element(p, n, flags.next, true);
    if (dims.type != 5 || dims.size % 4 != 0 || dims.size < 8)
      bad("dimensions of type {} and {} bytes", dims.type, dims.size);
    std::uint64_t count = 1;
    for (std::size_t k = 0; k < dims.size / 4; ++k) {
      const auto d = static_cast<std::int32_t>(u32(p + dims.data + 4 * k));
      if (d < 0) bad("negative dimension {}", d);
      count *= static_cast<std::uint64_t>(d);
      if (count > (std::uint64_t{1} << 31)) bad("more than 2^31 elements");
    }
    const Element name = element(p, n, dims.next, true);
    if (name.type != 1) bad("array name of type {}", name.type);
    std::size_t at = name.next;
    if (cls == 1) {  // cell: one matrix element per entry, each at least a tag
      if (count > (n - std::min(n, at)) / 8) bad("a cell array claims {} entries in {} bytes", count, n - at);
      for (std::uint64_t i = 0; i < count; ++i) {
        const Element c = element(p, n, at, true);
        if (c.type != kMatrix) bad("cell entry {} is of type {}, not a matrix", i + 1, c.type);
        check_matrix(p + c.data, c.size, depth + 1);
        at = c.next;
      }
      return;
    }
    if (cls != 4 && (cls < 6 || cls > 15)) bad("MATLAB class {} is not a cell, char or numeric array", cls);
    for (int part = 0; part < (complex ? 2 : 1); ++part) {
      if (count == 0 && at >= n) return;
      const Element data = element(p, n, at, true);
      const std::size_t size = type_size(data.type);
      if (size == 0) bad("array data of type {}", data.type);
      if (data.size / size < count)
        bad("an array claims {} elements but holds {} bytes of type {}", count, data.size, data.type);
      at = data.next;
    }
  }

  std::vector<std::uint8_t> inflate(const std::uint8_t* p, std::size_t n) const {
    z_stream z{};
    if (inflateInit(&z) != Z_OK) bad("zlib cannot start");
    std::vector<std::uint8_t> out;
    std::uint8_t chunk[1 << 15];
    z.next_in = const_cast<Bytef*>(p);
    z.avail_in = static_cast<uInt>(n);
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
      z.next_out = chunk;
      z.avail_out = sizeof chunk;
      rc = ::inflate(&z, Z_NO_FLUSH);
      if (rc != Z_OK && rc != Z_STREAM_END) {
        inflateEnd(&z);
        bad("a compressed element is corrupt ({})", z.msg ? z.msg : "zlib error");
      }
      out.insert(out.end(), chunk, chunk + (sizeof chunk - z.avail_out));
      if (out.size() > kMaxMatInflated) {
        inflateEnd(&z);
        bad("a compressed element inflates to more than {} MiB", kMaxMatInflated >> 20);
      }
      if (rc == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
        inflateEnd(&z);
        bad("a compressed element is cut off");
      }
    }
    inflateEnd(&z);
    return out;
  }

  std::filesystem::path path_;
  bool swap_;
};

inline void check_mat_file(const std::filesystem::path& path) {
  const auto size = std::filesystem::file_size(path);
  if (size > kMaxMatFile) fail("'{}' is {} MiB; a list file is expected to be far smaller", path.string(), size >> 20);
  const auto bytes = read_file_bytes(path);
  if (bytes.size() < 128) fail("'{}' is not a MATLAB file: {} bytes", path.string(), bytes.size());
  const std::uint16_t version = static_cast<std::uint16_t>(bytes[124] | (bytes[125] << 8));
  if (bytes[126] == 'I' && bytes[127] == 'M' && version == 0x0200)
    fail("'{}' is a MATLAB 7.3 (HDF5) file; save the lists as MATLAB 5/7 (-v7)", path.string());
  bool swap;
  if (bytes[126] == 'I' && bytes[127] == 'M')
    swap = false;
  else if (bytes[126] == 'M' && bytes[127] == 'I')
    swap = true;
  else
    fail("'{}' is not a MATLAB 5 file (no endian indicator at byte 126)", path.string());
  MatChecker(path, swap).check_file(bytes.data(), bytes.size());
}

// The strings and labels of a Stanford Dogs list file (MATLAB 5, compressed
// or not): cell array `file_list` of char rows and numeric vector `labels`.
struct MatList {
  std::vector<std::string> files;
  std::vector<std::int64_t> labels;
};

inline MatList read_mat_list(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path)) fail("missing list file '{}'", path.string());
  check_mat_file(path);
  std::unique_ptr<mat_t, int (*)(mat_t*)> mat(Mat_Open(path.c_str(), MAT_ACC_RDONLY), &Mat_Close);
  if (!mat) fail("'{}' is not a readable MATLAB file", path.string());
  using Var = std::unique_ptr<matvar_t, void (*)(matvar_t*)>;
  const auto read_var = [&](const char* name) {
    Var v(Mat_VarRead(mat.get(), name), &Mat_VarFree);
    if (!v) fail("'{}': no variable '{}' (or it cannot be read)", path.string(), name);
    return v;
  };
  const auto elements = [](const matvar_t* v) {
    std::size_t n = 1;
    for (int i = 0; i < v->rank; ++i) n *= v->dims[i];
    return n;
  };
  MatList out;
  const Var files = read_var("file_list");
  if (files->class_type != MAT_C_CELL) fail("'{}': 'file_list' is not a cell array", path.string());
  const std::size_t n = elements(files.get());
  for (std::size_t i = 0; i < n; ++i) {
    const matvar_t* cell = Mat_VarGetCell(files.get(), static_cast<int>(i));
    if (!cell || cell->class_type != MAT_C_CHAR || !cell->data)
      fail("'{}': file_list entry {} is not a character array", path.string(), i + 1);
    const std::size_t chars = elements(cell);
    std::string s;
    if (cell->data_type == MAT_T_UINT8 || cell->data_type == MAT_T_INT8 || cell->data_type == MAT_T_UTF8) {
      if (cell->nbytes < chars) fail("'{}': file_list entry {} is truncated", path.string(), i + 1);
      s.assign(static_cast<const char*>(cell->data), chars);
    } else if (cell->data_type == MAT_T_UINT16 || cell->data_type == MAT_T_UTF16) {
      if (cell->nbytes < 2 * chars) fail("'{}': file_list entry {} is truncated", path.string(), i + 1);
      const auto* u = static_cast<const std::uint16_t*>(cell->data);
      for (std::size_t k = 0; k < chars; ++k) {
        if (u[k] == 0 || u[k] > 127)
          fail("'{}': file_list entry {} holds a character outside ASCII", path.string(), i + 1);
        s.push_back(static_cast<char>(u[k]));
      }
    } else {
      fail("'{}': file_list entry {} has character data of MATLAB type {}", path.string(), i + 1,
           static_cast<int>(cell->data_type));
    }
    out.files.push_back(std::move(s));
  }
  const Var labels = read_var("labels");
  if (elements(labels.get()) != n)
    fail("'{}': 'labels' has {} entries but 'file_list' has {}", path.string(), elements(labels.get()), n);
  const auto get = [&](std::size_t i) -> double {
    switch (labels->class_type) {
      case MAT_C_DOUBLE:
        return static_cast<const double*>(labels->data)[i];
      case MAT_C_SINGLE:
        return static_cast<const float*>(labels->data)[i];
      case MAT_C_UINT8:
        return static_cast<const std::uint8_t*>(labels->data)[i];
      case MAT_C_INT16:
        return static_cast<const std::int16_t*>(labels->data)[i];
      case MAT_C_UINT16:
        return static_cast<const std::uint16_t*>(labels->data)[i];
      case MAT_C_INT32:
        return static_cast<const std::int32_t*>(labels->data)[i];
      case MAT_C_INT64:
        return static_cast<double>(static_cast<const std::int64_t*>(labels->data)[i]);
      default:
        fail("'{}': 'labels' is not a numeric array", path.string());
    }
  };
  if (!labels->data && n > 0) fail("'{}': 'labels' holds no data", path.string());
  if (labels->isComplex) fail("'{}': 'labels' is complex", path.string());
  for (std::size_t i = 0; i < n; ++i) {
    const double v = get(i);
    if (!(v >= 1 && v <= 100000) || v != std::floor(v))
      fail("'{}': labels entry {} is {}, not a 1-based class number", path.string(), i + 1, v);
    out.labels.push_back(static_cast<std::int64_t>(v));
  }
  return out;
}

inline Dataset open_stanford_dogs(const std::filesystem::path& data_dir) {
  Dataset d;
  d.name = "stanford_dogs";
  d.root = data_dir;
  require_dir(d.root / "Images", d.name);
  std::map<std::int64_t, std::string> dirs;  // label -> class directory
  const auto read = [&](const char* file, Split& s) {
    const auto path = d.root / "lists" / file;
    const MatList list = read_mat_list(path);
    for (std::size_t i = 0; i < list.files.size(); ++i) {
      const std::string& rel = list.files[i];
      const auto slash = rel.find('/');
      if (slash == std::string::npos || slash == 0)
        fail("'{}': file_list entry {} '{}' is not <class dir>/<file>", path.string(), i + 1, rel);
      const std::string dir = rel.substr(0, slash);
      const auto [it, fresh] = dirs.emplace(list.labels[i], dir);
      if (!fresh && it->second != dir)
        fail("'{}': entry {} gives label {} to '{}' but earlier entries gave it to '{}'", path.string(), i + 1,
             list.labels[i], dir, it->second);
      const auto image = d.root / "Images" / rel;
      if (!std::filesystem::is_regular_file(image))
        fail("'{}': file_list entry {} names '{}', which does not exist", path.string(), i + 1, image.string());
      s.files.push_back(image);
      s.labels.push_back(static_cast<std::int32_t>(list.labels[i] - 1));
    }
  };
  read("train_list.mat", d.train);
  read("test_list.mat", d.test);
  const std::int64_t classes = dirs.empty() ? 0 : dirs.rbegin()->first;
  for (std::int64_t c = 1; c <= classes; ++c) {
    const auto it = dirs.find(c);
    if (it == dirs.end()) fail("stanford_dogs: label {} never appears in the lists (labels go up to {})", c, classes);
    // '<wnid>-<breed>' -> breed
    const auto dash = it->second.find('-');
    d.class_names.push_back(dash == std::string::npos ? it->second : it->second.substr(dash + 1));
  }
  return d;
}

inline Dataset open_image_folder(const std::filesystem::path& data_dir) {
  Dataset d;
  d.name = "image_folder";
  d.root = data_dir;
  require_dir(d.root / "train", d.name);
  require_dir(d.root / "test", d.name);
  const auto class_dirs = [](const std::filesystem::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.is_directory() && !e.path().filename().string().starts_with(".")) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  };
  d.class_names = class_dirs(d.root / "train");
  const auto read = [&](const char* split, Split& s) {
    for (const auto& cls : class_dirs(d.root / split)) {
      const auto it = std::find(d.class_names.begin(), d.class_names.end(), cls);
      if (it == d.class_names.end())
        fail("image_folder: class '{}' of '{}' has no directory in '{}'", cls, (d.root / split).string(),
             (d.root / "train").string());
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(d.root / split / cls))
        if (e.is_regular_file() && is_image_file(e.path()) && !e.path().filename().string().starts_with("."))
          files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (auto& p : files) {
        s.files.push_back(std::move(p));
        s.labels.push_back(static_cast<std::int32_t>(it - d.class_names.begin()));
      }
    }
  };
  read("train", d.train);
  read("test", d.test);
  return d;
}

inline Dataset open_fashion_mnist(const std::filesystem::path& data_dir, const std::vector<int>& classes) {
  FashionMnist f = load_fashion_mnist(data_dir.empty() ? kFashionMnistDir : data_dir, classes);
  Dataset d;
  d.name = "fashion_mnist";
  d.root = data_dir.empty() ? kFashionMnistDir : data_dir;
  d.class_names = f.class_names;
  const auto split = [](ImageSet&& set) {
    Split s;
    s.labels = set.labels;
    s.memory = std::make_shared<const ImageSet>(std::move(set));
    return s;
  };
  d.train = split(std::move(f.train));
  d.test = split(std::move(f.test));
  return d;
}

}  // namespace detail

// Keeps the samples whose label is in `classes`, relabelled 0..k-1 in the
// order given (a transfer experiment's source or target classes).
inline void keep_classes(Dataset& d, const std::vector<int>& classes) {
  if (classes.empty()) return;
  std::vector<std::string> names;
  for (int c : classes) {
    if (c < 0 || c >= d.num_classes())
      usage_fail("class {} is not a class of {} (it has {})", c, d.name, d.num_classes());
    names.push_back(d.class_names[static_cast<std::size_t>(c)]);
  }
  for (Split* s : {&d.train, &d.test}) {
    if (s->memory) {
      auto kept = data::keep_classes(*s->memory, classes);
      s->labels = kept.labels;
      s->memory = std::make_shared<const ImageSet>(std::move(kept));
      continue;
    }
    Split out;
    for (std::int64_t i = 0; i < s->size(); ++i) {
      const auto it = std::find(classes.begin(), classes.end(), s->labels[static_cast<std::size_t>(i)]);
      if (it == classes.end()) continue;
      out.files.push_back(s->files[static_cast<std::size_t>(i)]);
      out.labels.push_back(static_cast<std::int32_t>(it - classes.begin()));
    }
    *s = std::move(out);
  }
  d.class_names = std::move(names);
}

// Parses a class list such as "0-4", "5-9" or "1,3,7" (0-based).
inline std::vector<int> parse_class_list(const std::string& text) {
  std::vector<int> out;
  std::size_t i = 0;
  const auto number = [&](std::size_t& at) {
    int v = 0;
    const auto [end, ec] = std::from_chars(text.data() + at, text.data() + text.size(), v);
    if (ec != std::errc() || v < 0) usage_fail("class list '{}' is not like 0-4 or 1,3,7", text);
    at = static_cast<std::size_t>(end - text.data());
    return v;
  };
  while (i < text.size()) {
    const int lo = number(i);
    int hi = lo;
    if (i < text.size() && text[i] == '-') hi = number(++i);
    if (hi < lo) usage_fail("class list '{}': range {}-{} is empty", text, lo, hi);
    for (int c = lo; c <= hi; ++c)
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
    if (i < text.size() && text[i] != ',') usage_fail("class list '{}' is not like 0-4 or 1,3,7", text);
    if (i < text.size()) ++i;
  }
  if (out.empty()) usage_fail("class list '{}' names no class", text);
  return out;
}

struct DatasetOptions {
  std::vector<int> classes;  // keep only these classes (0-based), relabelled in this order
};

// Opens dataset `name` from `data_dir` (fashion_mnist: empty means Debian's
// package directory). Throws UsageError for an unknown name.
inline Dataset open_dataset(const std::string& name, const std::filesystem::path& data_dir,
                            const DatasetOptions& options = {}) {
  if (name != "fashion_mnist" && data_dir.empty()) usage_fail("--data_dir is required for dataset '{}'", name);
  if (name != "fashion_mnist" && !std::filesystem::is_directory(data_dir))
    fail("--data_dir '{}' is not a directory", data_dir.string());
  Dataset d;
  if (name == "caltech_birds2011")
    d = detail::open_cub200(data_dir);
  else if (name == "oxford_iiit_pet")
    d = detail::open_oxford_pet(data_dir);
  else if (name == "stanford_dogs")
    d = detail::open_stanford_dogs(data_dir);
  else if (name == "image_folder")
    d = detail::open_image_folder(data_dir);
  else if (name == "fashion_mnist")
    d = detail::open_fashion_mnist(data_dir, options.classes);
  else
    usage_fail("--dataset_name '{}' is not one of {}", name, fmt::join(dataset_names(), ", "));
  if (name != "fashion_mnist") keep_classes(d, options.classes);
  detail::require_nonempty(d);
  return d;
}

}  // namespace elastic::data
