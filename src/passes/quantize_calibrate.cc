#include "passes/quantize_calibrate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "onnx/writer.h"
#include "runtime/compare.h"
#include "runtime/ort_session.h"
#include "util/error.h"

namespace trex {

std::vector<std::string> weight_activation_names(const Model& model) {
  std::set<std::string> weights, inits, seen;
  for (const auto& i : model.initializers) {
    inits.insert(i.name);
    if (i.data.dtype() == DType::kF32 && i.data.dims().size() == 2) weights.insert(i.name);
  }
  std::vector<std::string> out;
  for (const auto& n : model.proto.graph().node()) {
    const bool std_domain = n.domain().empty() || n.domain() == "ai.onnx";
    if (!std_domain || (n.op_type() != "MatMul" && n.op_type() != "Gemm") || n.input_size() < 2) continue;
    if (!weights.count(n.input(1)) || inits.count(n.input(0))) continue;
    if (seen.insert(n.input(0)).second) out.push_back(n.input(0));
  }
  return out;
}

std::map<std::string, std::vector<float>> activation_mean_squares(const Model& model, const std::vector<std::string>& values,
                                                                  const std::filesystem::path& scratch,
                                                                  const CalibrationOptions& o,
                                                                  std::map<std::string, std::vector<double>>* grams,
                                                                  std::map<std::string, std::vector<float>>* max_abs) {
  std::set<std::string> existing;
  for (const auto& v : model.proto.graph().input()) existing.insert(v.name());
  for (const auto& v : model.proto.graph().output()) existing.insert(v.name());
  Model probe;
  probe.proto = model.proto;
  probe.initializers = model.initializers;  // shared bytes, not copies
  std::vector<std::string> wanted;
  for (const auto& v : values) {
    if (existing.count(v)) continue;
    auto* out = probe.proto.mutable_graph()->add_output();
    out->set_name(v);
    out->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
    wanted.push_back(v);
  }
  std::map<std::string, std::vector<float>> result;
  if (wanted.empty()) return result;
  struct Cleanup {
    std::filesystem::path p;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove(p, ec);
      std::filesystem::remove(external_data_path(p), ec);
    }
  } cleanup{scratch};
  write_model(probe, scratch);

  std::map<std::string, std::vector<double>> sums;
  std::map<std::string, size_t> rows;
  try {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(o.threads);
    so.SetInterOpNumThreads(1);
    if (o.basic_optimizations) so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_BASIC);
    Ort::Session s(ort_env(), scratch.c_str(), so);
    const std::vector<std::string> in_names = input_names(s);
    std::vector<const char*> in_c, out_c;
    for (auto& n : in_names) in_c.push_back(n.c_str());
    for (auto& n : wanted) out_c.push_back(n.c_str());
    const std::map<std::string, int64_t> limits = sample_input_limits(model);
    std::mt19937_64 rng(o.seed);
    for (int b = 0; b < o.batches; ++b) {
      SampleInputs feed = make_step_inputs(s, SampleShape{o.batch, o.seq, 0, true}, limits, rng, scratch.string());
      auto outs = s.Run(Ort::RunOptions{nullptr}, in_c.data(), feed.values.data(), feed.values.size(), out_c.data(),
                        out_c.size());
      for (size_t k = 0; k < wanted.size(); ++k) {
        auto info = outs[k].GetTensorTypeAndShapeInfo();
        const std::vector<int64_t> shape = info.GetShape();
        if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || shape.empty() || shape.back() <= 0) continue;
        const size_t ch = static_cast<size_t>(shape.back()), n = info.GetElementCount();
        std::vector<double>& acc = sums[wanted[k]];
        acc.resize(ch, 0.0);
        if (acc.size() != ch) continue;
        const float* x = outs[k].GetTensorData<float>();
        for (size_t i = 0; i < n; ++i) acc[i % ch] += static_cast<double>(x[i]) * x[i];
        if (max_abs) {
          std::vector<float>& mx = (*max_abs)[wanted[k]];
          mx.resize(ch, 0.0f);
          for (size_t i = 0; i < n; ++i) {
            const float v = std::fabs(x[i]);
            if (v > mx[i % ch] || v != v) mx[i % ch] = v;  // NaN sticks: such a channel is never picked
          }
        }
        rows[wanted[k]] += n / ch;
        if (grams && static_cast<int64_t>(ch) <= o.max_gram_channels) {
          std::vector<double>& gm = (*grams)[wanted[k]];
          gm.resize(ch * ch, 0.0);
          std::vector<double> row(ch);
          for (size_t r0 = 0; r0 + ch <= n; r0 += ch) {  // the upper triangle; mirrored below
            for (size_t a = 0; a < ch; ++a) row[a] = x[r0 + a];
            for (size_t a = 0; a < ch; ++a) {
              const double xa = row[a];
              double* g = gm.data() + a * ch;
              for (size_t b = a; b < ch; ++b) g[b] += xa * row[b];
            }
          }
        }
      }
    }
  } catch (const Ort::Exception& e) {
    throw VerificationError(std::string("calibration run of the float model failed in ONNX Runtime: ") + e.what());
  }
  if (grams)
    for (auto& [name, gm] : *grams) {
      const size_t ch = sums[name].size();
      const double inv = 1.0 / static_cast<double>(std::max<size_t>(rows[name], 1));
      for (size_t a = 0; a < ch; ++a)
        for (size_t b = a; b < ch; ++b) gm[b * ch + a] = gm[a * ch + b] = gm[a * ch + b] * inv;
    }
  for (const auto& [name, acc] : sums) {
    std::vector<float> v(acc.size());
    for (size_t i = 0; i < acc.size(); ++i) v[i] = static_cast<float>(acc[i] / static_cast<double>(rows[name]));
    result[name] = std::move(v);
  }
  return result;
}

std::map<std::string, std::vector<int64_t>> outlier_channels(const std::map<std::string, std::vector<float>>& max_abs,
                                                             int per_activation, double ratio) {
  std::map<std::string, std::vector<int64_t>> out;
  if (per_activation <= 0) return out;
  for (const auto& [name, mx] : max_abs) {
    if (mx.size() < 4) continue;
    bool finite = true;
    for (float v : mx) finite = finite && std::isfinite(v);
    if (!finite) continue;
    std::vector<float> sorted = mx;
    std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(sorted.size() / 2), sorted.end());
    const double median = sorted[sorted.size() / 2];
    std::vector<int64_t> order(mx.size());
    std::iota(order.begin(), order.end(), 0);
    const size_t k = std::min(static_cast<size_t>(per_activation), mx.size() / 4);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                      [&](int64_t a, int64_t b) { return mx[static_cast<size_t>(a)] > mx[static_cast<size_t>(b)]; });
    std::vector<int64_t> picked;
    for (size_t i = 0; i < k; ++i)
      if (mx[static_cast<size_t>(order[i])] > ratio * median) picked.push_back(order[i]);
    std::sort(picked.begin(), picked.end());
    if (!picked.empty()) out[name] = std::move(picked);
  }
  return out;
}

}  // namespace trex
