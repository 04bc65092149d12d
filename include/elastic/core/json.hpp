// Typed reads of JSON values from files the user hands in. nlohmann's get<int>
// on a value such as 1e300 is undefined behaviour; these check the kind and
// the range first and throw elastic::Error naming the field.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "elastic/core/error.hpp"

namespace elastic {

template <class T>
T json_integer(const nlohmann::json& j, std::string_view what) {
  if (j.is_number_unsigned()) {
    const auto v = j.get<std::uint64_t>();
    if (std::in_range<T>(v)) return static_cast<T>(v);
  } else if (j.is_number_integer()) {
    const auto v = j.get<std::int64_t>();
    if (std::in_range<T>(v)) return static_cast<T>(v);
  } else {
    fail("{} must be an integer, got {}", what, j.dump().substr(0, 40));
  }
  fail("{} = {} is out of range", what, j.dump());
}

inline double json_number(const nlohmann::json& j, std::string_view what) {
  if (!j.is_number()) fail("{} must be a number, got {}", what, j.dump().substr(0, 40));
  return j.get<double>();
}

}  // namespace elastic
