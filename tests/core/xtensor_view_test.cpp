#include <doctest/doctest.h>
#include <xtensor/xsort.hpp>

#include "elastic/core/random.hpp"
#include "elastic/models/small_cnn.hpp"
#include "elastic/xtensor.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace core_xtensor_view_test {

using namespace elastic;

TEST_CASE("a view has the tensor's shape, reads its elements in row-major order and writes through") {
  Tensor t({2, 3, 4});
  for (std::int64_t i = 0; i < t.numel(); ++i) t[i] = float(i);
  auto v = view(t);
  CHECK(v.dimension() == 3);
  CHECK(v.shape()[0] == 2);
  CHECK(v.shape()[1] == 3);
  CHECK(v.shape()[2] == 4);
  CHECK(v(1, 2, 3) == 23.0f);
  CHECK(v(0, 1, 0) == 4.0f);
  v(1, 0, 2) = -7.0f;
  CHECK(t[14] == -7.0f);
  CHECK(v.data() == t.data());  // no copy
  const Tensor& c = t;
  CHECK(view(c)(1, 0, 2) == -7.0f);
}

TEST_CASE("a model's logits through a view: the predicted class is xtensor's argmax over the class axis") {
  Context ctx(1);
  Model m = small_cnn(ctx, {.batch = 4, .num_classes = 10, .width1 = 8, .width2 = 8, .seed = 2});
  Rng rng(4);
  Tensor x(m.input_shape);
  for (auto& e : x.span()) e = rng.normal();
  m.graph->write(m.images, x);
  const std::vector<std::int32_t> labels{0, 1, 2, 3};
  m.loss_node().set_labels(labels);
  m.graph->forward(false);
  const Tensor logits = m.graph->read(m.logits);
  const auto predicted = xt::argmax(view(logits), 1);
  REQUIRE(predicted.size() == 4);
  for (std::size_t b = 0; b < 4; ++b) {
    std::size_t best = 0;
    for (std::size_t k = 1; k < 10; ++k)
      if (logits[std::int64_t(b * 10 + k)] > logits[std::int64_t(b * 10 + best)]) best = k;
    CHECK(predicted(b) == best);
  }
}

}  // namespace core_xtensor_view_test
