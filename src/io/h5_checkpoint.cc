#include "io/h5_checkpoint.h"

#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "io/json_file.h"
#include "io/safe_open.h"
#include "io/weight_store.h"
#include "util/error.h"
#include "util/strings.h"

namespace trex {

namespace fs = std::filesystem;

namespace {

// Bounds on what a weights file may declare before anything is allocated for it.
constexpr size_t kMaxLayers = 100000;
constexpr size_t kMaxWeights = 1000000;
constexpr size_t kMaxNameBytes = 4096;
constexpr int kMaxRank = 8;
constexpr uint64_t kMaxAttributeBytes = uint64_t{64} << 20;
constexpr int kMaxAttributeChunks = 100000;

std::string clip(const std::string& s) { return clip_for_message(s, 300); }

// RAII for HDF5 identifiers.
class Hid {
 public:
  Hid() = default;
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hid() { reset(); }
  Hid(Hid&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// HDF5 prints its error stack to stderr by default; trex reports errors itself, as one line.
class QuietHdf5 {
 public:
  QuietHdf5() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost message of HDF5's error stack ("" when none), to say why a call failed.
std::string hdf5_reason() {
  std::string out;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* e, void* client) -> herr_t {
        if (n == 0 && e->desc) *static_cast<std::string*>(client) = e->desc;
        return 0;
      },
      &out);
  H5Eclear2(H5E_DEFAULT);
  return out.empty() ? "" : " (" + out + ")";
}

// Reads a string attribute (fixed- or variable-length strings, one or an array) of `obj`.
std::vector<std::string> read_string_attribute(hid_t obj, const char* name, const std::string& file,
                                               const std::string& where) {
  auto fail = [&](const std::string& why) -> std::vector<std::string> {
    throw InputError(file, "attribute '" + std::string(name) + "' of " + where + ": " + why);
  };
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!attr.ok()) fail("cannot be opened" + hdf5_reason());
  Hid type(H5Aget_type(attr.get()), H5Tclose);
  Hid space(H5Aget_space(attr.get()), H5Sclose);
  if (!type.ok() || !space.ok()) fail("unreadable" + hdf5_reason());
  const hssize_t npoints = H5Sget_simple_extent_npoints(space.get());
  if (npoints < 0 || static_cast<uint64_t>(npoints) > kMaxWeights) fail("has an invalid or too large element count");
  const size_t n = static_cast<size_t>(npoints);
  std::vector<std::string> out;
  if (n == 0) return out;  // Keras writes an empty list as an empty float array
  if (H5Tget_class(type.get()) != H5T_STRING) fail("is not a string attribute");
  out.reserve(n);
  const htri_t vlen = H5Tis_variable_str(type.get());
  if (vlen < 0) fail("unreadable string type" + hdf5_reason());
  Hid mem(H5Tcopy(H5T_C_S1), H5Tclose);
  if (vlen > 0) {
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
    std::vector<char*> ptrs(n, nullptr);
    if (H5Aread(attr.get(), mem.get(), ptrs.data()) < 0) fail("cannot be read" + hdf5_reason());
    for (char* p : ptrs) {
      std::string s = p ? std::string(p, strnlen(p, kMaxNameBytes + 1)) : std::string();
      out.push_back(std::move(s));
    }
    H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, ptrs.data());
  } else {
    const size_t size = H5Tget_size(type.get());
    if (size == 0 || size > kMaxNameBytes + 1) fail("has strings of " + std::to_string(size) + " bytes");
    if (static_cast<uint64_t>(size) * n > kMaxAttributeBytes) fail("is too large");
    H5Tset_size(mem.get(), size);
    H5Tset_strpad(mem.get(), H5T_STR_NULLPAD);
    std::vector<char> buf(size * n);
    if (H5Aread(attr.get(), mem.get(), buf.data()) < 0) fail("cannot be read" + hdf5_reason());
    for (size_t i = 0; i < n; ++i) {
      const char* p = buf.data() + i * size;
      out.emplace_back(p, strnlen(p, size));
    }
  }
  for (const auto& s : out)
    if (s.size() > kMaxNameBytes) fail("holds a name longer than " + std::to_string(kMaxNameBytes) + " bytes");
  return out;
}

// A string-list attribute as Keras writes it: `name`, or, when it was too large for one HDF5 object header,
// `name0`, `name1`, ... concatenated. Returns false when neither form exists.
bool read_keras_list(hid_t obj, const std::string& name, const std::string& file, const std::string& where,
                     std::vector<std::string>* out) {
  if (H5Aexists(obj, name.c_str()) > 0) {
    *out = read_string_attribute(obj, name.c_str(), file, where);
    return true;
  }
  bool found = false;
  for (int chunk = 0; chunk < kMaxAttributeChunks; ++chunk) {
    const std::string part = name + std::to_string(chunk);
    if (H5Aexists(obj, part.c_str()) <= 0) break;
    found = true;
    auto items = read_string_attribute(obj, part.c_str(), file, where);
    if (out->size() + items.size() > kMaxWeights) throw InputError(file, "attribute '" + name + "' of " + where + " is too long");
    for (auto& s : items) out->push_back(std::move(s));
  }
  H5Eclear2(H5E_DEFAULT);
  return found;
}

bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > kMaxNameBytes) return false;
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7F) return false;
  return true;
}

