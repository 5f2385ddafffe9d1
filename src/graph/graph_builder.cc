#include "graph/graph_builder.h"

#include <cstring>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace trex {

int onnx_elem_type(DType t) {
  switch (t) {
    case DType::kF32: return onnx::TensorProto::FLOAT;
    case DType::kF16: return onnx::TensorProto::FLOAT16;
    case DType::kBF16: return onnx::TensorProto::BFLOAT16;
    case DType::kF64: return onnx::TensorProto::DOUBLE;
    case DType::kI64: return onnx::TensorProto::INT64;
    case DType::kI32: return onnx::TensorProto::INT32;
    case DType::kI16: return onnx::TensorProto::INT16;
    case DType::kI8: return onnx::TensorProto::INT8;
    case DType::kU8: return onnx::TensorProto::UINT8;
    case DType::kBool: return onnx::TensorProto::BOOL;
  }
  throw std::logic_error("unknown dtype");
}

GraphBuilder::GraphBuilder(int opset, std::string graph_name, Lowering lowering) : opset_(opset), lowering_(lowering) {
  model_.proto.mutable_graph()->set_name(std::move(graph_name));
}

GraphBuilder::Scope::Scope(GraphBuilder* g, const std::string& name) : g_(g) { g_->scopes_.push_back(name); }
GraphBuilder::Scope::~Scope() { g_->scopes_.pop_back(); }

std::string GraphBuilder::scope_prefix() const {
  std::string p;
  for (const auto& s : scopes_) p += "/" + s;
  return p;
}

std::string GraphBuilder::node_name(const std::string& op_type) {
  std::string base = scope_prefix() + "/" + op_type;
  int n = name_counts_[base]++;
  return n == 0 ? base : base + "_" + std::to_string(n);
}

static void set_dims(onnx::ValueInfoProto* vi, DType dtype, const std::vector<Dim>& dims) {
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx_elem_type(dtype));
  auto* shape = tt->mutable_shape();
  for (const auto& d : dims) {
    auto* dim = shape->add_dim();
    if (d.symbol.empty())
      dim->set_dim_value(d.value);
    else
      dim->set_dim_param(d.symbol);
  }
}

const char* sample_kind_name(InputSample::Kind k) {
  switch (k) {
    case InputSample::kAuto: return "auto";
    case InputSample::kIds: return "ids";
    case InputSample::kMask: return "mask";
    case InputSample::kPositions: return "positions";
    case InputSample::kState: return "state";
    case InputSample::kCacheFlag: return "cache_flag";
  }
  return "auto";
}

Value GraphBuilder::input(const std::string& name, DType dtype, const std::vector<Dim>& dims, InputSample sample) {
  if (sample.kind != InputSample::kAuto) samples_.emplace_back(name, sample);
  set_dims(graph().add_input(), dtype, dims);
  graph().mutable_input(graph().input_size() - 1)->set_name(name);
  return name;
}

void GraphBuilder::output(const Value& value, const std::string& name, DType dtype, const std::vector<Dim>& dims) {
  Value v = value;
  if (auto r = renamed_.find(v); r != renamed_.end()) {
    v = r->second;  // already a graph output: the second name goes through an Identity
  } else if (v != name) {
    // The node producing the value gets the public name as its output (consumers follow), so that ONNX Runtime
    // does not copy each output through an Identity at every run (logits, the KV cache). Values no node produces
    // (graph inputs, initializers) go through an Identity.
    auto& nodes = *graph().mutable_node();
    bool found = false;
    for (auto& producer : nodes)
      for (auto& out : *producer.mutable_output())
        if (out == v) {
          out = name;
          found = true;
        }
    if (found) {
      for (auto& consumer : nodes)
        for (auto& in : *consumer.mutable_input())
          if (in == v) in = name;
      renamed_[v] = name;
      v = name;
    }
  }
  if (v != name) {
    // Give the output its public name with an Identity so internal names stay hierarchical.
    auto* n = graph().add_node();
    n->set_op_type("Identity");
    n->set_name(node_name("Identity_" + name));
    n->add_input(v);
    n->add_output(name);
  }
  auto* vi = graph().add_output();
  vi->set_name(name);
  set_dims(vi, dtype, dims);
}

