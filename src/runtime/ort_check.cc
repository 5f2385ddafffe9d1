#include "runtime/ort_check.h"

#include <onnxruntime_cxx_api.h>

#include <chrono>
#include <cmath>
#include <random>

#include "util/error.h"

namespace trex {

std::string LoadCheckResult::summary() const {
  std::string s;
  for (const auto& [name, shape] : outputs) s += (s.empty() ? "" : ", ") + name + " " + shape_str(shape);
  return s;
}

LoadCheckResult load_check(const std::filesystem::path& model, const LoadCheckSpec& spec) {
  using clock = std::chrono::steady_clock;
  LoadCheckResult result;
  try {
    static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "trex");
    Ort::SessionOptions opts;
    opts.SetIntraOpNumThreads(1);
    // The check only needs to prove the model loads and runs: skip weight prepacking and the memory arena,
    // which would otherwise hold extra copies of the weights during the export.
    opts.AddConfigEntry("session.disable_prepacking", "1");
    opts.DisableCpuMemArena();
    opts.DisableMemPattern();
    auto t0 = clock::now();
    Ort::Session session(env, model.c_str(), opts);
    auto t1 = clock::now();
    result.load_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();

    Ort::AllocatorWithDefaultOptions alloc;
    std::vector<std::string> in_names, out_names;
    for (size_t i = 0; i < session.GetInputCount(); ++i) in_names.push_back(session.GetInputNameAllocated(i, alloc).get());
    for (size_t i = 0; i < session.GetOutputCount(); ++i)
      out_names.push_back(session.GetOutputNameAllocated(i, alloc).get());

    std::vector<std::string> expected_names;
    for (const auto& o : spec.outputs) expected_names.push_back(o.first);
    if (out_names != expected_names) {
      std::string got, want;
      for (auto& n : out_names) got += (got.empty() ? "" : ", ") + n;
      for (auto& n : expected_names) want += (want.empty() ? "" : ", ") + n;
      throw VerificationError(model.string() + ": load check: outputs are [" + got + "], expected [" + want + "]");
    }

    std::mt19937_64 rng(1234);
    const int64_t b = spec.batch, s = spec.seq;
    std::vector<std::vector<int64_t>> buffers;
    std::vector<Ort::Value> inputs;
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const std::array<int64_t, 2> shape{b, s};
    for (const auto& name : in_names) {
      std::vector<int64_t> data(static_cast<size_t>(b * s));
      if (name == "attention_mask") {
        std::fill(data.begin(), data.end(), 1);
        for (int64_t j = s / 2; j < s && b > 1; ++j) data[static_cast<size_t>((b - 1) * s + j)] = 0;  // a padded row
      } else {
        auto it = spec.input_limits.find(name);
        const int64_t limit = it == spec.input_limits.end() ? 1 : std::max<int64_t>(it->second, 1);
        std::uniform_int_distribution<int64_t> dist(0, limit - 1);
        for (auto& v : data) v = dist(rng);
      }
      buffers.push_back(std::move(data));
      inputs.push_back(Ort::Value::CreateTensor<int64_t>(mem, buffers.back().data(), buffers.back().size(), shape.data(),
                                                         shape.size()));
    }
    std::vector<const char*> in_c, out_c;
    for (auto& n : in_names) in_c.push_back(n.c_str());
    for (auto& n : out_names) out_c.push_back(n.c_str());
    auto outputs = session.Run(Ort::RunOptions{nullptr}, in_c.data(), inputs.data(), inputs.size(), out_c.data(),
                               out_c.size());
    result.run_ms = std::chrono::duration<double, std::milli>(clock::now() - t1).count();

    for (size_t i = 0; i < outputs.size(); ++i) {
      Ort::TensorTypeAndShapeInfo info = outputs[i].GetTensorTypeAndShapeInfo();
      std::vector<int64_t> got = info.GetShape();
      std::vector<int64_t> want;
      for (const Dim& d : spec.outputs[i].second) {
        if (d.symbol.empty()) want.push_back(d.value);
        else if (d.symbol == "batch_size") want.push_back(b);
        else if (d.symbol == "sequence_length") want.push_back(s);
        else want.push_back(-1);
      }
      if (got != want)
        throw VerificationError(model.string() + ": load check: output '" + out_names[i] + "' has shape " +
                                shape_str(got) + ", expected " + shape_str(want));
      const float* p = outputs[i].GetTensorData<float>();
      const size_t n = info.GetElementCount();
      for (size_t k = 0; k < n; ++k)
        if (!std::isfinite(p[k]))
          throw VerificationError(model.string() + ": load check: output '" + out_names[i] + "' has non-finite values");
      result.outputs.emplace_back(out_names[i], got);
    }
  } catch (const Ort::Exception& e) {
    throw VerificationError(model.string() + ": load check: ONNX Runtime: " + e.what());
  }
  return result;
}

}  // namespace trex
