// Dynamic int8 quantization of an ONNX model's MatMul / Gemm weights (constant initializers).
//
// Weights are quantized offline (per tensor or per output channel, s8 symmetric or u8 asymmetric, optionally
// 7-bit); activations are quantized at run time by DynamicQuantizeLinear (u8, per tensor), shared by every
// quantized consumer of the same activation. Emitted forms (see docs/quantization.md for the measurements):
//   kMicrosoft: DynamicQuantizeLinear + com.microsoft.MatMulIntegerToFloat (bias Add fused in)
//   kStandard:  DynamicQuantizeLinear + MatMulInteger + Cast + Mul (standard ONNX only; any runtime)
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "graph/model.h"
#include "passes/quantize_reference.h"

namespace trex {

enum class QuantOps { kMicrosoft, kStandard };

// Which activations get one quantization scale per row (token) instead of one per tensor (com.microsoft form).
//   kNone:       per tensor (DynamicQuantizeLinear over the whole batch)
//   kNormalized: the outputs of LayerNormalization-type nodes (LayerNormalization, SkipLayerNormalization,
//                SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, EmbedLayerNormalization)
//   kAll:        every quantized activation
// A row-scaled activation X is divided by r = max(|X|) over its last axis (the outlier channels excluded) before
// DynamicQuantizeLinear, and the product is multiplied back by r (the bias is added after that).
enum class RowScales { kNone, kNormalized, kAll };

struct QuantizePolicy {
  QuantParams params;  // s8, per-channel, full range by default
  QuantOps ops = QuantOps::kMicrosoft;
  // Nodes to leave in fp32: glob patterns (`*`, `?`) matched against node names and weight initializer names.
  std::vector<std::string> exclude_nodes;
  // Op types to leave in fp32 ("MatMul", "Gemm").
  std::vector<std::string> exclude_op_types;
  // The automatic policy (documented in docs/quantization.md): keep fp32 the weights where int8 saves little
  // and costs accuracy: fewer than min_elements values, or fewer than min_channels rows/columns (the
  // classification / QA logit projections).
  bool auto_policy = true;
  int64_t min_elements = 1024;
  int64_t min_channels = 16;
  // Outlier input channels (com.microsoft form): activation value name -> the channels of its last axis that are
  // multiplied in fp32 (a Gather of those channels times the matching fp32 weight rows); the int8 product sees
  // them as zero (activation masked, weight rows zeroed before the weight scales are taken), so they no longer
  // set the activation's quantization range. Filled by quantize_file from calibration (quantize_calibrate.h).
  std::map<std::string, std::vector<int64_t>> outlier_channels;
  RowScales row_scales = RowScales::kNone;
};

struct QuantizedLayer {
  std::string node;    // original node name
  std::string op_type; // MatMul or Gemm
  std::string weight;  // fp32 initializer name
  int64_t k = 0, n = 0;
  bool bias_fused = false;
  int64_t outlier_channels = 0;  // input channels computed in fp32
  bool row_scaled = false;       // one activation scale per row
};

struct SkippedLayer {
  std::string node, op_type, weight, reason;
};

struct QuantizeReport {
  std::vector<QuantizedLayer> quantized;
  std::vector<SkippedLayer> skipped;
  size_t weight_bytes_before = 0;
  size_t weight_bytes_after = 0;
};

// Returns the quantized model; `in` is untouched (the new model shares its unchanged initializers, and the
// quantized bytes are produced from the source weights when the model is written). Throws UsageError when the
// model's opset is below 11 (DynamicQuantizeLinear) and InputError on inconsistent graphs.
Model quantize_model(const Model& in, const QuantizePolicy& policy, QuantizeReport* report = nullptr);

// The fast weight quantizer (bit-identical to quantize_reference). `w` is K×N row-major, or N×K row-major
// when `transposed` (Gemm transB=1); the result is always K×N. Returns false (and leaves `out` empty) when `w`
// holds NaN or infinity.
bool quantize_weight(const float* w, int64_t k, int64_t n, bool transposed, const QuantParams& p, QuantizedWeight* out);

// Scales and zero points only (the first half of quantize_weight), so the bytes can be produced later.
bool weight_scales(const float* w, int64_t k, int64_t n, bool transposed, const QuantParams& p, QuantizedWeight* out);
// The second half: q (K×N) from scales and zero points already in `qw`.
void quantize_with_scales(const float* w, int64_t k, int64_t n, bool transposed, const QuantizedWeight& qw, uint8_t* q);

// Relative Frobenius error ||W - deq(q(W))|| / ||W|| of one weight under `p`, measured with the reference
// quantizer; used to rank layers when the accuracy check asks for some to be kept in fp32.
double weight_quantization_error(const Model& model, const std::string& weight, const QuantParams& p);

// The floats of an fp32 tensor: its mapped bytes when they are aligned, else an aligned copy.
struct Floats {
  const float* p = nullptr;
  std::vector<float> copy;
};
Floats floats_of(const TensorData& t);

// A node attribute's value, or `dflt` when the node does not set it.
int64_t int_attr(const onnx::NodeProto& n, const char* name, int64_t dflt);
float float_attr(const onnx::NodeProto& n, const char* name, float dflt);
// Adds an INT attribute to a node the rewrite builds.
void add_int_attr(onnx::NodeProto* n, const char* name, int64_t v);
// Imports the com.microsoft domain (version 1) unless the model already does: for rewrites that add its ops.
void import_ms_domain(onnx::ModelProto* m);

// Fresh names for the values, nodes and initializers a graph rewrite adds: never one the model already uses.
class UniqueNames {
 public:
  explicit UniqueNames(const Model& m);
  // `base`, or `base_1`, `base_2`, ... (the first one not used yet); the name is taken.
  std::string operator()(const std::string& base);

 private:
  std::unordered_set<std::string> used_;
};

// MatMul(x, Transpose(W, perm=[1,0])) with W a 2-D float32 initializer (trex's tied head of encoder-decoders,
// which ONNX Runtime folds at load): per Transpose output read as B by one MatMul and by nothing else (no graph
// output, no subgraph), the Transpose node's index and W. The quantizers read W as an N×K weight, as for
// Gemm transB, and drop the Transpose.
struct TransposedWeight {
  int node = -1;
  std::string weight;
};
std::unordered_map<std::string, TransposedWeight> transposed_weights(const onnx::GraphProto& g, const Model& m);

// Glob match with `*` and `?`.
bool glob_match(const std::string& pattern, const std::string& text);

}  // namespace trex
