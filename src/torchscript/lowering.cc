// ONNX → TorchScript lowering. One TorchScript statement per ONNX node (or per fused group), so every
// architecture × head that build_model() produces is exported without a second description of the model.
//
// Values are tracked as one of:
//   tensor   — a TorchScript variable (or a parameter's attribute chain `self.bert.embeddings...`),
//   constant — a small int64/int32 or scalar float initializer (const_i64_*, const_f32_*), inlined as literals,
//   int list — a shape (`x.size()`), possibly sliced down to known elements (`x.size(1)`).
// Fusions (exact transformers equivalents, fewer interpreter steps):
//   MatMul(x, W.T) [+ Add(b)]                  → torch.linear(x, W, b)        (nn.Linear)
//   MatMul(x, Transpose(E, [1,0])) [+ Add(b)]  → torch.linear(x, D, b)        (tied decoder: D is a copy of E)
//   x/√2 → Erf → +1 → x·() → ·0.5              → torch.gelu(x)                (exact GELU)
//   LayerNormalization                         → torch.layer_norm
#include "torchscript/lowering.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "util/error.h"
#include "util/strings.h"

namespace trex::torchscript {

namespace {

std::string float_literal(double v) {
  if (std::isinf(v)) return v > 0 ? "float('inf')" : "float('-inf')";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

bool is_identifier(const std::string& s) {
  static const std::set<std::string> kKeywords = {
      "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
      "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
      "not", "or", "pass", "raise", "return", "try", "while", "with", "yield"};
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return !kKeywords.count(s);
}

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == '.') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

// `self.a.b` / `getattr(self.a, "0")` for a dotted module path.
std::string attribute_expr(const std::string& path) {
  std::string e = "self";
  for (const auto& c : split_dots(path)) e = is_identifier(c) ? e + "." + c : "getattr(" + e + ", \"" + c + "\")";
  return e;
}

// ONNX TensorProto element type → torch ScalarType code (TorchScript takes dtypes as ints).
int torch_dtype(int64_t onnx_type) {
  switch (onnx_type) {
    case onnx::TensorProto::UINT8: return 0;
    case onnx::TensorProto::INT8: return 1;
    case onnx::TensorProto::INT16: return 2;
    case onnx::TensorProto::INT32: return 3;
    case onnx::TensorProto::INT64: return 4;
    case onnx::TensorProto::FLOAT16: return 5;
    case onnx::TensorProto::FLOAT: return 6;
    case onnx::TensorProto::DOUBLE: return 7;
    case onnx::TensorProto::BOOL: return 11;
    case onnx::TensorProto::BFLOAT16: return 15;
    default: throw UsageError("TorchScript lowering: Cast to ONNX element type " + std::to_string(onnx_type) +
                              " is not supported");
  }
}
char dtype_kind(int64_t onnx_type) {
  switch (onnx_type) {
    case onnx::TensorProto::FLOAT16:
    case onnx::TensorProto::FLOAT:
    case onnx::TensorProto::DOUBLE:
    case onnx::TensorProto::BFLOAT16: return 'f';
    case onnx::TensorProto::BOOL: return 'b';
    default: return 'i';
  }
}

struct Val {
  enum Kind { kTensor, kInts, kFloat, kIntList } kind = kTensor;
  std::string expr;                 // kTensor: variable or attribute chain; kIntList: list expression
  char dtype = 'f';                 // kTensor: 'f' floating, 'i' integer, 'b' bool
  std::vector<int64_t> ints;        // kInts
  bool scalar = false;              // kInts: 0-d
  double f = 0;                     // kFloat
  std::vector<std::string> elems;   // kIntList: element expressions when known
  bool elems_known = false;
  std::string shape_of;             // kIntList from Shape(x): x
};

class Lowerer {
 public:
  Lowerer(const Model& model, Task task, const LowerOptions& options)
      : model_(model), task_(task), options_(options), graph_(model.proto.graph()) {}

  Program run();

 private:
  using Node = onnx::NodeProto;

  [[noreturn]] void unsupported(const Node& n, const std::string& why) const {
    throw UsageError("TorchScript lowering: node '" + n.name() + "' (" + n.op_type() + "): " + why);
  }

  std::string fresh() {
    std::string s = std::to_string(counter_++);
    s.insert(0, 1, 'v');
    return s;
  }
  void emit(const std::string& line) { lines_.push_back("    " + line); }

  const Val& val(const std::string& name);
  std::string tensor(const std::string& name, const Node& n);  // a tensor expression (constants materialized)
  std::string operand(const std::string& name, const Node& n);  // tensor expression or scalar literal
  std::string param(const std::string& init_name, const std::string& path_override = "");
  std::string register_param(const std::string& path, const TensorData* data, Shape shape, bool transpose);
  std::string module_path(const std::string& checkpoint_name) const;
  const Val& set_tensor(const std::string& name, const std::string& expr, char dtype);

