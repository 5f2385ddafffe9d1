// ONNX Runtime pieces shared by the load check, the model comparison and the offline optimizer:
// the process-wide environment, session input/output names, and random sample inputs.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace trex {

// One Ort::Env for the whole process (ONNX Runtime wants a single environment).
Ort::Env& ort_env();

// Intra-op threads of the export's checks (load check, optimized-vs-plain comparison): their sample runs are
// compute-bound on large models (a 1B decoder's prefill), so they use the cores there are, up to 4.
int check_threads();

std::vector<std::string> input_names(const Ort::Session& s);
std::vector<std::string> output_names(const Ort::Session& s);

// The sizes a sample feed uses for the symbolic dims trex declares (batch_size, sequence_length,
// past_sequence_length, total_sequence_length = past + sequence; encoder-decoders: encoder_sequence_length and
// past_encoder_sequence_length, which is 0 on the first step and the encoder's length once a past is fed).
// Other exporters' symbols: the first dim is the batch, later ones the sequence.
struct SampleShape {
  int64_t batch = 2;
  int64_t seq = 8;
  int64_t past = 0;
  bool padded = true;  // pad half of the last row of masks
  int64_t encoder = -1;  // encoder_sequence_length; -1: the same as seq
  int64_t symbol(const std::string& name, size_t axis) const;
};

// Random inputs for every input a session declares. Symbolic dims: the first is `batch`, later ones `seq`.
// Integer inputs named *mask* are ones with the second half of the last row padded (0); *position* inputs
// count 0, 1, ...; other integer inputs are uniform below their entry in `limits` (default: 100 for *ids*,
// else 1). Float inputs are standard normal. The values stay valid as long as the SampleInputs lives.
struct SampleInputs {
  std::vector<std::string> names;
  std::vector<Ort::Value> values;
  std::vector<std::vector<int64_t>> i64;
  std::map<std::string, size_t> i64_index;  // input name → its buffer in i64
  std::vector<std::vector<int32_t>> i32;
  std::vector<std::vector<float>> f32;
  std::vector<std::unique_ptr<bool[]>> flags;
};
// Throws VerificationError naming `model` for an input element type it cannot generate.
SampleInputs make_sample_inputs(const Ort::Session& s, int64_t batch, int64_t seq,
                                const std::map<std::string, int64_t>& limits, std::mt19937_64& rng,
                                const std::string& model);

// The same, driven by the model's declarations (trex.inputs metadata, see graph_builder.h) where it has them:
// ids below their declared limit, masks padded on the declared side, position ids derived from the mask,
// cache tensors random — or, for a next step, taken from `previous_outputs` (name → value) with the mask of
// `previous` extended by ones.
SampleInputs make_step_inputs(const Ort::Session& s, const SampleShape& shape,
                              const std::map<std::string, int64_t>& limits, std::mt19937_64& rng,
                              const std::string& model, const SampleInputs* previous = nullptr,
                              const std::map<std::string, const Ort::Value*>* previous_outputs = nullptr);

// True when the model declares cache inputs (a decoder with past/present).
bool has_state_inputs(const Ort::Session& s);

}  // namespace trex
