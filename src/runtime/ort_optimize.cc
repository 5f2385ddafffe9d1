#include "runtime/ort_optimize.h"

#include <onnxruntime_cxx_api.h>

#include <fstream>
#include <set>

#include "onnx/reader.h"
#include "onnx/writer.h"
#include "runtime/ort_session.h"
#include "util/error.h"
#include "util/output_path.h"

namespace trex {

namespace fs = std::filesystem;

namespace {

void collect_domains(const onnx::GraphProto& g, std::set<std::string>* domains) {
  for (const auto& node : g.node()) {
    domains->insert(node.domain() == "ai.onnx" ? "" : node.domain());
    for (const auto& a : node.attribute()) {
      if (a.has_g()) collect_domains(a.g(), domains);
      for (const auto& sub : a.graphs()) collect_domains(sub, domains);
    }
  }
}

// ONNX Runtime saves every opset it registered (8 domains for a BERT) and keeps the input's metadata, which
// then describes the graph before optimization. Rewrites `file` with only the opset imports its nodes use and
// `graph` metadata saying what it now is.
void describe_optimized(const fs::path& file) {
  onnx::ModelProto m;
  {
    std::ifstream in(file, std::ios::binary);
    if (!in || !m.ParseFromIstream(&in)) throw InputError(file.string(), "cannot read ONNX Runtime's optimized model");
  }
  std::set<std::string> used{""};  // the default domain is always declared
  collect_domains(m.graph(), &used);
  for (const auto& f : m.functions()) {
    used.insert(f.domain());
    for (const auto& node : f.node()) used.insert(node.domain() == "ai.onnx" ? "" : node.domain());
  }
  auto* opsets = m.mutable_opset_import();
  for (int i = opsets->size() - 1; i >= 0; --i) {
    const std::string& d = opsets->Get(i).domain();
    if (!used.count(d == "ai.onnx" ? "" : d)) opsets->DeleteSubrange(i, 1);
  }
  bool found = false;
  for (auto& p : *m.mutable_metadata_props())
    if (p.key() == "graph") {
      p.set_value("onnxruntime-optimized");
      found = true;
    }
  if (!found) {
    auto* p = m.add_metadata_props();
    p->set_key("graph");
    p->set_value("onnxruntime-optimized");
  }
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  if (!m.SerializeToOstream(&out) || !out.flush()) throw OutputError(file.string(), "cannot write");
}

}  // namespace

OrtOptimizeResult ort_optimize(const fs::path& in, const fs::path& out, OrtOptLevel level) {
  std::error_code ec;
  if (!fs::is_regular_file(in, ec)) throw InputError(in.string(), "cannot open: no such file");
  check_output_path(out);
  validate_external_data(in);  // before ONNX Runtime follows any location

  // Big inputs (or inputs already using external data) keep their weights outside the .onnx file.
  size_t total = fs::file_size(in, ec);
  const fs::path in_data = external_data_path(in);
  if (fs::exists(in_data, ec)) total += fs::file_size(in_data, ec);
  const bool external = total > (size_t{1800} << 20) || fs::exists(in_data, ec);

  const fs::path tmp = temp_path_beside(out);
  OrtOptimizeResult result;
  try {
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(level == OrtOptLevel::kBasic      ? GraphOptimizationLevel::ORT_ENABLE_BASIC
                                 : level == OrtOptLevel::kExtended ? GraphOptimizationLevel::ORT_ENABLE_EXTENDED
                                                                   : GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.SetOptimizedModelFilePath(tmp.c_str());
    if (external) {
      result.data_path = external_data_path(out);
      so.AddConfigEntry("session.optimized_model_external_initializers_file_name",
                        result.data_path.filename().c_str());
      so.AddConfigEntry("session.optimized_model_external_initializers_min_size_in_bytes", "1024");
    }
    Ort::Session session(ort_env(), in.c_str(), so);
  } catch (const Ort::Exception& e) {
    fs::remove(tmp, ec);
    if (!result.data_path.empty()) fs::remove(result.data_path, ec);
    throw InputError(in.string(), std::string("ONNX Runtime cannot optimize it: ") + e.what());
  }
  try {
    describe_optimized(tmp);
  } catch (const Error&) {
    fs::remove(tmp, ec);
    if (!result.data_path.empty()) fs::remove(result.data_path, ec);
    throw;
  }
  fs::rename(tmp, out, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw OutputError(out.string(), "cannot write: " + ec.message());
  }
  return result;
}

}  // namespace trex
