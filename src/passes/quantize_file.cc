#include "passes/quantize_file.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "onnx/reader.h"
#include "passes/quantize_calibrate.h"
#include "util/error.h"
#include "util/output_path.h"

namespace trex {

namespace {
bool below_target(const CompareResult& c, const QuantizeFileOptions& o) {
  return c.mean_cosine < o.min_cosine || (c.label_agreement >= 0 && c.label_agreement < o.min_label_agreement);
}

// Ops that only a quantized graph has (ONNX Runtime's quantizer and ours emit them). Quantizing such a graph
// again would find few fp32 weights left and report a meaningless "1.00x smaller".
const char* quantized_op(const Model& m) {
  static const std::set<std::string> kQuantizedOps = {
      "DynamicQuantizeLinear", "MatMulIntegerToFloat", "MatMulInteger", "QAttention", "MatMulNBits",
      "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm", "QLinearConv", "ConvInteger"};
  std::set<std::string> int8_inits;
  for (const auto& i : m.initializers)
    if (i.data.dtype() == DType::kI8 || i.data.dtype() == DType::kU8) int8_inits.insert(i.name);
  for (const auto& node : m.proto.graph().node()) {
    if (auto it = kQuantizedOps.find(node.op_type()); it != kQuantizedOps.end()) return it->c_str();
    // QDQ format: int8 weights stored as initializers and dequantized in the graph.
    if (node.op_type() == "DequantizeLinear" && node.input_size() > 0 && int8_inits.count(node.input(0)))
      return "DequantizeLinear";
  }
  return nullptr;
}

// The quantized model under the current policy (int8 or int4 weights, then the embedding tables).
Model quantize_once(const Model& in, const QuantizeFileOptions& o, Int4Policy& p4, QuantizeFileResult& r) {
  Model m;
  if (o.bits != 4) {
    m = quantize_model(in, r.policy, &r.report);
  } else {
    p4.exclude_nodes = r.policy.exclude_nodes;
    p4.exclude_op_types = r.policy.exclude_op_types;
    p4.auto_policy = r.policy.auto_policy;
    p4.min_elements = r.policy.min_elements;
    m = quantize_int4_model(in, p4, &r.report);
  }
  if (!o.embeddings) return m;
  m = quantize_embeddings(m, o.embedding, &r.embeddings);
  r.report.weight_bytes_after = m.weight_bytes();
  return m;
}

// Compares the written quantized model with fp32 in ONNX Runtime and, while the target is missed, puts the most
// sensitive weights back to fp32 and rewrites it.
void compare_and_fall_back(const Model& in, const std::filesystem::path& input, const std::filesystem::path& output,
                           const QuantizeFileOptions& o, const WriteOptions& wo, Int4Policy& p4,
                           QuantizeFileResult* result) {
  QuantizeFileResult& r = *result;
  CompareOptions co;
  co.batches = o.samples;
  co.batch = o.batch;
  co.seq = o.seq;
  co.input_limits = sample_input_limits(in);
  r.comparison = compare_models(input, output, co);
  // Accuracy fallback: rank the quantized weights by their quantization error (reference quantizer) and put
  // the worst eighth back to fp32, up to fallback_rounds times.
  for (int round = 0; round < o.fallback_rounds && o.fallback && below_target(*r.comparison, o) && !r.report.quantized.empty();
       ++round) {
    std::vector<std::pair<double, std::string>> ranked;
    std::set<std::string> seen;
    for (const auto& l : r.report.quantized)
      if (seen.insert(l.weight).second)
        ranked.emplace_back(o.bits == 4 ? int4_weight_error(in, l.weight, o.int4.params)
                                        : weight_quantization_error(in, l.weight, r.policy.params),
                            l.weight);
    std::sort(ranked.rbegin(), ranked.rend());
    const size_t drop = std::max<size_t>(1, ranked.size() / 8);
    for (size_t i = 0; i < drop && i < ranked.size(); ++i) {
      r.policy.exclude_nodes.push_back(ranked[i].second);  // a weight name matches as an exact pattern
      r.fallback.push_back(ranked[i].second);
    }
    r.written = write_model(quantize_once(in, o, p4, r), output, wo);
    r.comparison = compare_models(input, output, co);
  }
  r.missed_target = below_target(*r.comparison, o);
}

}  // namespace

QuantizeFileResult quantize_file(const std::filesystem::path& input, const std::filesystem::path& output,
                                 const QuantizeFileOptions& o) {
  check_outputs_not_inputs({output, external_data_path(output)}, {input, external_data_path(input)});

  QuantizeFileResult r;
  r.policy = o.policy;
  const auto t0 = std::chrono::steady_clock::now();
  const Model in = read_model(input);
  if (const char* op = quantized_op(in))
    throw UsageError(input.string() + ": already quantized (it has " + op +
                     " nodes); quantize the fp32 model it came from instead");
  Int4Policy p4 = o.int4;
  if (o.bits == 4 && o.calibrate && o.int4.params.search && p4.importance.empty())
    p4.importance = activation_mean_squares(in, weight_activation_names(in), output.string() + ".calibration.onnx", {},
                                            o.gptq ? &p4.gram : nullptr);
  if (o.bits != 4 && r.policy.ops == QuantOps::kMicrosoft) {
    r.policy.row_scales = o.row_scales;
    if (o.outlier_channels > 0 && r.policy.outlier_channels.empty()) {
      std::map<std::string, std::vector<float>> max_abs;
      CalibrationOptions co;  // the outlier channels show on every sample: 2 batches are plenty
      co.batches = 2;
      co.basic_optimizations = true;
      activation_mean_squares(in, weight_activation_names(in), output.string() + ".calibration.onnx", co, nullptr, &max_abs);
      r.policy.outlier_channels = outlier_channels(max_abs, o.outlier_channels, o.outlier_ratio);
    }
  }
  WriteOptions wo = o.write;
  if (wo.source_for_messages.empty()) wo.source_for_messages = input.string();
  r.written = write_model(quantize_once(in, o, p4, r), output, wo);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!o.check) return r;
  try {
    compare_and_fall_back(in, input, output, o, wo, p4, &r);
  } catch (const Error&) {  // e.g. ONNX Runtime cannot load the model: leave no output behind
    std::error_code ec;
    std::filesystem::remove(r.written.model_path, ec);
    if (!r.written.data_path.empty()) std::filesystem::remove(r.written.data_path, ec);
    throw;
  }
  return r;
}

}  // namespace trex
