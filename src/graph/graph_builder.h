// Builds an ONNX graph with typed op helpers, opset-aware lowering, deterministic hierarchical node names
// (`/encoder/layer.3/attention/MatMul`) and each constant stored once.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "graph/model.h"

namespace trex {

using Value = std::string;  // name of a value in the graph

// A dimension of a graph input/output: fixed (>= 0) or symbolic (name).
struct Dim {
  int64_t value = -1;
  std::string symbol;
  Dim(int64_t v) : value(v) {}  // NOLINT: implicit by design
  Dim(const char* s) : symbol(s) {}  // NOLINT
  Dim(std::string s) : symbol(std::move(s)) {}  // NOLINT
};

// How a check (load check, verify, comparisons) fills a graph input with sample values. Declared by the
// architecture with the input and stored in the model's metadata (`trex.inputs`), so the runtime code reads the
// declaration instead of guessing from input names.
struct InputSample {
  enum Kind {
    kAuto,       // not declared: name heuristics (other exporters' models)
    kIds,        // uniform integers in [0, limit)
    kMask,       // 0/1 attention mask; the last row padded (left or right)
    kPositions,  // position ids as transformers derives them from the mask (cumsum - 1, pads 1)
    kState,      // a cache tensor: standard normal, or the previous step's `fed_by` output
    kCacheFlag,  // bool [1]: true when the cache inputs hold a past (optimum's use_cache_branch)
  } kind = kAuto;
  int64_t limit = 0;
  bool pad_left = false;
  std::string fed_by;
  static InputSample Ids(int64_t limit) { return {kIds, limit, false, {}}; }
  static InputSample Mask(bool pad_left) { return {kMask, 0, pad_left, {}}; }
  static InputSample Positions() { return {kPositions, 0, false, {}}; }
  static InputSample State(std::string fed_by) { return {kState, 0, false, std::move(fed_by)}; }
  static InputSample CacheFlag() { return {kCacheFlag, 0, false, {}}; }
};
const char* sample_kind_name(InputSample::Kind k);
// The metadata key holding the declarations as JSON ({"input": {"sample": "ids", "limit": 99}, ...}).
constexpr const char* kInputsMetadataKey = "trex.inputs";

// How layer helpers turn into ops: standard ONNX only (portable, the reference), or ONNX Runtime's fused
// com.microsoft ops (Attention, SkipLayerNormalization, EmbedLayerNormalization, BiasGelu, FastGelu).
enum class Lowering { kPlain, kOrt };

class GraphBuilder {
 public:
  explicit GraphBuilder(int opset, std::string graph_name = "trex", Lowering lowering = Lowering::kPlain);

  int opset() const { return opset_; }
  Lowering lowering() const { return lowering_; }
  bool fused() const { return lowering_ == Lowering::kOrt; }
  // With the ORT lowering: replace exact GELU by FastGelu's tanh approximation (changes results slightly).
  void set_gelu_approximation(bool on) { gelu_approximation_ = on; }
  bool gelu_approximation() const { return gelu_approximation_; }
  // The graph is built to be quantized (export --quantize): an encoder-decoder's tied head stays Gemm transB
  // rather than MatMul over a Transpose of the table (the quantizers read both forms alike; the quantized
  // graphs keep the form they were proven with).
  void set_quantization_source(bool on) { quantization_source_ = on; }
  bool quantization_source() const { return quantization_source_; }
  static constexpr const char* kMsDomain = "com.microsoft";

  // Hierarchical naming: `auto s = g.scope("encoder");` makes following nodes `/encoder/...` until s dies.
  class Scope {
   public:
    Scope(GraphBuilder* g, const std::string& name);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    GraphBuilder* g_;
  };
  [[nodiscard]] Scope scope(const std::string& name) { return Scope(this, name); }

  // Graph interface.
  Value input(const std::string& name, DType dtype, const std::vector<Dim>& dims, InputSample sample = {});
  const std::vector<std::pair<std::string, InputSample>>& input_samples() const { return samples_; }
  void output(const Value& value, const std::string& name, DType dtype, const std::vector<Dim>& dims);

  // An initializer with an explicit name (weights keep their checkpoint names). Returns its value name.
  // Registering the same name twice returns the first one.
  Value initializer(const std::string& name, TensorData data);
  bool has_initializer(const std::string& name) const { return init_index_.count(name) != 0; }

  // Deduplicated constants.
  Value const_i64(const std::vector<int64_t>& values, bool scalar = false);
  Value const_f32(float value);  // scalar
  // A float32 1-D constant (rotary frequencies and other small tables computed at export), stored once by value.
  Value const_f32s(const std::vector<float>& values, const std::string& name);

