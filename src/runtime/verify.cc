#include "runtime/verify.h"

#include <onnxruntime_cxx_api.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "io/tensor.h"
#include "util/error.h"

namespace trex {

namespace {

Ort::Env& env() {
  static Ort::Env e(ORT_LOGGING_LEVEL_ERROR, "trex");
  return e;
}

struct Feed {
  std::vector<std::string> names;
  std::vector<Ort::Value> values;
  std::vector<std::vector<std::byte>> storage;
};

// Builds random inputs for a session's declared inputs.
Feed make_inputs(Ort::Session& s, const VerifyOptions& o, const std::string& model_name) {
  Feed f;
  Ort::AllocatorWithDefaultOptions alloc;
  Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::mt19937_64 rng(o.seed);
  for (size_t i = 0; i < s.GetInputCount(); ++i) {
    std::string name = s.GetInputNameAllocated(i, alloc).get();
    Ort::TypeInfo ti = s.GetInputTypeInfo(i);
    auto tinfo = ti.GetTensorTypeAndShapeInfo();
    std::vector<int64_t> shape = tinfo.GetShape();
    // Symbolic dims: first is the batch, later ones the sequence.
    for (size_t d = 0; d < shape.size(); ++d)
      if (shape[d] < 0) shape[d] = d == 0 ? o.batch : o.seq;
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    const auto type = tinfo.GetElementType();
    const bool is_mask = name.find("mask") != std::string::npos;
    const int64_t cols = shape.empty() ? 1 : shape.back();
    auto int_value = [&](size_t k) -> int64_t {
      if (is_mask) {
        // Row r keeps its first cols - r * cols / (2 * rows) positions: later rows are padded.
        const int64_t rows = static_cast<int64_t>(n) / std::max<int64_t>(cols, 1);
        const int64_t r = static_cast<int64_t>(k) / std::max<int64_t>(cols, 1), c = static_cast<int64_t>(k) % std::max<int64_t>(cols, 1);
        const int64_t keep = std::max<int64_t>(1, cols - (rows > 1 ? r * cols / (2 * rows) : 0));
        return c < keep ? 1 : 0;
      }
      auto it = o.input_limits.find(name);
      const int64_t limit = it == o.input_limits.end() ? 2 : std::max<int64_t>(it->second, 1);
      return std::uniform_int_distribution<int64_t>(0, limit - 1)(rng);
    };
    f.names.push_back(name);
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 || type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
      const size_t es = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? 8 : 4;
      std::vector<std::byte> buf(n * es);
      for (size_t k = 0; k < n; ++k) {
        int64_t v = int_value(k);
        if (es == 8) std::memcpy(buf.data() + k * 8, &v, 8);
        else { int32_t v32 = static_cast<int32_t>(v); std::memcpy(buf.data() + k * 4, &v32, 4); }
      }
      f.storage.push_back(std::move(buf));
      f.values.push_back(Ort::Value::CreateTensor(mem, f.storage.back().data(), f.storage.back().size(), shape.data(),
                                                  shape.size(), type));
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      std::vector<std::byte> buf(n * 4);
      std::normal_distribution<float> dist;
      for (size_t k = 0; k < n; ++k) {
        float v = dist(rng);
        std::memcpy(buf.data() + k * 4, &v, 4);
      }
      f.storage.push_back(std::move(buf));
      f.values.push_back(Ort::Value::CreateTensor(mem, f.storage.back().data(), f.storage.back().size(), shape.data(),
                                                  shape.size(), type));
    } else {
      throw InputError(model_name, "input '" + name + "' has an element type trex verify cannot generate");
    }
  }
  return f;
}

struct Outputs {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> data;
};

Outputs run(Ort::Session& s, Feed& feed) {
  Ort::AllocatorWithDefaultOptions alloc;
  Outputs out;
  for (size_t i = 0; i < s.GetOutputCount(); ++i) out.names.push_back(s.GetOutputNameAllocated(i, alloc).get());
  std::vector<const char*> in_c, out_c;
  for (auto& n : feed.names) in_c.push_back(n.c_str());
  for (auto& n : out.names) out_c.push_back(n.c_str());
  auto vals = s.Run(Ort::RunOptions{nullptr}, in_c.data(), feed.values.data(), feed.values.size(), out_c.data(), out_c.size());
  for (auto& v : vals) {
    auto info = v.GetTensorTypeAndShapeInfo();
    out.shapes.push_back(info.GetShape());
    const size_t n = info.GetElementCount();
    std::vector<float> d(n);
    if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      std::memcpy(d.data(), v.GetTensorData<float>(), n * 4);
    } else if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      const int64_t* p = v.GetTensorData<int64_t>();
      for (size_t k = 0; k < n; ++k) d[k] = static_cast<float>(p[k]);
    }
    out.data.push_back(std::move(d));
  }
  return out;
}

}  // namespace

