// Shared builders over the block spec (spec.h): norms, MLPs, the one attention helper, and the whole
// decoder-only language model. Family files fill a DecoderSpec + DecoderNames and call build_decoder().
#pragma once

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

// Reads the rotary parameters of a Llama-style config.json (rope_theta, partial_rotary_factor, rope_scaling of
// transformers 4.x or rope_parameters of 5.x). Unknown rope types are refused naming the file.
RotarySpec read_rotary(const ModelConfig& c, int64_t head_dim);

}  // namespace trex::blocks
