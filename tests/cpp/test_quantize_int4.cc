// Int4 (MatMulNBits) quantization: the fast quantizer == the scalar reference bit for bit, dequantization
// error bounds per block, the clipping search never worse than round-to-nearest per block, the packing; the
// 8-bit embedding table quantizer's bound. The files in ONNX Runtime: tests/python/test_int4.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>

#include "graph/graph_builder.h"
#include "passes/quantize_embeddings.h"
#include "passes/quantize_int4.h"
#include "util/error.h"

using namespace trex;

namespace {

// Normal values with the quantizer's edge cases: an all-zero column, all-positive and all-negative columns,
// exact ties, an outlier, a column of one repeated value.
std::vector<float> int4_matrix(int64_t k, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(k * n));
  for (auto& v : w) v = dist(rng);
  for (int64_t r = 0; r < k; ++r) {
    w[static_cast<size_t>(r * n + 0)] = 0.0f;
    w[static_cast<size_t>(r * n + 1)] = std::fabs(w[static_cast<size_t>(r * n + 1)]) + 0.01f;
    w[static_cast<size_t>(r * n + 2)] = -std::fabs(w[static_cast<size_t>(r * n + 2)]) - 0.01f;
    w[static_cast<size_t>(r * n + 3)] = 0.5f * static_cast<float>(r % 7 - 3);
    w[static_cast<size_t>(r * n + 4)] = 0.25f;
  }
  w[static_cast<size_t>(5 * n + 5)] = 3.0f;
  return w;
}

std::vector<Int4Params> int4_modes() {
  std::vector<Int4Params> modes;
  for (int64_t b : {16, 32, 64, 128, 256})
    for (bool sym : {true, false})
      for (bool search : {true, false}) modes.push_back({b, sym, search});
  return modes;
}

std::string name(const Int4Params& p) {
  return "block " + std::to_string(p.block_size) + (p.symmetric ? " sym" : " asym") + (p.search ? " search" : " rtn");
}

std::vector<float> transpose(const std::vector<float>& w, int64_t k, int64_t n) {
  std::vector<float> t(w.size());
  for (int64_t r = 0; r < k; ++r)
    for (int64_t c = 0; c < n; ++c) t[static_cast<size_t>(c * k + r)] = w[static_cast<size_t>(r * n + c)];
  return t;
}

}  // namespace

TEST(QuantizeInt4, FastEqualsReferenceBitForBit) {
  // K not a multiple of every block size (a partial last block), N above the threading threshold.
  for (const auto& [k, n] : std::vector<std::pair<int64_t, int64_t>>{{256, 200}, {300, 130}, {64, 17}}) {
    const std::vector<float> w = int4_matrix(k, n, static_cast<uint32_t>(k + n));
    const std::vector<float> wt = transpose(w, k, n);
    for (const auto& p : int4_modes()) {
      if (k < p.block_size) continue;
      Int4Weight ref, fast, fast_t, fast_1, ref_h, fast_h;
      ASSERT_TRUE(quantize_int4_reference(w.data(), k, n, p, &ref));
      ASSERT_TRUE(quantize_int4(w.data(), k, n, false, p, &fast));
      ASSERT_TRUE(quantize_int4(wt.data(), k, n, true, p, &fast_t, 3));
      ASSERT_TRUE(quantize_int4(w.data(), k, n, false, p, &fast_1, 1));
      // With an importance per row (calibration).
      std::vector<float> h(static_cast<size_t>(k));
      for (int64_t r = 0; r < k; ++r) h[static_cast<size_t>(r)] = 0.1f + static_cast<float>((r * 37) % 11);
      ASSERT_TRUE(quantize_int4_reference(w.data(), k, n, p, &ref_h, h.data()));
      ASSERT_TRUE(quantize_int4(wt.data(), k, n, true, p, &fast_h, 2, h.data()));
      ASSERT_EQ(ref_h.codes, fast_h.codes) << name(p) << " with importance";
      for (size_t i = 0; i < ref_h.scales.size(); ++i)
        ASSERT_EQ(std::memcmp(&ref_h.scales[i], &fast_h.scales[i], sizeof(float)), 0) << name(p) << " importance scale " << i;
      for (const Int4Weight* f : {&fast, &fast_t, &fast_1}) {
        ASSERT_EQ(ref.codes, f->codes) << name(p) << " " << k << "x" << n;
        ASSERT_EQ(ref.zero_points, f->zero_points) << name(p);
        ASSERT_EQ(ref.scales.size(), f->scales.size());
        for (size_t i = 0; i < ref.scales.size(); ++i)
          ASSERT_EQ(std::memcmp(&ref.scales[i], &f->scales[i], sizeof(float)), 0) << name(p) << " scale " << i;
      }
    }
  }
}

