#include "passes/quantize_embeddings.h"

#include "passes/quantize.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "passes/quantize_int4.h"
#include "passes/quantize_reference.h"
#include "util/error.h"

namespace trex {

namespace {

constexpr int kInt8Zero = 128;   // GatherBlockQuantized's default zero point for 8 bits
constexpr float kInt8Max = 127;  // symmetric codes 1..255

std::vector<float> floats(const TensorData& t) {
  std::vector<float> v(t.nbytes() / sizeof(float));
  t.copy_to(reinterpret_cast<std::byte*>(v.data()));
  return v;
}

}  // namespace

bool quantize_table_int8(const float* table, int64_t rows, int64_t cols, int64_t block, std::vector<uint8_t>* codes,
                         std::vector<float>* scales) {
  const int64_t blocks = cols / block;
  codes->assign(static_cast<size_t>(rows * cols), kInt8Zero);
  scales->assign(static_cast<size_t>(rows * blocks), 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* x = table + r * cols + b * block;
      // 1. The largest magnitude of the block (NaN / infinity: not quantizable).
      float amax = 0.0f;
      for (int64_t j = 0; j < block; ++j) {
        if (!std::isfinite(x[j])) return false;
        amax = std::max(amax, std::fabs(x[j]));
      }
      // 2. It maps to code 128 ± 127; an all-zero block keeps scale 0 and code 128.
      const float scale = amax / kInt8Max;
      (*scales)[static_cast<size_t>(r * blocks + b)] = scale;
      if (scale == 0.0f) continue;
      // 3. Codes: round half to even, clamped (the division can land a hair outside ±127).
      for (int64_t j = 0; j < block; ++j) {
        const float v = std::clamp(round_half_even(x[j] / scale), -kInt8Max, kInt8Max);
        (*codes)[static_cast<size_t>(r * cols + b * block + j)] = static_cast<uint8_t>(static_cast<int>(v) + kInt8Zero);
      }
    }
  return true;
}

// ONNX Runtime's fused EmbedLayerNormalization (an --optimize encoder) takes its tables as float inputs, where
// they cannot be quantized. When its big word table is worth quantizing and its mask_index output is unused, the
// node is expanded back into what it computes, standard ONNX (opset >= 17): LayerNormalization(word[ids] +
// position[position_ids or 0..S-1] (+ segment[segment_ids])), so the Gathers below quantize its tables.
std::vector<onnx::NodeProto> expand_embed_layer_norm(const onnx::GraphProto& g, int64_t opset, const Model& in,
                                                     const std::unordered_map<std::string, size_t>& init_index,
                                                     const EmbeddingPolicy& policy, UniqueNames& fresh) {
  std::unordered_set<std::string> consumed;
  for (const auto& node : g.node())
    for (const auto& x : node.input()) consumed.insert(x);
  for (const auto& o : g.output()) consumed.insert(o.name());
  std::vector<onnx::NodeProto> nodes;
  for (const auto& node : g.node()) {
    const bool eln = node.domain() == "com.microsoft" && node.op_type() == "EmbedLayerNormalization" &&
                     node.input_size() >= 7 && node.output_size() >= 1;
    auto word = eln ? init_index.find(node.input(2)) : init_index.end();
    const bool worth = word != init_index.end() && in.initializers[word->second].data.dtype() == DType::kF32 &&
                       in.initializers[word->second].data.dims().size() == 2 &&
                       in.initializers[word->second].data.dims()[0] * in.initializers[word->second].data.dims()[1] >=
                           policy.min_elements;
    const bool mask_index_used = node.output_size() >= 2 && !node.output(1).empty() && consumed.count(node.output(1));
    if (!eln || !worth || mask_index_used || opset < 17) {
      nodes.push_back(node);
      continue;
    }
    auto input = [&](int i) { return i < node.input_size() ? node.input(i) : std::string(); };
    const std::string base = node.name().empty() ? node.output(0) : node.name();
    auto add = [&](const std::string& op, std::vector<std::string> ins, const std::string& out_hint) {
      onnx::NodeProto n;
      n.set_op_type(op);
      n.set_name(fresh(base + "/" + op));
      for (const auto& x : ins) n.add_input(x);
      const std::string out = fresh(base + "/" + out_hint);
      n.add_output(out);
      nodes.push_back(n);
      return out;
    };
    auto constant = [&](int64_t v) {
      onnx::NodeProto n;
      n.set_op_type("Constant");
      n.set_name(fresh(base + "/Constant"));
      const std::string out = fresh(base + "/const_" + std::to_string(v));
      n.add_output(out);
      auto* a = n.add_attribute();
      a->set_name("value");
      a->set_type(onnx::AttributeProto::TENSOR);
      a->mutable_t()->set_data_type(onnx::TensorProto::INT64);
      a->mutable_t()->add_int64_data(v);
      nodes.push_back(n);
      return out;
    };
    std::string x = add("Gather", {input(2), input(0)}, "word");
    std::string positions = input(8);
    if (positions.empty()) {
      const std::string one = constant(1);
      const std::string seq = add("Gather", {add("Shape", {input(0)}, "shape"), one}, "seq_len");
      positions = add("Range", {constant(0), seq, one}, "positions");
    }
    x = add("Add", {x, add("Gather", {input(3), positions}, "position")}, "sum");
    if (!input(1).empty() && !input(4).empty())
      x = add("Add", {x, add("Gather", {input(4), input(1)}, "segment")}, "sum");
    onnx::NodeProto ln;
    ln.set_op_type("LayerNormalization");
    ln.set_name(fresh(base + "/LayerNormalization"));
    ln.add_input(x);
    ln.add_input(input(5));
    ln.add_input(input(6));
    ln.add_output(node.output(0));
    for (const auto& a : node.attribute())
      if (a.name() == "epsilon") *ln.add_attribute() = a;
    add_int_attr(&ln, "axis", -1);
    nodes.push_back(ln);
  }
  return nodes;
}

Model quantize_embeddings(const Model& in, const EmbeddingPolicy& policy, EmbeddingReport* report_out) {
  if (policy.bits != 4 && policy.bits != 8) throw UsageError("quantize: embedding bits must be 4 or 8");
  check_int4_params({policy.block_size, true, true});  // the same block-size rule
  EmbeddingReport report;
  const onnx::GraphProto& g = in.proto.graph();
  std::unordered_map<std::string, size_t> init_index;
  for (size_t i = 0; i < in.initializers.size(); ++i) init_index[in.initializers[i].name] = i;
  UniqueNames fresh(in);
  int64_t opset = 0;
  for (const auto& o : in.proto.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") opset = o.version();
  const std::vector<onnx::NodeProto> nodes = expand_embed_layer_norm(g, opset, in, init_index, policy, fresh);
  std::unordered_map<std::string, int> uses;
  for (const auto& node : nodes)
    for (const auto& x : node.input())
      if (!x.empty()) ++uses[x];
  std::unordered_set<std::string> outputs_and_inputs;
  for (const auto& o : g.output()) outputs_and_inputs.insert(o.name());
  for (const auto& v : g.input()) outputs_and_inputs.insert(v.name());
  Model out;
  out.proto = in.proto;
  onnx::GraphProto* og = out.proto.mutable_graph();
  og->clear_node();
  std::unordered_set<std::string> replaced;
  std::vector<Initializer> new_inits;
  for (const auto& node : nodes) {
    const bool std_domain = node.domain().empty() || node.domain() == "ai.onnx";
    const bool gather = std_domain && node.op_type() == "Gather" && node.input_size() == 2;
    // A table read through Slice (position embeddings for the first `seq` positions): DequantizeLinear (per
    // row, uint8 around 128) -> Slice, standard ONNX; the whole small table is dequantized per run.
    const bool slice = std_domain && node.op_type() == "Slice" && opset >= 13 && init_index.count(node.input(0)) &&
                       uses[node.input(0)] == 1 && !outputs_and_inputs.count(node.input(0));
    if (slice) {
      const TensorData& t = in.initializers[init_index.at(node.input(0))].data;
      const int64_t rows = t.dims().size() == 2 ? t.dims()[0] : 0, cols = t.dims().size() == 2 ? t.dims()[1] : 0;
      std::vector<uint8_t> data;
      std::vector<float> scales;
      if (t.dtype() == DType::kF32 && rows * cols >= policy.min_elements &&
          quantize_table_int8(floats(t).data(), rows, cols, cols, &data, &scales)) {
        const std::string& table = node.input(0);
        const std::string qname = fresh(table + "_Q8"), sname = fresh(table + "_scale"), zname = fresh(table + "_zero_point");
        const std::string deq = fresh(table + "_dequantized");
        new_inits.push_back({qname, TensorData::from_vector(DType::kU8, {rows, cols}, data)});
        new_inits.push_back({sname, TensorData::from_vector(DType::kF32, {rows}, scales)});
        new_inits.push_back({zname, TensorData::from_vector(DType::kU8, {rows}, std::vector<uint8_t>(static_cast<size_t>(rows), 128))});
        onnx::NodeProto dq;
        dq.set_op_type("DequantizeLinear");
        dq.set_name(fresh(table + "_DequantizeLinear"));
        dq.add_input(qname);
        dq.add_input(sname);
        dq.add_input(zname);
        dq.add_output(deq);
        add_int_attr(&dq, "axis", 0);
        *og->add_node() = dq;
        onnx::NodeProto sl = node;
        sl.set_input(0, deq);
        *og->add_node() = sl;
        replaced.insert(table);
        report.quantized.push_back({node.name(), table, rows, cols, cols});
        continue;
      }
    }
    if (!gather) {
      *og->add_node() = node;
      continue;
    }
    const std::string& table = node.input(0);
    auto keep = [&](const std::string& why) {
      report.skipped.emplace_back(table, why);
      *og->add_node() = node;
    };
    auto it = init_index.find(table);
    if (it == init_index.end()) {
      *og->add_node() = node;  // not a constant table: nothing to say
      continue;
    }
    const TensorData& t = in.initializers[it->second].data;
    int64_t axis = 0;
    for (const auto& a : node.attribute())
      if (a.name() == "axis") axis = a.i();
    if (t.dtype() != DType::kF32 || t.dims().size() != 2 || axis != 0) {
      keep("not a 2-D float table gathered on axis 0");
      continue;
    }
    const int64_t rows = t.dims()[0], cols = t.dims()[1];
    if (rows * cols < policy.min_elements) {
      keep("fewer than " + std::to_string(policy.min_elements) + " values");
      continue;
    }
    int64_t block = policy.block_size;  // the largest power of two <= the policy's that divides the width
    while (block > 16 && cols % block != 0) block /= 2;
    if (cols % block != 0) {
      keep("width " + std::to_string(cols) + " is not a multiple of 16");
      continue;
    }
    if (uses[table] != 1 || outputs_and_inputs.count(table)) {
      keep("the table has other users (a tied head?)");
      continue;
    }
    const std::vector<float> w = floats(t);
    std::vector<uint8_t> data;
    std::vector<float> scales;
    if (policy.bits == 8) {
      if (!quantize_table_int8(w.data(), rows, cols, block, &data, &scales)) {
        keep("holds NaN or infinity");
        continue;
      }
    } else {
      // Rows of the table are the int4 quantizer's output channels: blocks run along H, as MatMulNBits' run
      // along K for an N×K weight.
      Int4Weight q;
      if (!quantize_int4(w.data(), cols, rows, /*transposed=*/true, {block, true, true}, &q)) {
        keep("holds NaN or infinity");
        continue;
      }
      data = pack_int4_codes(q);
      scales = std::move(q.scales);
    }
    const std::string qname = fresh(table + (policy.bits == 8 ? "_Q8" : "_Q4"));
    const std::string sname = fresh(table + "_scales");
    new_inits.push_back({qname, TensorData::from_vector(DType::kU8, {rows, policy.bits == 8 ? cols : cols / 2}, data)});
    new_inits.push_back({sname, TensorData::from_vector(DType::kF32, {rows, cols / block}, scales)});
    onnx::NodeProto q;
    q.set_op_type("GatherBlockQuantized");
    q.set_domain("com.microsoft");
    q.set_name(fresh((node.name().empty() ? node.output(0) : node.name()) + "_quant"));
    q.add_input(qname);
    q.add_input(node.input(1));
    q.add_input(sname);
    q.add_output(node.output(0));
    add_int_attr(&q, "bits", policy.bits);
    add_int_attr(&q, "block_size", block);
    add_int_attr(&q, "gather_axis", 0);
    add_int_attr(&q, "quantize_axis", 1);
    *og->add_node() = q;
    replaced.insert(table);
    report.quantized.push_back({node.name(), table, rows, cols, block});
  }
  for (const auto& init : in.initializers)
    if (!replaced.count(init.name)) out.initializers.push_back(init);
  for (auto& i : new_inits) out.initializers.push_back(std::move(i));
  if (!report.quantized.empty()) import_ms_domain(&out.proto);
  if (report_out) *report_out = std::move(report);
  return out;
}

}  // namespace trex
