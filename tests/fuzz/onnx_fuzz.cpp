// ONNX models (elastic::onnx_import): protobuf, the checker, shape inference,
// the operators' attributes and the initializers, all from the file.
#include "elastic/onnx/import.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static elastic::Context ctx(1);
  const auto path = fuzz::scratch_dir() / "model.onnx";
  fuzz::write_file(path, data, size);
  return fuzz::expect_ok_or_error(
      [&] { elastic::onnx_import::import_model(path, ctx, {.num_classes = 3, .input_size = 16, .batch = 1}); });
}
