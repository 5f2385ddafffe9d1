// Int8 dynamic quantization: reference quantizer error bounds, fast path == reference, graph rewrite,
// exclusions, the ONNX reader (raw, typed and external data), and an opt-in >2 GB model (TREX_SLOW=1).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "graph/graph_builder.h"
#include "onnx/reader.h"
#include "onnx/writer.h"
#include "runtime/compare.h"
#include "passes/quantize.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace trex;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("trex_qtest_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::vector<float> normal_matrix(int64_t k, int64_t n, uint32_t seed, float sd = 0.05f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> w(static_cast<size_t>(k * n));
  for (auto& v : w) v = dist(rng);
  return w;
}

// Normal values plus the quantizer's edge cases.
std::vector<float> random_matrix(int64_t k, int64_t n, uint32_t seed, float sd = 0.05f) {
  std::vector<float> w = normal_matrix(k, n, seed, sd);
  // Outlier columns and edge cases: an all-zero column, an all-positive and an all-negative one, exact ties.
  for (int64_t r = 0; r < k; ++r) {
    w[static_cast<size_t>(r * n + 0)] = 0.0f;
    w[static_cast<size_t>(r * n + 1)] = std::fabs(w[static_cast<size_t>(r * n + 1)]) + 0.01f;
    w[static_cast<size_t>(r * n + 2)] = -std::fabs(w[static_cast<size_t>(r * n + 2)]) - 0.01f;
    w[static_cast<size_t>(r * n + 3)] = 0.5f * static_cast<float>(r % 7 - 3);  // multiples of 0.5: ties
  }
  w[static_cast<size_t>(5 * n + 4)] = 3.0f;  // an outlier
  return w;
}

std::vector<QuantParams> all_modes() {
  std::vector<QuantParams> modes;
  for (WeightType t : {WeightType::kS8, WeightType::kU8})
    for (bool pc : {false, true})
      for (bool rr : {false, true}) modes.push_back({t, pc, rr});
  return modes;
}

std::string mode_name(const QuantParams& p) {
  return std::string(p.type == WeightType::kS8 ? "s8" : "u8") + (p.per_channel ? "/per-channel" : "/per-tensor") +
         (p.reduce_range ? "/reduce" : "");
}

}  // namespace

TEST(QuantizeReference, RoundHalfEven) {
  EXPECT_EQ(round_half_even(0.5f), 0.0f);
  EXPECT_EQ(round_half_even(1.5f), 2.0f);
  EXPECT_EQ(round_half_even(2.5f), 2.0f);
  EXPECT_EQ(round_half_even(-0.5f), 0.0f);
  EXPECT_EQ(round_half_even(-1.5f), -2.0f);
  EXPECT_EQ(round_half_even(-2.4f), -2.0f);
  EXPECT_EQ(round_half_even(2.6f), 3.0f);
}

// Every element is within half a step of its dequantized value (the step = that group's scale), and the
// integer values stay in the mode's range.
TEST(QuantizeReference, RoundTripErrorBoundsPerMode) {
  const int64_t k = 48, n = 40;
  const std::vector<float> w = random_matrix(k, n, 7);
  for (const QuantParams& p : all_modes()) {
    SCOPED_TRACE(mode_name(p));
    const QuantizedWeight q = quantize_reference(w.data(), k, n, p);
    ASSERT_EQ(q.scale.size(), p.per_channel ? static_cast<size_t>(n) : 1u);
    const int32_t qmax = p.type == WeightType::kS8 ? (p.reduce_range ? 63 : 127) : (p.reduce_range ? 127 : 255);
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < n; ++c) {
        const float scale = q.scale[p.per_channel ? static_cast<size_t>(c) : 0];
        const float err = std::fabs(w[static_cast<size_t>(r * n + c)] - dequantize_reference(q, n, r, c));
        ASSERT_LE(err, 0.5f * scale * 1.0001f + 1e-7f) << "at " << r << "," << c;
        const uint8_t b = q.q[static_cast<size_t>(r * n + c)];
        const int32_t v = p.type == WeightType::kS8 ? static_cast<int8_t>(b) : b;
        ASSERT_LE(v, qmax);
        ASSERT_GE(v, p.type == WeightType::kS8 ? -qmax : 0);
      }
    // Zero is exact in every mode (padding, ReLU zeros and zero columns stay zero).
    for (int64_t r = 0; r < k; ++r) EXPECT_EQ(dequantize_reference(q, n, r, 0), 0.0f);
  }
}

