// The statistics `trex bench` reports: percentiles as numpy computes them by default (linear interpolation
// between order statistics), and the table's columns.
#include <gtest/gtest.h>

#include "runtime/bench.h"

namespace {

TEST(Bench, PercentileMatchesLinearInterpolation) {
  // numpy.percentile([4, 1, 3, 2], [0, 10, 50, 90, 100]) = [1, 1.3, 2.5, 3.7, 4]
  const std::vector<double> v{4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(trex::percentile(v, 0.0), 1.0);
  EXPECT_NEAR(trex::percentile(v, 0.1), 1.3, 1e-12);
  EXPECT_DOUBLE_EQ(trex::percentile(v, 0.5), 2.5);
  EXPECT_NEAR(trex::percentile(v, 0.9), 3.7, 1e-12);
  EXPECT_DOUBLE_EQ(trex::percentile(v, 1.0), 4.0);
  EXPECT_DOUBLE_EQ(trex::percentile({7}, 0.5), 7.0);
  EXPECT_DOUBLE_EQ(trex::percentile({}, 0.5), 0.0);
  EXPECT_DOUBLE_EQ(trex::percentile({5, 1, 3}, 0.5), 3.0);  // odd count: the middle element
}

TEST(Bench, TableShowsSpeedUpOverTheFirstRow) {
  trex::BenchResult a, b;
  a.batch = b.batch = 2;
  a.median_ms = 10;
  b.median_ms = 4;
  a.p10_ms = 9, a.p90_ms = 11, b.p10_ms = 3.5, b.p90_ms = 4.5;
  const std::string t = trex::bench_table({{"fp32", a}, {"int8", b}});
  EXPECT_NE(t.find("2.50x"), std::string::npos) << t;
  EXPECT_NE(t.find("3.500-4.500"), std::string::npos) << t;
  EXPECT_NEAR(b.sequences_per_s(), 500.0, 1e-9);
  // Paired speed-ups (interleaved runs) are shown instead of the ratio of medians.
  b.speedup_median = 2.2, b.speedup_min = 1.9, b.speedup_max = 2.6;
  const std::string p = trex::bench_table({{"fp32", a}, {"int8", b}});
  EXPECT_NE(p.find("2.20x"), std::string::npos) << p;
  EXPECT_NE(p.find("1.90-2.60x"), std::string::npos) << p;
}

}  // namespace
