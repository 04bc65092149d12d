// JPEG and PNG decoding: decode_image, the entry point of every dataset image.
#include "elastic/data/image.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return fuzz::expect_ok_or_error([&] {
    const auto img = elastic::data::decode_image(data, size, "fuzz");
    if (img.rgb.size() != static_cast<std::size_t>(img.height * img.width * 3)) std::abort();
  });
}
