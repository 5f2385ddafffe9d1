// Conversion kernels for the streamed export: float rows of a mapped checkpoint (f32 / f16 / bf16) to f32,
// straight or transposed, without an intermediate buffer. Built for several instruction sets (GCC/Clang
// target_clones on x86-64, chosen at load time); every variant computes the same bytes (conversions only, no
// arithmetic).
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/tensor.h"

namespace trex {

// dst[i] = float(src[i]) for n values of `dtype` (f32, f16 or bf16; src may be unaligned).
void convert_span_to_f32(DType dtype, const std::byte* src, size_t n, float* dst);

// src is [rows, cols] of `dtype`; dst[c * ld + r] = float(src[r * cols + c]) (dst is [cols, ld], ld >= rows;
// ld < 0 means rows).
void transpose_to_f32(DType dtype, const std::byte* src, int64_t rows, int64_t cols, float* dst, int64_t ld = -1);

// Whether convert_span_to_f32 / transpose_to_f32 take this dtype.
inline bool fast_convertible(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

}  // namespace trex
