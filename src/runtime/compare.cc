#include "runtime/compare.h"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "onnx/reader.h"
#include "runtime/ort_session.h"
#include "util/error.h"

namespace trex {

std::map<std::string, int64_t> sample_input_limits(const Model& model) {
  std::map<std::string, int64_t> limits;
  std::map<std::string, const TensorData*> inits;
  for (const auto& i : model.initializers) inits[i.name] = &i.data;
  // Follow Cast nodes back to the graph input they convert (fused graphs feed int32 ids).
  std::map<std::string, std::string> cast_source;
  for (const auto& node : model.proto.graph().node())
    if (node.op_type() == "Cast" && node.input_size() == 1 && node.output_size() == 1)
      cast_source[node.output(0)] = node.input(0);
  auto source = [&](std::string v) {
    for (int hops = 0; hops < 4 && cast_source.count(v); ++hops) v = cast_source[v];
    return v;
  };
  auto bound = [&](const std::string& index_value, const std::string& table) {
    auto it = inits.find(table);
    if (index_value.empty() || it == inits.end() || it->second->dims().empty()) return;
    const int64_t rows = it->second->dims()[0];
    auto [pos, inserted] = limits.emplace(source(index_value), rows);
    if (!inserted) pos->second = std::min(pos->second, rows);
  };
  for (const auto& node : model.proto.graph().node()) {
    if (node.op_type() == "Gather" && node.input_size() >= 2) bound(node.input(1), node.input(0));
    // com.microsoft EmbedLayerNormalization: input_ids → word table, segment_ids → segment table.
    if (node.op_type() == "EmbedLayerNormalization" && node.input_size() >= 5) {
      bound(node.input(0), node.input(2));
      bound(node.input(1), node.input(4));
    }
  }
  return limits;
}

namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

}  // namespace

