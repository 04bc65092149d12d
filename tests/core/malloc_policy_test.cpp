// What Context and return_freed_memory do to glibc's malloc (core/resident.hpp). Both are
// process-wide and the second for good, so this file is an executable of its own, its cases in
// this order, in a fresh process: before either call glibc maps every block of 128 KiB and up.
#include <cstdlib>
#include <cstring>

#include <malloc.h>

#include <doctest/doctest.h>

#include "elastic/core/context.hpp"
#include "elastic/core/resident.hpp"

namespace core_malloc_policy_test {

using namespace elastic;

namespace {
// Bytes glibc holds in blocks mapped on their own (not in its heaps).
std::size_t mapped_bytes() { return mallinfo2().hblkhd; }
// Bytes free at the top of the main heap, which trimming would give back.
std::size_t free_top_bytes() { return mallinfo2().keepcost; }

// Whether a block of `bytes`, written, is mapped on its own while it lives.
bool mapped_on_its_own(std::size_t bytes) {
  const std::size_t before = mapped_bytes();
  void* p = std::malloc(bytes);
  REQUIRE(p != nullptr);
  std::memset(p, 1, bytes);
  const bool mapped = mapped_bytes() >= before + bytes;
  std::free(p);
  return mapped;
}
}  // namespace

TEST_CASE("a Context keeps the kernels' per-call workspaces (blocks under 32 MiB) in the heap") {
  // Before: glibc's default threshold, 128 KiB (this executable allocates nothing that large first).
  CHECK(mapped_on_its_own(4 << 20));
  Context ctx(1);
  for (const std::size_t mib : {1, 5, 16, 31}) {
    CAPTURE(mib);
    CHECK_FALSE(mapped_on_its_own(mib << 20));
  }
  CHECK(mapped_on_its_own(40 << 20));  // large buffers are still mapped, and unmapped when freed
  // A freed 20 MiB block at the heap's top stays there for the next one (glibc's default
  // trim threshold, 128 KiB, would give it back at once).
  CHECK(free_top_bytes() >= std::size_t{20} << 20);
}

TEST_CASE("return_freed_memory maps every block of 256 KiB and up, and a later Context leaves it so") {
  REQUIRE(free_top_bytes() >= std::size_t{20} << 20);  // what the case above left
  return_freed_memory();
  CHECK(free_top_bytes() < std::size_t{1} << 20);  // the heaps' free memory went back
  CHECK(mapped_on_its_own(1 << 20));
  Context ctx(1);
  CHECK(mapped_on_its_own(1 << 20));
  CHECK(mapped_on_its_own(300 << 10));
  CHECK_FALSE(mapped_on_its_own(200 << 10));
}

}  // namespace core_malloc_policy_test
