// The scalar reference weight quantizer: plain loops, one element at a time, written to be read and checked
// by eye. The fast quantizer in quantize.cc must produce bit-identical bytes (tests/cpp/test_quantize.cc).
#pragma once

#include <cstdint>
#include <vector>

namespace trex {

enum class WeightType { kS8, kU8 };

struct QuantParams {
  WeightType type = WeightType::kS8;
  bool per_channel = true;    // one scale (and zero point) per output column, else one for the tensor
  bool reduce_range = false;  // 7-bit weights: s8 in [-63, 63], u8 in [0, 127]
};

// A quantized K×N weight (row-major, output channels = columns): w ≈ (q - zero_point) * scale.
struct QuantizedWeight {
  WeightType type = WeightType::kS8;
  int32_t qmin = -127, qmax = 127;   // the integer range used
  std::vector<uint8_t> q;             // K*N bytes; int8 values stored as their two's complement bytes
  std::vector<float> scale;           // N (per channel) or 1
  std::vector<int32_t> zero_point;    // same count as scale; 0 for s8
};

// Quantizes the row-major K×N float matrix `w`.
QuantizedWeight quantize_reference(const float* w, int64_t k, int64_t n, const QuantParams& p);

// The float value a quantized element stands for.
float dequantize_reference(const QuantizedWeight& qw, int64_t n, int64_t row, int64_t col);

// Round half to even, as ONNX QuantizeLinear and numpy.rint do.
float round_half_even(float x);

}  // namespace trex
