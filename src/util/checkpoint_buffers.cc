#include "util/checkpoint_buffers.h"

#include "util/strings.h"

namespace trex {

bool is_known_buffer(std::string_view name) {
  // Name endings of buffers transformers registers on its modules (persistent in older versions).
  static constexpr std::string_view kBufferSuffixes[] = {
      ".position_ids",        // BERT family: embeddings.position_ids (arange of max_position_embeddings)
      ".token_type_ids",      // BERT family: embeddings.token_type_ids (zeros, the default token types)
      ".masked_bias",         // GPT-2: attn.masked_bias (the -1e4 fill value)
      ".attn.bias",           // GPT-2: attn.bias (the causal mask, not a learned bias)
      "rotary_emb.inv_freq",  // rotary models: the frequencies, recomputed from the config
      "final_logits_bias",    // BART family: zeros unless trained; an all-zero one is left out of the graph
  };
  for (std::string_view suffix : kBufferSuffixes)
    if (ends_with(name, suffix)) return true;
  return false;
}

}  // namespace trex
