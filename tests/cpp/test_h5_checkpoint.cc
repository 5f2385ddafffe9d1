// Unit tests of the tf_model.h5 reader (src/io/h5_checkpoint): files are written here with the HDF5 C API in the
// layout Keras' save_weights uses (root `layer_names`, per-layer `weight_names`, one dataset per variable).
#include "temp_dir.h"
#include <gtest/gtest.h>

#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "io/checkpoint_weights.h"
#include "io/h5_checkpoint.h"
#include "io/weight_store.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace trex;
using trex::testing::TempDir;

namespace {

struct Dataset {
  std::string name;      // path below the layer group ("tf_bert_model/bert/.../kernel:0")
  std::vector<hsize_t> dims;
  std::vector<float> values;  // written as `type`, converted by HDF5 from float
  hid_t type = H5T_IEEE_F32LE;
  bool listed = true;    // in weight_names
  bool written = true;   // the dataset exists
};

struct Layer {
  std::string name;
  std::vector<Dataset> datasets;
  int name_chunks = 1;  // >1: weight_names split as weight_names0, weight_names1, ... (Keras, large layers)
};

void write_strings_attr(hid_t obj, const std::string& attr, const std::vector<std::string>& items) {
  size_t width = 1;
  for (const auto& s : items) width = std::max(width, s.size());
  std::vector<char> buf(width * std::max<size_t>(items.size(), 1), '\0');
  for (size_t i = 0; i < items.size(); ++i) std::memcpy(buf.data() + i * width, items[i].data(), items[i].size());
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, width);
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  hsize_t n = items.size();
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t a = H5Acreate2(obj, attr.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(a, 0);
  if (n > 0) {
    ASSERT_GE(H5Awrite(a, type, buf.data()), 0);
  }
  H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
}

void write_h5(const fs::path& path, const std::vector<Layer>& layers) {
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  std::vector<std::string> names;
  for (const auto& l : layers) names.push_back(l.name);
  write_strings_attr(f, "layer_names", names);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  for (const auto& l : layers) {
    hid_t g = H5Gcreate2(f, l.name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(g, 0);
    std::vector<std::string> listed;
    for (const auto& d : l.datasets)
      if (d.listed) listed.push_back(d.name);
    if (l.name_chunks == 1) {
      write_strings_attr(g, "weight_names", listed);
    } else {
      const size_t per = (listed.size() + l.name_chunks - 1) / l.name_chunks;
      for (int c = 0; c < l.name_chunks; ++c) {
        std::vector<std::string> part(listed.begin() + std::min(listed.size(), c * per),
                                      listed.begin() + std::min(listed.size(), (c + 1) * per));
        write_strings_attr(g, "weight_names" + std::to_string(c), part);
      }
    }
    for (const auto& d : l.datasets) {
      if (!d.written) continue;
      hid_t space = H5Screate_simple(static_cast<int>(d.dims.size()), d.dims.data(), nullptr);
      hid_t ds = H5Dcreate2(g, d.name.c_str(), d.type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
      ASSERT_GE(ds, 0) << d.name;
      ASSERT_GE(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, d.values.data()), 0);
      H5Dclose(ds);
      H5Sclose(space);
    }
    H5Gclose(g);
  }
  H5Pclose(lcpl);
  H5Fclose(f);
}

// IEEE half precision, as h5py writes numpy float16 (HDF5 1.10 has no predefined 16-bit float type).
hid_t f16_type() {
  static hid_t t = [] {
    hid_t h = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(h, 15, 10, 5, 0, 10);
    H5Tset_precision(h, 16);
    H5Tset_size(h, 2);
    H5Tset_ebias(h, 15);
    return h;
  }();
  return t;
}

std::vector<float> iota(size_t n, float start = 0) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i);
  return v;
}

std::vector<float> as_floats(const TensorView& t) {
  std::vector<float> v(t.nbytes / dtype_size(t.dtype));
  convert_to_f32(t, v.data());
  return v;
}

// A small BERT-like checkpoint: a Dense kernel [in=2, out=3], its bias, a LayerNorm gamma in f16, an embedding
// table, and a classifier in its own layer.
std::vector<Layer> bert_like() {
  const std::string p = "tf_bert_for_sequence_classification/bert/";
  return {
      {"bert",
       {{p + "encoder/layer_._0/attention/self/query/kernel:0", {2, 3}, iota(6)},
        {p + "encoder/layer_._0/attention/self/query/bias:0", {3}, iota(3, 10)},
        {p + "embeddings/LayerNorm/gamma:0", {3}, {0.5f, 1.5f, -2.0f}, f16_type()},
        {p + "embeddings/position_embeddings/embeddings:0", {2, 3}, iota(6, 20)}}},
      {"dropout_37", {}},
      {"classifier", {{"tf_bert_for_sequence_classification/classifier/kernel:0", {3, 2}, iota(6, 30)}}},
  };
}

void expect_input_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string m = e.what();
    for (const auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
  }
}

}  // namespace

