#include "passes/half.h"

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "util/error.h"

namespace trex {

uint16_t float_to_half_clamped(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7bffu);  // ≥ 65520 (rounds past max) or inf: ±65504
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to zero
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14 - (exp - 127) + 13 - 1 ... see below
    // value = mant * 2^(e-150); half subnormal unit = 2^-24 → bits = mant * 2^(e-126) = mant >> (126 - e)
    uint32_t bits = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (bits & 1u))) ++bits;
    return static_cast<uint16_t>(sign | bits);
  }
  uint32_t bits = ((abs - 0x38000000u) >> 13);  // rebias exponent 127 → 15
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (bits & 1u))) ++bits;
  return static_cast<uint16_t>(sign | bits);
}

namespace {

constexpr int kF32 = onnx::TensorProto::FLOAT;
constexpr int kF16 = onnx::TensorProto::FLOAT16;

// Ops computed in float32 whatever their inputs (precision: normalizations, softmax, reductions, rotary).
const std::set<std::string> kSeeds = {"LayerNormalization", "Softmax", "ReduceMean", "Pow", "Cos", "Sin",
                                      "ReduceSum", "Exp", "Log"};
// Ops that stay in float32 when every non-constant float input comes from float32 ops.
const std::set<std::string> kFollow = {"Add",   "Sub",       "Mul",     "Div",    "Sqrt",  "Reciprocal",
                                       "Neg",   "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Expand",
                                       "Concat", "Slice",    "Gather",  "Identity", "Cos",  "Sin"};

void convert_tensor_proto(onnx::TensorProto& t) {
  if (t.data_type() != kF32) return;
  std::vector<float> v;
  if (t.has_raw_data()) {
    v.resize(t.raw_data().size() / 4);
    std::memcpy(v.data(), t.raw_data().data(), v.size() * 4);
  } else {
    v.assign(t.float_data().begin(), t.float_data().end());
  }
  std::string raw(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t h = float_to_half_clamped(v[i]);
    std::memcpy(raw.data() + 2 * i, &h, 2);
  }
  t.clear_float_data();
  t.set_raw_data(raw);
  t.set_data_type(kF16);
}

}  // namespace

