// The host's weight layout changes and fp32 -> bf16 conversions
// (graph/weight_reorder.hpp), taken by reorder_call, against oneDNN's reorder
// primitive on the same input: the same bytes, padding included, for each
// kind of pair the host handles (ResNet50's and ViT's shapes, and smaller
// ones with padding or a vector tail); and pairs it does not handle left to
// oneDNN.
#include "elastic/graph/weight_reorder.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <omp.h>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/graph/node.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace graph_weight_reorder_test {

using namespace elastic;
using dnnl::memory;
using tag = memory::format_tag;
constexpr auto f32 = memory::data_type::f32;
constexpr auto bf16 = memory::data_type::bf16;

namespace {
struct Case {
  memory::dims dims;
  memory::data_type from_type;
  tag from_tag;
  memory::data_type to_type;
  tag to_tag;
};

// Values that test the copy and bf16's rounding: random ones with bits below
// bf16's precision, exact ties to even (both parities), values that round up
// into the next binade and to infinity, infinities, NaNs, signed zeros and
// denormals (oneDNN's native bf16 conversion makes them zeros).
void fill(float* p, std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  const float special[] = {std::bit_cast<float>(0x3F808000u),  // tie, even below: rounds down
                           std::bit_cast<float>(0x3F818000u),  // tie, odd below: rounds up
                           std::bit_cast<float>(0x3FFFFFFFu),  // rounds up into the next binade
                           std::bit_cast<float>(0x7F7FFFFFu),  // largest float: rounds to infinity
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN(),
                           std::bit_cast<float>(0x7F800001u),  // signalling NaN: quieted
                           std::bit_cast<float>(0xFFC12345u),  // negative NaN with a payload
                           0.0f,
                           -0.0f,
                           std::bit_cast<float>(0x00400000u),  // denormals
                           std::bit_cast<float>(0x80012345u),
                           std::bit_cast<float>(0x007FFFFFu)};
  for (std::size_t i = 0; i < n; ++i)
    p[i] = i % 7 == 3 ? special[(i / 7) % std::size(special)] : rng.uniform(-3.0f, 3.0f);
}

// Runs the change through reorder_call and through oneDNN's reorder into two
// buffers prefilled with the same garbage, on `threads` threads; true when
// the host took it.
bool same_as_onednn(const Case& c, int threads = 2) {
  Context ctx(threads);
  const auto& eng = ctx.engine();
  const memory::desc from_md(c.dims, c.from_type, c.from_tag), to_md(c.dims, c.to_type, c.to_tag);
  memory from(from_md, eng), host(to_md, eng), reference(to_md, eng);
  fill(static_cast<float*>(from.get_data_handle()), from_md.get_size() / sizeof(float), 11);
  std::memset(host.get_data_handle(), 0x5A, to_md.get_size());
  std::memset(reference.get_data_handle(), 0x5A, to_md.get_size());
  const bool took = detail::host_reorder(from_md, to_md);
  reorder_call(from, host)(ctx.stream());
  dnnl::reorder(from, reference).execute(ctx.stream(), from, reference);
  ctx.stream().wait();
  CHECK_MESSAGE(std::memcmp(host.get_data_handle(), reference.get_data_handle(), to_md.get_size()) == 0, "dims ",
                to_string(c.dims), " to tag ", static_cast<int>(c.to_tag));
  return took;
}
}  // namespace

TEST_CASE("the host's weight layout changes give oneDNN's bytes, padding included") {
  const Case cases[] = {
      // fp32 forward weights: output channels innermost.
      {{512, 256, 3, 3}, f32, tag::abcd, f32, tag::Acdb32a},
      {{64, 32, 7, 7}, f32, tag::abcd, f32, tag::Acdb64a},
      {{2048, 1024, 1, 1}, f32, tag::abcd, f32, tag::Acdb48a},  // padded to 2064 channels
      {{80, 16, 3, 3}, f32, tag::abcd, f32, tag::Acdb48a},      // padded to 96
      {{32, 48, 1, 3}, f32, tag::abcd, f32, tag::Acdb16a},
      {{80, 32, 3, 3}, f32, tag::abcd, f32, tag::Acdb64a},  // padded to 128
      // bf16 forward weights: pairs of input channels.
      {{256, 128, 3, 3}, f32, tag::abcd, bf16, tag::AcdB32a2b},
      {{128, 64, 3, 3}, f32, tag::abcd, bf16, tag::AcdB64a2b},
      {{2048, 1024, 1, 1}, f32, tag::abcd, bf16, tag::AcdB48a2b},
      {{80, 32, 3, 3}, f32, tag::abcd, bf16, tag::AcdB48a2b},
      {{48, 32, 3, 3}, f32, tag::abcd, bf16, tag::AcdB16a2b},
      // backward_data's weights: 16 input channels innermost, or pairs of output channels.
      {{2048, 1024, 1, 1}, f32, tag::abcd, f32, tag::BAcd16a16b},
      {{32, 64, 1, 1}, f32, tag::abcd, f32, tag::ABcd16a16b},
      {{2048, 1024, 1, 1}, f32, tag::abcd, bf16, tag::BAcd8a16b2a},
      {{48, 16, 1, 1}, f32, tag::abcd, bf16, tag::ABcd8a16b2a},
      // Weight gradients back to the plain layout.
      {{512, 256, 3, 3}, f32, tag::ABcd16b16a, f32, tag::abcd},
      {{2048, 1024, 1, 1}, f32, tag::ABcd16b16a, f32, tag::abcd},
      {{16, 32, 5, 5}, f32, tag::ABcd16b16a, f32, tag::abcd},
      {{64, 64, 3, 3}, f32, tag::Acdb32a, f32, tag::abcd},  // forward layouts back
      {{128, 32, 3, 3}, f32, tag::Acdb64a, f32, tag::abcd},
      // fp32 -> bf16 in the same layout: linear weights, 1x1 convolution weights,
      // and sizes with a vector tail (one chunk, and several chunks and a tail).
      {{3072, 768}, f32, tag::ab, bf16, tag::ab},
      {{1000, 2048}, f32, tag::ab, bf16, tag::ab},
      {{2048, 512, 1, 1}, f32, tag::abcd, bf16, tag::abcd},
      {{7, 13}, f32, tag::ab, bf16, tag::ab},
      {{100003}, f32, tag::a, bf16, tag::a},
      {{4, 197, 768}, f32, tag::abc, bf16, tag::abc},
  };
  for (const Case& c : cases) {
    const bool took = same_as_onednn(c);
#ifdef ELASTIC_HOST_WEIGHT_REORDER
    // The path under test is the host's wherever the CPU has AVX-512.
    CHECK(took == detail::cpu_has_avx512f());
#else
    CHECK_FALSE(took);
#endif
  }
}

