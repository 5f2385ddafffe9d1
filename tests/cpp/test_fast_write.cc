// The streamed export's fast paths: the tiled convert+transpose kernels, the int4 quantizer that reads a
// checkpoint's rows (bit-identical to the reference), and the writer's O_DIRECT sink (the same bytes as the
// buffered one, in the external-data and the single-file layouts).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "graph/graph_builder.h"
#include "io/fast_convert.h"
#include "onnx/writer.h"
#include "passes/quantize_int4.h"

namespace fs = std::filesystem;
using namespace trex;

namespace {

uint16_t bf16_bits(float f) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16); }  // truncation

// A normal half (or 0) near f, by truncation; tiny values flush to zero.
uint16_t half_bits(float f) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int e = static_cast<int>((b >> 23) & 0xFF) - 127 + 15;
  if (e <= 0) return static_cast<uint16_t>(sign);
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7BFFu);
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(e) << 10) | ((b >> 13) & 0x3FFu));
}

// Random values with the int4 quantizer's edge cases in the first rows (an all-zero row, a constant row, ties,
// an all-negative row, an outlier).
std::vector<float> rows_matrix(int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = dist(rng);
  for (int64_t j = 0; j < k; ++j) {
    w[static_cast<size_t>(0 * k + j)] = 0.0f;
    w[static_cast<size_t>(1 * k + j)] = 0.25f;
    w[static_cast<size_t>(2 * k + j)] = 0.5f * static_cast<float>(j % 7 - 3);
    w[static_cast<size_t>(3 * k + j)] = -std::fabs(w[static_cast<size_t>(3 * k + j)]) - 0.01f;
  }
  w[static_cast<size_t>(5 * k + 3)] = 3.0f;
  w[static_cast<size_t>(6 * k + 1)] = -3.0f;
  return w;
}

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("trex_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::vector<char> slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST(FastConvert, TransposeEqualsNaive) {
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {70, 37}, {130, 200}, {64, 16}}) {
    const std::vector<float> w = rows_matrix(std::max<int64_t>(rows, 8), std::max<int64_t>(cols, 8), 3);
    for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
      const size_t es = dtype_size(t);
      // One byte of offset: the mapped checkpoint's tensors need not be aligned.
      std::vector<std::byte> src(static_cast<size_t>(rows * cols) * es + 1);
      std::vector<float> expect(static_cast<size_t>(rows * cols));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const float v = w[static_cast<size_t>(r * std::max<int64_t>(cols, 8) + c)];
          std::byte* p = src.data() + 1 + static_cast<size_t>(r * cols + c) * es;
          if (t == DType::kF32) {
            std::memcpy(p, &v, 4);
          } else {
            const uint16_t h = t == DType::kBF16 ? bf16_bits(v) : half_bits(v);
            std::memcpy(p, &h, 2);
          }
          TensorView one{"x", t, {1}, p, es, ""};
          convert_to_f32(one, &expect[static_cast<size_t>(c * rows + r)]);  // [cols, rows]
        }
      const int64_t ld = rows + 3;
      std::vector<float> got(static_cast<size_t>(cols * ld), -1.0f), flat(static_cast<size_t>(rows * cols));
      transpose_to_f32(t, src.data() + 1, rows, cols, got.data(), ld);
      for (int64_t c = 0; c < cols; ++c)
        for (int64_t r = 0; r < ld; ++r) {
          const float g = got[static_cast<size_t>(c * ld + r)];
          if (r < rows)
            ASSERT_EQ(std::bit_cast<uint32_t>(g), std::bit_cast<uint32_t>(expect[static_cast<size_t>(c * rows + r)]))
                << rows << "x" << cols << " dtype " << dtype_name(t) << " at " << r << "," << c;
          else
            ASSERT_EQ(g, -1.0f) << "wrote past the row into the leading-dimension gap";
        }
      convert_span_to_f32(t, src.data() + 1, flat.size(), flat.data());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(std::bit_cast<uint32_t>(flat[static_cast<size_t>(r * cols + c)]),
                    std::bit_cast<uint32_t>(expect[static_cast<size_t>(c * rows + r)]));
    }
  }
}

