#include "arch/weights.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "io/fast_convert.h"
#include "util/error.h"

namespace trex {

namespace {
// A view's byte count must cover its shape (the readers check it; this keeps the kernels safe on their own).
void check_view_bytes(const TensorView& t, int64_t elements) {
  size_t need = 0;
  if (elements < 0 || __builtin_mul_overflow(static_cast<size_t>(elements), dtype_size(t.dtype), &need) ||
      need > t.nbytes)
    throw InputError(t.file.empty() ? t.name : t.file, "tensor '" + t.name + "': " + shape_str(t.shape) + " " +
                                                           std::string(dtype_name(t.dtype)) + " needs more than its " +
                                                           std::to_string(t.nbytes) + " bytes");
}

// Reads a float tensor as f32 values (any float dtype, any alignment).
std::vector<float> read_f32(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(num_elements(t.shape)));
  convert_to_f32(t, out.data());
  return out;
}

bool is_float(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64; }

std::string detect_prefix(const WeightStore& store, const std::string& base_prefix) {
  if (base_prefix.empty()) return "";
  const std::string p = base_prefix + ".";
  for (const auto& n : store.names())
    if (n.rfind(p, 0) == 0) return p;
  return "";
}
}  // namespace

Weights::Weights(const WeightStore& store, GraphBuilder& graph, const std::string& base_prefix)
    : store_(store), graph_(graph), prefix_(detect_prefix(store, base_prefix)) {}

const TensorView* Weights::lookup(const std::string& name, const Shape& expected) {
  const TensorView* t = store_.find(name);
  if (!t) {
    missing_.push_back(name);
    return nullptr;
  }
  if (t->shape != expected) {
    problems_.push_back("tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " + shape_str(expected) +
                        " (in " + t->file + ")");
    return nullptr;
  }
  if (!is_float(t->dtype)) {
    problems_.push_back("tensor '" + name + "' has dtype " + std::string(dtype_name(t->dtype)) +
                        ", expected a floating type");
    return nullptr;
  }
  return t;
}

TensorData Weights::as_f32(const TensorView& t) const {
  TensorData d;
  if (t.dtype == DType::kF32) {
    d = TensorData::view(DType::kF32, t.shape, t.data);
  } else {
    TensorView copy = t;
    d = TensorData::produced(DType::kF32, t.shape,
                             [copy](std::byte* dst) { convert_to_f32(copy, reinterpret_cast<float*>(dst)); });
    d.with_source(t.data, t.nbytes);
  }
  if (t.shape.size() == 2 && fast_convertible(t.dtype)) d.with_raw_rows({{t}, false});
  return d;
}

bool Weights::all_zero(const std::string& name, const Shape& expected) const {
  const TensorView* t = store_.find(name);
  if (!t || t->shape != expected || !is_float(t->dtype)) return false;
  size_t count = 1;
  for (int64_t d : t->shape) count *= static_cast<size_t>(d);
  std::vector<float> v(count);
  convert_to_f32(*t, v.data());
  return std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; });
}

Value Weights::get(const std::string& name, const Shape& expected) {
  const TensorView* t = lookup(name, expected);
  if (!t) return name;
  return graph_.initializer(name, as_f32(*t));
}

Value Weights::get_or(const std::string& name, const std::string& fallback, const Shape& expected) {
  if (store_.contains(name)) return get(name, expected);
  return get(fallback, expected);
}

Value Weights::get_transposed(const std::string& name, const Shape& expected) {
  const TensorView* t = lookup(name, expected);
  const std::string out_name = name + ".T";
  if (!t) return out_name;
  if (graph_.has_initializer(out_name)) return out_name;
  const int64_t rows = expected[0], cols = expected[1];
  TensorView src = *t;
  TensorData d = TensorData::produced(DType::kF32, {cols, rows}, [src, rows, cols](std::byte* dst) {
    if (!fast_convertible(src.dtype)) {  // f64: convert, then transpose
      std::vector<float> tmp(static_cast<size_t>(rows * cols));
      convert_to_f32(src, tmp.data());
      transpose_to_f32(DType::kF32, reinterpret_cast<const std::byte*>(tmp.data()), rows, cols,
                       reinterpret_cast<float*>(dst));
      return;
    }
    check_view_bytes(src, rows * cols);
    // Converted and transposed in one pass, in cache-sized tiles, straight from the mapped bytes.
    transpose_to_f32(src.dtype, src.data, rows, cols, reinterpret_cast<float*>(dst));
  });
  d.with_source(src.data, src.nbytes);
  if (fast_convertible(src.dtype)) d.with_raw_rows({{src}, true});
  return graph_.initializer(out_name, std::move(d));
}