  // A generic node; returns its outputs (named `<node>_output_<i>`).
  struct Attr {
    std::string name;
    enum Kind { kInt, kFloat, kInts, kString } kind;
    int64_t i = 0;
    float f = 0;
    std::vector<int64_t> ints;
    std::string s;
    static Attr Int(std::string n, int64_t v) { return {std::move(n), kInt, v, 0, {}, {}}; }
    static Attr Float(std::string n, float v) { return {std::move(n), kFloat, 0, v, {}, {}}; }
    static Attr Ints(std::string n, std::vector<int64_t> v) { return {std::move(n), kInts, 0, 0, std::move(v), {}}; }
    static Attr String(std::string n, std::string v) { return {std::move(n), kString, 0, 0, {}, std::move(v)}; }
  };
  std::vector<Value> node(const std::string& op_type, const std::vector<Value>& inputs, const std::vector<Attr>& attrs = {},
                          int num_outputs = 1, const std::string& domain = "");
  Value op(const std::string& op_type, const std::vector<Value>& inputs, const std::vector<Attr>& attrs = {}) {
    return node(op_type, inputs, attrs, 1)[0];
  }

  // Typed helpers (standard ONNX; lowered according to the opset).
  Value matmul(const Value& a, const Value& b) { return op("MatMul", {a, b}); }
  Value add(const Value& a, const Value& b) { return op("Add", {a, b}); }
  Value sub(const Value& a, const Value& b) { return op("Sub", {a, b}); }
  Value mul(const Value& a, const Value& b) { return op("Mul", {a, b}); }
  Value div(const Value& a, const Value& b) { return op("Div", {a, b}); }
  Value tanh(const Value& x) { return op("Tanh", {x}); }
  Value relu(const Value& x) { return op("Relu", {x}); }
  Value cast(const Value& x, DType to);
  Value shape(const Value& x) { return op("Shape", {x}); }
  Value gather(const Value& data, const Value& indices, int64_t axis = 0);
  Value reshape(const Value& x, const std::vector<int64_t>& shape);  // constant target shape (0 = copy, -1 = infer)
  Value transpose(const Value& x, const std::vector<int64_t>& perm);
  Value softmax(const Value& x, int64_t axis);  // axis must be the last axis for opset < 13
  Value unsqueeze(const Value& x, const std::vector<int64_t>& axes);
  Value squeeze(const Value& x, const std::vector<int64_t>& axes);
  Value reduce_mean(const Value& x, const std::vector<int64_t>& axes, bool keepdims = true);
  Value reduce_sum(const Value& x, const std::vector<int64_t>& axes, bool keepdims = true);
  Value slice(const Value& x, const Value& starts, const Value& ends, const Value& axes);
  Value concat(const std::vector<Value>& xs, int64_t axis);
  Value where(const Value& cond, const Value& a, const Value& b) { return op("Where", {cond, a, b}); }
  Value less_or_equal(const Value& a, const Value& b);  // LessOrEqual from opset 12, Not(Greater) before
  Value greater(const Value& a, const Value& b) { return op("Greater", {a, b}); }
  Value logical_and(const Value& a, const Value& b) { return op("And", {a, b}); }
  // x[..., start:end] along `axis`, constant bounds.
  Value slice_axis(const Value& x, int64_t axis, int64_t start, int64_t end);
  // Dimension `axis` of x's shape as a 1-D int64 tensor [1].
  Value dim(const Value& x, int64_t axis);
  Value range(const Value& start, const Value& limit, const Value& delta) { return op("Range", {start, limit, delta}); }
  // LayerNormalization over the last axis (native op from opset 17, decomposed before).
  Value layer_norm(const Value& x, const Value& scale, const Value& bias, float epsilon);

  Model finish(const std::string& producer_version);
  onnx::GraphProto& graph() { return *model_.proto.mutable_graph(); }

 private:
  std::string node_name(const std::string& op_type);
  std::string scope_prefix() const;

  int opset_;
  Lowering lowering_;
  bool gelu_approximation_ = false;
  bool quantization_source_ = false;
  bool uses_ms_domain_ = false;
  Model model_;
  std::vector<std::string> scopes_;
  std::map<std::string, int> name_counts_;
  std::map<std::string, size_t> init_index_;
  std::map<std::string, Value> const_cache_;
  std::map<Value, Value> renamed_;  // internal value → the graph output name it was given
  std::vector<std::pair<std::string, InputSample>> samples_;
};

}  // namespace trex