Value GraphBuilder::initializer(const std::string& name, TensorData data) {
  if (init_index_.count(name)) return name;
  init_index_[name] = model_.initializers.size();
  model_.initializers.push_back({name, std::move(data)});
  return name;
}

Value GraphBuilder::const_i64(const std::vector<int64_t>& values, bool scalar) {
  std::string key = scalar ? "i64s:" : "i64:";
  for (auto v : values) key += std::to_string(v) + ",";
  auto it = const_cache_.find(key);
  if (it != const_cache_.end()) return it->second;
  std::string name = "const_i64_" + std::to_string(const_cache_.size());
  Shape dims = scalar ? Shape{} : Shape{static_cast<int64_t>(values.size())};
  initializer(name, TensorData::from_vector(DType::kI64, dims, values));
  const_cache_[key] = name;
  return name;
}

Value GraphBuilder::const_f32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  std::string key = "f32:" + std::to_string(bits);
  auto it = const_cache_.find(key);
  if (it != const_cache_.end()) return it->second;
  std::string name = "const_f32_" + std::to_string(const_cache_.size());
  initializer(name, TensorData::from_vector(DType::kF32, {}, std::vector<float>{value}));
  const_cache_[key] = name;
  return name;
}

Value GraphBuilder::const_f32s(const std::vector<float>& values, const std::string& name) {
  std::string key = "f32s:" + name + ":";
  for (float v : values) key += std::to_string(v) + ",";
  auto it = const_cache_.find(key);
  if (it != const_cache_.end()) return it->second;
  std::string unique = name;
  for (int n = 1; init_index_.count(unique); ++n) unique = name + "_" + std::to_string(n);
  initializer(unique, TensorData::from_vector(DType::kF32, {static_cast<int64_t>(values.size())}, values));
  const_cache_[key] = unique;
  return unique;
}

std::vector<Value> GraphBuilder::node(const std::string& op_type, const std::vector<Value>& inputs,
                                      const std::vector<Attr>& attrs, int num_outputs, const std::string& domain) {
  auto* n = graph().add_node();
  n->set_op_type(op_type);
  if (!domain.empty()) n->set_domain(domain);
  if (domain == kMsDomain) uses_ms_domain_ = true;
  n->set_name(node_name(op_type));
  for (const auto& in : inputs) n->add_input(in);
  std::vector<Value> outs;
  for (int i = 0; i < num_outputs; ++i) {
    outs.push_back(n->name() + "_output_" + std::to_string(i));
    n->add_output(outs.back());
  }
  for (const auto& a : attrs) {
    auto* p = n->add_attribute();
    p->set_name(a.name);
    switch (a.kind) {
      case Attr::kInt:
        p->set_type(onnx::AttributeProto::INT);
        p->set_i(a.i);
        break;
      case Attr::kFloat:
        p->set_type(onnx::AttributeProto::FLOAT);
        p->set_f(a.f);
        break;
      case Attr::kInts:
        p->set_type(onnx::AttributeProto::INTS);
        for (auto v : a.ints) p->add_ints(v);
        break;
      case Attr::kString:
        p->set_type(onnx::AttributeProto::STRING);
        p->set_s(a.s);
        break;
    }
  }
  return outs;
}

Value GraphBuilder::cast(const Value& x, DType to) { return op("Cast", {x}, {Attr::Int("to", onnx_elem_type(to))}); }

Value GraphBuilder::gather(const Value& data, const Value& indices, int64_t axis) {
  return op("Gather", {data, indices}, {Attr::Int("axis", axis)});
}

Value GraphBuilder::reshape(const Value& x, const std::vector<int64_t>& shape) {
  return op("Reshape", {x, const_i64(shape)});
}

Value GraphBuilder::transpose(const Value& x, const std::vector<int64_t>& perm) {
  return op("Transpose", {x}, {Attr::Ints("perm", perm)});
}

Value GraphBuilder::softmax(const Value& x, int64_t axis) { return op("Softmax", {x}, {Attr::Int("axis", axis)}); }

