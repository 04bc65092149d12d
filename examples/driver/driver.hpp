// The shared driver of the `elastic` command and of the example mains:
// `train` (the reference's flags and defaults plus ours) and `profile`.
// Compiled once into the static library elastic_driver, so that each example
// main is a few lines (it includes only driver/example_main.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "driver/example_main.hpp"
#include "elastic/io/model_info.hpp"
#include "elastic/models/model.hpp"

namespace elastic::cli {

// Checks of numeric flags whose messages give the bounds as plain numbers
// ("--batch_size: 0 is not > 0"), which CLI11's own ranges do not.
inline CLI::Validator numeric_bound(std::string what, double lo, double hi, bool lo_open) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(text, v)) return fmt::format("'{}' is not a number", text);
        if (lo_open ? !(v > lo) : !(v >= lo)) return fmt::format("{} is not {} {}", text, lo_open ? ">" : ">=", lo);
        if (!(v <= hi)) return fmt::format("{} is not <= {}", text, hi);
        return {};
      },
      std::move(what));
}
inline const CLI::Validator positive = numeric_bound("> 0", 0, HUGE_VAL, true);
inline const CLI::Validator non_negative = numeric_bound(">= 0", 0, HUGE_VAL, false);
inline CLI::Validator in_range(double lo, double hi) {
  return numeric_bound(fmt::format("in [{}, {}]", lo, hi), lo, hi, false);
}

// --precision fp32|bf16, the same on every command that builds a model.
inline void add_precision_option(CLI::App& c, std::string& precision) {
  c.add_option("--precision", precision,
               "fp32, or bf16: convolutions, linear layers and attention in bf16 with fp32 accumulation, "
               "activations stored in bf16, weights, gradients, optimizer state and loss in fp32 (needs a CPU "
               "with avx512_bf16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
}
// The precision of a run, refused with one line when this CPU cannot run it.
inline Precision run_precision(const std::string& precision) {
  const Precision p = parse_precision(precision);
  require_precision(p);
  return p;
}

struct TrainArgs {
  // The reference's flags, with its defaults.
  std::string model_name = "resnet50";
  std::string dataset_name = "caltech_birds2011";
  std::string train_type = "elastic_training";
  std::int64_t input_size = 224, batch_size = 4, num_classes = 0;  // num_classes 0: the dataset's
  std::string optimizer;                                           // empty: sgd, adam for vit
  float learning_rate = 1e-4f;
  std::optional<float> weight_decay;  // unset: 5e-4 with sgd, none with adam
  int num_epochs = 12;
  std::string run_name = "myexp";
  bool save_model = false, save_txt = false;
  int interval = 4;
  double rho = 0.533;
  bool rho_given = false;                   // --rho was on the command line
  std::optional<double> deadline_s;         // --deadline
  std::optional<double> memory_budget_mib;  // --memory_budget
  std::string time_control = "on";
  // Ours.
  std::string data_dir, weights, log_dir = "logs", profile, classes;
  std::string head;  // --head: an ONNX model's classifier
  int threads = 0, workers = 1;
  std::uint64_t seed = 1;
  bool resume = false, skip_bad = false;
  bool bn_batch_stats = false;
  bool no_augment = false;           // batch norm on batch statistics (training from scratch)
  std::int64_t steps_per_epoch = 0;  // 0: the whole training split
  std::string precision = "fp32";    // --precision
  std::optional<float> dropout;      // unset: the model's default (0.2, vit 0)
  // Mid-epoch checkpoints: every N steps ("500") or every so much training
  // time ("10m", "90s"); "0": at epoch ends only.
  std::string checkpoint_every = "10m";
  std::string command;  // the command line as typed, for the resume hint after a signal
};

struct ProfileArgs {
  std::string model_name = "resnet50", out, optimizer, precision = "fp32", head;
  std::int64_t input_size = 224, batch_size = 4, num_classes = 0;
  int threads = 0, warmup = 3, repeats = 10;
};

// The model --model_name names: a zoo model (resnet50, vgg16, mobilenetv2, vit) or
// an ONNX classifier (a path ending in .onnx, its weights loaded from the file;
// `head` names its classifier, empty: the Gemm feeding the output). `log`
// receives one line saying what an ONNX import built.
Model build_named_model(const std::string& name, Context& ctx, const ModelOptions& o, const std::string& head = {},
                        const std::function<void(const std::string&)>& log = {});
bool is_onnx_model(const std::string& name);

// Adds every train flag to `c` (a subcommand or an example's app).
void add_train_options(CLI::App& c, TrainArgs& a);
void add_profile_options(CLI::App& c, ProfileArgs& a);

// Each returns the process exit code; errors propagate as exceptions
// (elastic::UsageError for wrong flags).
int run_train(const TrainArgs& a);
int run_profile(const ProfileArgs& a);

// The one mapping from outcomes to exit codes of every command: parses the
// command line, then returns run()'s own code (0 done, 1 a failed check, 128 +
// signal number when stopped); 0 for --help; 2 for wrong usage (a flag CLI11
// refuses, or a UsageError), printed as one line naming the flag; 1 for any
// other error, printed as "error: ...".
int run_main(CLI::App& app, int argc, char** argv, const std::function<int()>& run);

// The command line as one shell-quotable string (words with anything but
// [A-Za-z0-9_./=:,+-] single-quoted).
std::string quote_command(int argc, char** argv);

// A trained model's weight file and what to do when it does not describe its
// model (files written before descriptions existed): these flags.
struct ModelFileArgs {
  std::string weights, model_name;
  std::int64_t num_classes = 0, input_size = 0;  // 0: from the file
};
void add_model_file_options(CLI::App& c, ModelFileArgs& a);

struct OpenedModel {
  io::ModelInfo info;
  Model model;
};
// The model a weight file describes (flags given beside a description must
// agree with it), built for batches of `batch` with the file's preprocessing,
// every param and buffer loaded from the file (a file of another model fails,
// naming the tensors that do not fit).
OpenedModel open_model_file(const ModelFileArgs& a, Context& ctx, std::int64_t batch);

struct EvalArgs {
  ModelFileArgs model;
  std::string dataset_name, data_dir, classes, out;
  std::int64_t batch_size = 32;
  int threads = 0, workers = 1;
};
void add_eval_options(CLI::App& c, EvalArgs& a);
// `elastic eval`: top-1/top-5, per-class accuracy and the confusion matrix of
// a model on a dataset's test split, as JSON on stdout.
int run_eval(const EvalArgs& a);

struct PredictArgs {
  ModelFileArgs model;
  std::vector<std::string> images;
  std::int64_t top_k = 5, batch_size = 8;
  bool json = false;
  int threads = 0, workers = 1;
};
void add_predict_options(CLI::App& c, PredictArgs& a);
// `elastic predict`: per image its top-k classes by name with probabilities,
// as a table or JSON lines; an image that cannot be decoded is one line on
// stderr naming it, the others are still predicted, and the exit code is 1.
int run_predict(const PredictArgs& a);

// The description written into a run's weight files: the model as built,
// its classes named after the dataset's (a head larger than the dataset has
// its extra classes named "class N").
io::ModelInfo model_info(const Model& m, const std::string& model_name, std::int64_t input_size,
                         const std::vector<std::string>& dataset_classes);

}  // namespace elastic::cli
