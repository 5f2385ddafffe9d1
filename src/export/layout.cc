#include "export/layout.h"

#include <cctype>
#include <cstdio>
#include <string>
#include <vector>

#include "graph/model.h"
#include "onnx/reader.h"
#include "util/error.h"
#include "util/output_path.h"

namespace trex {

namespace fs = std::filesystem;

std::optional<Layout> parse_layout(const std::string& name) {
  if (name == "trex") return Layout::kTrex;
  if (name == "optimum") return Layout::kOptimum;
  if (name == "transformers.js" || name == "transformersjs") return Layout::kTransformersJs;
  if (name == "triton") return Layout::kTriton;
  return std::nullopt;
}

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::kTrex: return "trex";
    case Layout::kOptimum: return "optimum";
    case Layout::kTransformersJs: return "transformers.js";
    case Layout::kTriton: return "triton";
  }
  return "?";
}

bool valid_triton_name(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.') return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

std::string triton_name_from(const std::string& model_argument) {
  std::string s = model_argument;
  while (!s.empty() && s.back() == '/') s.pop_back();
  const size_t slash = s.rfind('/');
  if (slash != std::string::npos) s = s.substr(slash + 1);
  if (s.rfind("models--", 0) == 0) {  // a Hugging Face cache folder: models--ORG--NAME
    const size_t sep = s.rfind("--");
    s = s.substr(sep + 2);
  }
  for (char& c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) c = '_';
  while (!s.empty() && s[0] == '.') s.erase(0, 1);
  if (s.size() > 128) s.resize(128);
  return s.empty() ? "model" : s;
}

fs::path layout_output_file(const fs::path& output, Layout layout, const std::string& triton_name) {
  if (layout == Layout::kTrex) return output;  // resolved by resolve_output_file
  const std::string ext = output.extension().string();
  std::error_code ec;
  if (ext == ".onnx" || ext == ".pt" || ext == ".pth" || fs::is_regular_file(output, ec))
    throw UsageError(output.string() + ": --layout " + layout_name(layout) +
                     " writes a folder; OUTPUT must be a folder, not a file");
  switch (layout) {
    case Layout::kOptimum: return output / "model.onnx";
    case Layout::kTransformersJs: return output / "onnx" / "model.onnx";
    case Layout::kTriton:
      if (!valid_triton_name(triton_name))
        throw UsageError("Triton model name '" + triton_name +
                         "' is not valid (letters, digits, '_', '-', '.', at most 128 characters, no leading '.')");
      return output / triton_name / "1" / "model.onnx";
    case Layout::kTrex: break;
  }
  return output;
}

fs::path layout_root(const fs::path& first_file, Layout layout) {
  fs::path dir = first_file.parent_path();
  if (layout == Layout::kTransformersJs) return dir.parent_path();
  if (layout == Layout::kTriton) return dir.parent_path().parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

fs::path layout_graph_file(const fs::path& first_file, Layout layout, const std::string& part) {
  if (part.empty()) return first_file;
  if (layout == Layout::kTriton) {
    const fs::path model_dir = first_file.parent_path().parent_path();
    return model_dir.parent_path() / (model_dir.filename().string() + "_" + part) / "1" / "model.onnx";
  }
  return first_file.parent_path() / (part + ".onnx");
}

fs::path layout_variant_file(const fs::path& plain, Layout layout, Variant variant) {
  if (variant == Variant::kPlain) return plain;
  const bool optimized = variant == Variant::kOptimized;
  switch (layout) {
    case Layout::kTrex:
      return plain.parent_path() /
             (plain.stem().string() + (optimized ? "-optimized" : "-quantized") + plain.extension().string());
    case Layout::kTransformersJs:
      if (variant == Variant::kQuantized4)
        return plain.parent_path() / (plain.stem().string() + "_q4" + plain.extension().string());
      [[fallthrough]];
    case Layout::kOptimum:
      return plain.parent_path() /
             (plain.stem().string() + (optimized ? "_optimized" : "_quantized") + plain.extension().string());
    case Layout::kTriton: {
      const fs::path model_dir = plain.parent_path().parent_path();
      return model_dir.parent_path() / (model_dir.filename().string() + (optimized ? "_optimized" : "_quantized")) /
             "1" / plain.filename();
    }
  }
  return plain;
}

namespace {

const char* triton_type(int onnx_type) {
  switch (onnx_type) {
    case onnx::TensorProto::FLOAT: return "TYPE_FP32";
    case onnx::TensorProto::UINT8: return "TYPE_UINT8";
    case onnx::TensorProto::INT8: return "TYPE_INT8";
    case onnx::TensorProto::UINT16: return "TYPE_UINT16";
    case onnx::TensorProto::INT16: return "TYPE_INT16";
    case onnx::TensorProto::INT32: return "TYPE_INT32";
    case onnx::TensorProto::INT64: return "TYPE_INT64";
    case onnx::TensorProto::STRING: return "TYPE_STRING";
    case onnx::TensorProto::BOOL: return "TYPE_BOOL";
    case onnx::TensorProto::FLOAT16: return "TYPE_FP16";
    case onnx::TensorProto::DOUBLE: return "TYPE_FP64";
    case onnx::TensorProto::UINT32: return "TYPE_UINT32";
    case onnx::TensorProto::UINT64: return "TYPE_UINT64";
    case onnx::TensorProto::BFLOAT16: return "TYPE_BF16";
    default: return nullptr;
  }
}

// A protobuf text-format string literal.
std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      q += '\\';
      q += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\%03o", c);
      q += buf;
    } else {
      q += static_cast<char>(c);
    }
  }
  return q + "\"";
}

