// Timing profile files (JSON).
#include "elastic/method/profile.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  return fuzz::expect_ok_or_error([&] {
    const auto p = elastic::Profile::parse(text, "fuzz.json");
    (void)p.t_bwd(std::vector<bool>(p.units.size(), true));
  });
}