  const Node* sole_consumer(const std::string& value) const {
    auto it = consumers_.find(value);
    if (it == consumers_.end() || it->second.size() != 1) return nullptr;
    return it->second[0];
  }
  bool is_param_init(const std::string& name) const {
    auto it = inits_.find(name);
    return it != inits_.end() && !is_const(*it->second);
  }
  static bool is_const(const Initializer& i) {
    const DType t = i.data.dtype();
    if (t == DType::kI64 || t == DType::kI32) return num_elements(i.data.dims()) <= 4096;
    return i.data.dims().empty() || i.name.rfind("const_", 0) == 0;
  }
  int64_t attr_int(const Node& n, const std::string& name, int64_t fallback) const {
    for (const auto& a : n.attribute())
      if (a.name() == name) return a.i();
    return fallback;
  }
  float attr_float(const Node& n, const std::string& name, float fallback) const {
    for (const auto& a : n.attribute())
      if (a.name() == name) return a.f();
    return fallback;
  }
  bool has_attr(const Node& n, const std::string& name) const {
    for (const auto& a : n.attribute())
      if (a.name() == name) return true;
    return false;
  }
  std::vector<int64_t> attr_ints(const Node& n, const std::string& name) const {
    for (const auto& a : n.attribute())
      if (a.name() == name) return {a.ints().begin(), a.ints().end()};
    return {};
  }
  // Axes from an attribute (old opsets) or a constant input (newer ones).
  std::vector<int64_t> axes_of(const Node& n, int input_index) {
    if (has_attr(n, "axes")) return attr_ints(n, "axes");
    if (n.input_size() > input_index && !n.input(input_index).empty()) {
      const Val& a = val(n.input(input_index));
      if (a.kind != Val::kInts) unsupported(n, "axes must be constant");
      return a.ints;
    }
    return {};
  }
  bool is_float_const(const std::string& name, double expected, double tol) {
    if (!inits_.count(name) || is_param_init(name)) return false;
    const Val& v = val(name);
    return v.kind == Val::kFloat && std::fabs(v.f - expected) <= tol;
  }
  std::vector<std::string> int_elems(const std::string& name, const Node& n);

  void find_attention();
  bool try_linear(const Node& n, size_t index);
  bool try_gelu(const Node& n);
  void lower_node(const Node& n, size_t index);

