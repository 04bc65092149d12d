// `elastic step`: one forward and backward of a model on given inputs, with
// every result written out, so any reference implementation can be compared
// from outside. Dropout is off and batch norm uses running statistics. With
// `--steps N` it trains instead: the inputs are N batches, each taken by one
// training step (TrainStep, the Trainer's) of every param, with the run's
// optimizer at the Trainer's learning rate (learning_rate_at: SGDW's cosine,
// Adam's constant); it writes each step's loss and the final params, so a
// reference can check the whole update rule.
#pragma once

#include <optional>

#include <CLI/CLI.hpp>

#include "driver/driver.hpp"
#include "elastic/io/weights.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/optim/optimizer.hpp"
#include "elastic/optim/schedule.hpp"
#include "elastic/train/step.hpp"

namespace elastic::cli {

struct StepArgs {
  std::string model_name, weights, inputs, out, precision = "fp32";
  std::int64_t num_classes = 0, input_size = 224;
  int threads = 0;
  // Training steps (0: one forward and backward, gradients out).
  std::int64_t steps = 0, schedule_steps = 0;
  std::string optimizer;
  float learning_rate = 1e-4f;
  std::optional<float> weight_decay;
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
  c->add_option("--steps", a.steps,
                "train instead: N steps of every param, the inputs split into N equal batches; writes loss (N) "
                "and param/<name> after the last step")
      ->check(cli::non_negative);
  c->add_option("--optimizer", a.optimizer, "with --steps: sgd (SGDW, momentum 0.9) or adam [default: the model's]");
  c->add_option("--learning_rate", a.learning_rate,
                "with --steps: the learning rate (sgd: the cosine's initial rate; adam: constant)")
      ->capture_default_str()
      ->check(cli::positive);
  c->add_option("--weight_decay", a.weight_decay,
                "with --steps: decoupled weight decay [default: 5e-4 with sgd, none with adam]")
      ->check(cli::non_negative);
  c->add_option("--schedule_steps", a.schedule_steps,
                "with --steps and sgd: the cosine's length in steps [default: --steps]; step k uses its k-th rate")
      ->check(cli::non_negative);
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
  const std::int64_t steps = std::max<std::int64_t>(a.steps, 1);
  if (images.dim(0) % steps != 0)
    usage_fail("'{}': {} images do not split into --steps {} equal batches", a.inputs, images.dim(0), a.steps);
  const std::int64_t batch = images.dim(0) / steps;
  Context ctx(a.threads);
  ModelOptions options{
      .num_classes = a.num_classes, .input_size = a.input_size, .batch = batch, .precision = precision};
  if (a.steps > 0) options.dropout = 0.0f;  // the steps are compared with a reference that has no random draws
  Model m = build_named_model(a.model_name, ctx, options);
  if (!a.weights.empty())
    io::load_weights(m.params(), a.weights);
  else if (!is_onnx_model(a.model_name))
    usage_fail("--weights is required (a zoo model has no weights of its own)");
  std::vector<std::int32_t> y;
  for (auto l : labels) {
    if (l < 0 || l >= a.num_classes) fail("'{}': label {} is outside [0, {})", a.inputs, l, a.num_classes);
    y.push_back(static_cast<std::int32_t>(l));
  }
  io::SafetensorsWriter w;
  if (a.steps > 0) {
    const auto opt = make_optimizer(a.optimizer, m.name, a.weight_decay);
    const CosineDecay schedule{a.learning_rate, a.schedule_steps > 0 ? a.schedule_steps : a.steps};
    const std::vector<bool> all(m.params().size(), true);
    m.graph->select(all);
    std::vector<float> losses;
    {
      TrainStep step(m, *opt);
      const std::int64_t per_image = images.numel() / images.dim(0);
      for (std::int64_t k = 0; k < steps; ++k) {
        Tensor x({batch, 3, a.input_size, a.input_size});
        std::copy_n(images.data() + k * batch * per_image, batch * per_image, x.data());
        m.graph->write(m.images, x);
        m.loss_node().set_labels({y.begin() + k * batch, y.begin() + (k + 1) * batch});
        losses.push_back(step(std::uint64_t(k), all, learning_rate_at(*opt, schedule, k)).loss());
      }
    }
    w.add_f32("loss", {steps}, losses);
    for (const auto& p : m.params().params()) w.add_f32("param/" + p.name, p.shape, p.values());
    w.write(a.out);
    return 0;
  }
  m.graph->write(m.images, images);
  m.loss_node().set_labels(y);
  m.graph->select_all();
  m.params().zero_grads();
  m.graph->forward(false);
  m.graph->backward();
  const Tensor logits = m.graph->read(m.logits);
  w.add_f32("logits", logits.shape(), logits.span());
  const float loss = m.loss_node().loss();
  w.add_f32("loss", {}, std::span(&loss, 1));
  for (const auto& p : m.params().params()) w.add_f32("grad/" + p.name, p.shape, p.grads());
  w.write(a.out);
  return 0;
}

}  // namespace elastic::cli
