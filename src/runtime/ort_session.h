// ONNX Runtime pieces shared by the load check, the model comparison and the offline optimizer:
// the process-wide environment, session input/output names, and random sample inputs.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace trex {

// One Ort::Env for the whole process (ONNX Runtime wants a single environment).
Ort::Env& ort_env();

std::vector<std::string> input_names(const Ort::Session& s);
std::vector<std::string> output_names(const Ort::Session& s);

// Random inputs for every input a session declares. Symbolic dims: the first is `batch`, later ones `seq`.
// Integer inputs named *mask* are ones with the second half of the last row padded (0); *position* inputs
// count 0, 1, ...; other integer inputs are uniform below their entry in `limits` (default: 100 for *ids*,
// else 1). Float inputs are standard normal. The values stay valid as long as the SampleInputs lives.
struct SampleInputs {
  std::vector<std::string> names;
  std::vector<Ort::Value> values;
  std::vector<std::vector<int64_t>> i64;
  std::vector<std::vector<int32_t>> i32;
  std::vector<std::vector<float>> f32;
};
// Throws VerificationError naming `model` for an input element type it cannot generate.
SampleInputs make_sample_inputs(const Ort::Session& s, int64_t batch, int64_t seq,
                                const std::map<std::string, int64_t>& limits, std::mt19937_64& rng,
                                const std::string& model);

}  // namespace trex
