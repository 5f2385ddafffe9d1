// TorchScript export: lowers the plain ONNX graph that build_model() produced to a scripted LibTorch module
// (parameters under the transformers state_dict names, forward(input_ids, attention_mask=None,
// token_type_ids=None) returning a tuple in transformers' order) and saves it with torch::jit's writer.
// LibTorch is only touched inside a plugin, libtrex_torchscript_plugin.so (built with -DTREX_WITH_TORCH, installed
// next to the trex executable), loaded with dlopen on first use: other commands never load LibTorch.
// Without the plugin, require_torchscript() and export_torchscript() throw UsageError saying how to enable it.
#pragma once

#include <filesystem>

#include "export/export.h"

namespace trex {

// Throws UsageError ("TorchScript export needs LibTorch: rebuild with -DTREX_WITH_TORCH=ON ...") when it does not.
// Call it before reading a checkpoint so the user learns early.
void require_torchscript();

struct TorchScriptOptions {
  // Attention as one torch.scaled_dot_product_attention call (transformers' default "sdpa" path: faster,
  // within ~1e-6 relative of eager). false: the eager op sequence (matmul, /, +mask, softmax, matmul),
  // bit-identical to transformers' attn_implementation="eager".
  bool fused_attention = true;
};

// Writes `output` (a .pt zip loadable by torch.jit.load / torch::jit::load) from a plain-lowering BuiltModel.
// config.json is stored inside as the extra file "config.json", trex's description as "trex.json".
// Atomic: written to a temporary file in the same folder, then renamed. Errors: OutputError (naming the path)
// when the file cannot be written, UsageError for a graph it cannot lower (e.g. the fused ORT lowering).
void export_torchscript(const BuiltModel& built, const std::filesystem::path& config_json,
                        const std::filesystem::path& output, const TorchScriptOptions& options = {});

// `trex export --format torchscript`: checkpoint folder → .pt (config, weights, plain graph, lowering, save).
// Only the plain, dynamic-shape graph is lowered: options.static_shape / optimize / quantize are refused.
struct TorchScriptExportResult {
  std::string model_type;
  Task task = Task::kFeatureExtraction;
  size_t num_parameters = 0;
};
TorchScriptExportResult export_torchscript_checkpoint(const ExportOptions& options, const TorchScriptOptions& ts = {});

}  // namespace trex
