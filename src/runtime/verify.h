// Runs two ONNX models on the same random inputs in ONNX Runtime and compares their outputs
// (max abs diff and cosine similarity per output). Used by `trex verify` and by `export --optimize`.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace trex {

struct VerifyOptions {
  int64_t batch = 2;
  int64_t seq = 16;
  double atol = 1e-4;
  uint64_t seed = 42;
  // Exclusive upper bound of random integer inputs by name (input_ids → vocab). Integer inputs named like
  // *mask* get ones with padding at the end of later rows; other integer inputs default to [0, 2).
  std::map<std::string, int64_t> input_limits;
  int threads = 1;
};

struct OutputComparison {
  std::string name;
  std::vector<int64_t> shape;
  double max_abs_diff = 0;
  double cosine = 1;
};

struct VerifyReport {
  std::vector<OutputComparison> outputs;
  double atol = 0;
  bool ok() const;
  std::string table() const;  // readable, one line per output
  std::string json() const;
};

// Throws InputError when a model cannot be loaded/run, VerificationError when the models' inputs/outputs differ.
VerifyReport verify_models(const std::filesystem::path& a, const std::filesystem::path& b, const VerifyOptions& options);

}  // namespace trex
