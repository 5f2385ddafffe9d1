#include "runtime/bench.h"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include <nlohmann/json.hpp>

#include "onnx/reader.h"
#include "runtime/compare.h"
#include "runtime/ort_session.h"
#include "util/error.h"

namespace trex {

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

namespace {

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    default: return "?";
  }
}

}  // namespace

namespace {

void check_options(const BenchOptions& o) {
  if (o.repeats < 1) throw UsageError("bench: repeats must be at least 1");
  if (o.warmup < 0) throw UsageError("bench: warm-up runs must not be negative");
  if (o.threads < 1) throw UsageError("bench: threads must be at least 1");
}

// One model's session with its inputs, ready to be run again and again.
class Timed {
 public:
  Timed(const std::filesystem::path& model, const BenchOptions& o, BenchResult& r) : model_(model) {
    r.model = model;
    r.batch = o.batch;
    r.seq = o.seq;
    r.past = o.past;
    r.threads = o.threads;
    // Integer bounds from the graph (vocabulary, token types, positions) so other exporters' files get valid ids.
    std::map<std::string, int64_t> limits = sample_input_limits(read_model(model));
    for (const auto& [k, v] : o.input_limits) limits[k] = v;
    // ONNX Runtime opens external data itself: the locations are checked first (relative, inside the folder).
    validate_external_data(model);
    try {
      Ort::SessionOptions so;
      so.SetIntraOpNumThreads(o.threads);
      so.SetInterOpNumThreads(1);
      so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      const auto t_load = std::chrono::steady_clock::now();
      session_ = std::make_unique<Ort::Session>(ort_env(), model.c_str(), so);
      r.load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_load).count();
      std::mt19937_64 rng(o.seed);
      SampleShape shape{o.batch, o.seq, o.past, o.padded};
      feed_ = make_step_inputs(*session_, shape, limits, rng, model.string());
      for (size_t i = 0; i < feed_.names.size(); ++i) {
        auto info = feed_.values[i].GetTensorTypeAndShapeInfo();
        std::string dims;
        for (auto d : info.GetShape()) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
        r.inputs += (i ? ", " : "") + feed_.names[i] + " " + type_name(info.GetElementType()) + " [" + dims + "]";
      }
      outs_ = output_names(*session_);
    } catch (const Ort::Exception& e) {
      throw VerificationError(model.string() + ": ONNX Runtime: " + e.what());
    }
    for (auto& n : feed_.names) in_c_.push_back(n.c_str());
    for (auto& n : outs_) out_c_.push_back(n.c_str());
  }

  // Runs once; the wall time in ms.
  double run() {
    try {
      const auto t0 = std::chrono::steady_clock::now();
      auto res = session_->Run(Ort::RunOptions{nullptr}, in_c_.data(), feed_.values.data(), feed_.values.size(),
                               out_c_.data(), out_c_.size());
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    } catch (const Ort::Exception& e) {
      throw VerificationError(model_.string() + ": ONNX Runtime: " + e.what());
    }
  }

 private:
  std::filesystem::path model_;
  std::unique_ptr<Ort::Session> session_;
  SampleInputs feed_;
  std::vector<std::string> outs_;
  std::vector<const char*> in_c_, out_c_;
};

void summarize(BenchResult& r) {
  r.median_ms = percentile(r.runs_ms, 0.5);
  r.p10_ms = percentile(r.runs_ms, 0.1);
  r.p90_ms = percentile(r.runs_ms, 0.9);
  r.min_ms = *std::min_element(r.runs_ms.begin(), r.runs_ms.end());
  r.max_ms = *std::max_element(r.runs_ms.begin(), r.runs_ms.end());
}

}  // namespace

BenchResult bench_model(const std::filesystem::path& model, const BenchOptions& o) {
  check_options(o);
  BenchResult r;
  Timed t(model, o, r);
  for (int i = 0; i < o.warmup; ++i) t.run();
  r.runs_ms.reserve(static_cast<size_t>(o.repeats));
  for (int i = 0; i < o.repeats; ++i) r.runs_ms.push_back(t.run());
  summarize(r);
  return r;
}

std::vector<BenchResult> bench_interleaved(const std::vector<std::filesystem::path>& models, const BenchOptions& o) {
  check_options(o);
  std::vector<BenchResult> results(models.size());
  std::vector<std::unique_ptr<Timed>> timed;
  for (size_t m = 0; m < models.size(); ++m) timed.push_back(std::make_unique<Timed>(models[m], o, results[m]));
  for (auto& t : timed)
    for (int i = 0; i < o.warmup; ++i) t->run();
  for (int i = 0; i < o.repeats; ++i)
    for (size_t k = 0; k < timed.size(); ++k) {
      const size_t m = (k + static_cast<size_t>(i)) % timed.size();  // the order rotates every round
      results[m].runs_ms.push_back(timed[m]->run());
    }
  for (auto& r : results) {
    summarize(r);
    std::vector<double> ratios;
    for (size_t i = 0; i < r.runs_ms.size(); ++i) ratios.push_back(results[0].runs_ms[i] / r.runs_ms[i]);
    r.speedup_median = percentile(ratios, 0.5);
    r.speedup_min = *std::min_element(ratios.begin(), ratios.end());
    r.speedup_max = *std::max_element(ratios.begin(), ratios.end());
  }
  return results;
}

std::string BenchResult::json() const {
  nlohmann::json j{{"model", model.string()},
                   {"batch", batch},
                   {"seq", seq},
                   {"past", past},
                   {"threads", threads},
                   {"inputs", inputs},
                   {"load_ms", load_ms},
                   {"median_ms", median_ms},
                   {"p10_ms", p10_ms},
                   {"p90_ms", p90_ms},
                   {"min_ms", min_ms},
                   {"max_ms", max_ms},
                   {"runs_ms", runs_ms},
                   {"sequences_per_s", sequences_per_s()},
                   {"tokens_per_s", tokens_per_s()}};
  if (speedup_median >= 0)
    j["speedup_vs_first"] = {{"median", speedup_median}, {"min", speedup_min}, {"max", speedup_max}};
  return j.dump();
}

std::string bench_table(const std::vector<std::pair<std::string, BenchResult>>& rows) {
  std::string s;
  char line[512];
  int width = 10;
  for (const auto& row : rows) width = std::max(width, static_cast<int>(std::min<size_t>(row.first.size(), 200)));
  std::snprintf(line, sizeof line, "%-*s %10s %17s %17s %10s %9s %17s\n", width, "model", "median ms", "p10-p90 ms",
                "min-max ms", "seq/s", "vs first", "paired min-max");
  s += line;
  const double first = rows.empty() ? 0 : rows.front().second.median_ms;
  for (const auto& [label, r] : rows) {
    char p[64], m[64];
    std::snprintf(p, sizeof p, "%.3f-%.3f", r.p10_ms, r.p90_ms);
    std::snprintf(m, sizeof m, "%.3f-%.3f", r.min_ms, r.max_ms);
    // Interleaved runs: the median of the run-by-run ratios to the first model (paired), else of the medians.
    const double speed = r.speedup_median >= 0 ? r.speedup_median : r.median_ms > 0 ? first / r.median_ms : 0.0;
    char paired[64] = "-";
    if (r.speedup_median >= 0) std::snprintf(paired, sizeof paired, "%.2f-%.2fx", r.speedup_min, r.speedup_max);
    std::snprintf(line, sizeof line, "%-*s %10.3f %17s %17s %10.1f %8.2fx %17s\n", width, label.c_str(), r.median_ms,
                  p, m, r.sequences_per_s(), speed, paired);
    s += line;
  }
  return s;
}

}  // namespace trex
