#include "passes/quantize_file.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "onnx/reader.h"
#include "passes/quantize_calibrate.h"
#include "util/error.h"

namespace trex {

namespace {
bool below_target(const CompareResult& c, const QuantizeFileOptions& o) {
  return c.mean_cosine < o.min_cosine || (c.label_agreement >= 0 && c.label_agreement < o.min_label_agreement);
}
}  // namespace

QuantizeFileResult quantize_file(const std::filesystem::path& input, const std::filesystem::path& output,
                                 const QuantizeFileOptions& o) {
  std::error_code ec;
  if (std::filesystem::exists(output, ec) &&
      std::filesystem::weakly_canonical(input, ec) == std::filesystem::weakly_canonical(output, ec))
    throw UsageError("quantize: the output would overwrite the input model (" + input.string() + ")");

  QuantizeFileResult r;
  r.policy = o.policy;
  const auto t0 = std::chrono::steady_clock::now();
  const Model in = read_model(input);
  Int4Policy p4 = o.int4;
  if (o.bits == 4 && o.calibrate && o.int4.params.search && p4.importance.empty())
    p4.importance = activation_mean_squares(in, weight_activation_names(in), output.string() + ".calibration.onnx", {},
                                            o.gptq ? &p4.gram : nullptr);
  auto quantize = [&] {
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
  };
  Model out = quantize();
  r.written = write_model(out, output, o.write);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!o.check) return r;

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
      if (seen.insert(l.weight).second) ranked.emplace_back(o.bits == 4 ? int4_weight_error(in, l.weight, o.int4.params)
                                                   : weight_quantization_error(in, l.weight, r.policy.params), l.weight);
    std::sort(ranked.rbegin(), ranked.rend());
    const size_t drop = std::max<size_t>(1, ranked.size() / 8);
    for (size_t i = 0; i < drop && i < ranked.size(); ++i) {
      r.policy.exclude_nodes.push_back(ranked[i].second);  // a weight name matches as an exact pattern
      r.fallback.push_back(ranked[i].second);
    }
    out = quantize();
    r.written = write_model(out, output, o.write);
    r.comparison = compare_models(input, output, co);
  }
  r.missed_target = below_target(*r.comparison, o);
  return r;
}

}  // namespace trex