// Per block: codes in 0..15 (symmetric: zero point 8); a value inside the block's representable interval
// [scale * (0 - zp), scale * (15 - zp)] (widened by half a step) dequantizes within half a step; round-to-
// nearest never clips by more than one step (the symmetric +7 side); the all-zero column is exact.
TEST(QuantizeInt4, DequantizedWithinTheBlockBound) {
  const int64_t k = 300, n = 40;
  const std::vector<float> w = int4_matrix(k, n, 7);
  for (const auto& p : int4_modes()) {
    Int4Weight q;
    ASSERT_TRUE(quantize_int4_reference(w.data(), k, n, p, &q));
    for (int64_t c = 0; c < n; ++c)
      for (int64_t r = 0; r < k; ++r) {
        const size_t g = static_cast<size_t>(c * q.k_blocks + r / p.block_size);
        const float s = std::fabs(q.scales[g]);
        const float zp = q.zero_points[g];
        if (p.symmetric) {
          ASSERT_EQ(q.zero_points[g], 8);
        }
        const float v = w[static_cast<size_t>(r * n + c)];
        const float a = (0.0f - zp) * q.scales[g], b = (15.0f - zp) * q.scales[g];
        const float lo = std::min(a, b) - s / 2, hi = std::max(a, b) + s / 2;
        const float err = std::fabs(v - dequantize_int4(q, r, c));
        const float tol = 1e-6f * std::max(1.0f, std::fabs(v));
        if (v >= lo && v <= hi) {
          ASSERT_LE(err, s / 2 + tol) << name(p) << " at " << r << "," << c;
        }
        if (!p.search) {
          ASSERT_LE(err, s + tol) << name(p) << " at " << r << "," << c;
        }
        if (c == 0) {
          ASSERT_EQ(dequantize_int4(q, r, c), 0.0f);
        }
      }
    for (uint8_t code : q.codes) ASSERT_LE(code, 15);
  }
}

// The search keeps round-to-nearest among its candidates, so no block's squared error grows, and overall it
// must shrink on normal weights.
TEST(QuantizeInt4, ClippingSearchNeverWorseThanRtnPerBlock) {
  const int64_t k = 512, n = 96;
  const std::vector<float> w = int4_matrix(k, n, 11);
  for (int64_t b : {16, 32, 64, 128, 256})
    for (bool sym : {true, false}) {
      Int4Weight rtn, srch;
      ASSERT_TRUE(quantize_int4_reference(w.data(), k, n, {b, sym, false}, &rtn));
      ASSERT_TRUE(quantize_int4_reference(w.data(), k, n, {b, sym, true}, &srch));
      double total_rtn = 0, total_search = 0;
      std::vector<float> block(static_cast<size_t>(b));
      for (int64_t c = 0; c < n; ++c)
        for (int64_t blk = 0; blk < rtn.k_blocks; ++blk) {
          for (int64_t j = 0; j < b; ++j) block[static_cast<size_t>(j)] = w[static_cast<size_t>((blk * b + j) * n + c)];
          const size_t g = static_cast<size_t>(c * rtn.k_blocks + blk);
          const float e_rtn = int4_block_error(block.data(), b, rtn.scales[g], rtn.zero_points[g]);
          const float e_search = int4_block_error(block.data(), b, srch.scales[g], srch.zero_points[g]);
          ASSERT_LE(e_search, e_rtn) << "block " << b << (sym ? " sym" : " asym") << " column " << c << " block " << blk;
          total_rtn += e_rtn;
          total_search += e_search;
        }
      std::printf("block %3lld %-4s squared error: search / rtn = %.3f\n", static_cast<long long>(b), sym ? "sym" : "asym",
                  total_search / total_rtn);
      EXPECT_LT(total_search, 0.95 * total_rtn) << "block " << b << (sym ? " sym" : " asym");
    }
}

