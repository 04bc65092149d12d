#include "elastic/io/model_info.hpp"

#include <filesystem>

#include <unistd.h>

#include <doctest/doctest.h>

#include "elastic/io/weights.hpp"
#include "elastic/models/small_cnn.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace io_model_info_test {

using namespace elastic;
namespace fs = std::filesystem;

namespace {
io::ModelInfo sample() {
  io::ModelInfo i;
  i.model_name = "small_cnn";
  i.input_size = 28;
  i.num_classes = 3;
  i.class_names = {"cat", "dog", "bird"};
  i.mean = {0.5f, 0.25f, 0.125f};
  i.stddev = {0.2f, 0.3f, 0.4f};
  return i;
}
fs::path temp(const char* name) {
  return fs::temp_directory_path() / fmt::format("elastic_model_info_{}_{}.safetensors", name, ::getpid());
}
}  // namespace

TEST_CASE("a model description written with the weights reads back field for field") {
  Context ctx(1);
  Model m = small_cnn(ctx, {.batch = 2, .num_classes = 3});
  const fs::path p = temp("roundtrip");
  io::save_weights(m.params(), p, sample());
  const auto back = io::read_model_info(io::SafetensorsFile(p));
  REQUIRE(back.has_value());
  CHECK(back->to_json() == sample().to_json());
  CHECK(back->class_names[2] == "bird");
  CHECK(back->stddev[1] == 0.3f);
  io::save_weights(m.params(), p);  // without one: none read back
  CHECK_FALSE(io::read_model_info(io::SafetensorsFile(p)).has_value());
  fs::remove(p);
}

TEST_CASE("descriptions no model could come from are refused, naming the field") {
  const auto refused = [](io::ModelInfo i, const char* needle) {
    CHECK_THROWS_WITH_AS(i.check("'f'"), doctest::Contains(needle), Error);
  };
  auto i = sample();
  i.class_names.pop_back();
  refused(i, "2 class names for 3 classes");
  i = sample();
  i.input_size = 8;
  refused(i, "input_size 8");
  i = sample();
  i.stddev[2] = 0;
  refused(i, "stddev[2]");
  i = sample();
  i.precision = "float16";
  refused(i, "precision 'float16'");
  CHECK_NOTHROW(sample().check("'f'"));
  // From JSON: a missing field names the key and the file.
  auto j = sample().to_json();
  j.erase("num_classes");
  CHECK_THROWS_WITH_AS(io::ModelInfo::from_json(j, "'model.safetensors'"),
                       doctest::Contains("'model.safetensors': malformed elastic_model metadata"), Error);
}

}  // namespace io_model_info_test