TEST(QuantizeReference, PerChannelScales) {
  const int64_t k = 16, n = 8;
  const std::vector<float> w = random_matrix(k, n, 3);
  const QuantizedWeight q = quantize_reference(w.data(), k, n, {WeightType::kS8, true, false});
  for (int64_t c = 0; c < n; ++c) {
    float amax = 0;
    for (int64_t r = 0; r < k; ++r) amax = std::max(amax, std::fabs(w[static_cast<size_t>(r * n + c)]));
    const float expect = amax == 0.0f ? 1.0f : amax / 127.0f;
    EXPECT_FLOAT_EQ(q.scale[static_cast<size_t>(c)], expect) << "column " << c;
    EXPECT_EQ(q.zero_point[static_cast<size_t>(c)], 0);
  }
  // The largest magnitude of each non-zero column maps to ±127.
  for (int64_t c = 1; c < n; ++c) {
    int32_t m = 0;
    for (int64_t r = 0; r < k; ++r) m = std::max(m, std::abs(static_cast<int32_t>(static_cast<int8_t>(q.q[static_cast<size_t>(r * n + c)]))));
    EXPECT_EQ(m, 127) << "column " << c;
  }
}

TEST(QuantizeReference, U8ZeroPoints) {
  const int64_t k = 16, n = 8;
  const std::vector<float> w = random_matrix(k, n, 5);
  const QuantizedWeight q = quantize_reference(w.data(), k, n, {WeightType::kU8, true, false});
  EXPECT_EQ(q.zero_point[1], 0);    // all positive: range [0, max] → zero point 0
  EXPECT_EQ(q.zero_point[2], 255);  // all negative: range [min, 0] → zero point 255
  for (int64_t c = 3; c < n; ++c) {  // mixed signs: strictly inside
    EXPECT_GT(q.zero_point[static_cast<size_t>(c)], 0);
    EXPECT_LT(q.zero_point[static_cast<size_t>(c)], 255);
  }
  const QuantizedWeight r = quantize_reference(w.data(), k, n, {WeightType::kU8, true, true});
  for (int32_t z : r.zero_point) EXPECT_LE(z, 127);
}

TEST(QuantizeFast, BitIdenticalToReference) {
  for (auto [k, n] : {std::pair<int64_t, int64_t>{48, 40}, {7, 130}, {200, 33}, {64, 64}}) {
    const std::vector<float> w = random_matrix(k, n, static_cast<uint32_t>(k * 1000 + n));
    std::vector<float> wt(w.size());  // N×K (Gemm transB=1 layout)
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < n; ++c) wt[static_cast<size_t>(c * k + r)] = w[static_cast<size_t>(r * n + c)];
    for (const QuantParams& p : all_modes()) {
      SCOPED_TRACE(mode_name(p) + " " + std::to_string(k) + "x" + std::to_string(n));
      const QuantizedWeight ref = quantize_reference(w.data(), k, n, p);
      QuantizedWeight fast, fast_t;
      ASSERT_TRUE(quantize_weight(w.data(), k, n, false, p, &fast));
      ASSERT_TRUE(quantize_weight(wt.data(), k, n, true, p, &fast_t));
      EXPECT_EQ(fast.q, ref.q);
      EXPECT_EQ(fast.scale, ref.scale);
      EXPECT_EQ(fast.zero_point, ref.zero_point);
      EXPECT_EQ(fast_t.q, ref.q);
      EXPECT_EQ(fast_t.scale, ref.scale);
      EXPECT_EQ(fast_t.zero_point, ref.zero_point);
    }
  }
}

TEST(QuantizeFast, RejectsNonFinite) {
  std::vector<float> w(64, 0.1f);
  w[17] = std::nanf("");
  QuantizedWeight q;
  EXPECT_FALSE(quantize_weight(w.data(), 8, 8, false, {}, &q));
  w[17] = INFINITY;
  EXPECT_FALSE(quantize_weight(w.data(), 8, 8, false, {}, &q));
}

