// Error types of the trex library. The CLI maps each kind to a documented exit code.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace trex {

// Longest error message kept (in bytes); longer ones are cut, saying how much was left out.
inline constexpr size_t kMaxErrorMessageBytes = 1000;

// Every error is printed as one line: control characters (newlines included) become spaces, and the text is
// capped at kMaxErrorMessageBytes (cut at a UTF-8 character boundary), whatever a hostile input put in it.
inline std::string one_line_message(const std::string& m) {
  std::string s;
  const size_t keep = m.size() <= kMaxErrorMessageBytes ? m.size() : kMaxErrorMessageBytes - 40;
  s.reserve(keep + 48);
  size_t cut = keep;
  while (cut > 0 && cut < m.size() && (static_cast<unsigned char>(m[cut]) & 0xC0) == 0x80) --cut;
  for (size_t i = 0; i < cut; ++i) {
    const unsigned char c = static_cast<unsigned char>(m[i]);
    s.push_back(c < 0x20 || c == 0x7F ? ' ' : m[i]);
  }
  if (cut < m.size()) s += "... (" + std::to_string(m.size() - cut) + " more bytes)";
  return s;
}

// Exit codes of the `trex` command (documented in README.md).
enum class ExitCode : int {
  kOk = 0,
  kUsage = 1,         // bad command line, unsupported option value or pipeline
  kInput = 2,         // bad checkpoint / model file: missing, corrupt, unsupported, shape mismatch
  kVerification = 3,  // exported model failed its load check or a tolerance
  kOutput = 4,        // output cannot be written
  kInternal = 5,      // a bug in trex (an unexpected exception)
};

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& message) : std::runtime_error(one_line_message(message)), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

// A problem with what the user gave us to read (checkpoint folder, config.json, weights, ONNX file).
// The message names the file and the problem.
class InputError : public Error {
 public:
  explicit InputError(const std::string& message) : Error(ExitCode::kInput, message) {}
  InputError(const std::string& file, const std::string& problem) : Error(ExitCode::kInput, file + ": " + problem) {}
};

class UsageError : public Error {
 public:
  explicit UsageError(const std::string& message) : Error(ExitCode::kUsage, message) {}
};

class OutputError : public Error {
 public:
  explicit OutputError(const std::string& message) : Error(ExitCode::kOutput, message) {}
  OutputError(const std::string& file, const std::string& problem) : Error(ExitCode::kOutput, file + ": " + problem) {}
};

class VerificationError : public Error {
 public:
  explicit VerificationError(const std::string& message) : Error(ExitCode::kVerification, message) {}
};

}  // namespace trex
