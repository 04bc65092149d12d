// The dataset readers against what the fixture generator wrote, and every
// malformed index file giving an error that names file and line.
#include "elastic/data/datasets.hpp"

#include <doctest/doctest.h>

#include "support/dataset_fixtures.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace data_datasets_test {

using namespace elastic;
using namespace elastic::data;
namespace fs = std::filesystem;

namespace {

// The split's (path relative to the fixture dir, label) pairs.
std::vector<std::pair<std::string, int>> pairs(const Split& s) {
  std::vector<std::pair<std::string, int>> out;
  for (std::int64_t i = 0; i < s.size(); ++i)
    out.emplace_back(fs::relative(s.files[std::size_t(i)], fixtures::datasets().dir).string(),
                     s.labels[std::size_t(i)]);
  return out;
}

std::vector<std::pair<std::string, int>> expected(const nlohmann::json& j) {
  std::vector<std::pair<std::string, int>> out;
  for (const auto& e : j) out.emplace_back(e[0].get<std::string>(), e[1].get<int>());
  return out;
}

void check_against_manifest(const Dataset& d, const std::string& key) {
  const auto& m = fixtures::datasets().manifest[key];
  CHECK(d.class_names == m["classes"].get<std::vector<std::string>>());
  CHECK(pairs(d.train) == expected(m["train"]));
  CHECK(pairs(d.test) == expected(m["test"]));
  CHECK(d.train.memory == nullptr);
}

std::string open_error(const std::string& name, const fs::path& dir) {
  try {
    open_dataset(name, dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// An index file's line replaced by `text`, and the message expected.
struct BrokenLine {
  const char* file;
  int line;
  std::string text, message;
};

// Replaces line `line` (1-based) of a text file.
void replace_line(const fs::path& p, int line, const std::string& text) {
  std::istringstream in(fixtures::read_text(p));
  std::string out, l;
  for (int i = 1; std::getline(in, l); ++i) out += (i == line ? text : l) + "\n";
  fixtures::write_text(p, out);
}

}  // namespace

TEST_CASE("caltech_birds2011 from the extracted folder or its parent") {
  const auto& fx = fixtures::datasets();
  const Dataset a = open_dataset("caltech_birds2011", fx.dir / "cub");
  const Dataset b = open_dataset("caltech_birds2011", fx.dir / "cub" / "CUB_200_2011");
  check_against_manifest(a, "caltech_birds2011");
  check_against_manifest(b, "caltech_birds2011");
  CHECK(a.num_classes() == 3);
  CHECK(a.train.size() == 6);
  CHECK(a.test.size() == 6);
  CHECK(open_error("caltech_birds2011", fx.dir / "pet").find("CUB_200_2011/images.txt") != std::string::npos);
}

TEST_CASE("oxford_iiit_pet: comment lines skipped, breeds named from image names") {
  const Dataset d = open_dataset("oxford_iiit_pet", fixtures::datasets().dir / "pet");
  check_against_manifest(d, "oxford_iiit_pet");
  CHECK(d.class_names[1] == "american_bulldog");
}

TEST_CASE("stanford_dogs reads compressed and uncompressed MATLAB 5 lists") {
  const auto& fx = fixtures::datasets();
  check_against_manifest(open_dataset("stanford_dogs", fx.dir / "dogs"), "dogs");
  check_against_manifest(open_dataset("stanford_dogs", fx.dir / "dogs_uncompressed"), "dogs_uncompressed");
  const auto mismatch = open_error("stanford_dogs", fx.dir / "dogs_bad_labels");
  CHECK(mismatch.find("train_list.mat': 'labels' has 8 entries but 'file_list' has 9") != std::string::npos);
  const auto missing = open_error("stanford_dogs", fx.dir / "dogs_missing_image");
  CHECK(missing.find("test_list.mat': file_list entry 4 names") != std::string::npos);
  CHECK(missing.find("n02085620_999.jpg', which does not exist") != std::string::npos);
}

TEST_CASE("image_folder: sorted classes, image extensions in any case, other files ignored") {
  const Dataset d = open_dataset("image_folder", fixtures::datasets().dir / "folder");
  check_against_manifest(d, "image_folder");
  CHECK(d.class_names == std::vector<std::string>{"cat", "dog", "zebra"});
}

TEST_CASE("fashion_mnist from gzipped IDX files, with a subset of classes relabelled") {
  const auto& fx = fixtures::datasets();
  const auto& m = fx.manifest["fashion_mnist"];
  const Dataset all = open_dataset("fashion_mnist", fx.dir / "fashion");
  CHECK(all.num_classes() == 10);
  CHECK(all.train.labels == m["train_labels"].get<std::vector<std::int32_t>>());
  CHECK(all.test.labels == m["test_labels"].get<std::vector<std::int32_t>>());
  // The generator wrote label * 20 into each first pixel: images and labels stay paired.
  const Image img = all.train.image(7);
  CHECK(img.height == 28);
  CHECK(img.rgb[0] == 7 * 20);
  CHECK(img.rgb[1] == img.rgb[0]);

  const Dataset upper = open_dataset("fashion_mnist", fx.dir / "fashion", {.classes = parse_class_list("5-9")});
  CHECK(upper.class_names == std::vector<std::string>{"Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"});
  CHECK(upper.train.size() == 15);
  CHECK(upper.test.size() == 10);
  for (std::int64_t i = 0; i < upper.train.size(); ++i) {
    const int label = upper.train.labels[std::size_t(i)];
    REQUIRE(label >= 0);
    REQUIRE(label < 5);
    REQUIRE(upper.train.image(i).rgb[0] == (label + 5) * 20);
  }
}

TEST_CASE("class lists and class subsets of file datasets") {
  CHECK(parse_class_list("0-4") == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(parse_class_list("7,1,3-4") == std::vector<int>{7, 1, 3, 4});
  CHECK_THROWS_WITH_AS(parse_class_list("4-1"), doctest::Contains("range 4-1 is empty"), UsageError);
  CHECK_THROWS_AS(parse_class_list("a"), UsageError);
  CHECK_THROWS_AS(parse_class_list(""), UsageError);
  const auto dir = fixtures::datasets().dir / "folder";
  const Dataset d = open_dataset("image_folder", dir, {.classes = {2, 0}});
  CHECK(d.class_names == std::vector<std::string>{"zebra", "cat"});
  for (auto l : d.train.labels) CHECK((l == 0 || l == 1));
  CHECK(d.train.size() == 6);
  CHECK_THROWS_WITH_AS(open_dataset("image_folder", dir, {.classes = {3}}),
                       doctest::Contains("class 3 is not a class of image_folder (it has 3)"), UsageError);
}

TEST_CASE("unknown names, missing directories and empty splits") {
  CHECK_THROWS_WITH_AS(open_dataset("imagenet", "/tmp"), doctest::Contains("'imagenet' is not one of"), UsageError);
  CHECK_THROWS_WITH_AS(open_dataset("oxford_iiit_pet", ""), doctest::Contains("--data_dir is required"), UsageError);
  CHECK(open_error("oxford_iiit_pet", "/nonexistent").find("--data_dir '/nonexistent' is not a directory") !=
        std::string::npos);
  fixtures::Copy c("folder", "empty");
  fs::remove_all(c.dir / "test");
  fs::create_directories(c.dir / "test");
  CHECK(open_error("image_folder", c.dir).find("the test split is empty") != std::string::npos);
  fs::create_directories(c.dir / "test" / "horse");
  CHECK(open_error("image_folder", c.dir).find("class 'horse'") != std::string::npos);
}

TEST_CASE("malformed CUB index files name file and line") {
  const std::vector<BrokenLine> cases{
      {"images.txt", 3, "3", "images.txt:3: expected 2 columns (image id, path), found 1"},
      {"images.txt", 2, "7 001.Black_footed_Albatross/x.jpg", "images.txt:2: image id 7 out of order (expected 2)"},
      {"images.txt", 4, "4 001.Black_footed_Albatross/missing.jpg", "missing.jpg' does not exist"},
      {"image_class_labels.txt", 5, "5 4", "image_class_labels.txt:5: class id 4 is outside [1, 3]"},
      {"image_class_labels.txt", 5, "99 1", "image_class_labels.txt:5: image id 99 is outside [1, 12]"},
      {"image_class_labels.txt", 5, "1 1", "image_class_labels.txt:5: image id 1 appears twice"},
      {"train_test_split.txt", 2, "2 yes", "train_test_split.txt:2: is_training_image 0 or 1 'yes' is not an integer"},
      {"train_test_split.txt", 2, "2 3", "train_test_split.txt:2: is_training_image 0 or 1 3 is outside [0, 1]"},
      {"classes.txt", 2, "2", "classes.txt:2: expected 2 columns"},
  };
  for (const auto& k : cases) {
    CAPTURE(k.message);
    fixtures::Copy c("cub", "broken");
    replace_line(c.dir / "CUB_200_2011" / k.file, k.line, k.text);
    const auto msg = open_error("caltech_birds2011", c.dir);
    CHECK(msg.find(k.message) != std::string::npos);
    CHECK(msg.find((c.dir / "CUB_200_2011").string()) != std::string::npos);
  }
  fixtures::Copy c("cub", "short");
  replace_line(c.dir / "CUB_200_2011" / "train_test_split.txt", 12, "");
  CHECK(open_error("caltech_birds2011", c.dir).find("train_test_split.txt': image id 12 of images.txt has no entry") !=
        std::string::npos);
  fs::remove(c.dir / "CUB_200_2011" / "classes.txt");
  CHECK(open_error("caltech_birds2011", c.dir).find("missing index file") != std::string::npos);
}

TEST_CASE("malformed Oxford-IIIT Pet annotations name file and line") {
  const std::vector<BrokenLine> cases{
      {"trainval.txt", 3, "Abyssinian_10 1 1", "trainval.txt:3: expected 4 columns"},
      {"trainval.txt", 4, "Abyssinian_11 one 1 1", "trainval.txt:4: class id 'one' is not an integer"},
      {"test.txt", 3, "Abyssinian_77 1 1 1", "test.txt:3: image '"},
      {"test.txt", 4, "american_bulldog_12 1 2 2", "test.txt:4: class id 1 names breed 'american_bulldog' but"},
  };
  for (const auto& k : cases) {
    CAPTURE(k.message);
    fixtures::Copy c("pet", "broken");
    replace_line(c.dir / "annotations" / k.file, k.line, k.text);
    CHECK(open_error("oxford_iiit_pet", c.dir).find(k.message) != std::string::npos);
  }
}

}  // namespace data_datasets_test
