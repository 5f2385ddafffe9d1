// `trex optimize`: ONNX Runtime's own offline graph optimization for any ONNX file (the seed's optimize step).
#pragma once

#include <filesystem>
#include <string>

namespace trex {

enum class OrtOptLevel { kBasic, kExtended, kAll };

struct OrtOptimizeResult {
  size_t nodes_before = 0;  // not computed (0) when unknown
  std::filesystem::path data_path;  // external initializers file, when written
};

// Writes the optimized model to `out` (atomically). Models whose weights live in external data, or that are
// above ~1.8 GB, get their optimized initializers written to `<out>.data`.
OrtOptimizeResult ort_optimize(const std::filesystem::path& in, const std::filesystem::path& out, OrtOptLevel level);

}  // namespace trex
