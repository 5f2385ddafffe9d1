// The files written beside an exported model so that runtimes load the output folder as it is: config.json,
// generation_config.json, the tokenizer files, and onnxruntime-genai's genai_config.json for decoders.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "arch/architecture.h"
#include "io/checkpoint_files.h"

namespace trex {


struct CompanionOptions {
  std::filesystem::path model_dir;   // the checkpoint folder (read)
  std::filesystem::path output_dir;  // where the model was written
  std::string model_file;            // the ONNX file genai_config.json points at (decoders)
  Task task = Task::kFeatureExtraction;
  int64_t num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, hidden = 0, vocab = 0;
};

// Writes (atomically, each through a temporary file) the companion files and returns their paths. Never writes
// into the checkpoint folder itself (UsageError).
std::vector<std::filesystem::path> write_companion_files(const ModelConfig& config, const CompanionOptions& options);

}  // namespace trex
