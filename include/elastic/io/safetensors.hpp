// safetensors files: reading (memory-mapped, every offset and shape checked
// against the header before any byte is used) and writing (atomically: a
// temporary file, fsync, rename). F32, F16 and BF16 tensors read as float32;
// I64 and I32 as int64 (labels).
#pragma once

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "elastic/core/error.hpp"
#include "elastic/core/tensor.hpp"
#include "elastic/io/durable.hpp"

namespace elastic::io {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
      return 8;
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
      return 2;
    default:
      return 1;
  }
}

inline const char* dtype_name(DType t) {
  static const char* const names[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"};
  return names[static_cast<int>(t)];
}

inline bool parse_dtype(std::string_view s, DType& out) {
  for (int i = 0; i <= static_cast<int>(DType::BOOL); ++i)
    if (s == dtype_name(static_cast<DType>(i))) {
      out = static_cast<DType>(i);
      return true;
    }
  return false;
}

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::size_t begin = 0, end = 0;  // byte offsets into the data section
  std::int64_t numel() const { return elastic::numel(shape); }
};

namespace detail {
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: value = mant * 2^-24
      float f = static_cast<float>(mant) * 0x1.0p-24f;
      return sign ? -f : f;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

inline float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t{b} << 16); }
}  // namespace detail

