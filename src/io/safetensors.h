// Reader for the safetensors format: an 8-byte little-endian header length N, N bytes of JSON
// ({name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}), then the data region.
// Every field is validated; tensors are views into the memory-mapped file.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "io/tensor.h"

namespace trex {

class MappedFile;
class WeightStore;

// Parses and validates a mapped safetensors file; the views point into `file`, which must outlive them.
// Throws InputError("<file>: <problem>").
std::vector<TensorView> parse_safetensors(const MappedFile& file);

// Maps `path`, validates it and adds its tensors to `store` (which keeps the mapping alive).
void read_safetensors(const std::filesystem::path& path, WeightStore& store);

// Parses a safetensors dtype name ("F32", "BF16", ...); false when unknown.
bool parse_safetensors_dtype(const std::string& name, DType* out);

}  // namespace trex
