// `elastic data`: opens a dataset, prints its class and split sizes as one JSON
// object, and with --verify decodes every image. Exit code 0 when the dataset
// is usable, 1 with a message naming the missing or malformed file otherwise.
#pragma once

#include <atomic>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "elastic/data/datasets.hpp"

namespace elastic::cli {

struct DataArgs {
  std::string dataset_name, data_dir, classes;
  bool verify = false;
};

inline void add_data_command(CLI::App& app, DataArgs& a) {
  auto* c = app.add_subcommand("data", "check a dataset: class and split sizes as JSON; --verify decodes every image");
  c->add_option("--dataset_name", a.dataset_name,
                "caltech_birds2011, oxford_iiit_pet, stanford_dogs, image_folder or fashion_mnist")
      ->required();
  c->add_option("--data_dir", a.data_dir,
                fmt::format("dataset directory (fashion_mnist defaults to {})", data::kFashionMnistDir.string()));
  c->add_option("--classes", a.classes, "keep only these 0-based classes, relabelled in order, e.g. 0-4 or 1,3,7");
  c->add_flag("--verify", a.verify, "decode every image and list the files that fail");
}

inline int run_data(const DataArgs& a) {
  data::DatasetOptions options;
  if (!a.classes.empty()) options.classes = data::parse_class_list(a.classes);
  const data::Dataset d = data::open_dataset(a.dataset_name, a.data_dir, options);
  nlohmann::json out{
      {"dataset", d.name}, {"classes", d.num_classes()}, {"train", d.train.size()}, {"test", d.test.size()}};
  std::vector<std::string> failed, reasons;
  if (a.verify) {
    std::int64_t ok = 0;
    for (const data::Split* s : {&d.train, &d.test}) {
      std::vector<std::string> error(static_cast<std::size_t>(s->size()));
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : ok)
      for (std::int64_t i = 0; i < s->size(); ++i) {
        try {
          s->image(i);
          ++ok;
        } catch (const std::exception& e) {
          error[static_cast<std::size_t>(i)] = e.what();
        }
      }
      for (std::int64_t i = 0; i < s->size(); ++i)
        if (!error[static_cast<std::size_t>(i)].empty()) {
          failed.push_back(s->name(i));
          reasons.push_back(error[static_cast<std::size_t>(i)]);
        }
    }
    out["decoded"] = ok;
    out["failed"] = failed;
  }
  fmt::print("{}\n", out.dump());
  if (failed.empty()) return 0;
  fmt::print(stderr, "error: {} of {} images failed to decode; the first: {}\n", failed.size(),
             d.train.size() + d.test.size(), reasons.front());
  return 1;
}

}  // namespace elastic::cli
