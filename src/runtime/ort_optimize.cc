#include "runtime/ort_optimize.h"

#include <onnxruntime_cxx_api.h>

#include "onnx/reader.h"
#include "onnx/writer.h"
#include "runtime/ort_session.h"
#include "util/error.h"
#include "util/output_path.h"

namespace trex {

namespace fs = std::filesystem;

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
  fs::rename(tmp, out, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw OutputError(out.string(), "cannot write: " + ec.message());
  }
  return result;
}

}  // namespace trex
