// Input pipeline throughput on 500x375 JPEGs (the typical size of the
// method's datasets): decode, resize to 224 and augment on one thread; the
// loader's throughput with 1 and 2 decoding threads; and the loader feeding
// a training run (MobileNetV2, batch 4, 224x224), where the figure that
// matters is how long the trainer waits for data.
// Usage: data_pipeline [images] [train_steps] [threads]
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "elastic/core/timer.hpp"
#include "elastic/data/image.hpp"  // jpeglib.h, after <cstdio>
#include "elastic/data/loader.hpp"
#include "elastic/models/zoo.hpp"
#include "elastic/train/trainer.hpp"

using namespace elastic;
using namespace elastic::data;
namespace fs = std::filesystem;

namespace {

// A 500x375 photo-like picture (smooth shapes plus sensor-like noise) as a
// quality-90 baseline JPEG.
void write_jpeg(const fs::path& path, std::uint64_t seed) {
  constexpr int W = 500, H = 375;
  std::vector<std::uint8_t> rgb(W * H * 3);
  Rng rng(seed);
  const float fx = rng.uniform(0.01f, 0.05f), fy = rng.uniform(0.01f, 0.05f), ph = rng.uniform(0.0f, 6.0f);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < 3; ++c) {
        const float v =
            128 + 90 * std::sin(fx * float(x) * float(c + 1) + ph) * std::cos(fy * float(y) - ph) + 12 * rng.normal();
        rgb[std::size_t((y * W + x) * 3 + c)] = std::uint8_t(std::clamp(v, 0.0f, 255.0f));
      }
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot write '{}'", path.string());
  jpeg_stdio_dest(&cinfo, f);
  cinfo.image_width = W;
  cinfo.image_height = H;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 90, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = rgb.data() + cinfo.next_scanline * W * 3;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  const int images = argc > 1 ? std::atoi(argv[1]) : 128;
  const int train_steps = argc > 2 ? std::atoi(argv[2]) : 24;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 2;
  try {
    const fs::path dir = fs::temp_directory_path() / fmt::format("elastic_data_bench_{}", ::getpid());
    struct Cleanup {
      fs::path p;
      ~Cleanup() { fs::remove_all(p); }
    } cleanup{dir};
    for (const char* split : {"train", "test"})
      for (int c = 0; c < 4; ++c) fs::create_directories(dir / split / fmt::format("class{}", c));
    for (int i = 0; i < images; ++i)
      write_jpeg(dir / "train" / fmt::format("class{}", i % 4) / fmt::format("{}.jpg", i), i);
    for (int c = 0; c < 4; ++c) write_jpeg(dir / "test" / fmt::format("class{}", c) / "0.jpg", 1000 + c);
    const Dataset d = open_dataset("image_folder", dir);
    std::uintmax_t bytes = 0;
    for (const auto& f : d.train.files) bytes += fs::file_size(f);
    fmt::print("{} JPEGs of 500x375, {:.1f} KiB each on average\n\n", images, double(bytes) / images / 1024);

    // One thread, the pieces on their own and together.
    const Normalize norm;
    std::vector<float> out(224 * 224 * 3), scratch;
    std::vector<Image> decoded(d.train.files.size());
    double decode_ms = 0, resize_ms = 0, augment_ms = 0;
    {
      Stopwatch sw;
      for (std::size_t i = 0; i < decoded.size(); ++i) decoded[i] = read_image(d.train.files[i]);
      decode_ms = sw.elapsed_ms();
      sw.reset();
      for (const auto& img : decoded) transform_image(img, 224, 224, nullptr, norm, out.data(), scratch);
      resize_ms = sw.elapsed_ms();
      sw.reset();
      Rng rng(1);
      for (const auto& img : decoded) {
        const Augmentation a = draw_augmentation(rng);
        transform_image(img, 224, 224, &a, norm, out.data(), scratch);
      }
      augment_ms = sw.elapsed_ms();
    }
    const auto rate = [&](double ms) { return images / (ms / 1000); };
    fmt::print("one thread                         images/s   ms/image\n");
    fmt::print("  decode                           {:8.0f}   {:8.3f}\n", rate(decode_ms), decode_ms / images);
    fmt::print("  resize + normalize               {:8.0f}   {:8.3f}\n", rate(resize_ms), resize_ms / images);
    fmt::print("  resize + augment + normalize     {:8.0f}   {:8.3f}\n", rate(augment_ms), augment_ms / images);
    fmt::print("  decode + resize + augment        {:8.0f}   {:8.3f}\n\n", rate(decode_ms + augment_ms),
               (decode_ms + augment_ms) / images);

    // The loader alone, consumer never busy.
    fmt::print("loader alone (batch 4, 224x224, augmented)   images/s\n");
    for (int workers : {0, 1, 2}) {
      Loader l(d.train, {.batch = 4,
                         .height = 224,
                         .width = 224,
                         .normalize = norm,
                         .augment = true,
                         .drop_last = true,
                         .seed = 1,
                         .workers = workers,
                         .prefetch = 4});
      l.start_epoch(0, true);
      Stopwatch sw;
      for (std::int64_t b = 0; b < l.batches(); ++b) l.get(b);
      const std::string who =
          workers == 0 ? "the caller's thread" : fmt::format("{} decoding thread{}", workers, workers == 1 ? "" : "s");
      fmt::print("  {:<40} {:8.0f}\n", who, double(l.batches() * 4) / (sw.elapsed_ms() / 1000));
    }

    // Feeding a trainer: MobileNetV2 full training, batch 4, 224x224.
    fmt::print("\nloader feeding training (mobilenetv2, batch 4, 224x224, {} kernel threads, {} steps)\n", threads,
               train_steps);
    fmt::print("  decoding                 step ms   images/s   waited for data (s)   share of epoch\n");
    Context ctx(threads);
    Model m = build_model("mobilenetv2", ctx, {.num_classes = 4, .input_size = 224, .batch = 4});
    for (int workers : {0, 1, 2}) {
      LoaderOptions o = loader_options_for(m, true, 1);
      o.workers = workers;
      Loader l(d.train, o);
      Trainer t(m, TrainerOptions{.type = TrainType::full_training, .num_epochs = 1}, l.batches());
      t.log = nullptr;
      // Warm up primitives and caches with two steps of an epoch that is not timed.
      {
        l.start_epoch(99, true);
        for (std::int64_t b = 0; b < 2; ++b) {
          l.load(m, b);
          m.graph->forward(true);
          m.graph->backward();
        }
      }
      struct Limited {
        Loader& l;
        std::int64_t steps;
        void start_epoch(std::uint64_t e, bool s) { l.start_epoch(e, s); }
        std::int64_t batches(std::int64_t b, bool d) const { return std::min(steps, l.batches(b, d)); }
        std::int64_t load(Model& m, std::int64_t b) { return l.load(m, b); }
        double wait_ms() const { return l.wait_ms(); }
      } source{l, train_steps};
      const EpochRecord r = t.train_epoch(source, 0);
      fmt::print("  {:<22} {:9.1f}   {:8.1f}   {:19.2f}   {:13.1f}%\n",
                 workers == 0 ? "on the trainer's thread"
                              : fmt::format("{} background thread{}", workers, workers == 1 ? "" : "s"),
                 r.train_ms / double(r.steps), double(r.train.count) / (r.train_ms / 1000), r.data_wait_ms / 1000,
                 100 * r.data_wait_ms / r.train_ms);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
