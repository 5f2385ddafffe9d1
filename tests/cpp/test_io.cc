// Unit tests of the checkpoint-reading layer (src/io): every file is hand-built in a temp folder.
#include "temp_dir.h"
#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "io/config.h"
#include "io/mapped_file.h"
#include "io/pickle.h"
#include "io/safetensors.h"
#include "io/tensor.h"
#include "io/torch_bin.h"
#include "io/weight_store.h"
#include "io/zip_reader.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace trex;
using trex::testing::TempDir;

namespace {

// ---------------------------------------------------------------- helpers


void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string le(uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return le(header.size(), 8) + header + data;
}

// Expects `f` to throw InputError whose message contains every one of `parts`.
template <typename F>
void expect_input_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected InputError containing '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    EXPECT_EQ(e.code(), ExitCode::kInput);
  }
}

// Hand-written pickle bytes (protocol 2 opcodes).
struct Pickle {
  std::string b;
  Pickle() { b += "\x80\x02"; }
  Pickle& op(char c) { b += c; return *this; }
  Pickle& str(const std::string& s) { b += 'X'; b += le(s.size(), 4); b += s; return *this; }
  Pickle& int1(uint8_t v) { b += 'K'; b += static_cast<char>(v); return *this; }
  Pickle& intv(int64_t v) {
    if (v >= 0 && v < 256) return int1(static_cast<uint8_t>(v));
    b += 'J';
    b += le(static_cast<uint32_t>(v), 4);
    return *this;
  }
  Pickle& global(const std::string& mod, const std::string& name) { b += 'c' + mod + "\n" + name + "\n"; return *this; }
  Pickle& mark() { return op('('); }
  Pickle& tuple() { return op('t'); }
  Pickle& stop() { return op('.'); }
  Pickle& ints_tuple(const std::vector<int64_t>& v) {
    mark();
    for (auto x : v) intv(x);
    return tuple();
  }
};

struct TensorSpec {
  std::string name, storage_type, key;
  int64_t storage_numel, offset;
  std::vector<int64_t> size, stride;
};

// A torch.save-like state-dict pickle: OrderedDict of _rebuild_tensor_v2(...) with BINPERSID storages.
std::string state_dict_pickle(const std::vector<TensorSpec>& specs, bool legacy) {
  Pickle p;
  p.global("collections", "OrderedDict").op(')').op('R');
  p.mark();
  for (const auto& s : specs) {
    p.str(s.name);
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.mark();
    p.mark().str("storage").global("torch", s.storage_type).str(s.key).str("cpu").intv(s.storage_numel);
    if (legacy) p.op('N');
    p.tuple().op('Q');
    p.intv(s.offset).ints_tuple(s.size).ints_tuple(s.stride).op('\x89');
    p.global("collections", "OrderedDict").op(')').op('R');
    p.tuple().op('R');
  }
  p.op('u');
  // _metadata set via BUILD, as torch does for module state dicts.
  p.op('}').str("_metadata").global("collections", "OrderedDict").op(')').op('R').op('s').op('b');
  return p.stop().b;
}

struct ZipEntrySpec {
  std::string name, data;
  uint16_t method = 0;
};

std::string zip_bytes(const std::vector<ZipEntrySpec>& entries) {
  std::string out, cd;
  for (const auto& e : entries) {
    const uint64_t local = out.size();
    out += le(0x04034b50, 4) + le(20, 2) + le(0, 2) + le(e.method, 2) + le(0, 4) + le(0, 4) + le(e.data.size(), 4) +
           le(e.data.size(), 4) + le(e.name.size(), 2) + le(0, 2) + e.name + e.data;
    cd += le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + le(e.method, 2) + le(0, 4) + le(0, 4) +
          le(e.data.size(), 4) + le(e.data.size(), 4) + le(e.name.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) +
          le(0, 2) + le(0, 4) + le(local, 4) + e.name;
  }
  const uint64_t cd_off = out.size();
  out += cd;
  out += le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(entries.size(), 2) + le(entries.size(), 2) + le(cd.size(), 4) +
         le(cd_off, 4) + le(0, 2);
  return out;
}

std::string legacy_bin_bytes(const std::vector<TensorSpec>& specs, const std::vector<std::pair<std::string, std::string>>& storages,
                             const std::vector<uint64_t>& counts) {
  std::string out;
  // Magic number 0x1950a86a20f9469cfc6c as LONG1.
  out += std::string("\x80\x02\x8a\x0a", 4) + std::string("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10) + ".";
  out += std::string("\x80\x02M\xe9\x03.", 6);  // 1001
  out += Pickle().op('}').stop().b;             // sys_info (empty dict is fine)
  out += state_dict_pickle(specs, true);
  Pickle keys;
  keys.op(']').mark();
  for (const auto& s : storages) keys.str(s.first);
  out += keys.op('e').stop().b;
  for (size_t i = 0; i < storages.size(); ++i) out += le(counts[i], 8) + storages[i].second;
  return out;
}

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> v(static_cast<size_t>(num_elements(t.shape)));
  convert_to_f32(t, v.data());
  return v;
}

float f16(uint16_t h) {
  TensorView t;
  t.dtype = DType::kF16;
  t.shape = {1};
  t.data = reinterpret_cast<const std::byte*>(&h);
  t.nbytes = 2;
  float out;
  convert_to_f32(t, &out);
  return out;
}

