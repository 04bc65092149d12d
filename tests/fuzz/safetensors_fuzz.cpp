// safetensors: header JSON, offsets, dtypes and data, read as every type.
#include "elastic/io/safetensors.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = fuzz::scratch_dir() / "f.safetensors";
  fuzz::write_file(path, data, size);
  return fuzz::expect_ok_or_error([&] {
    const elastic::io::SafetensorsFile file(path);
    for (const auto& t : file.tensors()) {
      fuzz::expect_ok_or_error([&] { (void)file.read_f32(t.name); });
      fuzz::expect_ok_or_error([&] { (void)file.read_i64(t.name); });
    }
  });
}
