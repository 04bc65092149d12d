// `elastic predict`: the top classes of images by a trained model, decoded
// and preprocessed exactly as evaluation does (the same loader, without
// augmentation), in batches.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "driver/driver.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/data.hpp"

namespace elastic::cli {

namespace fs = std::filesystem;
using nlohmann::json;

void add_predict_options(CLI::App& c, PredictArgs& a) {
  c.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  add_model_file_options(c, a.model);
  c.add_option("images", a.images, "image files (JPEG, PNG) or folders of them")->required();
  c.add_option("--top_k", a.top_k, "classes shown per image")->capture_default_str()->check(cli::positive);
  c.add_flag("--json", a.json, "one JSON object per image instead of a table");
  c.add_option("--batch_size", a.batch_size, "images per forward pass")->capture_default_str()->check(cli::positive);
  c.add_option("--threads", a.threads, "kernel threads (0: all cores)")
      ->capture_default_str()
      ->check(cli::non_negative);
  c.add_option("--workers", a.workers, "image decoding threads")->capture_default_str()->check(cli::non_negative);
}

// The files named: each file as given, each folder's image files (sorted).
std::vector<fs::path> image_files(const std::vector<std::string>& args) {
  std::vector<fs::path> out;
  for (const auto& a : args) {
    const fs::path p(a);
    if (fs::is_directory(p)) {
      std::vector<fs::path> in;
      for (const auto& e : fs::directory_iterator(p))
        if (e.is_regular_file() && data::is_image_file(e.path())) in.push_back(e.path());
      if (in.empty()) usage_fail("'{}' holds no .jpg, .jpeg or .png file", a);
      std::sort(in.begin(), in.end());
      out.insert(out.end(), in.begin(), in.end());
    } else if (fs::exists(p)) {
      out.push_back(p);
    } else {
      usage_fail("'{}' does not exist", a);
    }
  }
  return out;
}

int run_predict(const PredictArgs& a) {
  data::Split split;
  split.files = image_files(a.images);
  split.labels.assign(split.files.size(), 0);
  Context ctx(a.threads);
  OpenedModel opened = open_model_file(a.model, ctx, a.batch_size);
  Model& m = opened.model;
  const std::int64_t C = m.num_classes, k = std::min<std::int64_t>(a.top_k, C);

  data::LoaderOptions lo = data::loader_options_for(m, false, 0);
  lo.workers = a.workers;
  lo.skip_bad = true;  // an image that cannot be decoded is reported; the others are still predicted
  data::Loader loader(split, lo);
  std::int64_t failed = 0;
  loader.warn = [&](const std::string& w) {
    ++failed;
    fmt::print(stderr, "error: {}\n", w.starts_with("skipping ") ? w.substr(9) : w);
  };
  std::vector<std::int64_t> order(static_cast<std::size_t>(C));
  std::vector<double> prob(static_cast<std::size_t>(C));
  std::int64_t predicted = 0;
  Stopwatch clock;
  data::infer(m, loader, [&](const data::Batch& batch, const Tensor& logits) {
    for (std::int64_t i = 0; i < batch.count; ++i) {
      if (batch.labels[std::size_t(i)] < 0) continue;  // not decoded: reported by warn
      const float* row = logits.data() + i * C;
      const double top = *std::max_element(row, row + C);
      double sum = 0;
      for (std::int64_t c = 0; c < C; ++c) sum += prob[std::size_t(c)] = std::exp(double(row[c]) - top);
      for (auto& p : prob) p /= sum;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](std::int64_t x, std::int64_t y) {
        return prob[std::size_t(x)] > prob[std::size_t(y)] || (prob[std::size_t(x)] == prob[std::size_t(y)] && x < y);
      });
      const std::string file = split.files[std::size_t(batch.index * m.batch() + i)].string();
      ++predicted;
      if (a.json) {
        json top_k = json::array();
        for (std::int64_t j = 0; j < k; ++j) {
          const auto c = std::size_t(order[std::size_t(j)]);
          top_k.push_back({{"class", opened.info.class_names[c]}, {"label", c}, {"probability", prob[c]}});
        }
        fmt::print("{}\n", json{{"file", file}, {"top", top_k}}.dump());
      } else {
        std::string line = file;
        for (std::int64_t j = 0; j < k; ++j) {
          const auto c = std::size_t(order[std::size_t(j)]);
          line += fmt::format("  {} {:.1f}%", opened.info.class_names[c], 100 * prob[c]);
        }
        fmt::print("{}\n", line);
      }
    }
  });
  const double seconds = clock.elapsed_ms() / 1000;
  fmt::print(stderr, "{} images predicted in {:.2f} s: {:.1f} images/s{}\n", predicted, seconds,
             double(predicted) / std::max(seconds, 1e-9),
             failed ? fmt::format("; {} could not be decoded", failed) : std::string());
  return failed ? 1 : 0;
}

}  // namespace elastic::cli