float bf16(uint16_t h) {
  TensorView t;
  t.dtype = DType::kBF16;
  t.shape = {1};
  t.data = reinterpret_cast<const std::byte*>(&h);
  t.nbytes = 2;
  float out;
  convert_to_f32(t, &out);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- tensor.h

TEST(Tensor, DtypeSizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF64), 8u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(dtype_size(DType::kBool), 1u);
  EXPECT_EQ(dtype_name(DType::kBF16), "BF16");
  EXPECT_EQ(dtype_name(DType::kBool), "BOOL");
  EXPECT_EQ(shape_str({2, 3}), "[2, 3]");
  EXPECT_EQ(shape_str({}), "[]");
  EXPECT_EQ(num_elements({}), 1);
  EXPECT_EQ(num_elements({2, 0, 3}), 0);
  EXPECT_EQ(num_elements({2, 3, 4}), 24);
  EXPECT_THROW(num_elements({1LL << 40, 1LL << 40}), InputError);
}

TEST(Tensor, Float16ToFloat32) {
  EXPECT_EQ(f16(0x3C00), 1.0f);
  EXPECT_EQ(f16(0xC000), -2.0f);
  EXPECT_EQ(f16(0x0001), 5.96046448e-08f);
  EXPECT_EQ(f16(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16(0x03FF), 1023 * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(f16(0x0200), std::ldexp(1.0f, -15));
  EXPECT_EQ(f16(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(f16(0x7BFF), 65504.0f);
  EXPECT_EQ(f16(0x3555), 0.333251953125f);
  EXPECT_EQ(f16(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16(0x7E00)));
  EXPECT_TRUE(std::isnan(f16(0x7C01)));
  EXPECT_EQ(std::bit_cast<uint32_t>(f16(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(std::bit_cast<uint32_t>(f16(0x0000)), 0u);
  EXPECT_EQ(f16(0x8001), -5.96046448e-08f);
}

TEST(Tensor, BFloat16AndF64ToFloat32) {
  EXPECT_EQ(bf16(0x3F80), 1.0f);
  EXPECT_EQ(bf16(0xC040), -3.0f);
  EXPECT_EQ(bf16(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16(0x7FC0)));
  std::vector<double> d = {1.5, -2.25, 1e10};
  TensorView t;
  t.dtype = DType::kF64;
  t.shape = {3};
  t.data = reinterpret_cast<const std::byte*>(d.data());
  t.nbytes = 24;
  EXPECT_EQ(to_f32(t), (std::vector<float>{1.5f, -2.25f, 1e10f}));
  t.dtype = DType::kI64;
  float out[3];
  EXPECT_THROW(convert_to_f32(t, out), InputError);
}

// ---------------------------------------------------------------- mapped_file.h

TEST(MappedFile, OpensMissingEmptyAndDirectory) {
  TempDir d;
  expect_input_error([&] { MappedFile::open(d / "nope.bin"); }, {(d / "nope.bin").string(), "cannot open", "No such file"});
  expect_input_error([&] { MappedFile::open(d.path()); }, {d.path().string(), "cannot open", "directory"});
  write_file(d / "empty", "");
  auto e = MappedFile::open(d / "empty");
  EXPECT_EQ(e->size(), 0u);
  write_file(d / "abc", "abc");
  auto f = MappedFile::open(d / "abc");
  ASSERT_EQ(f->size(), 3u);
  EXPECT_EQ(std::memcmp(f->data(), "abc", 3), 0);
  EXPECT_EQ(f->path(), (d / "abc").string());
}

// ---------------------------------------------------------------- safetensors

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir d;
  std::string data;
  std::string header = "{\"__metadata__\": {\"format\": \"pt\"}";
  auto add = [&](const std::string& name, const std::string& dt, const std::string& shape, const std::string& bytes) {
    header += ", \"" + name + "\": {\"dtype\": \"" + dt + "\", \"shape\": " + shape + ", \"data_offsets\": [" +
              std::to_string(data.size()) + ", " + std::to_string(data.size() + bytes.size()) + "]}";
    data += bytes;
  };
  add("f32", "F32", "[2, 2]", raw(std::vector<float>{1.f, -2.f, 3.5f, 0.25f}));
  add("f16", "F16", "[3]", raw(std::vector<uint16_t>{0x3C00, 0xC000, 0x0001}));
  add("bf16", "BF16", "[2]", raw(std::vector<uint16_t>{0x3F80, 0xC040}));
  add("f64", "F64", "[1, 2]", raw(std::vector<double>{0.5, -8.0}));
  add("i64", "I64", "[2]", raw(std::vector<int64_t>{-5, 1LL << 40}));
  add("i32", "I32", "[2]", raw(std::vector<int32_t>{-7, 70000}));
  add("i16", "I16", "[2]", raw(std::vector<int16_t>{-3, 300}));
  add("i8", "I8", "[3]", raw(std::vector<int8_t>{-1, 2, -128}));
  add("u8", "U8", "[2]", raw(std::vector<uint8_t>{255, 7}));
  add("bool", "BOOL", "[3]", raw(std::vector<uint8_t>{1, 0, 1}));
  add("empty", "F32", "[0, 4]", "");
  add("scalar", "F32", "[]", raw(std::vector<float>{42.f}));
  header += "}";
  write_file(d / "model.safetensors", safetensors_bytes(header, data));

  WeightStore s = WeightStore::open_file(d / "model.safetensors");
  EXPECT_EQ(s.size(), 12u);
  EXPECT_EQ(s.files(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(s.total_bytes(), data.size());

  const TensorView* t = s.find("f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF32);
  EXPECT_EQ(t->shape, (Shape{2, 2}));
  EXPECT_EQ(t->nbytes, 16u);
  EXPECT_EQ(t->file, (d / "model.safetensors").string());
  EXPECT_EQ(to_f32(*t), (std::vector<float>{1.f, -2.f, 3.5f, 0.25f}));
  EXPECT_EQ(to_f32(*s.find("f16")), (std::vector<float>{1.f, -2.f, 5.96046448e-08f}));
  EXPECT_EQ(to_f32(*s.find("bf16")), (std::vector<float>{1.f, -3.f}));
  EXPECT_EQ(to_f32(*s.find("f64")), (std::vector<float>{0.5f, -8.f}));
  EXPECT_EQ(to_f32(*s.find("scalar")), (std::vector<float>{42.f}));

  auto ints = [&](const char* name, auto zero) {
    const TensorView* v = s.find(name);
    std::vector<decltype(zero)> out(v->nbytes / sizeof(zero));
    std::memcpy(out.data(), v->data, v->nbytes);
    return out;
  };
  EXPECT_EQ(ints("i64", int64_t{}), (std::vector<int64_t>{-5, 1LL << 40}));
  EXPECT_EQ(ints("i32", int32_t{}), (std::vector<int32_t>{-7, 70000}));
  EXPECT_EQ(ints("i16", int16_t{}), (std::vector<int16_t>{-3, 300}));
  EXPECT_EQ(ints("i8", int8_t{}), (std::vector<int8_t>{-1, 2, -128}));
  EXPECT_EQ(ints("u8", uint8_t{}), (std::vector<uint8_t>{255, 7}));
  EXPECT_EQ(ints("bool", uint8_t{}), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_EQ(s.find("bool")->dtype, DType::kBool);
  EXPECT_EQ(s.find("empty")->nbytes, 0u);
  EXPECT_EQ(s.find("empty")->shape, (Shape{0, 4}));
  EXPECT_EQ(s.names().front(), "bf16");  // sorted
  EXPECT_EQ(s.find("missing"), nullptr);
}

namespace {

// Writes a safetensors file with `header` and `data` and expects opening it to fail with `parts`.
void expect_bad_safetensors(const std::string& bytes, const std::vector<std::string>& parts) {
  TempDir d;
  const fs::path p = d / "bad.safetensors";
  write_file(p, bytes);
  std::vector<std::string> all = parts;
  all.push_back(p.string());
  expect_input_error([&] { WeightStore::open_file(p); }, all);
}

const std::string k24(24, '\0');

}  // namespace

TEST(Safetensors, TruncatedFile) {
  expect_bad_safetensors("abcde", {"truncated: file has 5 bytes, header length needs 8"});
  expect_bad_safetensors("", {"truncated: file has 0 bytes"});
}

TEST(Safetensors, HeaderLengthBeyondFile) {
  expect_bad_safetensors(le(999999, 8) + "{}", {"header length 999999 exceeds file size 10"});
  expect_bad_safetensors(le(~uint64_t{0}, 8) + "{}", {"header length 18446744073709551615 exceeds file size 10"});
}

TEST(Safetensors, HeaderNotJsonObject) {
  expect_bad_safetensors(safetensors_bytes("{\"a\": ", ""), {"header is not valid JSON"});
  expect_bad_safetensors(safetensors_bytes("[1, 2]", ""), {"header is not a JSON object"});
  expect_bad_safetensors(safetensors_bytes("", ""), {"header is not valid JSON"});
  expect_bad_safetensors(safetensors_bytes("{\"x\": 3}", ""), {"tensor 'x'", "must be an object"});
  expect_bad_safetensors(safetensors_bytes("{\"x\": {\"dtype\": \"F32\", \"shape\": [1]}}", "1234"),
                         {"tensor 'x'", "missing 'data_offsets'"});
}

TEST(Safetensors, UnknownDtype) {
  expect_bad_safetensors(
      safetensors_bytes("{\"x\": {\"dtype\": \"F8_E9M9\", \"shape\": [2], \"data_offsets\": [0, 2]}}", "12"),
      {"tensor 'x': unknown dtype 'F8_E9M9'"});
  expect_bad_safetensors(safetensors_bytes("{\"x\": {\"dtype\": 4, \"shape\": [2], \"data_offsets\": [0, 2]}}", "12"),
                         {"tensor 'x': dtype must be a string"});
}

TEST(Safetensors, BadShape) {
  for (const char* shape : {"[-1, 2]", "[1.5]", "\"2\"", "[[2]]", "[true]"}) {
    expect_bad_safetensors(safetensors_bytes(std::string("{\"x\": {\"dtype\": \"F32\", \"shape\": ") + shape +
                                                 ", \"data_offsets\": [0, 8]}}",
                                             "12345678"),
                           {"tensor 'x': shape must be a list of non-negative integers"});
  }
  // Element count overflowing 64 bits.
  expect_bad_safetensors(
      safetensors_bytes("{\"x\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 16], \"data_offsets\": [0, 8]}}",
                        "12345678"),
      {"tensor 'x'", "too large"});
  expect_bad_safetensors(
      safetensors_bytes("{\"x\": {\"dtype\": \"F64\", \"shape\": [2305843009213693952], \"data_offsets\": [0, 8]}}",
                        "12345678"),
      {"tensor 'x'", "too large"});
}

TEST(Safetensors, BadDataOffsets) {
  for (const char* off : {"[8, 0]", "[0]", "[0, 8, 9]", "[-1, 7]", "\"0,8\"", "[0.0, 8]"}) {
    expect_bad_safetensors(safetensors_bytes(std::string("{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": ") +
                                                 off + "}}",
                                             "12345678"),
                           {"tensor 'x': data_offsets must be [begin, end]"});
  }
}

TEST(Safetensors, OffsetsBeyondDataRegion) {
  expect_bad_safetensors(
      safetensors_bytes("{\"x\": {\"dtype\": \"F32\", \"shape\": [1000], \"data_offsets\": [0, 4000]}}",
                        std::string(100, '\0')),
      {"tensor 'x': data_offsets [0, 4000] exceed the data region of 100 bytes"});
  expect_bad_safetensors(
      safetensors_bytes("{\"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [18446744073709551615, "
                        "18446744073709551615]}}",
                        std::string(4, '\0')),
      {"tensor 'x': data_offsets", "exceed the data region of 4 bytes"});
}

TEST(Safetensors, LengthMismatch) {
  expect_bad_safetensors(
      safetensors_bytes("{\"x\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 20]}}", k24),
      {"tensor 'x': shape [2, 3] F32 needs 24 bytes, data_offsets span 20"});
}

TEST(Safetensors, Overlap) {
  expect_bad_safetensors(safetensors_bytes("{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]},"
                                           " \"b\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [8, 20]}}",
                                           k24),
                         {"tensors 'a' and 'b' overlap"});
  // Identical ranges overlap too (aliasing is not allowed in safetensors).
  expect_bad_safetensors(safetensors_bytes("{\"b\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]},"
                                           " \"a\": {\"dtype\": \"I32\", \"shape\": [3], \"data_offsets\": [0, 12]}}",
                                           k24),
                         {"overlap"});
}

TEST(Safetensors, ParseReturnsViewsIntoTheMapping) {
  TempDir d;
  write_file(d / "x.safetensors",
             safetensors_bytes("{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}   ",
                               raw(std::vector<float>{2.f})));
  auto f = MappedFile::open(d / "x.safetensors");
  auto views = parse_safetensors(*f);
  ASSERT_EQ(views.size(), 1u);
  EXPECT_GE(views[0].data, f->data());
  EXPECT_LE(views[0].data + 4, f->data() + f->size());
  EXPECT_EQ(to_f32(views[0]), std::vector<float>{2.f});
}

// ---------------------------------------------------------------- pickle

TEST(Pickle, ForbiddenGlobalIsRejected) {
  Pickle p;
  p.global("os", "system").mark().str("echo pwned").tuple().op('R').stop();
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(p.b.data()), p.b.size(), "evil.bin"); },
                     {"evil.bin: pickle references forbidden global 'os.system' (trex only loads tensors; no code is "
                      "executed)"});
  // Same through STACK_GLOBAL (protocol 4).
  std::string s = std::string("\x80\x04\x8c\x08") + "builtins" + "\x8c\x04" + "eval" + "\x93" + ".";
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "evil.bin"); },
                     {"forbidden global 'builtins.eval'"});
}

TEST(Pickle, ForbiddenGlobalInsideZipCheckpoint) {
  TempDir d;
  Pickle p;
  p.global("subprocess", "Popen").mark().str("ls").tuple().op('R').stop();
  write_file(d / "pytorch_model.bin", zip_bytes({{"archive/data.pkl", p.b}}));
  expect_input_error([&] { WeightStore::open_dir(d.path()); },
                     {(d / "pytorch_model.bin").string(), "forbidden global 'subprocess.Popen'"});
}

TEST(Pickle, UnknownOpcodeAndMalformed) {
  std::string s = std::string("\x80\x02") + "A";
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "f.bin"); },
                     {"f.bin", "f.bin: pickle: unknown or unsupported opcode 0x41 ('A') at offset 2"});
  s = std::string("\x80\x02\xff", 3);
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "f.bin"); },
                     {"opcode 0xff at offset 2"});
  s = std::string("\x80\x02X\xff\xff\xff\x00", 7);  // string longer than the data
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "f.bin"); }, {"truncated"});
  s = std::string("\x80\x02}", 3);  // no STOP
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "f.bin"); }, {"no STOP"});
  s = std::string("\x80\x02h\x05.", 5);  // memo miss
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "f.bin"); },
                     {"memo key 5 not found"});
  s = std::string("\x80\x02s.", 4);  // stack underflow
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "f.bin"); },
                     {"stack underflow"});
  // An allowed global may still not be called with arbitrary arguments.
  Pickle p;
  p.global("torch", "FloatStorage").op(')').op('R').stop();
  expect_input_error([&] { unpickle(reinterpret_cast<const std::byte*>(p.b.data()), p.b.size(), "f.bin"); },
                     {"cannot call 'torch.FloatStorage'"});
}

