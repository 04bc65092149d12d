// Selection units (docs/method.md): the tensors whose gradients one backward
// kernel produces together, i.e. the params of one graph node (a conv's weight
// and bias, a batch norm's gamma and beta). Units keep forward order; the
// method times, scores and selects units, and masks over params follow.
#pragma once

#include <string>
#include <vector>

#include "elastic/graph/graph.hpp"

namespace elastic {

struct Unit {
  int node = -1;            // graph node whose backward_weights computes the unit
  std::vector<int> params;  // its params, forward order
  std::string name;         // the node's name
  std::int64_t elements = 0;
};

inline std::vector<Unit> selection_units(Graph& g) {
  std::vector<Unit> units;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const auto& ids = g.node(static_cast<ValueId>(i)).param_ids();
    if (ids.empty()) continue;
    Unit u{static_cast<int>(i), ids, g.node(static_cast<ValueId>(i)).name(), 0};
    for (int k : ids) u.elements += g.params()[static_cast<std::size_t>(k)].size();
    units.push_back(std::move(u));
  }
  return units;
}

// The param mask selecting exactly the params of the selected units.
inline std::vector<bool> param_mask(const std::vector<Unit>& units, const std::vector<bool>& unit_mask,
                                    std::size_t num_params) {
  if (unit_mask.size() != units.size()) fail("unit mask has {} entries for {} units", unit_mask.size(), units.size());
  std::vector<bool> mask(num_params, false);
  for (std::size_t u = 0; u < units.size(); ++u)
    if (unit_mask[u])
      for (int k : units[u].params) mask[static_cast<std::size_t>(k)] = true;
  return mask;
}

// The units whose params `params` (a param mask) selects; a unit's params are selected together.
inline std::vector<bool> unit_mask_of(const std::vector<Unit>& units, const std::vector<bool>& params) {
  std::vector<bool> mask(units.size(), false);
  for (std::size_t u = 0; u < units.size(); ++u) mask[u] = params.at(static_cast<std::size_t>(units[u].params[0]));
  return mask;
}

}  // namespace elastic
