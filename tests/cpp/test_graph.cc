// Graph builder and writer: naming, constant dedup, opset lowering, atomic streaming write.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <cstring>
#include <unistd.h>

#include "graph/graph_builder.h"
#include "onnx/writer.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace trex;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("trex_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

Model tiny_model(int opset) {
  GraphBuilder g(opset);
  Value x = g.input("x", DType::kF32, {"batch_size", 4});
  Value w = g.initializer("w", TensorData::from_vector(DType::kF32, {4, 3}, std::vector<float>(12, 0.5f)));
  Value y;
  {
    auto s = g.scope("block");
    y = g.matmul(x, w);
    y = g.add(y, g.const_f32(1.0f));
    y = g.add(y, g.const_f32(1.0f));
  }
  g.output(y, "y", DType::kF32, {"batch_size", 3});
  return g.finish("test");
}

}  // namespace

TEST(GraphBuilder, HierarchicalUniqueNodeNames) {
  Model m = tiny_model(17);
  const auto& nodes = m.proto.graph().node();
  ASSERT_GE(nodes.size(), 3);
  EXPECT_EQ(nodes[0].name(), "/block/MatMul");
  EXPECT_EQ(nodes[1].name(), "/block/Add");
  EXPECT_EQ(nodes[2].name(), "/block/Add_1");
}

TEST(GraphBuilder, ConstantsStoredOnce) {
  Model m = tiny_model(17);
  int f32_consts = 0;
  for (const auto& i : m.initializers)
    if (i.name.rfind("const_f32", 0) == 0) ++f32_consts;
  EXPECT_EQ(f32_consts, 1);
}

TEST(GraphBuilder, UnsqueezeLoweringFollowsOpset) {
  for (int opset : {11, 13}) {
    GraphBuilder g(opset);
    Value x = g.input("x", DType::kF32, {2});
    g.unsqueeze(x, {0});
    Model m = g.finish("t");
    const auto& n = m.proto.graph().node(0);
    EXPECT_EQ(n.op_type(), "Unsqueeze");
    if (opset < 13) {
      EXPECT_EQ(n.input_size(), 1);
      EXPECT_EQ(n.attribute(0).name(), "axes");
    } else {
      EXPECT_EQ(n.input_size(), 2);
    }
  }
}

TEST(GraphBuilder, LayerNormNativeFrom17DecomposedBefore) {
  for (int opset : {16, 17}) {
    GraphBuilder g(opset);
    Value x = g.input("x", DType::kF32, {2, 4});
    Value s = g.initializer("s", TensorData::from_vector(DType::kF32, {4}, std::vector<float>(4, 1.f)));
    Value b = g.initializer("b", TensorData::from_vector(DType::kF32, {4}, std::vector<float>(4, 0.f)));
    g.layer_norm(x, s, b, 1e-5f);
    Model m = g.finish("t");
    bool native = false;
    for (const auto& n : m.proto.graph().node()) native |= n.op_type() == "LayerNormalization";
    EXPECT_EQ(native, opset >= 17) << opset;
  }
}

TEST(Writer, SingleFileParsesBackWithData) {
  fs::path dir = temp_dir("writer1");
  Model m = tiny_model(17);
  WriteResult r = write_model(m, dir / "m.onnx");
  EXPECT_TRUE(r.data_path.empty());
  std::ifstream f(dir / "m.onnx", std::ios::binary);
  onnx::ModelProto back;
  ASSERT_TRUE(back.ParseFromIstream(&f));
  EXPECT_EQ(back.producer_name(), "trex");
  ASSERT_EQ(back.graph().initializer_size(), static_cast<int>(m.initializers.size()));
  const auto& w = back.graph().initializer(0);
  EXPECT_EQ(w.name(), "w");
  ASSERT_EQ(w.raw_data().size(), 12u * 4);
  float v;
  std::memcpy(&v, w.raw_data().data() + 4, 4);
  EXPECT_EQ(v, 0.5f);
  EXPECT_EQ(back.graph().node_size(), m.proto.graph().node_size());
  // Only the final file remains: no temporary files.
  int files = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++files;
  EXPECT_EQ(files, 1);
  fs::remove_all(dir);
}

TEST(Writer, ExternalDataAlways) {
  fs::path dir = temp_dir("writer2");
  Model m = tiny_model(17);
  WriteOptions o;
  o.external = ExternalData::kAlways;
  o.external_min_bytes = 16;
  WriteResult r = write_model(m, dir / "m.onnx", o);
  ASSERT_FALSE(r.data_path.empty());
  EXPECT_TRUE(fs::exists(dir / "m.onnx.data"));
  std::ifstream f(dir / "m.onnx", std::ios::binary);
  onnx::ModelProto back;
  ASSERT_TRUE(back.ParseFromIstream(&f));
  const auto& w = back.graph().initializer(0);
  EXPECT_EQ(w.data_location(), onnx::TensorProto::EXTERNAL);
  EXPECT_TRUE(w.raw_data().empty());
  fs::remove_all(dir);
}

TEST(Writer, MissingFolderIsOutputErrorAndLeavesNothing) {
  Model m = tiny_model(17);
  try {
    write_model(m, "/nonexistent_trex_dir/m.onnx");
    FAIL() << "expected OutputError";
  } catch (const OutputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent_trex_dir/m.onnx"), std::string::npos);
    EXPECT_EQ(e.code(), ExitCode::kOutput);
  }
}

TEST(Writer, ProducedDataIsStreamed) {
  fs::path dir = temp_dir("writer3");
  GraphBuilder g(17);
  Value x = g.input("x", DType::kF32, {3});
  Value c = g.initializer("c", TensorData::produced(DType::kF32, {3}, [](std::byte* dst) {
    float v[3] = {1, 2, 3};
    std::memcpy(dst, v, sizeof v);
  }));
  g.output(g.add(x, c), "y", DType::kF32, {3});
  write_model(g.finish("t"), dir / "p.onnx");
  std::ifstream f(dir / "p.onnx", std::ios::binary);
  onnx::ModelProto back;
  ASSERT_TRUE(back.ParseFromIstream(&f));
  float v[3];
  std::memcpy(v, back.graph().initializer(0).raw_data().data(), sizeof v);
  EXPECT_EQ(v[2], 3.0f);
  fs::remove_all(dir);
}
