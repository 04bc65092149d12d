// sum_call: the sums layers take of gradients (a broadcast input's, a per-channel
// scale's), on the host where the layouts allow and through oneDNN otherwise,
// against a float64 sum of the same elements.
#include "elastic/graph/node.hpp"

#include <algorithm>

#include <omp.h>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace graph_node_test {

using namespace elastic;
using dnnl::memory;
using tag = memory::format_tag;

namespace {
// The row-major tag of an n-d tensor.
tag plain_tag(std::size_t n) { return n == 2 ? tag::ab : n == 3 ? tag::abc : tag::abcd; }

// Logical index (row-major over dims) -> offset into the buffer, for plain layouts.
std::int64_t offset(const memory::desc& d, std::int64_t index) {
  const auto dims = d.dims();
  std::int64_t off = 0;
  for (int k = int(dims.size()) - 1; k >= 0; --k) {
    off += (index % dims[std::size_t(k)]) * d.data.format_desc.blocking.strides[k];
    index /= dims[std::size_t(k)];
  }
  return off;
}

float get(const memory& m, std::int64_t index) {
  const auto d = m.get_desc();
  const std::int64_t off = offset(d, index);
  return d.data_type() == memory::data_type::f32
             ? static_cast<const float*>(m.get_data_handle())[off]
             : host::to_float(static_cast<const host::bf16*>(m.get_data_handle())[off]);
}

struct Outcome {
  std::vector<float> got;
  std::vector<double> want;
  bool host = false;
};

// Sums random values of layout `from` into layout `to` with sum_call; the
// reference sums the same values in float64 by logical index (written in a
// plain layout of from's type, then reordered into `from`'s).
Outcome run_sum(Context& ctx, const memory::desc& from_d, const memory::desc& to_d, std::uint64_t seed) {
  const memory::desc plain_d(from_d.dims(), from_d.data_type(), plain_tag(from_d.dims().size()));
  memory plain(plain_d, ctx.engine()), from(from_d, ctx.engine()), to(to_d, ctx.engine());
  Rng rng(seed);
  const std::int64_t n = numel(from_d.dims());
  with_element(from_d.data_type(), [&]<class T>(std::type_identity<T>) {
    T* x = static_cast<T*>(plain.get_data_handle());
    for (std::int64_t i = 0; i < n; ++i) x[i] = host::from_float<T>(rng.uniform(-1.0f, 1.0f));
  });
  reorder_call(plain, from)(ctx.stream());
  Outcome out;
  out.host = detail::row_sum_shape(from_d, to_d).has_value();
  const Call sum = sum_call(from, to);
  sum(ctx.stream());
  ctx.wait();
  const auto fd = from_d.dims(), td = to_d.dims();
  const std::int64_t m = numel(to_d.dims());
  out.want.assign(std::size_t(m), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    // The logical index of the element's target: summed dims (size 1 in `to`) at 0.
    std::int64_t rest = i, target = 0, scale = 1;
    for (int k = int(fd.size()) - 1; k >= 0; --k) {
      const std::int64_t c = rest % fd[std::size_t(k)];
      rest /= fd[std::size_t(k)];
      if (td[std::size_t(k)] != 1) target += c * scale;
      scale *= td[std::size_t(k)];
    }
    out.want[std::size_t(target)] += get(plain, i);
  }
  for (std::int64_t j = 0; j < m; ++j) out.got.push_back(get(to, j));
  return out;
}

// Every sum within `tol` of the float64 one, relative to the largest float64 sum
// (at least 1).
void check_close(const Outcome& o, double tol) {
  REQUIRE(o.got.size() == o.want.size());
  double worst = 0;
  for (std::size_t j = 0; j < o.got.size(); ++j) worst = std::max(worst, std::abs(o.got[j] - o.want[j]));
  double scale = 0;
  for (const double w : o.want) scale = std::max(scale, std::abs(w));
  CHECK(worst <= tol * std::max(1.0, scale));
}

const auto f32 = memory::data_type::f32;
const auto bf16 = memory::data_type::bf16;
}  // namespace

