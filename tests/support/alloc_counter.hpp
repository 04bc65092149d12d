// Counts heap allocations made anywhere in the process (this program, oneDNN,
// the C++ runtime) while counting is on, by interposing the C allocator.
// Include from exactly one translation unit of a test executable.
#pragma once

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdlib>

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}

namespace alloc_counter {
inline std::atomic<bool> counting{false};
inline std::atomic<long> count{0};
inline std::atomic<long> bytes{0};
inline std::atomic<long> largest{0};
// With ALLOC_TRAP=<bytes> in the environment, a counted allocation that large
// stops the program with SIGTRAP, so a debugger shows who made it.
inline void note(std::size_t n = 0) {
  if (counting.load(std::memory_order_relaxed)) {
    static const long trap = [] {
      const char* e = std::getenv("ALLOC_TRAP");
      return e ? std::atol(e) : 0L;
    }();
    if (trap > 0 && static_cast<long>(n) >= trap) std::raise(SIGTRAP);
    count.fetch_add(1, std::memory_order_relaxed);
    bytes.fetch_add(static_cast<long>(n), std::memory_order_relaxed);
    long seen = largest.load(std::memory_order_relaxed);
    while (static_cast<long>(n) > seen && !largest.compare_exchange_weak(seen, static_cast<long>(n))) {
    }
  }
}
inline void start() {
  count = 0;
  bytes = 0;
  largest = 0;
  counting = true;
}
inline void stop() { counting = false; }
}  // namespace alloc_counter

extern "C" {
void* malloc(std::size_t n) {
  alloc_counter::note(n);
  return __libc_malloc(n);
}
void* calloc(std::size_t a, std::size_t b) {
  alloc_counter::note();
  return __libc_calloc(a, b);
}
void* realloc(void* p, std::size_t n) {
  alloc_counter::note(n);
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) {
  alloc_counter::note(n);
  return __libc_memalign(align, n);
}
void* memalign(std::size_t align, std::size_t n) {
  alloc_counter::note(n);
  return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) {
  alloc_counter::note(n);
  void* p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
}
