#include "runtime/verify.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "onnx/reader.h"
#include "util/error.h"

namespace trex {

bool VerifyReport::passes(const OutputComparison& o) const {
  return o.max_abs_diff <= atol || (min_cosine && o.mean_cosine >= *min_cosine);
}

bool VerifyReport::ok() const {
  for (const auto& o : outputs)
    if (!passes(o)) return false;
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
                  o.mean_cosine, o.min_cosine, labels,
                  o.max_abs_diff <= atol ? "ok" : passes(o) ? "ok (cosine)" : "OVER TOLERANCE");
    s += line;
  }
  if (!not_compared.empty()) {
    std::string names;
    for (const auto& n : not_compared) names += (names.empty() ? "" : ", ") + n;
    s += "not compared (only in one model): " + names + "\n";
  }
  return s;
}

std::string VerifyReport::json() const {
  std::string s = "{\"atol\": " + std::to_string(atol) +
                  ", \"min_cosine\": " + (min_cosine ? std::to_string(*min_cosine) : std::string("null")) +
                  ", \"ok\": " + (ok() ? "true" : "false") + ", \"not_compared\": [";
  for (size_t i = 0; i < not_compared.size(); ++i) s += (i ? ", \"" : "\"") + not_compared[i] + "\"";
  s += "], \"outputs\": [";
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

namespace {

// A TorchScript module is a zip archive; an ONNX file is a protobuf message (never starts with "PK").
bool is_torchscript_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  char magic[4] = {0, 0, 0, 0};
  f.read(magic, sizeof magic);
  return f.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K' && magic[2] == 3 && magic[3] == 4;
}

std::vector<std::string> graph_outputs(const Model& m) {
  std::vector<std::string> names;
  for (const auto& o : m.proto.graph().output()) names.push_back(o.name());
  return names;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

VerifyReport verify_models(const std::filesystem::path& model, const std::filesystem::path& reference,
                           const VerifyOptions& o) {
  for (const auto& p : {model, reference}) {
    if (!std::filesystem::is_regular_file(p)) throw InputError(p.string(), "cannot open: no such file");
    if (is_torchscript_file(p))
      throw UsageError(p.string() + ": verify compares ONNX models; this is a TorchScript module (.pt), "
                                    "load it with torch.jit.load");
  }
  const Model ref_model = read_model(reference);
  const std::vector<std::string> ref_outputs = graph_outputs(ref_model);
  const std::vector<std::string> model_outputs = graph_outputs(read_model(model));
  VerifyReport report;
  CompareOptions co;
  co.batch = o.batch;
  co.seq = o.seq;
  co.past = o.past;
  co.decode_past = o.decode_past;
  co.prepack = o.prepack;
  co.padded = o.padded;
  co.batches = o.batches;
  co.threads = o.threads;
  co.input_limits = sample_input_limits(ref_model);
  for (const auto& [k, v] : o.input_limits) co.input_limits[k] = v;
  if (!o.outputs.empty()) {
    for (const auto& name : o.outputs)
      for (const auto& [file, names] : {std::pair{&reference, &ref_outputs}, std::pair{&model, &model_outputs}})
        if (std::find(names->begin(), names->end(), name) == names->end())
          throw UsageError(file->string() + ": --outputs names '" + name + "', which it does not have (it has " +
                           joined(*names) + ")");
    co.outputs = o.outputs;
  } else {
    for (const auto& name : ref_outputs)
      if (std::find(model_outputs.begin(), model_outputs.end(), name) != model_outputs.end())
        co.outputs.push_back(name);
      else
        report.not_compared.push_back(name);
    for (const auto& name : model_outputs)
      if (std::find(ref_outputs.begin(), ref_outputs.end(), name) == ref_outputs.end())
        report.not_compared.push_back(name);
    if (co.outputs.empty())
      throw VerificationError(model.string() + ": no output in common with " + reference.string() + " (" +
                              joined(model_outputs) + " vs " + joined(ref_outputs) + ")");
  }
  CompareResult r = compare_models(reference, model, co);
  report.atol = o.atol;
  report.min_cosine = o.min_cosine;
  report.outputs = r.outputs;
  return report;
}

}  // namespace trex
