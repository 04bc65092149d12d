// The `elastic` command: one binary, one subcommand per job.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands/data.hpp"
#include "commands/step.hpp"
#include "driver/driver.hpp"

int main(int argc, char** argv) {
  CLI::App app{"ElasticTrainer: fine-tune pretrained networks by training only the tensors that matter"};
  app.require_subcommand(1);
  elastic::cli::StepArgs step;
  elastic::cli::add_step_command(app, step);
  elastic::cli::DataArgs data;
  elastic::cli::add_data_command(app, data);
  elastic::cli::TrainArgs train;
  elastic::cli::add_train_options(
      *app.add_subcommand("train", "fine-tune a model on a dataset with one of the training types"), train);
  elastic::cli::EvalArgs eval;
  elastic::cli::add_eval_options(
      *app.add_subcommand("eval", "a trained model on a dataset's test split: accuracy, per class, confusion matrix"),
      eval);
  elastic::cli::PredictArgs predict;
  elastic::cli::add_predict_options(
      *app.add_subcommand("predict", "the top classes of images (files or folders) by a trained model"), predict);
  elastic::cli::ProfileArgs profile;
  elastic::cli::add_profile_options(
      *app.add_subcommand("profile", "measure a model's per-tensor backward times; writes the profile train reads"),
      profile);
  return elastic::cli::run_main(app, argc, argv, [&] {
    if (app.got_subcommand("step")) return elastic::cli::run_step(step);
    if (app.got_subcommand("data")) return elastic::cli::run_data(data);
    if (app.got_subcommand("profile")) return elastic::cli::run_profile(profile);
    if (app.got_subcommand("eval")) return elastic::cli::run_eval(eval);
    if (app.got_subcommand("predict")) return elastic::cli::run_predict(predict);
    train.command = elastic::cli::quote_command(argc, argv);
    return elastic::cli::run_train(train);
  });
}
