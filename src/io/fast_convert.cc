#include "io/fast_convert.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>

#include "util/simd.h"

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

// 16×16 tiles in vector registers (GCC / Clang vector extensions): 16 source rows loaded and converted, transposed
// by four rounds of two-register shuffles (round s swaps the off-diagonal s×s sub-blocks), stored as 16 output
// rows. Partial tiles at the edges take the element-wise path.
typedef float V16f __attribute__((vector_size(64)));
typedef uint32_t V16u __attribute__((vector_size(64)));
typedef uint16_t V16h __attribute__((vector_size(32)));

inline __attribute__((always_inline)) void transpose16(V16f* r) {
  for (int i = 0; i < 16; ++i)
    if (!(i & 1)) {
      const V16f x = r[i], y = r[i + 1];
      r[i] = __builtin_shufflevector(x, y, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
      r[i + 1] = __builtin_shufflevector(x, y, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    }
  for (int i = 0; i < 16; ++i)
    if (!(i & 2)) {
      const V16f x = r[i], y = r[i + 2];
      r[i] = __builtin_shufflevector(x, y, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
      r[i + 2] = __builtin_shufflevector(x, y, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
  for (int i = 0; i < 16; ++i)
    if (!(i & 4)) {
      const V16f x = r[i], y = r[i + 4];
      r[i] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
      r[i + 4] = __builtin_shufflevector(x, y, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    }
  for (int i = 0; i < 16; ++i)
    if (!(i & 8)) {
      const V16f x = r[i], y = r[i + 8];
      r[i] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
      r[i + 8] = __builtin_shufflevector(x, y, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    }
}

template <bool kBf16>
inline __attribute__((always_inline)) void transpose_tiles(const std::byte* src, int64_t rows, int64_t cols, float* dst,
                                                           int64_t ld) {
  constexpr size_t es = kBf16 ? 2 : 4;
  const int64_t full_r = rows / 16 * 16, full_c = cols / 16 * 16;
  V16f r[16];
  for (int64_t r0 = 0; r0 < full_r; r0 += 16)
    for (int64_t c0 = 0; c0 < full_c; c0 += 16) {
      for (int i = 0; i < 16; ++i) {
        const std::byte* p = src + static_cast<size_t>((r0 + i) * cols + c0) * es;
        if constexpr (kBf16) {
          V16h h;
          std::memcpy(&h, p, sizeof h);
          const V16u u = __builtin_convertvector(h, V16u) << 16;
          std::memcpy(&r[i], &u, sizeof u);
        } else {
          std::memcpy(&r[i], p, sizeof r[i]);
        }
      }
      transpose16(r);
      for (int j = 0; j < 16; ++j) std::memcpy(dst + (c0 + j) * ld + r0, &r[j], sizeof r[j]);
    }
  auto conv = [](const std::byte* p) { return kBf16 ? bf16_to_f32(load16(p)) : load_f32(p); };
  for (int64_t i = 0; i < rows; ++i)  // the edges: the last rows % 16 rows, the last cols % 16 columns
    for (int64_t j = (i < full_r ? full_c : 0); j < cols; ++j)
      dst[j * ld + i] = conv(src + static_cast<size_t>(i * cols + j) * es);
}

TREX_CLONES void transpose_bf16(const std::byte* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  transpose_tiles<true>(src, rows, cols, dst, ld);
}
TREX_CLONES void transpose_f32(const std::byte* src, int64_t rows, int64_t cols, float* dst, int64_t ld) {
  transpose_tiles<false>(src, rows, cols, dst, ld);
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
