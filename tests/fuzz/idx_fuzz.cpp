// IDX files, raw or gzip-compressed.
#include "elastic/data/idx.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = fuzz::scratch_dir() / "f.idx";
  fuzz::write_file(path, data, size);
  return fuzz::expect_ok_or_error([&] { (void)elastic::data::read_idx(path); });
}
