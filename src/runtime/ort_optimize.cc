#include "runtime/ort_optimize.h"

#include <onnxruntime_cxx_api.h>
#include <unistd.h>

#include "util/error.h"

namespace trex {

namespace fs = std::filesystem;

OrtOptimizeResult ort_optimize(const fs::path& in, const fs::path& out, OrtOptLevel level) {
  std::error_code ec;
  if (!fs::is_regular_file(in, ec)) throw InputError(in.string(), "cannot open: no such file");
  const fs::path dir = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(dir, ec)) throw OutputError(out.string(), "cannot write: folder '" + dir.string() + "' does not exist");
  if (::access(dir.c_str(), W_OK) != 0) throw OutputError(out.string(), "cannot write: folder is not writable");

  // Big inputs (or inputs already using external data) keep their weights outside the .onnx file.
  size_t total = fs::file_size(in, ec);
  const fs::path in_data = in.parent_path() / (in.filename().string() + ".data");
  if (fs::exists(in_data, ec)) total += fs::file_size(in_data, ec);
  const bool external = total > (size_t{1800} << 20) || fs::exists(in_data, ec);

  const fs::path tmp = dir / ("." + out.filename().string() + ".tmp-" + std::to_string(::getpid()));
  OrtOptimizeResult result;
  try {
    static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "trex");
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(level == OrtOptLevel::kBasic      ? GraphOptimizationLevel::ORT_ENABLE_BASIC
                                 : level == OrtOptLevel::kExtended ? GraphOptimizationLevel::ORT_ENABLE_EXTENDED
                                                                   : GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.SetOptimizedModelFilePath(tmp.c_str());
    if (external) {
      result.data_path = dir / (out.filename().string() + ".data");
      so.AddConfigEntry("session.optimized_model_external_initializers_file_name",
                        result.data_path.filename().c_str());
      so.AddConfigEntry("session.optimized_model_external_initializers_min_size_in_bytes", "1024");
    }
    Ort::Session session(env, in.c_str(), so);
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