TEST(H5Checkpoint, KerasNamesMapToPyTorchNames) {
  bool t = false;
  EXPECT_EQ(keras_to_pytorch_name("tf_bert_model/bert/encoder/layer_._11/attention/self/query/kernel:0", 2, &t),
            "bert.encoder.layer.11.attention.self.query.weight");
  EXPECT_TRUE(t);
  EXPECT_EQ(keras_to_pytorch_name("tf_bert_model/bert/embeddings/word_embeddings/weight:0", 2, &t),
            "bert.embeddings.word_embeddings.weight");
  EXPECT_FALSE(t);  // only kernels are transposed
  EXPECT_EQ(keras_to_pytorch_name("tf_bert_model/bert/embeddings/token_type_embeddings/embeddings:0", 2, &t),
            "bert.embeddings.token_type_embeddings.weight");
  EXPECT_EQ(keras_to_pytorch_name("m/bert/embeddings/LayerNorm/gamma:0", 1, &t), "bert.embeddings.LayerNorm.weight");
  EXPECT_EQ(keras_to_pytorch_name("m/bert/embeddings/LayerNorm/beta:0", 1, &t), "bert.embeddings.LayerNorm.bias");
  // outer___inner scopes keep the inner (PyTorch) name.
  EXPECT_EQ(keras_to_pytorch_name("tf_bert_for_masked_lm/mlm___cls/predictions/transform/dense/kernel:0", 2, &t),
            "cls.predictions.transform.dense.weight");
  EXPECT_TRUE(t);
  EXPECT_EQ(keras_to_pytorch_name("tf_bert_for_masked_lm/mlm___cls/predictions/bias:0", 1, &t),
            "cls.predictions.bias");
  // A kernel of another rank is not a Dense one: not transposed.
  EXPECT_EQ(keras_to_pytorch_name("m/conv/kernel:0", 3, &t), "conv.weight");
  EXPECT_FALSE(t);
  EXPECT_EQ(keras_to_pytorch_name("//", 1, &t), "");
}

TEST(H5Checkpoint, ReadsTransposesAndConverts) {
  TempDir d;
  write_h5(d / "tf_model.h5", bert_like());
  WeightStore s = WeightStore::open_file(d / "tf_model.h5");
  EXPECT_EQ(s.size(), 5u);
  EXPECT_EQ(s.files(), std::vector<std::string>{"tf_model.h5"});

  const TensorView* q = s.find("bert.encoder.layer.0.attention.self.query.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::kF32);
  EXPECT_EQ(q->shape, (Shape{3, 2}));  // [out, in], as nn.Linear
  // kernel[i][o] = 3 i + o  →  weight[o][i]
  EXPECT_EQ(as_floats(*q), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_NE(q->file.find("dataset '/bert/tf_bert_for_sequence_classification/bert/encoder/layer_._0/attention/self/"
                         "query/kernel:0'"),
            std::string::npos)
      << q->file;

  const TensorView* b = s.find("bert.encoder.layer.0.attention.self.query.bias");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(as_floats(*b), (std::vector<float>{10, 11, 12}));

  const TensorView* g = s.find("bert.embeddings.LayerNorm.weight");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->dtype, DType::kF16);  // as stored
  EXPECT_EQ(as_floats(*g), (std::vector<float>{0.5f, 1.5f, -2.0f}));

  const TensorView* pe = s.find("bert.embeddings.position_embeddings.weight");
  ASSERT_NE(pe, nullptr);
  EXPECT_EQ(pe->shape, (Shape{2, 3}));  // embeddings are not transposed
  EXPECT_EQ(as_floats(*pe), iota(6, 20));

  const TensorView* c = s.find("classifier.weight");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->shape, (Shape{2, 3}));
  EXPECT_EQ(as_floats(*c), (std::vector<float>{30, 32, 34, 31, 33, 35}));
}

TEST(H5Checkpoint, SharedVariableListedTwiceIsReadOnce) {
  TempDir d;
  auto layers = bert_like();
  // As TFBertForMaskedLM writes it: the MLM head's layer lists the (tied) embeddings again; an empty weight list is
  // an empty float array.
  layers.push_back({"mlm___cls", {layers[0].datasets[3]}});
  write_h5(d / "tf_model.h5", layers);
  WeightStore s = WeightStore::open_file(d / "tf_model.h5");
  EXPECT_EQ(s.size(), 5u);
  EXPECT_EQ(as_floats(*s.find("bert.embeddings.position_embeddings.weight")), iota(6, 20));
}

TEST(H5Checkpoint, WeightNamesSplitAcrossAttributes) {
  TempDir d;
  auto layers = bert_like();
  layers[0].name_chunks = 3;
  write_h5(d / "tf_model.h5", layers);
  WeightStore s = WeightStore::open_file(d / "tf_model.h5");
  EXPECT_EQ(s.size(), 5u);
  EXPECT_TRUE(s.contains("bert.embeddings.position_embeddings.weight"));
}

