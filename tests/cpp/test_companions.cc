// kv_cache_updated_in_place: when genai_config.json may let onnxruntime-genai share past and present buffers.
#include <gtest/gtest.h>

#include <string>

#include "export/companions.h"

namespace trex {
namespace {

// "past_key_values.<i>" / "present.<i>" (built with += : GCC 12 warns wrongly about `literal + to_string()`).
std::string past(int i) {
  std::string s = "past_key_values.";
  s += std::to_string(i);
  return s;
}
std::string present(int i) {
  std::string s = "present.";
  s += std::to_string(i);
  return s;
}

void add_input(onnx::GraphProto& g, const std::string& name) { g.add_input()->set_name(name); }
void add_output(onnx::GraphProto& g, const std::string& name) { g.add_output()->set_name(name); }

onnx::NodeProto* add_node(onnx::GraphProto& g, const std::string& op, const std::string& domain,
                          std::initializer_list<std::string> inputs, std::initializer_list<std::string> outputs) {
  onnx::NodeProto* n = g.add_node();
  n->set_op_type(op);
  n->set_domain(domain);
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  return n;
}

// `layers` layers, each one GroupQueryAttention reading its past and writing its present (the fused lowering).
onnx::GraphProto gqa_graph(int layers) {
  onnx::GraphProto g;
  add_input(g, "input_ids");
  for (int i = 0; i < layers; ++i) {
    const std::string p = past(i), pr = present(i);
    add_input(g, p + ".key");
    add_input(g, p + ".value");
    add_node(g, "GroupQueryAttention", "com.microsoft",
             {"q", "k", "v", p + ".key", p + ".value", "seqlens_k", "total", "", "", "", "bias"},
             {"ctx", pr + ".key", pr + ".value"});
    add_output(g, pr + ".key");
    add_output(g, pr + ".value");
  }
  add_output(g, "logits");
  return g;
}

TEST(Companions, CacheInPlaceForGroupQueryAttention) {
  EXPECT_TRUE(kv_cache_updated_in_place(gqa_graph(1)));
  EXPECT_TRUE(kv_cache_updated_in_place(gqa_graph(3)));
}

TEST(Companions, CacheNotInPlaceWithoutCache) {
  onnx::GraphProto g;
  add_input(g, "input_ids");
  add_output(g, "logits");
  EXPECT_FALSE(kv_cache_updated_in_place(g));
}

TEST(Companions, CacheNotInPlaceForConcat) {
  // The plain lowering: present = Concat(past, new).
  onnx::GraphProto g;
  add_input(g, "past_key_values.0.key");
  add_input(g, "past_key_values.0.value");
  add_node(g, "Concat", "", {"past_key_values.0.key", "k"}, {"present.0.key"});
  add_node(g, "Concat", "", {"past_key_values.0.value", "v"}, {"present.0.value"});
  add_output(g, "present.0.key");
  add_output(g, "present.0.value");
  EXPECT_FALSE(kv_cache_updated_in_place(g));
}

TEST(Companions, CacheNotInPlaceWhenPastReadElsewhere) {
  onnx::GraphProto g = gqa_graph(2);
  add_node(g, "Shape", "", {"past_key_values.1.key"}, {"past_len"});  // another reader of the past
  EXPECT_FALSE(kv_cache_updated_in_place(g));
}

TEST(Companions, CacheNotInPlaceWhenOneLayerConcatenates) {
  onnx::GraphProto g = gqa_graph(1);
  add_input(g, "past_key_values.1.key");
  add_input(g, "past_key_values.1.value");
  add_node(g, "Concat", "", {"past_key_values.1.key", "k"}, {"present.1.key"});
  add_node(g, "Concat", "", {"past_key_values.1.value", "v"}, {"present.1.value"});
  add_output(g, "present.1.key");
  add_output(g, "present.1.value");
  EXPECT_FALSE(kv_cache_updated_in_place(g));
}

TEST(Companions, CacheNotInPlaceWhenLayersCrossed) {
  // Layer 0's attention writes layer 1's present and the other way round.
  onnx::GraphProto g;
  for (int i = 0; i < 2; ++i) {
    const std::string p = past(i), pr = present(1 - i);
    add_input(g, p + ".key");
    add_input(g, p + ".value");
    add_node(g, "GroupQueryAttention", "com.microsoft", {"q", "k", "v", p + ".key", p + ".value"},
             {"ctx", pr + ".key", pr + ".value"});
    add_output(g, pr + ".key");
    add_output(g, pr + ".value");
  }
  EXPECT_FALSE(kv_cache_updated_in_place(g));
}

TEST(Companions, CacheNotInPlaceWhenKeyAndValueSwapped) {
  onnx::GraphProto g;
  add_input(g, "past_key_values.0.key");
  add_input(g, "past_key_values.0.value");
  add_node(g, "GroupQueryAttention", "com.microsoft", {"q", "k", "v", "past_key_values.0.value", "past_key_values.0.key"},
           {"ctx", "present.0.key", "present.0.value"});
  add_output(g, "present.0.key");
  add_output(g, "present.0.value");
  EXPECT_FALSE(kv_cache_updated_in_place(g));
}

TEST(Companions, CacheNotInPlaceForOtherDomain) {
  onnx::GraphProto g = gqa_graph(1);
  g.mutable_node(0)->set_domain("");
  EXPECT_FALSE(kv_cache_updated_in_place(g));
}

}  // namespace
}  // namespace trex
