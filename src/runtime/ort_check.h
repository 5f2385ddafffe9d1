// The load check: open a written model in ONNX Runtime (C/C++ API), run a dummy batch, and verify the
// outputs' names, shapes and finiteness.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "graph/graph_builder.h"

namespace trex {

struct LoadCheckSpec {
  int64_t batch = 2;
  int64_t seq = 8;
  // Exclusive upper bound of the random values fed to each int64 input (input_ids → vocab size, ...).
  // attention_mask always gets ones with trailing padding in the last row.
  std::map<std::string, int64_t> input_limits;
  // Expected outputs, in order, with symbolic dims "batch_size" / "sequence_length".
  std::vector<std::pair<std::string, std::vector<Dim>>> outputs;
  // ONNX Runtime intra-op threads; 0: check_threads().
  int threads = 0;
};

struct LoadCheckResult {
  std::vector<std::pair<std::string, std::vector<int64_t>>> outputs;  // name, shape
  double load_ms = 0;
  double run_ms = 0;    // the first step
  double total_ms = 0;  // opening the session and every step
  std::string summary() const;  // "last_hidden_state [2, 8, 32], pooler_output [2, 32]"
};

// Throws VerificationError describing what differs (or what ONNX Runtime said).
LoadCheckResult load_check(const std::filesystem::path& model, const LoadCheckSpec& spec);

}  // namespace trex
