// Transformer layer helpers shared by the architecture files. Each takes the checkpoint names of its weights,
// so an architecture file reads as its weight-name map plus the order of operations.
#pragma once

#include <string>

#include "arch/architecture.h"
#include "arch/spec.h"
#include "arch/weights.h"

namespace trex::layers {

// Graph inputs input_ids / attention_mask / (token_type_ids), int64 [batch, seq].
struct Inputs {
  Value input_ids;
  Value attention_mask;
  Value token_type_ids;  // empty when the model has no token types
};
Inputs declare_inputs(BuildContext& ctx, bool with_token_types);

// The attention mask in the form the lowering's attention wants. Plain: an additive bias from the 0/1 mask
// [B, S] — 0 where attended, float32 min where masked (as transformers' eager path) — shaped [B, 1, 1, S].
// ORT: the raw mask as int32 [B, S] (Attention's mask_index).
Value prepare_attention_mask(GraphBuilder& g, const Value& attention_mask);

// word + token type + position embeddings, then LayerNorm. Token types: gathered by `token_type_ids` when the
// inputs have them, else row 0 of the token-type table when the model has one (names.token_type non-empty).
// Positions: `position_ids` when given (RoBERTa), else 0..S-1.
struct EmbeddingNames {
  std::string word, position, token_type, layer_norm;  // full tensor names (layer_norm without .weight)
};
struct EmbeddingDims {
  int64_t vocab = 0, max_positions = 0, type_vocab = 0, dim = 0;
  float eps = 1e-12f;
};
Value embeddings(GraphBuilder& g, Weights& w, const Inputs& in, const EmbeddingNames& names, const EmbeddingDims& d,
                 const Value& position_ids = "");

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

// A post-norm encoder layer (BERT family) described by the block spec: attention_block then
// feed_forward_block, with the layer's names from a LayerNames table (roles q, k, v, o, attn_norm, up, down,
// mlp_norm). Pre-norm decoder layers are built by blocks::build_decoder.
Value encoder_block(GraphBuilder& g, Weights& w, const Value& x, const Value& mask_bias, const BlockSpec& spec,
                    const LayerNames& names, const std::string& config_file);

struct FeedForwardNames {
  std::string up, down, layer_norm;  // Linear(hidden→inner), Linear(inner→hidden), LayerNorm
};
// LayerNorm(x + down(act(up(x)))).
Value feed_forward_block(GraphBuilder& g, Weights& w, const Value& x, const FeedForwardNames& names, int64_t hidden,
                         int64_t inner, const std::string& act, float eps, const std::string& config_file);

// x @ W^T for a vocabulary projection whose weight [vocab, dim] may be absent from the checkpoint because it is
// tied to the word embeddings (`fallback`). Plain: a runtime Transpose of the shared table (one copy in the
// file); fused: a transposed initializer (folded at export).
Value tied_decoder(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, const std::string& fallback,
                   int64_t vocab, int64_t dim);

// hidden[:, 0] → [B, H].
Value first_token(GraphBuilder& g, const Value& x);

// Gathers the rows of an embedding table.
Value embedding(GraphBuilder& g, Weights& w, const Value& ids, const std::string& name, int64_t rows, int64_t dim);
// position_embeddings[0:S] for absolute positions 0..S-1 (BERT): [S, dim], broadcast over the batch.
Value leading_positions(GraphBuilder& g, Weights& w, const Value& input_ids, const std::string& name, int64_t rows,
                        int64_t dim);

}  // namespace trex::layers

namespace trex::layers {

// The heads of the BERT family, described by each architecture's names; heads() builds the one the task asks for.
struct HeadSpec {
  int64_t hidden = 0;
  int64_t vocab = 0;
  float eps = 1e-12f;
  std::string word_embeddings;  // tied decoder weight when the checkpoint has no decoder weight
  // Pooler: Linear `pooler` + tanh on the first token ("" = the architecture has none). feature-extraction adds
  // pooler_output when the checkpoint holds its weight.
  std::string pooler;
  // Sequence classification: with `classifier_dense` empty, `classifier_out` on the pooled output; else
  // out(act(dense(first token))) (RoBERTa: tanh, ELECTRA: gelu, DistilBERT: relu).
  std::string classifier_dense, classifier_act, classifier_out = "classifier";
  // Fill-mask: decoder(LayerNorm(act(dense(x)))) + bias, dense mapping hidden → mlm_dim.
  std::string mlm_dense, mlm_act, mlm_layer_norm, mlm_decoder, mlm_bias, mlm_bias_fallback;
  int64_t mlm_dim = 0;
};
std::vector<GraphOutput> heads(BuildContext& ctx, Weights& w, const Value& hidden_states, const HeadSpec& spec);

}  // namespace trex::layers
