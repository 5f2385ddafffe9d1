// Runs a reference model and a candidate (e.g. fp32 and its int8 variant) in ONNX Runtime on the same sample
// inputs and compares every float output: max / mean abs diff, cosine similarity (per row of the last axis),
// and, for outputs named *logits*, agreement of the argmax labels.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "graph/model.h"

namespace trex {

struct CompareOptions {
  int batches = 4;       // sample batches
  int64_t batch = 2;     // symbolic first dimension
  int64_t seq = 16;      // other symbolic dimensions (sequence_length)
  int64_t past = 0;      // past_sequence_length of models with a KV cache (random cache contents)
  // Models with a KV cache: also compare `batches` decode steps (one new token over a random cache of this many
  // positions) in the same sessions; -1: none. The result covers both kinds of sample.
  int64_t decode_past = -1;
  // ONNX Runtime's weight prepacking and memory arena. Off for checks of large models: prepacking holds a second
  // copy of every weight (and takes time to make) that a few sample runs do not pay back.
  bool prepack = true;
  bool padded = true;    // pad half of the last row of attention masks
  int threads = 2;
  uint64_t seed = 1234;
  // Exclusive upper bound of the values fed to each integer input (see sample_input_limits).
  std::map<std::string, int64_t> input_limits;
  // Outputs to compare (both models must have them). Empty: all of the reference's, which the candidate
  // must have too, with the same names.
  std::vector<std::string> outputs;
};

struct OutputComparison {
  std::string name;
  double max_abs_diff = 0, mean_abs_diff = 0;
  double mean_cosine = 1, min_cosine = 1;  // over rows of the last axis
  double label_agreement = -1;             // fraction; -1 when not a logits output
  size_t labels = 0;
};

struct CompareResult {
  std::vector<OutputComparison> outputs;
  double max_abs_diff = 0;
  double min_cosine = 1;        // worst row over all outputs
  double mean_cosine = 1;       // worst output's mean row cosine
  double label_agreement = -1;  // worst logits output; -1 without any
  double reference_ms = 0, candidate_ms = 0;  // mean run time per batch
};

// Integer input bounds read off the graph: an input used as Gather indices into an initializer gets that
// initializer's first dimension (vocabulary, type vocabulary, positions).
std::map<std::string, int64_t> sample_input_limits(const Model& model);

// Throws VerificationError when ONNX Runtime cannot load or run either model, or the outputs differ in
// names or shapes.
CompareResult compare_models(const std::filesystem::path& reference, const std::filesystem::path& candidate,
                             const CompareOptions& options);

}  // namespace trex