CompareResult compare_models(const std::filesystem::path& reference, const std::filesystem::path& candidate,
                             const CompareOptions& o) {
  CompareResult result;
  // ONNX Runtime opens external data itself: the locations are checked first (relative, inside the folder).
  validate_external_data(reference);
  validate_external_data(candidate);
  try {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(o.threads);
    so.SetInterOpNumThreads(1);
    if (!o.prepack) {
      so.AddConfigEntry("session.disable_prepacking", "1");
      so.DisableCpuMemArena();
      so.DisableMemPattern();
    }
    // One session at a time: the reference runs every sample batch and its outputs are kept, then it is closed
    // before the candidate opens, so comparing two large models never holds both sets of weights.
    struct Kept {
      std::vector<int64_t> shape;
      bool is_float = false;
      std::vector<float> values;
    };
    std::vector<SampleInputs> feeds;
    std::vector<std::vector<Kept>> ref_outputs;
    std::vector<std::string> in_names, out_names;
    double ref_ms = 0, cand_ms = 0;
    std::mt19937_64 rng(o.seed);
    {
      Ort::Session ref(ort_env(), reference.c_str(), so);
      in_names = input_names(ref);
      out_names = o.outputs.empty() ? output_names(ref) : o.outputs;
      const std::vector<std::string> all = output_names(ref);
      for (const auto& n : out_names)
        if (std::find(all.begin(), all.end(), n) == all.end())
          throw VerificationError(reference.string() + ": no output '" + n + "'");
      std::vector<const char*> in_c, out_c;
      for (auto& n : in_names) in_c.push_back(n.c_str());
      for (auto& n : out_names) out_c.push_back(n.c_str());
      std::vector<SampleShape> shapes(static_cast<size_t>(std::max(o.batches, 0)),
                                      SampleShape{o.batch, o.seq, o.past, o.padded});
      if (o.decode_past >= 0)
        shapes.insert(shapes.end(), static_cast<size_t>(std::max(o.batches, 0)),
                      SampleShape{o.batch, 1, o.decode_past, o.padded});
      for (const SampleShape& shape : shapes) {
        feeds.push_back(make_step_inputs(ref, shape, o.input_limits, rng, reference.string()));
        const auto t0 = std::chrono::steady_clock::now();
        auto ra = ref.Run(Ort::RunOptions{nullptr}, in_c.data(), feeds.back().values.data(), feeds.back().values.size(),
                          out_c.data(), out_c.size());
        ref_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        std::vector<Kept> kept(ra.size());
        for (size_t k = 0; k < ra.size(); ++k) {
          auto info = ra[k].GetTensorTypeAndShapeInfo();
          kept[k].shape = info.GetShape();
          kept[k].is_float = info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
          if (kept[k].is_float) {
            const float* x = ra[k].GetTensorData<float>();
            kept[k].values.assign(x, x + info.GetElementCount());
          }
        }
        ref_outputs.push_back(std::move(kept));
      }
    }
    Ort::Session cand(ort_env(), candidate.c_str(), so);
    const std::vector<std::string> cand_names = output_names(cand);
    if (o.outputs.empty() && cand_names != out_names)
      throw VerificationError(candidate.string() + ": outputs differ from " + reference.string() + "'s");
    for (const auto& n : out_names)
      if (std::find(cand_names.begin(), cand_names.end(), n) == cand_names.end())
        throw VerificationError(candidate.string() + ": no output '" + n + "'");

    std::vector<const char*> in_c, out_c;
    for (auto& n : in_names) in_c.push_back(n.c_str());
    for (auto& n : out_names) out_c.push_back(n.c_str());

    result.outputs.resize(out_names.size());
    std::vector<double> cos_sum(out_names.size(), 0), abs_sum(out_names.size(), 0);
    std::vector<size_t> rows(out_names.size(), 0), elems(out_names.size(), 0), agree(out_names.size(), 0);
    for (size_t i = 0; i < out_names.size(); ++i) result.outputs[i].name = out_names[i];

    for (size_t b = 0; b < feeds.size(); ++b) {
      const SampleInputs& feed = feeds[b];
      const auto t1 = std::chrono::steady_clock::now();
      auto ca = cand.Run(Ort::RunOptions{nullptr}, in_c.data(), feed.values.data(), feed.values.size(), out_c.data(),
                         out_c.size());
      cand_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
      const std::vector<Kept>& ra = ref_outputs[b];

      for (size_t k = 0; k < out_names.size(); ++k) {
        auto ci = ca[k].GetTensorTypeAndShapeInfo();
        if (ra[k].shape != ci.GetShape())
          throw VerificationError(candidate.string() + ": output '" + out_names[k] + "' has shape " +
                                  shape_str(ci.GetShape()) + ", the reference " + shape_str(ra[k].shape));
        if (!ra[k].is_float || ci.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) continue;
        const float* x = ra[k].values.data();
        const float* y = ca[k].GetTensorData<float>();
        const size_t n = ra[k].values.size();
        const std::vector<int64_t>& shp = ra[k].shape;
        const size_t last = shp.empty() ? 1 : static_cast<size_t>(std::max<int64_t>(shp.back(), 1));
        OutputComparison& oc = result.outputs[k];
        const bool logits = contains(out_names[k], "logits");
        for (size_t r0 = 0; r0 + last <= n; r0 += last) {
          double dot = 0, nx = 0, ny = 0;
          size_t ax = 0, ay = 0;
          for (size_t j = r0; j < r0 + last; ++j) {
            double d = std::fabs(static_cast<double>(x[j]) - y[j]);
            if (std::isnan(d)) d = INFINITY;  // a NaN must never pass as "no difference"
            oc.max_abs_diff = std::max(oc.max_abs_diff, d);
            abs_sum[k] += d;
            dot += static_cast<double>(x[j]) * y[j];
            nx += static_cast<double>(x[j]) * x[j];
            ny += static_cast<double>(y[j]) * y[j];
            if (x[j] > x[r0 + ax]) ax = j - r0;
            if (y[j] > y[r0 + ay]) ay = j - r0;
          }
          const double cos = (nx == 0 && ny == 0) ? 1.0 : (nx == 0 || ny == 0) ? 0.0 : dot / std::sqrt(nx * ny);
          oc.min_cosine = std::min(oc.min_cosine, cos);
          cos_sum[k] += cos;
          ++rows[k];
          if (logits) {
            ++oc.labels;
            if (ax == ay) ++agree[k];
          }
        }
        elems[k] += n;
      }
    }
    for (size_t k = 0; k < out_names.size(); ++k) {
      OutputComparison& oc = result.outputs[k];
      if (elems[k]) oc.mean_abs_diff = abs_sum[k] / static_cast<double>(elems[k]);
      if (rows[k]) oc.mean_cosine = cos_sum[k] / static_cast<double>(rows[k]);
      if (oc.labels) oc.label_agreement = static_cast<double>(agree[k]) / static_cast<double>(oc.labels);
      result.max_abs_diff = std::max(result.max_abs_diff, oc.max_abs_diff);
      result.min_cosine = std::min(result.min_cosine, oc.min_cosine);
      result.mean_cosine = std::min(result.mean_cosine, oc.mean_cosine);
      if (oc.label_agreement >= 0)
        result.label_agreement = result.label_agreement < 0 ? oc.label_agreement
                                                            : std::min(result.label_agreement, oc.label_agreement);
    }
    result.reference_ms = ref_ms / static_cast<double>(std::max<size_t>(feeds.size(), 1));
    result.candidate_ms = cand_ms / static_cast<double>(std::max<size_t>(feeds.size(), 1));
  } catch (const Ort::Exception& e) {
    throw VerificationError("comparing " + candidate.string() + " with " + reference.string() + ": ONNX Runtime: " + e.what());
  }
  return result;
}

}  // namespace trex