TEST_CASE("the host's weight layout changes are the same on one thread and on two") {
  const Case cases[] = {{{256, 128, 3, 3}, f32, tag::abcd, bf16, tag::AcdB32a2b},
                        {{100003}, f32, tag::a, bf16, tag::a}};
  for (const Case& c : cases)
    for (const int threads : {1, 2, 3}) {
      CHECK(same_as_onednn(c, threads) == detail::host_reorder(memory::desc(c.dims, c.from_type, c.from_tag),
                                                               memory::desc(c.dims, c.to_type, c.to_tag)));
      CHECK(omp_get_max_threads() == threads);
    }
}

TEST_CASE("layout pairs the host does not handle are left to oneDNN") {
  const Case others[] = {
      {{64, 3, 7, 7}, f32, tag::abcd, f32, tag::Acdb64a},        // 3 input channels
      {{24, 16, 3, 3}, f32, tag::abcd, f32, tag::Acdb16a},       // 24 output channels
      {{64, 64, 3, 3}, f32, tag::abcd, f32, tag::ABcd16a16b},    // backward_data's, 3x3
      {{64, 64, 3, 3}, f32, tag::abcd, bf16, tag::ABcd8a16b2a},  // backward_data's, 3x3, bf16
      {{64, 64, 1, 1}, f32, tag::abcd, bf16, tag::ABcd16a16b},   // 16 inputs innermost, in bf16
      {{64, 64, 3, 3}, f32, tag::abcd, f32, tag::ABcd8a16b2a},   // output pairs, in fp32
      {{64, 64, 3, 3}, f32, tag::abcd, bf16, tag::ABcd16b16a},   // the gradient's block, in bf16
      {{64, 64, 1, 1}, f32, tag::ABcd16a16b, f32, tag::abcd},    // backward_data's layout back
      {{64, 64, 3, 3}, f32, tag::abcd, f32, tag::acdb},          // plain to plain
      {{80, 32, 3, 3}, f32, tag::Acdb48a, f32, tag::abcd},       // padded, back to plain
      {{64, 64, 3, 3}, f32, tag::ABcd16b16a, f32, tag::acdb},    // gradient to channels-last
      {{64, 64, 3, 3}, f32, tag::ABcd16b16a, bf16, tag::abcd},   // gradient to bf16
      {{64, 64, 3, 3}, f32, tag::abcd, f32, tag::abcd},          // a copy
      {{64, 64}, f32, tag::ab, bf16, tag::ba},                   // to bf16, transposed
      {{64, 64, 3, 3}, f32, tag::abcd, bf16, tag::acdb},         // to bf16, channels-last
      {{64, 64, 3, 3}, bf16, tag::abcd, f32, tag::abcd},         // bf16 to fp32
  };
  for (const Case& c : others) CHECK_FALSE(same_as_onednn(c));
  // Not dense: rows 128 floats apart, 64 of them used.
  const memory::desc gaps({64, 64}, f32, memory::dims{128, 1}), gaps16({64, 64}, bf16, memory::dims{128, 1});
  CHECK(detail::bf16_conversion_size(gaps, gaps16) == 0);
#ifdef ELASTIC_HOST_WEIGHT_REORDER
  CHECK(detail::bf16_conversion_size(memory::desc({64, 64}, f32, tag::ab), memory::desc({64, 64}, bf16, tag::ab)) ==
        (detail::cpu_has_avx512f() ? 4096 : 0));
#endif
  // 4-d descs only.
  CHECK_FALSE(detail::weight_reorder_plan(memory::desc({64, 64}, f32, tag::ab), memory::desc({64, 64}, f32, tag::ba)));
}

}  // namespace graph_weight_reorder_test
