// Errors of the library. Every failure a user can cause is reported as an
// elastic::Error whose message names the file, flag, layer or shape at fault.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace elastic {

// A run-time failure: bad data, a file that cannot be read, a shape mismatch.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A wrong flag or argument value given by the user (commands exit with 2).
class UsageError : public Error {
 public:
  using Error::Error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

template <class... Args>
[[noreturn]] void usage_fail(fmt::format_string<Args...> format, Args&&... args) {
  throw UsageError(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace elastic
