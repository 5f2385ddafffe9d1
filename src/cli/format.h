// Small formatting helpers shared by the CLI commands.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace trex::cli {

// "86.7 MiB"
inline std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// "0.42 s" from milliseconds
inline std::string seconds(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", ms / 1000.0);
  return buf;
}

// A threshold as the user would write it: "1e-07", "0.99".
inline std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace trex::cli
