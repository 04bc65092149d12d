// Trains the small CNN on Fashion-MNIST from scratch with SGDW and a cosine
// schedule: the first end-to-end run of the engine on a real dataset.
// Prints one line per epoch (train loss/accuracy, test loss/accuracy, epoch
// time without evaluation) and exits non-zero if --min_accuracy is not reached.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "driver/driver.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/data/idx.hpp"
#include "elastic/models/small_cnn.hpp"
#include "elastic/optim/schedule.hpp"
#include "elastic/train/loop.hpp"
#include "elastic/train/step.hpp"

using namespace elastic;

int main(int argc, char** argv) {
  CLI::App app{"Train a small CNN on Fashion-MNIST with the elastic engine"};
  std::string data_dir = data::kFashionMnistDir.string();
  int epochs = 4, threads = 0;
  std::int64_t batch = 64, train_limit = 0;
  float lr = 0.05f, weight_decay = 5e-4f, min_accuracy = 0;
  std::uint64_t seed = 1;
  app.add_option("--data_dir", data_dir, "directory with the Fashion-MNIST IDX files (raw or .gz)")
      ->capture_default_str();
  app.add_option("--num_epochs", epochs, "epochs")->capture_default_str()->check(elastic::cli::positive);
  app.add_option("--batch_size", batch, "training batch size")->capture_default_str()->check(elastic::cli::positive);
  app.add_option("--learning_rate", lr, "initial learning rate (cosine-decayed to 0)")
      ->capture_default_str()
      ->check(elastic::cli::positive);
  app.add_option("--weight_decay", weight_decay, "decoupled weight decay")
      ->capture_default_str()
      ->check(elastic::cli::non_negative);
  app.add_option("--threads", threads, "kernel threads (0 = all cores)")
      ->capture_default_str()
      ->check(elastic::cli::non_negative);
  app.add_option("--seed", seed, "seed of initialization, shuffling and dropout")->capture_default_str();
  app.add_option("--train_limit", train_limit, "use only the first N training images (0 = all)")
      ->capture_default_str()
      ->check(elastic::cli::non_negative);
  app.add_option("--min_accuracy", min_accuracy, "exit with status 1 if the final test accuracy (%) is lower")
      ->capture_default_str();
  return elastic::cli::run_main(app, argc, argv, [&] {
    Context ctx(threads);
    auto ds = data::load_fashion_mnist(data_dir);
    if (train_limit > 0 && train_limit < ds.train.size()) {
      ds.train.labels.resize(static_cast<std::size_t>(train_limit));
      ds.train.pixels.resize(static_cast<std::size_t>(train_limit * ds.train.height * ds.train.width));
    }
    Model model = small_cnn(ctx, {.batch = batch, .num_classes = 10, .seed = seed});
    // Fashion-MNIST's pixel mean and standard deviation (of x / 255) over the training set.
    ImageBatcher train(ds.train, 0.2860f, 0.3530f, seed), test(ds.test, 0.2860f, 0.3530f, seed);
    SGDW opt({.momentum = 0.9f, .weight_decay = weight_decay});
    const std::int64_t steps_per_epoch = train.batches(batch, true);
    const CosineDecay schedule{lr, steps_per_epoch * epochs};
    const std::vector<bool> all(model.params().size(), true);
    model.graph->select(all);
    fmt::print("small_cnn: {} params in {} tensors; {} train / {} test images; batch {}; {} threads\n",
               model.params().total_elements(), model.params().size(), ds.train.size(), ds.test.size(), batch,
               ctx.threads());
    std::uint64_t step = 0;
    double total_ms = 0, accuracy = 0;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      train.start_epoch(static_cast<std::uint64_t>(epoch), true);
      Metrics m;
      Stopwatch sw;
      {
        TrainStep train_step(model, opt);
        for (std::int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
          train.load(model, b);
          const auto& loss = train_step(step, all, schedule(static_cast<std::int64_t>(step)));
          m.add(loss.loss(), loss.correct(), loss.count());
        }
      }
      const double ms = sw.elapsed_ms();
      total_ms += ms;
      const Metrics t = evaluate(model, test);
      accuracy = 100.0 * t.accuracy();
      fmt::print("epoch {}/{}: train loss {:.4f} acc {:.2f}% | test loss {:.4f} acc {:.2f}% | {:.1f} s, {:.0f} img/s\n",
                 epoch + 1, epochs, m.loss(), 100.0 * m.accuracy(), t.loss(), accuracy, ms / 1000,
                 double(m.count) / (ms / 1000));
      std::fflush(stdout);
    }
    fmt::print("final test accuracy {:.2f}%, training time {:.1f} s ({:.1f} s per epoch)\n", accuracy, total_ms / 1000,
               total_ms / 1000 / epochs);
    if (accuracy < min_accuracy) {
      fmt::print(stderr, "test accuracy {:.2f}% is below --min_accuracy {:.2f}%\n", accuracy, min_accuracy);
      return 1;
    }
    return 0;
  });
}
