#include "io/torch_bin.h"

#include <cstring>
#include <map>

#include "io/mapped_file.h"
#include "io/pickle.h"
#include "io/safe_open.h"
#include "io/weight_store.h"
#include "io/zip_reader.h"
#include "util/error.h"
#include "util/strings.h"

namespace trex {

namespace {

struct StorageBytes {
  const std::byte* data = nullptr;
  size_t nbytes = 0;
};

std::string storage_desc(const PickledStorage& s) { return "storage '" + s.key + "'"; }

// Builds the TensorView of `pt` over `storage` (bounds-checked); copies into the store when not C-contiguous.
TensorView make_view(const std::string& file, const std::string& name, const PickledTensor& pt,
                     const StorageBytes& storage, WeightStore& store, uint64_t* copy_budget) {
  auto fail = [&](const std::string& problem) { throw InputError(file, "tensor '" + name + "': " + problem); };
  const DType dt = pt.storage.dtype;
  const uint64_t esz = dtype_size(dt);
  // The storage holds nbytes / esz elements; the recorded numel must fit in it.
  const uint64_t storage_elems = storage.nbytes / esz;
  if (static_cast<uint64_t>(pt.storage.numel) > storage_elems) {
    fail(storage_desc(pt.storage) + " records " + std::to_string(pt.storage.numel) + " elements of " +
         std::string(dtype_name(dt)) + " but its data has only " + std::to_string(storage.nbytes) + " bytes");
  }
  uint64_t numel = 1;
  for (int64_t d : pt.size) {
    if (d < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) fail("invalid size");
  }
  TensorView t;
  t.name = name;
  t.dtype = dt;
  t.shape = pt.size;
  t.file = file;
  uint64_t nbytes = 0;
  if (numel > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, esz, &nbytes)) fail("size too large");
  t.nbytes = static_cast<size_t>(nbytes);
  if (numel == 0) {
    t.data = storage.data;
    return t;
  }
  // Highest element index reached: offset + sum((size_i - 1) * stride_i); strides must be non-negative.
  uint64_t last = static_cast<uint64_t>(pt.storage_offset);
  bool contiguous = true;
  uint64_t expected = 1;
  for (size_t i = pt.size.size(); i-- > 0;) {
    const int64_t st = pt.stride[i];
    const uint64_t d = static_cast<uint64_t>(pt.size[i]);
    if (st < 0) fail("negative strides are not supported");
    uint64_t span = 0;
    if (__builtin_mul_overflow(d - 1, static_cast<uint64_t>(st), &span) || __builtin_add_overflow(last, span, &last)) {
      fail("strides overflow");
    }
    if (d != 1 && static_cast<uint64_t>(st) != expected) contiguous = false;
    expected *= d;  // cannot overflow: bounded by numel
  }
  if (last >= static_cast<uint64_t>(pt.storage.numel)) {
    fail("size " + shape_str(pt.size) + " at storage offset " + std::to_string(pt.storage_offset) +
         " exceeds " + storage_desc(pt.storage) + " of " + std::to_string(pt.storage.numel) + " elements");
  }
  const std::byte* base = storage.data + static_cast<size_t>(pt.storage_offset) * esz;
  if (!contiguous && numel > static_cast<uint64_t>(pt.storage.numel)) {
    // Only expanded/overlapping views (e.g. stride 0) have more elements than their storage.
    fail("size " + shape_str(pt.size) + " with overlapping strides (more elements than its " +
         storage_desc(pt.storage) + " of " + std::to_string(pt.storage.numel) + " elements) is not supported");
  }
  if (contiguous) {
    t.data = base;
    return t;
  }
  // Materialize a C-contiguous copy (row-major walk with a multi-index). Many views of one storage could
  // otherwise turn a small file into gigabytes: the copies together may not exceed the file's size.
  if (nbytes > *copy_budget) {
    fail("non-contiguous views would need more than " + std::to_string(nbytes) +
         " bytes of copies in all, beyond twice the file's size (amplification refused)");
  }
  *copy_budget -= nbytes;
  std::vector<std::byte> out(t.nbytes);
  const size_t rank = pt.size.size();
  std::vector<int64_t> idx(rank, 0);
  for (uint64_t k = 0; k < numel; ++k) {
    uint64_t src = 0;
    for (size_t i = 0; i < rank; ++i) src += static_cast<uint64_t>(idx[i]) * static_cast<uint64_t>(pt.stride[i]);
    std::memcpy(out.data() + k * esz, base + src * esz, esz);
    for (size_t i = rank; i-- > 0;) {
      if (++idx[i] < pt.size[i]) break;
      idx[i] = 0;
    }
  }
  t.data = store.own(std::move(out));
  return t;
}

void add_tensors(const std::string& file, const std::vector<std::pair<std::string, PickledTensor>>& tensors,
                 const std::map<std::string, StorageBytes>& storages, WeightStore& store, size_t file_size) {
  // Non-contiguous tensors are copied; all copies together may take at most twice the file's size (+1 MiB):
  // enough for two transposed views of every storage, not for hundreds of views of one.
  uint64_t copy_budget = 2 * static_cast<uint64_t>(file_size) + (uint64_t{1} << 20);
  if (tensors.empty()) {
    throw InputError(file, "no tensors found (expected a state dict whose values are tensors at the top level)");
  }
  std::vector<TensorView> views;
  for (const auto& [name, pt] : tensors) {
    auto it = storages.find(pt.storage.key);
    if (it == storages.end()) {
      throw InputError(file, "tensor '" + name + "': " + storage_desc(pt.storage) + " is missing from the file");
    }
    views.push_back(make_view(file, name, pt, it->second, store, &copy_budget));
  }
  for (auto& v : views) store.add(std::move(v));
}

void read_zip_bin(const MappedFile& f, WeightStore& store) {
  const std::string& file = f.path();
  auto entries = read_zip(f);
  // Exactly one "<archive>/data.pkl".
  std::string prefix;
  int found = 0;
  for (const auto& [name, e] : entries) {
    const std::string suffix = "/data.pkl";
    if (name.size() > suffix.size() && ends_with(name, suffix) &&
        name.find('/') == name.size() - suffix.size()) {
      prefix = name.substr(0, name.size() - suffix.size() + 1);
      ++found;
    }
  }
  if (found == 0) throw InputError(file, "zip archive has no '<name>/data.pkl'; not a torch.save checkpoint");
  if (found > 1) throw InputError(file, "zip archive has more than one '<name>/data.pkl'");
  if (auto it = entries.find(prefix + "byteorder"); it != entries.end()) {
    std::string bo(reinterpret_cast<const char*>(it->second.data), it->second.size);
    if (bo != "little") throw InputError(file, "byte order '" + bo.substr(0, 20) + "' is not supported (only little)");
  }
  const ZipEntry& pkl = entries.at(prefix + "data.pkl");
  PickleValuePtr root = unpickle(pkl.data, pkl.size, file);
  auto tensors = state_dict_tensors(*root, file, pickle_copy_budget(pkl.size));
  std::map<std::string, StorageBytes> storages;
  for (const auto& [name, pt] : tensors) {
    if (storages.count(pt.storage.key)) continue;
    auto it = entries.find(prefix + "data/" + pt.storage.key);
    if (it == entries.end()) {
      throw InputError(file, "tensor '" + name + "': storage entry '" + prefix + "data/" + pt.storage.key +
                                 "' is missing from the archive");
    }
    storages[pt.storage.key] = {it->second.data, it->second.size};
  }
  add_tensors(file, tensors, storages, store, f.size());
}

// 0x1950a86a20f9469cfc6c, little-endian, as pickled by LONG1.
const unsigned char kLegacyMagic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

void read_legacy_bin(const MappedFile& f, WeightStore& store) {
  const std::string& file = f.path();
  const std::byte* p = f.data();
  const size_t n = f.size();
  size_t pos = 0;
  auto next = [&]() {
    size_t used = 0;
    PickleValuePtr v = unpickle(p + pos, n - pos, file, &used, pos);
    pos += used;
    return v;
  };
  PickleValuePtr magic = next();
  if (magic->kind != PickleValue::Kind::kBigInt || magic->s.size() != sizeof kLegacyMagic ||
      std::memcmp(magic->s.data(), kLegacyMagic, sizeof kLegacyMagic) != 0) {
    throw InputError(file, "not a PyTorch checkpoint (legacy format magic number missing)");
  }
  PickleValuePtr proto = next();
  if (proto->kind != PickleValue::Kind::kInt || proto->i != 1001) {
    throw InputError(file, "unsupported legacy checkpoint protocol version");
  }
  PickleValuePtr sys_info = next();
  if (sys_info->kind == PickleValue::Kind::kDict) {
    for (const auto& [k, v] : sys_info->dict) {
      if (k->kind == PickleValue::Kind::kString && k->s == "little_endian" && v->kind == PickleValue::Kind::kBool &&
          !v->b) {
        throw InputError(file, "big-endian checkpoints are not supported");
      }
    }
  }
  PickleValuePtr root = next();
  auto tensors = state_dict_tensors(*root, file, pickle_copy_budget(n));
  PickleValuePtr keys = next();
  if (keys->kind != PickleValue::Kind::kList) throw InputError(file, "legacy checkpoint: storage key list missing");

  // Element size of each storage comes from the persistent ids that reference it.
  std::map<std::string, DType> key_dtype;
  for (const auto& [name, pt] : tensors) {
    auto [it, inserted] = key_dtype.emplace(pt.storage.key, pt.storage.dtype);
    if (!inserted && it->second != pt.storage.dtype) {
      throw InputError(file, "storage '" + pt.storage.key + "' is referenced with different dtypes");
    }
  }
  std::map<std::string, StorageBytes> storages;
  for (const auto& kv : keys->items) {
    if (kv->kind != PickleValue::Kind::kString) throw InputError(file, "legacy checkpoint: storage key is not a string");
    const std::string& key = kv->s;
    auto dt = key_dtype.find(key);
    if (dt == key_dtype.end()) {
      throw InputError(file, "legacy checkpoint: storage '" + key + "' is not referenced by any tensor");
    }
    if (n - pos < 8) throw InputError(file, "truncated: storage '" + key + "' has no size header");
    uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = (count << 8) | static_cast<uint8_t>(p[pos + static_cast<size_t>(i)]);
    pos += 8;
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(count, dtype_size(dt->second), &nbytes) || nbytes > n - pos) {
      throw InputError(file, "truncated: storage '" + key + "' needs " + std::to_string(count) + " elements of " +
                                 std::string(dtype_name(dt->second)) + " but the file has " +
                                 std::to_string(n - pos) + " bytes left");
    }
    if (!storages.emplace(key, StorageBytes{p + pos, static_cast<size_t>(nbytes)}).second) {
      throw InputError(file, "legacy checkpoint: storage '" + key + "' is listed twice");
    }
    pos += static_cast<size_t>(nbytes);
  }
  add_tensors(file, tensors, storages, store, f.size());
}

}  // namespace

void read_torch_bin(const std::filesystem::path& path, WeightStore& store) {
  const std::filesystem::path dir = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  auto f = MappedFile::open_in(checkpoint_root(dir), path);
  store.keep(f);
  if (looks_like_zip(*f)) {
    read_zip_bin(*f, store);
  } else if (f->size() >= 2 && f->data()[0] == std::byte{0x80}) {
    read_legacy_bin(*f, store);
  } else if (f->size() == 0) {
    throw InputError(f->path(), "empty file");
  } else {
    throw InputError(f->path(), "not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)");
  }
  store.add_file(path.filename().string());
}

}  // namespace trex