Value Weights::get_row(const std::string& name, const Shape& expected, int64_t row) {
  const TensorView* t = lookup(name, expected);
  const std::string out_name = name + ".row" + std::to_string(row);
  if (!t) return out_name;
  const int64_t cols = expected[1];
  TensorView r = *t;
  const size_t es = dtype_size(t->dtype);
  r.data = t->data + static_cast<size_t>(row * cols) * es;
  r.nbytes = static_cast<size_t>(cols) * es;
  r.shape = {cols};
  return graph_.initializer(out_name, as_f32(r));
}

std::pair<Value, Value> Weights::get_packed_qkv(const std::string& q, const std::string& k, const std::string& v,
                                                int64_t hidden) {
  size_t common = 0;
  while (common < q.size() && common < k.size() && q[common] == k[common]) ++common;
  while (common > 0 && q[common - 1] != '.') --common;
  const std::string base = q.substr(0, common) + "qkv";
  const TensorView* tw[3] = {lookup(q + ".weight", {hidden, hidden}), lookup(k + ".weight", {hidden, hidden}),
                             lookup(v + ".weight", {hidden, hidden})};
  const TensorView* tb[3] = {lookup(q + ".bias", {hidden}), lookup(k + ".bias", {hidden}), lookup(v + ".bias", {hidden})};
  for (int i = 0; i < 3; ++i)
    if (!tw[i] || !tb[i]) return {base + ".weight", base + ".bias"};
  std::array<TensorView, 3> w{*tw[0], *tw[1], *tw[2]}, b{*tb[0], *tb[1], *tb[2]};
  Value wv = graph_.initializer(base + ".weight", TensorData::produced(DType::kF32, {hidden, 3 * hidden}, [w, hidden](std::byte* dst) {
    float* out = reinterpret_cast<float*>(dst);
    for (int m = 0; m < 3; ++m) {
      std::vector<float> src = read_f32(w[m]);  // [out=hidden, in=hidden]
      for (int64_t o = 0; o < hidden; ++o)
        for (int64_t i = 0; i < hidden; ++i) out[i * 3 * hidden + m * hidden + o] = src[static_cast<size_t>(o * hidden + i)];
    }
  }));
  Value bv = graph_.initializer(base + ".bias", TensorData::produced(DType::kF32, {3 * hidden}, [b, hidden](std::byte* dst) {
    float* out = reinterpret_cast<float*>(dst);
    for (int m = 0; m < 3; ++m) convert_to_f32(b[m], out + m * hidden);
  }));
  return {wv, bv};
}

Value Weights::get_plus_row(const std::string& table, const Shape& table_shape, const std::string& row_source,
                            const Shape& row_source_shape, int64_t row) {
  const TensorView* t = lookup(table, table_shape);
  const TensorView* r = lookup(row_source, row_source_shape);
  const std::string name = table + "+" + row_source + ".row" + std::to_string(row);
  if (!t || !r) return name;
  TensorView tv = *t, rv = *r;
  return graph_.initializer(name, TensorData::produced(DType::kF32, table_shape, [tv, rv, row](std::byte* dst) {
    float* out = reinterpret_cast<float*>(dst);
    convert_to_f32(tv, out);
    std::vector<float> rows = read_f32(rv);
    const int64_t dim = tv.shape[1];
    for (int64_t i = 0; i < tv.shape[0]; ++i)
      for (int64_t j = 0; j < dim; ++j) out[i * dim + j] += rows[static_cast<size_t>(row * dim + j)];
  }));
}

