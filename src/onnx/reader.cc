#include "onnx/reader.h"

#include <charconv>
#include <cstring>
#include <map>
#include <string>

#include "io/mapped_file.h"
#include "io/safe_open.h"
#include "util/error.h"

namespace trex {
namespace {

namespace fs = std::filesystem;

// Protobuf field numbers used by the walker (onnx.proto).
constexpr uint32_t kModelGraph = 7;         // ModelProto.graph
constexpr uint32_t kGraphInitializer = 5;   // GraphProto.initializer
constexpr uint32_t kTensorRawData = 9;      // TensorProto.raw_data
// Where TensorProtos can be nested (for the external-data check, which must see subgraphs too).
constexpr uint32_t kModelFunctions = 25;       // ModelProto.functions (FunctionProto)
constexpr uint32_t kFunctionNode = 7;          // FunctionProto.node
constexpr uint32_t kGraphNode = 1;             // GraphProto.node
constexpr uint32_t kGraphSparseInit = 15;      // GraphProto.sparse_initializer (SparseTensorProto)
constexpr uint32_t kNodeAttribute = 5;         // NodeProto.attribute
constexpr uint32_t kAttrT = 5, kAttrG = 6, kAttrTensors = 10, kAttrGraphs = 11, kAttrSparse = 22,
                   kAttrSparses = 23;          // AttributeProto
constexpr uint32_t kSparseValues = 1, kSparseIndices = 2;  // SparseTensorProto
constexpr uint32_t kTensorExternalData = 13;   // TensorProto.external_data (StringStringEntryProto)
constexpr uint32_t kEntryKey = 1, kEntryValue = 2;
constexpr uint32_t kWireVarint = 0, kWireFixed64 = 1, kWireLen = 2, kWireFixed32 = 5;

// A minimal protobuf wire-format walker over a byte range, so that weight bytes are never copied: only the
// small structural parts of the file are handed to the generated parser.
struct Field {
  uint32_t number = 0;
  uint32_t wire = 0;
  const uint8_t* begin = nullptr;    // first byte of the tag
  const uint8_t* payload = nullptr;  // first byte of a length-delimited payload
  size_t payload_len = 0;
  const uint8_t* end = nullptr;      // one past the field
};

class Walker {
 public:
  Walker(const uint8_t* p, size_t n, const std::string& file) : p_(p), end_(p + n), file_(file) {}
  bool next(Field* f) {
    if (p_ == end_) return false;
    f->begin = p_;
    const uint64_t tag = varint();
    f->number = static_cast<uint32_t>(tag >> 3);
    f->wire = static_cast<uint32_t>(tag & 7);
    f->payload = nullptr;
    f->payload_len = 0;
    switch (f->wire) {
      case kWireVarint: varint(); break;
      case kWireFixed64: skip(8); break;
      case kWireFixed32: skip(4); break;
      case kWireLen: {
        const uint64_t n = varint();
        if (n > static_cast<uint64_t>(end_ - p_)) corrupt("a field runs past the end of its message");
        f->payload = p_;
        f->payload_len = static_cast<size_t>(n);
        p_ += n;
        break;
      }
      default: corrupt("unsupported protobuf wire type " + std::to_string(f->wire));
    }
    f->end = p_;
    return true;
  }

 private:
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) corrupt("truncated varint");
      const uint8_t b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    corrupt("malformed varint");
  }
  void skip(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) corrupt("truncated field");
    p_ += n;
  }
  [[noreturn]] void corrupt(const std::string& what) const {
    throw InputError(file_, "not a valid ONNX model (" + what + ")");
  }
  const uint8_t* p_;
  const uint8_t* end_;
  const std::string& file_;
};

void append(std::string* s, const Field& f) {
  s->append(reinterpret_cast<const char*>(f.begin), static_cast<size_t>(f.end - f.begin));
}

template <typename Msg>
void parse_into(Msg* msg, const std::string& bytes, const std::string& file, const char* what) {
  if (!msg->MergeFromString(bytes)) throw InputError(file, std::string("not a valid ONNX model (cannot parse ") + what + ")");
}

std::string clip_name(const std::string& s) {
  return s.size() <= 80 ? s : s.substr(0, 80) + "...";
}

size_t parse_size(const std::string& s, const std::string& file, const std::string& tensor, const char* key) {
  size_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size())
    throw InputError(file, "initializer '" + clip_name(tensor) + "': bad external data " + key + " '" + clip_name(s) + "'");
  return v;
}