TEST(Pickle, DeepNestingDoesNotCrash) {
  // 200000 nested lists: ']' * N then 'a' * (N-1). Destruction must not recurse.
  const size_t n = 200000;
  std::string s = "\x80\x02" + std::string(n, ']') + std::string(n - 1, 'a') + ".";
  auto v = unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "deep.bin");
  EXPECT_EQ(v->kind, PickleValue::Kind::kList);
  v.reset();
  SUCCEED();
}

TEST(Pickle, StateDictTensors) {
  std::string s = state_dict_pickle({{"w", "HalfStorage", "7", 6, 1, {2, 2}, {2, 1}}}, false);
  size_t used = 0;
  auto v = unpickle(reinterpret_cast<const std::byte*>(s.data()), s.size(), "f.bin", &used);
  EXPECT_EQ(used, s.size());
  auto t = state_dict_tensors(*v, "f.bin");
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].first, "w");
  EXPECT_EQ(t[0].second.storage.key, "7");
  EXPECT_EQ(t[0].second.storage.dtype, DType::kF16);
  EXPECT_EQ(t[0].second.storage.numel, 6);
  EXPECT_EQ(t[0].second.storage_offset, 1);
  EXPECT_EQ(t[0].second.size, (Shape{2, 2}));
  EXPECT_EQ(t[0].second.stride, (std::vector<int64_t>{2, 1}));
}

