// Quantizes an ONNX file end to end: read, quantize (passes/quantize.h), write, compare int8 with fp32 in
// ONNX Runtime, and — when the comparison misses its accuracy target — put the most sensitive weights back
// to fp32 and retry. Used by `trex quantize` and `trex export --quantize`.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "onnx/writer.h"
#include "passes/quantize.h"
#include "passes/quantize_embeddings.h"
#include "passes/quantize_int4.h"
#include "runtime/compare.h"

namespace trex {

struct QuantizeFileOptions {
  QuantizePolicy policy;
  int bits = 8;        // 4: MatMulNBits with int4 (the exclusions and auto policy are taken from `policy`)
  Int4Policy int4;     // bits = 4
  bool calibrate = true;      // bits = 4: weigh the clipping search by activation mean squares (quantize_calibrate.h)
  bool gptq = true;           // bits = 4 with calibration: GPTQ error feedback (quantize_int4_gptq)
  bool embeddings = true;     // Gather tables -> GatherBlockQuantized (passes/quantize_embeddings.h)
  EmbeddingPolicy embedding;
  WriteOptions write;
  bool check = true;          // compare with fp32 in ONNX Runtime
  bool fallback = true;       // on a missed target, move the worst eighth of weights back to fp32 and retry
  int fallback_rounds = 3;
  double min_cosine = 0.99;   // mean row cosine vs fp32
  double min_label_agreement = 0.95;
  // int8 (com.microsoft form): activation outliers and per-row scales (docs/quantization.md). Up to
  // `outlier_channels` input channels per activation (those whose calibration max |x| exceeds outlier_ratio x the
  // median channel's) are multiplied in fp32; 0 (default) turns it off. The accurate form: 2 + kNormalized.
  int outlier_channels = 0;
  double outlier_ratio = 4.0;
  RowScales row_scales = RowScales::kNone;
  int samples = 4;            // sample batches
  int64_t batch = 2, seq = 16;
};

struct QuantizeFileResult {
  QuantizePolicy policy;  // as finally applied (with fallback exclusions)
  QuantizeReport report;
  EmbeddingReport embeddings;
  WriteResult written;
  double seconds = 0;     // read + quantize + write (first pass)
  std::optional<CompareResult> comparison;
  std::vector<std::string> fallback;  // weights put back to fp32 by the accuracy check
  bool missed_target = false;
};

// Throws InputError / OutputError / UsageError. A missed target is reported in the result, not thrown.
QuantizeFileResult quantize_file(const std::filesystem::path& input, const std::filesystem::path& output,
                                 const QuantizeFileOptions& options);

}  // namespace trex
