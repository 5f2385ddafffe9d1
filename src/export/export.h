// The export job: checkpoint folder → ONNX file (+ load check). The CLI is a thin layer over this.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "arch/architecture.h"
#include "export/layout.h"
#include "io/checkpoint_weights.h"
#include "onnx/writer.h"
#include "passes/quantize_file.h"
#include "runtime/ort_check.h"
#include "runtime/verify.h"

namespace trex {

constexpr int kMinOpset = 11;
constexpr int kMaxOpset = 21;
// Opset 17 is the first with a native LayerNormalization (one fused kernel in ONNX Runtime instead of
// seven ops) and is supported by every ONNX Runtime since 1.14 and by the major converters.
constexpr int kDefaultOpset = 17;

struct ExportOptions {
  std::filesystem::path model_dir;
  Framework framework = Framework::kAuto;  // which weights of model_dir: PyTorch's or tf_model.h5
  // A .onnx path, or a folder (created when missing) that receives model.onnx. Decoders always get their
  // companion files (config, generation config, tokenizer, genai_config.json) beside the model.
  std::filesystem::path output;
  bool write_companions = false;  // also for encoders (set by the CLI when OUTPUT is a folder)
  bool allow_nonfinite = false;   // write NaN/Inf weights instead of refusing them
  std::string pipeline;  // empty: the default head of the checkpoint
  int opset = kDefaultOpset;
  std::optional<std::pair<int64_t, int64_t>> static_shape;  // batch, sequence
  ExternalData external = ExternalData::kAuto;
  bool check = true;
  // Also write <stem>-optimized.onnx with ONNX Runtime's fused ops, verified against the plain model.
  bool optimize = false;
  bool gelu_approximation = false;  // FastGelu (tanh) for exact-GELU models in the optimized graph
  double optimize_atol = 1e-4;
  // Also write <stem>-quantized.onnx (every graph of a set: <name>-quantized.onnx): weights quantized from the
  // optimized model when `optimize`, else from the plain one. Single-graph encoders go through quantize_file
  // (compared with fp32 in ONNX Runtime, fp32 fallback, int4 calibrated + GPTQ). Decoders and graph sets are
  // quantized while they are built and written, from the mapped checkpoint (int4: tensor by tensor, data-free
  // clipping search), and load-checked (prefill + decode step).
  bool quantize = false;
  // How the files are named and placed (export/layout.h). Other layouts than kTrex need OUTPUT to be a folder.
  Layout layout = Layout::kTrex;
  std::string triton_name;   // kTriton: the model's name in the repository
  int triton_max_batch = 16;  // kTriton: max_batch_size when the first dim of every tensor is the batch
  // Weights and compute in float16 (src/passes/half.h); plain graph of single-graph models only.
  bool fp16 = false;
  int quantize_bits = 8;               // 8: dynamic int8; 4: MatMulNBits
  int64_t int4_block_size = 32;        // 16..256, a power of two
  bool int4_symmetric = false;         // default asymmetric, as `trex quantize`
  int64_t int4_accuracy_level = 0;     // MatMulNBits accuracy_level
  // Decoders and graph sets: the per-block clipping search's stride over the 21 ratios (Int4Params::clip_stride):
  // 1 full, 4 coarse (default: several times faster), 0 none (round-to-nearest).
  int int4_clip_stride = 4;
  bool quantize_embeddings = true;     // Gather tables (and tied heads' tables) -> GatherBlockQuantized
  // int8, encoders: the accurate form (fp32 outlier channels + per-row scales of normalized activations, made
  // from the plain graph even with --optimize; docs/quantization.md) instead of the per-tensor form.
  bool int8_accurate = false;
  // Decoders and graph sets: write only the quantized graphs (no fp32 file on disk); the folder's genai_config
  // names them either way.
  bool quantized_only = false;
  // Progress and status lines (may be empty).
  std::function<void(const std::string&)> log;
  std::function<void(size_t done, size_t total)> progress;
};

// One graph of the model's set as written and checked.
struct ExportedGraph {
  std::string name;  // file stem: model, encoder_model, decoder_model_merged
  WriteResult written;
  std::optional<LoadCheckResult> check;
  std::optional<WriteResult> optimized;
  std::optional<VerifyReport> optimized_verify;
  // Decoders and graph sets with --quantize: the quantized graph and its load check (with --quantized-only
  // `written` / `check` above are these and this stays empty).
  std::optional<WriteResult> quantized;
  std::optional<LoadCheckResult> quantized_check;
  size_t quantized_layers = 0, kept_layers = 0, quantized_tables = 0;
};

struct ExportResult {
  std::string model_type;
  Task task = Task::kFeatureExtraction;
  WriteResult written;
  size_t num_nodes = 0;
  size_t num_initializers = 0;
  std::vector<std::string> unused_tensors;
  std::optional<LoadCheckResult> check;
  std::optional<WriteResult> optimized;
  std::optional<VerifyReport> optimized_verify;
  std::optional<QuantizeFileResult> quantized;
  std::vector<std::filesystem::path> companions;  // config.json, tokenizer files, genai_config.json, ...
  std::vector<std::filesystem::path> triton_configs;  // --layout triton: one config.pbtxt per model
  // Every graph of the set (the fields above repeat the first one's: written, check, optimized, ...).
  std::vector<ExportedGraph> graphs;
};

// Throws trex::Error subclasses (InputError, UsageError, OutputError, VerificationError).
ExportResult export_onnx(const ExportOptions& options);

// Checks the checkpoint folder exists and the output folder is writable (InputError / OutputError).
void check_export_paths(const ExportOptions& options);

// Builds the model in memory without writing it (tests, later passes).
struct BuiltModel {
  Model model;
  ModelConfig config;
  Task task;
  LoadCheckSpec check_spec;
};
// `part`: the graph of the architecture's set to build (Architecture::graphs); empty for single-graph models.
// `quantization_source`: the graph is built for quantize_built (GraphBuilder::set_quantization_source).
BuiltModel build_model(const ModelConfig& config, const WeightStore& weights, const ExportOptions& options,
                       Lowering lowering = Lowering::kPlain, const std::string& part = "",
                       bool quantization_source = false);

// OUTPUT as given (a .onnx / .pt / .pth path, or an existing file) or OUTPUT/model.onnx when it names a folder.
std::filesystem::path resolve_output_file(const std::filesystem::path& output);
// The first graph's plain file for the options' OUTPUT and layout (resolve_output_file for the default layout).
std::filesystem::path resolve_output_file(const ExportOptions& options);

// UsageError when the checkpoint's architecture cannot be exported to TorchScript (decoders).
void check_torchscript_supported(const ModelConfig& config);

// <stem>-optimized.onnx / <stem>-quantized.onnx beside `output`.
std::filesystem::path optimized_path(const std::filesystem::path& output);
std::filesystem::path quantized_path(const std::filesystem::path& output);

}  // namespace trex
