// TorchScript export: lower the plain graph (lowering.cc), describe the module (PluginModule) and let the LibTorch
// plugin (libtorch_module.cc, loaded with dlopen on first use) build and save it; atomic write through a
// temporary file in the output folder.
#include "torchscript/torchscript_export.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "torchscript/lowering.h"
#include "torchscript/module_spec.h"
#include "onnx/writer.h"
#include "util/error.h"
#include "util/output_path.h"

namespace trex {

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw InputError(p.string(), "cannot read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "BertForMaskedLM" → a valid class name for the root module; "TrexModel" when config.json names none.
std::string root_class(const BuiltModel& built) {
  if (built.config.architectures.empty()) return "TrexModel";
  std::string s;
  for (char c : built.config.architectures[0]) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return s.empty() || std::isdigit(static_cast<unsigned char>(s[0])) ? "TrexModel" : s;
}

#ifndef TREX_WITH_TORCH
#define TREX_WITH_TORCH 0
#endif

constexpr const char* kEnableHint =
    "TorchScript export needs LibTorch: rebuild with -DTREX_WITH_TORCH=ON after scripts/setup (installs torch)";

struct Plugin {
  torchscript::PluginSaveFn save = nullptr;
  std::string error;  // why it could not be loaded
};

// Loads the plugin once: $TREX_TORCHSCRIPT_PLUGIN (only that file when set), else next to the executable, else <exe>/../lib/trex/, else the
// library search path. Never unloaded (LibTorch does not support it).
const Plugin& plugin() {
  static Plugin p;
  static std::once_flag once;
  std::call_once(once, [] {
    if (!TREX_WITH_TORCH && !std::getenv("TREX_TORCHSCRIPT_PLUGIN")) {
      p.error = "this trex was built without LibTorch";
      return;
    }
    std::vector<std::string> candidates;
    const char* env = std::getenv("TREX_TORCHSCRIPT_PLUGIN");
    if (env && *env) candidates.emplace_back(env);
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (candidates.empty() && !ec) {
      candidates.push_back((exe.parent_path() / torchscript::kPluginFileName).string());
      candidates.push_back((exe.parent_path().parent_path() / "lib" / "trex" / torchscript::kPluginFileName).string());
    }
    if (candidates.size() != 1 || !env) candidates.emplace_back(torchscript::kPluginFileName);
    for (const auto& c : candidates) {
      if (c.find('/') != std::string::npos && !fs::exists(c, ec) && c != candidates.back()) continue;
      void* h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) {
        const char* e = ::dlerror();
        p.error = "cannot load " + c + ": " + (e ? e : "unknown error");
        return;
      }
      p.save = reinterpret_cast<torchscript::PluginSaveFn>(::dlsym(h, torchscript::kPluginEntryPoint));
      if (!p.save) p.error = c + " has no entry point " + torchscript::kPluginEntryPoint;
      return;
    }
    p.error = std::string(torchscript::kPluginFileName) + " not found next to the trex executable";
  });
  return p;
}

}  // namespace

void require_torchscript() {
  const Plugin& plug = plugin();
  if (!plug.save) throw UsageError(std::string(kEnableHint) + " (" + plug.error + ")");
}

void export_torchscript(const BuiltModel& built, const fs::path& config_json, const fs::path& output,
                        const TorchScriptOptions& options) {
  require_torchscript();
  const Plugin& plug = plugin();
  check_output_path(output);
  std::error_code ec;

  torchscript::Program program = torchscript::lower(built.model, built.task, {options.fused_attention});

  nlohmann::json meta;
  meta["producer"] = "trex";
  meta["trex_version"] = TREX_VERSION;
  meta["model_type"] = built.config.model_type;
  meta["pipeline"] = task_name(built.task);
  if (!built.config.architectures.empty()) meta["architecture"] = built.config.architectures[0];
  meta["forward_arguments"] = {"input_ids", "attention_mask", "token_type_ids"};
  meta["graph_inputs"] = program.inputs;
  meta["outputs"] = program.outputs;
  meta["attention"] = options.fused_attention ? "sdpa" : "eager";

  torchscript::PluginModule spec;
  spec.class_name = root_class(built);
  spec.forward = std::move(program.forward);
  for (const auto& p : program.params) {
    if (p.data->dtype() != DType::kF32) throw std::logic_error("TorchScript export: " + p.path + " is not float32");
    const TensorData* data = p.data;
    spec.params.push_back({p.path, data->dims(), p.shape, p.transpose_2d,
                           [data](void* dst) { data->copy_to(static_cast<std::byte*>(dst)); }});
  }
  spec.extra_files["config.json"] = read_file(config_json);
  spec.extra_files["trex.json"] = meta.dump(2);

  const fs::path tmp = temp_path_beside(output);
  char error[4096] = {0};
  const int status = plug.save(&spec, tmp.c_str(), torchscript::kPluginAbiVersion, error, sizeof error);
  if (status != torchscript::kPluginOk) {
    fs::remove(tmp, ec);
    if (status == torchscript::kPluginWriteFailed) throw OutputError(output.string(), std::string("cannot write: ") + error);
    if (status == torchscript::kPluginAbiMismatch) throw UsageError(std::string("TorchScript plugin: ") + error);
    throw std::logic_error(std::string("TorchScript export: ") + error);
  }
  fs::rename(tmp, output, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw OutputError(output.string(), "cannot write: " + ec.message());
  }
}

TorchScriptExportResult export_torchscript_checkpoint(const ExportOptions& options, const TorchScriptOptions& ts) {
  if (options.static_shape) throw UsageError("--static-shape does not apply to TorchScript (the module takes any shape)");
  if (options.optimize || options.quantize)
    throw UsageError("--optimize and --quantize apply to ONNX output only, not to --format torchscript");
  require_torchscript();  // before reading anything: say early when LibTorch is missing
  check_export_paths(options);
  ModelConfig config = ModelConfig::load(options.model_dir / "config.json");
  check_torchscript_supported(config);
  WeightStore weights = open_checkpoint_weights(options.model_dir, options.framework);
  if (options.log)
    options.log("read " + std::to_string(weights.size()) + " tensors (" + std::to_string(weights.total_bytes() >> 20) +
                " MiB) from " + options.model_dir.string());
  BuiltModel built = build_model(config, weights, options);
  check_initializers_finite(built.model, options.model_dir.string());  // NaN/Inf weights are refused, as for ONNX
  export_torchscript(built, options.model_dir / "config.json", options.output, ts);
  return {config.model_type, built.task, built.model.initializers.size()};
}

}  // namespace trex
