#include "io/fast_convert.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

// Variants for wider vector units where the compiler can make them (x86-64, GCC / Clang); the loops are plain
// C++ either way.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_ADDRESS__)
#define TREX_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define TREX_CLONES
#endif

namespace trex {
namespace {

inline uint16_t load16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline float load_f32(const std::byte* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

TREX_CLONES void bf16_span(const std::byte* src, size_t n, float* dst) {
  for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load16(src + 2 * i));
}

// A tile of kBand source rows × kTile source columns is converted into a small transposed buffer (L1), whose
// kTile rows of kBand floats are then stored contiguously into dst. Bands of kBand rows keep the source rows
// in cache while the band's tiles run across the columns.
constexpr int64_t kTile = 16, kBand = 64;

template <typename Conv>
inline void transpose_generic(const std::byte* src, size_t esz, int64_t rows, int64_t cols, float* dst, int64_t ld, Conv conv) {
  alignas(64) float t[kTile][kBand];
  for (int64_t r0 = 0; r0 < rows; r0 += kBand) {
    const int64_t nr = std::min(kBand, rows - r0);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t nc = std::min(kTile, cols - c0);
      if (nr == kBand && nc == kTile) {
        for (int64_t i = 0; i < kBand; ++i) {
          const std::byte* p = src + static_cast<size_t>((r0 + i) * cols + c0) * esz;
          for (int64_t j = 0; j < kTile; ++j) t[j][i] = conv(p + static_cast<size_t>(j) * esz);
        }
        for (int64_t j = 0; j < kTile; ++j) std::memcpy(dst + (c0 + j) * ld + r0, t[j], sizeof(float) * kBand);
      } else {
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t j = 0; j < nc; ++j)
            dst[(c0 + j) * ld + r0 + i] = conv(src + static_cast<size_t>((r0 + i) * cols + c0 + j) * esz);
      }
    }
  }
}

TREX_CLONES void transpose_bf16(const std::byte* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  transpose_generic(src, 2, rows, cols, dst, ld, [](const std::byte* p) { return bf16_to_f32(load16(p)); });
}
TREX_CLONES void transpose_f32(const std::byte* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  transpose_generic(src, 4, rows, cols, dst, ld, [](const std::byte* p) { return load_f32(p); });
}
void transpose_f16(const std::byte* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  transpose_generic(src, 2, rows, cols, dst, ld, [](const std::byte* p) { return half_to_float(load16(p)); });
}

}  // namespace

void convert_span_to_f32(DType dtype, const std::byte* src, size_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      if (n) std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16:
      bf16_span(src, n, dst);
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) dst[i] = half_to_float(load16(src + 2 * i));
      return;
    default:
      throw std::logic_error("convert_span_to_f32: not a 16/32-bit float dtype");
  }
}

void transpose_to_f32(DType dtype, const std::byte* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  if (ld < 0) ld = rows;
  switch (dtype) {
    case DType::kF32: return transpose_f32(src, rows, cols, dst, ld);
    case DType::kBF16: return transpose_bf16(src, rows, cols, dst, ld);
    case DType::kF16: return transpose_f16(src, rows, cols, dst, ld);
    default: throw std::logic_error("transpose_to_f32: not a 16/32-bit float dtype");
  }
}

}  // namespace trex