bool VerifyReport::ok() const {
  for (const auto& o : outputs)
    if (!(o.max_abs_diff <= atol)) return false;
  return true;
}

std::string VerifyReport::table() const {
  std::string s;
  char line[256];
  std::snprintf(line, sizeof line, "%-20s %-16s %14s %12s  %s\n", "output", "shape", "max abs diff", "cosine", "");
  s += line;
  for (const auto& o : outputs) {
    std::snprintf(line, sizeof line, "%-20s %-16s %14.3e %12.8f  %s\n", o.name.c_str(), shape_str(o.shape).c_str(),
                  o.max_abs_diff, o.cosine, o.max_abs_diff <= atol ? "ok" : "OVER TOLERANCE");
    s += line;
  }
  return s;
}

std::string VerifyReport::json() const {
  std::string s = "{\"atol\": " + std::to_string(atol) + ", \"ok\": " + (ok() ? "true" : "false") + ", \"outputs\": [";
  for (size_t i = 0; i < outputs.size(); ++i) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s{\"name\": \"%s\", \"max_abs_diff\": %.9g, \"cosine\": %.9g}", i ? ", " : "",
                  outputs[i].name.c_str(), outputs[i].max_abs_diff, outputs[i].cosine);
    s += buf;
  }
  return s + "]}";
}

VerifyReport verify_models(const std::filesystem::path& a, const std::filesystem::path& b, const VerifyOptions& o) {
  for (const auto& p : {a, b})
    if (!std::filesystem::exists(p)) throw InputError(p.string(), "cannot open: no such file");
  Ort::SessionOptions so;
  so.SetIntraOpNumThreads(o.threads);
  VerifyReport report;
  report.atol = o.atol;
  auto open = [&](const std::filesystem::path& p) {
    try {
      return Ort::Session(env(), p.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw InputError(p.string(), std::string("ONNX Runtime cannot load it: ") + e.what());
    }
  };
  Ort::Session sa = open(a), sb = open(b);
  Feed fa = make_inputs(sa, o, a.string());
  Feed fb = make_inputs(sb, o, b.string());
  if (fa.names != fb.names) throw VerificationError(a.string() + " and " + b.string() + " have different inputs");
  Outputs oa, ob;
  try {
    oa = run(sa, fa);
    ob = run(sb, fb);
  } catch (const Ort::Exception& e) {
    throw VerificationError(std::string("ONNX Runtime failed to run: ") + e.what());
  }
  for (size_t i = 0; i < oa.names.size(); ++i) {
    size_t j = 0;
    while (j < ob.names.size() && ob.names[j] != oa.names[i]) ++j;
    if (j == ob.names.size()) throw VerificationError(b.string() + " has no output '" + oa.names[i] + "'");
    if (oa.shapes[i] != ob.shapes[j])
      throw VerificationError("output '" + oa.names[i] + "' has shape " + shape_str(oa.shapes[i]) + " vs " +
                              shape_str(ob.shapes[j]));
    OutputComparison c{oa.names[i], oa.shapes[i], 0, 1};
    double dot = 0, na = 0, nb = 0;
    const auto& x = oa.data[i];
    const auto& y = ob.data[j];
    for (size_t k = 0; k < x.size(); ++k) {
      const double d = std::fabs(static_cast<double>(x[k]) - y[k]);
      if (!(d <= c.max_abs_diff)) c.max_abs_diff = std::isnan(d) ? INFINITY : d;
      dot += static_cast<double>(x[k]) * y[k];
      na += static_cast<double>(x[k]) * x[k];
      nb += static_cast<double>(y[k]) * y[k];
    }
    c.cosine = (na > 0 && nb > 0) ? dot / std::sqrt(na * nb) : (na == nb ? 1.0 : 0.0);
    report.outputs.push_back(c);
  }
  return report;
}

}  // namespace trex