TEST(H5Checkpoint, MissingDatasetNamesFileAndDataset) {
  TempDir d;
  auto layers = bert_like();
  layers[0].datasets[1].written = false;
  write_h5(d / "tf_model.h5", layers);
  expect_input_error([&] { WeightStore::open_file(d / "tf_model.h5"); },
                     {(d / "tf_model.h5").string(),
                      "dataset '/bert/tf_bert_for_sequence_classification/bert/encoder/layer_._0/attention/self/query/"
                      "bias:0'",
                      "missing"});
}

TEST(H5Checkpoint, RefusesBadTypesRanksAndLayouts) {
  TempDir d;
  {
    auto layers = bert_like();
    layers[0].datasets[1].type = H5T_STD_I32LE;
    write_h5(d / "int.h5", layers);
    expect_input_error([&] { WeightStore::open_file(d / "int.h5"); }, {"query/bias:0'", "unsupported element type"});
  }
  {
    auto layers = bert_like();
    layers[0].datasets[0].dims = {1, 2, 3};
    write_h5(d / "rank3.h5", layers);
    expect_input_error([&] { WeightStore::open_file(d / "rank3.h5"); }, {"query/kernel:0'", "kernel of rank 3"});
  }
  {
    write_h5(d / "nolayer.h5", {});
    hid_t f = H5Fopen((d / "nolayer.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    H5Adelete(f, "layer_names");
    H5Fclose(f);
    expect_input_error([&] { WeightStore::open_file(d / "nolayer.h5"); }, {"no 'layer_names' attribute"});
  }
  {
    // The same variable listed by two layers (tied weights) must hold the same values in both.
    std::vector<Layer> layers = {{"a", {{"m/x/kernel:0", {2, 2}, iota(4)}}}, {"b", {{"m/x/kernel:0", {2, 2}, iota(4, 1)}}}};
    write_h5(d / "dup.h5", layers);
    expect_input_error([&] { WeightStore::open_file(d / "dup.h5"); },
                       {"dataset '/b/m/x/kernel:0'", "tensor 'x.weight' again, with other values"});
  }
}

TEST(H5Checkpoint, RefusesNonHdf5AndTruncatedFiles) {
  TempDir d;
  std::ofstream(d / "text.h5") << "{\"not\": \"hdf5\"}";
  expect_input_error([&] { WeightStore::open_file(d / "text.h5"); }, {(d / "text.h5").string(), "not an HDF5 file"});

  auto layers = bert_like();
  layers[0].datasets[3].dims = {64, 64};
  layers[0].datasets[3].values = iota(64 * 64);
  write_h5(d / "full.h5", layers);
  const auto size = fs::file_size(d / "full.h5");
  for (auto keep : {size / 2, size - 100}) {
    fs::copy_file(d / "full.h5", d / "cut.h5", fs::copy_options::overwrite_existing);
    fs::resize_file(d / "cut.h5", keep);
    expect_input_error([&] { WeightStore::open_file(d / "cut.h5"); }, {(d / "cut.h5").string()});
  }
}

TEST(H5Checkpoint, SymlinkOutsideTheFolderIsRefused) {
  TempDir outside, d;
  write_h5(outside / "tf_model.h5", bert_like());
  fs::create_symlink(outside / "tf_model.h5", d / "tf_model.h5");
  expect_input_error([&] { open_checkpoint_weights(d.path(), Framework::kAuto); },
                     {"outside the folder"});
}

TEST(H5Checkpoint, FrameworkChoosesTheWeightsFile) {
  TempDir d;
  write_h5(d / "tf_model.h5", bert_like());
  // Only tf_model.h5: auto and tf read it, pt says what is there.
  EXPECT_EQ(open_checkpoint_weights(d.path(), Framework::kAuto).files(), std::vector<std::string>{"tf_model.h5"});
  EXPECT_EQ(open_checkpoint_weights(d.path(), Framework::kTensorFlow).size(), 5u);
  expect_input_error([&] { open_checkpoint_weights(d.path(), Framework::kPyTorch); },
                     {"no PyTorch weights", "--framework tf"});
  // Beside PyTorch weights: auto prefers them (the bad file shows which one was read), tf still reads the h5.
  std::ofstream(d / "model.safetensors") << "not safetensors";
  expect_input_error([&] { open_checkpoint_weights(d.path(), Framework::kAuto); }, {"model.safetensors"});
  EXPECT_EQ(open_checkpoint_weights(d.path(), Framework::kTensorFlow).files(), std::vector<std::string>{"tf_model.h5"});
  TempDir empty;
  expect_input_error([&] { open_checkpoint_weights(empty.path(), Framework::kTensorFlow); },
                     {"no TensorFlow weights", "tf_model.h5"});
  Framework fw;
  EXPECT_TRUE(parse_framework("tf", &fw));
  EXPECT_EQ(fw, Framework::kTensorFlow);
  EXPECT_TRUE(parse_framework("pt", &fw));
  EXPECT_EQ(fw, Framework::kPyTorch);
  EXPECT_FALSE(parse_framework("jax", &fw));
}
