#include "passes/quantize_reference.h"

#include <algorithm>
#include <cmath>

namespace trex {
namespace {

// Integer ranges of the stored weights.
constexpr int32_t kS8Max = 127;         // symmetric s8: [-127, 127] (-128 unused, so the range is symmetric)
constexpr int32_t kS8MaxReduced = 63;   // 7-bit s8 for CPUs whose u8×s8 kernels can saturate 16-bit sums
constexpr int32_t kU8Max = 255;         // asymmetric u8: [0, 255]
constexpr int32_t kU8MaxReduced = 127;  // 7-bit u8

}  // namespace

float round_half_even(float x) {
  // Nearest integer; exact halves go to the even neighbour. Below 2^22 in magnitude, adding 1.5 * 2^23 lands
  // where the float spacing is 1, so the addition itself rounds to nearest-even, and subtracting it back is exact
  // (no floor/fmod calls: this runs once per quantized value). The same value as below (a zero may lose its sign).
  if (std::fabs(x) < 4194304.0f) return (x + 12582912.0f) - 12582912.0f;
  const float lower = std::floor(x);
  const float diff = x - lower;
  if (diff < 0.5f) return lower;
  if (diff > 0.5f) return lower + 1.0f;
  return std::fmod(lower, 2.0f) == 0.0f ? lower : lower + 1.0f;
}

QuantizedWeight quantize_reference(const float* w, int64_t k, int64_t n, const QuantParams& p) {
  QuantizedWeight out;
  out.type = p.type;
  const bool s8 = p.type == WeightType::kS8;
  // Step 1: the integer range [qmin, qmax] of the stored values.
  const int32_t qmax = s8 ? (p.reduce_range ? kS8MaxReduced : kS8Max) : (p.reduce_range ? kU8MaxReduced : kU8Max);
  const int32_t qmin = s8 ? -qmax : 0;
  out.qmin = qmin;
  out.qmax = qmax;
  const int64_t groups = p.per_channel ? n : 1;
  out.scale.resize(static_cast<size_t>(groups));
  out.zero_point.resize(static_cast<size_t>(groups));
  out.q.resize(static_cast<size_t>(k * n));

  for (int64_t g = 0; g < groups; ++g) {
    // Step 2: the float range of this group (one column, or the whole tensor).
    const int64_t col_begin = p.per_channel ? g : 0;
    const int64_t col_end = p.per_channel ? g + 1 : n;
    float lo = 0.0f, hi = 0.0f;  // the range always contains 0, so 0 is exactly representable
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t c = col_begin; c < col_end; ++c) {
        const float v = w[r * n + c];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    // Step 3: scale and zero point. s8 is symmetric around 0 (zero point 0); u8 maps [lo, hi] onto [0, qmax].
    float scale;
    int32_t zero_point;
    if (s8) {
      const float amax = std::max(-lo, hi);
      scale = amax / static_cast<float>(qmax);
      zero_point = 0;
    } else {
      scale = (hi - lo) / static_cast<float>(qmax - qmin);
      zero_point = 0;  // set below once the scale is known
    }
    if (scale == 0.0f) scale = 1.0f;  // an all-zero group: any scale works, 1 avoids dividing by zero
    if (!s8) {
      const float zp = round_half_even(static_cast<float>(qmin) - lo / scale);
      zero_point = static_cast<int32_t>(std::clamp(zp, static_cast<float>(qmin), static_cast<float>(qmax)));
    }
    out.scale[static_cast<size_t>(g)] = scale;
    out.zero_point[static_cast<size_t>(g)] = zero_point;

    // Step 4: q = clamp(round(w / scale) + zero_point, qmin, qmax), stored as a byte.
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t c = col_begin; c < col_end; ++c) {
        const float scaled = round_half_even(w[r * n + c] / scale);
        const float shifted = scaled + static_cast<float>(zero_point);
        const float clamped = std::clamp(shifted, static_cast<float>(qmin), static_cast<float>(qmax));
        const int32_t q = static_cast<int32_t>(clamped);
        out.q[static_cast<size_t>(r * n + c)] = static_cast<uint8_t>(s8 ? static_cast<uint8_t>(static_cast<int8_t>(q))
                                                                        : static_cast<uint8_t>(q));
      }
    }
  }
  return out;
}

float dequantize_reference(const QuantizedWeight& qw, int64_t n, int64_t row, int64_t col) {
  const size_t g = qw.scale.size() == 1 ? 0 : static_cast<size_t>(col);
  const uint8_t byte = qw.q[static_cast<size_t>(row * n + col)];
  // s8 bytes are two's complement; u8 bytes are plain.
  const int32_t q = qw.type == WeightType::kS8 ? static_cast<int32_t>(static_cast<int8_t>(byte)) : static_cast<int32_t>(byte);
  return static_cast<float>(q - qw.zero_point[g]) * qw.scale[g];
}

}  // namespace trex