TEST(QuantizeInt4, PackingLowNibbleFirst) {
  Int4Weight q;
  q.k = 32;
  q.n = 1;
  q.block_size = 16;
  q.k_blocks = 2;
  for (int i = 0; i < 32; ++i) q.codes.push_back(static_cast<uint8_t>(i % 16));
  q.zero_points = {3, 12};
  const std::vector<uint8_t> b = pack_int4_codes(q);
  ASSERT_EQ(b.size(), 16u);
  EXPECT_EQ(b[0], 0x10);
  EXPECT_EQ(b[1], 0x32);
  EXPECT_EQ(b[15], 0xFE);
  EXPECT_EQ(pack_int4_zero_points(q), std::vector<uint8_t>{0xC3});
  q.zero_points = {3, 12, 5};
  q.k_blocks = 3;
  EXPECT_EQ(pack_int4_zero_points(q), (std::vector<uint8_t>{0xC3, 0x05}));
}

TEST(QuantizeInt4, NonFiniteAndBadBlockSize) {
  std::vector<float> w(64 * 4, 0.1f);
  w[7] = std::nanf("");
  Int4Weight q;
  EXPECT_FALSE(quantize_int4(w.data(), 64, 4, false, {}, &q));
  EXPECT_FALSE(quantize_int4_reference(w.data(), 64, 4, {}, &q));
  w[7] = INFINITY;
  EXPECT_FALSE(quantize_int4(w.data(), 64, 4, false, {}, &q));
  EXPECT_THROW(check_int4_params({24, true, true}), UsageError);
  EXPECT_THROW(check_int4_params({8, true, true}), UsageError);
  EXPECT_THROW(check_int4_params({512, true, true}), UsageError);
  EXPECT_NO_THROW(check_int4_params({16, true, true}));
}

TEST(QuantizeEmbeddings, Int8TableWithinHalfAStep) {
  const int64_t rows = 50, cols = 64, block = 32;
  std::vector<float> t = int4_matrix(rows, cols, 3);  // includes an all-zero column and an outlier
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  ASSERT_TRUE(quantize_table_int8(t.data(), rows, cols, block, &codes, &scales));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float s = scales[static_cast<size_t>(r * (cols / block) + c / block)];
      const float deq = static_cast<float>(codes[static_cast<size_t>(r * cols + c)] - 128) * s;
      ASSERT_LE(std::fabs(deq - t[static_cast<size_t>(r * cols + c)]), s / 2 + 1e-7f) << r << "," << c;
      ASSERT_GE(codes[static_cast<size_t>(r * cols + c)], 1);
    }
  t[9] = std::nanf("");
  EXPECT_FALSE(quantize_table_int8(t.data(), rows, cols, block, &codes, &scales));
}