TEST(Glob, Patterns) {
  EXPECT_TRUE(glob_match("*", "anything"));
  EXPECT_TRUE(glob_match("/encoder/layer.*/attention/*", "/encoder/layer.3/attention/self/MatMul"));
  EXPECT_FALSE(glob_match("/encoder/layer.?/output*", "/encoder/layer.11/output/MatMul"));
  EXPECT_TRUE(glob_match("classifier.weight*", "classifier.weight.T"));
  EXPECT_FALSE(glob_match("abc", "abcd"));
}

namespace {

// x[batch, 64] → MatMul(w1 64×96) + b1 → Relu → MatMul(w2 96×64) → Gemm(w3 transB, 32×64, bias) ; plus a
// logits-sized MatMul (64×3) the automatic policy keeps in fp32.
Model mlp_model() {
  GraphBuilder g(17);
  Value x = g.input("x", DType::kF32, {"batch_size", 64});
  auto w1 = normal_matrix(64, 96, 11), w2 = normal_matrix(96, 64, 12), w3 = normal_matrix(32, 64, 13),
       w4 = normal_matrix(64, 3, 14, 0.2f);
  std::vector<float> b1(96, 0.01f), b3(32, -0.02f);
  Value h = g.matmul(x, g.initializer("w1", TensorData::from_vector(DType::kF32, {64, 96}, w1)));
  h = g.add(h, g.initializer("b1", TensorData::from_vector(DType::kF32, {96}, b1)));
  h = g.op("Relu", {h});
  Value y = g.matmul(h, g.initializer("w2", TensorData::from_vector(DType::kF32, {96, 64}, w2)));
  Value z = g.op("Gemm",
                 {y, g.initializer("w3", TensorData::from_vector(DType::kF32, {32, 64}, w3)),
                  g.initializer("b3", TensorData::from_vector(DType::kF32, {32}, b3))},
                 {GraphBuilder::Attr::Int("transB", 1), GraphBuilder::Attr::Float("alpha", 0.5f)});
  Value logits = g.matmul(y, g.initializer("w4", TensorData::from_vector(DType::kF32, {64, 3}, w4)));
  g.output(z, "z", DType::kF32, {"batch_size", 32});
  g.output(logits, "logits", DType::kF32, {"batch_size", 3});
  return g.finish("mlp");
}

int count_ops(const Model& m, const std::string& op) {
  int n = 0;
  for (const auto& node : m.proto.graph().node()) n += node.op_type() == op;
  return n;
}

}  // namespace

TEST(QuantizePass, RewritesAndRunsInOnnxRuntime) {
  const fs::path dir = temp_dir("pass");
  const Model m = mlp_model();
  for (QuantOps ops : {QuantOps::kMicrosoft, QuantOps::kStandard}) {
    for (const QuantParams& p : all_modes()) {
      SCOPED_TRACE(mode_name(p) + (ops == QuantOps::kMicrosoft ? " ms" : " std"));
      QuantizePolicy policy;
      policy.params = p;
      policy.ops = ops;
      QuantizeReport rep;
      const Model q = quantize_model(m, policy, &rep);
      ASSERT_EQ(rep.quantized.size(), 3u);  // w1, w2, w3; w4 (64×3) kept by the automatic policy
      EXPECT_EQ(count_ops(q, "DynamicQuantizeLinear"), 3);
      EXPECT_EQ(count_ops(q, "MatMul"), 1);
      EXPECT_EQ(count_ops(q, "Gemm"), 0);
      if (ops == QuantOps::kMicrosoft) {
        EXPECT_EQ(count_ops(q, "MatMulIntegerToFloat"), 3);
        EXPECT_EQ(count_ops(q, "Add"), 0);  // b1 and the Gemm bias fused
      } else {
        EXPECT_EQ(count_ops(q, "MatMulInteger"), 3);
        EXPECT_EQ(count_ops(q, "Add"), 2);
      }
      for (const auto& init : q.initializers) EXPECT_TRUE(init.name != "w1" && init.name != "w2" && init.name != "w3");
      const fs::path fp = dir / "fp32.onnx", qp = dir / "int8.onnx";
      write_model(m, fp);
      write_model(q, qp);
      CompareOptions co;
      co.batches = 2;
      co.batch = 8;
      const CompareResult c = compare_models(fp, qp, co);
      // Documented bound for this MLP: output cosine ≥ 0.999 with 8-bit weights, ≥ 0.995 with 7-bit.
      EXPECT_GE(c.outputs[0].min_cosine, p.reduce_range ? 0.995 : 0.999);
      EXPECT_EQ(c.outputs[1].max_abs_diff, c.outputs[1].max_abs_diff);  // finite
      fs::remove(qp);
    }
  }
  fs::remove_all(dir);
}

