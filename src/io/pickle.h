// A restricted unpickler for PyTorch checkpoints. It never executes anything: GLOBAL/STACK_GLOBAL are
// accepted only for an allow-list of names (OrderedDict, torch tensor rebuild functions, torch storage
// types and dtypes), and REDUCE is interpreted only for those. Any other global is an InputError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/tensor.h"

namespace trex {

// A storage referenced by a persistent id ('storage', storage_type, key, location, numel[, view_metadata]).
struct PickledStorage {
  std::string key;
  DType dtype = DType::kF32;
  int64_t numel = 0;  // elements of `dtype`, as recorded in the persistent id
  std::string location;
};

// A tensor rebuilt by torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter.
struct PickledTensor {
  PickledStorage storage;
  int64_t storage_offset = 0;  // in elements
  Shape size;
  std::vector<int64_t> stride;  // in elements
};

// A value produced by the unpickler.
struct PickleValue {
  enum class Kind { kNone, kBool, kInt, kBigInt, kFloat, kString, kBytes, kTuple, kList, kDict, kGlobal, kStorage, kTensor };
  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // string, bytes, kBigInt (little-endian two's complement bytes), global "module.name"
  std::vector<std::shared_ptr<PickleValue>> items;  // tuple, list
  std::vector<std::pair<std::shared_ptr<PickleValue>, std::shared_ptr<PickleValue>>> dict;  // dict, in order
  std::shared_ptr<PickledStorage> storage;  // kStorage
  std::shared_ptr<PickledTensor> tensor;    // kTensor

  PickleValue() = default;
  PickleValue(const PickleValue&) = delete;
  PickleValue& operator=(const PickleValue&) = delete;
  // Iterative, so that hostile deeply nested containers cannot overflow the stack on destruction.
  ~PickleValue();
};
using PickleValuePtr = std::shared_ptr<PickleValue>;

// Unpickles one pickle starting at `data` (at most `size` bytes). `file` names the source in messages.
// `consumed` (optional) receives the number of bytes up to and including STOP; `base_offset` is added to
// offsets in messages (where the pickle starts in its file).
// Throws InputError("<file>: <problem>") on a malformed pickle, an unknown opcode (naming it and its
// offset) or a forbidden global.
PickleValuePtr unpickle(const std::byte* data, size_t size, const std::string& file, size_t* consumed = nullptr,
                        size_t base_offset = 0);

// The tensors of a state dict: the top-level dict's string keys whose values are tensors, in pickle order.
// Non-tensor values (e.g. nested metadata) are ignored. Throws when the pickle is not a dict.
// `budget` bounds the work of copying entries (name and tensor description sizes): a pickle whose entries
// all reuse one memoized tensor must not expand without bound; pass pickle_copy_budget(pickle bytes).
std::vector<std::pair<std::string, PickledTensor>> state_dict_tensors(const PickleValue& root, const std::string& file,
                                                                      uint64_t budget = ~uint64_t{0});

// The copy budget of a pickle of `pickle_bytes` bytes: 4 units per byte plus 1 Mi (memo reuse beyond that is
// refused as amplification). Also bounds the bytes of non-contiguous tensors materialized from a .bin.
uint64_t pickle_copy_budget(size_t pickle_bytes);

}  // namespace trex
