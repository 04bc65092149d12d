// Opening a trained model's weight file: its description (or flags for files
// without one), the model built to match, the weights loaded strictly.
#include <fmt/format.h>

#include "driver/driver.hpp"
#include "elastic/io/weights.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/onnx/import.hpp"
#include "elastic/train/checkpoint.hpp"

namespace elastic::cli {

bool is_onnx_model(const std::string& name) { return name.ends_with(".onnx"); }

Model build_named_model(const std::string& name, Context& ctx, const ModelOptions& o, const std::string& head,
                        const std::function<void(const std::string&)>& log) {
  if (!is_onnx_model(name)) {
    if (!head.empty()) usage_fail("--head names the classifier of an ONNX model; --model_name is '{}'", name);
    return build_model(name, ctx, o);
  }
  onnx_import::ImportReport r;
  Model m = onnx_import::import_model(name, ctx, o, {.head = head}, &r);
  if (log)
    log(fmt::format("imported '{}': {} ONNX nodes, {} params, graph hash {:016x}; classifier '{}' {}{}", name, r.nodes,
                    m.params().size(), r.graph_hash, r.head,
                    r.head_replaced
                        ? fmt::format("re-created with {} classes (the file has {})", m.num_classes, r.file_classes)
                        : fmt::format("kept ({} classes)", m.num_classes),
                    r.dropped_softmax ? "; its final softmax is left out (the loss takes logits)" : ""));
  return m;
}

io::ModelInfo model_info(const Model& m, const std::string& model_name, std::int64_t input_size,
                         const std::vector<std::string>& dataset_classes) {
  io::ModelInfo info;
  info.model_name = model_name;
  info.input_size = input_size;
  info.num_classes = m.num_classes;
  for (std::int64_t c = 0; c < info.num_classes; ++c)
    info.class_names.push_back(c < std::int64_t(dataset_classes.size()) ? dataset_classes[std::size_t(c)]
                                                                        : fmt::format("class {}", c));
  for (std::size_t c = 0; c < 3; ++c) {
    info.mean[c] = m.preprocess.mean[c];
    info.stddev[c] = m.preprocess.stddev[c];
  }
  return info;
}

OpenedModel open_model_file(const ModelFileArgs& a, Context& ctx, std::int64_t batch) {
  const io::SafetensorsFile file(a.weights);
  std::optional<io::ModelInfo> info = io::read_model_info(file);
  if (info) {  // flags given beside a description must agree with it
    const auto differs = [&](const char* flag, const auto& given, const auto& stored) {
      usage_fail("{} {} but '{}' holds a model with {}", flag, given, a.weights, stored);
    };
    if (!a.model_name.empty() && a.model_name != info->model_name)
      differs("--model_name", a.model_name, info->model_name);
    if (a.num_classes && a.num_classes != info->num_classes) differs("--num_classes", a.num_classes, info->num_classes);
    if (a.input_size && a.input_size != info->input_size) differs("--input_size", a.input_size, info->input_size);
  } else {
    if (a.model_name.empty() || a.num_classes == 0 || a.input_size == 0)
      usage_fail(
          "'{}' does not describe its model (no {} metadata): give --model_name, --num_classes and "
          "--input_size",
          a.weights, io::kModelInfoKey);
    info.emplace();
    info->model_name = a.model_name;
    info->num_classes = a.num_classes;
    info->input_size = a.input_size;
  }
  OpenedModel out{
      .info = *info,
      .model = build_named_model(info->model_name, ctx,
                                 {.num_classes = info->num_classes, .input_size = info->input_size, .batch = batch})};
  if (file.metadata().count(io::kModelInfoKey)) {
    for (std::size_t c = 0; c < 3; ++c) {
      out.model.preprocess.mean[c] = info->mean[c];
      out.model.preprocess.stddev[c] = info->stddev[c];
    }
  } else {  // the flags' model: its own preprocessing, classes by number
    out.info = model_info(out.model, info->model_name, info->input_size, {});
  }
  io::load_weights(out.model.params(), file, {.ignore_prefixes = {kOptimizerPrefix}});
  return out;
}

}  // namespace elastic::cli
