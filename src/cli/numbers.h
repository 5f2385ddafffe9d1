// Validation of the numbers given on the command line: a value out of range, negative, zero where a count is
// wanted, not a number, or too large for its type is a usage error (exit 1) with one line naming the option.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <utility>

namespace trex::cli {

// Sample shapes fed to ONNX Runtime (verify, quantize's comparison, --static-shape's load check):
// BATCH × SEQUENCE at most this many tokens, so a typo cannot ask for terabytes.
constexpr int64_t kMaxSampleTokens = int64_t{1} << 20;

// An integer in [lo, hi] (no sign or overflow surprises: parsed with std::from_chars).
CLI::Validator integer_in(int64_t lo, int64_t hi);
// A finite real number in [lo, hi] (NaN and infinities refused).
CLI::Validator real_in(double lo, double hi);

// Throws UsageError when batch × seq exceeds kMaxSampleTokens. `what` names the options ("--batch × --seq").
void check_sample_tokens(int64_t batch, int64_t seq, const std::string& what);

// "B,S" → {B, S}, both positive and B × S ≤ kMaxSampleTokens; UsageError otherwise.
std::pair<int64_t, int64_t> parse_static_shape(const std::string& text);

}  // namespace trex::cli
