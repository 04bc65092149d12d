// `elastic eval`: a trained model on a dataset's test split: top-1 and top-5
// accuracy, the mean loss, per-class accuracy and the confusion matrix, as
// JSON on stdout; with --out DIR also DIR/eval.json and DIR/confusion.png.
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "driver/driver.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/data.hpp"
#include "elastic/io/durable.hpp"

#ifndef ELASTIC_PLOT_SCRIPT
#define ELASTIC_PLOT_SCRIPT "scripts/plot"
#endif

namespace elastic::cli {

namespace fs = std::filesystem;
using nlohmann::json;

void add_model_file_options(CLI::App& c, ModelFileArgs& a) {
  c.add_option("--weights", a.weights, "model.safetensors (or a checkpoint) of a trained model")->required();
  c.add_option("--model_name", a.model_name, "for files that do not describe their model: resnet50, vgg16, ...");
  c.add_option("--num_classes", a.num_classes, "for files that do not describe their model: classes of the head")
      ->check(cli::positive);
  c.add_option("--input_size", a.input_size, "for files that do not describe their model: image side in pixels")
      ->check(cli::in_range(16, 4096));
}

void add_eval_options(CLI::App& c, EvalArgs& a) {
  c.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  add_model_file_options(c, a.model);
  c.add_option("--dataset_name", a.dataset_name,
               "caltech_birds2011, oxford_iiit_pet, stanford_dogs, image_folder or fashion_mnist")
      ->required();
  c.add_option("--data_dir", a.data_dir, "dataset directory (fashion_mnist: Debian's package directory by default)");
  c.add_option("--classes", a.classes, "keep only these 0-based classes, relabelled in order, e.g. 5-9");
  c.add_option("--batch_size", a.batch_size, "images per forward pass")->capture_default_str()->check(cli::positive);
  c.add_option("--threads", a.threads, "kernel threads (0: all cores)")
      ->capture_default_str()
      ->check(cli::non_negative);
  c.add_option("--workers", a.workers, "image decoding threads")->capture_default_str()->check(cli::non_negative);
  c.add_option("--out", a.out, "also write DIR/eval.json and the confusion matrix as DIR/confusion.png");
}

namespace {
// Rank of `label` among a row of logits: how many classes come before it
// (a higher logit, or an equal one at a lower index, as argmax breaks ties).
std::int64_t rank_of(const float* row, std::int64_t classes, std::int64_t label) {
  std::int64_t r = 0;
  for (std::int64_t k = 0; k < classes; ++k) r += row[k] > row[label] || (row[k] == row[label] && k < label);
  return r;
}
}  // namespace

int run_eval(const EvalArgs& a) {
  data::DatasetOptions dopt;
  if (!a.classes.empty()) dopt.classes = data::parse_class_list(a.classes);
  const data::Dataset d = data::open_dataset(a.dataset_name, a.data_dir, dopt);
  Context ctx(a.threads);
  OpenedModel opened = open_model_file(a.model, ctx, a.batch_size);
  Model& m = opened.model;
  const std::int64_t C = m.num_classes;
  if (d.num_classes() > C)
    usage_fail("'{}' holds a model of {} classes but {} has {}: give --classes to evaluate a subset", a.model.weights,
               C, d.name, d.num_classes());
  std::vector<std::string> names = opened.info.class_names;

  data::LoaderOptions lo = data::loader_options_for(m, false, 0);
  lo.workers = a.workers;
  data::Loader loader(d.test, lo);
  loader.warn = [](const std::string& w) { fmt::print(stderr, "warning: {}\n", w); };
  std::vector<std::vector<std::int64_t>> confusion(std::size_t(C), std::vector<std::int64_t>(std::size_t(C), 0));
  std::int64_t images = 0, top1 = 0, top5 = 0;
  double loss_sum = 0;
  Stopwatch clock;
  data::infer(m, loader, [&](const data::Batch& batch, const Tensor& logits) {
    const auto& loss = m.loss_node();
    if (loss.count() == 0) return;
    loss_sum += loss.loss() * double(loss.count());
    for (std::int64_t i = 0; i < m.batch(); ++i) {
      const std::int32_t label = batch.labels[std::size_t(i)];
      if (label < 0) continue;  // padding or a skipped file
      const float* row = logits.data() + i * C;
      std::int64_t best = 0;
      for (std::int64_t k = 1; k < C; ++k)
        if (row[k] > row[best]) best = k;
      const std::int64_t r = rank_of(row, C, label);
      ++images;
      top1 += r == 0;
      top5 += r < 5;
      ++confusion[std::size_t(label)][std::size_t(best)];
    }
  });
  const double seconds = clock.elapsed_ms() / 1000;
  if (images == 0) fail("{}: no test image could be evaluated", d.name);

  json per_class = json::array();
  for (std::int64_t c = 0; c < C; ++c) {
    std::int64_t n = 0;
    for (const auto v : confusion[std::size_t(c)]) n += v;
    per_class.push_back(
        {{"class", names[std::size_t(c)]},
         {"images", n},
         {"accuracy", n ? json(100.0 * double(confusion[std::size_t(c)][std::size_t(c)]) / double(n)) : json()}});
  }
  const json out{{"weights", a.model.weights},
                 {"model_name", opened.info.model_name},
                 {"dataset_name", d.name},
                 {"images", images},
                 {"top1_accuracy", 100.0 * double(top1) / double(images)},
                 {"top5_accuracy", 100.0 * double(top5) / double(images)},
                 {"loss", loss_sum / double(images)},
                 {"images_per_s", double(images) / seconds},
                 {"class_names", names},
                 {"per_class", per_class},
                 {"confusion", confusion}};
  fmt::print("{}\n", out.dump());
  std::fflush(stdout);
  if (!a.out.empty()) {
    const fs::path dir(a.out);
    fs::create_directories(dir);
    io::write_durably(dir / "eval.json", out.dump(1) + "\n");
    const char* script = std::getenv("ELASTIC_PLOT");
    const std::string plot = script ? script : ELASTIC_PLOT_SCRIPT;
    if (!fs::exists(plot)) fail("cannot draw the confusion matrix: the plotting script '{}' is missing", plot);
    const std::string cmd = fmt::format("/usr/bin/python3 '{}' --confusion '{}' --out '{}'", plot,
                                        (dir / "eval.json").string(), (dir / "confusion").string());
    if (std::system(cmd.c_str()) != 0) fail("'{}' failed", cmd);
  }
  return 0;
}

}  // namespace elastic::cli
