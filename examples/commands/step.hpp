// `elastic step`: one forward and backward of a model on given inputs, with
// every result written out, so any reference implementation can be compared
// from outside. Dropout is off and batch norm uses running statistics.
#pragma once

#include <CLI/CLI.hpp>

#include "driver/driver.hpp"
#include "elastic/io/weights.hpp"
#include "elastic/models/zoo.hpp"

namespace elastic::cli {

struct StepArgs {
  std::string model_name, weights, inputs, out, precision = "fp32";
  std::int64_t num_classes = 0, input_size = 224;
  int threads = 0;
};

inline void add_step_command(CLI::App& app, StepArgs& a) {
  auto* c = app.add_subcommand("step",
                               "one forward and backward pass on given inputs; writes logits, loss and "
                               "every param gradient");
  c->add_option("--model_name", a.model_name, "resnet50, vgg16, mobilenetv2, vit, or an ONNX classifier (PATH.onnx)")
      ->required();
  c->add_option("--num_classes", a.num_classes, "classes of the head")->required()->check(cli::positive);
  c->add_option("--input_size", a.input_size, "image side in pixels")->capture_default_str()->check(cli::positive);
  c->add_option("--weights", a.weights,
                "safetensors file with every param and buffer (required, except for an ONNX model: its own weights)");
  c->add_option("--inputs", a.inputs, "safetensors file with images (B,3,S,S) f32 and labels (B) int")->required();
  c->add_option("--out", a.out, "safetensors file to write: logits, loss, grad/<param>")->required();
  c->add_option("--threads", a.threads, "kernel threads (0 = all cores)")
      ->capture_default_str()
      ->check(cli::non_negative);
  add_precision_option(*c, a.precision);
}

inline int run_step(const StepArgs& a) {
  const Precision precision = run_precision(a.precision);
  const io::SafetensorsFile inputs(a.inputs);
  const Tensor images = inputs.read_f32("images");
  const auto labels = inputs.read_i64("labels");
  const Shape want{images.dim(0), 3, a.input_size, a.input_size};
  if (images.shape() != want)
    usage_fail("'{}': images have shape {}, expected {} for --input_size {}", a.inputs, to_string(images.shape()),
               to_string(want), a.input_size);
  if (static_cast<std::int64_t>(labels.size()) != images.dim(0))
    fail("'{}': {} labels for {} images", a.inputs, labels.size(), images.dim(0));
  Context ctx(a.threads);
  Model m = build_named_model(
      a.model_name, ctx,
      {.num_classes = a.num_classes, .input_size = a.input_size, .batch = images.dim(0), .precision = precision});
  if (!a.weights.empty())
    io::load_weights(m.params(), a.weights);
  else if (!is_onnx_model(a.model_name))
    usage_fail("--weights is required (a zoo model has no weights of its own)");
  std::vector<std::int32_t> y;
  for (auto l : labels) {
    if (l < 0 || l >= a.num_classes) fail("'{}': label {} is outside [0, {})", a.inputs, l, a.num_classes);
    y.push_back(static_cast<std::int32_t>(l));
  }
  m.graph->write(m.images, images);
  m.loss_node().set_labels(y);
  m.graph->select_all();
  m.params().zero_grads();
  m.graph->forward(false);
  m.graph->backward();
  io::SafetensorsWriter w;
  const Tensor logits = m.graph->read(m.logits);
  w.add_f32("logits", logits.shape(), logits.span());
  const float loss = m.loss_node().loss();
  w.add_f32("loss", {}, std::span(&loss, 1));
  for (const auto& p : m.params().params()) w.add_f32("grad/" + p.name, p.shape, p.grads());
  w.write(a.out);
  return 0;
}

}  // namespace elastic::cli