// GPTQ minimizes the output error ||X (W - Ŵ)||² for correlated activations X better than the per-block search
// alone (which sees only diag(XᵀX)).
TEST(QuantizeInt4, GptqLowersTheOutputError) {
  const int64_t k = 128, n = 64, rows = 512;
  const std::vector<float> w = int4_matrix(k, n, 21);
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * k));
  for (int64_t r = 0; r < rows; ++r) {
    const float common = dist(rng);  // a shared component: strongly correlated channels
    for (int64_t c = 0; c < k; ++c) x[static_cast<size_t>(r * k + c)] = dist(rng) + 2.0f * common * (c % 3 == 0 ? 1.0f : -0.5f);
  }
  std::vector<double> gram(static_cast<size_t>(k * k), 0.0);
  std::vector<float> diag(static_cast<size_t>(k), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b)
        gram[static_cast<size_t>(a * k + b)] += double(x[static_cast<size_t>(r * k + a)]) * x[static_cast<size_t>(r * k + b)] / rows;
  for (int64_t a = 0; a < k; ++a) diag[static_cast<size_t>(a)] = static_cast<float>(gram[static_cast<size_t>(a * k + a)]);
  auto output_error = [&](const Int4Weight& q) {
    double e = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < n; ++c) {
        double d = 0;
        for (int64_t i = 0; i < k; ++i)
          d += double(x[static_cast<size_t>(r * k + i)]) * (w[static_cast<size_t>(i * n + c)] - dequantize_int4(q, i, c));
        e += d * d;
      }
    return e;
  };
  for (bool sym : {true, false}) {
    Int4Weight plain, gptq, again;
    ASSERT_TRUE(quantize_int4(w.data(), k, n, false, {32, sym, true}, &plain, 0, diag.data()));
    ASSERT_TRUE(quantize_int4_gptq(w.data(), k, n, false, {32, sym, true}, gram, &gptq));
    ASSERT_TRUE(quantize_int4_gptq(w.data(), k, n, false, {32, sym, true}, gram, &again, 1));
    EXPECT_EQ(gptq.codes, again.codes);  // deterministic, whatever the threads
    EXPECT_EQ(gptq.scales, again.scales);
    const double e_plain = output_error(plain), e_gptq = output_error(gptq);
    std::printf("%s output error: search %.4g, GPTQ %.4g\n", sym ? "sym " : "asym", e_plain, e_gptq);
    EXPECT_LT(e_gptq, 0.9 * e_plain);
  }
}

TEST(QuantizeInt4, ImportanceOnesEqualsNone) {
  const std::vector<float> w = int4_matrix(96, 40, 2);
  const std::vector<float> ones(96, 1.0f);
  Int4Weight a, b, c;
  ASSERT_TRUE(quantize_int4_reference(w.data(), 96, 40, {32, false, true}, &a));
  ASSERT_TRUE(quantize_int4_reference(w.data(), 96, 40, {32, false, true}, &b, ones.data()));
  ASSERT_TRUE(quantize_int4(w.data(), 96, 40, false, {32, false, true}, &c, 0, ones.data()));
  EXPECT_EQ(a.codes, b.codes);
  EXPECT_EQ(a.codes, c.codes);
  EXPECT_EQ(a.scales, c.scales);
}