// The streamed quantizer reads the N×K rows from three parts (f32, bf16, f16: a packed QKV weight from a
// mixed checkpoint) and must give the reference quantizer's bytes on the same values, every mode, 1 and 3 threads.
TEST(QuantizeInt4, RowsFromCheckpointEqualReference) {
  for (const auto& [k, n] : std::vector<std::pair<int64_t, int64_t>>{{256, 200}, {300, 130}, {64, 17}}) {
    std::vector<float> w = rows_matrix(n, k, static_cast<uint32_t>(k * n));  // N×K
    const int64_t n0 = n / 3, n1 = n / 3;  // f32 rows [0, n0), bf16 [n0, n0 + n1), f16 the rest
    std::vector<std::byte> f32(static_cast<size_t>(n0 * k) * 4), bf(static_cast<size_t>(n1 * k) * 2 + 1),
        hf(static_cast<size_t>((n - n0 - n1) * k) * 2);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < k; ++j) {
        float& v = w[static_cast<size_t>(r * k + j)];
        if (r < n0) {
          std::memcpy(f32.data() + static_cast<size_t>(r * k + j) * 4, &v, 4);
        } else {
          const bool is_bf = r < n0 + n1;
          const uint16_t h = is_bf ? bf16_bits(v) : half_bits(v);
          std::byte* p = is_bf ? bf.data() + 1 + static_cast<size_t>((r - n0) * k + j) * 2
                               : hf.data() + static_cast<size_t>((r - n0 - n1) * k + j) * 2;
          std::memcpy(p, &h, 2);
          TensorView one{"x", is_bf ? DType::kBF16 : DType::kF16, {1}, p, 2, ""};
          convert_to_f32(one, &v);  // the value the reference sees
        }
      }
    const std::vector<TensorView> parts = {
        {"q", DType::kF32, {n0, k}, f32.data(), f32.size(), ""},
        {"k", DType::kBF16, {n1, k}, bf.data() + 1, bf.size() - 1, ""},
        {"v", DType::kF16, {n - n0 - n1, k}, hf.data(), hf.size(), ""}};
    std::vector<float> kxn(w.size());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < k; ++j) kxn[static_cast<size_t>(j * n + r)] = w[static_cast<size_t>(r * k + j)];
    for (int64_t b : {16, 32, 64, 128, 256})
      for (bool sym : {true, false})
        for (int stride : {0, 1, 4}) {
          if (k < b) continue;
          Int4Params p{b, sym, stride > 0};
          p.clip_stride = std::max(1, stride);
          Int4Weight ref;
          ASSERT_TRUE(quantize_int4_reference(kxn.data(), k, n, p, &ref));
          const std::vector<uint8_t> ref_codes = pack_int4_codes(ref);
          const std::vector<uint8_t> ref_zp = pack_int4_zero_points(ref);
          for (int threads : {1, 3}) {
            std::vector<uint8_t> codes(ref_codes.size(), 0xAB), zps(ref.zero_points.size()), zp_packed(ref_zp.size());
            std::vector<float> scales(ref.scales.size());
            ASSERT_TRUE(quantize_int4_rows(parts, k, n, p, codes.data(), scales.data(), zps.data(), threads));
            const std::string what = std::to_string(k) + "x" + std::to_string(n) + " block " + std::to_string(b) +
                                     (sym ? " sym" : " asym") + " stride " + std::to_string(stride);
            ASSERT_EQ(codes, ref_codes) << what;
            ASSERT_EQ(zps, ref.zero_points) << what;
            for (size_t i = 0; i < scales.size(); ++i)
              ASSERT_EQ(std::bit_cast<uint32_t>(scales[i]), std::bit_cast<uint32_t>(ref.scales[i])) << what << " scale " << i;
            pack_int4_zero_points(zps.data(), n, ref.k_blocks, zp_packed.data());
            ASSERT_EQ(zp_packed, ref_zp) << what;
          }
        }
    // A NaN in a bf16 row: refused.
    const uint16_t nan = 0x7FC0;
    std::memcpy(bf.data() + 1 + 2 * static_cast<size_t>(k + 1), &nan, 2);
    std::vector<uint8_t> codes(static_cast<size_t>(n * ((k + 31) / 32) * 16));
    std::vector<float> scales(static_cast<size_t>(n * ((k + 31) / 32)));
    std::vector<uint8_t> zps(scales.size());
    EXPECT_FALSE(quantize_int4_rows(parts, k, n, Int4Params{32, true, false}, codes.data(), scales.data(), zps.data()));
  }
}