struct Io {
  std::string name;
  const char* type;
  std::vector<const onnx::TensorShapeProto::Dimension*> dims;
};

}  // namespace

fs::path write_triton_config(const fs::path& model_file, int max_batch) {
  const Model model = read_model(model_file);
  const auto& g = model.proto.graph();
  std::vector<Io> inputs, outputs;
  auto collect = [&](const auto& values, std::vector<Io>* into) {
    for (const auto& v : values) {
      if (!v.type().has_tensor_type())
        throw OutputError(model_file.string(), "graph input/output '" + v.name() + "' is not a tensor; Triton's "
                                               "config needs tensor inputs and outputs");
      const auto& t = v.type().tensor_type();
      const char* type = triton_type(t.elem_type());
      if (!type)
        throw OutputError(model_file.string(), "'" + v.name() + "' has an element type Triton has no data type for");
      Io io{v.name(), type, {}};
      for (const auto& d : t.shape().dim()) io.dims.push_back(&d);
      into->push_back(std::move(io));
    }
  };
  collect(g.input(), &inputs);
  collect(g.output(), &outputs);
  // Batched when every tensor's first dim is the same symbolic dim (the batch), so Triton may stack requests.
  std::string batch_param;
  bool batched = max_batch > 0;
  for (const auto* list : {&inputs, &outputs})
    for (const auto& io : *list) {
      if (io.dims.empty() || !io.dims[0]->has_dim_param() || io.dims[0]->dim_param().empty()) {
        batched = false;
        continue;
      }
      if (batch_param.empty()) batch_param = io.dims[0]->dim_param();
      if (io.dims[0]->dim_param() != batch_param) batched = false;
    }
  std::string text = "# Written by trex " TREX_VERSION " for Triton's onnxruntime backend.\n";
  const std::string name = model_file.parent_path().parent_path().filename().string();
  text += "name: " + quoted(name) + "\n";
  text += "platform: \"onnxruntime_onnx\"\n";
  text += "max_batch_size: " + std::to_string(batched ? max_batch : 0) + "\n";
  auto section = [&](const char* key, const std::vector<Io>& list) {
    text += std::string(key) + " [\n";
    for (size_t i = 0; i < list.size(); ++i) {
      const Io& io = list[i];
      std::string dims;
      for (size_t d = batched ? 1 : 0; d < io.dims.size(); ++d) {
        const auto* dim = io.dims[d];
        const int64_t v = dim->has_dim_value() && dim->dim_value() > 0 ? dim->dim_value() : -1;
        dims += (dims.empty() ? "" : ", ") + std::to_string(v);
      }
      text += "  {\n    name: " + quoted(io.name) + "\n    data_type: " + io.type + "\n";
      // A batched rank-1 tensor ([batch]) has no dims left: Triton wants [1] reshaped to a scalar per request.
      if (dims.empty()) text += "    dims: [ 1 ]\n    reshape: { shape: [ ] }\n";
      else text += "    dims: [ " + dims + " ]\n";
      text += std::string("  }") + (i + 1 < list.size() ? "," : "") + "\n";
    }
    text += "]\n";
  };
  section("input", inputs);
  section("output", outputs);
  if (batched) text += "dynamic_batching { }\n";
  const fs::path out = model_file.parent_path().parent_path() / "config.pbtxt";
  write_file_atomically(out, text);
  return out;
}

}  // namespace trex
