// A timing profile (SPEC section 7): T_fwd and per selection unit t_dw and
// t_dy with their spreads, keyed by what the times depend on (model, input
// size, classes, batch, threads, CPU), as JSON. Reading checks every field,
// so a malformed or foreign file is an error naming it. Measured by
// TimingProfiler (timing_profiler.hpp).
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "elastic/core/error.hpp"
#include "elastic/core/json.hpp"

namespace elastic {

// What a profile's times depend on.
struct ProfileKey {
  std::string model;
  std::int64_t input_size = 0, num_classes = 0, batch = 0;
  int threads = 0;
  std::string cpu;
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
  std::vector<std::string> units;  // unit names, forward order
  double t_fwd = 0, t_fwd_spread = 0;                // ms; spread = (max - min) over the repeats
  std::vector<double> t_dw, t_dy;                    // ms per unit
  std::vector<double> t_dw_spread, t_dy_spread;

  double t_bwd_full() const {
    double t = 0;
    for (std::size_t k = 0; k < t_dw.size(); ++k) t += t_dw[k] + t_dy[k];
    return t;
  }
  // Predicted T_b of a unit mask (SPEC section 1).
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
  }

  nlohmann::json to_json() const {
    return {{"key",
             {{"model", key.model},
              {"input_size", key.input_size},
              {"num_classes", key.num_classes},
              {"batch", key.batch},
              {"threads", key.threads},
              {"cpu", key.cpu}}},
            {"units", units},
            {"t_fwd_ms", t_fwd},
            {"t_fwd_spread_ms", t_fwd_spread},
            {"t_dw_ms", t_dw},
            {"t_dy_ms", t_dy},
            {"t_dw_spread_ms", t_dw_spread},
            {"t_dy_spread_ms", t_dy_spread}};
  }

  void save(const std::filesystem::path& path) const {
    const auto tmp = std::filesystem::path(path.string() + ".tmp");
    {
      std::ofstream f(tmp);
      if (!f) fail("cannot write profile '{}'", tmp.string());
      f << to_json().dump(2) << "\n";
      if (!f.flush()) fail("cannot write profile '{}'", tmp.string());
    }
    std::filesystem::rename(tmp, path);
  }

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
      const auto& k = j.at("key");
      p.key = {k.at("model").get<std::string>(), json_integer<std::int64_t>(k.at("input_size"), "input_size"),
               json_integer<std::int64_t>(k.at("num_classes"), "num_classes"),
               json_integer<std::int64_t>(k.at("batch"), "batch"), json_integer<int>(k.at("threads"), "threads"),
               k.at("cpu").get<std::string>()};
      p.units = j.at("units").get<std::vector<std::string>>();
      p.t_fwd = j.at("t_fwd_ms").get<double>();
      p.t_fwd_spread = j.at("t_fwd_spread_ms").get<double>();
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
    if (p.t_dw.size() != n || p.t_dy.size() != n || p.t_dw_spread.size() != n || p.t_dy_spread.size() != n)
      fail("profile '{}' is malformed: {} units but {} t_dw and {} t_dy entries", path.string(), n, p.t_dw.size(),
           p.t_dy.size());
    for (std::size_t u = 0; u < n; ++u)
      if (!(p.t_dw[u] >= 0) || !(p.t_dy[u] >= 0))
        fail("profile '{}' is malformed: unit '{}' has a negative or NaN time", path.string(), p.units[u]);
    if (!(p.t_fwd > 0)) fail("profile '{}' is malformed: t_fwd_ms must be positive", path.string());
    return p;
  }
};

}  // namespace elastic
