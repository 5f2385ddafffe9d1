#include "io/safetensors.h"

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "io/json_file.h"
#include "io/mapped_file.h"
#include "io/safe_open.h"
#include "io/weight_store.h"
#include "util/error.h"

namespace trex {

namespace fs = std::filesystem;

bool parse_safetensors_dtype(const std::string& name, DType* out) {
  static const struct {
    const char* name;
    DType t;
  } kTable[] = {{"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16}, {"F64", DType::kF64},
                {"I64", DType::kI64}, {"I32", DType::kI32}, {"I16", DType::kI16},   {"I8", DType::kI8},
                {"U8", DType::kU8},   {"BOOL", DType::kBool}};
  for (const auto& e : kTable) {
    if (name == e.name) {
      *out = e.t;
      return true;
    }
  }
  return false;
}

namespace {

std::string clip(const std::string& s) { return clip_for_message(s); }

// A JSON number that is a non-negative integer fitting in uint64.
bool as_u64(const nlohmann::json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

[[noreturn]] void bad(const std::string& file, const std::string& problem) { throw InputError(file, problem); }

struct Range {
  uint64_t begin, end;
  std::string name;
};

}  // namespace

std::vector<TensorView> parse_safetensors(const MappedFile& file) {
  const std::string& fname = file.path();
  const size_t size = file.size();
  if (size < 8) {
    bad(fname, "truncated: file has " + std::to_string(size) + " bytes, header length needs 8");
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | static_cast<uint8_t>(file.data()[i]);
  if (hlen > size - 8) {
    bad(fname, "header length " + std::to_string(hlen) + " exceeds file size " + std::to_string(size));
  }
  if (hlen > kMaxSafetensorsHeaderBytes) {
    bad(fname, "header length " + std::to_string(hlen) + " is above trex's limit of " +
                   std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  const char* hbegin = reinterpret_cast<const char*>(file.data() + 8);
  // Bounded parse: nesting depth and array length (shapes, offsets) limited, a tensor name listed twice is an error (not "last one wins").
  const nlohmann::json header =
      parse_json_bounded(std::string_view(hbegin, static_cast<size_t>(hlen)), fname, "header is not valid JSON",
                         kMaxSafetensorsArray);
  if (!header.is_object()) bad(fname, "header is not a JSON object (got " + json_type_name(header) + ")");

  const uint64_t data_start = 8 + hlen;
  const uint64_t data_size = size - data_start;
  const std::byte* data = file.data() + data_start;

  std::vector<TensorView> out;
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object() && !v.is_null()) bad(fname, "'__metadata__' must be an object, got " + json_type_name(v));
      continue;
    }
    const std::string tn = "tensor '" + clip(name) + "': ";
    if (!v.is_object()) bad(fname, tn + "entry must be an object, got " + json_type_name(v));
    for (const char* k : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(k)) bad(fname, tn + "missing '" + k + "'");
    }
    TensorView t;
    t.name = name;
    t.file = fname;
    const auto& jd = v["dtype"];
    if (!jd.is_string()) bad(fname, tn + "dtype must be a string, got " + json_type_name(jd));
    if (!parse_safetensors_dtype(jd.get<std::string>(), &t.dtype)) {
      bad(fname, tn + "unknown dtype '" + clip(jd.get<std::string>()) + "'");
    }
    const auto& js = v["shape"];
    if (!js.is_array()) bad(fname, tn + "shape must be a list of non-negative integers, got " + json_type_name(js));
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : js) {
      uint64_t dim = 0;
      if (!as_u64(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
        bad(fname, tn + "shape must be a list of non-negative integers, got " + json_for_message(js));
      }
      t.shape.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(numel, dim, &numel)) overflow = true;
    }
    const auto& jo = v["data_offsets"];
    uint64_t begin = 0, end = 0;
    if (!jo.is_array() || jo.size() != 2 || !as_u64(jo[0], &begin) || !as_u64(jo[1], &end) || begin > end) {
      bad(fname, tn + "data_offsets must be [begin, end] with 0 <= begin <= end, got " + json_for_message(jo));
    }
    if (end > data_size) {
      bad(fname, tn + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] exceed the data region of " +
           std::to_string(data_size) + " bytes");
    }
    uint64_t need = 0;
    const std::string desc = shape_str(t.shape) + " " + std::string(dtype_name(t.dtype));
    if (overflow || numel > static_cast<uint64_t>(INT64_MAX) ||
        __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &need)) {
      bad(fname, tn + "shape " + desc + " is too large");
    }
    if (need != end - begin) {
      bad(fname, tn + "shape " + desc + " needs " + std::to_string(need) + " bytes, data_offsets span " +
           std::to_string(end - begin));
    }
    t.data = data + begin;
    t.nbytes = static_cast<size_t>(need);
    if (need > 0) ranges.push_back({begin, end, name});
    out.push_back(std::move(t));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      bad(fname, "tensors '" + clip(ranges[i - 1].name) + "' and '" + clip(ranges[i].name) + "' overlap (data_offsets [" +
           std::to_string(ranges[i - 1].begin) + ", " + std::to_string(ranges[i - 1].end) + "] and [" +
           std::to_string(ranges[i].begin) + ", " + std::to_string(ranges[i].end) + "])");
    }
  }
  return out;
}

void read_safetensors(const std::filesystem::path& path, WeightStore& store) {
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  auto f = MappedFile::open_in(checkpoint_root(dir), path);
  store.keep(f);
  std::vector<TensorView> tensors = parse_safetensors(*f);
  store.add_file(path.filename().string());
  for (auto& t : tensors) store.add(std::move(t));
}

}  // namespace trex
