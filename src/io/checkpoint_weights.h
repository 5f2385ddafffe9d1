// Which weights file(s) of a checkpoint folder are read: PyTorch's (safetensors, .bin, sharded or not) or
// TensorFlow's (tf_model.h5), as `trex export --framework pt|tf` asks (default: automatic).
#pragma once

#include <filesystem>
#include <string>

#include "io/weight_store.h"

namespace trex {

enum class Framework {
  kAuto,        // PyTorch weights when the folder has them, else tf_model.h5
  kPyTorch,     // model.safetensors(.index.json), pytorch_model.bin(.index.json) only
  kTensorFlow,  // tf_model.h5 only
};

// "auto", "pt" or "tf" (also "pytorch", "tensorflow"); false when unknown.
bool parse_framework(const std::string& s, Framework* out);

// Opens the weights of checkpoint folder `dir` (WeightStore::open_dir is `framework` kAuto). Throws InputError
// naming the folder when the weights asked for are absent.
WeightStore open_checkpoint_weights(const std::filesystem::path& dir, Framework framework);

}  // namespace trex