// The coarse search (every 4th clip ratio) and a K×N weight large enough to be transposed in tiles before the
// blocks are gathered: the fast quantizer still equals the reference bit for bit, and the coarse search lands
// between round-to-nearest and the full search in total squared error.
TEST(QuantizeInt4, CoarseSearchAndTiledTransposeEqualReference) {
  const int64_t k = 520, n = 160;  // 83200 values (tiled path), a partial last block
  const std::vector<float> w = int4_matrix(k, n, 5);
  const std::vector<float> wt = transpose(w, k, n);
  for (int64_t b : {32, 128})
    for (bool sym : {true, false}) {
      double total[3] = {0, 0, 0};  // rtn, coarse, full
      for (int mode = 0; mode < 3; ++mode) {
        Int4Params p{b, sym, mode > 0};
        p.clip_stride = mode == 1 ? 4 : 1;
        Int4Weight ref, fast, fast_t;
        ASSERT_TRUE(quantize_int4_reference(w.data(), k, n, p, &ref));
        ASSERT_TRUE(quantize_int4(w.data(), k, n, false, p, &fast, 2));
        ASSERT_TRUE(quantize_int4(wt.data(), k, n, true, p, &fast_t, 1));
        for (const Int4Weight* f : {&fast, &fast_t}) {
          ASSERT_EQ(ref.codes, f->codes) << "block " << b << " mode " << mode;
          ASSERT_EQ(ref.zero_points, f->zero_points);
          for (size_t i = 0; i < ref.scales.size(); ++i)
            ASSERT_EQ(std::memcmp(&ref.scales[i], &f->scales[i], sizeof(float)), 0) << "scale " << i;
        }
        for (int64_t r = 0; r < k; ++r)
          for (int64_t c = 0; c < n; ++c) {
            const double d = w[static_cast<size_t>(r * n + c)] - dequantize_int4(ref, r, c);
            total[mode] += d * d;
          }
      }
      EXPECT_LT(total[1], total[0]) << "block " << b << (sym ? " sym" : " asym");
      EXPECT_LE(total[2], total[1] * 1.0001) << "block " << b << (sym ? " sym" : " asym");
    }
  Int4Params bad{32, true, true};
  bad.clip_stride = 0;
  EXPECT_THROW(check_int4_params(bad), UsageError);
}

// MatMul(h, Transpose(table)) + bias (trex's encoder-decoder tied head) becomes the same MatMulNBits as
// Gemm(h, table, bias, transB=1): the same codes and scales (the table read N×K), the Transpose dropped, the table
// kept for the embedding Gather that also reads it.
TEST(QuantizeInt4, TiedHeadMatMulOverTransposeAsGemmTransB) {
  auto build = [](bool matmul) {
    GraphBuilder g(17);
    Value h = g.input("h", DType::kF32, {"batch_size", 64});
    Value ids = g.input("ids", DType::kI64, {"batch_size"});
    Value table = g.initializer("table", TensorData::from_vector(DType::kF32, {96, 64}, int4_matrix(96, 64, 41)));
    Value bias = g.initializer("bias", TensorData::from_vector(DType::kF32, {1, 96}, std::vector<float>(96, 0.02f)));
    Value y = matmul ? g.add(g.matmul(h, g.transpose(table, {1, 0})), bias)
                     : g.op("Gemm", {h, table, bias}, {GraphBuilder::Attr::Int("transB", 1)});
    g.output(y, "y", DType::kF32, {"batch_size", 96});
    g.output(g.op("Gather", {table, ids}), "e", DType::kF32, {"batch_size", 64});
    return g.finish("tied");
  };
  Int4Policy policy;
  QuantizeReport rg, rm;
  const Model qg = quantize_int4_model(build(false), policy, &rg);
  const Model qm = quantize_int4_model(build(true), policy, &rm);
  ASSERT_EQ(rg.quantized.size(), 1u);
  ASSERT_EQ(rm.quantized.size(), 1u);
  EXPECT_EQ(rm.quantized[0].k, 64);
  EXPECT_EQ(rm.quantized[0].n, 96);
  int transposes = 0, nbits = 0;
  for (const auto& n : qm.proto.graph().node()) {
    transposes += n.op_type() == "Transpose";
    nbits += n.op_type() == "MatMulNBits";
  }
  EXPECT_EQ(transposes, 0);
  EXPECT_EQ(nbits, 1);
  std::map<std::string, std::vector<std::byte>> a, b;
  for (const auto& i : qg.initializers) a[i.name] = i.data.to_bytes();
  for (const auto& i : qm.initializers) b[i.name] = i.data.to_bytes();
  EXPECT_EQ(a, b);  // table (for the Gather), bias, table_Q4, table_scales, table_zero_points
  EXPECT_TRUE(b.count("table") && b.count("table_Q4"));
}