// ---------------------------------------------------------------- pytorch_model.bin (zip)

TEST(TorchBin, ZipFormatViewsAndNonContiguousCopy) {
  TempDir d;
  const std::vector<float> st0 = {0, 1, 2, 3, 4, 5};
  const std::vector<uint16_t> st1 = {0x3C00, 0xC000};
  std::string pkl = state_dict_pickle({{"a", "FloatStorage", "0", 6, 0, {2, 3}, {3, 1}},
                                       {"a_t", "FloatStorage", "0", 6, 0, {3, 2}, {1, 3}},  // transposed view
                                       {"row", "FloatStorage", "0", 6, 3, {3}, {1}},        // offset view
                                       {"col", "FloatStorage", "0", 6, 1, {2}, {3}},        // strided column
                                       {"h", "HalfStorage", "1", 2, 0, {2}, {1}},
                                       {"enc.LayerNorm.gamma", "HalfStorage", "1", 2, 0, {2, 1}, {1, 7}}},
                                      false);
  write_file(d / "pytorch_model.bin", zip_bytes({{"archive/data.pkl", pkl},
                                                 {"archive/byteorder", "little"},
                                                 {"archive/data/0", raw(st0)},
                                                 {"archive/data/1", raw(st1)},
                                                 {"archive/version", "3\n"}}));
  WeightStore s = WeightStore::open_dir(d.path());
  EXPECT_EQ(s.files(), std::vector<std::string>{"pytorch_model.bin"});
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(to_f32(*s.find("a")), st0);
  EXPECT_EQ(s.find("a")->shape, (Shape{2, 3}));
  EXPECT_EQ(to_f32(*s.find("a_t")), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(s.find("a_t")->shape, (Shape{3, 2}));
  EXPECT_EQ(to_f32(*s.find("row")), (std::vector<float>{3, 4, 5}));
  EXPECT_EQ(to_f32(*s.find("col")), (std::vector<float>{1, 4}));
  EXPECT_EQ(to_f32(*s.find("h")), (std::vector<float>{1, -2}));
  // A size-1 dimension with an odd stride is still contiguous; the gamma name is aliased to weight.
  EXPECT_EQ(to_f32(*s.find("enc.LayerNorm.weight")), (std::vector<float>{1, -2}));
  EXPECT_EQ(s.find("enc.LayerNorm.gamma"), nullptr);
  // Views share the mapped bytes (a and row point into the same storage).
  EXPECT_EQ(s.find("row")->data, s.find("a")->data + 12);
}

TEST(TorchBin, ZipStorageBoundsAndMissingEntries) {
  TempDir d;
  const std::vector<float> st0 = {0, 1, 2, 3, 4, 5};
  // Tensor reaching past its storage.
  write_file(d / "a.bin", zip_bytes({{"a/data.pkl", state_dict_pickle({{"x", "FloatStorage", "0", 6, 2, {2, 3}, {3, 1}}}, false)},
                                     {"a/data/0", raw(st0)}}));
  expect_input_error([&] { WeightStore::open_file(d / "a.bin"); }, {(d / "a.bin").string(), "tensor 'x'", "exceeds storage '0'"});
  // Storage numel larger than the entry's bytes.
  write_file(d / "b.bin", zip_bytes({{"a/data.pkl", state_dict_pickle({{"x", "FloatStorage", "0", 60, 0, {6}, {1}}}, false)},
                                     {"a/data/0", raw(st0)}}));
  expect_input_error([&] { WeightStore::open_file(d / "b.bin"); }, {"tensor 'x'", "records 60 elements"});
  // Missing storage entry.
  write_file(d / "c.bin", zip_bytes({{"a/data.pkl", state_dict_pickle({{"x", "FloatStorage", "9", 6, 0, {6}, {1}}}, false)},
                                     {"a/data/0", raw(st0)}}));
  expect_input_error([&] { WeightStore::open_file(d / "c.bin"); }, {"storage entry 'a/data/9' is missing"});
  // Broadcast (stride 0) view with more elements than its storage.
  write_file(d / "s.bin", zip_bytes({{"a/data.pkl", state_dict_pickle({{"x", "FloatStorage", "0", 6, 0, {1000000, 6}, {0, 1}}}, false)},
                                     {"a/data/0", raw(st0)}}));
  expect_input_error([&] { WeightStore::open_file(d / "s.bin"); }, {"tensor 'x'", "overlapping strides"});
  // A pickle without tensors.
  write_file(d / "n.bin", zip_bytes({{"a/data.pkl", state_dict_pickle({}, false)}}));
  expect_input_error([&] { WeightStore::open_file(d / "n.bin"); }, {"no tensors found"});
  // Big-endian archive.
  write_file(d / "e.bin", zip_bytes({{"a/data.pkl", state_dict_pickle({}, false)}, {"a/byteorder", "big"}}));
  expect_input_error([&] { WeightStore::open_file(d / "e.bin"); }, {"byte order 'big'"});
  // Compressed entry.
  write_file(d / "f.bin", zip_bytes({{"a/data.pkl", "xx", 8}}));
  expect_input_error([&] { WeightStore::open_file(d / "f.bin"); }, {"entry 'a/data.pkl' is compressed"});
  // No data.pkl.
  write_file(d / "g.bin", zip_bytes({{"a/other", "xx"}}));
  expect_input_error([&] { WeightStore::open_file(d / "g.bin"); }, {"no '<name>/data.pkl'"});
}

TEST(TorchBin, ZipStructureCorruption) {
  TempDir d;
  std::string good = zip_bytes({{"a/data.pkl", state_dict_pickle({}, false)}});
  // Central directory offset pointing beyond the file.
  std::string bad = good;
  const size_t eocd = bad.size() - 22;
  std::string off = le(1u << 30, 4);
  bad.replace(eocd + 16, 4, off);
  write_file(d / "a.bin", bad);
  expect_input_error([&] { WeightStore::open_file(d / "a.bin"); }, {(d / "a.bin").string(), "central directory", "beyond the end"});
  // Truncated: EOCD chopped off.
  write_file(d / "b.bin", good.substr(0, good.size() - 10));
  expect_input_error([&] { WeightStore::open_file(d / "b.bin"); }, {"end of central directory record not found"});
  // Local header offset beyond the file.
  bad = good;
  const size_t cd = bad.size() - 22 - (46 + 10);
  bad.replace(cd + 42, 4, le(1u << 30, 4));
  write_file(d / "c.bin", bad);
  expect_input_error([&] { WeightStore::open_file(d / "c.bin"); }, {"local header of entry 'a/data.pkl'", "beyond the end"});
  // Entry size beyond the file.
  bad = good;
  bad.replace(cd + 20, 4, le(1u << 30, 4));
  bad.replace(cd + 24, 4, le(1u << 30, 4));
  write_file(d / "e.bin", bad);
  expect_input_error([&] { WeightStore::open_file(d / "e.bin"); }, {"data of entry 'a/data.pkl'", "beyond the end"});
  // Garbage.
  write_file(d / "g.bin", "hello world");
  expect_input_error([&] { WeightStore::open_file(d / "g.bin"); }, {"not a PyTorch checkpoint"});
}

// ---------------------------------------------------------------- pytorch_model.bin (legacy)

TEST(TorchBin, LegacyFormat) {
  TempDir d;
  const std::vector<float> a = {1, 2, 3, 4};
  const std::vector<uint16_t> b = {0x3F80, 0x4000, 0xC040};
  auto specs = std::vector<TensorSpec>{{"a", "FloatStorage", "140001", 4, 0, {2, 2}, {2, 1}},
                                       {"a_t", "FloatStorage", "140001", 4, 0, {2, 2}, {1, 2}},
                                       {"b", "BFloat16Storage", "140002", 3, 1, {2}, {1}}};
  write_file(d / "pytorch_model.bin", legacy_bin_bytes(specs, {{"140002", raw(b)}, {"140001", raw(a)}}, {3, 4}));
  WeightStore s = WeightStore::open_dir(d.path());
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(to_f32(*s.find("a")), a);
  EXPECT_EQ(to_f32(*s.find("a_t")), (std::vector<float>{1, 3, 2, 4}));
  EXPECT_EQ(to_f32(*s.find("b")), (std::vector<float>{2, -3}));

  // Truncated storage data.
  std::string bytes = legacy_bin_bytes(specs, {{"140002", raw(b)}, {"140001", raw(a)}}, {3, 4});
  write_file(d / "t.bin", bytes.substr(0, bytes.size() - 3));
  expect_input_error([&] { WeightStore::open_file(d / "t.bin"); }, {(d / "t.bin").string(), "truncated", "storage '140001'"});
  // Huge element count.
  write_file(d / "h.bin", legacy_bin_bytes(specs, {{"140002", raw(b)}, {"140001", raw(a)}}, {~uint64_t{0} / 2, 4}));
  expect_input_error([&] { WeightStore::open_file(d / "h.bin"); }, {"truncated", "storage '140002'"});
  // Wrong magic.
  std::string wrong = bytes;
  wrong[5] = 0x01;
  write_file(d / "m.bin", wrong);
  expect_input_error([&] { WeightStore::open_file(d / "m.bin"); }, {"magic number"});
}

// ---------------------------------------------------------------- WeightStore

TEST(WeightStore, OpenDirErrors) {
  TempDir d;
  expect_input_error([&] { WeightStore::open_dir(d / "missing"); }, {(d / "missing").string(), "not found"});
  expect_input_error([&] { WeightStore::open_dir(d.path()); },
                     {d.path().string() + ": no weights found (expected model.safetensors, model.safetensors.index.json, "
                                          "pytorch_model.bin, pytorch_model.bin.index.json or tf_model.h5)"});
  write_file(d / "file", "x");
  expect_input_error([&] { WeightStore::open_dir(d / "file"); }, {"not a directory"});
}

TEST(WeightStore, PrefersSafetensorsAndAliasesGammaBeta) {
  TempDir d;
  std::string h =
      "{\"bert.LayerNorm.gamma\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
      " \"bert.LayerNorm.beta\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]},"
      " \"other.gamma\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}";
  write_file(d / "model.safetensors", safetensors_bytes(h, raw(std::vector<float>{1, 2, 3})));
  write_file(d / "pytorch_model.bin", "garbage that must not be read");
  WeightStore s = WeightStore::open_dir(d.path());
  EXPECT_EQ(s.names(), (std::vector<std::string>{"bert.LayerNorm.bias", "bert.LayerNorm.weight", "other.gamma"}));
  EXPECT_EQ(to_f32(*s.find("bert.LayerNorm.weight")), std::vector<float>{1});
  EXPECT_EQ(to_f32(*s.find("bert.LayerNorm.bias")), std::vector<float>{2});

  // Both the old and the new name present: a duplicate.
  std::string h2 =
      "{\"x.LayerNorm.gamma\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
      " \"x.LayerNorm.weight\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}";
  write_file(d / "dup.safetensors", safetensors_bytes(h2, raw(std::vector<float>{1, 2})));
  expect_input_error([&] { WeightStore::open_file(d / "dup.safetensors"); }, {"tensor 'x.LayerNorm.weight'", "more than once"});
}

namespace {

std::string one_tensor_st(const std::string& name, float v) {
  return safetensors_bytes("{\"" + name + "\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                           raw(std::vector<float>{v}));
}

}  // namespace

TEST(WeightStore, ShardedSafetensors) {
  TempDir d;
  write_file(d / "model-00001-of-00002.safetensors", one_tensor_st("a", 1));
  write_file(d / "model-00002-of-00002.safetensors", one_tensor_st("enc.LayerNorm.beta", 2));
  write_file(d / "model.safetensors.index.json",
             "{\"metadata\": {\"total_size\": 8}, \"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
             " \"enc.LayerNorm.beta\": \"model-00002-of-00002.safetensors\"}}");
  WeightStore s = WeightStore::open_dir(d.path());
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "enc.LayerNorm.bias"}));
  EXPECT_EQ(s.files().size(), 2u);
  EXPECT_EQ(to_f32(*s.find("enc.LayerNorm.bias")), std::vector<float>{2});
}

