#include "runtime/ort_session.h"

#include <algorithm>

#include "util/error.h"

namespace trex {

namespace {
constexpr int64_t kMaxSampleElements = int64_t{1} << 28;
bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
}  // namespace

Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "trex");
  return env;
}

std::vector<std::string> input_names(const Ort::Session& s) {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> names;
  for (size_t i = 0; i < s.GetInputCount(); ++i) names.push_back(s.GetInputNameAllocated(i, alloc).get());
  return names;
}

std::vector<std::string> output_names(const Ort::Session& s) {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> names;
  for (size_t i = 0; i < s.GetOutputCount(); ++i) names.push_back(s.GetOutputNameAllocated(i, alloc).get());
  return names;
}

SampleInputs make_sample_inputs(const Ort::Session& s, int64_t batch, int64_t seq,
                                const std::map<std::string, int64_t>& limits, std::mt19937_64& rng,
                                const std::string& model) {
  SampleInputs feed;
  feed.names = input_names(s);
  // Reserve so that the buffers the Ort::Values point into never move.
  feed.i64.reserve(feed.names.size());
  feed.i32.reserve(feed.names.size());
  feed.f32.reserve(feed.names.size());
  Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  for (size_t i = 0; i < feed.names.size(); ++i) {
    Ort::TypeInfo type_info = s.GetInputTypeInfo(i);  // keep alive while its shape view is used
    auto info = type_info.GetTensorTypeAndShapeInfo();
    std::vector<int64_t> shape = info.GetShape();
    for (size_t d = 0; d < shape.size(); ++d)
      if (shape[d] < 0) shape[d] = d == 0 ? batch : seq;
    const std::string& name = feed.names[i];
    // Static dims come from the model file: checked, so a hostile [2^40, 2^40] input cannot wrap or exhaust memory.
    int64_t count = 1;
    for (auto d : shape) {
      if (d < 0 || __builtin_mul_overflow(count, d, &count) || count > kMaxSampleElements) {
        throw InputError(model, "input '" + name + "' has a shape too large to feed sample data (more than " +
                                    std::to_string(kMaxSampleElements) + " elements)");
      }
    }
    const auto type = info.GetElementType();
    std::vector<int64_t> ints(static_cast<size_t>(count), 0);
    if (contains(name, "mask")) {
      std::fill(ints.begin(), ints.end(), 1);
      if (shape.size() == 2 && shape[0] > 1)
        for (int64_t j = shape[1] / 2; j < shape[1]; ++j) ints[static_cast<size_t>((shape[0] - 1) * shape[1] + j)] = 0;
    } else if (contains(name, "position")) {
      const int64_t last = shape.empty() ? 1 : shape.back();
      for (int64_t j = 0; j < count; ++j) ints[static_cast<size_t>(j)] = j % last;
    } else {
      auto it = limits.find(name);
      const int64_t limit = it != limits.end() ? it->second : (contains(name, "ids") ? 100 : 1);
      std::uniform_int_distribution<int64_t> dist(0, std::max<int64_t>(limit, 1) - 1);
      for (auto& v : ints) v = dist(rng);
    }
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      feed.i64.push_back(std::move(ints));
      feed.values.push_back(Ort::Value::CreateTensor<int64_t>(mem, feed.i64.back().data(), feed.i64.back().size(),
                                                              shape.data(), shape.size()));
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
      feed.i32.emplace_back(ints.begin(), ints.end());
      feed.values.push_back(Ort::Value::CreateTensor<int32_t>(mem, feed.i32.back().data(), feed.i32.back().size(),
                                                              shape.data(), shape.size()));
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      std::normal_distribution<float> dist;
      std::vector<float> f(static_cast<size_t>(count));
      for (auto& v : f) v = dist(rng);
      feed.f32.push_back(std::move(f));
      feed.values.push_back(Ort::Value::CreateTensor<float>(mem, feed.f32.back().data(), feed.f32.back().size(),
                                                            shape.data(), shape.size()));
    } else {
      throw VerificationError(model + ": input '" + name + "' has an element type the sample inputs cannot feed");
    }
  }
  return feed;
}

}  // namespace trex