// True when every link along `path` (relative to `group`) exists; H5Lexists fails on a missing intermediate group.
bool path_exists(hid_t group, const std::string& path) {
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string::npos) slash = path.size();
    if (slash > pos) {
      const std::string prefix = path.substr(0, slash);
      if (H5Lexists(group, prefix.c_str(), H5P_DEFAULT) <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
      }
    }
    pos = slash + 1;
  }
  return true;
}

// The element type of a floating dataset, from its exact bit layout (f16 and bf16 are both 2 bytes).
bool float_dtype(hid_t type, DType* out) {
  if (H5Tget_class(type) != H5T_FLOAT) return false;
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
  const size_t size = H5Tget_size(type);
  if (H5Tget_offset(type) != 0 || mpos != 0 || H5Tget_norm(type) != H5T_NORM_IMPLIED) return false;
  const size_t ebias = H5Tget_ebias(type);
  if (ebias != (size_t{1} << (esize - 1)) - 1) return false;
  if (size == 4 && esize == 8 && msize == 23 && spos == 31) *out = DType::kF32;
  else if (size == 2 && esize == 5 && msize == 10 && spos == 15) *out = DType::kF16;
  else if (size == 2 && esize == 8 && msize == 7 && spos == 15) *out = DType::kBF16;
  else if (size == 8 && esize == 11 && msize == 52 && spos == 63) *out = DType::kF64;
  else return false;
  return true;
}

// Transposes a row-major [rows, cols] matrix of `esize`-byte elements.
void transpose_2d(const std::byte* src, std::byte* dst, size_t rows, size_t cols, size_t esize) {
  constexpr size_t kTile = 32;
  for (size_t r0 = 0; r0 < rows; r0 += kTile)
    for (size_t c0 = 0; c0 < cols; c0 += kTile)
      for (size_t r = r0; r < std::min(rows, r0 + kTile); ++r)
        for (size_t c = c0; c < std::min(cols, c0 + kTile); ++c)
          std::memcpy(dst + (c * rows + r) * esize, src + (r * cols + c) * esize, esize);
}

}  // namespace

std::string keras_to_pytorch_name(const std::string& keras_name, int rank, bool* transpose) {
  *transpose = false;
  // Device suffixes (":0") are not part of the name.
  std::string n;
  n.reserve(keras_name.size());
  for (size_t i = 0; i < keras_name.size(); ++i) {
    if (keras_name[i] == ':' && i + 1 < keras_name.size() && keras_name[i + 1] == '0') {
      ++i;
      continue;
    }
    n.push_back(keras_name[i]);
  }
  // Scopes: "/" separates them, and so does "_._" (list items: layer_._0 → layer.0).
  std::vector<std::string> parts;
  std::string cur;
  for (size_t i = 0; i < n.size(); ++i) {
    if (n[i] == '/') {
      parts.push_back(std::move(cur));
      cur.clear();
    } else if (n.compare(i, 3, "_._") == 0) {
      parts.push_back(std::move(cur));
      cur.clear();
      i += 2;
    } else {
      cur.push_back(n[i]);
    }
  }
  parts.push_back(std::move(cur));
  // "outer___inner" in a middle scope stands for "inner" (a TF layer named after its PyTorch attribute).
  if (parts.size() > 2) {
    for (size_t i = 1; i + 1 < parts.size(); ++i) {
      const size_t k = parts[i].rfind("___");
      if (k != std::string::npos) parts[i] = parts[i].substr(k + 3);
    }
  }
  std::vector<std::string> kept;
  for (auto& p : parts)
    if (!p.empty()) kept.push_back(std::move(p));
  if (kept.size() > 1) kept.erase(kept.begin());  // the outer model scope ("tf_bert_model")
  if (kept.empty()) return "";
  std::string& last = kept.back();
  if (last == "kernel") {
    *transpose = rank == 2;
    last = "weight";
  } else if (last == "embeddings" || last == "gamma") {
    last = "weight";
  } else if (last == "beta") {
    last = "bias";
  }
  std::string out;
  for (size_t i = 0; i < kept.size(); ++i) out += (i ? "." : "") + kept[i];
  return out;
}

