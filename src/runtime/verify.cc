#include "runtime/verify.h"

#include <cmath>
#include <cstdio>

#include "onnx/reader.h"
#include "util/error.h"

namespace trex {

bool VerifyReport::ok() const {
  for (const auto& o : outputs)
    if (!(o.max_abs_diff <= atol)) return false;
  return true;
}

std::string VerifyReport::table() const {
  std::string s;
  char line[256];
  std::snprintf(line, sizeof line, "%-20s %14s %12s %12s %10s\n", "output", "max abs diff", "mean cosine", "min cosine",
                "labels");
  s += line;
  for (const auto& o : outputs) {
    char labels[32] = "-";
    if (o.label_agreement >= 0) std::snprintf(labels, sizeof labels, "%.1f%%", 100 * o.label_agreement);
    std::snprintf(line, sizeof line, "%-20s %14.3e %12.8f %12.8f %10s  %s\n", o.name.c_str(), o.max_abs_diff,
                  o.mean_cosine, o.min_cosine, labels, o.max_abs_diff <= atol ? "ok" : "OVER TOLERANCE");
    s += line;
  }
  return s;
}

std::string VerifyReport::json() const {
  std::string s = "{\"atol\": " + std::to_string(atol) + ", \"ok\": " + (ok() ? "true" : "false") + ", \"outputs\": [";
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& o = outputs[i];
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "%s{\"name\": \"%s\", \"max_abs_diff\": %.9g, \"mean_abs_diff\": %.9g, \"cosine\": %.9g, "
                  "\"min_cosine\": %.9g, \"label_agreement\": %s}",
                  i ? ", " : "", o.name.c_str(), std::isinf(o.max_abs_diff) ? 1e308 : o.max_abs_diff, o.mean_abs_diff,
                  o.mean_cosine, o.min_cosine,
                  o.label_agreement >= 0 ? std::to_string(o.label_agreement).c_str() : "null");
    s += buf;
  }
  return s + "]}";
}

VerifyReport verify_models(const std::filesystem::path& model, const std::filesystem::path& reference,
                           const VerifyOptions& o) {
  for (const auto& p : {model, reference})
    if (!std::filesystem::is_regular_file(p)) throw InputError(p.string(), "cannot open: no such file");
  CompareOptions co;
  co.batch = o.batch;
  co.seq = o.seq;
  co.past = o.past;
  co.padded = o.padded;
  co.batches = o.batches;
  co.threads = o.threads;
  co.input_limits = sample_input_limits(read_model(reference));
  for (const auto& [k, v] : o.input_limits) co.input_limits[k] = v;
  CompareResult r = compare_models(reference, model, co);
  VerifyReport report;
  report.atol = o.atol;
  report.outputs = r.outputs;
  return report;
}

}  // namespace trex
