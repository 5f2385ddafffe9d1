// The files written beside an exported model so that runtimes load the output folder as it is: config.json,
// generation_config.json, the tokenizer files, and onnxruntime-genai's genai_config.json for decoders.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "arch/architecture.h"
#include "io/checkpoint_files.h"
#include "onnx/onnx.pb.h"

namespace trex {


struct CompanionOptions {
  std::filesystem::path model_dir;   // the checkpoint folder (read)
  std::filesystem::path output_dir;  // where the model was written
  std::string model_file;            // the ONNX file genai_config.json points at (decoders)
  Task task = Task::kFeatureExtraction;
  int64_t num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, hidden = 0, vocab = 0;
  // genai's search.past_present_share_buffer: true only for a graph whose cache is updated in place
  // (kv_cache_updated_in_place below); otherwise present = past ++ new and the buffers must stay apart.
  bool share_cache_buffer = false;
};

// Whether every past_key_values.N.key/value input of `graph` is read only as GroupQueryAttention's past_key /
// past_value (inputs 3 / 4) and every present.N.key/value output is that node's present_key / present_value
// (outputs 1 / 2) of the same node: then the cache can live in one max-length buffer per layer that
// GroupQueryAttention writes the new entries into (onnxruntime-genai's past_present_share_buffer), instead of a
// fresh present tensor holding a copy of the past at every step. False when there is no cache at all.
bool kv_cache_updated_in_place(const onnx::GraphProto& graph);

// Writes (atomically, each through a temporary file) the companion files and returns their paths. Never writes
// into the checkpoint folder itself (UsageError).
std::vector<std::filesystem::path> write_companion_files(const ModelConfig& config, const CompanionOptions& options);

}  // namespace trex
