#include "runtime/bench.h"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
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

BenchResult bench_model(const std::filesystem::path& model, const BenchOptions& o) {
  if (o.repeats < 1) throw UsageError("bench: repeats must be at least 1");
  if (o.warmup < 0) throw UsageError("bench: warm-up runs must not be negative");
  if (o.threads < 1) throw UsageError("bench: threads must be at least 1");
  BenchResult r;
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
    Ort::Session session(ort_env(), model.c_str(), so);
    r.load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_load).count();
    std::mt19937_64 rng(o.seed);
    SampleShape shape{o.batch, o.seq, o.past, o.padded};
    SampleInputs feed = make_step_inputs(session, shape, limits, rng, model.string());
    for (size_t i = 0; i < feed.names.size(); ++i) {
      auto info = feed.values[i].GetTensorTypeAndShapeInfo();
      std::string dims;
      for (auto d : info.GetShape()) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
      r.inputs += (i ? ", " : "") + feed.names[i] + " " + type_name(info.GetElementType()) + " [" + dims + "]";
    }
    const std::vector<std::string> outs = output_names(session);
    std::vector<const char*> in_c, out_c;
    for (auto& n : feed.names) in_c.push_back(n.c_str());
    for (auto& n : outs) out_c.push_back(n.c_str());
    auto run = [&] {
      auto res = session.Run(Ort::RunOptions{nullptr}, in_c.data(), feed.values.data(), feed.values.size(),
                             out_c.data(), out_c.size());
      (void)res;
    };
    for (int i = 0; i < o.warmup; ++i) run();
    r.runs_ms.reserve(static_cast<size_t>(o.repeats));
    for (int i = 0; i < o.repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      run();
      r.runs_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  } catch (const Ort::Exception& e) {
    throw VerificationError(model.string() + ": ONNX Runtime: " + e.what());
  }
  r.median_ms = percentile(r.runs_ms, 0.5);
  r.p10_ms = percentile(r.runs_ms, 0.1);
  r.p90_ms = percentile(r.runs_ms, 0.9);
  r.min_ms = *std::min_element(r.runs_ms.begin(), r.runs_ms.end());
  r.max_ms = *std::max_element(r.runs_ms.begin(), r.runs_ms.end());
  return r;
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
  return j.dump();
}

std::string bench_table(const std::vector<std::pair<std::string, BenchResult>>& rows) {
  std::string s;
  char line[512];
  int width = 10;
  for (const auto& row : rows) width = std::max(width, static_cast<int>(std::min<size_t>(row.first.size(), 200)));
  std::snprintf(line, sizeof line, "%-*s %10s %17s %17s %10s %9s\n", width, "model", "median ms", "p10-p90 ms",
                "min-max ms", "seq/s", "vs first");
  s += line;
  const double first = rows.empty() ? 0 : rows.front().second.median_ms;
  for (const auto& [label, r] : rows) {
    char p[64], m[64];
    std::snprintf(p, sizeof p, "%.3f-%.3f", r.p10_ms, r.p90_ms);
    std::snprintf(m, sizeof m, "%.3f-%.3f", r.min_ms, r.max_ms);
    std::snprintf(line, sizeof line, "%-*s %10.3f %17s %17s %10.1f %8.2fx\n", width, label.c_str(), r.median_ms, p, m,
                  r.sequences_per_s(), r.median_ms > 0 ? first / r.median_ms : 0.0);
    s += line;
  }
  return s;
}

}  // namespace trex