TEST(QuantizePass, SharesActivationQuantization) {
  GraphBuilder g(17);
  Value x = g.input("x", DType::kF32, {"batch_size", 64});
  Value a = g.matmul(x, g.initializer("wa", TensorData::from_vector(DType::kF32, {64, 64}, normal_matrix(64, 64, 1))));
  Value b = g.matmul(x, g.initializer("wb", TensorData::from_vector(DType::kF32, {64, 64}, normal_matrix(64, 64, 2))));
  g.output(g.add(a, b), "y", DType::kF32, {"batch_size", 64});
  const Model q = quantize_model(g.finish("shared"), {});
  EXPECT_EQ(count_ops(q, "DynamicQuantizeLinear"), 1);
  EXPECT_EQ(count_ops(q, "MatMulIntegerToFloat"), 2);
}

namespace {

// x[rows, 64] → LayerNormalization whose gamma makes channel 5 an outlier (×40) → MatMul + bias Add, and
// Gemm(transB, alpha 0.5, bias): a transformer's LayerNorm output feeding its projections.
Model outlier_model(int opset = 17) {
  GraphBuilder g(opset);
  Value x = g.input("x", DType::kF32, {"batch_size", 64});
  std::vector<float> gamma(64, 1.0f), beta(64, 0.1f);
  gamma[5] = 40.0f;
  Value ln = g.op("LayerNormalization",
                  {x, g.initializer("gamma", TensorData::from_vector(DType::kF32, {64}, gamma)),
                   g.initializer("beta", TensorData::from_vector(DType::kF32, {64}, beta))},
                  {GraphBuilder::Attr::Int("axis", -1)});
  Value a = g.matmul(ln, g.initializer("wa", TensorData::from_vector(DType::kF32, {64, 48}, normal_matrix(64, 48, 21))));
  a = g.add(a, g.initializer("ba", TensorData::from_vector(DType::kF32, {48}, std::vector<float>(48, 0.05f))));
  Value b = g.op("Gemm",
                 {ln, g.initializer("wb", TensorData::from_vector(DType::kF32, {32, 64}, normal_matrix(32, 64, 22))),
                  g.initializer("bb", TensorData::from_vector(DType::kF32, {32}, std::vector<float>(32, -0.03f)))},
                 {GraphBuilder::Attr::Int("transB", 1), GraphBuilder::Attr::Float("alpha", 0.5f)});
  g.output(a, "a", DType::kF32, {"batch_size", 48});
  g.output(b, "b", DType::kF32, {"batch_size", 32});
  return g.finish("outlier");
}

}  // namespace

