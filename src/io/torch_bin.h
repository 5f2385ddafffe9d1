// Reader for pytorch_model.bin state dicts written by torch.save: the zip format (default since torch 1.6)
// and the legacy format (_use_new_zipfile_serialization=False). The pickle is read with the restricted
// unpickler (no code is executed). C-contiguous tensors are views into the mapped file; others are
// materialized as contiguous copies owned by the WeightStore.
#pragma once

#include <filesystem>

namespace trex {

class WeightStore;

// Maps `path` and adds its tensors to `store`. Throws InputError("<file>: <problem>").
void read_torch_bin(const std::filesystem::path& path, WeightStore& store);

}  // namespace trex
