/// \file
/// attnkit::error and the checks that raise it before any output is written.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace attnkit {

/// Thrown for invalid arguments; the message names the argument and what was expected.
struct error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

template <class... Parts>
void require(bool condition, const Parts&... parts) {
  if (!condition) throw error(concat(parts...));
}

}  // namespace detail
}  // namespace attnkit
