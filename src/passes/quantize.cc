#include "passes/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "util/error.h"

namespace trex {
namespace {

// Adding then subtracting 1.5 * 2^23 rounds a float with |x| < 2^22 to the nearest integer, halves to even
// (the default IEEE rounding mode), exactly like round_half_even; it vectorizes where std::nearbyint does not.
constexpr float kRoundMagic = 12582912.0f;
inline float fast_round(float x) { return (x + kRoundMagic) - kRoundMagic; }

struct Range {
  int32_t qmin, qmax;
};
Range range_of(const QuantParams& p) {
  const bool s8 = p.type == WeightType::kS8;
  const int32_t qmax = s8 ? (p.reduce_range ? 63 : 127) : (p.reduce_range ? 127 : 255);
  return {s8 ? -qmax : 0, qmax};
}


}  // namespace

int64_t int_attr(const onnx::NodeProto& n, const char* name, int64_t dflt) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return a.i();
  return dflt;
}
float float_attr(const onnx::NodeProto& n, const char* name, float dflt) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return a.f();
  return dflt;
}

void add_int_attr(onnx::NodeProto* n, const char* name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void import_ms_domain(onnx::ModelProto* m) {
  for (const auto& o : m->opset_import())
    if (o.domain() == "com.microsoft") return;
  auto* o = m->add_opset_import();
  o->set_domain("com.microsoft");
  o->set_version(1);
}

UniqueNames::UniqueNames(const Model& m) {
  for (const auto& init : m.initializers) used_.insert(init.name);
  for (const auto& node : m.proto.graph().node()) {
    used_.insert(node.name());
    for (const auto& o : node.output()) used_.insert(o);
  }
}

std::string UniqueNames::operator()(const std::string& base) {
  std::string s = base;
  for (int i = 1; used_.count(s); ++i) s = base + "_" + std::to_string(i);
  used_.insert(s);
  return s;
}

Floats floats_of(const TensorData& t) {
  Floats f;
  const std::byte* d = t.direct();
  if (d && reinterpret_cast<uintptr_t>(d) % alignof(float) == 0) {
    f.p = reinterpret_cast<const float*>(d);
  } else {
    f.copy.resize(t.nbytes() / sizeof(float));
    t.copy_to(reinterpret_cast<std::byte*>(f.copy.data()));
    f.p = f.copy.data();
  }
  return f;
}

bool weight_scales(const float* w, int64_t k, int64_t n, bool transposed, const QuantParams& p, QuantizedWeight* out) {
  const auto [qmin, qmax] = range_of(p);
  const bool s8 = p.type == WeightType::kS8;
  // Per-column ranges (columns = output channels), starting at 0 so 0 is always representable.
  std::vector<float> lo(static_cast<size_t>(n), 0.0f), hi(static_cast<size_t>(n), 0.0f);
  float bad = 0.0f;  // becomes NaN when any value is NaN or infinite (v - v)
  if (!transposed) {
    for (int64_t r = 0; r < k; ++r) {
      const float* row = w + r * n;
      for (int64_t c = 0; c < n; ++c) {
        const float v = row[c];
        lo[static_cast<size_t>(c)] = v < lo[static_cast<size_t>(c)] ? v : lo[static_cast<size_t>(c)];
        hi[static_cast<size_t>(c)] = v > hi[static_cast<size_t>(c)] ? v : hi[static_cast<size_t>(c)];
        bad += v - v;
      }
    }
  } else {
    for (int64_t c = 0; c < n; ++c) {
      const float* row = w + c * k;
      float l = 0.0f, h = 0.0f;
      for (int64_t r = 0; r < k; ++r) {
        const float v = row[r];
        l = v < l ? v : l;
        h = v > h ? v : h;
        bad += v - v;
      }
      lo[static_cast<size_t>(c)] = l;
      hi[static_cast<size_t>(c)] = h;
    }
  }
  if (bad != 0.0f || std::isnan(bad)) {
    *out = QuantizedWeight{};
    return false;
  }
  if (!p.per_channel) {
    float l = 0.0f, h = 0.0f;
    for (int64_t c = 0; c < n; ++c) {
      l = std::min(l, lo[static_cast<size_t>(c)]);
      h = std::max(h, hi[static_cast<size_t>(c)]);
    }
    lo.assign(1, l);
    hi.assign(1, h);
  }
  out->type = p.type;
  out->qmin = qmin;
  out->qmax = qmax;
  out->scale.resize(lo.size());
  out->zero_point.resize(lo.size());
  for (size_t g = 0; g < lo.size(); ++g) {
    // Same expressions, in the same order, as quantize_reference.
    float scale = s8 ? std::max(-lo[g], hi[g]) / static_cast<float>(qmax)
                     : (hi[g] - lo[g]) / static_cast<float>(qmax - qmin);
    if (scale == 0.0f) scale = 1.0f;
    int32_t zp = 0;
    if (!s8) {
      const float z = round_half_even(static_cast<float>(qmin) - lo[g] / scale);
      zp = static_cast<int32_t>(std::clamp(z, static_cast<float>(qmin), static_cast<float>(qmax)));
    }
    out->scale[g] = scale;
    out->zero_point[g] = zp;
  }
  return true;
}

void quantize_with_scales(const float* w, int64_t k, int64_t n, bool transposed, const QuantizedWeight& qw, uint8_t* q) {
  // Per-column scale and zero point (a per-tensor weight repeats its single pair), so the inner loop is uniform.
  const size_t groups = qw.scale.size();
  std::vector<float> scale(static_cast<size_t>(n)), zpf(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) {
    const size_t g = groups == 1 ? 0 : static_cast<size_t>(c);
    scale[static_cast<size_t>(c)] = qw.scale[g];
    zpf[static_cast<size_t>(c)] = static_cast<float>(qw.zero_point[g]);
  }
  const float qmin = static_cast<float>(qw.qmin), qmax = static_cast<float>(qw.qmax);
  if (!transposed) {
    for (int64_t r = 0; r < k; ++r) {
      const float* row = w + r * n;
      uint8_t* out = q + r * n;
      for (int64_t c = 0; c < n; ++c) {
        float t = fast_round(row[c] / scale[static_cast<size_t>(c)]) + zpf[static_cast<size_t>(c)];
        t = t < qmin ? qmin : t;
        t = t > qmax ? qmax : t;
        out[c] = static_cast<uint8_t>(static_cast<int32_t>(t));
      }
    }
  } else {
    // Input rows are output channels; write K×N in tiles so both sides stay in cache.
    constexpr int64_t kTile = 64;
    for (int64_t c0 = 0; c0 < n; c0 += kTile) {
      const int64_t c1 = std::min(n, c0 + kTile);
      for (int64_t r0 = 0; r0 < k; r0 += kTile) {
        const int64_t r1 = std::min(k, r0 + kTile);
        for (int64_t c = c0; c < c1; ++c) {
          const float* row = w + c * k;
          const float s = scale[static_cast<size_t>(c)], z = zpf[static_cast<size_t>(c)];
          for (int64_t r = r0; r < r1; ++r) {
            float t = fast_round(row[r] / s) + z;
            t = t < qmin ? qmin : t;
            t = t > qmax ? qmax : t;
            q[r * n + c] = static_cast<uint8_t>(static_cast<int32_t>(t));
          }
        }
      }
    }
  }
}

bool quantize_weight(const float* w, int64_t k, int64_t n, bool transposed, const QuantParams& p, QuantizedWeight* out) {
  if (!weight_scales(w, k, n, transposed, p, out)) return false;
  out->q.resize(static_cast<size_t>(k * n));
  quantize_with_scales(w, k, n, transposed, *out, out->q.data());
  return true;
}

bool glob_match(const std::string& pattern, const std::string& text) {
  // Iterative matcher with backtracking to the last `*`.
  size_t p = 0, t = 0, star = std::string::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

double weight_quantization_error(const Model& model, const std::string& weight, const QuantParams& p) {
  for (const auto& init : model.initializers) {
    if (init.name != weight) continue;
    if (init.data.dtype() != DType::kF32 || init.data.dims().size() != 2) return 0.0;
    const int64_t k = init.data.dims()[0], n = init.data.dims()[1];
    Floats f = floats_of(init.data);
    const QuantizedWeight q = quantize_reference(f.p, k, n, p);
    double err = 0, ref = 0;
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < n; ++c) {
        const double v = f.p[r * n + c];
        const double d = v - dequantize_reference(q, n, r, c);
        err += d * d;
        ref += v * v;
      }
    return ref > 0 ? std::sqrt(err / ref) : 0.0;
  }
  return 0.0;
}

namespace {

// Unique value / node / initializer names.
class Names {
 public:
  void add(const std::string& s) { used_.insert(s); }
  std::string fresh(const std::string& base) {
    std::string s = base;
    for (int i = 1; used_.count(s); ++i) s = base + "_" + std::to_string(i);
    used_.insert(s);
    return s;
  }

 private:
  std::unordered_set<std::string> used_;
};

void collect_subgraph_inputs(const onnx::GraphProto& g, std::unordered_set<std::string>* out) {
  for (const auto& node : g.node()) {
    for (const auto& in : node.input()) out->insert(in);
    for (const auto& a : node.attribute()) {
      if (a.has_g()) collect_subgraph_inputs(a.g(), out);
      for (const auto& sg : a.graphs()) collect_subgraph_inputs(sg, out);
    }
  }
}


onnx::NodeProto make_node(const std::string& op, const std::string& name, std::vector<std::string> inputs,
                          std::vector<std::string> outputs, const std::string& domain = "") {
  onnx::NodeProto n;
  n.set_op_type(op);
  n.set_name(name);
  if (!domain.empty()) n.set_domain(domain);
  for (auto& i : inputs) n.add_input(std::move(i));
  for (auto& o : outputs) n.add_output(std::move(o));
  return n;
}

// The plan for one quantized node.
struct Plan {
  size_t node_index = 0;
  std::string weight;
  bool transposed = false;   // Gemm transB=1: the weight is stored N×K
  int64_t k = 0, n = 0;
  float alpha = 1.0f;        // Gemm alpha, folded into the weight scale
  std::string bias;          // 1-D [N] initializer fused into MatMulIntegerToFloat
  int fused_add = -1;        // index of the Add node the bias came from (removed)
  std::string extra_add;     // Gemm C that cannot be fused: added after
  int transpose_node = -1;   // MatMul(x, Transpose(W)): the Transpose's index (removed; W is read N×K)
  std::string output;        // final output value name
  bool attention = false;    // com.microsoft Attention → QAttention (packed QKV weight [K, 3H])
  std::vector<int64_t> outliers;  // input channels computed in fp32 (sorted, unique, < k)
  bool row_scaled = false;        // activation quantized with one scale per row
  bool special() const { return row_scaled || !outliers.empty(); }
  // Row-scaled with outliers: the gathered outlier channels get a column of ones, and the fp32 rows a last row
  // holding the bias (or zeros), so one small MatMul adds outliers and bias after the row scale.
  bool bias_row() const { return row_scaled && !outliers.empty(); }
};

// A copy of a weight (K×N, or N×K when transposed) with the given input rows set to 0.
std::vector<float> without_rows(const float* w, int64_t k, int64_t n, bool transposed, const std::vector<int64_t>& rows) {
  std::vector<float> c(w, w + k * n);
  for (int64_t r : rows) {
    if (!transposed) std::fill(c.begin() + r * n, c.begin() + (r + 1) * n, 0.0f);
    else
      for (int64_t col = 0; col < n; ++col) c[static_cast<size_t>(col * k + r)] = 0.0f;
  }
  return c;
}

bool is_normalization(const std::string& op) {
  return op == "LayerNormalization" || op == "SkipLayerNormalization" || op == "SimplifiedLayerNormalization" ||
         op == "SkipSimplifiedLayerNormalization" || op == "EmbedLayerNormalization";
}

}  // namespace

std::unordered_map<std::string, TransposedWeight> transposed_weights(const onnx::GraphProto& g, const Model& m) {
  std::unordered_set<std::string> f32_2d, elsewhere;
  for (const auto& init : m.initializers)
    if (init.data.dtype() == DType::kF32 && init.data.dims().size() == 2) f32_2d.insert(init.name);
  for (const auto& o : g.output()) elsewhere.insert(o.name());
  std::unordered_map<std::string, TransposedWeight> found;
  for (int i = 0; i < g.node_size(); ++i) {
    const onnx::NodeProto& n = g.node(i);
    for (const auto& a : n.attribute()) {
      if (a.has_g()) collect_subgraph_inputs(a.g(), &elsewhere);
      for (const auto& sg : a.graphs()) collect_subgraph_inputs(sg, &elsewhere);
    }
    const bool std_domain = n.domain().empty() || n.domain() == "ai.onnx";
    if (!std_domain || n.op_type() != "Transpose" || n.input_size() != 1 || n.output_size() != 1 ||
        !f32_2d.count(n.input(0)))
      continue;
    bool swap = true;  // no perm: reversed axes, [1, 0] for a 2-D input
    for (const auto& a : n.attribute())
      if (a.name() == "perm") swap = a.ints_size() == 2 && a.ints(0) == 1 && a.ints(1) == 0;
    if (swap) found[n.output(0)] = {i, n.input(0)};
  }
  std::unordered_map<std::string, int> matmul_reads;
  for (const auto& n : g.node()) {  // any other reader than one MatMul's B keeps the Transpose
    const bool matmul = (n.domain().empty() || n.domain() == "ai.onnx") && n.op_type() == "MatMul";
    for (int j = 0; j < n.input_size(); ++j)
      if (matmul && j == 1) ++matmul_reads[n.input(j)];
      else elsewhere.insert(n.input(j));
  }
  for (auto it = found.begin(); it != found.end();)
    it = elsewhere.count(it->first) || matmul_reads[it->first] != 1 ? found.erase(it) : std::next(it);
  return found;
}

Model quantize_model(const Model& in, const QuantizePolicy& policy, QuantizeReport* report_out) {
  QuantizeReport report;
  report.weight_bytes_before = in.weight_bytes();
  const onnx::GraphProto& g = in.proto.graph();

  int64_t opset = 0;
  for (const auto& o : in.proto.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") opset = o.version();
  if (opset != 0 && opset < 11)
    throw UsageError("quantize: the model uses opset " + std::to_string(opset) +
                     "; DynamicQuantizeLinear needs opset 11 or later (re-export with --opset 11+)");

  std::unordered_map<std::string, size_t> init_index;
  for (size_t i = 0; i < in.initializers.size(); ++i) init_index[in.initializers[i].name] = i;
  std::unordered_map<std::string, std::string> producer_op;  // first output of a node -> its op type
  for (const auto& node : g.node())
    if (node.output_size() > 0) producer_op[node.output(0)] = node.op_type();
  std::unordered_map<std::string, int> uses;
  std::unordered_map<std::string, std::vector<int>> consumers;
  for (int i = 0; i < g.node_size(); ++i)
    for (const auto& x : g.node(i).input()) {
      if (x.empty()) continue;
      ++uses[x];
      consumers[x].push_back(i);
    }
  std::unordered_set<std::string> pinned;  // used by subgraphs or graph outputs: never removed or fused away
  for (const auto& node : g.node())
    for (const auto& a : node.attribute()) {
      if (a.has_g()) collect_subgraph_inputs(a.g(), &pinned);
      for (const auto& sg : a.graphs()) collect_subgraph_inputs(sg, &pinned);
    }
  for (const auto& o : g.output()) pinned.insert(o.name());

  Names names;
  for (const auto& init : in.initializers) names.add(init.name);
  for (const auto& t : g.initializer()) names.add(t.name());
  for (const auto& v : g.input()) names.add(v.name());
  for (const auto& node : g.node()) {
    names.add(node.name());
    for (const auto& o : node.output()) names.add(o);
  }

  auto is_f32_initializer = [&](const std::string& name, size_t rank) -> const TensorData* {
    auto it = init_index.find(name);
    if (it == init_index.end()) return nullptr;
    const TensorData& d = in.initializers[it->second].data;
    if (d.dtype() != DType::kF32 || d.dims().size() != rank) return nullptr;
    return &d;
  };
  auto excluded_by_pattern = [&](const std::string& node, const std::string& weight) {
    for (const auto& pat : policy.exclude_nodes)
      if (glob_match(pat, node) || glob_match(pat, weight)) return true;
    return false;
  };

  const std::unordered_map<std::string, TransposedWeight> transposed = transposed_weights(g, in);
  std::vector<Plan> plans;
  std::vector<int> plan_of(static_cast<size_t>(g.node_size()), -1);
  std::vector<bool> removed(static_cast<size_t>(g.node_size()), false);
  for (int i = 0; i < g.node_size(); ++i) {
    const onnx::NodeProto& node = g.node(i);
    const bool std_domain = node.domain().empty() || node.domain() == "ai.onnx";
    // ONNX Runtime's fused Attention (as trex's optimized export emits it): its packed QKV weight becomes
    // QAttention's int8 weight. Only the self-attention form without past state.
    const bool fused_attention = node.domain() == "com.microsoft" && node.op_type() == "Attention" &&
                                 policy.ops == QuantOps::kMicrosoft && node.input_size() >= 3 && node.input_size() <= 4 &&
                                 node.output_size() == 1;
    if (!fused_attention && (!std_domain || (node.op_type() != "MatMul" && node.op_type() != "Gemm"))) continue;
    const std::string node_name = node.name().empty() ? node.output(0) : node.name();
    std::string weight = node.input_size() > 1 ? node.input(1) : "";
    const TransposedWeight* folded = nullptr;  // MatMul(x, Transpose(W)): W read N×K, the Transpose dropped
    if (node.op_type() == "MatMul")
      if (auto t = transposed.find(weight); t != transposed.end()) {
        folded = &t->second;
        weight = folded->weight;
      }
    auto skip = [&](const std::string& why) { report.skipped.push_back({node_name, node.op_type(), weight, why}); };
    if (std::find(policy.exclude_op_types.begin(), policy.exclude_op_types.end(), node.op_type()) !=
        policy.exclude_op_types.end()) {
      skip("op type excluded");
      continue;
    }
    if (excluded_by_pattern(node_name, weight)) {
      skip("excluded by pattern");
      continue;
    }
    const TensorData* w = is_f32_initializer(weight, 2);
    if (!w) {
      skip(init_index.count(weight) ? "weight is not a 2-D float32 initializer" : "weight is not a constant initializer");
      continue;
    }
    if (init_index.count(node.input(0))) {
      skip("both inputs are constant");
      continue;
    }
    Plan plan;
    plan.node_index = static_cast<size_t>(i);
    plan.weight = weight;
    plan.output = node.output(0);
    plan.attention = fused_attention;
    if (folded) {
      plan.transposed = true;
      plan.transpose_node = folded->node;
    }
    if (node.op_type() == "Gemm") {
      if (int_attr(node, "transA", 0) != 0) {
        skip("Gemm with transA=1");
        continue;
      }
      plan.transposed = int_attr(node, "transB", 0) != 0;
      plan.alpha = float_attr(node, "alpha", 1.0f);
      const float beta = float_attr(node, "beta", 1.0f);
      if (!(plan.alpha > 0.0f) || !std::isfinite(plan.alpha)) {
        skip("Gemm alpha is not positive");
        continue;
      }
      if (node.input_size() > 2 && !node.input(2).empty()) {
        if (beta != 1.0f) {
          skip("Gemm with bias and beta != 1");
          continue;
        }
        plan.extra_add = node.input(2);
      }
    }
    plan.k = w->dims()[plan.transposed ? 1 : 0];
    plan.n = w->dims()[plan.transposed ? 0 : 1];
    if (policy.auto_policy) {
      if (plan.k * plan.n < policy.min_elements) {
        skip("auto policy: fewer than " + std::to_string(policy.min_elements) + " weights");
        continue;
      }
      if (plan.n < policy.min_channels || plan.k < policy.min_channels) {
        skip("auto policy: logit-sized projection (" + std::to_string(plan.k) + "x" + std::to_string(plan.n) + ")");
        continue;
      }
    }
    // Bias fusion (com.microsoft form only): a Gemm C of shape [N], or MatMul -> Add(y, b[N]).
    if (policy.ops == QuantOps::kMicrosoft && !plan.attention) {
      if (!plan.extra_add.empty()) {
        const TensorData* c = is_f32_initializer(plan.extra_add, 1);
        if (c && c->dims()[0] == plan.n) {
          plan.bias = plan.extra_add;
          plan.extra_add.clear();
        }
      } else if (node.op_type() == "MatMul" && uses[plan.output] == 1 && !pinned.count(plan.output)) {
        const int j = consumers[plan.output][0];
        const onnx::NodeProto& add = g.node(j);
        if (add.op_type() == "Add" && (add.domain().empty() || add.domain() == "ai.onnx") && add.input_size() == 2 &&
            plan_of[static_cast<size_t>(j)] < 0) {
          const std::string& other = add.input(0) == plan.output ? add.input(1) : add.input(0);
          const TensorData* b = is_f32_initializer(other, 1);
          if (b && b->dims()[0] == plan.n && other != plan.output) {
            plan.bias = other;
            plan.fused_add = j;
            plan.output = add.output(0);
          }
        }
      }
    }
    if (policy.ops == QuantOps::kMicrosoft && !plan.attention) {
      const std::string& act = node.input(0);
      plan.row_scaled = policy.row_scales == RowScales::kAll ||
                        (policy.row_scales == RowScales::kNormalized && producer_op.count(act) &&
                         is_normalization(producer_op.at(act)));
      if (auto it = policy.outlier_channels.find(act); it != policy.outlier_channels.end()) {
        std::vector<int64_t> ch = it->second;
        std::sort(ch.begin(), ch.end());
        ch.erase(std::unique(ch.begin(), ch.end()), ch.end());
        const bool valid = !ch.empty() && ch.front() >= 0 && ch.back() < plan.k &&
                           static_cast<int64_t>(ch.size()) * 2 <= plan.k;
        if (valid) plan.outliers = std::move(ch);
      }
    }
    if (plan.fused_add >= 0) removed[static_cast<size_t>(plan.fused_add)] = true;
    if (plan.transpose_node >= 0) removed[static_cast<size_t>(plan.transpose_node)] = true;
    plan_of[static_cast<size_t>(i)] = static_cast<int>(plans.size());
    plans.push_back(std::move(plan));
  }

  // Quantize each distinct weight once (scales now, bytes when written).
  struct QWeight {
    std::string q, scale, zp;
    std::string outlier_rows;  // fp32 weight rows of the outlier channels [channels, N]
  };
  // (weight, alpha, activation whose outlier channels are zeroed in it or "", bias appended to its fp32 rows)
  using WeightKey = std::tuple<std::string, float, std::string, std::string>;
  auto weight_key = [&](const Plan& p) {
    return WeightKey{p.weight, p.alpha, p.outliers.empty() ? std::string() : g.node(static_cast<int>(p.node_index)).input(0),
                     p.bias_row() ? "+" + p.bias : std::string()};
  };
  std::map<WeightKey, QWeight> qweights;
  Model out;
  out.proto = in.proto;
  onnx::GraphProto* og = out.proto.mutable_graph();
  og->clear_node();
  std::vector<Initializer> new_inits;
  const DType qtype = policy.params.type == WeightType::kS8 ? DType::kI8 : DType::kU8;
  for (size_t pi = 0; pi < plans.size(); ++pi) {
    Plan& plan = plans[pi];
    const WeightKey key = weight_key(plan);
    if (qweights.count(key)) continue;
    const TensorData& src = in.initializers[init_index.at(plan.weight)].data;
    auto qw = std::make_shared<QuantizedWeight>();
    const std::vector<int64_t> zero_rows = plan.outliers;
    std::vector<float> outlier_rows;
    {
      Floats f = floats_of(src);
      bool ok;
      if (zero_rows.empty()) {
        ok = weight_scales(f.p, plan.k, plan.n, plan.transposed, policy.params, qw.get());
      } else {
        const std::vector<float> z = without_rows(f.p, plan.k, plan.n, plan.transposed, zero_rows);
        ok = weight_scales(z.data(), plan.k, plan.n, plan.transposed, policy.params, qw.get());
        for (int64_t r : zero_rows)
          for (int64_t c = 0; c < plan.n; ++c)
            outlier_rows.push_back(plan.alpha * (plan.transposed ? f.p[c * plan.k + r] : f.p[r * plan.n + c]));
        if (plan.bias_row()) {
          if (plan.bias.empty()) {
            outlier_rows.resize(outlier_rows.size() + static_cast<size_t>(plan.n), 0.0f);
          } else {
            Floats b = floats_of(in.initializers[init_index.at(plan.bias)].data);
            outlier_rows.insert(outlier_rows.end(), b.p, b.p + plan.n);
          }
        }
      }
      if (!ok) {
        qweights[key] = QWeight{};  // marks "not quantizable"
        continue;
      }
    }
    QWeight names_out;
    names_out.q = names.fresh(plan.weight + "_quantized");
    names_out.scale = names.fresh(plan.weight + "_scale");
    names_out.zp = names.fresh(plan.weight + "_zero_point");
    const int64_t k = plan.k, n = plan.n;
    const bool transposed = plan.transposed;
    new_inits.push_back({names_out.q, TensorData::produced(qtype, {k, n}, [src, qw, k, n, transposed, zero_rows](std::byte* dst) {
                           Floats f = floats_of(src);
                           if (zero_rows.empty()) {
                             quantize_with_scales(f.p, k, n, transposed, *qw, reinterpret_cast<uint8_t*>(dst));
                           } else {
                             const std::vector<float> z = without_rows(f.p, k, n, transposed, zero_rows);
                             quantize_with_scales(z.data(), k, n, transposed, *qw, reinterpret_cast<uint8_t*>(dst));
                           }
                         })});
    if (!zero_rows.empty()) {
      names_out.outlier_rows = names.fresh(plan.weight + "_outlier_rows");
      const int64_t rows = static_cast<int64_t>(zero_rows.size()) + (plan.bias_row() ? 1 : 0);
      new_inits.push_back({names_out.outlier_rows, TensorData::from_vector(DType::kF32, {rows, n}, outlier_rows)});
    }
    std::vector<float> scales = qw->scale;
    for (auto& s : scales) s *= plan.alpha;
    std::vector<uint8_t> zps;
    for (int32_t z : qw->zero_point) zps.push_back(static_cast<uint8_t>(z));
    const Shape sdims = policy.params.per_channel ? Shape{n} : Shape{};
    new_inits.push_back({names_out.scale, TensorData::from_vector(DType::kF32, sdims, scales)});
    new_inits.push_back({names_out.zp, TensorData::from_vector(qtype, sdims, zps)});
    qweights[key] = names_out;
  }

  // Rewrite the node list in order; each activation is quantized once, before its first quantized consumer.
  struct QAct {
    std::string q, scale, zp;
    std::string row_max;   // [..., 1]: the per-row scale the activation was divided by ("" when per tensor)
    std::string outliers;  // [..., channels]: the outlier channels, gathered in fp32 ("" when none)
  };
  // Keyed by (activation, special form): QAttention and the standard form always read the plain quantization.
  std::map<std::pair<std::string, bool>, QAct> qacts;
  std::string eps_name, axes_name;  // shared constants of the row-scaled form
  std::map<std::pair<int64_t, std::vector<int64_t>>, std::pair<std::string, std::string>> outlier_consts;  // mask, index
  std::unordered_set<std::string> removed_values;
  for (int i = 0; i < g.node_size(); ++i) {
    const int pi = plan_of[static_cast<size_t>(i)];
    const onnx::NodeProto& node = g.node(i);
    const QWeight* qwn = nullptr;
    if (pi >= 0) {
      const Plan& plan = plans[static_cast<size_t>(pi)];
      const QWeight& w = qweights.at(weight_key(plan));
      if (!w.q.empty()) qwn = &w;
      else {
        report.skipped.push_back({node.name(), node.op_type(), plan.weight, "weight holds NaN or infinity"});
        if (plan.fused_add >= 0) removed[static_cast<size_t>(plan.fused_add)] = false;
        if (plan.transpose_node >= 0) *og->add_node() = g.node(plan.transpose_node);  // skipped above: back
      }
    }
    if (!qwn) {
      if (!removed[static_cast<size_t>(i)]) *og->add_node() = node;
      continue;
    }
    const Plan& plan = plans[static_cast<size_t>(pi)];
    const std::string base = node.name().empty() ? node.output(0) : node.name();
    const std::string& a = node.input(0);
    auto it = qacts.find({a, plan.special()});
    if (it == qacts.end()) {
      QAct qa{names.fresh(a + "_quantized"), names.fresh(a + "_scale"), names.fresh(a + "_zero_point"), "", ""};
      std::string x = a;
      if (!plan.outliers.empty()) {
        // Inliers: the activation with the outlier channels zeroed; outliers: those channels, gathered.
        // Shared by every activation of the same width with the same outlier channels.
        auto [ci, fresh_set] = outlier_consts.try_emplace({plan.k, plan.outliers});
        if (fresh_set) {
          std::vector<float> mask(static_cast<size_t>(plan.k), 1.0f);
          for (int64_t c : plan.outliers) mask[static_cast<size_t>(c)] = 0.0f;
          ci->second = {names.fresh(a + "_inlier_mask"), names.fresh(a + "_outlier_index")};
          new_inits.push_back({ci->second.first, TensorData::from_vector(DType::kF32, {plan.k}, mask)});
          new_inits.push_back({ci->second.second, TensorData::from_vector(
                                                      DType::kI64, {static_cast<int64_t>(plan.outliers.size())}, plan.outliers)});
        }
        const std::string mask_name = ci->second.first, idx_name = ci->second.second;
        const std::string inl = names.fresh(a + "_inliers");
        qa.outliers = names.fresh(a + "_outliers");
        *og->add_node() = make_node("Mul", names.fresh(a + "_inlier_mul"), {a, mask_name}, {inl});
        onnx::NodeProto gather = make_node("Gather", names.fresh(a + "_outlier_gather"), {a, idx_name}, {qa.outliers});
        add_int_attr(&gather, "axis", -1);
        *og->add_node() = gather;
        x = inl;
      }
      if (plan.row_scaled) {
        if (eps_name.empty()) {
          eps_name = names.fresh("row_scale_epsilon");
          new_inits.push_back({eps_name, TensorData::from_vector(DType::kF32, {}, std::vector<float>{1e-30f})});
        }
        const std::string ab = names.fresh(a + "_abs"), mx = names.fresh(a + "_row_absmax");
        qa.row_max = names.fresh(a + "_row_scale");
        *og->add_node() = make_node("Abs", names.fresh(a + "_Abs"), {x}, {ab});
        onnx::NodeProto rmax;
        if (opset >= 18) {
          if (axes_name.empty()) {
            axes_name = names.fresh("row_scale_axes");
            new_inits.push_back({axes_name, TensorData::from_vector(DType::kI64, {1}, std::vector<int64_t>{-1})});
          }
          rmax = make_node("ReduceMax", names.fresh(a + "_ReduceMax"), {ab, axes_name}, {mx});
        } else {
          rmax = make_node("ReduceMax", names.fresh(a + "_ReduceMax"), {ab}, {mx});
          auto* axes = rmax.add_attribute();
          axes->set_name("axes");
          axes->set_type(onnx::AttributeProto::INTS);
          axes->add_ints(-1);
        }
        add_int_attr(&rmax, "keepdims", 1);
        *og->add_node() = rmax;
        // A row of zeros keeps scale 1e-30 (0 / 1e-30 = 0), never 0 / 0.
        *og->add_node() = make_node("Max", names.fresh(a + "_row_scale_floor"), {mx, eps_name}, {qa.row_max});
        const std::string xn = names.fresh(a + "_row_scaled");
        *og->add_node() = make_node("Div", names.fresh(a + "_row_div"), {x, qa.row_max}, {xn});
        x = xn;
        if (!qa.outliers.empty()) {  // [outliers, 1]: the bias row's input (r / r = 1, r >= 1e-30)
          const std::string one = names.fresh(a + "_ones"), cat = names.fresh(a + "_outliers_and_one");
          *og->add_node() = make_node("Div", names.fresh(a + "_ones_div"), {qa.row_max, qa.row_max}, {one});
          onnx::NodeProto concat = make_node("Concat", names.fresh(a + "_outliers_concat"), {qa.outliers, one}, {cat});
          add_int_attr(&concat, "axis", -1);
          *og->add_node() = concat;
          qa.outliers = cat;
        }
      }
      *og->add_node() = make_node("DynamicQuantizeLinear", names.fresh(a + "_QuantizeLinear"), {x}, {qa.q, qa.scale, qa.zp});
      it = qacts.emplace(std::make_pair(a, plan.special()), qa).first;
    }
    const QAct& qa = it->second;
    const std::string result = plan.extra_add.empty() ? plan.output : names.fresh(plan.output + "_matmul");
    if (plan.attention) {
      // QAttention(input u8, weight, bias, input_scale, weight_scale, mask_index, input_zero_point, weight_zero_point)
      const std::string mask = node.input_size() > 3 ? node.input(3) : "";
      onnx::NodeProto qattn = make_node("QAttention", names.fresh(base + "_quant"),
                                        {qa.q, qwn->q, node.input(2), qa.scale, qwn->scale, mask, qa.zp, qwn->zp},
                                        {plan.output}, "com.microsoft");
      for (const auto& attr : node.attribute())
        if (attr.name() == "num_heads" || attr.name() == "unidirectional") *qattn.add_attribute() = attr;
      *og->add_node() = qattn;
    } else if (policy.ops == QuantOps::kMicrosoft) {
      std::vector<std::string> ins{qa.q, qwn->q, qa.scale, qwn->scale, qa.zp, qwn->zp};
      // Row-scaled: r * (int8 product) + outliers x their fp32 rows + bias; the bias goes last, outside r.
      const bool bias_after = plan.row_scaled && !plan.bias.empty() && !plan.bias_row();
      if (!plan.bias.empty() && !plan.row_scaled) ins.push_back(plan.bias);
      const int steps = (plan.row_scaled ? 1 : 0) + (plan.outliers.empty() ? 0 : 1) + (bias_after ? 1 : 0);
      int remaining = steps + 1;  // values to name; the last one is the node's output
      auto next = [&](const std::string& what) { return --remaining == 0 ? result : names.fresh(plan.output + what); };
      std::string cur = next("_int8");
      *og->add_node() = make_node("MatMulIntegerToFloat", names.fresh(base + "_quant"), ins, {cur}, "com.microsoft");
      if (plan.row_scaled) {
        const std::string y = next("_row_scaled");
        *og->add_node() = make_node("Mul", names.fresh(base + "_row_mul"), {cur, qa.row_max}, {y});
        cur = y;
      }
      if (!plan.outliers.empty()) {
        const std::string o = names.fresh(plan.output + "_outliers_fp32"), y = next("_with_outliers");
        *og->add_node() = make_node("MatMul", names.fresh(base + "_outlier_matmul"), {qa.outliers, qwn->outlier_rows}, {o});
        *og->add_node() = make_node("Add", names.fresh(base + "_outlier_add"), {cur, o}, {y});
        cur = y;
      }
      if (bias_after) {
        const std::string y = next("_biased");
        *og->add_node() = make_node("Add", names.fresh(base + "_bias_add"), {cur, plan.bias}, {y});
      }
    } else {
      const std::string i32 = names.fresh(plan.output + "_int32"), f32 = names.fresh(plan.output + "_float");
      const std::string sc = names.fresh(plan.output + "_scale");
      *og->add_node() = make_node("MatMulInteger", names.fresh(base + "_quant"), {qa.q, qwn->q, qa.zp, qwn->zp}, {i32});
      onnx::NodeProto cast = make_node("Cast", names.fresh(base + "_cast"), {i32}, {f32});
      add_int_attr(&cast, "to", onnx::TensorProto::FLOAT);
      *og->add_node() = cast;
      *og->add_node() = make_node("Mul", names.fresh(base + "_scale_mul"), {qa.scale, qwn->scale}, {sc});
      *og->add_node() = make_node("Mul", names.fresh(base + "_output_mul"), {f32, sc}, {result});
    }
    if (!plan.extra_add.empty())
      *og->add_node() = make_node("Add", names.fresh(base + "_bias_add"), {result, plan.extra_add}, {plan.output});
    if (plan.fused_add >= 0) removed_values.insert(node.output(0));

    uses[plan.weight] -= 1;
    if (plan.bias_row() && !plan.bias.empty()) uses[plan.bias] -= 1;  // its values live in the fp32 rows
    report.quantized.push_back({base, node.op_type(), plan.weight, plan.k, plan.n, !plan.bias.empty(),
                                static_cast<int64_t>(plan.outliers.size()), plan.row_scaled});
  }

  // value_info of values that no longer exist.
  if (!removed_values.empty()) {
    auto* vi = og->mutable_value_info();
    for (int j = vi->size() - 1; j >= 0; --j)
      if (removed_values.count(vi->Get(j).name())) vi->DeleteSubrange(j, 1);
  }

  // Drop the float weights that every user of was quantized; keep everything else as it was.
  std::unordered_set<std::string> graph_inputs;
  for (const auto& v : g.input()) graph_inputs.insert(v.name());
  for (const auto& init : in.initializers) {
    auto u = uses.find(init.name);
    const bool quantized_away = u != uses.end() && u->second == 0 && !pinned.count(init.name) &&
                                !graph_inputs.count(init.name);
    if (!quantized_away) out.initializers.push_back(init);
  }
  for (auto& init : new_inits) out.initializers.push_back(std::move(init));

  if (policy.ops == QuantOps::kMicrosoft && !report.quantized.empty()) import_ms_domain(&out.proto);
  report.weight_bytes_after = out.weight_bytes();
  if (report_out) *report_out = std::move(report);
  return out;
}

}  // namespace trex
