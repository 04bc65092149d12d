#include "elastic/layers/tokens.hpp"

#include <doctest/doctest.h>

#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace layers_tokens_test {

using namespace elastic;

TEST_CASE("patch tokens are the channels-last rows in torch's (N, H*W, C) order") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 5, 2, 3}, true);
  const auto y = g.add<PatchTokens>({x}, "tokens");
  g.finalize();
  const Tensor in = testing::random_input(g, x, 4);
  g.forward(true);
  const Tensor out = g.read(y);
  REQUIRE(out.shape() == Shape{3, 6, 5});
  for (std::int64_t n = 0; n < 3; ++n)
    for (std::int64_t c = 0; c < 5; ++c)
      for (std::int64_t p = 0; p < 6; ++p) CHECK(out[(n * 6 + p) * 5 + c] == in[(n * 5 + c) * 6 + p]);
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
}

TEST_CASE("token image turns (N, H*W, C) tokens back into the (N, C, H, W) image") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 6, 5}, true);
  const auto y = g.add<TokenImage>({x}, "image", 2, 3);
  g.finalize();
  const Tensor in = testing::random_input(g, x, 8);
  g.forward(true);
  const Tensor out = g.read(y);
  REQUIRE(out.shape() == Shape{3, 5, 2, 3});
  bool same = true;
  for (std::int64_t n = 0; n < 3; ++n)
    for (std::int64_t c = 0; c < 5; ++c)
      for (std::int64_t p = 0; p < 6; ++p) same &= out[(n * 5 + c) * 6 + p] == in[(n * 6 + p) * 5 + c];
  CHECK(same);
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked > 0);
}

TEST_CASE("class token and position embedding: forward by hand, gradients by finite differences") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 4, 7}, true);
  const auto y = g.add<ClassTokenPosEmbed>({x}, "embed", 7, 4);
  g.finalize(5);
  REQUIRE(g.params().size() == 2);
  CHECK(g.params()[0].name == "class_token");
  CHECK(g.params()[0].shape == Shape{1, 1, 7});
  CHECK(g.params()[1].name == "encoder.pos_embedding");
  CHECK(g.params()[1].shape == Shape{1, 5, 7});
  for (auto& v : g.params()[0].values()) v = 0.5f;  // zero-initialized, make it visible
  const Tensor in = testing::random_input(g, x, 6);
  g.forward(true);
  const Tensor out = g.read(y);
  REQUIRE(out.shape() == Shape{3, 5, 7});
  const float* pos = g.params()[1].value;
  for (std::int64_t n = 0; n < 3; ++n)
    for (std::int64_t e = 0; e < 7; ++e) {
      CHECK(out[n * 35 + e] == doctest::Approx(0.5f + pos[e]));
      for (std::int64_t t = 0; t < 4; ++t)
        CHECK(out[n * 35 + (t + 1) * 7 + e] == doctest::Approx(in[(n * 4 + t) * 7 + e] + pos[(t + 1) * 7 + e]));
    }
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
  CHECK(res.checked > 60);
}

TEST_CASE("select token picks one token per sample and routes its gradient back") {
  Context ctx(2);
  Graph g(ctx);
  const auto x = g.input("x", {3, 5, 6}, true);
  const auto y = g.add<SelectToken>({x}, "cls", 2);
  g.finalize();
  const Tensor in = testing::random_input(g, x, 8);
  g.forward(true);
  const Tensor out = g.read(y);
  REQUIRE(out.shape() == Shape{3, 6});
  for (std::int64_t n = 0; n < 3; ++n)
    for (std::int64_t e = 0; e < 6; ++e) CHECK(out[n * 6 + e] == in[(n * 5 + 2) * 6 + e]);
  const auto res = testing::check_gradients(g, {x}, y);
  CHECK_MESSAGE(res.ok, res.report);
  Graph bad(ctx);
  const auto z = bad.input("z", {2, 3, 4});
  bad.add<SelectToken>({z}, "cls", 3);
  CHECK_THROWS_WITH_AS(bad.finalize(), doctest::Contains("token 3 is out of range"), Error);
}

}  // namespace layers_tokens_test