TEST(WeightStore, ShardIndexErrors) {
  TempDir d;
  const fs::path idx = d / "model.safetensors.index.json";
  write_file(d / "s1.safetensors", one_tensor_st("a", 1));
  for (const char* bad : {"../x.safetensors", "/etc/passwd", "sub/s1.safetensors", "..", "a\\\\b"}) {
    write_file(idx, std::string("{\"weight_map\": {\"a\": \"") + bad + "\"}}");
    expect_input_error([&] { WeightStore::open_dir(d.path()); }, {idx.string(), "leaves the checkpoint folder"});
  }
  write_file(idx, "{\"weight_map\": {\"a\": \"../x\"}}");
  expect_input_error([&] { WeightStore::open_dir(d.path()); }, {idx.string() + ": shard path '../x' leaves the checkpoint folder"});
  write_file(idx, "{\"weight_map\": {\"a\": \"s2.safetensors\"}}");
  expect_input_error([&] { WeightStore::open_dir(d.path()); }, {idx.string(), "shard 's2.safetensors' is missing"});
  write_file(idx, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\"}}");
  expect_input_error([&] { WeightStore::open_dir(d.path()); },
                     {idx.string(), "tensor 'b' is listed in weight_map but absent from shard 's1.safetensors'"});
  write_file(idx, "{\"weight_map\": {\"a\": 3}}");
  expect_input_error([&] { WeightStore::open_dir(d.path()); }, {"must be a shard file name"});
  write_file(idx, "{\"nothing\": 1}");
  expect_input_error([&] { WeightStore::open_dir(d.path()); }, {"no 'weight_map'"});
  write_file(idx, "{not json");
  expect_input_error([&] { WeightStore::open_dir(d.path()); }, {idx.string(), "invalid JSON"});
}

