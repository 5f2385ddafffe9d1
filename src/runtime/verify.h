// `trex verify` and the check of `export --optimize`: two ONNX models run on the same random inputs
// (runtime/compare.h), judged against an absolute tolerance.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "runtime/compare.h"

namespace trex {

struct VerifyOptions {
  int64_t batch = 2;
  int64_t seq = 16;
  int64_t past = 0;  // past_sequence_length for models with a KV cache
  int64_t decode_past = -1;  // also compare decode steps over a cache this long (CompareOptions::decode_past)
  bool prepack = true;       // CompareOptions::prepack
  bool padded = true;
  int batches = 2;
  double atol = 1e-4;
  // When set, an output also passes when its mean row cosine vs the reference is at least this, even
  // beyond atol (int8 vs fp32 never meets an fp32 atol; its cosine says whether it is still the same model).
  std::optional<double> min_cosine;
  // Outputs to compare. Empty: the outputs both models have (in the reference's order); none in common is
  // an error. Naming an output one of the models lacks is a UsageError.
  std::vector<std::string> outputs;
  // Exclusive upper bounds of random integer inputs (input_ids → vocab). Inputs not listed get the bound read
  // off the model (the table an input indexes), else 100 for *ids*.
  std::map<std::string, int64_t> input_limits;
  int threads = 1;
};

struct VerifyReport {
  std::vector<OutputComparison> outputs;
  double atol = 0;
  std::optional<double> min_cosine;
  std::vector<std::string> not_compared;  // outputs only one of the models has (default output selection)
  bool passes(const OutputComparison& o) const;  // within atol, or (min_cosine set) cosine high enough
  bool ok() const;
  std::string table() const;  // readable, one line per output
  std::string json() const;
};

// Throws InputError when a file is missing, UsageError for a TorchScript (.pt) file or an unknown --outputs
// name, VerificationError when the models cannot be run or compared.
VerifyReport verify_models(const std::filesystem::path& model, const std::filesystem::path& reference,
                           const VerifyOptions& options);

}  // namespace trex