void read_tf_h5(const fs::path& path, WeightStore& store) {
  const std::string fname = path.string();
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  OpenFile f = open_regular_file_in(checkpoint_root(dir), path);
  {
    // The HDF5 signature (Keras writes no user block, so it is at offset 0).
    static constexpr unsigned char kSig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char head[8] = {};
    const ssize_t got = f.size() >= 8 ? ::pread(f.fd(), head, 8, 0) : 0;
    if (got != 8 || std::memcmp(head, kSig, 8) != 0) {
      throw InputError(fname, "not an HDF5 file (no HDF5 signature at its start); tf_model.h5 must be the Keras "
                              "HDF5 weights file that transformers' TF save_pretrained writes");
    }
  }
  QuietHdf5 quiet;
  // HDF5 opens the descriptor trex opened and checked, not the path (which could have been swapped since).
  const std::string fd_path = "/proc/self/fd/" + std::to_string(f.fd());
  Hid file(H5Fopen(fd_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok()) throw InputError(fname, "cannot be read as HDF5 (truncated or corrupt?)" + hdf5_reason());

  std::vector<std::string> layers;
  if (!read_keras_list(file.get(), "layer_names", fname, "the file", &layers)) {
    throw InputError(fname, "has no 'layer_names' attribute: not a Keras weights file (save_weights / "
                            "save_pretrained h5 format)");
  }
  if (layers.size() > kMaxLayers) throw InputError(fname, "lists too many layers (" + std::to_string(layers.size()) + ")");
  store.add_file(path.filename().string());
  const uint64_t file_size = f.size();
  uint64_t total_bytes = 0;
  size_t count = 0;
  for (const auto& layer : layers) {
    if (!valid_name(layer) || layer.find('/') != std::string::npos || layer == "." || layer == "..")
      throw InputError(fname, "invalid layer name '" + clip(layer) + "' in 'layer_names'");
    const std::string where = "layer '" + clip(layer) + "'";
    if (!path_exists(file.get(), layer)) throw InputError(fname, "group of " + where + " (listed in 'layer_names') is missing");
    Hid group(H5Gopen2(file.get(), layer.c_str(), H5P_DEFAULT), H5Gclose);
    if (!group.ok()) throw InputError(fname, where + " is not a group" + hdf5_reason());
    std::vector<std::string> weights;
    if (!read_keras_list(group.get(), "weight_names", fname, where, &weights))
      throw InputError(fname, where + " has no 'weight_names' attribute");
    count += weights.size();
    if (count > kMaxWeights) throw InputError(fname, "lists too many weights");
    for (const auto& wname : weights) {
      const std::string dpath = "/" + layer + "/" + wname;
      auto bad = [&](const std::string& why) { throw InputError(fname, "dataset '" + clip(dpath) + "': " + why); };
      if (!valid_name(wname) || wname[0] == '/') bad("invalid weight name in 'weight_names' of " + where);
      if (!path_exists(group.get(), wname)) bad("missing (listed in 'weight_names' of " + where + ")");
      Hid ds(H5Dopen2(group.get(), wname.c_str(), H5P_DEFAULT), H5Dclose);
      if (!ds.ok()) bad("not a dataset" + hdf5_reason());
      Hid type(H5Dget_type(ds.get()), H5Tclose);
      Hid space(H5Dget_space(ds.get()), H5Sclose);
      if (!type.ok() || !space.ok()) bad("unreadable type or shape" + hdf5_reason());
      DType dtype = DType::kF32;
      if (!float_dtype(type.get(), &dtype))
        bad("unsupported element type (trex reads float32, float16, bfloat16 and float64 weights)");
      const H5S_class_t sclass = H5Sget_simple_extent_type(space.get());
      if (sclass != H5S_SIMPLE && sclass != H5S_SCALAR) bad("has no shape (null dataspace)");
      const int rank = H5Sget_simple_extent_ndims(space.get());
      if (rank < 0 || rank > kMaxRank) bad("rank " + std::to_string(rank) + " is above " + std::to_string(kMaxRank));
      hsize_t dims[kMaxRank] = {};
      if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims, nullptr) != rank) bad("unreadable shape" + hdf5_reason());
      Shape shape;
      uint64_t elems = 1;
      for (int i = 0; i < rank; ++i) {
        if (dims[i] > file_size) bad("dimension " + std::to_string(dims[i]) + " is larger than the file");
        shape.push_back(static_cast<int64_t>(dims[i]));
        if (dims[i] != 0 && elems > file_size / dims[i]) bad("shape " + shape_str(shape) + " is larger than the file");
        elems *= dims[i];
      }
      const uint64_t nbytes = elems * dtype_size(dtype);
      // Only plain stored data: the bytes of a compressed or never-written dataset are not bounded by the file.
      Hid dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
      if (dcpl.ok() && H5Pget_nfilters(dcpl.get()) > 0) bad("compressed or filtered datasets are not supported");
      const hsize_t stored = H5Dget_storage_size(ds.get());
      if (stored != nbytes) {
        bad("holds " + std::to_string(stored) + " bytes of data, but its shape " + shape_str(shape) + " needs " +
            std::to_string(nbytes) + " (truncated or corrupt file?)");
      }
      total_bytes += nbytes;
      if (total_bytes > file_size) bad("the datasets hold more bytes than the file");
      bool transpose = false;
      const std::string name = keras_to_pytorch_name(wname, rank, &transpose);
      if (name.empty()) bad("weight name maps to no PyTorch name");
      if (ends_with(wname, "kernel:0") || ends_with(wname, "kernel")) {
        if (rank != 2) bad("kernel of rank " + std::to_string(rank) + " (only Dense kernels, rank 2, are supported)");
      }
      std::vector<std::byte> bytes(static_cast<size_t>(nbytes));
      if (nbytes > 0) {
        Hid mem(H5Tcopy(type.get()), H5Tclose);
        H5Tset_order(mem.get(), H5T_ORDER_LE);  // element bytes are little-endian in trex's tensors
        if (H5Dread(ds.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()) < 0)
          bad("cannot be read (truncated or corrupt file?)" + hdf5_reason());
      }
      // TF's Conv1D (GPT-2) keeps its bias as [1, n]; PyTorch's is [n].
      if (rank == 2 && shape[0] == 1 && ends_with(name, ".bias")) shape.erase(shape.begin());
      if (transpose) {
        std::vector<std::byte> t(bytes.size());
        transpose_2d(bytes.data(), t.data(), static_cast<size_t>(shape[0]), static_cast<size_t>(shape[1]),
                     dtype_size(dtype));
        bytes.swap(t);
        std::swap(shape[0], shape[1]);
      }
      // A variable shared by two layers (tied embeddings: the MLM head's group lists the word embeddings again) is
      // stored in both groups; the copies must agree.
      if (const TensorView* seen = store.find(name); seen != nullptr && seen->file.rfind(fname + " ", 0) == 0) {
        if (seen->dtype != dtype || seen->shape != shape || seen->nbytes != bytes.size() ||
            std::memcmp(seen->data, bytes.data(), bytes.size()) != 0) {
          bad("holds tensor '" + clip(name) + "' again, with other values than " + seen->file);
        }
        continue;
      }
      TensorView tv;
      tv.name = name;
      tv.dtype = dtype;
      tv.shape = shape;
      tv.nbytes = bytes.size();
      tv.data = store.own(std::move(bytes));
      // The bytes' source for messages: the file and the dataset (the tensor's name is PyTorch's, not the stored one).
      tv.file = fname + " dataset '" + clip(dpath) + "'" + (transpose ? " (transposed)" : "");
      store.add(std::move(tv));
    }
  }
  if (count == 0) throw InputError(fname, "holds no weights");
}

}  // namespace trex
