// The boundary between trex and LibTorch. LibTorch lives in a plugin (libtrex_torchscript_plugin.so) that trex
// dlopen()s only when a TorchScript file is written, so ordinary commands do not pay LibTorch's start-up
// (~0.7 s, ~100 MB RSS). This header is all the two sides share: standard-library types only (no trex symbols,
// no ONNX protobuf headers, no LibTorch headers — LibTorch carries its own protobuf headers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace trex::torchscript {

// Bump when PluginModule / PluginParam / the entry point change.
constexpr int kPluginAbiVersion = 1;
constexpr const char* kPluginFileName = "libtrex_torchscript_plugin.so";
constexpr const char* kPluginEntryPoint = "trex_torchscript_save";

// One tensor of the module, registered as a parameter under its transformers state_dict key.
struct PluginParam {
  std::string path;                       // "bert.encoder.layer.0.attention.self.query.weight"
  std::vector<int64_t> source_dims;       // dims of the float32 bytes that fill() writes
  std::vector<int64_t> shape;             // shape as registered
  bool transpose_2d = false;              // source is W^T ([in, out]): register its transpose
  std::function<void(void* dst)> fill;    // writes the float32 source bytes (row-major) to dst
};

struct PluginModule {
  std::string class_name = "TrexModel";            // root class (__torch__.trex.<class_name>)
  std::string forward;                             // TorchScript source of forward
  std::vector<PluginParam> params;                 // unique paths; nested submodules follow the dots
  std::map<std::string, std::string> extra_files;  // stored in the archive's extra/ folder
};

// Status codes of the entry point.
enum PluginStatus : int { kPluginOk = 0, kPluginInternal = 1, kPluginWriteFailed = 2, kPluginAbiMismatch = 3 };

// extern "C" int trex_torchscript_save(const PluginModule* module, const char* path, int abi_version,
//                                      char* error, size_t error_size);
// Builds the module, compiles forward and saves it to `path` (plain write). On failure writes a message to error.
using PluginSaveFn = int (*)(const PluginModule*, const char*, int, char*, size_t);

}  // namespace trex::torchscript
