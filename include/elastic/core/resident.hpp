// The process's resident memory as Linux reports it: now (/proc/self/statm)
// and at its peak so far (VmHWM in /proc/self/status). 0 where unavailable. And how to make
// freed memory leave the process (return_freed_memory).
#pragma once

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

// Large blocks (256 KiB and up) are mapped and unmapped on their own from here on, so that
// freeing one gives its memory back to the system at once. glibc otherwise raises its mapping
// threshold after the first large free, and later large blocks then come from the heap, whose
// freed pages stay resident. Process-wide; for runs under a memory budget, called before the
// large buffers are made.
inline void return_freed_memory() { ::mallopt(M_MMAP_THRESHOLD, 256 * 1024); }

inline std::int64_t peak_resident_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.starts_with("VmHWM:")) return std::stoll(line.substr(6)) * 1024;  // "VmHWM:   123 kB"
  return 0;
}

}  // namespace elastic