Value Weights::get_packed(const std::string& name, const std::vector<std::pair<std::string, int64_t>>& parts,
                          int64_t in, bool conv1d) {
  std::vector<TensorView> views;
  int64_t total = 0;
  for (const auto& [part, out] : parts) {
    const TensorView* t = lookup(part, conv1d ? Shape{in, out} : Shape{out, in});
    if (t) views.push_back(*t);
    total += out;
  }
  if (views.size() != parts.size()) return name;
  if (graph_.has_initializer(name)) return name;
  TensorData packed = TensorData::produced(DType::kF32, {in, total}, [views, in, total, conv1d](std::byte* dst) {
    float* out = reinterpret_cast<float*>(dst);
    int64_t col0 = 0;
    for (const TensorView& v : views) {
      const int64_t cols = conv1d ? v.shape[1] : v.shape[0];
      if (!conv1d && fast_convertible(v.dtype)) {  // the part's [cols, in] rows, transposed into its columns
        check_view_bytes(v, cols * in);
        transpose_to_f32(v.dtype, v.data, cols, in, out + col0, total);
        col0 += cols;
        continue;
      }
      std::vector<float> src = read_f32(v);
      for (int64_t i = 0; i < in; ++i)
        for (int64_t c = 0; c < cols; ++c)
          out[i * total + col0 + c] =
              conv1d ? src[static_cast<size_t>(i * cols + c)] : src[static_cast<size_t>(c * in + i)];
      col0 += cols;
    }
  });
  for (const TensorView& v : views) packed.with_source(v.data, v.nbytes);
  bool raw = !conv1d;
  for (const TensorView& v : views) raw = raw && fast_convertible(v.dtype);
  if (raw) packed.with_raw_rows({views, true});  // the parts' [out, in] rows, stacked, are the packed weight's columns
  return graph_.initializer(name, std::move(packed));
}

Value Weights::get_concat(const std::string& name, const std::vector<std::pair<std::string, int64_t>>& parts) {
  std::vector<TensorView> views;
  int64_t total = 0;
  for (const auto& [part, n] : parts) {
    const TensorView* t = lookup(part, {n});
    if (t) views.push_back(*t);
    total += n;
  }
  if (views.size() != parts.size()) return name;
  if (graph_.has_initializer(name)) return name;
  return graph_.initializer(name, TensorData::produced(DType::kF32, {total}, [views](std::byte* dst) {
    float* out = reinterpret_cast<float*>(dst);
    for (const TensorView& v : views) {
      convert_to_f32(v, out);
      out += v.shape[0];
    }
  }));
}

Value Weights::get_plus_one(const std::string& name, const Shape& expected) {
  const TensorView* t = lookup(name, expected);
  const std::string out_name = name + "+1";
  if (!t) return out_name;
  TensorView src = *t;
  return graph_.initializer(out_name, TensorData::produced(DType::kF32, expected, [src](std::byte* dst) {
    float* out = reinterpret_cast<float*>(dst);
    convert_to_f32(src, out);
    for (int64_t i = 0; i < num_elements(src.shape); ++i) out[i] = 1.0f + out[i];
  }));
}

void Weights::check() const {
  if (missing_.empty() && problems_.empty()) return;
  std::string files;
  for (const auto& f : store_.files()) files += (files.empty() ? "" : ", ") + f;
  std::string msg = files + ": ";
  // The first names of each list, then a count: a config that asks for 100,000 layers must not print them all.
  constexpr size_t kShown = 20;
  if (!missing_.empty()) {
    msg += std::to_string(missing_.size()) + " missing tensor" + (missing_.size() > 1 ? "s" : "") + ": ";
    for (size_t i = 0; i < missing_.size() && i < kShown; ++i) msg += (i ? ", " : "") + missing_[i];
    if (missing_.size() > kShown) msg += " and " + std::to_string(missing_.size() - kShown) + " more";
  }
  for (size_t i = 0; i < problems_.size() && i < kShown; ++i)
    msg += std::string((i == 0 && missing_.empty()) ? "" : "; ") + problems_[i];
  if (problems_.size() > kShown) msg += "; and " + std::to_string(problems_.size() - kShown) + " more problems";
  throw InputError(msg);
}

}  // namespace trex
