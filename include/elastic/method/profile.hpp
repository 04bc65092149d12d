// A timing profile: the time model of the step the Trainer runs (docs/method.md),
// keyed by what the times depend on (model, input size, classes, batch,
// threads, CPU, optimizer, precision), as JSON. Per selection unit u:
//   t_fw[u]  forward time u adds when trained (a trained convolution re-lays
//            out its changing weights every step; a frozen one reuses them),
//   t_dw[u]  its backward_weights plus its optimizer update,
//   t_dy[u]  backward_data of the nodes above it, up to the next unit;
// and t_fwd_frozen, the forward with every unit frozen. A step under unit mask
// m with earliest selected unit f then takes
//   T(m) = t_fwd_frozen + sum_{u in m} (t_fw[u] + t_dw[u]) + sum_{u >= f} t_dy[u].
// Reading checks every field, so a malformed or foreign file is an error
// naming it. Measured by TimingProfiler (timing_profiler.hpp).
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "elastic/core/error.hpp"
#include "elastic/core/json.hpp"
#include "elastic/io/durable.hpp"

namespace elastic {

// What a profile's times depend on.
struct ProfileKey {
  std::string model;
  std::int64_t input_size = 0, num_classes = 0, batch = 0;
  int threads = 0;
  std::string cpu;
  std::string optimizer;           // its update is part of t_dw: "sgdw" or "adam"
  std::string precision = "fp32";  // "fp32" or "bf16" (core/precision.hpp)
  bool operator==(const ProfileKey&) const = default;
};

inline std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0 || line.rfind("Model", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

struct Profile {
  ProfileKey key;
  std::vector<std::string> units;        // unit names, forward order
  double t_fwd = 0, t_fwd_spread = 0;    // ms, forward of the full plan; spread = max - min over the repeats
  double t_fwd_frozen = 0;               // ms, forward with every unit frozen
  std::vector<double> t_fw, t_dw, t_dy;  // ms per unit
  std::vector<double> t_dw_spread, t_dy_spread;

  // Forward time under a unit mask.
  double t_forward(const std::vector<bool>& mask) const {
    double t = t_fwd_frozen;
    for (std::size_t u = 0; u < mask.size() && u < t_fw.size(); ++u)
      if (mask[u]) t += t_fw[u];
    return t;
  }
  // Predicted time of a step under a unit mask, and of a full step.
  double step_ms(const std::vector<bool>& mask) const { return t_forward(mask) + t_bwd(mask); }
  // Forward with every unit trained, and a full step.
  double t_forward_all() const {
    double t = t_fwd_frozen;
    for (double x : t_fw) t += x;
    return t;
  }
  double full_step_ms() const { return t_forward_all() + t_bwd_full(); }

  double t_bwd_full() const {
    double t = 0;
    for (std::size_t k = 0; k < t_dw.size(); ++k) t += t_dw[k] + t_dy[k];
    return t;
  }
  // Predicted backward time of a unit mask (docs/method.md).
  double t_bwd(const std::vector<bool>& mask) const {
    std::size_t f = 0;
    while (f < mask.size() && !mask[f]) ++f;
    double t = 0;
    for (std::size_t k = f; k < mask.size(); ++k) t += t_dy[k] + (mask[k] ? t_dw[k] : 0.0);
    return t;
  }

  // Throws if this profile was measured for something else, naming what differs.
  void check_matches(const ProfileKey& want, const std::string& source) const {
    const auto differ = [&](const char* what, const auto& have, const auto& need) {
      if (have != need)
        fail("profile '{}' was measured for {} {}, but this run has {} {}; profile again (elastic profile)", source,
             what, have, what, need);
    };
    differ("model", key.model, want.model);
    differ("input size", key.input_size, want.input_size);
    differ("num_classes", key.num_classes, want.num_classes);
    differ("batch size", key.batch, want.batch);
    differ("threads", key.threads, want.threads);
    differ("cpu", key.cpu, want.cpu);
    differ("optimizer", key.optimizer, want.optimizer);
    differ("precision", key.precision, want.precision);
  }

  nlohmann::json to_json() const {
    return {{"key",
             {{"model", key.model},
              {"input_size", key.input_size},
              {"num_classes", key.num_classes},
              {"batch", key.batch},
              {"threads", key.threads},
              {"cpu", key.cpu},
              {"optimizer", key.optimizer},
              {"precision", key.precision}}},
            {"units", units},
            {"t_fwd_ms", t_fwd},
            {"t_fwd_spread_ms", t_fwd_spread},
            {"t_fwd_frozen_ms", t_fwd_frozen},
            {"t_fw_ms", t_fw},
            {"t_dw_ms", t_dw},
            {"t_dy_ms", t_dy},
            {"t_dw_spread_ms", t_dw_spread},
            {"t_dy_spread_ms", t_dy_spread}};
  }

  void save(const std::filesystem::path& path) const { io::write_durably(path, to_json().dump(2) + "\n"); }

  static Profile load(const std::filesystem::path& path) {
    std::ifstream f(path);
    if (!f) fail("cannot open profile '{}'", path.string());
    const std::string text{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
    return parse(text, path);
  }

  // A profile from its JSON text; `path` names it in errors.
  static Profile parse(const std::string& text, const std::filesystem::path& path) {
    Profile p;
    try {
      const auto j = nlohmann::json::parse(text);
      if (j.is_object() && j.contains("t_dw_ms") && !j.contains("t_fw_ms"))
        fail("it predates the model of the trainer's step (no t_fw_ms); profile again (elastic profile)");
      const auto& k = j.at("key");
      p.key = {k.at("model").get<std::string>(), json_integer<std::int64_t>(k.at("input_size"), "input_size"),
               json_integer<std::int64_t>(k.at("num_classes"), "num_classes"),
               json_integer<std::int64_t>(k.at("batch"), "batch"), json_integer<int>(k.at("threads"), "threads"),
               k.at("cpu").get<std::string>(), k.at("optimizer").get<std::string>(),
               // Profiles written before bf16 existed were all measured in fp32.
               k.contains("precision") ? k.at("precision").get<std::string>() : std::string("fp32")};
      if (p.key.precision != "fp32" && p.key.precision != "bf16")
        fail("key.precision '{}' is not one of fp32, bf16", p.key.precision);
      p.units = j.at("units").get<std::vector<std::string>>();
      p.t_fwd = j.at("t_fwd_ms").get<double>();
      p.t_fwd_spread = j.at("t_fwd_spread_ms").get<double>();
      p.t_fwd_frozen = j.at("t_fwd_frozen_ms").get<double>();
      p.t_fw = j.at("t_fw_ms").get<std::vector<double>>();
      p.t_dw = j.at("t_dw_ms").get<std::vector<double>>();
      p.t_dy = j.at("t_dy_ms").get<std::vector<double>>();
      p.t_dw_spread = j.at("t_dw_spread_ms").get<std::vector<double>>();
      p.t_dy_spread = j.at("t_dy_spread_ms").get<std::vector<double>>();
    } catch (const nlohmann::json::exception& e) {
      fail("profile '{}' is malformed: {}", path.string(), e.what());
    } catch (const Error& e) {
      fail("profile '{}' is malformed: {}", path.string(), e.what());
    }
    const auto n = p.units.size();
    if (p.t_dw.size() != n || p.t_dy.size() != n || p.t_fw.size() != n || p.t_dw_spread.size() != n ||
        p.t_dy_spread.size() != n)
      fail("profile '{}' is malformed: {} units but {} t_dw and {} t_dy entries", path.string(), n, p.t_dw.size(),
           p.t_dy.size());
    for (std::size_t u = 0; u < n; ++u)
      if (!(p.t_dw[u] >= 0) || !(p.t_dy[u] >= 0) || !(p.t_fw[u] >= 0))
        fail("profile '{}' is malformed: unit '{}' has a negative or NaN time", path.string(), p.units[u]);
    if (!(p.t_fwd > 0)) fail("profile '{}' is malformed: t_fwd_ms must be positive", path.string());
    if (!(p.t_fwd_frozen > 0 && p.t_fwd_frozen <= p.t_fwd))
      fail("profile '{}' is malformed: t_fwd_frozen_ms must be positive and at most t_fwd_ms", path.string());
    return p;
  }
};

}  // namespace elastic
