#include "io/h5_checkpoint.h"

#include <hdf5.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "io/json_file.h"
#include "io/mapped_file.h"
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

// Transposes a row-major [rows, cols] matrix of `esize`-byte elements (2, 4 or 8), in cache-friendly tiles.
template <typename T>
void transpose_tiles(const std::byte* src_bytes, std::byte* dst_bytes, size_t rows, size_t cols) {
  const T* src = reinterpret_cast<const T*>(src_bytes);
  T* dst = reinterpret_cast<T*>(dst_bytes);
  constexpr size_t kTile = 32;
  for (size_t r0 = 0; r0 < rows; r0 += kTile)
    for (size_t c0 = 0; c0 < cols; c0 += kTile)
      for (size_t r = r0; r < std::min(rows, r0 + kTile); ++r)
        for (size_t c = c0; c < std::min(cols, c0 + kTile); ++c) dst[c * rows + r] = src[r * cols + c];
}

void transpose_2d(const std::byte* src, std::byte* dst, size_t rows, size_t cols, size_t esize) {
  if (esize == 2) transpose_tiles<uint16_t>(src, dst, rows, cols);
  else if (esize == 4) transpose_tiles<uint32_t>(src, dst, rows, cols);
  else transpose_tiles<uint64_t>(src, dst, rows, cols);
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

namespace {

// Reads the opened file `f` (named `fname` in messages) into `store`, in this process.
void read_h5_here(const OpenFile& f, const std::string& fname, WeightStore& store) {
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

// ---- the reading process -------------------------------------------------------------------------------------
// HDF5 parses a file's structure itself, and a corrupt file can make it loop forever (found by fuzzing: a damaged
// global heap behind a variable-length string attribute) or crash. So the file is read in a child process that
// writes the tensors into a memory file (memfd); the parent waits for it with a deadline, kills it when the
// deadline passes, and maps the result. Layout of the result (native byte order, same machine):
//   "TRXH5v1\0", u64 status (0 ok, 1 InputError, 2 other error)
//   status != 0: u64 length, message
//   status 0:    u64 count, then per tensor: u64 name length, name, u64 file length, file, u64 dtype, u64 rank,
//                i64 dims[rank], u64 data offset (from the start, 64-byte aligned), u64 bytes; then the data.

constexpr char kResultMagic[8] = {'T', 'R', 'X', 'H', '5', 'v', '1', '\0'};

void put_u64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }
void put_str(std::string& s, const std::string& v) {
  put_u64(s, v.size());
  s += v;
}

bool write_all(int fd, const void* data, size_t n, uint64_t offset) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return true;
}

uint64_t align64(uint64_t v) { return (v + 63) & ~uint64_t{63}; }

bool write_error(int fd, uint64_t status, const std::string& message) {
  std::string s(kResultMagic, sizeof kResultMagic);
  put_u64(s, status);
  put_str(s, message);
  return write_all(fd, s.data(), s.size(), 0);
}

bool write_store(int fd, const WeightStore& store) {
  const std::vector<std::string> names = store.names();
  std::string table(kResultMagic, sizeof kResultMagic);
  put_u64(table, 0);
  put_u64(table, names.size());
  // Offsets depend on the table's size: fixed-size fields first, so the table's length is known before them.
  size_t table_size = table.size();
  for (const auto& n : names) {
    const TensorView* t = store.find(n);
    table_size += 8 + n.size() + 8 + t->file.size() + 8 + 8 + 8 * t->shape.size() + 8 + 8;
  }
  uint64_t offset = align64(table_size);
  std::vector<uint64_t> offsets;
  for (const auto& n : names) {
    const TensorView* t = store.find(n);
    put_str(table, n);
    put_str(table, t->file);
    put_u64(table, static_cast<uint64_t>(t->dtype));
    put_u64(table, t->shape.size());
    for (int64_t d : t->shape) put_u64(table, static_cast<uint64_t>(d));
    put_u64(table, offset);
    put_u64(table, t->nbytes);
    offsets.push_back(offset);
    offset = align64(offset + t->nbytes);
  }
  if (table.size() != table_size || !write_all(fd, table.data(), table.size(), 0)) return false;
  for (size_t i = 0; i < names.size(); ++i) {
    const TensorView* t = store.find(names[i]);
    if (t->nbytes > 0 && !write_all(fd, t->data, t->nbytes, offsets[i])) return false;
  }
  return ::ftruncate(fd, static_cast<off_t>(offset)) == 0;
}

// Reads the result the child wrote; every field is checked against the result's size.
void add_result(const std::shared_ptr<MappedFile>& map, const std::string& fname, WeightStore& store) {
  const std::byte* base = map->data();
  const uint64_t size = map->size();
  uint64_t pos = 0;
  auto malformed = [&]() -> uint64_t { throw InputError(fname, "the HDF5 reading process returned a malformed result"); };
  auto u64 = [&]() -> uint64_t {
    if (size - pos < 8) return malformed();
    uint64_t v;
    std::memcpy(&v, base + pos, 8);
    pos += 8;
    return v;
  };
  auto str = [&]() {
    const uint64_t n = u64();
    if (n > size - pos) malformed();
    std::string s(reinterpret_cast<const char*>(base + pos), static_cast<size_t>(n));
    pos += n;
    return s;
  };
  if (size < sizeof kResultMagic || std::memcmp(base, kResultMagic, sizeof kResultMagic) != 0) malformed();
  pos = sizeof kResultMagic;
  const uint64_t status = u64();
  if (status == 1) throw InputError(str());
  if (status != 0) throw InputError(fname, "cannot be read: " + str());
  const uint64_t count = u64();
  if (count > kMaxWeights) malformed();
  for (uint64_t i = 0; i < count; ++i) {
    TensorView t;
    t.name = str();
    t.file = str();
    const uint64_t dtype = u64();
    if (dtype > static_cast<uint64_t>(DType::kBool)) malformed();
    t.dtype = static_cast<DType>(dtype);
    const uint64_t rank = u64();
    if (rank > static_cast<uint64_t>(kMaxRank)) malformed();
    uint64_t elems = 1;
    for (uint64_t r = 0; r < rank; ++r) {
      const uint64_t d = u64();
      if (d > size || (d != 0 && elems > size / d)) malformed();
      elems *= d;
      t.shape.push_back(static_cast<int64_t>(d));
    }
    const uint64_t offset = u64(), nbytes = u64();
    if (offset > size || nbytes > size - offset || nbytes != elems * dtype_size(t.dtype) || offset % 64 != 0) malformed();
    t.data = base + offset;
    t.nbytes = static_cast<size_t>(nbytes);
    store.add(std::move(t));
  }
}

// Seconds the reading process may take: $TREX_H5_TIMEOUT_S, else 60 s plus 1 s per 16 MiB of file.
double read_deadline_s(uint64_t file_size) {
  if (const char* e = std::getenv("TREX_H5_TIMEOUT_S"); e != nullptr && *e != '\0') {
    char* end = nullptr;
    const double v = std::strtod(e, &end);
    if (end != e && v > 0 && v < 1e7) return v;
  }
  return 60.0 + static_cast<double>(file_size >> 24);
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

}  // namespace

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
  store.add_file(path.filename().string());
  Fd result(::memfd_create("trex-tf-h5", MFD_CLOEXEC));
  if (result.get() < 0) throw InputError(fname, std::string("cannot be read: memfd_create failed: ") + std::strerror(errno));
  std::fflush(nullptr);  // nothing buffered is written twice by the child
  const pid_t pid = ::fork();
  if (pid < 0) throw InputError(fname, std::string("cannot be read: fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL}) std::signal(sig, SIG_DFL);  // a crash ends the child only
    bool ok = false;
    try {
      WeightStore local;
      read_h5_here(f, fname, local);
      ok = write_store(result.get(), local);
    } catch (const InputError& e) {
      ok = write_error(result.get(), 1, e.what());
    } catch (const std::exception& e) {
      ok = write_error(result.get(), 2, e.what());
    } catch (...) {
    }
    ::_exit(ok ? 0 : 3);
  }
  const double limit = read_deadline_s(f.size());
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  for (int wait_ms = 1;; wait_ms = std::min(wait_ms * 2, 50)) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) throw InputError(fname, std::string("cannot be read: waitpid failed: ") + std::strerror(errno));
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > limit) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      char secs[32];
      std::snprintf(secs, sizeof secs, "%.0f", limit);
      throw InputError(fname, std::string("the HDF5 library did not finish reading it in ") + secs +
                                  " s (corrupt file?; TREX_H5_TIMEOUT_S sets the limit)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
  }
  if (WIFSIGNALED(status)) {
    throw InputError(fname, "the HDF5 library crashed reading it (signal " + std::to_string(WTERMSIG(status)) +
                                "): corrupt file?");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw InputError(fname, "cannot be read: the HDF5 reading process failed (out of memory?)");
  struct stat st {};
  if (::fstat(result.get(), &st) != 0) throw InputError(fname, std::string("cannot be read: ") + std::strerror(errno));
  OpenFile out(result.release(), static_cast<uint64_t>(st.st_size), fname);
  std::shared_ptr<MappedFile> map = MappedFile::map(out);
  store.keep(map);
  add_result(map, fname, store);
}

}  // namespace trex