// Copies typed repeated fields into little-endian element bytes.
std::vector<std::byte> typed_bytes(const onnx::TensorProto& t, DType dtype, size_t count, const std::string& file) {
  auto mismatch = [&](size_t got) {
    throw InputError(file, "initializer '" + clip_name(t.name()) + "' holds " + std::to_string(got) +
                               " values, its shape needs " + std::to_string(count));
  };
  // The values present are counted before anything is allocated: a tensor declared [16384, 16384] with no
  // data must not cost 1 GB before being refused.
  size_t present = 0;
  switch (dtype) {
    case DType::kF32: present = static_cast<size_t>(t.float_data_size()); break;
    case DType::kF64: present = static_cast<size_t>(t.double_data_size()); break;
    case DType::kI64: present = static_cast<size_t>(t.int64_data_size()); break;
    default: present = static_cast<size_t>(t.int32_data_size()); break;
  }
  if (present != count) mismatch(present);
  std::vector<std::byte> out(count * dtype_size(dtype));
  auto narrow_from_int32 = [&](auto tag) {
    using T = decltype(tag);
    if (static_cast<size_t>(t.int32_data_size()) != count) mismatch(static_cast<size_t>(t.int32_data_size()));
    for (size_t i = 0; i < count; ++i) {
      const T v = static_cast<T>(t.int32_data(static_cast<int>(i)));
      std::memcpy(out.data() + i * sizeof(T), &v, sizeof(T));
    }
  };
  switch (dtype) {
    case DType::kF32:
      if (static_cast<size_t>(t.float_data_size()) != count) mismatch(static_cast<size_t>(t.float_data_size()));
      if (count) std::memcpy(out.data(), t.float_data().data(), count * 4);
      break;
    case DType::kF64:
      if (static_cast<size_t>(t.double_data_size()) != count) mismatch(static_cast<size_t>(t.double_data_size()));
      if (count) std::memcpy(out.data(), t.double_data().data(), count * 8);
      break;
    case DType::kI64:
      if (static_cast<size_t>(t.int64_data_size()) != count) mismatch(static_cast<size_t>(t.int64_data_size()));
      if (count) std::memcpy(out.data(), t.int64_data().data(), count * 8);
      break;
    case DType::kI32:
      if (static_cast<size_t>(t.int32_data_size()) != count) mismatch(static_cast<size_t>(t.int32_data_size()));
      if (count) std::memcpy(out.data(), t.int32_data().data(), count * 4);
      break;
    // float16/bfloat16 bit patterns, and the small integer types, are stored widened in int32_data.
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16: narrow_from_int32(uint16_t{}); break;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool: narrow_from_int32(uint8_t{}); break;
  }
  return out;
}

// Walks every TensorProto of a message (recursing into graphs, nodes, attributes, functions and sparse
// tensors) and checks each external-data location. `kind` says what the payload is.
enum class Msg { kModel, kGraph, kNode, kAttribute, kFunction, kSparse, kTensor };

void check_tensor_locations(const uint8_t* p, size_t n, const std::string& file, const fs::path& dir, int depth);

void walk_for_locations(Msg kind, const uint8_t* p, size_t n, const std::string& file, const fs::path& dir, int depth) {
  if (depth > 64) throw InputError(file, "not a valid ONNX model (subgraphs nested deeper than 64 levels)");
  if (kind == Msg::kTensor) {
    check_tensor_locations(p, n, file, dir, depth);
    return;
  }
  Walker w(p, n, file);
  Field f;
  while (w.next(&f)) {
    if (f.wire != kWireLen) continue;
    Msg child = Msg::kModel;
    bool recurse = false;
    switch (kind) {
      case Msg::kModel:
        if (f.number == kModelGraph) child = Msg::kGraph, recurse = true;
        if (f.number == kModelFunctions) child = Msg::kFunction, recurse = true;
        break;
      case Msg::kFunction:
        if (f.number == kFunctionNode) child = Msg::kNode, recurse = true;
        break;
      case Msg::kGraph:
        if (f.number == kGraphNode) child = Msg::kNode, recurse = true;
        if (f.number == kGraphInitializer) child = Msg::kTensor, recurse = true;
        if (f.number == kGraphSparseInit) child = Msg::kSparse, recurse = true;
        break;
      case Msg::kNode:
        if (f.number == kNodeAttribute) child = Msg::kAttribute, recurse = true;
        break;
      case Msg::kAttribute:
        if (f.number == kAttrT || f.number == kAttrTensors) child = Msg::kTensor, recurse = true;
        if (f.number == kAttrG || f.number == kAttrGraphs) child = Msg::kGraph, recurse = true;
        if (f.number == kAttrSparse || f.number == kAttrSparses) child = Msg::kSparse, recurse = true;
        break;
      case Msg::kSparse:
        if (f.number == kSparseValues || f.number == kSparseIndices) child = Msg::kTensor, recurse = true;
        break;
      case Msg::kTensor: break;
    }
    if (recurse) walk_for_locations(child, f.payload, f.payload_len, file, dir, depth + 1);
  }
}

