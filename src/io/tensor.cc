#include "io/tensor.h"

#include "io/fast_convert.h"

#include <bit>
#include <cstring>

#include "util/error.h"

namespace trex {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16:
      return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
      return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kF64: return "F64";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kI16: return "I16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
  }
  return "?";
}

int64_t num_elements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw InputError("negative dimension in shape " + shape_str(shape));
    if (__builtin_mul_overflow(n, d, &n)) throw InputError("shape " + shape_str(shape) + " has too many elements");
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / nan (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {
    // Subnormal: value = mant * 2^-24. Normalize.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3FFu;
    bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

void convert_to_f32(const TensorView& t, float* dst) {
  const int64_t n64 = num_elements(t.shape);
  const size_t n = static_cast<size_t>(n64);
  const size_t esz = dtype_size(t.dtype);
  size_t need = 0;
  if (__builtin_mul_overflow(n, esz, &need) || need > t.nbytes) {
    throw InputError(t.file.empty() ? t.name : t.file,
                     "tensor '" + t.name + "': " + shape_str(t.shape) + " " + std::string(dtype_name(t.dtype)) +
                         " needs " + std::to_string(need) + " bytes, has " + std::to_string(t.nbytes));
  }
  const std::byte* src = t.data;
  switch (t.dtype) {
    case DType::kF32:
      if (n) std::memcpy(dst, src, n * 4);
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = half_to_float(h);
      }
      return;
    case DType::kBF16:
      convert_span_to_f32(DType::kBF16, src, n, dst);  // vectorized (a 16-bit shift)
      return;
    case DType::kF64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    default:
      throw InputError(t.file.empty() ? t.name : t.file,
                       "tensor '" + t.name + "': expected a floating-point tensor, got " +
                           std::string(dtype_name(t.dtype)));
  }
}

}  // namespace trex
