// The BERT encoder, shared by the architectures whose encoder layers are BERT's under another prefix
// (RoBERTa family, ELECTRA).
#pragma once

#include <string>

#include "arch/layers.h"

namespace trex::bert {

struct Dims {
  int64_t hidden = 0, layers = 0, heads = 0, intermediate = 0, vocab = 0, max_positions = 0, type_vocab = 0;
  int64_t embedding_size = 0;  // ELECTRA/ALBERT factorized embeddings; == hidden otherwise
  int64_t pad_token_id = 0;
  std::string hidden_act;
  float eps = 1e-12f;
};
// Reads and validates BERT-style config fields (hidden_size, num_hidden_layers, ...).
Dims read_dims(const ModelConfig& c);

// The post-norm block these dimensions describe (LayerNorm after each residual, plain MLP, no cache).
BlockSpec block_spec(const Dims& d);

// `encoder.layer.<i>.*` (base-model names) applied to x [B, S, hidden].
Value encoder(GraphBuilder& g, Weights& w, Value x, const Value& mask_bias, const Dims& d,
              const std::string& config_file);

}  // namespace trex::bert
