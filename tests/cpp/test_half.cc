// float32 → float16 conversion of `--dtype fp16` (src/passes/half.h): round to nearest even, clamped range.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "passes/half.h"

namespace {

using trex::float_to_half_clamped;

TEST(Half, KnownValues) {
  EXPECT_EQ(float_to_half_clamped(0.0f), 0x0000);
  EXPECT_EQ(float_to_half_clamped(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half_clamped(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half_clamped(-2.0f), 0xC000);
  EXPECT_EQ(float_to_half_clamped(0.1f), 0x2E66);          // 0.0999755859375
  EXPECT_EQ(float_to_half_clamped(65504.0f), 0x7BFF);      // largest half
  EXPECT_EQ(float_to_half_clamped(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_half_clamped(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half_clamped(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units: ties to even (2)
  EXPECT_EQ(float_to_half_clamped(std::ldexp(1.0f, -25)), 0x0000);  // half a unit: ties to even (0)
  EXPECT_EQ(float_to_half_clamped(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie → even mantissa
  EXPECT_EQ(float_to_half_clamped(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
}

TEST(Half, OutOfRangeIsClampedNotInfinite) {
  EXPECT_EQ(float_to_half_clamped(1e6f), 0x7BFF);
  EXPECT_EQ(float_to_half_clamped(std::numeric_limits<float>::lowest()), 0xFBFF);  // the mask bias
  EXPECT_EQ(float_to_half_clamped(-std::numeric_limits<float>::infinity()), 0xFBFF);
  EXPECT_EQ(float_to_half_clamped(std::nanf("")) & 0x7C00, 0x7C00);
  EXPECT_NE(float_to_half_clamped(std::nanf("")) & 0x03FF, 0);
}

TEST(Half, RoundTripsEveryHalf) {
  // Every finite half value converts back to itself from its exact float32 value.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00) continue;  // inf / NaN
    const uint32_t sign = (h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    float f = exp == 0 ? std::ldexp(static_cast<float>(mant), -24)
                       : std::ldexp(1.0f + static_cast<float>(mant) / 1024.0f, static_cast<int>(exp) - 15);
    if (sign) f = -f;
    ASSERT_EQ(float_to_half_clamped(f), h) << std::hex << h;
  }
}

}  // namespace
