// A checkpoint's trainer state (its "elastic_state" metadata, JSON); the
// checkpoint's tensors are covered by the safetensors target.
#include "elastic/train/checkpoint.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  return fuzz::expect_ok_or_error([&] { (void)elastic::parse_checkpoint_state(text, "fuzz.safetensors"); });
}
