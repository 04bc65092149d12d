// The process's resident memory as Linux reports it: now (/proc/self/statm)
// and at its peak so far (VmHWM in /proc/self/status). 0 where unavailable.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include <unistd.h>

namespace elastic {

inline std::int64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  std::int64_t pages = 0, resident = 0;
  if (!(f >> pages >> resident)) return 0;
  return resident * static_cast<std::int64_t>(::sysconf(_SC_PAGESIZE));
}

inline std::int64_t peak_resident_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.starts_with("VmHWM:")) return std::stoll(line.substr(6)) * 1024;  // "VmHWM:   123 kB"
  return 0;
}

}  // namespace elastic