TEST_CASE("row_sum_shape reads channels-last images and matrices as (outer, rows, cols)") {
  const auto shape = [](const memory::desc& f, const memory::desc& t) {
    const auto s = detail::row_sum_shape(f, t);
    REQUIRE(s.has_value());
    return std::array<std::int64_t, 3>{s->outer, s->rows, s->cols};
  };
  const memory::desc img({3, 16, 5, 7}, f32, tag::nhwc);
  // Over (H, W): per image and channel.
  CHECK(shape(img, memory::desc({3, 16, 1, 1}, f32, tag::nhwc)) == std::array<std::int64_t, 3>{3, 35, 16});
  // Over (N, H, W): per channel.
  CHECK(shape(img, memory::desc({1, 16, 1, 1}, f32, tag::nhwc)) == std::array<std::int64_t, 3>{1, 105, 16});
  // A matrix's column sums.
  CHECK(shape(memory::desc({40, 24}, f32, tag::ab), memory::desc({1, 24}, f32, tag::ab)) ==
        std::array<std::int64_t, 3>{1, 40, 24});
  // Channels-first over (H, W): one column per image and channel.
  CHECK(shape(memory::desc({3, 16, 5, 7}, f32, tag::nchw), memory::desc({3, 16, 1, 1}, f32, tag::nchw)) ==
        std::array<std::int64_t, 3>{48, 35, 1});
  // Not of that form: channels-first over (N, H, W) (summed dims on both sides of C),
  // a blocked source, a target laid out in another order, and no sum at all.
  CHECK_FALSE(
      detail::row_sum_shape(memory::desc({3, 16, 5, 7}, f32, tag::nchw), memory::desc({1, 16, 1, 1}, f32, tag::nchw)));
  CHECK_FALSE(detail::row_sum_shape(memory::desc({3, 16, 5, 7}, f32, tag::nChw16c),
                                    memory::desc({3, 16, 1, 1}, f32, tag::nhwc)));
  CHECK_FALSE(
      detail::row_sum_shape(memory::desc({2, 3, 5, 4}, f32, tag::nhwc), memory::desc({2, 3, 5, 1}, f32, tag::nchw)));
  CHECK_FALSE(detail::row_sum_shape(img, img));
  // Empty tensors go to oneDNN, which handles them (a size-0 dim is not a size-1 one).
  CHECK_FALSE(
      detail::row_sum_shape(memory::desc({0, 16, 5, 7}, f32, tag::nhwc), memory::desc({0, 16, 1, 1}, f32, tag::nhwc)));
  CHECK_FALSE(
      detail::row_sum_shape(memory::desc({2, 16, 0, 7}, f32, tag::nhwc), memory::desc({2, 16, 1, 1}, f32, tag::nhwc)));
}

TEST_CASE("sum_call over an empty dim gives zeros, and of an empty tensor nothing") {
  Context ctx(2);
  memory from({{2, 16, 0, 7}, f32, tag::nhwc}, ctx.engine()), to({{2, 16, 1, 1}, f32, tag::nhwc}, ctx.engine());
  float* y = static_cast<float*>(to.get_data_handle());
  std::fill(y, y + 32, 5.0f);
  sum_call(from, to)(ctx.stream());
  ctx.wait();
  CHECK(std::all_of(y, y + 32, [](float v) { return v == 0.0f; }));
  memory none({{0, 16, 5, 7}, f32, tag::nhwc}, ctx.engine()), none_sum({{0, 16, 1, 1}, f32, tag::nhwc}, ctx.engine());
  CHECK_NOTHROW(sum_call(none, none_sum)(ctx.stream()));
  ctx.wait();
}

TEST_CASE("sum_call sums over the dims where the target has size 1, on the host and through oneDNN") {
  Context ctx(2);
  struct Case {
    std::string what;
    memory::desc from, to;
    bool host;
  };
  const Case cases[] = {
      {"channels-last over (H, W), small", {{2, 8, 3, 5}, f32, tag::nhwc}, {{2, 8, 1, 1}, f32, tag::nhwc}, true},
      {"channels-last over (H, W), threaded", {{4, 96, 28, 28}, f32, tag::nhwc}, {{4, 96, 1, 1}, f32, tag::nhwc}, true},
      {"channels-last over (N, H, W), into a param's (1, C, 1, 1)",
       {{4, 24, 30, 30}, f32, tag::nhwc},
       {{1, 24, 1, 1}, f32, tag::nhwc},
       true},
      {"matrix column sums (a bias gradient), rows not a multiple of the block",
       {{12551, 3}, f32, tag::ab},
       {{1, 3}, f32, tag::ab},
       true},
      {"bf16 images into fp32", {{4, 40, 17, 17}, bf16, tag::nhwc}, {{4, 40, 1, 1}, f32, tag::nhwc}, true},
      {"bf16 images into bf16", {{4, 40, 17, 17}, bf16, tag::nhwc}, {{4, 40, 1, 1}, bf16, tag::nhwc}, true},
      {"channels-first over (H, W)", {{3, 5, 9, 11}, f32, tag::nchw}, {{3, 5, 1, 1}, f32, tag::nchw}, true},
      {"channels-first over (N, H, W) (oneDNN)",
       {{3, 5, 9, 11}, f32, tag::nchw},
       {{1, 5, 1, 1}, f32, tag::nchw},
       false},
      {"blocked source (oneDNN)", {{2, 32, 6, 6}, f32, tag::nChw16c}, {{2, 32, 1, 1}, f32, tag::nhwc}, false},
  };
  std::uint64_t seed = 1;
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const Outcome o = run_sum(ctx, c.from, c.to, seed++);
    CHECK(o.host == c.host);
    // fp32 sums of up to ~3600 values of size <= 1; a bf16 target rounds to 8 bits.
    check_close(o, c.to.data_type() == bf16 ? 8e-3 : 1e-5);
  }
}

TEST_CASE("the host sum is the same bit for bit on one thread and on two") {
  Context ctx(2);
  for (const auto& [from, to] :
       {std::pair{memory::desc({4, 64, 56, 56}, f32, tag::nhwc), memory::desc({1, 64, 1, 1}, f32, tag::nhwc)},
        std::pair{memory::desc({4, 64, 56, 56}, bf16, tag::nhwc), memory::desc({4, 64, 1, 1}, f32, tag::nhwc)}}) {
    omp_set_num_threads(1);
    const Outcome one = run_sum(ctx, from, to, 9);
    omp_set_num_threads(2);
    const Outcome two = run_sum(ctx, from, to, 9);
    REQUIRE(one.host);
    CHECK(one.got == two.got);
    check_close(two, 1e-5);
  }
}

}  // namespace graph_node_test