// A safetensors file opened read-only and memory-mapped. Construction checks
// the whole header: a file that opens is safe to read tensor by tensor.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(std::filesystem::path path) : path_(std::move(path)) {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open '{}': {}", path_.string(), std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail("cannot stat '{}': {}", path_.string(), std::strerror(errno));
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ < 8) {
      ::close(fd);
      fail("'{}' is not a safetensors file: {} bytes, shorter than the 8-byte header length", path_.string(), size_);
    }
    void* map = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) fail("cannot map '{}': {}", path_.string(), std::strerror(errno));
    base_ = static_cast<const std::uint8_t*>(map);
    try {
      parse_header();
    } catch (...) {
      ::munmap(const_cast<std::uint8_t*>(base_), size_);
      throw;
    }
  }
  ~SafetensorsFile() {
    if (base_) ::munmap(const_cast<std::uint8_t*>(base_), size_);
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  const TensorInfo* find(std::string_view name) const {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const TensorInfo& at(std::string_view name) const {
    const TensorInfo* t = find(name);
    if (!t) fail("'{}' has no tensor named '{}'", path_.string(), name);
    return *t;
  }

  // Converts a floating-point tensor to float32 into `out` (exactly its size).
  void read_f32(const TensorInfo& t, std::span<float> out) const {
    if (static_cast<std::int64_t>(out.size()) != t.numel())
      fail("'{}': tensor '{}' has {} elements, the destination {}", path_.string(), t.name, t.numel(), out.size());
    const std::uint8_t* p = data_ + t.begin;
    const std::size_t n = out.size();
    switch (t.dtype) {
      case DType::F32:
        std::memcpy(out.data(), p, n * 4);
        break;
      case DType::F64:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p + 8 * i));
        break;
      case DType::F16:
        for (std::size_t i = 0; i < n; ++i) out[i] = detail::half_to_float(load<std::uint16_t>(p + 2 * i));
        break;
      case DType::BF16:
        for (std::size_t i = 0; i < n; ++i) out[i] = detail::bf16_to_float(load<std::uint16_t>(p + 2 * i));
        break;
      default:
        fail("'{}': tensor '{}' has dtype {}, expected F32, F16, BF16 or F64", path_.string(), t.name,
             dtype_name(t.dtype));
    }
  }

  Tensor read_f32(std::string_view name) const {
    const TensorInfo& t = at(name);
    Tensor out(t.shape);
    read_f32(t, out.span());
    return out;
  }

  // An integer tensor (I64, I32, I16, I8, U8) as int64.
  std::vector<std::int64_t> read_i64(std::string_view name) const {
    const TensorInfo& t = at(name);
    const std::uint8_t* p = data_ + t.begin;
    std::vector<std::int64_t> out(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < out.size(); ++i) {
      switch (t.dtype) {
        case DType::I64:
          out[i] = load<std::int64_t>(p + 8 * i);
          break;
        case DType::I32:
          out[i] = load<std::int32_t>(p + 4 * i);
          break;
        case DType::I16:
          out[i] = load<std::int16_t>(p + 2 * i);
          break;
        case DType::I8:
          out[i] = static_cast<std::int8_t>(p[i]);
          break;
        case DType::U8:
          out[i] = p[i];
          break;
        default:
          fail("'{}': tensor '{}' has dtype {}, expected an integer type (I64 or I32)", path_.string(), t.name,
               dtype_name(t.dtype));
      }
    }
    return out;
  }

 private:
  template <class T>
  static T load(const std::uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }

  void parse_header() {
    const auto header_len = load<std::uint64_t>(base_);
    if (header_len > size_ - 8)
      fail("'{}' is truncated or not a safetensors file: header length {} exceeds the {} bytes after it",
           path_.string(), header_len, size_ - 8);
    const char* h = reinterpret_cast<const char*>(base_ + 8);
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(h, h + header_len);
    } catch (const nlohmann::json::exception& e) {
      fail("'{}': the safetensors header is not valid JSON: {}", path_.string(), e.what());
    }
    if (!header.is_object()) fail("'{}': the safetensors header is not a JSON object", path_.string());
    data_ = base_ + 8 + header_len;
    const std::size_t data_size = size_ - 8 - static_cast<std::size_t>(header_len);
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (!it->is_object()) fail("'{}': __metadata__ is not an object", path_.string());
        for (auto m = it->begin(); m != it->end(); ++m)
          if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
        continue;
      }
      tensors_.push_back(parse_entry(it.key(), *it, data_size));
    }
    // Tensors must tile the data section exactly: no overlaps, no holes.
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    std::size_t expect = 0;
    for (const auto* t : by_offset) {
      if (t->begin != expect)
        fail("'{}': tensor '{}' starts at byte {} of the data, expected {} (overlap or hole)", path_.string(), t->name,
             t->begin, expect);
      expect = t->end;
    }
    if (expect != data_size)
      fail("'{}': tensors cover {} bytes but the data section holds {}", path_.string(), expect, data_size);
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& e, std::size_t data_size) const {
    const auto bad = [&](const std::string& what) { fail("'{}': tensor '{}' {}", path_.string(), name, what); };
    if (!e.is_object()) bad("is not described by an object");
    TensorInfo t;
    t.name = name;
    const auto dt = e.find("dtype");
    if (dt == e.end() || !dt->is_string()) bad("has no dtype");
    if (!parse_dtype(dt->get<std::string>(), t.dtype))
      bad(fmt::format("has unknown dtype '{}'", dt->get<std::string>()));
    const auto shape = e.find("shape");
    if (shape == e.end() || !shape->is_array()) bad("has no shape");
    std::uint64_t count = 1;
    for (const auto& d : *shape) {
      if (!d.is_number_unsigned())
        bad(fmt::format("has a shape entry that is not a non-negative integer: {}", d.dump()));
      const auto v = d.get<std::uint64_t>();
      if (v > (std::uint64_t{1} << 40) || (v != 0 && count > (std::uint64_t{1} << 40) / v))
        bad("has a shape too large to be real");
      count *= v;
      t.shape.push_back(static_cast<std::int64_t>(v));
    }
    const auto off = e.find("data_offsets");
    if (off == e.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      bad("has no data_offsets [begin, end]");
    const auto begin = (*off)[0].get<std::uint64_t>(), end = (*off)[1].get<std::uint64_t>();
    if (begin > end || end > data_size)
      bad(fmt::format("has data_offsets [{}, {}] outside the {} data bytes", begin, end, data_size));
    if (end - begin != count * dtype_size(t.dtype))
      bad(fmt::format("spans {} bytes but its shape {} of {} needs {}", end - begin, to_string(t.shape),
                      dtype_name(t.dtype), count * dtype_size(t.dtype)));
    t.begin = static_cast<std::size_t>(begin);
    t.end = static_cast<std::size_t>(end);
    return t;
  }

  std::filesystem::path path_;
  const std::uint8_t* base_ = nullptr;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and writes them as one safetensors file, atomically.
class SafetensorsWriter {
 public:
  void add_f32(std::string name, Shape shape, std::span<const float> values) {
    add(std::move(name), DType::F32, std::move(shape), values.data(), values.size() * 4, values.size());
  }
  // The same without a copy: `values` must stay alive and unchanged until write() returns
  // (weights and checkpoints: no second copy of the model in memory while writing).
  void add_f32_view(std::string name, Shape shape, std::span<const float> values) {
    add(std::move(name), DType::F32, std::move(shape), values.data(), values.size() * 4, values.size(), false);
  }
  void add_i64(std::string name, Shape shape, std::span<const std::int64_t> values) {
    add(std::move(name), DType::I64, std::move(shape), values.data(), values.size() * 8, values.size());
  }
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  // Writes to `path`.tmp, fsyncs, then renames over `path`: a crash leaves either
  // the old file or the new one, never a torn one.
  void write(const std::filesystem::path& path) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& e : entries_) {
      header[e.name] = {
          {"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.data.size()}}};
      offset += e.data.size();
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
    write_durably(path, [&](const auto& put) {
      const std::uint64_t len = h.size();
      put(&len, 8);
      put(h.data(), h.size());
      for (const auto& e : entries_) put(e.data.data(), e.data.size());
    });
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    std::vector<std::uint8_t> bytes;     // an owned copy, or empty for a view
    std::span<const std::uint8_t> data;  // what is written: `bytes` or the caller's values
  };

  void add(std::string name, DType dtype, Shape shape, const void* data, std::size_t bytes, std::size_t count,
           bool copy = true) {
    if (static_cast<std::int64_t>(count) != numel(shape))
      fail("safetensors: tensor '{}' has {} values but shape {}", name, count, to_string(shape));
    for (const auto& e : entries_)
      if (e.name == name) fail("safetensors: tensor '{}' added twice", name);
    Entry e{std::move(name), dtype, std::move(shape), {}, {}};
    const auto* p = static_cast<const std::uint8_t*>(data);
    if (copy) {
      e.bytes.assign(p, p + bytes);
      e.data = e.bytes;
    } else {
      e.data = {p, bytes};
    }
    entries_.push_back(std::move(e));
  }

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace elastic::io
