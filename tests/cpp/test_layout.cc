// Output layouts: file names per layout, Triton names, the Triton config of a hand-built graph.
#include <gtest/gtest.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "export/layout.h"
#include "graph/model.h"
#include "onnx/writer.h"
#include "temp_dir.h"
#include "util/error.h"

namespace trex {
namespace {

namespace fs = std::filesystem;

TEST(Layout, ParseAndNames) {
  EXPECT_EQ(parse_layout("optimum"), Layout::kOptimum);
  EXPECT_EQ(parse_layout("transformers.js"), Layout::kTransformersJs);
  EXPECT_EQ(parse_layout("triton"), Layout::kTriton);
  EXPECT_EQ(parse_layout("trex"), Layout::kTrex);
  EXPECT_FALSE(parse_layout("onnx"));
  EXPECT_STREQ(layout_name(Layout::kTransformersJs), "transformers.js");
}

TEST(Layout, FileNames) {
  const fs::path out = "/o";
  const fs::path opt = layout_output_file(out, Layout::kOptimum, "");
  EXPECT_EQ(opt, "/o/model.onnx");
  EXPECT_EQ(layout_variant_file(opt, Layout::kOptimum, Variant::kOptimized), "/o/model_optimized.onnx");
  EXPECT_EQ(layout_variant_file(layout_graph_file(opt, Layout::kOptimum, "decoder_model_merged"), Layout::kOptimum,
                                Variant::kOptimized),
            "/o/decoder_model_merged_optimized.onnx");
  EXPECT_EQ(layout_root(opt, Layout::kOptimum), "/o");

  const fs::path js = layout_output_file(out, Layout::kTransformersJs, "");
  EXPECT_EQ(js, "/o/onnx/model.onnx");
  EXPECT_EQ(layout_variant_file(js, Layout::kTransformersJs, Variant::kQuantized), "/o/onnx/model_quantized.onnx");
  EXPECT_EQ(layout_graph_file(js, Layout::kTransformersJs, "encoder_model"), "/o/onnx/encoder_model.onnx");
  EXPECT_EQ(layout_root(js, Layout::kTransformersJs), "/o");

  const fs::path tr = layout_output_file(out, Layout::kTriton, "bert");
  EXPECT_EQ(tr, "/o/bert/1/model.onnx");
  EXPECT_EQ(layout_variant_file(tr, Layout::kTriton, Variant::kQuantized), "/o/bert_quantized/1/model.onnx");
  EXPECT_EQ(layout_graph_file(tr, Layout::kTriton, "encoder_model"), "/o/bert_encoder_model/1/model.onnx");
  EXPECT_EQ(layout_root(tr, Layout::kTriton), "/o");

  EXPECT_EQ(layout_variant_file("/o/m.onnx", Layout::kTrex, Variant::kOptimized), "/o/m-optimized.onnx");
  EXPECT_THROW(layout_output_file("/o/m.onnx", Layout::kOptimum, ""), UsageError);
  EXPECT_THROW(layout_output_file(out, Layout::kTriton, "../x"), UsageError);
  EXPECT_THROW(layout_output_file(out, Layout::kTriton, ""), UsageError);
}

TEST(Layout, TritonNames) {
  EXPECT_EQ(triton_name_from("org/bert-base"), "bert-base");
  EXPECT_EQ(triton_name_from("/a/b/models--org--tiny-llama/"), "tiny-llama");
  EXPECT_EQ(triton_name_from("weird name?"), "weird_name_");
  EXPECT_EQ(triton_name_from("/"), "model");
  EXPECT_EQ(triton_name_from(".."), "model");
  EXPECT_TRUE(valid_triton_name("a.b-c_1"));
  EXPECT_FALSE(valid_triton_name(".hidden"));
  EXPECT_FALSE(valid_triton_name("a/b"));
  EXPECT_FALSE(valid_triton_name(std::string(129, 'a')));
}

// Writes a model with the given inputs/outputs (no nodes needed: the config reads the signature only).
fs::path write_signature(const fs::path& file, bool batch_first) {
  Model m;
  m.proto.set_ir_version(8);
  m.proto.add_opset_import()->set_version(17);
  auto* g = m.proto.mutable_graph();
  g->set_name("g");
  auto add = [&](onnx::ValueInfoProto* v, const char* name, int type, std::vector<std::string> dims) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(type);
    for (const auto& d : dims) {
      auto* dim = t->mutable_shape()->add_dim();
      if (std::isdigit(static_cast<unsigned char>(d[0]))) dim->set_dim_value(std::stoll(d));
      else dim->set_dim_param(d);
    }
  };
  add(g->add_input(), "input_ids", onnx::TensorProto::INT64, {"batch", "seq"});
  add(g->add_input(), "flag\"x", onnx::TensorProto::BOOL, {batch_first ? "batch" : "1"});
  add(g->add_output(), "logits", onnx::TensorProto::FLOAT, {"batch", "seq", "7"});
  auto* n = g->add_node();  // Identity so the graph is well-formed
  n->set_op_type("Identity");
  n->add_input("input_ids");
  n->add_output("logits");
  fs::create_directories(file.parent_path());
  WriteOptions wo;
  write_model(m, file, wo);
  return file;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(Layout, TritonConfigBatched) {
  testing::TempDir dir;
  const fs::path model = write_signature(dir / "m/1/model.onnx", true);
  const fs::path cfg = write_triton_config(model, 8);
  EXPECT_EQ(cfg, dir / "m/config.pbtxt");
  const std::string text = slurp(cfg);
  EXPECT_NE(text.find("name: \"m\""), std::string::npos);
  EXPECT_NE(text.find("max_batch_size: 8"), std::string::npos);
  EXPECT_NE(text.find("dims: [ -1 ]"), std::string::npos);         // input_ids without its batch dim
  EXPECT_NE(text.find("dims: [ -1, 7 ]"), std::string::npos);      // logits
  EXPECT_NE(text.find("name: \"flag\\\"x\""), std::string::npos);  // quoted
  EXPECT_NE(text.find("reshape: { shape: [ ] }"), std::string::npos);  // [batch] → [1] reshaped to a scalar
  EXPECT_NE(text.find("dynamic_batching { }"), std::string::npos);
}

TEST(Layout, TritonConfigUnbatched) {
  testing::TempDir dir;
  const fs::path model = write_signature(dir / "m/1/model.onnx", false);
  const std::string text = slurp(write_triton_config(model, 8));
  EXPECT_NE(text.find("max_batch_size: 0"), std::string::npos);
  EXPECT_NE(text.find("dims: [ -1, -1 ]"), std::string::npos);
  EXPECT_EQ(text.find("dynamic_batching"), std::string::npos);
}

}  // namespace
}  // namespace trex
