// Tensors that checkpoints store but that are not weights: registered buffers (position ids, causal-mask
// tables, rotary frequencies) saved by older transformers versions. An exporter recomputes them, so leaving
// them unused is expected and not worth a note. One list, used wherever unused tensors are reported.
#pragma once

#include <string_view>

namespace trex {

// True for a known non-weight buffer name (`embeddings.position_ids`, `h.0.attn.bias`, ...).
bool is_known_buffer(std::string_view tensor_name);

}  // namespace trex
