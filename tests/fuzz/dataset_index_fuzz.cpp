// The text index files of CUB-200-2011 and Oxford-IIIT Pet. The input is cut
// at zero bytes into up to four files: CUB's images.txt, image_class_labels.txt,
// train_test_split.txt and classes.txt; the first two also serve as Pet's
// trainval.txt and test.txt. A few image files exist for the indexes to name.
#include "elastic/data/datasets.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> parts(4);
  std::size_t k = 0;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0 && k < 3) {
      ++k;
      continue;
    }
    parts[k].push_back(static_cast<char>(data[i]));
  }
  const auto root = fuzz::scratch_dir() / "ds";
  static const bool images = [&] {
    for (const char* f :
         {"cub/images/001.a/a_1.jpg", "cub/images/002.b/b_2.jpg", "pet/images/Cat_1.jpg", "pet/images/dog_2.jpg"})
      fuzz::write_file(root / f, nullptr, 0);
    return true;
  }();
  (void)images;
  const auto put = [&](const std::filesystem::path& p, const std::string& s) {
    fuzz::write_file(p, reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  };
  put(root / "cub" / "images.txt", parts[0]);
  put(root / "cub" / "image_class_labels.txt", parts[1]);
  put(root / "cub" / "train_test_split.txt", parts[2]);
  put(root / "cub" / "classes.txt", parts[3]);
  put(root / "pet" / "annotations" / "trainval.txt", parts[0]);
  put(root / "pet" / "annotations" / "test.txt", parts[1]);
  fuzz::expect_ok_or_error([&] { (void)elastic::data::open_dataset("caltech_birds2011", root / "cub"); });
  fuzz::expect_ok_or_error([&] { (void)elastic::data::open_dataset("oxford_iiit_pet", root / "pet"); });
  return 0;
}