Value GraphBuilder::unsqueeze(const Value& x, const std::vector<int64_t>& axes) {
  if (opset_ >= 13) return op("Unsqueeze", {x, const_i64(axes)});
  return op("Unsqueeze", {x}, {Attr::Ints("axes", axes)});
}

Value GraphBuilder::squeeze(const Value& x, const std::vector<int64_t>& axes) {
  if (opset_ >= 13) return op("Squeeze", {x, const_i64(axes)});
  return op("Squeeze", {x}, {Attr::Ints("axes", axes)});
}

Value GraphBuilder::reduce_mean(const Value& x, const std::vector<int64_t>& axes, bool keepdims) {
  if (opset_ >= 18) return op("ReduceMean", {x, const_i64(axes)}, {Attr::Int("keepdims", keepdims ? 1 : 0)});
  return op("ReduceMean", {x}, {Attr::Ints("axes", axes), Attr::Int("keepdims", keepdims ? 1 : 0)});
}

Value GraphBuilder::reduce_sum(const Value& x, const std::vector<int64_t>& axes, bool keepdims) {
  if (opset_ >= 13) return op("ReduceSum", {x, const_i64(axes)}, {Attr::Int("keepdims", keepdims ? 1 : 0)});
  return op("ReduceSum", {x}, {Attr::Ints("axes", axes), Attr::Int("keepdims", keepdims ? 1 : 0)});
}

Value GraphBuilder::slice(const Value& x, const Value& starts, const Value& ends, const Value& axes) {
  return op("Slice", {x, starts, ends, axes});
}

Value GraphBuilder::concat(const std::vector<Value>& xs, int64_t axis) {
  return op("Concat", xs, {Attr::Int("axis", axis)});
}

Value GraphBuilder::less_or_equal(const Value& a, const Value& b) {
  if (opset_ >= 12) return op("LessOrEqual", {a, b});
  return op("Not", {op("Greater", {a, b})});
}

Value GraphBuilder::slice_axis(const Value& x, int64_t axis, int64_t start, int64_t end) {
  return slice(x, const_i64({start}), const_i64({end}), const_i64({axis}));
}

Value GraphBuilder::dim(const Value& x, int64_t axis) {
  return slice(shape(x), const_i64({axis}), const_i64({axis + 1}), const_i64({0}));
}

Value GraphBuilder::layer_norm(const Value& x, const Value& scale, const Value& bias, float epsilon) {
  if (opset_ >= 17) {
    return op("LayerNormalization", {x, scale, bias}, {Attr::Int("axis", -1), Attr::Float("epsilon", epsilon)});
  }
  // Before opset 17: (x - mean) / sqrt(var + eps) * scale + bias, with the population variance.
  Value mean = reduce_mean(x, {-1});
  Value centered = sub(x, mean);
  Value var = reduce_mean(mul(centered, centered), {-1});
  Value denom = op("Sqrt", {add(var, const_f32(epsilon))});
  return add(mul(div(centered, denom), scale), bias);
}

Model GraphBuilder::finish(const std::string& producer_version) {
  model_.proto.set_ir_version(opset_ >= 21 ? 10 : opset_ >= 19 ? 9 : opset_ >= 15 ? 8 : opset_ >= 12 ? 7 : 6);
  model_.proto.set_producer_name("trex");
  model_.proto.set_producer_version(producer_version);
  auto* os = model_.proto.add_opset_import();
  os->set_domain("");
  os->set_version(opset_);
  if (uses_ms_domain_) {
    auto* ms = model_.proto.add_opset_import();
    ms->set_domain(kMsDomain);
    ms->set_version(1);
  }
  if (!samples_.empty()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [name, s] : samples_) {
      nlohmann::json e = {{"sample", sample_kind_name(s.kind)}};
      if (s.kind == InputSample::kIds) e["limit"] = s.limit;
      if (s.kind == InputSample::kMask) e["padding"] = s.pad_left ? "left" : "right";
      if (!s.fed_by.empty()) e["fed_by"] = s.fed_by;
      j[name] = e;
    }
    auto* p = model_.proto.add_metadata_props();
    p->set_key(kInputsMetadataKey);
    p->set_value(j.dump());
  }
  Model out = std::move(model_);
  model_ = Model{};
  return out;
}

}  // namespace trex
