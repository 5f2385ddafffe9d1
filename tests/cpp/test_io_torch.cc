// Cross-check of the .bin / .safetensors readers against files written by real torch / transformers.
// Runs only when TREX_TEST_PY names a Python with torch, transformers and safetensors (e.g. .venv/bin/python);
// skipped otherwise.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "io/tensor.h"
#include "io/weight_store.h"

namespace fs = std::filesystem;
using namespace trex;

namespace {

// Writes checkpoints to argv[1] and, for each, "<file>.expected": one line per tensor:
// "<name> <DTYPE> <dims,comma,separated or -> <values...>".
const char* kScript = R"PY(
import os, sys, torch
from collections import OrderedDict
out = sys.argv[1]
torch.manual_seed(0)
NAMES = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.float64: 'F64',
         torch.int64: 'I64', torch.int32: 'I32', torch.int16: 'I16', torch.int8: 'I8', torch.uint8: 'U8',
         torch.bool: 'BOOL'}
def alias(k):
    if 'LayerNorm' in k and k.endswith('.gamma'): return k[:-6] + '.weight'
    if 'LayerNorm' in k and k.endswith('.beta'): return k[:-5] + '.bias'
    return k
def expect(sd, path):
    with open(path + '.expected', 'w') as f:
        for k, t in sd.items():
            if not isinstance(t, torch.Tensor): continue
            vals = t.detach().to(torch.float64).flatten().tolist()
            dims = ','.join(str(d) for d in t.shape) or '-'
            f.write('%s %s %s %s\n' % (alias(k), NAMES[t.dtype], dims, ' '.join(repr(float(v)) for v in vals)))
base = torch.randn(4, 5)
sd = OrderedDict()
sd['a'] = torch.arange(6.).reshape(2, 3)
sd['b'] = torch.randn(3).half()
sd['c'] = torch.randn(3, 4).to(torch.bfloat16)
sd['d'] = torch.randn(2, 2).double()
sd['e'] = torch.arange(-2, 3, dtype=torch.int64)
sd['f'] = torch.arange(-2, 3, dtype=torch.int32)
sd['g'] = torch.arange(-2, 3, dtype=torch.int16)
sd['h'] = torch.arange(-2, 3, dtype=torch.int8)
sd['i'] = torch.arange(5, dtype=torch.uint8)
sd['j'] = torch.tensor([True, False, True])
sd['k'] = base.t()
sd['l'] = base[1:3]
sd['m'] = base[:, 1]
sd['n'] = torch.zeros(0, 3)
sd['o'] = torch.tensor(3.5)
sd['p'] = torch.randn(2, 3, 4).permute(2, 0, 1)
sd['tied'] = sd['a']
sd['enc.LayerNorm.gamma'] = torch.randn(3)
sd['enc.LayerNorm.beta'] = torch.randn(3)
sd._metadata = OrderedDict({'': {'version': 1}})
for name, kw in [('zip.bin', {}), ('zip4.bin', {'pickle_protocol': 4}),
                 ('legacy.bin', {'_use_new_zipfile_serialization': False})]:
    torch.save(sd, os.path.join(out, name), **kw)
    expect(sd, os.path.join(out, name))
from transformers import BertConfig, BertModel
m = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32))
for name, kw in [('bert_bin', {'safe_serialization': False}), ('bert_st', {'safe_serialization': True}),
                 ('bert_sharded', {'safe_serialization': False, 'max_shard_size': '10KB'})]:
    m.save_pretrained(os.path.join(out, name), **kw)
    expect(m.state_dict(), os.path.join(out, name))
m.half().save_pretrained(os.path.join(out, 'bert_f16'), safe_serialization=False)
expect(m.state_dict(), os.path.join(out, 'bert_f16'))
)PY";

std::vector<double> values_as_double(const TensorView& t) {
  const size_t n = static_cast<size_t>(num_elements(t.shape));
  std::vector<double> out(n);
  switch (t.dtype) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF64: {
      std::vector<float> f(n);
      convert_to_f32(t, f.data());
      for (size_t i = 0; i < n; ++i) out[i] = f[i];
      if (t.dtype == DType::kF64) {
        for (size_t i = 0; i < n; ++i) std::memcpy(&out[i], t.data + 8 * i, 8);
      }
      return out;
    }
    default:
      break;
  }
  for (size_t i = 0; i < n; ++i) {
    const std::byte* p = t.data + i * dtype_size(t.dtype);
    switch (t.dtype) {
      case DType::kI64: { int64_t v; std::memcpy(&v, p, 8); out[i] = static_cast<double>(v); break; }
      case DType::kI32: { int32_t v; std::memcpy(&v, p, 4); out[i] = v; break; }
      case DType::kI16: { int16_t v; std::memcpy(&v, p, 2); out[i] = v; break; }
      case DType::kI8: { int8_t v; std::memcpy(&v, p, 1); out[i] = v; break; }
      default: { uint8_t v; std::memcpy(&v, p, 1); out[i] = v; break; }
    }
  }
  return out;
}

void check_against_expected(const fs::path& weights, const fs::path& expected_file) {
  SCOPED_TRACE(weights.string());
  WeightStore s = fs::is_directory(weights) ? WeightStore::open_dir(weights) : WeightStore::open_file(weights);
  std::ifstream in(expected_file);
  ASSERT_TRUE(in) << expected_file;
  std::string line;
  size_t count = 0;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string name, dt, dims;
    ls >> name >> dt >> dims;
    ++count;
    const TensorView* t = s.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(std::string(dtype_name(t->dtype)), dt) << name;
    Shape shape;
    if (dims != "-") {
      std::istringstream ds(dims);
      std::string d;
      while (std::getline(ds, d, ',')) shape.push_back(std::stoll(d));
    }
    EXPECT_EQ(t->shape, shape) << name;
    std::vector<double> want;
    std::string v;
    while (ls >> v) want.push_back(std::stod(v));
    EXPECT_EQ(values_as_double(*t), want) << name;
  }
  EXPECT_EQ(s.size(), count);
}

}  // namespace

TEST(TorchCrossCheck, RealCheckpointsMatchTorch) {
  const char* py = std::getenv("TREX_TEST_PY");
  if (py == nullptr || *py == '\0') GTEST_SKIP() << "set TREX_TEST_PY to a Python with torch + transformers";
  std::string tmpl = (fs::temp_directory_path() / "trex_io_torch_XXXXXX").string();
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const fs::path dir = tmpl;
  {
    std::ofstream(dir / "gen.py") << kScript;
  }
  const std::string cmd = std::string("'") + py + "' '" + (dir / "gen.py").string() + "' '" + dir.string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  for (const char* f : {"zip.bin", "zip4.bin", "legacy.bin", "bert_bin", "bert_st", "bert_sharded", "bert_f16"}) {
    check_against_expected(dir / f, dir / (std::string(f) + ".expected"));
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}
