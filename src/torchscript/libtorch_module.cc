// The TorchScript plugin (libtrex_torchscript_plugin.so), the only trex file that includes LibTorch: builds a
// torch::jit::Module from a PluginModule — nested submodules named after the state_dict keys, parameters filled
// from trex's initializers — compiles `forward` with Module::define and saves it with the extra files.
// trex dlopen()s it on demand (torchscript_export.cc); it uses no trex symbols.
#include <cctype>
#include <cstring>
#include <memory>
#include <stdexcept>

#include <torch/script.h>

#include "torchscript/module_spec.h"

namespace trex::torchscript {

namespace {

// A node of the module tree: its parameters (leaf name → spec) and child modules, in first-use order.
struct ModuleNode {
  std::vector<std::pair<std::string, const PluginParam*>> params;
  std::vector<std::pair<std::string, std::unique_ptr<ModuleNode>>> children;

  ModuleNode& child(const std::string& name) {
    for (auto& c : children)
      if (c.first == name) return *c.second;
    children.emplace_back(name, std::make_unique<ModuleNode>());
    return *children.back().second;
  }
};

// Each submodule gets its own class (attributes are added to the class type as parameters are registered).
std::string class_atom(const std::string& path) {
  std::string s = "Module_";
  for (char c : path) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return s;
}

at::Tensor to_tensor(const PluginParam& p) {
  at::Tensor t = torch::empty(p.source_dims, torch::kFloat32);
  if (t.numel() > 0) p.fill(t.data_ptr());
  if (p.transpose_2d) t = t.t().contiguous();
  return t.reshape(p.shape).contiguous();
}

torch::jit::Module build(const ModuleNode& node, const std::string& class_name, const std::string& path,
                         const std::shared_ptr<torch::jit::CompilationUnit>& cu) {
  torch::jit::Module m(c10::QualifiedName("__torch__.trex." + class_name), cu);
  for (const auto& [name, spec] : node.params) {
    at::Tensor t = to_tensor(*spec);
    // Inference module: no autograd bookkeeping when a caller forgets no_grad (like a traced eval() export).
    t.set_requires_grad(false);
    m.register_parameter(name, t, /*is_buffer=*/false);
  }
  for (const auto& [name, child] : node.children) {
    const std::string child_path = path.empty() ? name : path + "." + name;
    m.register_module(name, build(*child, class_atom(child_path), child_path, cu));
  }
  return m;
}

void save(const PluginModule& spec, const std::string& path) {
  ModuleNode root;
  for (const auto& p : spec.params) {
    ModuleNode* node = &root;
    size_t start = 0;
    for (size_t dot = p.path.find('.'); dot != std::string::npos; dot = p.path.find('.', start)) {
      node = &node->child(p.path.substr(start, dot - start));
      start = dot + 1;
    }
    node->params.emplace_back(p.path.substr(start), &p);
  }
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module module = build(root, spec.class_name, "", cu);
  module.eval();
  try {
    module.define(spec.forward);
  } catch (const std::exception& e) {
    throw std::logic_error(std::string("the generated forward does not compile: ") + e.what());
  }
  torch::jit::ExtraFilesMap extra(spec.extra_files.begin(), spec.extra_files.end());
  try {
    module.save(path, extra);
  } catch (const c10::Error& e) {
    throw std::runtime_error(e.what_without_backtrace());
  }
}

void set_error(char* error, size_t size, const char* message) {
  if (!error || size == 0) return;
  std::strncpy(error, message, size - 1);
  error[size - 1] = 0;
}

}  // namespace

}  // namespace trex::torchscript

extern "C" __attribute__((visibility("default"))) int trex_torchscript_save(
    const trex::torchscript::PluginModule* module, const char* path, int abi_version, char* error, size_t error_size) {
  using namespace trex::torchscript;
  if (abi_version != kPluginAbiVersion) {
    set_error(error, error_size, ("plugin ABI " + std::to_string(kPluginAbiVersion) + ", trex expects " +
                                  std::to_string(abi_version) + ": rebuild trex")
                                     .c_str());
    return kPluginAbiMismatch;
  }
  try {
    save(*module, path);
    return kPluginOk;
  } catch (const std::runtime_error& e) {
    set_error(error, error_size, e.what());
    return kPluginWriteFailed;
  } catch (const std::exception& e) {
    set_error(error, error_size, e.what());
    return kPluginInternal;
  }
}