// Outlier channels in fp32 + per-row scales: the rewrite's structure, and its accuracy in ONNX Runtime against
// fp32 and against the per-tensor form (which the outlier channel's range ruins).
TEST(QuantizePass, OutlierChannelsAndRowScales) {
  const fs::path dir = temp_dir("outlier");
  const Model m = outlier_model();
  std::string ln_out;
  for (const auto& n : m.proto.graph().node())
    if (n.op_type() == "LayerNormalization") ln_out = n.output(0);
  const fs::path fp = dir / "fp32.onnx";
  write_model(m, fp);
  CompareOptions co;
  co.batches = 2;
  co.batch = 16;

  QuantizePolicy plain;
  const Model q0 = quantize_model(m, plain);
  write_model(q0, dir / "per_tensor.onnx");
  const CompareResult c0 = compare_models(fp, dir / "per_tensor.onnx", co);

  QuantizePolicy p;
  p.row_scales = RowScales::kNormalized;
  p.outlier_channels[ln_out] = {5};
  QuantizeReport rep;
  const Model q = quantize_model(m, p, &rep);
  ASSERT_EQ(rep.quantized.size(), 2u);
  for (const auto& l : rep.quantized) {
    EXPECT_EQ(l.outlier_channels, 1);
    EXPECT_TRUE(l.row_scaled);
  }
  EXPECT_EQ(count_ops(q, "DynamicQuantizeLinear"), 1);  // shared by both consumers
  EXPECT_EQ(count_ops(q, "MatMulIntegerToFloat"), 2);
  EXPECT_EQ(count_ops(q, "Gather"), 1);
  EXPECT_EQ(count_ops(q, "ReduceMax"), 1);
  EXPECT_EQ(count_ops(q, "MatMul"), 2);  // the fp32 outlier rows, one per consumer
  // The outlier rows of the transposed Gemm weight, alpha folded in (wb[c, 5] * 0.5), then the bias row (the
  // gathered channels get a column of ones: the bias is added after the row scale, in the same small MatMul).
  const std::vector<float> wb = normal_matrix(32, 64, 22);
  bool found = false;
  for (const auto& init : q.initializers)
    if (init.name.find("wb") == 0 && init.name.find("outlier_rows") != std::string::npos) {
      found = true;
      ASSERT_EQ(init.data.dims(), (Shape{2, 32}));
      Floats f = floats_of(init.data);
      for (int c = 0; c < 32; ++c) {
        EXPECT_FLOAT_EQ(f.p[c], 0.5f * wb[static_cast<size_t>(c * 64 + 5)]);
        EXPECT_FLOAT_EQ(f.p[32 + c], -0.03f);
      }
    }
  EXPECT_TRUE(found);
  write_model(q, dir / "outliers.onnx");
  const CompareResult c = compare_models(fp, dir / "outliers.onnx", co);
  // Documented bounds for this model: per tensor, the ×40 channel sets the range (worst row cosine ~0.99);
  // with the channel in fp32 and per-row scales, every row ≥ 0.9995 and the error several times smaller.
  std::printf("per tensor: max abs diff %.4g, worst row cosine %.6f; outliers + row scales: %.4g, %.6f\n",
              c0.max_abs_diff, c0.min_cosine, c.max_abs_diff, c.min_cosine);
  EXPECT_GE(c.min_cosine, 0.9995);
  EXPECT_LT(c.max_abs_diff * 3, c0.max_abs_diff) << c.max_abs_diff << " vs per-tensor " << c0.max_abs_diff;

  // An out-of-range channel list is ignored (per-row scales still apply), never an invalid graph.
  QuantizePolicy bad = p;
  bad.outlier_channels[ln_out] = {64};
  QuantizeReport rep_bad;
  const Model qb = quantize_model(m, bad, &rep_bad);
  for (const auto& l : rep_bad.quantized) EXPECT_EQ(l.outlier_channels, 0);
  write_model(qb, dir / "bad.onnx");
  EXPECT_GE(compare_models(fp, dir / "bad.onnx", co).mean_cosine, 0.99);

  // Opset 18 takes ReduceMax's axes as an input instead of an attribute.
  const Model m18 = outlier_model(18);
  write_model(m18, dir / "fp32_18.onnx");
  const Model q18 = quantize_model(m18, p);
  write_model(q18, dir / "outliers_18.onnx");
  EXPECT_GE(compare_models(dir / "fp32_18.onnx", dir / "outliers_18.onnx", co).min_cosine, 0.9995);
  fs::remove_all(dir);
}

TEST(QuantizePass, Exclusions) {
  const Model m = mlp_model();
  QuantizeReport rep;
  QuantizePolicy by_weight;
  by_weight.exclude_nodes = {"w2"};
  quantize_model(m, by_weight, &rep);
  EXPECT_EQ(rep.quantized.size(), 2u);
  bool found = false;
  for (const auto& s : rep.skipped) found |= s.weight == "w2" && s.reason == "excluded by pattern";
  EXPECT_TRUE(found);

  QuantizePolicy by_op;
  by_op.exclude_op_types = {"Gemm"};
  const Model q = quantize_model(m, by_op, &rep);
  EXPECT_EQ(rep.quantized.size(), 2u);
  EXPECT_EQ(count_ops(q, "Gemm"), 1);

  QuantizePolicy by_glob;
  by_glob.exclude_nodes = {"*MatMul*"};
  quantize_model(m, by_glob, &rep);
  EXPECT_EQ(rep.quantized.size(), 1u);  // only the Gemm is left
  EXPECT_EQ(rep.quantized[0].op_type, "Gemm");

  QuantizePolicy everything;
  everything.auto_policy = false;
  quantize_model(m, everything, &rep);
  EXPECT_EQ(rep.quantized.size(), 4u);  // the 64×3 logits projection too
}

