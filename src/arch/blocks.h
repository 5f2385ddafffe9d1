// Shared builders over the block spec (spec.h): norms, MLPs, the one attention helper, and the whole
// decoder-only language model. Family files fill a DecoderSpec + DecoderNames and call build_decoder().
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "arch/architecture.h"
#include "arch/spec.h"
#include "arch/weights.h"

namespace trex::blocks {

// The norm named `name` (`name.weight`, and `name.bias` for LayerNorm when `bias`).
Value norm(GraphBuilder& g, Weights& w, const Value& x, NormKind kind, const std::string& name, int64_t dim, float eps,
           bool bias = true);

// The residual add followed by the next norm: {x + delta, norm(x + delta)}. Fused: one Skip(Simplified)
// LayerNormalization node.
std::pair<Value, Value> residual_norm(GraphBuilder& g, Weights& w, const Value& x, const Value& delta, NormKind kind,
                                      const std::string& name, int64_t dim, float eps, bool bias = true);

// x @ W^T + b (nn.Linear, weight [out, in]) or x @ W + b (Conv1D, weight [in, out]).
Value project(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, int64_t in, int64_t out, bool bias,
              bool conv1d);

// What attention reads besides the hidden states.
struct AttentionInputs {
  Value mask_bias;               // additive, broadcastable to [B, heads, S, T]
  Value cos, sin;                // plain: [B, 1, S, rotary dim]; fused: caches [positions, rotary dim / 2]
  Value past_key, past_value;    // [B, kv_heads, P, head_dim]; empty: no cache
  Value seqlens_k, total_length; // fused: int32 [B] (= T - 1) and int32 scalar T
  Value position_ids;            // fused: [B, S] for RotaryEmbedding
  Value key_padding_mask;        // fused encoder-decoders: int32 [B, T] 0/1 for MultiHeadAttention (mask_bias then
                                 // holds only what is [1 or B, 1 or heads, S, T]: causal mask, position bias)
  int64_t layer = 0;
};
struct AttentionOutputs {
  Value context;                    // [B, S, hidden] after the output projection (or [B, S, heads*head_dim] from core)
  Value present_key, present_value; // [B, kv_heads, T, head_dim] (past ++ new) when a cache is kept
};

// The attention arithmetic shared by every model: q [B, heads, S, d], k/v [B, kv_heads, S, d] → past appended,
// K/V repeated per query group, scaled scores + mask bias, softmax, context as [B, S, heads * d].
AttentionOutputs attention_core(GraphBuilder& g, const Value& q, const Value& k, const Value& v,
                                const AttentionSpec& spec, const AttentionInputs& in);

// Whether self_attention() emits com.microsoft GroupQueryAttention for this spec (fused lowering, head size a
// multiple of 16), else the plain attention ops.
bool uses_group_query_attention(const GraphBuilder& g, const AttentionSpec& a);

// Self-attention of a decoder layer: projections (separate or packed Q/K/V, biases), q/k norms, rotary, the
// core, and the output projection.
AttentionOutputs self_attention(GraphBuilder& g, Weights& w, const Value& x, const BlockSpec& block,
                                const LayerNames& names, const AttentionInputs& in);

// The feed-forward sub-block without residual: plain down(act(up x)) or gated down(act(gate x) * up x).
Value mlp(GraphBuilder& g, Weights& w, const Value& x, const BlockSpec& block, const LayerNames& names,
          const std::string& config_file);

// A decoder-only causal language model: embeddings → pre-norm blocks with a KV cache → final norm → LM head.
struct DecoderSpec {
  int64_t vocab = 0;
  int64_t hidden = 0;
  std::vector<BlockSpec> layers;   // one per layer (sliding windows may differ between layers)
  NormKind final_norm = NormKind::kRMSNorm;
  bool norm_bias = false;          // LayerNorm biases (GPT-2)
  int64_t learned_positions = 0;   // rows of a learned position table (GPT-2's wpe); 0 = rotary only
  int64_t max_positions = 0;       // rotary cache rows of the fused lowering (max_position_embeddings)
  double embedding_scale = 0;      // multiply token embeddings (Gemma: sqrt(hidden)); 0 = none
  bool tie_word_embeddings = false;
};
struct DecoderNames {
  std::string embed_tokens, embed_positions, final_norm, lm_head;  // full names
  LayerNames layer;                                                // templates with {i}
};
// Inputs input_ids [B, S], attention_mask [B, T], position_ids [B, S], past_key_values.{i}.key|value;
// outputs logits [B, S, vocab], present.{i}.key|value (T = past + S).
std::vector<GraphOutput> build_decoder(BuildContext& ctx, Weights& w, const DecoderSpec& spec,
                                       const DecoderNames& names);

// An encoder-decoder language model (t5, bart, marian, ...) as optimum lays it out: a set of two graphs.
//   encoder_model:        input_ids, attention_mask [B, S_enc] → last_hidden_state [B, S_enc, hidden]
//   decoder_model_merged: input_ids [B, S], encoder_attention_mask, encoder_hidden_states,
//                         past_key_values.{i}.decoder|encoder.key|value, use_cache_branch (bool [1])
//                         → logits [B, S, vocab], present.{i}.decoder|encoder.key|value
// One decoder graph serves the first step (use_cache_branch false: cross-attention K/V projected from the encoder
// states, returned as present.{i}.encoder.*) and the steps with a past (true: attention reads the cached encoder
// K/V in place, and present.{i}.encoder.* have 0 rows: the caller keeps the first step's, as with optimum's
// merged decoder), without an If node.
inline constexpr const char* kEncoderGraph = "encoder_model";
inline constexpr const char* kDecoderMergedGraph = "decoder_model_merged";

struct Seq2SeqSpec {
  int64_t vocab = 0;          // rows of the (encoder) token embeddings
  int64_t decoder_vocab = 0;  // rows of the decoder's token embeddings = logits width
  int64_t hidden = 0;
  std::vector<BlockSpec> encoder_layers, decoder_layers;  // decoder layers: causal self-attention + cross-attention
  enum class Positions { kNone, kLearned, kSinusoidal };
  Positions positions = Positions::kNone;
  int64_t max_positions = 0;    // rows of the position table (learned: without the offset)
  int64_t position_offset = 0;  // BART's learned positions start at row 2
  double embedding_scale = 0;   // token embeddings * this (scale_embedding: sqrt(d_model)); 0 = none
  bool embedding_norm = false;  // LayerNorm right after the embeddings (BART's layernorm_embedding)
  bool final_norm = false;      // a norm after the last layer of each stack (T5, mBART)
  bool norm_bias = true;        // LayerNorm biases
  struct RelativeBias {
    int64_t num_buckets = 32, max_distance = 128;
  };
  std::optional<RelativeBias> relative_bias;  // T5: the first layer's bucket table serves every layer of its stack
  bool tie_word_embeddings = true;
  double tied_head_scale = 0;     // T5: decoder output * d_model^-0.5 before a tied head; 0 = none
  bool final_logits_bias = false;  // BART family: a [1, vocab] buffer added to the logits
};
struct Seq2SeqNames {
  std::string embed_tokens, decoder_embed_tokens, lm_head, final_logits_bias;  // full names
  struct Stack {
    std::string embed_positions, embedding_norm, final_norm, relative_bias;  // full names
    LayerNames layer;                                                         // templates with {i}
  };
  Stack encoder, decoder;
};
// Builds the graph ctx.part names (kEncoderGraph or kDecoderMergedGraph).
std::vector<GraphOutput> build_seq2seq(BuildContext& ctx, Weights& w, const Seq2SeqSpec& spec,
                                       const Seq2SeqNames& names);

// Reads the rotary parameters of a Llama-style config.json (rope_theta, partial_rotary_factor, rope_scaling of
// transformers 4.x or rope_parameters of 5.x). Unknown rope types are refused naming the file.
RotarySpec read_rotary(const ModelConfig& c, int64_t head_dim);

}  // namespace trex::blocks