void check_tensor_locations(const uint8_t* p, size_t n, const std::string& file, const fs::path& dir, int) {
  Walker w(p, n, file);
  Field f;
  std::string name;
  std::vector<std::string> locations;
  while (w.next(&f)) {
    if (f.wire != kWireLen) continue;
    if (f.number == 8) name.assign(reinterpret_cast<const char*>(f.payload), f.payload_len);  // TensorProto.name
    if (f.number != kTensorExternalData) continue;
    Walker e(f.payload, f.payload_len, file);
    Field kv;
    std::string key, value;
    while (e.next(&kv)) {
      if (kv.wire != kWireLen) continue;
      if (kv.number == kEntryKey) key.assign(reinterpret_cast<const char*>(kv.payload), kv.payload_len);
      if (kv.number == kEntryValue) value.assign(reinterpret_cast<const char*>(kv.payload), kv.payload_len);
    }
    if (key == "location") locations.push_back(value);
  }
  for (const auto& loc : locations) check_external_location(file, dir, name, loc);
}

}  // namespace

void check_external_location(const std::string& model_file, const fs::path& model_dir, const std::string& tensor,
                             const std::string& location) {
  const std::string what = "initializer '" + clip_name(tensor) + "': external data location '" + clip_name(location) + "'";
  if (location.empty()) throw InputError(model_file, "initializer '" + clip_name(tensor) + "': external data without a location");
  if (location.find('\0') != std::string::npos) throw InputError(model_file, what + " contains a NUL byte");
  const fs::path rel(location);
  if (rel.is_absolute() || rel.has_root_name() || rel.has_root_directory())
    throw InputError(model_file, what + " is an absolute path (it must be relative to the model's folder)");
  for (const auto& part : rel)
    if (part == "..") throw InputError(model_file, what + " contains '..' (it must stay inside the model's folder)");
  // Symlinks may point only inside the model's folder (or, in a hub cache snapshot, into the repository's blobs).
  if (!real_path_inside(checkpoint_root(model_dir), model_dir / rel))
    throw InputError(model_file, what + " resolves (through a symlink) to a file outside the model's folder");
}

void validate_external_data(const fs::path& model_path) {
  const std::string file = model_path.string();
  std::shared_ptr<MappedFile> mapped = MappedFile::open(model_path);
  const fs::path dir = model_path.parent_path().empty() ? fs::path(".") : model_path.parent_path();
  walk_for_locations(Msg::kModel, reinterpret_cast<const uint8_t*>(mapped->data()), mapped->size(), file, dir, 0);
}

bool dtype_from_onnx(int elem_type, DType* out) {
  switch (elem_type) {
    case onnx::TensorProto::FLOAT: *out = DType::kF32; return true;
    case onnx::TensorProto::FLOAT16: *out = DType::kF16; return true;
    case onnx::TensorProto::BFLOAT16: *out = DType::kBF16; return true;
    case onnx::TensorProto::DOUBLE: *out = DType::kF64; return true;
    case onnx::TensorProto::INT64: *out = DType::kI64; return true;
    case onnx::TensorProto::INT32: *out = DType::kI32; return true;
    case onnx::TensorProto::INT16: *out = DType::kI16; return true;
    case onnx::TensorProto::INT8: *out = DType::kI8; return true;
    case onnx::TensorProto::UINT8: *out = DType::kU8; return true;
    case onnx::TensorProto::BOOL: *out = DType::kBool; return true;
    default: return false;
  }
}

