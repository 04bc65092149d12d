// Times a model's forward pass and full training step (forward, backward of
// every param, SGDW update) at a given batch and input size, and prints one
// JSON object: the engine's half of benchmarks/compare_pytorch, with oneDNN's
// sgemm rate on this machine. `select RHO FILE` profiles the model, scores the
// tensors on the random batch, selects at RHO as elastic training does and
// writes the selected params' names to FILE (PyTorch trains the same ones);
// `train FILE` times the step of that selection alone, so the process's peak
// memory is the elastic step's. `kernels [FILE]` times full training steps (or
// those of the selection in FILE) and the optimizer's share of them, then runs
// one more step with oneDNN's verbose log on, between marker lines, for
// benchmarks/kernel_report to attribute. `kernels` and `full` also report the
// CPU's multiply-add peak (fma_peak_gflops: what no kernel can exceed).
// `probe` times the importance probe `steps` times in a row with the model's
// default optimizer, and a full forward and backward; `probe spill` keeps the
// weights the probe moves in a temporary file instead of in memory. `--precision bf16`
// (anywhere) builds the model in bf16 and adds oneDNN's bf16 matmul rate. MODEL is a
// zoo model or an ONNX classifier (PATH.onnx, its head re-created with 1000 classes).
// Usage: model_step MODEL [batch] [input_size] [threads] [steps] [warmup]
//                   [full | select RHO FILE | train FILE | kernels [FILE] | probe [spill]] [--precision fp32|bf16]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "elastic/core/resident.hpp"
#include "elastic/core/timer.hpp"
#include "elastic/method/dp_selector.hpp"
#include "elastic/method/importance_evaluator.hpp"
#include "elastic/method/time_control.hpp"
#include "elastic/method/timing_profiler.hpp"
#include "elastic/method/training_memory.hpp"
#include "elastic/method/units.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/onnx/import.hpp"
#include "elastic/optim/optimizer.hpp"
#include "elastic/train/step.hpp"

using namespace elastic;

namespace {
template <class F>
Summary measure(int warmup, int steps, F run) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    Stopwatch sw;
    run();
    ms.push_back(sw.elapsed_ms());
  }
  return summarize(ms);
}

std::string json(const Summary& s) {
  return fmt::format(R"({{"median_ms": {:.3f}, "min_ms": {:.3f}, "max_ms": {:.3f}}})", s.median, s.min, s.max);
}

// The process's measured peak resident memory next to TrainingMemory's prediction.
std::string json(const MemoryBreakdown& predicted) {
  const double measured = double(peak_resident_bytes()) / kMiB, p = double(predicted.total()) / kMiB;
  return fmt::format(R"({{"peak_rss_mib": {:.1f}, "predicted_mib": {:.1f}, "error": {:.4f}, "breakdown": "{}"}})",
                     measured, p, (p - measured) / measured, predicted.describe());
}