TEST(QuantizePass, RejectsOldOpset) {
  Model m = mlp_model();
  for (auto& o : *m.proto.mutable_opset_import())
    if (o.domain().empty()) o.set_version(10);
  EXPECT_THROW(quantize_model(m, {}), UsageError);
}

TEST(Reader, RoundTripInlineAndExternal) {
  const fs::path dir = temp_dir("reader");
  const Model m = mlp_model();
  for (ExternalData ext : {ExternalData::kNever, ExternalData::kAlways}) {
    const fs::path p = dir / "m.onnx";
    WriteOptions wo;
    wo.external = ext;
    write_model(m, p, wo);
    const Model r = read_model(p);
    EXPECT_EQ(r.proto.graph().initializer_size(), 0);
    EXPECT_EQ(r.proto.graph().node_size(), m.proto.graph().node_size());
    ASSERT_EQ(r.initializers.size(), m.initializers.size());
    for (size_t i = 0; i < r.initializers.size(); ++i) {
      EXPECT_EQ(r.initializers[i].name, m.initializers[i].name);
      EXPECT_EQ(r.initializers[i].data.dims(), m.initializers[i].data.dims());
      EXPECT_EQ(r.initializers[i].data.to_bytes(), m.initializers[i].data.to_bytes());
    }
  }
  fs::remove_all(dir);
}

TEST(Reader, TypedFieldsAndBadExternalData) {
  const fs::path dir = temp_dir("reader_typed");
  onnx::ModelProto mp;
  mp.set_ir_version(8);
  mp.add_opset_import()->set_version(17);
  auto* g = mp.mutable_graph();
  g->set_name("g");
  auto* t = g->add_initializer();
  t->set_name("f");
  t->add_dims(3);
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (float v : {1.0f, -2.0f, 3.5f}) t->add_float_data(v);
  auto* i8 = g->add_initializer();
  i8->set_name("i8");
  i8->add_dims(2);
  i8->set_data_type(onnx::TensorProto::INT8);
  i8->add_int32_data(-5);
  i8->add_int32_data(7);
  auto* s = g->add_initializer();  // no trex DType: kept in the graph
  s->set_name("s");
  s->set_data_type(onnx::TensorProto::STRING);
  s->add_string_data("hi");
  {
    std::ofstream f(dir / "typed.onnx", std::ios::binary);
    mp.SerializeToOstream(&f);
  }
  const Model r = read_model(dir / "typed.onnx");
  ASSERT_EQ(r.initializers.size(), 2u);
  const auto fb = r.initializers[0].data.to_bytes();
  float fv[3];
  std::memcpy(fv, fb.data(), sizeof fv);
  EXPECT_EQ(fv[2], 3.5f);
  const auto ib = r.initializers[1].data.to_bytes();
  EXPECT_EQ(static_cast<int8_t>(ib[0]), -5);
  EXPECT_EQ(r.proto.graph().initializer_size(), 1);

  // External data past the end of the data file.
  auto* e = g->add_initializer();
  e->set_name("e");
  e->add_dims(1000);
  e->set_data_type(onnx::TensorProto::FLOAT);
  e->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* kv = e->add_external_data();
  kv->set_key("location");
  kv->set_value("e.bin");
  { std::ofstream(dir / "e.bin") << "short"; }
  {
    std::ofstream f(dir / "ext.onnx", std::ios::binary);
    mp.SerializeToOstream(&f);
  }
  EXPECT_THROW(read_model(dir / "ext.onnx"), InputError);
  kv->set_value("../e.bin");
  {
    std::ofstream f(dir / "ext.onnx", std::ios::binary);
    mp.SerializeToOstream(&f);
  }
  EXPECT_THROW(read_model(dir / "ext.onnx"), InputError);
  { std::ofstream(dir / "garbage.onnx") << "\xff\xff\xff\xff not protobuf"; }
  EXPECT_THROW(read_model(dir / "garbage.onnx"), InputError);
  EXPECT_THROW(read_model(dir / "missing.onnx"), InputError);
  fs::remove_all(dir);
}

