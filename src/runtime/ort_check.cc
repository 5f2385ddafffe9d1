#include "runtime/ort_check.h"

#include <onnxruntime_cxx_api.h>

#include <chrono>
#include <cmath>
#include <map>
#include <random>

#include "onnx/reader.h"
#include "runtime/ort_session.h"
#include "util/error.h"

namespace trex {

std::string LoadCheckResult::summary() const {
  // Cache outputs (present.*) are summarized in one entry when they share a shape (a 1B decoder has 44).
  std::string s;
  size_t cache = 0;
  const std::vector<int64_t>* cache_shape = nullptr;
  bool uniform = true;
  for (const auto& [name, shape] : outputs) {
    if (name.rfind("present.", 0) == 0) {
      uniform = uniform && (!cache_shape || *cache_shape == shape);
      cache_shape = &shape;
      ++cache;
    }
  }
  for (const auto& [name, shape] : outputs) {
    if (cache > 2 && uniform && name.rfind("present.", 0) == 0) continue;
    s += (s.empty() ? "" : ", ") + name + " " + shape_str(shape);
  }
  if (cache > 2 && uniform) s += (s.empty() ? "" : ", ") + std::to_string(cache) + "x present.* " + shape_str(*cache_shape);
  return s;
}

LoadCheckResult load_check(const std::filesystem::path& model, const LoadCheckSpec& spec) {
  using clock = std::chrono::steady_clock;
  LoadCheckResult result;
  validate_external_data(model);
  try {
    Ort::SessionOptions opts;
    opts.SetIntraOpNumThreads(spec.threads > 0 ? spec.threads : check_threads());
    // The check only needs to prove the model loads and runs: skip weight prepacking and the memory arena,
    // which would otherwise hold extra copies of the weights during the export.
    opts.AddConfigEntry("session.disable_prepacking", "1");
    opts.DisableCpuMemArena();
    opts.DisableMemPattern();
    // Nor constant folding: it would materialize folded copies of large weights (a tied head's Transpose(table):
    // 0.4-0.5 s of a 119 MB table at session open, against 0.05 s without), which the run doesn't need: ONNX
    // Runtime reads the Transpose into the MatMul (FusedMatMul transB) instead, as fast for a check's two steps.
    opts.AddConfigEntry("optimization.disable_specified_optimizers", "ConstantFolding");
    auto t0 = clock::now();
    Ort::Session session(ort_env(), model.c_str(), opts);
    result.load_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();

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
    // Decoders (declared cache inputs) run two steps: a prefill with an empty cache, then one decode step fed
    // with the prefill's present K/V, as a generation loop would.
    const bool stateful = has_state_inputs(session);
    // Encoder-decoders keep their encoder length (the sequence of the first step) in both steps.
    std::vector<SampleShape> steps{{spec.batch, spec.seq, 0, true, spec.seq}};
    if (stateful) steps.push_back({spec.batch, 1, spec.seq, true, spec.seq});
    SampleInputs previous;
    std::vector<Ort::Value> previous_outputs;
    for (size_t step = 0; step < steps.size(); ++step) {
      const SampleShape& shape = steps[step];
      std::map<std::string, const Ort::Value*> fed;
      for (size_t k = 0; k < previous_outputs.size(); ++k) fed[out_names[k]] = &previous_outputs[k];
      SampleInputs inputs = make_step_inputs(session, shape, spec.input_limits, rng, model.string(),
                                             step ? &previous : nullptr, step ? &fed : nullptr);
      std::vector<const char*> in_c, out_c;
      for (auto& n : inputs.names) in_c.push_back(n.c_str());
      for (auto& n : out_names) out_c.push_back(n.c_str());
      auto t_run = clock::now();
      auto outputs = session.Run(Ort::RunOptions{nullptr}, in_c.data(), inputs.values.data(), inputs.values.size(),
                                 out_c.data(), out_c.size());
      if (step == 0) result.run_ms = std::chrono::duration<double, std::milli>(clock::now() - t_run).count();
      const std::string where = stateful ? (step ? " (decode step)" : " (prefill)") : "";

      for (size_t i = 0; i < outputs.size(); ++i) {
        Ort::TensorTypeAndShapeInfo info = outputs[i].GetTensorTypeAndShapeInfo();
        std::vector<int64_t> got = info.GetShape();
        std::vector<int64_t> want;
        for (size_t a = 0; a < spec.outputs[i].second.size(); ++a) {
          const Dim& d = spec.outputs[i].second[a];
          want.push_back(d.symbol.empty() ? d.value : shape.symbol(d.symbol, a));
        }
        if (got != want)
          throw VerificationError(model.string() + ": load check" + where + ": output '" + out_names[i] +
                                  "' has shape " + shape_str(got) + ", expected " + shape_str(want));
        const float* p = outputs[i].GetTensorData<float>();
        const size_t n = info.GetElementCount();
        for (size_t k = 0; k < n; ++k)
          if (!std::isfinite(p[k]))
            throw VerificationError(model.string() + ": load check" + where + ": output '" + out_names[i] +
                                    "' has non-finite values");
        if (step == 0) result.outputs.emplace_back(out_names[i], got);
      }
      previous = std::move(inputs);
      previous_outputs = std::move(outputs);
    }
    result.total_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  } catch (const Ort::Exception& e) {
    throw VerificationError(model.string() + ": load check: ONNX Runtime: " + e.what());
  }
  return result;
}

}  // namespace trex