// oneDNN's matmul peak on this machine: the best median (of 10) over square
// sizes 1024, 1536 and 2048, in GFLOP/s; f32, or bf16 operands with an f32
// result (how the bf16 graph's products run).
double gemm_gflops(Context& ctx, dnnl::memory::data_type type = dnnl::memory::data_type::f32) {
  using namespace dnnl;
  double best = 0;
  for (const memory::dim n : {1024, 1536, 2048}) {
    const memory::desc d({n, n}, type, memory::format_tag::ab),
        out({n, n}, memory::data_type::f32, memory::format_tag::ab);
    const matmul::primitive_desc pd(matmul::desc(d, d, out), ctx.engine());
    // 0.01 in either type (its bf16 is the upper half of the float's bits).
    std::vector<float> a(static_cast<std::size_t>(n * n), 0.01f), b(a), c(a.size());
    if (type == memory::data_type::bf16)
      for (auto* v : {&a, &b}) std::fill_n(reinterpret_cast<std::uint16_t*>(v->data()), n * n, std::uint16_t{0x3c24});
    memory ma(d, ctx.engine(), a.data()), mb(d, ctx.engine(), b.data()), mc(out, ctx.engine(), c.data());
    matmul mm(pd);
    const Summary t = measure(2, 10, [&] {
      mm.execute(ctx.stream(), {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
      ctx.stream().wait();
    });
    best = std::max(best, 2.0 * double(n) * double(n) * double(n) * 1e-9 / (t.median * 1e-3));
  }
  return best;
}

// The CPU's arithmetic roof: multiply-adds per second from 16 independent
// chains of 512-bit vfmadd231ps (fp32) or vdpbf16ps (bf16 pairs, fp32
// accumulation) per thread, on `threads` threads; what no kernel can exceed.
// 0 when the CPU lacks the instruction (or is not x86). The chains' sums feed
// `sink` so that the compiler keeps them.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) float lane_sum(const __m512 (&acc)[16]) {
  alignas(64) float lanes[16];
  __m512 sum = acc[0];
  for (int i = 1; i < 16; ++i) sum = _mm512_add_ps(sum, acc[i]);
  _mm512_store_ps(lanes, sum);
  float total = 0;
  for (float v : lanes) total += v;
  return total;
}
__attribute__((target("avx512f"))) float fma_chains(long iters) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
  for (long it = 0; it < iters; ++it)
    for (auto& r : acc) r = _mm512_fmadd_ps(r, a, b);
  return lane_sum(acc);
}
__attribute__((target("avx512f,avx512bf16"))) float bf16_dot_chains(long iters) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(float(i) * 1e-3f);
  // bf16 1.0 and 2^-31: the sums stay finite.
  const auto a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x30003000);
  for (long it = 0; it < iters; ++it)
    for (auto& r : acc) r = _mm512_dpbf16_ps(r, a, b);
  return lane_sum(acc);
}
#endif
double fma_peak_gflops(int threads, bool bf16) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512f") || (bf16 && !__builtin_cpu_supports("avx512bf16"))) return 0.0;
  constexpr long iters = 4'000'000;
  // Per thread and iteration: 16 instructions of 16 lanes, 2 flops a lane (x2 pairs for bf16).
  const double flop = double(threads) * double(iters) * 16 * 16 * 2 * (bf16 ? 2 : 1);
  double best = 0;
  float sink = 0;
  for (int r = 0; r < 5; ++r) {
    Stopwatch sw;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += bf16 ? bf16_dot_chains(iters) : fma_chains(iters);
    best = std::max(best, flop * 1e-9 / (sw.elapsed_ms() * 1e-3));
  }
  if (!std::isfinite(sink)) fail("fma_peak_gflops: the chains overflowed");
  return best;
#else
  (void)threads;
  (void)bf16;
  return 0.0;
#endif
}
}  // namespace