// A model whose weights pass 2 GB: read (external data), quantize, write (external data kept automatically
// only when still needed). Opt-in: needs ~3 GB of disk and RAM-backed page cache.
TEST(QuantizeLarge, AboveTwoGigabytes) {
  const char* slow = std::getenv("TREX_SLOW");
  if (!slow || std::string(slow) != "1") GTEST_SKIP() << "set TREX_SLOW=1 to run the >2 GB test";
  const fs::path dir = temp_dir("large");
  const int64_t k = 4096, n = 4096;  // 64 MiB per weight; 36 weights = 2.25 GiB
  GraphBuilder g(17);
  Value x = g.input("x", DType::kF32, {"batch_size", k});
  for (int i = 0; i < 36; ++i) {
    auto produce = [k, n, i](std::byte* dst) {
      float* f = reinterpret_cast<float*>(dst);
      std::mt19937 rng(static_cast<uint32_t>(i));
      std::uniform_real_distribution<float> d(-0.02f, 0.02f);
      for (int64_t j = 0; j < k * n; ++j) f[j] = d(rng);
    };
    x = g.matmul(x, g.initializer(std::string("w").append(std::to_string(i)), TensorData::produced(DType::kF32, {k, n}, produce)));
  }
  g.output(x, "y", DType::kF32, {"batch_size", n});
  const Model m = g.finish("large");
  ASSERT_GT(m.weight_bytes(), size_t{1} << 31);
  const WriteResult w = write_model(m, dir / "big.onnx");
  ASSERT_FALSE(w.data_path.empty());
  const Model r = read_model(dir / "big.onnx");
  ASSERT_EQ(r.initializers.size(), 36u);
  QuantizeReport rep;
  const Model q = quantize_model(r, {}, &rep);
  EXPECT_EQ(rep.quantized.size(), 36u);
  WriteOptions wo;
  wo.external = ExternalData::kAlways;
  write_model(q, dir / "big_int8.onnx", wo);
  const Model rq = read_model(dir / "big_int8.onnx");
  EXPECT_EQ(rq.weight_bytes(), rep.weight_bytes_after);
  CompareOptions co;
  co.batches = 1;
  co.batch = 1;
  const CompareResult c = compare_models(dir / "big.onnx", dir / "big_int8.onnx", co);
  EXPECT_GE(c.mean_cosine, 0.98);
  fs::remove_all(dir);
}

namespace {

// y[b, s, 4] = x + sum over the cache's positions of past[b, 0, p, :] * past_scale: a model whose outputs depend
// on its cache only when the cache is not empty.
Model cache_model(float past_scale) {
  GraphBuilder g(17);
  Value x = g.input("x", DType::kF32, {"batch_size", "sequence_length", 4});
  Value past = g.input("past_key_values.0.key", DType::kF32, {"batch_size", 1, "past_sequence_length", 4},
                       InputSample::State("present.0.key"));
  Value summed = g.op("ReduceSum", {past, g.const_i64({2})}, {GraphBuilder::Attr::Int("keepdims", 0)});  // [b, 1, 4]
  Value y = g.add(x, g.mul(summed, g.const_f32(past_scale)));
  g.output(y, "y", DType::kF32, {"batch_size", "sequence_length", 4});
  g.output(g.op("Identity", {past}), "present.0.key", DType::kF32, {"batch_size", 1, "past_sequence_length", 4});
  return g.finish("cache");
}

// A tied head in two equivalent forms: Gemm(h, table, transB=1) (+ bias) and MatMul(h, Transpose(table)) + bias,
// the table [96, 64] also gathered by an embedding lookup (tied) when `gather` is set.
Model tied_head_model(bool matmul, bool gather) {
  GraphBuilder g(17);
  Value h = g.input("h", DType::kF32, {"batch_size", 64});
  Value table = g.initializer("table", TensorData::from_vector(DType::kF32, {96, 64}, normal_matrix(96, 64, 31)));
  Value bias = g.initializer("bias", TensorData::from_vector(DType::kF32, {1, 96}, std::vector<float>(96, 0.02f)));
  Value y = matmul ? g.add(g.matmul(h, g.transpose(table, {1, 0})), bias)
                   : g.op("Gemm", {h, table, bias}, {GraphBuilder::Attr::Int("transB", 1)});
  g.output(y, "y", DType::kF32, {"batch_size", 96});
  if (gather) {
    Value ids = g.input("ids", DType::kI64, {"batch_size"});
    g.output(g.op("Gather", {table, ids}), "e", DType::kF32, {"batch_size", 64});
  }
  return g.finish(matmul ? "tied_matmul" : "tied_gemm");
}

const TensorData* initializer_of(const Model& m, const std::string& name) {
  for (const auto& i : m.initializers)
    if (i.name == name) return &i.data;
  return nullptr;
}

}  // namespace

