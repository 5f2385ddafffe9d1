// Quantized embedding tables: Gather(table [V, H] float, ids) becomes com.microsoft.GatherBlockQuantized with
// the table stored block-wise along H (uint8 codes, a float scale per block), so an embedding costs 1 byte
// (bits = 8) or half a byte (bits = 4) per value instead of 4. Only the gathered rows are dequantized at run
// time.
//
// Layout emitted (ONNX Runtime's GatherBlockQuantized with uint8 data, gather_axis 0, quantize_axis 1):
//   bits 8: data uint8 [V, H], codes 1..255 around the default zero point 128 (symmetric), scales [V, H/block]
//   bits 4: data uint8 [V, H/2] (element 2i in the low nibble), codes around the default zero point 8, scales
//           [V, H/block]; the scales come from the int4 quantizer's clipping search (passes/quantize_int4.h)
//   no zero_points input in either case.
// A table read through Slice (trex's position embeddings) becomes DequantizeLinear (uint8 per row around 128,
// axis 0, opset >= 13) -> Slice: standard ONNX, 1 byte per value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/model.h"

namespace trex {

struct EmbeddingPolicy {
  int bits = 8;                  // 8 or 4
  int64_t block_size = 128;      // along H, a power of two in 16..256; halved (down to 16) until it divides H
  int64_t min_elements = 16384;  // smaller tables stay float
};

struct QuantizedEmbedding {
  std::string node, table;
  int64_t rows = 0, cols = 0, block_size = 0;
};
struct EmbeddingReport {
  std::vector<QuantizedEmbedding> quantized;
  std::vector<std::pair<std::string, std::string>> skipped;  // table, reason
};

// The 8-bit reference: codes (uint8, 128 = 0) and scales [rows, cols / block] of a row-major table, symmetric
// round-to-nearest per block (scale = max |x| / 127). False when the table holds NaN or infinity.
bool quantize_table_int8(const float* table, int64_t rows, int64_t cols, int64_t block, std::vector<uint8_t>* codes,
                         std::vector<float>* scales);

// Rewrites every Gather (axis 0) whose data is a 2-D float initializer used by nothing else, with H a multiple
// of 16 and at least min_elements values. Throws UsageError on a bad policy.
Model quantize_embeddings(const Model& in, const EmbeddingPolicy& policy, EmbeddingReport* report = nullptr);

}  // namespace trex