int main(int raw_argc, char** raw_argv) {
  // `--precision X` may come anywhere; the positional arguments are the rest.
  std::vector<char*> positional;
  Precision precision = Precision::fp32;
  for (int i = 0; i < raw_argc; ++i) {
    if (std::string_view(raw_argv[i]) == "--precision" && i + 1 < raw_argc) {
      try {
        precision = parse_precision(raw_argv[++i]);
        require_precision(precision);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
      }
      continue;
    }
    positional.push_back(raw_argv[i]);
  }
  const int argc = static_cast<int>(positional.size());
  char** argv = positional.data();
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: model_step MODEL [batch] [input_size] [threads] [steps] [warmup] "
                 "[full | select RHO FILE | train FILE | kernels [FILE] | probe [spill]]\n");
    return 2;
  }
  const std::string name = argv[1];
  const std::int64_t batch = argc > 2 ? std::atoll(argv[2]) : 4, size = argc > 3 ? std::atoll(argv[3]) : 224;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2, steps = argc > 5 ? std::atoi(argv[5]) : 10;
  const int warmup = argc > 6 ? std::atoi(argv[6]) : 3;
  try {
    Context ctx(threads);
    const ModelOptions mo{.num_classes = 1000, .input_size = size, .batch = batch, .precision = precision};
    Model m = name.ends_with(".onnx") ? onnx_import::import_model(name, ctx, mo) : build_model(name, ctx, mo);
    Rng rng(1);
    Tensor x(m.input_shape);
    for (auto& v : x.span()) v = rng.normal();
    m.graph->write(m.images, x);
    std::vector<std::int32_t> labels;
    for (std::int64_t i = 0; i < batch; ++i) labels.push_back(static_cast<std::int32_t>(rng.below(1000)));
    m.loss_node().set_labels(labels);
    SGDW opt;
    const std::vector<bool> all(m.params().size(), true);
    m.graph->select(all);
    std::uint64_t step = 0;
    const std::string mode = argc > 7 ? argv[7] : "full";
    if (mode == "select" && argc > 9) {  // profile, score and select at rho; write the selected names
      const double rho = std::atof(argv[8]);
      const Profile p = TimingProfiler<>({.warmup = 2, .repeats = 5}).run(m, ctx.threads(), all);
      const auto importance = ImportanceEvaluator<>().evaluate(m, opt, 1e-4f, ImportanceMetric::loss_drop, 0, all);
      const TimeController model(p);  // the profile's step model, uncorrected
      const Selection sel = DPSelector<>().select(model.dp_t_dw(), model.dp_t_dy(), importance, model.budget(rho));
      const std::vector<bool> mask = param_mask(selection_units(*m.graph), sel.mask, m.params().size());
      std::ofstream out(argv[9]);
      std::size_t selected = 0;
      for (std::size_t k = 0; k < mask.size(); ++k)
        if (mask[k]) {
          out << m.params()[k].name << "\n";
          ++selected;
        }
      if (!out.flush()) fail("cannot write '{}'", argv[9]);
      fmt::print(R"({{"model": "{}", "rho": {}, "selected_params": {}, "of_params": {}, "predicted_share": {:.4f}}})"
                 "\n",
                 name, rho, selected, mask.size(), model.step_ms(sel.mask) / model.full_ms());
      return 0;
    }
    // The selection written by `select`: one param name per line.
    const auto read_selection = [&](const char* path) {
      std::ifstream in(path);
      if (!in) fail("cannot open '{}'", path);
      std::vector<bool> mask(m.params().size(), false);
      for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        std::size_t k = 0;
        while (k < mask.size() && m.params()[k].name != line) ++k;
        if (k == mask.size()) fail("'{}': '{}' is not a param of {}", path, line, name);
        mask[k] = true;
      }
      return mask;
    };
    if (mode == "train" && argc > 8) {  // the step of a selection read from a file; nothing else runs
      const std::vector<bool> mask = read_selection(argv[8]);
      m.graph->select(mask);
      TrainStep train_step(m, opt);
      const Summary elastic_step = measure(warmup, steps, [&] { train_step(step++, mask, 1e-4f); });
      const TrainingMemory memory(m, opt.slot_count(), x.numel() * std::int64_t(sizeof(float)));
      std::vector<bool> units(memory.size());
      for (std::size_t u = 0; u < units.size(); ++u) units[u] = mask[std::size_t(memory.units()[u].params[0])];
      fmt::print(R"({{"model": "{}", "elastic_step": {}, "memory": {}}})"
                 "\n",
                 name, json(elastic_step), json(memory.training(units, units, units, true)));
      return 0;
    }
    if (mode == "kernels") {  // of full steps, or of the selection in FILE (`kernels FILE`)
      const std::vector<bool> mask = argc > 8 ? read_selection(argv[8]) : all;
      m.graph->select(mask);
      TrainStep train_step(m, opt);
      std::vector<double> update_ms;
      const Summary train = measure(warmup, steps, [&] {
        double ms = 0;
        train_step.forward(step++);
        train_step.backward(mask, 1e-4f, [&](std::span<const int>, const auto& update) {
          Stopwatch sw;
          update();
          ms += sw.elapsed_ms();
        });
        update_ms.push_back(ms);
      });
      // The matmul peak in the run's precision (bf16 operands for a bf16 model).
      const double gemm = gemm_gflops(ctx, activation_type(precision));
      std::fflush(stdout);
      dnnl::set_verbose(1);
      std::puts("elastic_kernels_begin");
      Stopwatch logged;
      train_step(step++, mask, 1e-4f);
      const double logged_ms = logged.elapsed_ms();
      std::puts("elastic_kernels_end");
      std::fflush(stdout);
      dnnl::set_verbose(0);
      const double peak = fma_peak_gflops(ctx.threads(), precision == Precision::bf16);
      fmt::print(
          R"({{"model": "{}", "train_step": {}, "logged_step_ms": {:.3f}, "update_ms": {:.3f}, "gemm_gflops": {:.1f}, "fma_peak_gflops": {:.1f}}})"
          "\n",
          name, json(train), logged_ms, summarize(update_ms).median, gemm, peak);
      return 0;
    }
    if (mode == "probe") {  // the importance probe, `steps` times in a row (the first pays for first touches)
      // As under a memory budget, where probes are what the model predicts: the probe's large
      // buffers leave the process when freed (otherwise a second probe's come from the heap).
      return_freed_memory();
      auto run_opt = make_optimizer("", name, std::nullopt);
      std::vector<bool> some(m.params().size(), false);
      for (std::size_t k = 0; k < some.size(); k += 3) some[k] = true;
      m.graph->select(some);
      ImportanceEvaluator<> evaluator;
      ProbeScope scope;
      if (argc > 8 && std::string_view(argv[8]) == "spill") scope.spill_dir = std::filesystem::temp_directory_path();
      std::vector<std::string> ms;
      for (int i = 0; i < steps; ++i) {
        Stopwatch sw;
        evaluator.evaluate(m, *run_opt, 1e-4f, ImportanceMetric::loss_drop, 0, some, scope);
        ms.push_back(fmt::format("{:.0f}", sw.elapsed_ms()));
      }
      const TrainingMemory memory(m, run_opt->slot_count(), x.numel() * std::int64_t(sizeof(float)));
      const std::string probe_memory =
          json(memory.probe(std::vector<bool>(memory.size(), false), ImportanceMetric::loss_drop, scope));
      m.graph->select(all);
      const Summary pass = measure(1, 2, [&] {
        m.graph->forward(true);
        m.graph->backward();
      });
      fmt::print(R"({{"model": "{}", "optimizer": "{}", "probe_ms": [{}], "full_pass_ms": {:.0f}, "memory": {}}})"
                 "\n",
                 name, run_opt->name(), fmt::join(ms, ", "), pass.median, probe_memory);
      return 0;
    }
    if (mode != "full") fail("mode '{}' is not full, select RHO FILE, train FILE, kernels or probe", mode);
    const Summary fwd = measure(warmup, steps, [&] { m.graph->forward(true); });
    TrainStep train_step(m, opt);
    const Summary train = measure(warmup, steps, [&] { train_step(step++, all, 1e-4f); });
    const TrainingMemory memory(m, opt.slot_count(), x.numel() * std::int64_t(sizeof(float)));
    const std::vector<bool> every(memory.size(), true);
    const std::string train_memory = json(memory.training(every, every, every, true));
    const double gemm = gemm_gflops(ctx);
    const double bf16_gemm = precision == Precision::bf16 ? gemm_gflops(ctx, dnnl::memory::data_type::bf16) : 0.0;
    const double peak = fma_peak_gflops(ctx.threads(), precision == Precision::bf16);
    // What full training keeps: fp32 weights, the kernels' weight copies (re-laid-out or
    // bf16), SGDW's momentum (one fp32 slot per weight) and the activation arena.
    const double mib = 1 << 20, weights = double(m.params().total_elements()) * 4 / mib;
    fmt::print(
        R"({{"model": "{}", "precision": "{}", "batch": {}, "input_size": {}, "threads": {}, "params": {}, "arena_mib": {:.1f}, "memory_mib": {{"weights": {:.1f}, "weight_copies": {:.1f}, "optimizer": {:.1f}, "activations": {:.1f}}}, "forward": {}, "train_step": {}, "sgemm_gflops": {:.1f}, "bf16_gemm_gflops": {:.1f}, "fma_peak_gflops": {:.1f}, "memory": {}}})"
        "\n",
        name, to_string(precision), batch, size, ctx.threads(), m.params().total_elements(),
        double(m.graph->plan_arena_bytes()) / mib, weights, double(m.graph->weight_copy_bytes()) / mib, weights,
        double(m.graph->plan_arena_bytes()) / mib, json(fwd), json(train), gemm, bf16_gemm, peak, train_memory);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
