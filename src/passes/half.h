// `trex export --dtype fp16`: the plain graph with float16 weights and compute, still standard ONNX.
// Kept in float32: LayerNormalization, Softmax, the reductions of decomposed norms (Pow, ReduceMean and what
// follows them up to the division), rotary angles (int → float casts of positions, their products, Cos, Sin)
// — each a region whose float inputs are cast up and whose outputs are cast down where float16 ops read them.
// The model's interface is unchanged: integer inputs as they were, float inputs (KV cache) and float outputs
// (logits, hidden states, present K/V) float32, cast at the edges. Constants beyond float16's range (the
// float32-lowest mask bias) are clamped to ±65504.
#pragma once

#include <cstdint>

#include "graph/model.h"

namespace trex {

// float32 → float16 bits, round to nearest even, finite values beyond the range clamped to ±65504.
uint16_t float_to_half_clamped(float f);

struct HalfReport {
  size_t initializers_f16 = 0, initializers_f32 = 0, nodes_f32 = 0, casts_added = 0;
};

// Rewrites `model` in place (single graph: a model with subgraphs, If/Loop/Scan, is refused with UsageError).
HalfReport convert_to_fp16(Model& model);

}  // namespace trex