// Tensors of awkward sizes (odd byte counts, big produced ones that take the direct path, a big unaligned view
// that goes through the buffer), written with O_DIRECT, with TREX_DIRECT_IO=0 and with WriteOptions::direct_io
// off: the same files, and every tensor's bytes where its header says.
TEST(Writer, DirectIoSameBytesAsBuffered) {
  const fs::path dir = temp_dir("direct_io");
  std::mt19937 rng(7);
  std::vector<std::vector<std::byte>> values;
  for (size_t n : {size_t{3}, size_t{(1 << 20) + 4}, size_t{4097}, size_t{1 << 18}, size_t{100003 * 4}, size_t{5}}) {
    std::vector<std::byte> v(n);
    for (auto& b : v) b = static_cast<std::byte>(rng() & 0xFF);
    values.push_back(std::move(v));
  }
  // t4 is a view one byte into a mapped file, as a checkpoint's tensor is (the writer releases a view's pages
  // after writing it, which only a file-backed mapping survives).
  const fs::path backing = dir / "backing.bin";
  {
    std::ofstream f(backing, std::ios::binary);
    f.put('\0');
    f.write(reinterpret_cast<const char*>(values[4].data()), static_cast<std::streamsize>(values[4].size()));
  }
  const int fd = ::open(backing.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* map = ::mmap(nullptr, values[4].size() + 1, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  ASSERT_NE(map, MAP_FAILED);
  const std::byte* unaligned = static_cast<const std::byte*>(map);
  auto build = [&]() {
    GraphBuilder g(17);
    Value x = g.input("x", DType::kU8, {1});
    Value y = x;
    for (size_t i = 0; i < values.size(); ++i) {
      const std::vector<std::byte>* v = &values[i];
      TensorData d = i == 4 ? TensorData::view(DType::kU8, {static_cast<int64_t>(v->size())}, unaligned + 1)
                   : i % 2 ? TensorData::produced(DType::kU8, {static_cast<int64_t>(v->size())},
                                                  [v](std::byte* dst) { std::memcpy(dst, v->data(), v->size()); })
                           : TensorData::owned(DType::kU8, {static_cast<int64_t>(v->size())}, *v);
      Value c = g.initializer("t" + std::to_string(i), std::move(d));
      y = g.add(y, c);  // not meant to run: the writer's bytes are what is checked
    }
    g.output(y, "y", DType::kU8, {1});
    return g.finish("t");
  };
  for (bool external : {true, false}) {
    std::vector<char> files[3];
    for (int mode = 0; mode < 3; ++mode) {
      const bool direct = mode == 1;  // 0: TREX_DIRECT_IO=0, 2: WriteOptions::direct_io = false
      if (mode == 0) ::setenv("TREX_DIRECT_IO", "0", 1);
      else ::unsetenv("TREX_DIRECT_IO");
      const fs::path out = dir / (std::to_string(mode) + (external ? "e" : "s")) / "m.onnx";
      fs::create_directories(out.parent_path());
      WriteOptions o;
      o.external = external ? ExternalData::kAlways : ExternalData::kNever;
      o.external_min_bytes = 16;
      o.direct_io = mode != 2;
      write_model(build(), out, o);
      std::ifstream f(out, std::ios::binary);
      onnx::ModelProto back;
      ASSERT_TRUE(back.ParseFromIstream(&f));
      const std::vector<char> data = external ? slurp(out.string() + ".data") : std::vector<char>{};
      int seen = 0;
      for (const auto& t : back.graph().initializer()) {
        if (t.name().size() < 2 || t.name()[0] != 't') continue;
        const std::vector<std::byte>& want = values[static_cast<size_t>(std::stoi(t.name().substr(1)))];
        std::string got = t.raw_data();
        if (t.data_location() == onnx::TensorProto::EXTERNAL) {
          size_t off = 0, len = 0;
          for (const auto& kv : t.external_data()) {
            if (kv.key() == "offset") off = std::stoull(kv.value());
            if (kv.key() == "length") len = std::stoull(kv.value());
          }
          ASSERT_LE(off + len, data.size());
          got.assign(data.data() + off, len);
        }
        ASSERT_EQ(got.size(), want.size()) << t.name();
        size_t first = 0;
        while (first < want.size() && static_cast<std::byte>(got[first]) == want[first]) ++first;
        ASSERT_EQ(first, want.size()) << t.name() << (direct ? " direct" : " buffered") << (external ? " external" : " single");
        ++seen;
      }
      EXPECT_EQ(seen, static_cast<int>(values.size()));
      files[mode] = slurp(out);
      if (external) {
        const std::vector<char> d = slurp(out.string() + ".data");
        files[mode].insert(files[mode].end(), d.begin(), d.end());
      }
      int n = 0;  // no temporary file left
      for (auto& e : fs::directory_iterator(out.parent_path())) (void)e, ++n;
      EXPECT_EQ(n, external ? 2 : 1);
    }
    EXPECT_EQ(files[0], files[1]) << (external ? "external" : "single file");
    EXPECT_EQ(files[0], files[2]) << (external ? "external" : "single file");
  }
  // A shared external-data file switched to the page cache after its first model: the same bytes as one written
  // buffered throughout.
  std::vector<char> shared_files[2];
  for (int switched = 0; switched < 2; ++switched) {
    if (switched) ::unsetenv("TREX_DIRECT_IO");
    else ::setenv("TREX_DIRECT_IO", "0", 1);
    const fs::path sub = dir / ("shared" + std::to_string(switched));
    fs::create_directories(sub);
    SharedExternalData shared(sub / "weights.data");
    WriteOptions o;
    o.shared = &shared;
    o.external_min_bytes = 16;
    write_model(build(), sub / "a.onnx", o);
    if (switched) shared.use_page_cache();
    GraphBuilder g(17);
    const std::vector<std::byte> extra(70001, std::byte{0x5a});
    Value c = g.initializer("extra", TensorData::owned(DType::kU8, {70001}, extra));
    g.output(g.add(g.input("x", DType::kU8, {1}), c), "y", DType::kU8, {1});
    write_model(g.finish("b"), sub / "b.onnx", o);
    shared.commit();
    shared_files[switched] = slurp(sub / "weights.data");
  }
  EXPECT_EQ(shared_files[0], shared_files[1]);
  EXPECT_GT(shared_files[0].size(), size_t{1} << 20);
  ::unsetenv("TREX_DIRECT_IO");
  ::munmap(map, values[4].size() + 1);
  fs::remove_all(dir);
}
