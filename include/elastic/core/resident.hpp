// The process's resident memory as Linux reports it: now (/proc/self/statm)
// and at its peak so far (VmHWM in /proc/self/status). 0 where unavailable. And what glibc's
// malloc does with freed memory: leave the process at once (return_freed_memory) or stay for
// the kernels' next call (reuse_kernel_workspaces).
#pragma once

#include <atomic>
#include <cstdint>
#include <fstream>
#include <string>

#include <malloc.h>
#include <unistd.h>

namespace elastic {

inline std::int64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  std::int64_t pages = 0, resident = 0;
  if (!(f >> pages >> resident)) return 0;
  return resident * static_cast<std::int64_t>(::sysconf(_SC_PAGESIZE));
}

namespace detail {
inline std::atomic<bool>& returning_freed_memory() {
  static std::atomic<bool> on = false;
  return on;
}
}  // namespace detail

// Large blocks (256 KiB and up) are mapped and unmapped on their own from here on, so that
// freeing one gives its memory back to the system at once. glibc otherwise raises its mapping
// threshold after the first large free, and later large blocks then come from the heap, whose
// freed pages stay resident. Process-wide and for good (reuse_kernel_workspaces no longer
// applies); for runs under a memory budget, called before the large buffers are made. Its
// cost: the kernels' per-call workspaces (below) are then mapped afresh on every call, which
// made ViT-B/16's fp32 step 9-11% slower (benchmarks/RESULTS.md).
inline void return_freed_memory() {
  detail::returning_freed_memory() = true;
  ::mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  ::mallopt(M_TRIM_THRESHOLD, 128 * 1024);  // glibc's default, in case reuse_kernel_workspaces raised it
  ::malloc_trim(0);  // and what its heaps hold free now goes back too (a block is cut from a heap's free top first)
}

// oneDNN 2.6's gemm-based kernels (the inner products' backward passes, batched matmuls)
// allocate their packing buffers on every call and free them at its end: 0.6-4.7 MB each, 168
// in a ViT-B/16 fp32 training step at batch 4. Under glibc's defaults, whether such a block
// lands on pages already resident depends on the heap's history: the heap's top goes back to
// the system whenever more than the trim threshold is free there, and the next block faults
// its pages in again (27,288 page faults in every ViT step of one build, none in another).
// Fixing the thresholds at the values glibc's own adjustment ends at (blocks under 32 MiB
// from the heap; its top returned past 64 MiB free) makes every run that steady state.
// Process-wide; Context calls it, unless return_freed_memory was called first. It replaces
// the process's own settings of these two (mallopt, GLIBC_TUNABLES): an application that
// needs its own calls mallopt after making its Context.
inline void reuse_kernel_workspaces() {
  if (detail::returning_freed_memory()) return;
  ::mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  ::mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
}

inline std::int64_t peak_resident_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.starts_with("VmHWM:")) return std::stoll(line.substr(6)) * 1024;  // "VmHWM:   123 kB"
  return 0;
}

}  // namespace elastic
