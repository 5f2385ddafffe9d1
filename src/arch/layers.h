// Transformer layer helpers shared by the architecture files. Each takes the checkpoint names of its weights,
// so an architecture file reads as its weight-name map plus the order of operations.
#pragma once

#include <string>

#include "arch/architecture.h"
#include "arch/weights.h"

namespace trex::layers {

// Graph inputs input_ids / attention_mask / (token_type_ids), int64 [batch, seq].
struct Inputs {
  Value input_ids;
  Value attention_mask;
  Value token_type_ids;  // empty when the model has no token types
};
Inputs declare_inputs(BuildContext& ctx, bool with_token_types);

// Additive attention bias from a 0/1 mask [B, S]: 0 where attended, float32 min where masked; shape [B, 1, 1, S].
Value attention_mask_bias(GraphBuilder& g, const Value& attention_mask);

// x @ W^T + b for an nn.Linear named `name` (`name.weight` [out, in], `name.bias` [out]).
Value linear(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, int64_t in, int64_t out,
             bool bias = true);
// nn.LayerNorm named `name` (`name.weight`, `name.bias`).
Value layer_norm(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, int64_t dim, float eps);
// transformers' ACT2FN by name: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu/swish, tanh.
// Throws InputError (naming `config_file`) for others.
Value activation(GraphBuilder& g, const Value& x, const std::string& name, const std::string& config_file);

struct AttentionNames {
  std::string query, key, value;  // nn.Linear names
};
struct AttentionOptions {
  int64_t hidden = 0;
  int64_t num_heads = 0;
  // DistilBERT scales the query before Q·K^T; BERT-style models scale the scores after.
  bool scale_query_first = false;
};
// Multi-head self-attention up to (not including) the output projection: returns the context [B, S, hidden].
Value self_attention(GraphBuilder& g, Weights& w, const Value& x, const Value& mask_bias, const AttentionNames& names,
                     const AttentionOptions& opt);

// A transformer sub-block with its residual: LayerNorm(x + Linear(f(x))). The lowering decides the ops
// (plain: MatMul/Add/LayerNormalization; fused lowerings may use Attention / SkipLayerNormalization).
struct AttentionBlockNames {
  std::string query, key, value;  // nn.Linear names
  std::string output;             // output projection nn.Linear
  std::string layer_norm;         // nn.LayerNorm after the residual
};
// LayerNorm(x + output(self_attention(x))).
Value attention_block(GraphBuilder& g, Weights& w, const Value& x, const Value& mask_bias,
                      const AttentionBlockNames& names, const AttentionOptions& opt, float eps);

struct FeedForwardNames {
  std::string up, down, layer_norm;  // Linear(hidden→inner), Linear(inner→hidden), LayerNorm
};
// LayerNorm(x + down(act(up(x)))).
Value feed_forward_block(GraphBuilder& g, Weights& w, const Value& x, const FeedForwardNames& names, int64_t hidden,
                         int64_t inner, const std::string& act, float eps, const std::string& config_file);

// hidden[:, 0] → [B, H].
Value first_token(GraphBuilder& g, const Value& x);

// Gathers the rows of an embedding table.
Value embedding(GraphBuilder& g, Weights& w, const Value& ids, const std::string& name, int64_t rows, int64_t dim);
// position_embeddings[0:S] for absolute positions 0..S-1 (BERT): [S, dim], broadcast over the batch.
Value leading_positions(GraphBuilder& g, Weights& w, const Value& input_ids, const std::string& name, int64_t rows,
                        int64_t dim);

}  // namespace trex::layers

namespace trex::layers {

// Heads shared by the BERT family (names as transformers' *For* classes use them).
// `classifier` [num_labels, hidden] on every token → logits [B, S, num_labels].
GraphOutput token_classification_head(BuildContext& ctx, Weights& w, const Value& hidden, int64_t hidden_size);
// `qa_outputs` [2, hidden] → start_logits, end_logits [B, S].
std::vector<GraphOutput> question_answering_head(BuildContext& ctx, Weights& w, const Value& hidden,
                                                 int64_t hidden_size);

}  // namespace trex::layers
