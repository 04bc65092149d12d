// Checkpoints: a model's params and buffers, the trainer's state and the
// caller's own run record in one safetensors file, written atomically (a
// temporary file, fsync, rename, directory fsync), so a crash at any moment
// leaves the previous checkpoint or the new one, never a torn file.
//
// Tensors: every param and buffer under its own name (the file also loads as
// a weights file with ignore_prefixes {"optimizer/"}), and each optimizer slot
// as "optimizer/<param>.<slot>". Metadata "elastic_state": JSON with the step,
// the selection mask, the selection history, the optimizer's per-param step
// counts and the caller's run record.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "elastic/core/json.hpp"
#include "elastic/io/weights.hpp"
#include "elastic/train/trainer.hpp"

namespace elastic {

inline constexpr const char* kOptimizerPrefix = "optimizer/";

inline nlohmann::json to_json(const SelectionRecord& r) {
  std::string bits;
  for (bool b : r.unit_mask) bits += b ? '1' : '0';
  nlohmann::json j = {{"epoch", r.epoch},
                      {"step", r.step},
                      {"reason", r.reason},
                      {"rho", r.rho},
                      {"unit_mask", bits},
                      {"importance", r.importance},
                      {"predicted_share", r.predicted_share},
                      {"measured_share", r.measured_share >= 0 ? nlohmann::json(r.measured_share) : nlohmann::json()},
                      {"measured_step_ms", r.measured_step_ms},
                      {"full_step_ms", r.full_step_ms},
                      {"windows", r.windows},
                      {"steps", r.steps},
                      {"selected_units", r.selected_units},
                      {"selection_ms", r.selection_ms},
                      {"memory_mib", r.memory_mib},
                      {"weight_copies", r.weight_copies},
                      {"solve_mib", r.solve_mib},
                      {"memory_resolution", r.memory_resolution}};
  if (!r.unit_importance.empty()) j["unit_importance"] = r.unit_importance;
  if (!r.scores.empty()) j["scores"] = r.scores;
  return j;
}

inline nlohmann::json to_json(const ControlState& c) {
  return {{"fwd_scale", c.fwd_scale},
          {"bwd_scale", c.bwd_scale},
          {"other_ms", c.other_ms},
          {"resolves", c.resolves},
          {"since_install", c.since_install},
          {"window", c.window},
          {"fwd_sum", c.fwd_sum},
          {"bwd_sum", c.bwd_sum},
          {"other_sum", c.other_sum},
          {"threads", c.threads},
          {"windows_on", c.windows_on},
          {"lost_trials", c.lost_trials},
          {"trial_from", c.trial_from},
          {"trial_full", c.trial_full},
          {"trial_fwd_scale", c.trial_fwd_scale},
          {"trial_bwd_scale", c.trial_bwd_scale}};
}

inline ControlState control_from_json(const nlohmann::json& j) {
  ControlState c;
  c.fwd_scale = json_number(j.at("fwd_scale"), "control fwd_scale");
  c.bwd_scale = json_number(j.at("bwd_scale"), "control bwd_scale");
  c.other_ms = json_number(j.at("other_ms"), "control other_ms");
  c.resolves = json_integer<std::int64_t>(j.at("resolves"), "control resolves");
  c.since_install = json_integer<std::int64_t>(j.at("since_install"), "control since_install");
  c.window = json_integer<std::int64_t>(j.at("window"), "control window");
  c.fwd_sum = json_number(j.at("fwd_sum"), "control fwd_sum");
  c.bwd_sum = json_number(j.at("bwd_sum"), "control bwd_sum");
  c.other_sum = json_number(j.at("other_sum"), "control other_sum");
  if (j.contains("threads")) {  // thread adaptation (absent from checkpoints written before it)
    c.threads = json_integer<int>(j.at("threads"), "control threads");
    c.windows_on = json_integer<std::int64_t>(j.at("windows_on"), "control windows_on");
    c.lost_trials = json_integer<std::int64_t>(j.at("lost_trials"), "control lost_trials");
    c.trial_from = json_integer<int>(j.at("trial_from"), "control trial_from");
    c.trial_full = json_number(j.at("trial_full"), "control trial_full");
    c.trial_fwd_scale = json_number(j.at("trial_fwd_scale"), "control trial_fwd_scale");
    c.trial_bwd_scale = json_number(j.at("trial_bwd_scale"), "control trial_bwd_scale");
    if (c.threads < 0 || c.trial_from < 0 || c.lost_trials < 0 || c.lost_trials > 7)  // threads 0: the profile's
      fail("control threads and trial_from must be >= 0 and lost_trials in [0, 7]");
    if (!(c.trial_fwd_scale > 0 && c.trial_bwd_scale > 0)) fail("control trial scales must be positive");
  }
  if (!(c.fwd_scale > 0 && c.bwd_scale > 0)) fail("control scales must be positive");
  return c;
}

inline nlohmann::json to_json(const EpochProgress& e) {
  return {{"epoch", e.epoch},
          {"batches", e.batches},
          {"loss_sum", e.train.loss_sum},
          {"correct", e.train.correct},
          {"count", e.train.count},
          {"train_ms", e.train_ms},
          {"data_wait_ms", e.data_wait_ms},
          {"measured_ms", e.measured_ms},
          {"full_ms", e.full_ms}};
}

inline EpochProgress epoch_progress_from_json(const nlohmann::json& j) {
  EpochProgress e;
  e.epoch = json_integer<int>(j.at("epoch"), "epoch progress epoch");
  e.batches = json_integer<std::int64_t>(j.at("batches"), "epoch progress batches");
  e.train.loss_sum = json_number(j.at("loss_sum"), "epoch progress loss_sum");
  e.train.correct = json_integer<std::int64_t>(j.at("correct"), "epoch progress correct");
  e.train.count = json_integer<std::int64_t>(j.at("count"), "epoch progress count");
  e.train_ms = json_number(j.at("train_ms"), "epoch progress train_ms");
  e.data_wait_ms = json_number(j.at("data_wait_ms"), "epoch progress data_wait_ms");
  e.measured_ms = json_number(j.at("measured_ms"), "epoch progress measured_ms");
  e.full_ms = json_number(j.at("full_ms"), "epoch progress full_ms");
  if (e.epoch < -1 || e.batches < 0 || e.train.correct < 0 || e.train.count < e.train.correct)
    fail("epoch progress: epoch >= -1, batches >= 0 and 0 <= correct <= count");
  return e;
}

inline std::vector<bool> parse_bits(const std::string& bits, const std::string& what) {
  std::vector<bool> out;
  for (char c : bits) {
    if (c != '0' && c != '1') fail("{}: '{}' is not a string of 0 and 1", what, bits.substr(0, 40));
    out.push_back(c == '1');
  }
  return out;
}

inline SelectionRecord selection_from_json(const nlohmann::json& j) {
  SelectionRecord r;
  r.epoch = json_integer<int>(j.at("epoch"), "selection epoch");
  r.unit_mask = parse_bits(j.at("unit_mask").get<std::string>(), "selection unit_mask");
  r.importance = json_number(j.at("importance"), "selection importance");
  r.predicted_share = json_number(j.at("predicted_share"), "selection predicted_share");
  r.selected_units = j.at("selected_units").get<std::vector<std::string>>();
  // Fields of the time-controlled trainer; older records lack them.
  if (j.contains("selection_ms")) r.selection_ms = json_number(j.at("selection_ms"), "selection selection_ms");
  if (j.contains("step")) r.step = json_integer<std::uint64_t>(j.at("step"), "selection step");
  if (j.contains("reason")) r.reason = j.at("reason").get<std::string>();
  if (j.contains("rho")) r.rho = json_number(j.at("rho"), "selection rho");
  if (j.contains("measured_share") && !j.at("measured_share").is_null())
    r.measured_share = json_number(j.at("measured_share"), "selection measured_share");
  if (j.contains("measured_step_ms")) r.measured_step_ms = json_number(j.at("measured_step_ms"), "measured_step_ms");
  if (j.contains("full_step_ms")) r.full_step_ms = json_number(j.at("full_step_ms"), "selection full_step_ms");
  if (j.contains("steps")) r.steps = json_integer<std::int64_t>(j.at("steps"), "selection steps");
  if (j.contains("windows")) r.windows = json_integer<std::int64_t>(j.at("windows"), "selection windows");
  if (j.contains("memory_mib")) r.memory_mib = json_number(j.at("memory_mib"), "selection memory_mib");
  if (j.contains("weight_copies")) r.weight_copies = j.at("weight_copies").get<bool>();
  if (j.contains("solve_mib")) r.solve_mib = json_number(j.at("solve_mib"), "selection solve_mib");
  if (j.contains("memory_resolution"))
    r.memory_resolution = json_integer<int>(j.at("memory_resolution"), "selection memory_resolution");
  if (j.contains("unit_importance"))
    for (const auto& x : j.at("unit_importance")) r.unit_importance.push_back(json_number(x, "unit_importance"));
  if (j.contains("scores")) r.scores = j.at("scores").get<std::string>();
  return r;
}

inline void save_checkpoint(const std::filesystem::path& path, const ParamStore& store, const TrainerState& state,
                            const nlohmann::json& run, const std::optional<io::ModelInfo>& info = std::nullopt) {
  io::SafetensorsWriter w;
  for (const auto& p : store.params()) w.add_f32_view(p.name, p.shape, p.values());
  for (const auto& b : store.buffers()) w.add_f32_view(b.name, b.shape, b.values());
  for (const auto& [key, values] : state.optimizer.slots)
    w.add_f32_view(kOptimizerPrefix + key, {static_cast<std::int64_t>(values.size())}, values);
  std::string mask;
  for (bool b : state.mask) mask += b ? '1' : '0';
  nlohmann::json selections = nlohmann::json::array();
  for (const auto& s : state.selections) selections.push_back(to_json(s));
  const nlohmann::json meta{{"step", state.step},
                            {"mask", mask},
                            {"selections", selections},
                            {"optimizer_steps", state.optimizer.steps},
                            {"control", to_json(state.control)},
                            {"importance", state.importance},
                            {"rho", state.rho},
                            {"train_ms", state.train_ms},
                            {"open_selection", state.open_selection},
                            {"deadline_missed", state.deadline_missed},
                            {"epoch", to_json(state.epoch)},
                            {"run", run}};
  w.set_metadata("elastic_state", meta.dump());
  if (info) w.set_metadata(io::kModelInfoKey, info->to_json().dump());
  w.write(path);
}

struct Checkpoint {
  TrainerState trainer;
  nlohmann::json run;
};

// The trainer state and run record of a checkpoint's "elastic_state"
// metadata (optimizer slots excluded: they are tensors); `path` names the file
// in errors.
inline Checkpoint parse_checkpoint_state(const std::string& text, const std::filesystem::path& path) {
  Checkpoint c;
  try {
    const auto meta = nlohmann::json::parse(text);
    c.trainer.step = json_integer<std::uint64_t>(meta.at("step"), "step");
    c.trainer.mask = parse_bits(meta.at("mask").get<std::string>(), "mask");
    for (const auto& s : meta.at("selections")) c.trainer.selections.push_back(selection_from_json(s));
    if (!meta.at("optimizer_steps").is_object()) fail("optimizer_steps is not an object");
    for (const auto& [name, steps] : meta.at("optimizer_steps").items())
      c.trainer.optimizer.steps[name] = json_integer<std::int64_t>(steps, "optimizer_steps");
    if (meta.contains("control")) {
      c.trainer.control = control_from_json(meta.at("control"));
      for (const auto& x : meta.at("importance")) c.trainer.importance.push_back(json_number(x, "importance"));
      c.trainer.rho = json_number(meta.at("rho"), "rho");
      c.trainer.train_ms = json_number(meta.at("train_ms"), "train_ms");
      c.trainer.open_selection = meta.at("open_selection").get<bool>();
      c.trainer.deadline_missed = meta.at("deadline_missed").get<bool>();
    }
    if (meta.contains("epoch")) c.trainer.epoch = epoch_progress_from_json(meta.at("epoch"));
    c.run = meta.at("run");
    if (!c.run.is_object()) fail("run is not an object");
  } catch (const nlohmann::json::exception& e) {
    fail("'{}': malformed checkpoint state: {}", path.string(), e.what());
  } catch (const Error& e) {
    fail("'{}': malformed checkpoint state: {}", path.string(), e.what());
  }
  return c;
}

// Loads the params and buffers into `store` and returns the rest. Every
// problem (a model that does not fit, missing or malformed state) is an error
// naming the file.
inline Checkpoint load_checkpoint(const std::filesystem::path& path, ParamStore& store) {
  if (!std::filesystem::exists(path)) fail("no checkpoint '{}'", path.string());
  const io::SafetensorsFile file(path);
  const auto it = file.metadata().find("elastic_state");
  if (it == file.metadata().end()) fail("'{}' is not a checkpoint: no elastic_state metadata", path.string());
  Checkpoint c = parse_checkpoint_state(it->second, path);
  for (const auto& info : file.tensors()) {
    if (!info.name.starts_with(kOptimizerPrefix)) continue;
    auto& slot = c.trainer.optimizer.slots[info.name.substr(std::string_view(kOptimizerPrefix).size())];
    slot.resize(static_cast<std::size_t>(numel(info.shape)));
    file.read_f32(info, slot);
  }
  io::load_weights(store, file, {.ignore_prefixes = {kOptimizerPrefix}});
  return c;
}

}  // namespace elastic