TEST(WeightStore, ShardedBin) {
  TempDir d;
  const std::vector<float> st = {5, 6};
  write_file(d / "pytorch_model-1.bin",
             zip_bytes({{"x/data.pkl", state_dict_pickle({{"w", "FloatStorage", "0", 2, 0, {2}, {1}}}, false)},
                        {"x/data/0", raw(st)}}));
  write_file(d / "pytorch_model-2.bin",
             zip_bytes({{"y/data.pkl", state_dict_pickle({{"v", "FloatStorage", "0", 2, 1, {1}, {1}}}, false)},
                        {"y/data/0", raw(st)}}));
  write_file(d / "pytorch_model.bin.index.json",
             "{\"weight_map\": {\"w\": \"pytorch_model-1.bin\", \"v\": \"pytorch_model-2.bin\"}}");
  WeightStore s = WeightStore::open_dir(d.path());
  EXPECT_EQ(to_f32(*s.find("w")), st);
  EXPECT_EQ(to_f32(*s.find("v")), std::vector<float>{6});
}

TEST(WeightStore, MoveKeepsViewsValid) {
  TempDir d;
  write_file(d / "m.safetensors", one_tensor_st("a", 7));
  WeightStore s = WeightStore::open_file(d / "m.safetensors");
  WeightStore t = std::move(s);
  EXPECT_EQ(to_f32(*t.find("a")), std::vector<float>{7});
}

