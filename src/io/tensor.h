// Element types and read-only tensor views over checkpoint bytes (usually memory-mapped, never copied).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trex {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element.
size_t dtype_size(DType t);
// Name as safetensors writes it ("F32", "BF16", ...).
std::string_view dtype_name(DType t);

using Shape = std::vector<int64_t>;
int64_t num_elements(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"

// A dense, row-major (C-contiguous) tensor living in memory owned by someone else
// (a MappedFile held by the WeightStore). Little-endian element bytes.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // file the bytes come from, for error messages
};

// IEEE half bits to float (exact; NaN payloads kept).
float half_to_float(uint16_t h);

// Converts a floating tensor (f32/f16/bf16/f64) to f32 into `dst` (num_elements floats).
void convert_to_f32(const TensorView& t, float* dst);

}  // namespace trex