// CompareOptions::decode_past: the decode samples (a non-empty cache) are compared too, in the same sessions, and
// catch a difference the first-step samples (empty cache) cannot see; without prepacking as with it.
TEST(CompareModels, DecodeStepsOverARandomCache) {
  const fs::path dir = temp_dir("decode");
  write_model(cache_model(1.0f), dir / "a.onnx");
  write_model(cache_model(1.5f), dir / "b.onnx");
  for (bool prepack : {true, false}) {
    SCOPED_TRACE(prepack ? "prepack" : "no prepack");
    CompareOptions co;
    co.prepack = prepack;
    co.batches = 2;
    const CompareResult first = compare_models(dir / "a.onnx", dir / "b.onnx", co);
    EXPECT_EQ(first.max_abs_diff, 0.0);
    co.decode_past = 7;
    const CompareResult both = compare_models(dir / "a.onnx", dir / "b.onnx", co);
    EXPECT_GT(both.max_abs_diff, 0.1);
    const CompareResult same = compare_models(dir / "a.onnx", dir / "a.onnx", co);
    EXPECT_EQ(same.max_abs_diff, 0.0);
  }
  fs::remove_all(dir);
}

// MatMul(h, Transpose(table)) is quantized as Gemm transB is: the same int8 weight (the table read N×K), the
// Transpose dropped, the table kept only while something else (the embedding Gather) reads it.
TEST(QuantizePass, TiedHeadMatMulOverTransposeAsGemmTransB) {
  for (bool gather : {false, true}) {
    SCOPED_TRACE(gather ? "with Gather" : "head only");
    QuantizeReport rg, rm;
    const Model qg = quantize_model(tied_head_model(false, gather), {}, &rg);
    const Model qm = quantize_model(tied_head_model(true, gather), {}, &rm);
    ASSERT_EQ(rg.quantized.size(), 1u);
    ASSERT_EQ(rm.quantized.size(), 1u);
    EXPECT_EQ(rm.quantized[0].weight, "table");
    EXPECT_EQ(rm.quantized[0].k, 64);
    EXPECT_EQ(rm.quantized[0].n, 96);
    EXPECT_EQ(count_ops(qm, "Transpose"), 0);
    EXPECT_EQ(count_ops(qm, "MatMulIntegerToFloat"), 1);
    EXPECT_EQ(initializer_of(qm, "table") != nullptr, gather);
    const TensorData* a = initializer_of(qg, "table_quantized");
    const TensorData* b = initializer_of(qm, "table_quantized");
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a->dims(), b->dims());
    EXPECT_EQ(a->to_bytes(), b->to_bytes());
  }
  // The Transpose stays when its output has another reader than the MatMul (here: a graph output).
  GraphBuilder g(17);
  Value h = g.input("h", DType::kF32, {"batch_size", 64});
  Value t = g.transpose(g.initializer("table", TensorData::from_vector(DType::kF32, {96, 64}, normal_matrix(96, 64, 31))), {1, 0});
  g.output(g.matmul(h, t), "y", DType::kF32, {"batch_size", 96});
  g.output(t, "t", DType::kF32, {64, 96});
  QuantizeReport r;
  const Model q = quantize_model(g.finish("shared_transpose"), {}, &r);
  EXPECT_EQ(r.quantized.size(), 0u);
  EXPECT_EQ(count_ops(q, "Transpose"), 1);
}
