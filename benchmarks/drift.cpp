// Drift, for real: elastic training of MobileNetV2 (32x32, batch 32, 2
// threads) on Fashion-MNIST classes 5-9, as the demo fine-tunes it (lr 0.003,
// frozen batch-norm statistics, re-selection every epoch), at a rho or against
// a deadline, while another process spins on one of the two cores for the
// middle third of the run's steps (started and stopped here; it ends itself
// after 15 minutes in any case). Prints one JSON line per selection (predicted
// and measured share, rho, why it was solved) and one for the run: training
// time against the deadline.
// Usage: drift WEIGHTS|- rho|deadline VALUE [epochs] [steps_per_epoch] [hog|nohog] [adapt|noadapt]
// (noadapt: the time controller keeps 2 kernel threads throughout; adapt, the
// default, lets it move to 1 while that is faster: thread switches go to stderr.)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include "elastic/data.hpp"
#include "elastic/io/weights.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/train/trainer.hpp"

using namespace elastic;

namespace {

// A child process spinning on the last core until killed (or 15 minutes pass).
pid_t start_hog() {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN)) - 1, &set);
  ::sched_setaffinity(0, sizeof(set), &set);
  const auto end = std::chrono::steady_clock::now() + std::chrono::minutes(15);
  volatile std::uint64_t spin = 0;
  while (std::chrono::steady_clock::now() < end)
    for (int i = 0; i < 1000000; ++i) spin = spin + 1;
  ::_exit(0);
}

void stop_hog(pid_t& pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  pid = -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: drift WEIGHTS|- rho|deadline VALUE [epochs] [steps_per_epoch] [hog|nohog] [adapt|noadapt]\n");
    return 2;
  }
  const std::string weights = argv[1], mode = argv[2];
  const double value = std::atof(argv[3]);
  const int epochs = argc > 4 ? std::atoi(argv[4]) : 6;
  const std::int64_t cap = argc > 5 && std::atoll(argv[5]) > 0 ? std::atoll(argv[5]) : INT64_MAX;
  const bool hog = argc <= 6 || std::string(argv[6]) == "hog";
  const bool adapt = argc <= 7 || std::string(argv[7]) != "noadapt";
  pid_t hog_pid = -1;
  try {
    if (mode != "rho" && mode != "deadline") usage_fail("mode '{}' is not rho or deadline", mode);
    const data::Dataset d = data::open_dataset("fashion_mnist", "", {.classes = data::parse_class_list("5-9")});
    Context ctx(2);
    Model m = build_model("mobilenetv2", ctx, {.num_classes = 5, .input_size = 32, .batch = 32, .seed = 1});
    if (weights != "-") io::load_weights(m.params(), weights, {.skip_prefixes = m.head_prefixes});
    auto lo = data::loader_options_for(m, true, 1);
    lo.augment = false;
    data::Loader loader(d.train, lo);
    data::CappedLoader source{loader, cap};
    const std::int64_t steps = source.batches(m.batch(), true);
    loader.start_epoch(0, false);
    loader.load(m, 0);
    const auto opt = make_optimizer("sgd", m.name, std::nullopt);
    const Profile p = TimingProfiler<>().run(m, ctx.threads(), std::vector<bool>(m.params().size(), true), *opt);
    TrainerOptions o{.type = TrainType::elastic_training, .num_epochs = epochs, .interval = 1, .learning_rate = 0.003f};
    o.control.adapt_threads = adapt;
    if (mode == "rho")
      o.rho = value;
    else
      o.deadline_s = value;
    Trainer t(m, o, steps, p);
    const std::int64_t total = steps * epochs;
    std::int64_t hog_from = hog ? total / 3 : -1, hog_to = hog ? 2 * total / 3 : -1;
    int thread_switches = 0;
    t.log = [&](const std::string& line) {
      if (line.starts_with("threads ")) ++thread_switches;
      if (line.find("cannot be met") != std::string::npos || line.find("corrected") != std::string::npos ||
          line.starts_with("threads "))
        fmt::print(stderr, "{}\n", line);
    };
    t.on_step = [&](std::uint64_t step, double, std::int64_t, std::int64_t) {
      if (std::int64_t(step) + 1 == hog_from) hog_pid = start_hog();
      if (std::int64_t(step) + 1 == hog_to) stop_hog(hog_pid);
    };
    t.on_selection = [&](const SelectionRecord& r) {
      fmt::print(R"({{"selection_step": {}, "epoch": {}, "reason": "{}", "rho": {:.4f}, "predicted_share": {:.4f}, )"
                 R"("measured_share": {:.4f}, "full_step_ms": {:.2f}, "steps": {}, "hog": {}, "threads_at_end": {}}})"
                 "\n",
                 r.step, r.epoch + 1, r.reason, r.rho, r.predicted_share, r.measured_share, r.full_step_ms, r.steps,
                 std::int64_t(r.step) >= hog_from && std::int64_t(r.step) < hog_to, ctx.threads());
      std::fflush(stdout);
    };
    double train_s = 0;
    for (int e = 0; e < epochs; ++e) train_s += t.train_epoch(source, e).train_ms / 1000;
    stop_hog(hog_pid);
    fmt::print(R"({{"mode": "{}", "value": {}, "epochs": {}, "steps": {}, "hog_steps": [{}, {}], "train_s": {:.2f}, )"
               R"("of_deadline": {}, "adapt_threads": {}, "thread_switches": {}}})"
               "\n",
               mode, value, epochs, total, hog_from, hog_to, train_s,
               mode == "deadline" ? fmt::format("{:.3f}", train_s / value) : "null", adapt, thread_switches);
  } catch (const std::exception& e) {
    stop_hog(hog_pid);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