// ---------------------------------------------------------------- config.json

TEST(Config, LoadsFieldsAndGetters) {
  TempDir d;
  write_file(d / "config.json", R"({
    "model_type": "bert", "architectures": ["BertForSequenceClassification"], "torch_dtype": "float16",
    "hidden_size": 32, "layer_norm_eps": 1e-12, "initializer_range": 1, "hidden_act": "gelu",
    "id2label": {"0": "NEG", "1": "POS", "2": "NEU"}, "num_labels": 3, "is_decoder": false,
    "classifier_dropout": null, "name": 5, "zero": 0, "neg": -4, "big": 18446744073709551615
  })");
  ModelConfig c = ModelConfig::load(d / "config.json");
  const std::string f = (d / "config.json").string();
  EXPECT_EQ(c.model_type, "bert");
  EXPECT_EQ(c.architectures, std::vector<std::string>{"BertForSequenceClassification"});
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.id2label.size(), 3u);
  EXPECT_EQ(c.id2label.at(1), "POS");
  EXPECT_EQ(c.num_labels_field, std::optional<int64_t>(3));
  EXPECT_EQ(c.num_labels(), 3);
  EXPECT_EQ(c.file(), f);
  EXPECT_EQ(c.get_int("hidden_size"), 32);
  EXPECT_EQ(c.get_positive_int("hidden_size"), 32);
  EXPECT_EQ(c.get_int("missing", 7), 7);
  EXPECT_EQ(c.get_int("classifier_dropout", 9), 9);  // null -> fallback
  EXPECT_DOUBLE_EQ(c.get_float("layer_norm_eps"), 1e-12);
  EXPECT_DOUBLE_EQ(c.get_float("initializer_range"), 1.0);  // ints accepted
  EXPECT_DOUBLE_EQ(c.get_float("missing", 0.5), 0.5);
  EXPECT_DOUBLE_EQ(c.get_float("classifier_dropout", 0.1), 0.1);
  EXPECT_EQ(c.get_string("hidden_act"), "gelu");
  EXPECT_EQ(c.get_string("missing", "x"), "x");
  EXPECT_FALSE(c.get_bool("is_decoder", true));
  EXPECT_TRUE(c.get_bool("missing", true));
  EXPECT_TRUE(c.has("hidden_size"));
  EXPECT_FALSE(c.has("nope"));

  expect_input_error([&] { c.get_int("hidden_act"); }, {f + ": 'hidden_act' must be an integer, got string"});
  expect_input_error([&] { c.get_int("layer_norm_eps"); }, {"'layer_norm_eps' must be an integer, got float"});
  expect_input_error([&] { c.get_int("is_decoder", 1); }, {"'is_decoder' must be an integer, got boolean"});
  expect_input_error([&] { c.get_int("vocab_size"); }, {f + ": missing 'vocab_size'"});
  expect_input_error([&] { c.get_float("hidden_act"); }, {"'hidden_act' must be a number, got string"});
  expect_input_error([&] { c.get_string("name"); }, {"'name' must be a string, got integer"});
  expect_input_error([&] { c.get_string("name", "d"); }, {"'name' must be a string, got integer"});
  expect_input_error([&] { c.get_bool("name", true); }, {"'name' must be a boolean, got integer"});
  expect_input_error([&] { c.get_positive_int("zero"); }, {"'zero' must be a positive integer, got 0"});
  expect_input_error([&] { c.get_positive_int("neg"); }, {"'neg' must be a positive integer, got -4"});
  expect_input_error([&] { c.get_int("big"); }, {"'big' is too large"});
}

