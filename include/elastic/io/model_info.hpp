// What a weights file says about the model it holds, so that evaluation,
// prediction and other tools can rebuild and use it without the command that
// trained it: the model (a zoo name), its input size, its classes in label
// order, the preprocessing its weights expect and the precision of its
// tensors. Stored as JSON under the safetensors metadata key "elastic_model"
// of model.safetensors and of checkpoints; validated when read, errors naming
// the file and the field.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "elastic/core/error.hpp"
#include "elastic/core/json.hpp"
#include "elastic/io/safetensors.hpp"

namespace elastic::io {

inline constexpr const char* kModelInfoKey = "elastic_model";

struct ModelInfo {
  std::string model_name;  // resnet50, vgg16, mobilenetv2, vit, small_cnn
  std::int64_t input_size = 0, num_classes = 0;
  std::vector<std::string> class_names;  // index = label; as many as num_classes
  // Per-channel preprocessing of RGB scaled to [0, 1]: (x - mean) / stddev.
  std::array<float, 3> mean{0.0f, 0.0f, 0.0f}, stddev{1.0f, 1.0f, 1.0f};
  std::string precision = "float32";  // of the stored tensors

  nlohmann::json to_json() const {
    return {{"model_name", model_name},
            {"input_size", input_size},
            {"num_classes", num_classes},
            {"class_names", class_names},
            {"mean", mean},
            {"stddev", stddev},
            {"precision", precision}};
  }

  // Refuses what no model could be built from; `where` names the source.
  void check(const std::string& where) const {
    if (model_name.empty()) fail("{}: model_name is empty", where);
    if (input_size < 16 || input_size > 4096) fail("{}: input_size {} is not in [16, 4096]", where, input_size);
    if (num_classes < 1) fail("{}: num_classes {} is not >= 1", where, num_classes);
    if (std::int64_t(class_names.size()) != num_classes)
      fail("{}: {} class names for {} classes", where, class_names.size(), num_classes);
    for (int c = 0; c < 3; ++c)
      if (!(stddev[std::size_t(c)] > 0)) fail("{}: stddev[{}] is {}, not > 0", where, c, stddev[std::size_t(c)]);
    if (precision != "float32") fail("{}: precision '{}' is not float32", where, precision);
  }

  static ModelInfo from_json(const nlohmann::json& j, const std::string& where) {
    ModelInfo m;
    try {
      m.model_name = j.at("model_name").get<std::string>();
      m.input_size = json_integer<std::int64_t>(j.at("input_size"), "input_size");
      m.num_classes = json_integer<std::int64_t>(j.at("num_classes"), "num_classes");
      m.class_names = j.at("class_names").get<std::vector<std::string>>();
      for (std::size_t c = 0; c < 3; ++c) {
        m.mean[c] = static_cast<float>(json_number(j.at("mean").at(c), "mean"));
        m.stddev[c] = static_cast<float>(json_number(j.at("stddev").at(c), "stddev"));
      }
      m.precision = j.at("precision").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      fail("{}: malformed {} metadata: {}", where, kModelInfoKey, e.what());
    } catch (const Error& e) {
      fail("{}: malformed {} metadata: {}", where, kModelInfoKey, e.what());
    }
    m.check(where);
    return m;
  }
};

// The file's model description; none for files written without one (older
// runs, other tools).
inline std::optional<ModelInfo> read_model_info(const SafetensorsFile& file) {
  const auto it = file.metadata().find(kModelInfoKey);
  if (it == file.metadata().end()) return std::nullopt;
  const std::string where = "'" + file.path().string() + "'";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {} metadata is not JSON: {}", where, kModelInfoKey, e.what());
  }
  return ModelInfo::from_json(j, where);
}

}  // namespace elastic::io
