// The four models of the zoo, tested without PyTorch (tests/parity compares
// them with torchvision where python3-torch is installed): shapes, a finite
// loss, gradients reaching the first and the last layer, and three steps of
// full training lowering the loss on one batch; in fp32, and in bf16 where the
// CPU has native bf16.
#include "elastic/models/zoo.hpp"

#include <cmath>
#include <string>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/optim/optimizer.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace models_zoo_test {

using namespace elastic;

namespace {
double abs_sum(const Param& p) {
  double s = 0;
  for (float g : p.grads()) s += std::abs(double(g));
  return s;
}
}  // namespace

TEST_CASE("each model builds, computes a finite loss, reaches every end with gradients and learns one batch") {
  std::vector<Precision> precisions{Precision::fp32};
  if (precision_supported(Precision::bf16)) precisions.push_back(Precision::bf16);
  for (Precision precision : precisions)
    for (const char* name : {"resnet50", "vgg16", "mobilenetv2", "vit"}) {
      CAPTURE(name);
      CAPTURE(to_string(precision));
      Context ctx(2);
      const std::int64_t batch = 2, classes = 5;
      Model m = build_model(
          name, ctx, {.num_classes = classes, .input_size = 32, .batch = batch, .seed = 1, .precision = precision});
      m.set_batch_stats(true);  // an untrained model trains with batch statistics
      CHECK(m.input_shape == Shape{batch, 3, 32, 32});
      CHECK(m.graph->shape(m.logits) == Shape{batch, classes});
      CHECK(m.num_classes == classes);
      // The precision reaches the graph: its layers store their outputs in its type.
      CHECK(m.graph->precision() == precision);
      CHECK(m.graph->node(m.logits).output_desc().data_type() == activation_type(precision));
      Rng rng(3);
      Tensor x(m.input_shape);
      for (auto& v : x.span()) v = rng.normal();
      m.graph->write(m.images, x);
      const std::vector<std::int32_t> labels{1, 4};
      m.loss_node().set_labels(labels);

      SGDW opt({.momentum = 0.9f, .weight_decay = 0});
      const std::vector<bool> all(m.params().size(), true);
      std::vector<double> losses;
      for (int step = 0; step < 4; ++step) {
        m.graph->set_step(std::uint64_t(step));
        m.graph->forward(true);
        losses.push_back(m.loss_node().loss());
        REQUIRE(std::isfinite(losses.back()));
        m.graph->backward();
        if (step == 0) {
          // The first param (the stem's weight) and the last (the head's bias) have gradients.
          CHECK(abs_sum(m.params()[0]) > 0);
          CHECK(abs_sum(m.params()[m.params().size() - 1]) > 0);
          // Near chance (ln 5 = 1.61) at the start: 1.08-1.87 over the four models and both
          // precisions (a relative tolerance: scale(0), not doctest's absolute 1).
          CHECK(losses[0] == doctest::Approx(std::log(double(classes))).epsilon(0.4).scale(0));
        }
        opt.step(m.params(), all, 0.01f);
      }
      MESSAGE(std::string(name), ": loss ", losses.front(), " -> ", losses.back());
      CHECK(losses.back() < losses.front());
      const Tensor logits = m.graph->read(m.logits);
      for (float v : logits.span()) CHECK(std::isfinite(v));
    }
}

}  // namespace models_zoo_test