  const Model& model_;
  Task task_;
  LowerOptions options_;
  const onnx::GraphProto& graph_;
  std::map<std::string, const Initializer*> inits_;
  std::map<std::string, std::vector<const Node*>> consumers_;
  std::map<std::string, const Node*> producer_;
  struct Attention {
    std::string q, k, v, mask;
    double scale = 1;
  };
  std::map<const Node*, Attention> attention_at_;  // final MatMul(probs, v) → the attention it completes
  std::map<std::string, Val> vals_;
  std::set<const Node*> done_;  // nodes folded into an earlier fused statement
  std::vector<std::string> lines_;
  std::vector<ParamSpec> params_;
  std::map<std::string, size_t> param_index_;
  std::string strip_prefix_;
  bool has_token_type_input_ = false;
  int counter_ = 0;
};

std::string Lowerer::module_path(const std::string& name) const {
  if (!strip_prefix_.empty() && name.rfind(strip_prefix_, 0) == 0) return name.substr(strip_prefix_.size());
  return name;
}

std::string Lowerer::register_param(const std::string& path, const TensorData* data, Shape shape, bool transpose) {
  if (!param_index_.count(path)) {
    param_index_[path] = params_.size();
    params_.push_back({path, data, std::move(shape), transpose});
  }
  return attribute_expr(path);
}

// The expression of a weight initializer, registering it under its state_dict key. `.T` initializers become
// the original [out, in] weight used transposed; `.row<k>` ones a row of the token-type table.
std::string Lowerer::param(const std::string& init_name, const std::string& path_override) {
  const Initializer& init = *inits_.at(init_name);
  const Shape& dims = init.data.dims();
  if (ends_with(init_name, ".T")) {
    if (dims.size() != 2) throw std::logic_error("TorchScript lowering: " + init_name + " is not 2-D");
    const std::string path = module_path(init_name.substr(0, init_name.size() - 2));
    return register_param(path_override.empty() ? path : path_override, &init.data, {dims[1], dims[0]}, true);
  }
  return register_param(path_override.empty() ? module_path(init_name) : path_override, &init.data, dims, false);
}

const Val& Lowerer::set_tensor(const std::string& name, const std::string& expr, char dtype) {
  Val v;
  v.kind = Val::kTensor;
  v.expr = expr;
  v.dtype = dtype;
  return vals_[name] = v;
}

const Val& Lowerer::val(const std::string& name) {
  auto it = vals_.find(name);
  if (it != vals_.end()) return it->second;
  auto ii = inits_.find(name);
  if (ii == inits_.end()) throw std::logic_error("TorchScript lowering: value '" + name + "' is used before it is defined");
  const Initializer& init = *ii->second;
  Val v;
  if (is_const(init)) {
    const auto bytes = init.data.to_bytes();
    const size_t n = static_cast<size_t>(num_elements(init.data.dims()));
    v.scalar = init.data.dims().empty();
    switch (init.data.dtype()) {
      case DType::kI64:
        v.kind = Val::kInts;
        v.ints.resize(n);
        std::memcpy(v.ints.data(), bytes.data(), n * 8);
        break;
      case DType::kI32: {
        v.kind = Val::kInts;
        std::vector<int32_t> t(n);
        std::memcpy(t.data(), bytes.data(), n * 4);
        v.ints.assign(t.begin(), t.end());
        break;
      }
      case DType::kF32: {
        if (n != 1) throw std::logic_error("TorchScript lowering: non-scalar float constant " + name);
        float f;
        std::memcpy(&f, bytes.data(), 4);
        v.kind = Val::kFloat;
        v.f = f;
        break;
      }
      default:
        throw UsageError("TorchScript lowering: constant '" + name + "' has an unsupported dtype");
    }
    return vals_[name] = v;
  }
  // A weight. Rows of a table (`<table>.row<k>`): the graph uses a constant token type; TorchScript keeps the
  // table itself (state_dict name) and honours token_type_ids when the caller passes them.
  const auto row_pos = name.rfind(".row");
  if (row_pos != std::string::npos && name.find_first_not_of("0123456789", row_pos + 4) == std::string::npos &&
      row_pos + 4 < name.size()) {
    const std::string table = name.substr(0, row_pos);
    const int64_t row = std::stoll(name.substr(row_pos + 4));
    std::string table_expr;
    if (inits_.count(table)) {
      table_expr = param(table);
    } else {
      // Only the row is in the graph; with type_vocab_size 1 (the case that produces it) the row is the table.
      if (row != 0) throw UsageError("TorchScript lowering: '" + name + "' without its table is not supported");
      const Shape& d = init.data.dims();
      table_expr = register_param(module_path(table), &init.data, {1, d.empty() ? 1 : d[0]}, false);
    }
    const std::string var = fresh();
    if (!has_token_type_input_ && table.find("token_type") != std::string::npos) {
      emit("if token_type_ids is None:");
      emit("    " + var + " = " + table_expr + "[" + std::to_string(row) + "]");
      emit("else:");
      emit("    " + var + " = torch.embedding(" + table_expr + ", token_type_ids)");
    } else {
      emit(var + " = " + table_expr + "[" + std::to_string(row) + "]");
    }
    return set_tensor(name, var, 'f');
  }
  if (ends_with(name, ".T")) {
    const std::string var = fresh();
    emit(var + " = " + param(name) + ".t()");
    return set_tensor(name, var, 'f');
  }
  return set_tensor(name, param(name), 'f');
}

std::string Lowerer::tensor(const std::string& name, const Node& n) {
  const Val& v = val(name);
  switch (v.kind) {
    case Val::kTensor: return v.expr;
    case Val::kFloat: return "torch.tensor(" + float_literal(v.f) + ", dtype=6)";
    case Val::kInts: {
      std::string s;
      for (size_t i = 0; i < v.ints.size(); ++i) s += (i ? ", " : "") + std::to_string(v.ints[i]);
      return v.scalar ? "torch.tensor(" + s + ", dtype=4)" : "torch.tensor([" + s + "], dtype=4)";
    }
    case Val::kIntList: return "torch.tensor(" + v.expr + ", dtype=4)";
  }
  unsupported(n, "bad operand");
}

std::string Lowerer::operand(const std::string& name, const Node& n) {
  const Val& v = val(name);
  if (v.kind == Val::kFloat) return float_literal(v.f);
  if (v.kind == Val::kInts && v.scalar) return std::to_string(v.ints[0]);
  return tensor(name, n);
}

// Known integer elements of a constant or a shape slice (reshape targets, slice bounds).
std::vector<std::string> Lowerer::int_elems(const std::string& name, const Node& n) {
  const Val& v = val(name);
  if (v.kind == Val::kInts) {
    std::vector<std::string> out;
    for (auto i : v.ints) out.push_back(std::to_string(i));
    return out;
  }
  if (v.kind == Val::kIntList && v.elems_known) return v.elems;
  unsupported(n, "needs constant or shape-derived integers for '" + name + "'");
}

// softmax((q·kᵀ)/c + mask)·v, scaled after (BERT) or before (DistilBERT: (q/c)·kᵀ) the product, with k
// transposed by Transpose(perm [0,1,3,2]) → torch.scaled_dot_product_attention (transformers' default "sdpa"
// attention; the same function of the inputs as the eager path, computed by one fused CPU kernel).
void Lowerer::find_attention() {
  auto producer = [&](const std::string& v) -> const Node* {
    auto it = producer_.find(v);
    return it == producer_.end() ? nullptr : it->second;
  };
  auto scalar_const = [&](const std::string& name, double* out) {
    if (!inits_.count(name) || is_param_init(name)) return false;
    const Val& v = val(name);
    if (v.kind != Val::kFloat || v.f == 0) return false;
    *out = v.f;
    return true;
  };
  for (const auto& n : graph_.node()) {
    if (n.op_type() != "MatMul" || n.input_size() != 2) continue;
    const Node* kt = producer(n.input(1));
    if (!kt || kt->op_type() != "Transpose" || attr_ints(*kt, "perm") != std::vector<int64_t>{0, 1, 3, 2} ||
        sole_consumer(kt->output(0)) != &n)
      continue;
    std::vector<const Node*> fused = {kt, &n};
    Attention a;
    a.k = kt->input(0);
    double c = 0;
    const Node* pre = producer(n.input(0));
    std::string scores = n.output(0);
    if (pre && pre->op_type() == "Div" && sole_consumer(pre->output(0)) == &n && scalar_const(pre->input(1), &c)) {
      a.q = pre->input(0);  // (q / c) · kᵀ
      fused.push_back(pre);
    } else {
      a.q = n.input(0);
      const Node* div = sole_consumer(scores);
      if (!div || div->op_type() != "Div" || div->input(0) != scores || !scalar_const(div->input(1), &c)) continue;
      fused.push_back(div);
      scores = div->output(0);
    }
    a.scale = 1.0 / c;
    const Node* add = sole_consumer(scores);
    if (!add || add->op_type() != "Add" || add->input_size() != 2) continue;
    a.mask = add->input(0) == scores ? add->input(1) : add->input(0);
    if (a.mask == scores || inits_.count(a.mask)) continue;
    const Node* sm = sole_consumer(add->output(0));
    if (!sm || sm->op_type() != "Softmax" || (attr_int(*sm, "axis", -1) != -1 && attr_int(*sm, "axis", -1) != 3)) continue;
    const Node* pv = sole_consumer(sm->output(0));
    if (!pv || pv->op_type() != "MatMul" || pv->input(0) != sm->output(0) || pv->input(1) == sm->output(0)) continue;
    a.v = pv->input(1);
    fused.push_back(add);
    fused.push_back(sm);
    for (const Node* f : fused) done_.insert(f);
    attention_at_[pv] = a;
  }
}

// MatMul(x, W.T) / MatMul(x, Transpose(E)) with an optional following bias Add → one torch.linear.
bool Lowerer::try_linear(const Node& n, size_t /*index*/) {
  if (n.input_size() != 2) return false;
  const std::string& x = n.input(0);
  const std::string& b = n.input(1);
  std::string weight_expr;
  const Initializer* tied_source = nullptr;
  const Node* transpose_node = nullptr;
  if (is_param_init(b) && ends_with(b, ".T") && inits_.at(b)->data.dims().size() == 2) {
    // weight expression decided below (needs nothing else)
  } else if (!inits_.count(b)) {
    // Transpose(E, perm=[1,0]) of a 2-D weight, used only here.
    auto pit = std::find_if(graph_.node().begin(), graph_.node().end(),
                            [&](const Node& m) { return m.output_size() == 1 && m.output(0) == b; });
    if (pit == graph_.node().end() || pit->op_type() != "Transpose" || sole_consumer(b) != &n) return false;
    const auto perm = attr_ints(*pit, "perm");
    if (perm != std::vector<int64_t>{1, 0} || !is_param_init(pit->input(0)) ||
        inits_.at(pit->input(0))->data.dims().size() != 2 || ends_with(pit->input(0), ".T"))
      return false;
    transpose_node = &*pit;
    tied_source = inits_.at(pit->input(0));
  } else {
    return false;
  }
  // Optional bias: the MatMul's only consumer is Add(y, bias) with a 1-D weight.
  std::string out = n.output(0);
  std::string bias_name;
  if (const Node* add = sole_consumer(n.output(0)); add && add->op_type() == "Add" && add->input_size() == 2) {
    const std::string& other = add->input(0) == n.output(0) ? add->input(1) : add->input(0);
    if (is_param_init(other) && inits_.at(other)->data.dims().size() == 1 &&
        !(add->input(0) == n.output(0) && add->input(1) == n.output(0))) {
      bias_name = other;
      out = add->output(0);
      done_.insert(add);
    }
  }
  // The bias's module: "cls.predictions" for "cls.predictions.bias".
  const std::string bias_prefix =
      ends_with(bias_name, ".bias") ? module_path(bias_name.substr(0, bias_name.size() - 5)) : std::string();
  if (tied_source) {
    // A vocabulary projection through a transposed table. When the table is also read elsewhere (the word
    // embeddings of a tied checkpoint), the decoder gets its own copy under transformers' decoder name.
    std::string path;
    auto cit = consumers_.find(tied_source->name);
    const bool shared = cit != consumers_.end() && cit->second.size() > 1;
    if (shared && !bias_prefix.empty()) {
      const std::string last = split_dots(bias_prefix).back();
      // BertLMPredictionHead / AlbertMLMHead / RobertaLMHead hold an inner `decoder` Linear (whose bias is the
      // head's bias); DistilBERT's vocab_projector and ELECTRA's generator_lm_head are the Linear themselves.
      path = (last == "predictions" || last == "lm_head") ? bias_prefix + ".decoder.weight" : bias_prefix + ".weight";
    }
    weight_expr = param(tied_source->name, path);
    done_.insert(transpose_node);
    // transformers ties `<head>.decoder.bias` to `<head>.bias`: keep both state_dict keys (two copies).
    const std::string weight_path = path.empty() ? module_path(tied_source->name) : path;
    if (!bias_prefix.empty() && weight_path == bias_prefix + ".decoder.weight")
      register_param(bias_prefix + ".decoder.bias", &inits_.at(bias_name)->data, inits_.at(bias_name)->data.dims(),
                     false);
  } else {
    weight_expr = param(b);
  }
  const std::string var = fresh();
  std::string line = var + " = torch.linear(" + tensor(x, n) + ", " + weight_expr;
  if (!bias_name.empty()) line += ", " + param(bias_name);
  emit(line + ")");
  set_tensor(out, var, 'f');
  return true;
}

// Exact GELU as the graph spells it: Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5).
bool Lowerer::try_gelu(const Node& div) {
  if (div.input_size() != 2 || !is_float_const(div.input(1), M_SQRT2, 1e-6)) return false;
  const std::string& x = div.input(0);
  const Node* erf = sole_consumer(div.output(0));
  if (!erf || erf->op_type() != "Erf") return false;
  const Node* add = sole_consumer(erf->output(0));
  if (!add || add->op_type() != "Add" || add->input_size() != 2) return false;
  const std::string& one = add->input(0) == erf->output(0) ? add->input(1) : add->input(0);
  if (!is_float_const(one, 1.0, 0)) return false;
  const Node* mul1 = sole_consumer(add->output(0));
  if (!mul1 || mul1->op_type() != "Mul" || mul1->input_size() != 2) return false;
  const std::string& x2 = mul1->input(0) == add->output(0) ? mul1->input(1) : mul1->input(0);
  if (x2 != x) return false;
  const Node* mul2 = sole_consumer(mul1->output(0));
  if (!mul2 || mul2->op_type() != "Mul" || mul2->input_size() != 2) return false;
  const std::string& half = mul2->input(0) == mul1->output(0) ? mul2->input(1) : mul2->input(0);
  if (!is_float_const(half, 0.5, 0)) return false;
  const std::string var = fresh();
  emit(var + " = torch.gelu(" + tensor(x, div) + ")");
  set_tensor(mul2->output(0), var, 'f');
  done_.insert(erf);
  done_.insert(add);
  done_.insert(mul1);
  done_.insert(mul2);
  return true;
}

void Lowerer::lower_node(const Node& n, size_t index) {
  const std::string& op = n.op_type();
  if (!n.domain().empty() && n.domain() != "ai.onnx")
    throw UsageError("TorchScript export lowers the plain (standard ONNX) graph only; node '" + n.name() +
                     "' uses " + n.domain() + "." + op);
  if (n.output_size() != 1) unsupported(n, "nodes with several outputs are not supported");
  const std::string& out = n.output(0);
  auto in = [&](int i) -> const std::string& { return n.input(i); };

  // Elementwise binary ops.
  static const std::map<std::string, std::string> kBinary = {{"Add", "+"}, {"Sub", "-"}, {"Mul", "*"}, {"Div", "/"}};
  if (auto it = kBinary.find(op); it != kBinary.end()) {
    if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") {
      const Val a = val(in(0));
      const Val b = val(in(1));
      const bool a_t = a.kind == Val::kTensor, b_t = b.kind == Val::kTensor;
      if (!a_t && !b_t) unsupported(n, "constant folding of two constants is not supported");
      char dt = 'i';
      if ((a_t && a.dtype == 'f') || (b_t && b.dtype == 'f') || a.kind == Val::kFloat || b.kind == Val::kFloat) dt = 'f';
      const std::string var = fresh();
      if (op == "Div" && dt == 'i')
        emit(var + " = torch.div(" + tensor(in(0), n) + ", " + operand(in(1), n) + ", rounding_mode='trunc')");
      else
        emit(var + " = " + operand(in(0), n) + " " + it->second + " " + operand(in(1), n));
      set_tensor(out, var, dt);
      return;
    }
  }
  static const std::map<std::string, std::string> kUnary = {{"Erf", "torch.erf"},   {"Tanh", "torch.tanh"},
                                                            {"Relu", "torch.relu"}, {"Sigmoid", "torch.sigmoid"},
                                                            {"Sqrt", "torch.sqrt"}, {"Exp", "torch.exp"},
                                                            {"Neg", "torch.neg"},   {"Not", "torch.logical_not"}};
  if (auto it = kUnary.find(op); it != kUnary.end()) {
    const std::string var = fresh();
    const char dt = op == "Not" ? 'b' : val(in(0)).dtype;
    emit(var + " = " + it->second + "(" + tensor(in(0), n) + ")");
    set_tensor(out, var, dt);
    return;
  }
  if (op == "Identity") {
    vals_[out] = val(in(0));
    return;
  }
  if (op == "MatMul") {
    const std::string var = fresh();
    emit(var + " = torch.matmul(" + tensor(in(0), n) + ", " + tensor(in(1), n) + ")");
    set_tensor(out, var, 'f');
    return;
  }
  if (op == "LayerNormalization") {
    const int64_t axis = attr_int(n, "axis", -1);
    if (axis != -1) unsupported(n, "only axis -1 is supported");
    if (!inits_.count(in(1))) unsupported(n, "scale must be a weight");
    const Shape& d = inits_.at(in(1))->data.dims();
    if (d.size() != 1) unsupported(n, "scale must be 1-D");
    const std::string var = fresh();
    std::string line = var + " = torch.layer_norm(" + tensor(in(0), n) + ", [" + std::to_string(d[0]) + "], " +
                       tensor(in(1), n) + ", ";
    line += (n.input_size() > 2 && !in(2).empty()) ? tensor(in(2), n) : std::string("None");
    line += ", " + float_literal(attr_float(n, "epsilon", 1e-5f)) + ")";
    emit(line);
    set_tensor(out, var, 'f');
    return;
  }
  if (op == "Softmax") {
    const std::string var = fresh();
    emit(var + " = torch.softmax(" + tensor(in(0), n) + ", " + std::to_string(attr_int(n, "axis", -1)) + ")");
    set_tensor(out, var, 'f');
    return;
  }
  if (op == "Transpose") {
    const auto perm = attr_ints(n, "perm");
    if (perm.empty()) unsupported(n, "a perm attribute is required");
    const std::string var = fresh();
    const Val x = val(in(0));
    if (perm == std::vector<int64_t>{1, 0}) {
      emit(var + " = " + tensor(in(0), n) + ".t()");
    } else {
      std::string p;
      for (size_t i = 0; i < perm.size(); ++i) p += (i ? ", " : "") + std::to_string(perm[i]);
      emit(var + " = " + tensor(in(0), n) + ".permute([" + p + "])");
    }
    set_tensor(out, var, x.dtype);
    return;
  }
  if (op == "Reshape") {
    if (attr_int(n, "allowzero", 0) != 0) unsupported(n, "allowzero=1 is not supported");
    const std::string x = tensor(in(0), n);
    const char dt = val(in(0)).dtype;
    const Val& s = val(in(1));
    std::string dims;
    if (s.kind == Val::kIntList && !s.elems_known) {
      dims = s.expr;  // a runtime shape without 0 entries (ONNX 0 = copy is only expressible in constants)
    } else {
      const auto e = int_elems(in(1), n);
      dims = "[";
      for (size_t i = 0; i < e.size(); ++i) dims += (i ? ", " : "") + (e[i] == "0" ? x + ".size(" + std::to_string(i) + ")" : e[i]);
      dims += "]";
    }
    const std::string var = fresh();
    emit(var + " = " + x + ".reshape(" + dims + ")");
    set_tensor(out, var, dt);
    return;
  }
  if (op == "Unsqueeze" || op == "Squeeze") {
    auto axes = axes_of(n, 1);
    const Val x = val(in(0));
    if (x.kind != Val::kTensor) unsupported(n, "input must be a tensor");
    std::string e = x.expr;
    if (op == "Unsqueeze") {
      if (std::any_of(axes.begin(), axes.end(), [](int64_t a) { return a < 0; }))
        unsupported(n, "negative axes are not supported");
      std::sort(axes.begin(), axes.end());
      for (auto a : axes) e += ".unsqueeze(" + std::to_string(a) + ")";
    } else {
      if (axes.empty()) {
        e += ".squeeze()";
      } else {
        const bool neg = axes[0] < 0;
        if (std::any_of(axes.begin(), axes.end(), [&](int64_t a) { return (a < 0) != neg; }))
          unsupported(n, "mixed negative and positive axes are not supported");
        std::sort(axes.begin(), axes.end());
        if (!neg) std::reverse(axes.begin(), axes.end());  // positive: from the back; negative: from the front
        for (auto a : axes) e += ".squeeze(" + std::to_string(a) + ")";
      }
    }
    const std::string var = fresh();
    emit(var + " = " + e);
    set_tensor(out, var, x.dtype);
    return;
  }
  if (op == "Cast") {
    const int64_t to = attr_int(n, "to", 0);
    const Val x = val(in(0));
    if (x.kind == Val::kIntList && dtype_kind(to) == 'i') {
      vals_[out] = x;
      return;
    }
    const std::string var = fresh();
    emit(var + " = " + tensor(in(0), n) + ".to(" + std::to_string(torch_dtype(to)) + ")");
    set_tensor(out, var, dtype_kind(to));
    return;
  }
  if (op == "Shape") {
    if (has_attr(n, "start") || has_attr(n, "end")) unsupported(n, "start/end attributes are not supported");
    Val v;
    v.kind = Val::kIntList;
    v.shape_of = tensor(in(0), n);
    v.expr = v.shape_of + ".size()";
    vals_[out] = v;
    return;
  }
  if (op == "Gather") {
    const int64_t axis = attr_int(n, "axis", 0);
    const Val data = val(in(0));
    const Val idx = val(in(1));
    const std::string var = fresh();
    if (data.kind == Val::kIntList) {
      if (idx.kind != Val::kInts || !idx.scalar || axis != 0) unsupported(n, "shape gather needs a constant index");
      Val v;
      v.kind = Val::kIntList;
      if (!data.shape_of.empty() && idx.ints[0] >= 0) {
        v.expr = "[" + data.shape_of + ".size(" + std::to_string(idx.ints[0]) + ")]";
      } else {
        v.expr = "[" + data.expr + "[" + std::to_string(idx.ints[0]) + "]]";
      }
      v.elems = {v.expr.substr(1, v.expr.size() - 2)};
      v.elems_known = true;
      vals_[out] = v;
      return;
    }
    const std::string x = tensor(in(0), n);
    if (idx.kind == Val::kInts && idx.scalar) {
      emit(var + " = " + x + ".select(" + std::to_string(axis) + ", " + std::to_string(idx.ints[0]) + ")");
    } else if (axis == 0 && idx.kind == Val::kTensor && is_param_init(in(0)) &&
               inits_.at(in(0))->data.dims().size() == 2) {
      emit(var + " = torch.embedding(" + x + ", " + idx.expr + ")");
    } else if (axis == 0) {
      emit(var + " = " + x + "[" + tensor(in(1), n) + "]");
    } else if (idx.kind == Val::kInts) {
      emit(var + " = torch.index_select(" + x + ", " + std::to_string(axis) + ", " + tensor(in(1), n) + ")");
    } else {
      unsupported(n, "gather of tensor indices along axis " + std::to_string(axis) + " is not supported");
    }
    set_tensor(out, var, data.dtype);
    return;
  }
  if (op == "Slice") {
    if (n.input_size() < 3) unsupported(n, "starts/ends inputs are required (opset >= 10)");
    const auto starts = int_elems(in(1), n);
    const auto ends = int_elems(in(2), n);
    std::vector<int64_t> axes;
    if (n.input_size() > 3 && !in(3).empty()) {
      axes = axes_of(n, 3);
    } else {
      for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    }
    if (n.input_size() > 4 && !in(4).empty()) {
      const Val& st = val(in(4));
      if (st.kind != Val::kInts || std::any_of(st.ints.begin(), st.ints.end(), [](int64_t s) { return s != 1; }))
        unsupported(n, "only unit steps are supported");
    }
    if (starts.size() != axes.size() || ends.size() != axes.size()) unsupported(n, "starts/ends/axes differ in length");
    auto bound = [](const std::string& s, bool is_end) -> std::string {
      if (s == (is_end ? std::to_string(std::numeric_limits<int64_t>::max()) : "0")) return "";
      return s;
    };
    const Val x = val(in(0));
    if (x.kind == Val::kIntList) {
      if (axes != std::vector<int64_t>{0}) unsupported(n, "shape slices are 1-D");
      Val v;
      v.kind = Val::kIntList;
      // Known elements when the bounds are plain non-negative numbers over a Shape.
      char* e1 = nullptr;
      char* e2 = nullptr;
      const long long s0 = std::strtoll(starts[0].c_str(), &e1, 10);
      const long long s1 = std::strtoll(ends[0].c_str(), &e2, 10);
      if (!x.shape_of.empty() && *e1 == 0 && *e2 == 0 && s0 >= 0 && s1 >= s0 && s1 - s0 <= 16) {
        v.elems_known = true;
        for (long long i = s0; i < s1; ++i) v.elems.push_back(x.shape_of + ".size(" + std::to_string(i) + ")");
        v.expr = "[";
        for (size_t i = 0; i < v.elems.size(); ++i) v.expr += (i ? ", " : "") + v.elems[i];
        v.expr += "]";
      } else {
        v.expr = x.expr + "[" + bound(starts[0], false) + ":" + bound(ends[0], true) + "]";
      }
      vals_[out] = v;
      return;
    }
    const std::string t = tensor(in(0), n);
    std::map<int64_t, std::string> by_axis;
    bool any_neg = false, any_pos = false;
    for (size_t i = 0; i < axes.size(); ++i) {
      by_axis[axes[i]] = bound(starts[i], false) + ":" + bound(ends[i], true);
      (axes[i] < 0 ? any_neg : any_pos) = true;
    }
    if (any_neg && any_pos) unsupported(n, "mixed negative and positive axes are not supported");
    std::string index;
    if (any_pos) {
      const int64_t last = by_axis.rbegin()->first;
      for (int64_t a = 0; a <= last; ++a) index += (a ? ", " : "") + (by_axis.count(a) ? by_axis[a] : ":");
    } else {
      index = "...";
      for (int64_t a = by_axis.begin()->first; a <= -1; ++a) index += ", " + (by_axis.count(a) ? by_axis[a] : ":");
    }
    const std::string var = fresh();
    emit(var + " = " + t + "[" + index + "]");
    set_tensor(out, var, x.dtype);
    return;
  }
  if (op == "Concat") {
    const int64_t axis = attr_int(n, "axis", 0);
    bool lists = true;
    for (int i = 0; i < n.input_size(); ++i) {
      const Val& v = val(in(i));
      if (v.kind == Val::kTensor || v.kind == Val::kFloat) lists = false;
    }
    if (lists) {
      Val v;
      v.kind = Val::kIntList;
      v.elems_known = true;
      for (int i = 0; i < n.input_size(); ++i) {
        const Val& p = val(in(i));
        if (p.kind == Val::kIntList && !p.elems_known) v.elems_known = false;
      }
      if (v.elems_known) {
        for (int i = 0; i < n.input_size(); ++i)
          for (const auto& e : int_elems(in(i), n)) v.elems.push_back(e);
        v.expr = "[";
        for (size_t i = 0; i < v.elems.size(); ++i) v.expr += (i ? ", " : "") + v.elems[i];
        v.expr += "]";
      } else {
        for (int i = 0; i < n.input_size(); ++i) {
          const Val& p = val(in(i));
          std::string e = p.expr;
          if (p.kind == Val::kInts) {
            e = "[";
            for (size_t j = 0; j < p.ints.size(); ++j) e += (j ? ", " : "") + std::to_string(p.ints[j]);
            e += "]";
          }
          v.expr += (i ? " + " : "") + e;
        }
      }
      vals_[out] = v;
      return;
    }
    std::string list;
    char dt = 'f';
    for (int i = 0; i < n.input_size(); ++i) {
      list += (i ? ", " : "") + tensor(in(i), n);
      dt = val(in(i)).dtype;
    }
    const std::string var = fresh();
    emit(var + " = torch.cat([" + list + "], " + std::to_string(axis) + ")");
    set_tensor(out, var, dt);
    return;
  }
  if (op == "Equal") {
    const std::string var = fresh();
    emit(var + " = torch.eq(" + tensor(in(0), n) + ", " + operand(in(1), n) + ")");
    set_tensor(out, var, 'b');
    return;
  }
  if (op == "CumSum") {
    if (attr_int(n, "exclusive", 0) || attr_int(n, "reverse", 0)) unsupported(n, "exclusive/reverse are not supported");
    const Val& a = val(in(1));
    if (a.kind != Val::kInts || a.ints.size() != 1) unsupported(n, "axis must be a constant");
    const Val x = val(in(0));
    const std::string var = fresh();
    emit(var + " = torch.cumsum(" + tensor(in(0), n) + ", " + std::to_string(a.ints[0]) + ")");
    set_tensor(out, var, x.dtype == 'b' ? 'i' : x.dtype);
    return;
  }
  if (op == "ReduceMean") {
    const auto axes = axes_of(n, 1);
    if (axes.empty()) unsupported(n, "axes are required");
    std::string a;
    for (size_t i = 0; i < axes.size(); ++i) a += (i ? ", " : "") + std::to_string(axes[i]);
    const std::string var = fresh();
    emit(var + " = torch.mean(" + tensor(in(0), n) + ", [" + a + "], " +
         (attr_int(n, "keepdims", 1) ? "True" : "False") + ")");
    set_tensor(out, var, 'f');
    return;
  }
  (void)index;
  unsupported(n, "op is not supported by the TorchScript lowering");
}

Program Lowerer::run() {
  for (const auto& i : model_.initializers) inits_[i.name] = &i;
  for (const auto& n : graph_.node()) {
    for (const auto& i : n.input())
      if (!i.empty()) consumers_[i].push_back(&n);
    for (const auto& o : n.output()) producer_[o] = &n;
  }

  // Feature extraction exports the base model: transformers' AutoModel names have no `bert.`-style prefix,
  // but a task checkpoint's tensors carry it. Drop a first component that every weight shares.
  if (task_ == Task::kFeatureExtraction) {
    std::set<std::string> firsts;
    size_t weights = 0;
    for (const auto& i : model_.initializers) {
      if (is_const(i)) continue;
      ++weights;
      firsts.insert(split_dots(i.name)[0]);
    }
    if (weights > 0 && firsts.size() == 1 && *firsts.begin() != "embeddings") strip_prefix_ = *firsts.begin() + ".";
  }

  Program p;
  std::string sig = "def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor]=None, "
                    "token_type_ids: Optional[Tensor]=None) -> Tuple[";
  for (int i = 0; i < graph_.output_size(); ++i) sig += (i ? ", " : "") + std::string("Tensor");
  sig += "]:\n";

  for (const auto& input : graph_.input()) {
    if (inits_.count(input.name())) continue;
    const std::string& name = input.name();
    p.inputs.push_back(name);
    if (name == "input_ids") {
      set_tensor(name, "input_ids", 'i');
    } else if (name == "attention_mask" || name == "token_type_ids") {
      const std::string var = name == "attention_mask" ? "mask" : "token_types";
      emit("if " + name + " is None:");
      emit(std::string("    ") + var + " = torch." + (name == "attention_mask" ? "ones" : "zeros") + "_like(input_ids)");
      emit("else:");
      emit("    " + var + " = " + name);
      set_tensor(name, var, 'i');
      if (name == "token_type_ids") has_token_type_input_ = true;
    } else {
      throw UsageError("TorchScript lowering: graph input '" + name +
                       "' is not one of input_ids, attention_mask, token_type_ids");
    }
  }
  if (!vals_.count("input_ids")) throw UsageError("TorchScript lowering: the graph has no input_ids input");

  if (options_.fused_attention) find_attention();
  size_t index = 0;
  for (const auto& n : graph_.node()) {
    ++p.num_nodes;
    if (done_.count(&n)) continue;
    if (auto it = attention_at_.find(&n); it != attention_at_.end()) {
      const Attention& a = it->second;
      const std::string var = fresh();
      emit(var + " = torch.scaled_dot_product_attention(" + tensor(a.q, n) + ", " + tensor(a.k, n) + ", " +
           tensor(a.v, n) + ", " + tensor(a.mask, n) + ", 0.0, False, scale=" + float_literal(a.scale) + ")");
      set_tensor(n.output(0), var, 'f');
      continue;
    }
    if (n.op_type() == "Transpose" && n.output_size() == 1 && attr_ints(n, "perm") == std::vector<int64_t>{1, 0} &&
        is_param_init(n.input(0)) && !ends_with(n.input(0), ".T") && inits_.at(n.input(0))->data.dims().size() == 2) {
      // A transposed weight feeding only a MatMul: folded into that MatMul's torch.linear (try_linear).
      const Node* mm = sole_consumer(n.output(0));
      if (mm && mm->op_type() == "MatMul" && mm->input_size() == 2 && mm->input(1) == n.output(0) &&
          mm->input(0) != n.output(0))
        continue;
    }
    if (n.op_type() == "MatMul" && try_linear(n, index)) continue;
    if (n.op_type() == "Div" && try_gelu(n)) continue;
    lower_node(n, index++);
  }

  std::string ret = "return (";
  for (int i = 0; i < graph_.output_size(); ++i) {
    const std::string& name = graph_.output(i).name();
    const Val& v = val(name);
    if (v.kind != Val::kTensor) throw UsageError("TorchScript lowering: output '" + name + "' is not a tensor");
    ret += v.expr + ".contiguous()" + (graph_.output_size() == 1 ? "," : (i + 1 < graph_.output_size() ? ", " : ""));
    p.outputs.push_back(name);
  }
  emit(ret + ")");

  std::ostringstream src;
  src << sig;
  for (const auto& l : lines_) src << l << "\n";
  p.forward = src.str();
  p.num_lines = lines_.size();
  p.params = std::move(params_);
  return p;
}

}  // namespace

Program lower(const Model& model, Task task, const LowerOptions& options) {
  return Lowerer(model, task, options).run();
}

}  // namespace trex::torchscript
