// The one definition of a training step, used by the Trainer, the examples'
// loops and the benchmarks that time steps: forward under the installed
// plan, then backward, each node's selected params updated by the optimizer
// as soon as backward has their (streamed) gradients. Frozen convolutions
// keep their re-laid-out weights from step to step, which holds because
// params change only through the optimizer while a TrainStep lives.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "elastic/models/model.hpp"
#include "elastic/optim/optimizer.hpp"

namespace elastic {

class TrainStep {
 public:
  TrainStep(Model& m, Optimizer& opt) : m_(m), opt_(opt), settings_(*m.graph) {}

  // The forward pass of step `step` (which fixes dropout's draws) on the
  // batch the model holds; returns its loss.
  const SoftmaxCrossEntropy& forward(std::uint64_t step) {
    m_.graph->set_step(step);
    m_.graph->forward(true);
    return m_.loss_node();
  }

  // Backward under the installed plan with the updates inside it.
  // `around_update(params, update)` is called per node with the node's param
  // indices and must call update() once: the place to add a gradient term
  // before the update, or to time it.
  template <class AroundUpdate>
  void backward(const std::vector<bool>& selected, float lr, AroundUpdate&& around_update) {
    const auto& topology = m_.graph->topology();
    m_.graph->backward([&](int node) {
      const auto& ks = topology.nodes[std::size_t(node)].params;
      around_update(std::span<const int>(ks), [&] { opt_.step(m_.params(), ks, selected, lr); });
    });
  }
  void backward(const std::vector<bool>& selected, float lr) {
    backward(selected, lr, [](std::span<const int>, const auto& update) { update(); });
  }

  // Both passes; returns the loss.
  const SoftmaxCrossEntropy& operator()(std::uint64_t step, const std::vector<bool>& selected, float lr) {
    const auto& loss = forward(step);
    backward(selected, lr);
    return loss;
  }

 private:
  Model& m_;
  Optimizer& opt_;
  Graph::TrainingSteps settings_;
};

}  // namespace elastic
