// A classifier as the trainer sees it: a finalized graph from an image batch
// (B, C, H, W) to logits (B, classes) and a mean cross-entropy loss, plus the
// handles a training loop needs (input, logits, loss, batch-norm layers).
#pragma once

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "elastic/core/resident.hpp"
#include "elastic/graph/graph.hpp"
#include "elastic/layers/batchnorm.hpp"
#include "elastic/layers/loss.hpp"

namespace elastic {

// What every model builder takes.
struct ModelOptions {
  std::int64_t num_classes = 1000;
  std::int64_t input_size = 224;  // square inputs (input_size x input_size, 3 channels)
  std::int64_t batch = 4;
  // Dropout before the new head. Unset: the reference's heads, 0.2 for the CNNs
  // and none for ViT.
  std::optional<float> dropout;
  std::uint64_t seed = 0;
  Precision precision = Precision::fp32;  // the format the graph computes in (core/precision.hpp)
};

// Input normalization the pretrained weights expect, applied to RGB in [0, 1].
struct Preprocess {
  float mean[3] = {0.485f, 0.456f, 0.406f};  // ImageNet, as torchvision's weights use
  float stddev[3] = {0.229f, 0.224f, 0.225f};
};

struct Model {
  std::string name;
  std::unique_ptr<Graph> graph;
  ValueId images = -1, logits = -1, loss = -1;
  Shape input_shape;  // (B, C, H, W)
  std::int64_t num_classes = 0;
  std::vector<ValueId> batch_norms;
  std::vector<std::string> head_prefixes;  // params of the new head, e.g. {"fc."}: not loaded from a backbone
  Preprocess preprocess;
  // The process's resident memory other than the model's own buffers when it was built (code,
  // libraries, kernels, whatever the program held then): the base of TrainingMemory's figures.
  std::int64_t base_bytes = 0;

  std::int64_t batch() const { return input_shape.at(0); }
  SoftmaxCrossEntropy& loss_node() { return graph->node_as<SoftmaxCrossEntropy>(loss); }
  ParamStore& params() { return graph->params(); }

  // Batch norm in batch-statistics mode (training from scratch) or with frozen
  // running statistics (fine-tuning a pretrained backbone; the default).
  void set_batch_stats(bool on) {
    for (ValueId v : batch_norms) graph->node_as<BatchNorm2d>(v).set_batch_stats(on);
  }
};

// oneDNN generates its f32 GEMM kernels once per process, at the first GEMM any primitive
// runs (a backward pass's, typically): about 6 MiB of code and tables on AVX-512. One tiny
// GEMM generates them here, so that the model's base memory includes them.
inline void generate_gemm_kernels() {
  static const bool once = [] {
    float a[4] = {1, 0, 0, 1}, b[4] = {1, 2, 3, 4}, c[4] = {};
    return dnnl::sgemm('N', 'N', 2, 2, 2, 1.f, a, 2, b, 2, 0.f, c, 2) == dnnl::status::success;
  }();
  (void)once;
}

// Adds the loss to a graph whose logits are `logits`, finalizes it and returns
// the model. `batch_norms` are collected from the graph's nodes.
inline Model finish_model(std::string name, std::unique_ptr<Graph> graph, ValueId images, ValueId logits,
                          std::uint64_t seed) {
  Model m;
  m.name = std::move(name);
  m.images = images;
  m.logits = logits;
  m.loss = graph->add<SoftmaxCrossEntropy>({logits}, "loss");
  graph->mark_output(logits);
  graph->finalize(seed);
  // What finalize wrote is the params' and buffers' values and the pinned values; everything
  // else (activations, gradients, scratch) takes memory only when written.
  generate_gemm_kernels();
  m.base_bytes = std::max<std::int64_t>(0, resident_bytes() - graph->params().value_bytes() - graph->pinned_bytes());
  m.input_shape = graph->shape(images);
  m.num_classes = graph->shape(logits).at(1);
  for (std::size_t v = 0; v < graph->size(); ++v)
    if (dynamic_cast<BatchNorm2d*>(&graph->node(static_cast<ValueId>(v))))
      m.batch_norms.push_back(static_cast<ValueId>(v));
  m.graph = std::move(graph);
  // The loss is the mean over the batch; its own gradient is 1 for every step.
  m.graph->grad_data(m.loss)[0] = 1.0f;
  return m;
}

}  // namespace elastic