Model read_model(const fs::path& path) {
  const std::string file = path.string();
  std::shared_ptr<MappedFile> mapped = MappedFile::open(path);
  if (mapped->size() == 0) throw InputError(file, "not a valid ONNX model (empty file)");
  const std::shared_ptr<const void> keep_file = mapped;
  const auto* base = reinterpret_cast<const uint8_t*>(mapped->data());
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  // Every external-data location, subgraphs included, before anything is opened (the writer keeps subgraph
  // tensors as they are, and ONNX Runtime would follow their locations).
  walk_for_locations(Msg::kModel, base, mapped->size(), file, dir, 0);

  // Split ModelProto into "everything but the graph" and the graph payload(s).
  Model model;
  std::string model_rest;
  std::vector<Field> graphs;
  {
    Walker w(base, mapped->size(), file);
    Field f;
    while (w.next(&f)) {
      if (f.number == kModelGraph && f.wire == kWireLen) graphs.push_back(f);
      else append(&model_rest, f);
    }
  }
  parse_into(&model.proto, model_rest, file, "model header");
  if (graphs.empty()) throw InputError(file, "not a valid ONNX model (no graph)");

  // Split each graph payload into structure and initializer records.
  std::string graph_rest;
  std::vector<Field> tensors;
  for (const Field& g : graphs) {
    Walker w(g.payload, g.payload_len, file);
    Field f;
    while (w.next(&f)) {
      if (f.number == kGraphInitializer && f.wire == kWireLen) tensors.push_back(f);
      else append(&graph_rest, f);
    }
  }
  onnx::GraphProto* graph = model.proto.mutable_graph();
  parse_into(graph, graph_rest, file, "graph");
  if (model.proto.ir_version() == 0 && graph->node_size() == 0 && tensors.empty())
    throw InputError(file, "not a valid ONNX model (no ir_version, nodes or initializers)");

  std::map<std::string, std::shared_ptr<MappedFile>> data_files;
  model.initializers.reserve(tensors.size());
  for (const Field& tf : tensors) {
    // Header = every field but raw_data; raw_data stays in the mapping.
    std::string header;
    const uint8_t* raw = nullptr;
    size_t raw_len = 0;
    bool has_raw = false;
    {
      Walker w(tf.payload, tf.payload_len, file);
      Field f;
      while (w.next(&f)) {
        if (f.number == kTensorRawData && f.wire == kWireLen) {
          raw = f.payload;
          raw_len = f.payload_len;
          has_raw = true;
        } else {
          append(&header, f);
        }
      }
    }
    onnx::TensorProto t;
    parse_into(&t, header, file, "initializer");
    DType dtype;
    if (!dtype_from_onnx(t.data_type(), &dtype) || t.has_segment()) {
      // Kept verbatim inside the graph (the writer emits graph initializers as they are).
      onnx::TensorProto* kept = graph->add_initializer();
      parse_into(kept, std::string(reinterpret_cast<const char*>(tf.payload), tf.payload_len), file, "initializer");
      continue;
    }
    Shape dims(t.dims().begin(), t.dims().end());
    for (int64_t d : dims)
      if (d < 0) throw InputError(file, "initializer '" + t.name() + "' has a negative dimension");
    // Elements and bytes with checked arithmetic: dims such as [2^56, 64] must not wrap to a small size.
    uint64_t elements = 1;
    size_t nbytes = 0;
    bool too_large = false;
    for (int64_t d : dims) too_large |= __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements);
    too_large |= elements > static_cast<uint64_t>(INT64_MAX) ||
                 __builtin_mul_overflow(static_cast<size_t>(elements), dtype_size(dtype), &nbytes);
    if (too_large)
      throw InputError(file, "initializer '" + clip_name(t.name()) + "': shape " + shape_str(dims) + " is too large");

    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      std::string location;
      size_t offset = 0, length = nbytes;
      bool has_length = false;
      for (const auto& kv : t.external_data()) {
        if (kv.key() == "location") location = kv.value();
        else if (kv.key() == "offset") offset = parse_size(kv.value(), file, t.name(), "offset");
        else if (kv.key() == "length") {
          length = parse_size(kv.value(), file, t.name(), "length");
          has_length = true;
        }
      }
      check_external_location(file, dir, t.name(), location);
      auto it = data_files.find(location);
      if (it == data_files.end())
        it = data_files.emplace(location, MappedFile::open_in(checkpoint_root(dir), dir / location)).first;
      const MappedFile& df = *it->second;
      if (has_length && length != nbytes)
        throw InputError(file, "initializer '" + t.name() + "': external data length " + std::to_string(length) +
                                   " does not match its shape " + shape_str(dims) + " (" + std::to_string(nbytes) +
                                   " bytes)");
      if (offset > df.size() || df.size() - offset < nbytes)
        throw InputError(df.path(), "initializer '" + t.name() + "' needs bytes [" + std::to_string(offset) + ", " +
                                        std::to_string(offset + nbytes) + ") but the file has " +
                                        std::to_string(df.size()));
      model.initializers.push_back(
          {t.name(), TensorData::view(dtype, dims, df.data() + offset, std::shared_ptr<const void>(it->second))});
    } else if (has_raw) {
      if (raw_len != nbytes)
        throw InputError(file, "initializer '" + t.name() + "' has " + std::to_string(raw_len) +
                                   " bytes of raw data, its shape " + shape_str(dims) + " needs " +
                                   std::to_string(nbytes));
      model.initializers.push_back(
          {t.name(), TensorData::view(dtype, dims, reinterpret_cast<const std::byte*>(raw), keep_file)});
    } else {
      model.initializers.push_back(
          {t.name(), TensorData::owned(dtype, dims, typed_bytes(t, dtype, static_cast<size_t>(elements), file))});
    }
  }
  return model;
}

}  // namespace trex
