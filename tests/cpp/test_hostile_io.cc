// Unit tests of the input-side defences (issue 13): confined regular-file opening, bounded JSON, error-message
// capping, overflow-safe sizes, pickle amplification, config sanity, non-finite detection, external-data
// locations.
#include "temp_dir.h"
#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "graph/tensor_data.h"
#include "io/config.h"
#include "io/json_file.h"
#include "io/pickle.h"
#include "io/safe_open.h"
#include "onnx/reader.h"
#include "onnx/writer.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace trex;
using trex::testing::TempDir;

namespace {


void write(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no InputError)";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---------------------------------------------------------------- safe_open

TEST(SafeOpen, RefusesFifoAtOnce) {
  TempDir d;
  ASSERT_EQ(::mkfifo((d / "config.json").c_str(), 0600), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = error_of([&] { open_regular_file(d / "config.json"); });
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
  EXPECT_TRUE(has(e, "config.json") && has(e, "FIFO")) << e;
}

TEST(SafeOpen, RefusesDirectoryAndDevice) {
  TempDir d;
  fs::create_directory(d / "sub");
  EXPECT_TRUE(has(error_of([&] { open_regular_file(d / "sub"); }), "is a directory"));
  EXPECT_TRUE(has(error_of([&] { open_regular_file("/dev/zero"); }), "device"));
}

TEST(SafeOpen, SizeCapNamesTheFile) {
  TempDir d;
  write(d / "big.json", std::string(100, ' '));
  const std::string e = error_of([&] { open_regular_file(d / "big.json", 64, "a JSON file"); });
  EXPECT_TRUE(has(e, "big.json") && has(e, "limit of 64")) << e;
  EXPECT_EQ(open_regular_file(d / "big.json", 100).read_all().size(), 100u);
}

TEST(SafeOpen, ConfinedToRoot) {
  TempDir d;
  fs::create_directory(d / "root");
  write(d / "outside.txt", "secret");
  write(d / "root" / "inside.txt", "ok");
  fs::create_symlink(d / "outside.txt", d / "root" / "link.txt");
  fs::create_symlink("inside.txt", d / "root" / "good_link.txt");
  EXPECT_EQ(open_regular_file_in(d / "root", d / "root" / "inside.txt").read_all(), "ok");
  EXPECT_EQ(open_regular_file_in(d / "root", d / "root" / "good_link.txt").read_all(), "ok");
  EXPECT_TRUE(has(error_of([&] { open_regular_file_in(d / "root", d / "root" / "link.txt"); }), "outside"));
  EXPECT_TRUE(has(error_of([&] { open_regular_file_in(d / "root", d / "root" / ".." / "outside.txt"); }), "outside"));
  EXPECT_TRUE(real_path_inside(d / "root", d / "root" / "missing" / "x"));
  EXPECT_FALSE(real_path_inside(d / "root", d / "rootsibling"));
}

TEST(SafeOpen, HubCacheRoot) {
  TempDir d;
  fs::create_directories(d / "models--a--b" / "blobs");
  fs::create_directories(d / "models--a--b" / "snapshots" / "rev");
  EXPECT_EQ(fs::weakly_canonical(checkpoint_root(d / "models--a--b" / "snapshots" / "rev")),
            fs::weakly_canonical(d / "models--a--b"));
  fs::create_directories(d / "models--a--b" / "snapshots" / "rev" / "onnx");
  EXPECT_EQ(fs::weakly_canonical(checkpoint_root(d / "models--a--b" / "snapshots" / "rev" / "onnx")),
            fs::weakly_canonical(d / "models--a--b"));
  fs::create_directories(d / "plain");
  EXPECT_EQ(checkpoint_root(d / "plain"), d / "plain");
}

// ---------------------------------------------------------------- JSON

TEST(BoundedJson, DepthLimit) {
  const std::string ok = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_NO_THROW(parse_json_bounded(ok, "f.json"));
  const std::string deep = std::string(75000, '[') + std::string(75000, ']');
  const std::string e = error_of([&] { parse_json_bounded(deep, "f.json"); });
  EXPECT_TRUE(has(e, "f.json") && has(e, "nesting deeper")) << e;
}

TEST(BoundedJson, DuplicateKeysAtAnyLevel) {
  EXPECT_TRUE(has(error_of([] { parse_json_bounded(R"({"a":1,"a":2})", "f"); }), "'a' appears more than once"));
  EXPECT_TRUE(has(error_of([] { parse_json_bounded(R"({"x":{"b":1,"c":{},"b":2}})", "f"); }), "'b'"));
  // The same key in sibling objects is fine.
  EXPECT_NO_THROW(parse_json_bounded(R"({"x":{"b":1},"y":{"b":2},"z":[{"b":1},{"b":2}]})", "f"));
}

TEST(BoundedJson, ArrayLengthLimit) {
  EXPECT_NO_THROW(parse_json_bounded("[1,2,3]", "f", "bad", 3));
  EXPECT_TRUE(has(error_of([] { parse_json_bounded("[1,2,3,4]", "f", "bad", 3); }), "more than 3 elements"));
  // Same DOM as nlohmann's own parser.
  const std::string text = R"({"a":[1,-2,3.5,"s",null,true,{"b":{}}],"c":{"d":[]}})";
  EXPECT_EQ(parse_json_bounded(text, "f"), nlohmann::json::parse(text));
  EXPECT_TRUE(has(error_of([] { parse_json_bounded("{\"a\":", "f.json"); }), "f.json: invalid JSON"));
}

TEST(BoundedJson, MessagesDoNotSerializeBigValues) {
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  EXPECT_EQ(json_for_message(big), "array of 100000 items");
  EXPECT_EQ(json_for_message(nlohmann::json::parse("[1,2]")), "[1,2]");
  EXPECT_LE(json_for_message(std::string(1000, 'x')).size(), 84u);
}

TEST(ErrorMessages, OneLineCapped) {
  const InputError e("f", "line one\nline two\r" + std::string(100000, 'x'));
  const std::string m = e.what();
  EXPECT_EQ(m.find('\n'), std::string::npos);
  EXPECT_EQ(m.find('\r'), std::string::npos);
  EXPECT_LE(m.size(), kMaxErrorMessageBytes + 40);
  EXPECT_TRUE(has(m, "more bytes)"));
}

// ---------------------------------------------------------------- sizes

TEST(Sizes, TensorDataBytesDoNotWrap) {
  const TensorData t = TensorData::view(DType::kF32, {int64_t{1} << 56, 64}, nullptr);
  EXPECT_THROW(t.nbytes(), InputError);
}

TEST(Sizes, ConfigSanityBounds) {
  auto c = ModelConfig::from_json(nlohmann::json::parse(R"({"model_type":"bert","num_hidden_layers":1000000000})"),
                                  "config.json");
  const std::string e = error_of([&] { c.get_positive_int("num_hidden_layers"); });
  EXPECT_TRUE(has(e, "config.json") && has(e, "sanity limit")) << e;
  auto ok = ModelConfig::from_json(nlohmann::json::parse(R"({"model_type":"bert","num_hidden_layers":24})"), "c");
  EXPECT_EQ(ok.get_positive_int("num_hidden_layers"), 24);
}

// ---------------------------------------------------------------- pickle

std::string binput_list_of(int k) {
  std::string p = "\x80\x02";
  p += "ccollections\nOrderedDict\nq";
  p.push_back('\0');
  p += "X";
  p += std::string("\x01\x00\x00\x00", 4) + "aK\x01\x86q\x01";
  p += "(";
  for (int i = 0; i < k; ++i) p += "h\x01";
  p += "lq\x02(";
  return p;
}

TEST(Pickle, MemoReuseAmplificationRefused) {
  std::string p = binput_list_of(50000);
  for (int i = 0; i < 20000; ++i) p += std::string("h") + '\0' + "h\x02\x85R";
  p += "l.";
  const std::string e = error_of([&] { unpickle(reinterpret_cast<const std::byte*>(p.data()), p.size(), "x.pkl"); });
  EXPECT_TRUE(has(e, "x.pkl") && has(e, "amplification")) << e;
}

std::string uni(const std::string& s) {
  std::string b = "X";
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((s.size() >> (8 * i)) & 0xFF));
  return b + s;
}

TEST(Pickle, RankLimit) {
  auto tensor_of_rank = [](int rank) {
    std::string p = "\x80\x02";
    p += "ctorch._utils\n_rebuild_tensor_v2\n(";
    p += "(" + uni("storage") + "ctorch\nFloatStorage\n" + uni("0") + uni("cpu") + "K\x01tQ";
    p += "K";
    p.push_back('\0');
    for (int part = 0; part < 2; ++part) {
      p += "(";
      for (int i = 0; i < rank; ++i) p += "K\x01";
      p += "t";
    }
    p += "tR.";
    return p;
  };
  const std::string ok = tensor_of_rank(4), bad = tensor_of_rank(100);
  EXPECT_NO_THROW(unpickle(reinterpret_cast<const std::byte*>(ok.data()), ok.size(), "x.pkl"));
  const std::string e =
      error_of([&] { unpickle(reinterpret_cast<const std::byte*>(bad.data()), bad.size(), "x.pkl"); });
  EXPECT_TRUE(has(e, "100 dimensions")) << e;
}

// ---------------------------------------------------------------- non-finite

TEST(NonFinite, FindsFirstBadElement) {
  std::vector<float> f(5000, 1.0f);
  EXPECT_EQ(first_nonfinite(DType::kF32, reinterpret_cast<const std::byte*>(f.data()), f.size() * 4), -1);
  f[3001] = std::numeric_limits<float>::infinity();
  f[4000] = std::nanf("");
  EXPECT_EQ(first_nonfinite(DType::kF32, reinterpret_cast<const std::byte*>(f.data()), f.size() * 4), 3001);
  std::vector<uint16_t> h{0x3C00, 0x7E00};
  EXPECT_EQ(first_nonfinite(DType::kF16, reinterpret_cast<const std::byte*>(h.data()), 4), 1);
  std::vector<uint16_t> bf{0x7F80, 0x3F80};
  EXPECT_EQ(first_nonfinite(DType::kBF16, reinterpret_cast<const std::byte*>(bf.data()), 4), 0);
  std::vector<double> dd{1.0, -std::numeric_limits<double>::infinity()};
  EXPECT_EQ(first_nonfinite(DType::kF64, reinterpret_cast<const std::byte*>(dd.data()), 16), 1);
  std::vector<int32_t> ints{-1, 0x7F800000};
  EXPECT_EQ(first_nonfinite(DType::kI32, reinterpret_cast<const std::byte*>(ints.data()), 8), -1);
}

// ---------------------------------------------------------------- external data

TEST(ExternalData, Locations) {
  TempDir d;
  fs::create_directory(d / "m");
  write(d / "secret", "s");
  write(d / "m" / "w.bin", "w");
  fs::create_symlink(d / "secret", d / "m" / "link.bin");
  const fs::path dir = d / "m";
  EXPECT_NO_THROW(check_external_location("m.onnx", dir, "t", "w.bin"));
  EXPECT_NO_THROW(check_external_location("m.onnx", dir, "t", "./w.bin"));
  EXPECT_TRUE(has(error_of([&] { check_external_location("m.onnx", dir, "t", "../secret"); }), "'..'"));
  EXPECT_TRUE(has(error_of([&] { check_external_location("m.onnx", dir, "t", "/etc/passwd"); }), "absolute"));
  EXPECT_TRUE(has(error_of([&] { check_external_location("m.onnx", dir, "t", "link.bin"); }), "symlink"));
  EXPECT_TRUE(has(error_of([&] { check_external_location("m.onnx", dir, "t", ""); }), "without a location"));
}

}  // namespace
