#include "cli/numbers.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include "util/error.h"

namespace trex::cli {

namespace {

bool parse_int(const std::string& s, int64_t* v) {
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, *v);
  return ec == std::errc() && p == end;
}

}  // namespace

CLI::Validator integer_in(int64_t lo, int64_t hi) {
  const std::string range = std::to_string(lo) + " to " + std::to_string(hi);
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        int64_t v = 0;
        if (!parse_int(s, &v) || v < lo || v > hi) return "must be an integer from " + range + ", got '" + s + "'";
        return {};
      },
      "in [" + range + "]");
}

CLI::Validator real_in(double lo, double hi) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%g to %g", lo, hi);
  const std::string range = buf;
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v) || v < lo || v > hi)
          return "must be a number from " + range + ", got '" + s + "'";
        return {};
      },
      "in [" + range + "]");
}

void check_sample_tokens(int64_t batch, int64_t seq, const std::string& what) {
  if (batch <= 0 || seq <= 0 || batch > kMaxSampleTokens / seq)
    throw UsageError(what + ": " + std::to_string(batch) + " x " + std::to_string(seq) + " is more than " +
                     std::to_string(kMaxSampleTokens) + " tokens");
}

std::pair<int64_t, int64_t> parse_static_shape(const std::string& text) {
  const auto comma = text.find(',');
  int64_t b = 0, s = 0;
  if (comma == std::string::npos || !parse_int(text.substr(0, comma), &b) || !parse_int(text.substr(comma + 1), &s) ||
      b <= 0 || s <= 0)
    throw UsageError("--static-shape wants BATCH,SEQUENCE (two positive integers), got '" + text + "'");
  check_sample_tokens(b, s, "--static-shape");
  return {b, s};
}

}  // namespace trex::cli
