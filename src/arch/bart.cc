// BART-family encoder-decoders (model_type bart, mbart, marian): LayerNorm blocks with biases, attention scores
// scaled by head_dim^-0.5, plain feed-forward, tied head plus final_logits_bias. The models differ only in data
// (the variant table below and config.json) and are built by blocks::build_seq2seq as encoder_model +
// decoder_model_merged.
#include <cmath>
#include <tuple>
#include <stdexcept>

#include "arch/blocks.h"
#include "util/error.h"

namespace trex {
namespace {

using Positions = blocks::Seq2SeqSpec::Positions;

struct Variant {
  const char* model_type;
  NormPlacement placement;  // post-norm (BART, Marian) or pre-norm (mBART)
  Positions positions;      // learned with an offset of 2 (BART, mBART) or static sinusoids (Marian)
  bool embedding_norm;      // layernorm_embedding after the embeddings
  bool final_norm;          // encoder/decoder layer_norm after the last layer (mBART)
};

const Variant kVariants[] = {
    {"bart", NormPlacement::kPost, Positions::kLearned, true, false},
    {"mbart", NormPlacement::kPre, Positions::kLearned, true, true},
    {"marian", NormPlacement::kPost, Positions::kSinusoidal, false, false},
};

const Variant& variant(const std::string& model_type) {
  for (const auto& v : kVariants)
    if (model_type == v.model_type) return v;
  throw std::logic_error("no BART-family variant for " + model_type);
}

std::vector<GraphOutput> build_bart(BuildContext& ctx) {
  const ModelConfig& c = ctx.config;
  const Variant& var = variant(c.model_type);
  const int64_t d_model = c.get_positive_int("d_model");

  auto block = [&](const char* heads_key, const char* ffn_key, bool decoder) {
    const int64_t heads = c.get_positive_int(heads_key);
    if (d_model % heads != 0)
      c.fail("d_model " + std::to_string(d_model) + " is not a multiple of " + heads_key + " " + std::to_string(heads));
    BlockSpec b;
    b.hidden = d_model;
    b.norm = NormKind::kLayerNorm;
    b.placement = var.placement;
    b.eps = 1e-5f;  // nn.LayerNorm's default
    b.mlp = MlpKind::kPlain;
    b.activation = c.get_string("activation_function", "gelu");
    b.intermediate = c.get_positive_int(ffn_key);
    b.mlp_bias = true;
    AttentionSpec& a = b.attention;
    a.num_heads = a.num_kv_heads = heads;
    a.head_dim = d_model / heads;
    a.causal = decoder;
    a.qkv_bias = a.o_bias = true;
    a.scaling = ScoreScaling::kMultiplyScores;
    return b;
  };

  blocks::Seq2SeqSpec spec;
  spec.vocab = c.get_positive_int("vocab_size");
  const bool shared = c.get_bool("share_encoder_decoder_embeddings", true);  // Marian's option; others share
  spec.decoder_vocab = shared ? spec.vocab : c.get_int("decoder_vocab_size", spec.vocab);
  if (spec.decoder_vocab <= 0) c.fail("'decoder_vocab_size' must be positive");
  spec.hidden = d_model;
  spec.positions = var.positions;
  spec.max_positions = c.get_positive_int("max_position_embeddings");
  spec.position_offset = var.positions == Positions::kLearned ? 2 : 0;
  // sqrt(d_model) as a Python float, rounded to float32 by the multiply.
  if (c.get_bool("scale_embedding", false)) spec.embedding_scale = std::sqrt(static_cast<double>(d_model));
  spec.embedding_norm = var.embedding_norm;
  spec.final_norm = var.final_norm;
  spec.tie_word_embeddings = c.get_bool("tie_word_embeddings", true);
  spec.encoder_layers.assign(static_cast<size_t>(c.get_positive_int("encoder_layers")),
                             block("encoder_attention_heads", "encoder_ffn_dim", false));
  spec.decoder_layers.assign(static_cast<size_t>(c.get_positive_int("decoder_layers")),
                             block("decoder_attention_heads", "decoder_ffn_dim", true));

  Weights w(ctx.weights, ctx.graph, "model");
  blocks::Seq2SeqNames names;
  names.embed_tokens = shared ? w.base("shared.weight") : w.base("encoder.embed_tokens.weight");
  names.decoder_embed_tokens = shared ? "" : w.base("decoder.embed_tokens.weight");
  names.lm_head = "lm_head.weight";
  names.final_logits_bias = "final_logits_bias";
  // A buffer of the generation model; checkpoints saved without it mean zeros.
  spec.final_logits_bias = w.has(names.final_logits_bias);
  for (auto [stack, prefix, is_decoder] : {std::tuple{&names.encoder, w.base("encoder."), false},
                                           std::tuple{&names.decoder, w.base("decoder."), true}}) {
    stack->embed_positions = prefix + "embed_positions.weight";
    stack->embedding_norm = prefix + "layernorm_embedding";
    stack->final_norm = prefix + "layer_norm";
    LayerNames& l = stack->layer;
    const std::string L = prefix + "layers.{i}.";
    l.attn_norm = L + "self_attn_layer_norm";
    l.q = L + "self_attn.q_proj";
    l.k = L + "self_attn.k_proj";
    l.v = L + "self_attn.v_proj";
    l.o = L + "self_attn.out_proj";
    if (is_decoder) {
      l.cross_norm = L + "encoder_attn_layer_norm";
      l.cross_q = L + "encoder_attn.q_proj";
      l.cross_k = L + "encoder_attn.k_proj";
      l.cross_v = L + "encoder_attn.v_proj";
      l.cross_o = L + "encoder_attn.out_proj";
    }
    l.mlp_norm = L + "final_layer_norm";
    l.up = L + "fc1";
    l.down = L + "fc2";
  }
  std::vector<GraphOutput> outs = blocks::build_seq2seq(ctx, w, spec, names);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kBartArchitecture = {
    {"bart", "mbart", "marian"}, {Task::kSeq2SeqLM}, build_bart, Capabilities::Seq2Seq(),
    {blocks::kEncoderGraph, blocks::kDecoderMergedGraph}};

}  // namespace trex
