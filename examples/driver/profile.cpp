// `elastic profile`: measures a model's per-unit backward times once and
// writes the profile that `elastic train --profile` reads.
#include <fmt/format.h>

#include "driver/driver.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/method/units.hpp"
#include "elastic/models/zoo.hpp"

namespace elastic::cli {

void add_profile_options(CLI::App& c, ProfileArgs& a) {
  c.add_option("--model_name", a.model_name, "resnet50, vgg16, mobilenetv2, vit, or an ONNX classifier (PATH.onnx)")
      ->capture_default_str();
  c.add_option("--head", a.head,
               "an ONNX model's classifier (a Gemm's layer or node name) [default: the Gemm feeding the output]");
  c.add_option("--input_size", a.input_size, "image side in pixels")
      ->capture_default_str()
      ->check(cli::in_range(16, 4096));
  c.add_option("--batch_size", a.batch_size, "training batch")->capture_default_str()->check(cli::positive);
  c.add_option("--num_classes", a.num_classes, "classes of the head (as the training run will have)")
      ->required()
      ->check(cli::positive);
  c.add_option("--threads", a.threads, "kernel threads (0: all cores); training must use the same")
      ->capture_default_str()
      ->check(cli::non_negative);
  c.add_option("--optimizer", a.optimizer,
               "sgd or adam: the training run's optimizer, whose update each unit's time includes "
               "[default: adam for vit, else sgd]");
  c.add_option("--warmup", a.warmup, "unmeasured repeats first")->capture_default_str()->check(cli::non_negative);
  c.add_option("--repeats", a.repeats, "measured repeats (medians are kept)")
      ->capture_default_str()
      ->check(cli::positive);
  c.add_option("--out", a.out, "profile file to write (JSON)")->required();
  add_precision_option(c, a.precision);
}

int run_profile(const ProfileArgs& a) {
  const Precision precision = run_precision(a.precision);
  Context ctx(a.threads);
  Model m = build_named_model(
      a.model_name, ctx,
      {.num_classes = a.num_classes, .input_size = a.input_size, .batch = a.batch_size, .precision = precision}, a.head,
      [](const std::string& line) { fmt::print("{}\n", line); });
  // Any input will do: times do not depend on the values.
  Rng rng(1);
  Tensor x(m.input_shape);
  for (auto& v : x.span()) v = rng.normal();
  m.graph->write(m.images, x);
  m.loss_node().set_labels(std::vector<std::int32_t>(static_cast<std::size_t>(a.batch_size), 0));
  const auto opt = make_optimizer(a.optimizer, m.name, std::nullopt);
  const Profile p = TimingProfiler<>({.warmup = a.warmup, .repeats = a.repeats})
                        .run(m, ctx.threads(), std::vector<bool>(m.params().size(), true), *opt);
  fmt::print("{:<48} {:>10} {:>10} {:>10}\n", "unit", "t_fw ms", "t_dw ms", "t_dy ms");
  for (std::size_t u = 0; u < p.units.size(); ++u)
    fmt::print("{:<48} {:>10.3f} {:>10.3f} {:>10.3f}\n", p.units[u], p.t_fw[u], p.t_dw[u], p.t_dy[u]);
  const double bwd = p.t_bwd_full(), full = p.full_step_ms();
  fmt::print(
      "{} units; forward {:.2f} ms ({:.2f} with every unit frozen), full backward {:.2f} ms (forward is "
      "{:.1f}% of a full step)\n",
      p.units.size(), p.t_fwd, p.t_fwd_frozen, bwd, 100 * p.t_fwd / full);
  p.save(a.out);
  fmt::print("wrote {} ({} at {}x{}, batch {}, {} classes, {} threads, {}, {}, {})\n", a.out, p.key.model,
             p.key.input_size, p.key.input_size, p.key.batch, p.key.num_classes, p.key.threads, p.key.cpu,
             p.key.optimizer, p.key.precision);
  return 0;
}

}  // namespace elastic::cli
