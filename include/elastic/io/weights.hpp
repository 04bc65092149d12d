// Params and buffers to and from safetensors, by torchvision name. Loading
// reports every missing, unexpected and mis-shaped tensor together, so one run
// tells the user everything that is wrong with a weight file.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <fmt/ranges.h>

#include "elastic/graph/param.hpp"
#include "elastic/io/model_info.hpp"
#include "elastic/io/safetensors.hpp"

namespace elastic::io {

struct LoadOptions {
  // Params and buffers whose names start with one of these are left as
  // initialized, and file tensors under them are ignored: the new head of a
  // fine-tuning run (e.g. {"fc."}), whatever its class count in the file.
  std::vector<std::string> skip_prefixes;
  // File tensors under these prefixes are not the model's (a checkpoint's
  // optimizer state) and are ignored.
  std::vector<std::string> ignore_prefixes;
};

struct LoadReport {
  int loaded = 0;
  std::vector<std::string> ignored;  // in the file, not used (e.g. num_batches_tracked)
};

namespace detail {
inline bool starts_with_any(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (name.starts_with(p)) return true;
  return false;
}
}  // namespace detail

inline LoadReport load_weights(ParamStore& store, const SafetensorsFile& file, const LoadOptions& o = {}) {
  if (!store.allocated()) fail("load_weights: the params are not allocated yet (finalize the graph first)");
  std::vector<std::string> missing, misshaped, wrong_type, unexpected;
  std::map<std::string, bool, std::less<>> wanted;
  struct Target {
    std::string_view name;
    const Shape& shape;
    std::span<float> values;
  };
  std::vector<Target> targets;
  for (auto& p : store.params()) targets.push_back({p.name, p.shape, p.values()});
  for (auto& b : store.buffers()) targets.push_back({b.name, b.shape, b.values()});
  for (const auto& t : targets) {
    const std::string name(t.name);
    if (detail::starts_with_any(name, o.skip_prefixes)) continue;
    wanted[name] = true;
    const TensorInfo* info = file.find(name);
    if (!info) {
      missing.push_back(name);
    } else if (info->shape != t.shape) {
      misshaped.push_back(fmt::format("{} (file {}, model {})", name, to_string(info->shape), to_string(t.shape)));
    } else if (info->dtype != DType::F32 && info->dtype != DType::F16 && info->dtype != DType::BF16 &&
               info->dtype != DType::F64) {
      wrong_type.push_back(fmt::format("{} ({})", name, dtype_name(info->dtype)));
    }
  }
  LoadReport report;
  for (const auto& info : file.tensors()) {
    if (wanted.count(info.name)) continue;
    if (detail::starts_with_any(info.name, o.skip_prefixes) || detail::starts_with_any(info.name, o.ignore_prefixes) ||
        info.name.ends_with(".num_batches_tracked"))
      report.ignored.push_back(info.name);
    else
      unexpected.push_back(info.name);
  }
  if (!missing.empty() || !misshaped.empty() || !wrong_type.empty() || !unexpected.empty()) {
    std::string msg = fmt::format("'{}' does not fit the model:", file.path().string());
    if (!missing.empty()) msg += fmt::format(" missing {} tensor(s): {};", missing.size(), fmt::join(missing, ", "));
    if (!misshaped.empty())
      msg += fmt::format(" wrong shape for {}: {};", misshaped.size(), fmt::join(misshaped, ", "));
    if (!wrong_type.empty()) msg += fmt::format(" not floating point: {};", fmt::join(wrong_type, ", "));
    if (!unexpected.empty())
      msg += fmt::format(" unexpected {} tensor(s): {};", unexpected.size(), fmt::join(unexpected, ", "));
    msg.pop_back();
    throw Error(msg);
  }
  for (const auto& t : targets) {
    if (!wanted.count(std::string(t.name))) continue;
    file.read_f32(*file.find(t.name), t.values);
    ++report.loaded;
  }
  return report;
}

inline LoadReport load_weights(ParamStore& store, const std::filesystem::path& path, const LoadOptions& o = {}) {
  const SafetensorsFile file(path);
  return load_weights(store, file, o);
}

// Every param and buffer, by name, as float32, with the model's description
// when given (model_info.hpp).
inline void save_weights(const ParamStore& store, const std::filesystem::path& path,
                         const std::optional<ModelInfo>& info = std::nullopt) {
  SafetensorsWriter w;
  for (const auto& p : store.params()) w.add_f32_view(p.name, p.shape, p.values());
  for (const auto& b : store.buffers()) w.add_f32_view(b.name, b.shape, b.values());
  if (info) {
    info->check("the model description to write to '" + path.string() + "'");
    w.set_metadata(kModelInfoKey, info->to_json().dump());
  }
  w.write(path);
}

}  // namespace elastic::io
