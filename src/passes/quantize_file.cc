#include "passes/quantize_file.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "onnx/reader.h"
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
  Model out = quantize_model(in, r.policy, &r.report);
  WriteOptions wo = o.write;
  if (wo.source_for_messages.empty()) wo.source_for_messages = input.string();
  r.written = write_model(out, output, wo);
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
      if (seen.insert(l.weight).second) ranked.emplace_back(weight_quantization_error(in, l.weight, r.policy.params), l.weight);
    std::sort(ranked.rbegin(), ranked.rend());
    const size_t drop = std::max<size_t>(1, ranked.size() / 8);
    for (size_t i = 0; i < drop && i < ranked.size(); ++i) {
      r.policy.exclude_nodes.push_back(ranked[i].second);  // a weight name matches as an exact pattern
      r.fallback.push_back(ranked[i].second);
    }
    out = quantize_model(in, r.policy, &r.report);
    r.written = write_model(out, output, wo);
    r.comparison = compare_models(input, output, co);
  }
  r.missed_target = below_target(*r.comparison, o);
  return r;
}

}  // namespace trex