HalfReport convert_to_fp16(Model& model) {
  HalfReport rep;
  onnx::GraphProto& g = *model.proto.mutable_graph();
  // Element types of every value, propagated through the (topologically ordered) nodes.
  std::map<std::string, int> type;
  for (const auto& i : g.input()) type[i.name()] = i.type().tensor_type().elem_type();
  std::map<std::string, size_t> init_index;
  for (size_t k = 0; k < model.initializers.size(); ++k) {
    init_index[model.initializers[k].name] = k;
    type[model.initializers[k].name] = onnx_elem_type(model.initializers[k].data.dtype());
  }
  for (const auto& n : g.node()) {
    for (const auto& a : n.attribute())
      if (a.type() == onnx::AttributeProto::GRAPH || a.type() == onnx::AttributeProto::GRAPHS)
        throw UsageError("--dtype fp16: graphs with subgraphs (" + n.op_type() + ") are not supported");
    auto in_type = [&](int k) {
      if (k >= n.input_size() || n.input(k).empty()) return 0;
      auto it = type.find(n.input(k));
      return it == type.end() ? 0 : it->second;
    };
    int t = in_type(0);
    const std::string& op = n.op_type();
    if (op == "Cast") {
      for (const auto& a : n.attribute())
        if (a.name() == "to") t = static_cast<int>(a.i());
    } else if (op == "Shape" || op == "Size" || op == "NonZero" || op == "ArgMax" || op == "ArgMin") {
      t = onnx::TensorProto::INT64;
    } else if (op == "Equal" || op == "Less" || op == "LessOrEqual" || op == "Greater" || op == "GreaterOrEqual" ||
               op == "Not" || op == "And" || op == "Or" || op == "Xor" || op == "IsNaN" || op == "IsInf") {
      t = onnx::TensorProto::BOOL;
    } else if (op == "Constant") {
      t = 0;
      for (const auto& a : n.attribute())
        if (a.name() == "value") t = a.t().data_type();
    } else if (op == "ConstantOfShape") {
      t = kF32;
      for (const auto& a : n.attribute())
        if (a.name() == "value") t = a.t().data_type();
    } else if (op == "Where") {
      t = in_type(1);
    }
    for (const auto& o : n.output()) type[o] = t;
  }
  auto is_float = [&](const std::string& v) {
    auto it = type.find(v);
    return it != type.end() && it->second == kF32;
  };
  // Constants: initializers and Constant nodes (their type is decided by their consumers).
  std::set<std::string> constants;
  for (const auto& i : model.initializers) constants.insert(i.name);
  for (const auto& n : g.node())
    if (n.op_type() == "Constant")
      for (const auto& o : n.output()) constants.insert(o);

  // Float32 region.
  std::set<std::string> f32_values;  // non-constant float values computed in float32 (region outputs, inputs)
  for (const auto& i : g.input())
    if (is_float(i.name())) f32_values.insert(i.name());
  std::set<std::string> region_out;  // outputs of float32 ops (graph inputs do not pull ops into the region)
  std::vector<bool> region(static_cast<size_t>(g.node_size()), false);
  for (int k = 0; k < g.node_size(); ++k) {
    const auto& n = g.node(k);
    bool r = false;
    if (kSeeds.count(n.op_type())) {
      r = true;
    } else if (n.op_type() == "Cast") {
      r = is_float(n.output(0)) && !is_float(n.input(0));  // int → float (positions, masks): exact in float32
    } else if (kFollow.count(n.op_type())) {
      bool any = false, all = true;
      for (const auto& in : n.input()) {
        if (in.empty() || !is_float(in) || constants.count(in)) continue;
        const bool from_region = region_out.count(in) > 0;
        any = any || from_region;
        all = all && from_region;
      }
      r = any && all;
    }
    region[static_cast<size_t>(k)] = r;
    if (r) {
      ++rep.nodes_f32;
      for (const auto& o : n.output())
        if (is_float(o)) {
          f32_values.insert(o);
          region_out.insert(o);
        }
    }
  }
  // Which constants some float16 op reads (those become float16; read by float32 ops only: stay float32).
  std::set<std::string> const_f16;
  for (int k = 0; k < g.node_size(); ++k)
    if (!region[static_cast<size_t>(k)])
      for (const auto& in : g.node(k).input())
        if (constants.count(in) && is_float(in)) const_f16.insert(in);
  // The stored type of each float value after the rewrite.
  auto stored = [&](const std::string& v) {
    if (constants.count(v)) return const_f16.count(v) ? kF16 : kF32;
    return f32_values.count(v) ? kF32 : kF16;
  };

  // Rewrite: constants, Cast targets, ConstantOfShape values; casts inserted where types meet.
  for (auto& init : model.initializers) {
    if (init.data.dtype() != DType::kF32 || !const_f16.count(init.name)) {
      if (init.data.dtype() == DType::kF32) ++rep.initializers_f32;
      continue;
    }
    auto src = std::make_shared<TensorData>(std::move(init.data));
    const size_t count = src->nbytes() / 4;
    init.data = TensorData::produced(DType::kF16, src->dims(), [src, count](std::byte* dst) {
      std::vector<float> tmp(count);
      src->copy_to(reinterpret_cast<std::byte*>(tmp.data()));
      for (size_t i = 0; i < count; ++i) {
        const uint16_t h = float_to_half_clamped(tmp[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
    });
    ++rep.initializers_f16;
  }
  std::vector<onnx::NodeProto> out_nodes;
  std::map<std::pair<std::string, int>, std::string> cast_of;  // (value, target) → cast output
  auto cast_to = [&](const std::string& v, int target) {
    auto key = std::make_pair(v, target);
    auto it = cast_of.find(key);
    if (it != cast_of.end()) return it->second;
    const std::string name = v + (target == kF16 ? "/to_fp16" : "/to_fp32");
    onnx::NodeProto c;
    c.set_op_type("Cast");
    c.set_name(name);
    c.add_input(v);
    c.add_output(name);
    auto* a = c.add_attribute();
    a->set_name("to");
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(target);
    out_nodes.push_back(std::move(c));
    ++rep.casts_added;
    return cast_of[key] = name;
  };
  for (int k = 0; k < g.node_size(); ++k) {
    onnx::NodeProto n = g.node(k);
    const bool r = region[static_cast<size_t>(k)];
    const int want = r ? kF32 : kF16;
    if (n.op_type() == "Constant") {
      for (auto& a : *n.mutable_attribute())
        if (a.name() == "value" && const_f16.count(n.output(0))) convert_tensor_proto(*a.mutable_t());
      out_nodes.push_back(std::move(n));
      continue;
    }
    for (int i = 0; i < n.input_size(); ++i) {
      const std::string in = n.input(i);
      if (in.empty() || !is_float(in)) continue;
      if (stored(in) != want) n.set_input(i, cast_to(in, want));
    }
    if (!r && n.op_type() == "Cast") {
      for (auto& a : *n.mutable_attribute())
        if (a.name() == "to" && a.i() == kF32) a.set_i(kF16);
    }
    if (!r && n.op_type() == "ConstantOfShape") {
      for (auto& a : *n.mutable_attribute())
        if (a.name() == "value") convert_tensor_proto(*a.mutable_t());
    }
    out_nodes.push_back(std::move(n));
  }
  // Outputs: float32 as before, cast at the end where computed in float16.
  std::map<std::string, std::string> renamed;
  for (const auto& o : g.output())
    if (is_float(o.name()) && stored(o.name()) == kF16) renamed[o.name()] = o.name() + "/fp16";
  if (!renamed.empty()) {
    for (auto& n : out_nodes) {
      for (int i = 0; i < n.input_size(); ++i)
        if (renamed.count(n.input(i))) n.set_input(i, renamed[n.input(i)]);
      for (int i = 0; i < n.output_size(); ++i)
        if (renamed.count(n.output(i))) n.set_output(i, renamed[n.output(i)]);
    }
    for (auto& [orig, tmp] : renamed) {
      onnx::NodeProto c;
      c.set_op_type("Cast");
      c.set_name(orig + "/to_fp32");
      c.add_input(tmp);
      c.add_output(orig);
      auto* a = c.add_attribute();
      a->set_name("to");
      a->set_type(onnx::AttributeProto::INT);
      a->set_i(kF32);
      out_nodes.push_back(std::move(c));
      ++rep.casts_added;
    }
  }
  // Casts were appended right where first needed: keep the node list topologically ordered.
  g.clear_node();
  for (auto& n : out_nodes) *g.add_node() = std::move(n);
  g.clear_value_info();
  auto* md = model.proto.add_metadata_props();
  md->set_key("dtype");
  md->set_value("float16");
  return rep;
}

}  // namespace trex
