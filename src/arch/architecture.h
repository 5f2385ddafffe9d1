// What an architecture file provides, and the registry that maps config.json's model_type to it.
// Adding an architecture = one new file in src/arch/ + one line in registry.cc.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "graph/graph_builder.h"
#include "io/config.h"
#include "io/weight_store.h"

namespace trex {

// The heads trex exports (transformers' task names; the seed's pipeline names map onto them).
enum class Task {
  kFeatureExtraction,
  kSequenceClassification,
  kTokenClassification,
  kQuestionAnswering,
  kMaskedLM,
  kCausalLM,  // text-generation: logits + KV cache (present.*), one graph for prefill and decode
  kSeq2SeqLM,  // text2text-generation (translation, summarization): encoder graph + merged decoder graph
};

std::string task_name(Task t);  // "feature-extraction", "text-classification", ...
// Accepts the seed's names (sentiment-analysis, ner) and the modern ones; nullopt when unknown.
std::optional<Task> parse_task(const std::string& name);
// The head that config.json's architectures[0] names ("BertForMaskedLM" → fill-mask), else feature-extraction.
Task default_task(const ModelConfig& config);
std::string known_task_names();  // for messages and --help

// A graph output as the architecture produced it.
struct GraphOutput {
  std::string name;  // transformers' field name: last_hidden_state, pooler_output, logits, start_logits, ...
  Value value;
  std::vector<Dim> dims;
};

// Everything a builder needs. Dimensions of the inputs are `batch`/`seq` (symbolic unless a static shape is set).
struct BuildContext {
  const ModelConfig& config;
  const WeightStore& weights;
  GraphBuilder& graph;
  Task task;
  Dim batch;
  Dim seq;
  // The graph of the model's set being built (Architecture::graphs); empty for single-graph models.
  std::string part;
};

// What an architecture supports beyond its tasks, checked before any weight is read so that an unsupported
// combination is a clear usage error rather than a failure deep in a lowering.
struct Capabilities {
  bool torchscript = true;   // --format torchscript
  bool optimize = true;      // --optimize (ONNX Runtime fused lowering)
  bool quantize = true;      // --quantize
  bool static_shape = true;  // --static-shape
  static Capabilities Encoder() { return {}; }
  // Decoders (KV cache): ONNX, plain and fused (GroupQueryAttention) graphs, int8/int4 weights; no TorchScript,
  // no static shapes.
  static Capabilities Decoder() { return {false, true, true, false}; }
  // Encoder-decoders: a set of ONNX graphs, plain and fused norms, int8/int4 weights; no TorchScript or static
  // shapes.
  static Capabilities Seq2Seq() { return {false, true, true, false}; }
};

struct Architecture {
  std::vector<std::string> model_types;  // config.json model_type values handled
  std::set<Task> tasks;
  // Builds inputs, the encoder, the head and returns the outputs. Throws InputError for missing or mis-shaped
  // weights (all of them listed at once) and unsupported config values.
  std::vector<GraphOutput> (*build)(BuildContext& ctx);
  Capabilities capabilities = Capabilities::Encoder();
  // A model is a set of graphs: the file stems, in build order, each built by `build` with ctx.part set
  // (encoder-decoders: encoder_model, decoder_model_merged, optimum's names). Empty: one graph, OUTPUT itself.
  std::vector<std::string> graphs = {};
};

// nullptr when no architecture handles model_type.
const Architecture* find_architecture(const std::string& model_type);
std::vector<std::string> supported_model_types();

}  // namespace trex