TEST(Config, DefaultsAndDtypeKey) {
  ModelConfig c = ModelConfig::from_json(nlohmann::json::parse(R"({"model_type": "roberta", "dtype": "bfloat16"})"), "cfg");
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_TRUE(c.architectures.empty());
  EXPECT_TRUE(c.id2label.empty());
  EXPECT_EQ(c.num_labels(), 2);
  ModelConfig c2 = ModelConfig::from_json(nlohmann::json::parse(R"({"model_type": "bert", "num_labels": 5})"), "cfg");
  EXPECT_EQ(c2.num_labels(), 5);
}

TEST(Config, Errors) {
  TempDir d;
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {(d / "config.json").string() + ": cannot open"});
  write_file(d / "config.json", "{\"model_type\": ");
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {(d / "config.json").string() + ": invalid JSON: "});
  write_file(d / "config.json", "[1]");
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {"must be a JSON object, got array"});
  write_file(d / "config.json", "{\"hidden_size\": 3}");
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {"missing 'model_type'"});
  write_file(d / "config.json", "{\"model_type\": 3}");
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {"'model_type' must be a string, got integer"});
  write_file(d / "config.json", "{\"model_type\": \"bert\", \"id2label\": {\"x\": \"A\"}}");
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {"'id2label' key 'x' is not a non-negative integer"});
  write_file(d / "config.json", "{\"model_type\": \"bert\", \"architectures\": \"Bert\"}");
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {"'architectures' must be a list of strings"});
  write_file(d / "config.json", "{\"model_type\": \"bert\", \"torch_dtype\": 16}");
  expect_input_error([&] { ModelConfig::load(d / "config.json"); }, {"'torch_dtype' must be a string, got integer"});
  expect_input_error([&] { ModelConfig::load(d.path()); }, {"cannot open"});
}
