#include "runtime/ort_check.h"

#include <onnxruntime_cxx_api.h>

#include <chrono>
#include <cmath>
#include <random>

#include "onnx/reader.h"
#include "runtime/ort_session.h"
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
  validate_external_data(model);
  try {
    Ort::SessionOptions opts;
    opts.SetIntraOpNumThreads(1);
    // The check only needs to prove the model loads and runs: skip weight prepacking and the memory arena,
    // which would otherwise hold extra copies of the weights during the export.
    opts.AddConfigEntry("session.disable_prepacking", "1");
    opts.DisableCpuMemArena();
    opts.DisableMemPattern();
    auto t0 = clock::now();
    Ort::Session session(ort_env(), model.c_str(), opts);
    auto t1 = clock::now();
    result.load_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();

    const std::vector<std::string> out_names = output_names(session);

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
    SampleInputs inputs = make_sample_inputs(session, b, s, spec.input_limits, rng, model.string());
    std::vector<const char*> in_c, out_c;
    for (auto& n : inputs.names) in_c.push_back(n.c_str());
    for (auto& n : out_names) out_c.push_back(n.c_str());
    auto outputs = session.Run(Ort::RunOptions{nullptr}, in_c.data(), inputs.values.data(), inputs.values.size(), out_c.data(),
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
