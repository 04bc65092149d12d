// Stanford Dogs' MATLAB list files (through libmatio).
#include "elastic/data/datasets.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = fuzz::scratch_dir() / "list.mat";
  fuzz::write_file(path, data, size);
  return fuzz::expect_ok_or_error([&] { (void)elastic::data::detail::read_mat_list(path); });
}
