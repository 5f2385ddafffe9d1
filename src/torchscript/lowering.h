// ONNX graph (trex's plain lowering) → TorchScript source of `forward` + the parameters it reads.
// No LibTorch here: this is pure string/graph work, so it compiles fast and is unit-testable.
#pragma once

#include <string>
#include <vector>

#include "arch/architecture.h"
#include "graph/model.h"

namespace trex::torchscript {

// One tensor of the module, registered as a parameter under its transformers state_dict key.
struct ParamSpec {
  std::string path;                  // "bert.encoder.layer.0.attention.self.query.weight"
  const TensorData* data = nullptr;  // source bytes (fp32), owned by the Model
  Shape shape;                       // shape as registered
  bool transpose_2d = false;         // data is W^T ([in, out], a `.T` initializer): register its transpose
};

struct Program {
  std::string forward;                 // "def forward(self, input_ids: Tensor, ...) -> Tuple[...]:\n    ..."
  std::vector<ParamSpec> params;       // unique paths, in order of first use
  std::vector<std::string> inputs;     // graph inputs (input_ids, attention_mask[, token_type_ids])
  std::vector<std::string> outputs;    // tuple element names, transformers' order
  size_t num_nodes = 0;                // ONNX nodes lowered
  size_t num_lines = 0;                // TorchScript statements emitted
};

struct LowerOptions {
  bool fused_attention = true;  // softmax(q·kᵀ/c + mask)·v → torch.scaled_dot_product_attention
};

// Throws UsageError for graphs it cannot lower (ops outside the plain lowering, e.g. com.microsoft fused ops).
Program lower(const Model& model, Task task, const LowerOptions& options = {});

}  // namespace trex::torchscript
