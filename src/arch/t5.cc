// T5 family encoder-decoders (model_type t5, mt5): pre-RMSNorm blocks without biases, relative position buckets
// (bidirectional in the encoder, causal in the decoder) instead of position embeddings, attention scores left
// unscaled, relu (v1.0) or gated-gelu (v1.1, mT5) feed-forward, tied head with its d_model^-0.5 rescale or an
// untied lm_head. Built by blocks::build_seq2seq as encoder_model + decoder_model_merged.
#include <cmath>
#include <tuple>

#include "arch/blocks.h"
#include "util/error.h"

namespace trex {
namespace {

std::vector<GraphOutput> build_t5(BuildContext& ctx) {
  const ModelConfig& c = ctx.config;
  const int64_t d_model = c.get_positive_int("d_model");
  const int64_t heads = c.get_positive_int("num_heads");
  const int64_t d_kv = c.get_positive_int("d_kv");
  const int64_t enc_layers = c.get_positive_int("num_layers");
  const int64_t dec_layers = c.get_int("num_decoder_layers", enc_layers);
  if (dec_layers <= 0) c.fail("'num_decoder_layers' must be positive");

  // feed_forward_proj: "{act}" or "gated-{act}"; "gated-gelu" means the tanh approximation (transformers).
  const std::string proj = c.get_string("feed_forward_proj", "relu");
  const size_t dash = proj.find('-');
  const bool gated = dash != std::string::npos && proj.substr(0, dash) == "gated";
  if (dash != std::string::npos && (!gated || proj.find('-', dash + 1) != std::string::npos))
    c.fail("'feed_forward_proj' must be '{ACT}' or 'gated-{ACT}', got '" + proj + "'");
  std::string act = gated ? proj.substr(dash + 1) : proj;
  if (proj == "gated-gelu") act = "gelu_new";

  BlockSpec b;
  b.hidden = d_model;
  b.norm = NormKind::kRMSNorm;
  b.placement = NormPlacement::kPre;
  b.eps = static_cast<float>(c.get_float("layer_norm_epsilon", 1e-6));
  b.mlp = gated ? MlpKind::kGated : MlpKind::kPlain;
  b.activation = act;
  b.intermediate = c.get_positive_int("d_ff");
  b.mlp_bias = false;
  AttentionSpec& a = b.attention;
  a.num_heads = a.num_kv_heads = heads;
  a.head_dim = d_kv;
  a.scaling = ScoreScaling::kNone;

  blocks::Seq2SeqSpec spec;
  spec.vocab = spec.decoder_vocab = c.get_positive_int("vocab_size");
  spec.hidden = d_model;
  spec.final_norm = true;
  spec.norm_bias = false;
  spec.relative_bias = blocks::Seq2SeqSpec::RelativeBias{c.get_int("relative_attention_num_buckets", 32),
                                                        c.get_int("relative_attention_max_distance", 128)};
  if (spec.relative_bias->num_buckets < 4 || spec.relative_bias->max_distance <= 0)
    c.fail("'relative_attention_num_buckets' must be at least 4 and 'relative_attention_max_distance' positive");
  // mT5 checkpoints have an untied lm_head by default, T5 a tied one.
  spec.tie_word_embeddings = c.get_bool("tie_word_embeddings", c.model_type != "mt5");
  spec.tied_head_scale = std::pow(static_cast<double>(d_model), -0.5);
  spec.encoder_layers.assign(static_cast<size_t>(enc_layers), b);
  BlockSpec dec = b;
  dec.attention.causal = true;
  spec.decoder_layers.assign(static_cast<size_t>(dec_layers), dec);

  Weights w(ctx.weights, ctx.graph, "");
  blocks::Seq2SeqNames names;
  names.embed_tokens = "shared.weight";
  names.lm_head = "lm_head.weight";
  for (auto [stack, prefix, is_decoder] :
       {std::tuple{&names.encoder, std::string("encoder."), false}, std::tuple{&names.decoder, std::string("decoder."), true}}) {
    stack->final_norm = prefix + "final_layer_norm";
    stack->relative_bias = prefix + "block.0.layer.0.SelfAttention.relative_attention_bias";
    LayerNames& l = stack->layer;
    const std::string B = prefix + "block.{i}.layer.";
    const std::string ff = is_decoder ? "2" : "1";
    l.attn_norm = B + "0.layer_norm";
    l.q = B + "0.SelfAttention.q";
    l.k = B + "0.SelfAttention.k";
    l.v = B + "0.SelfAttention.v";
    l.o = B + "0.SelfAttention.o";
    if (is_decoder) {
      l.cross_norm = B + "1.layer_norm";
      l.cross_q = B + "1.EncDecAttention.q";
      l.cross_k = B + "1.EncDecAttention.k";
      l.cross_v = B + "1.EncDecAttention.v";
      l.cross_o = B + "1.EncDecAttention.o";
    }
    l.mlp_norm = B + ff + ".layer_norm";
    l.down = B + ff + ".DenseReluDense.wo";
    if (gated) {
      l.gate = B + ff + ".DenseReluDense.wi_0";
      l.up = B + ff + ".DenseReluDense.wi_1";
    } else {
      l.up = B + ff + ".DenseReluDense.wi";
    }
  }
  std::vector<GraphOutput> outs = blocks::build_seq2seq(ctx, w, spec, names);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kT5Architecture = {
    {"t5", "mt5"}, {Task::kSeq2SeqLM}, build_t5, Capabilities::Seq2Seq(),
    {blocks::kEncoderGraph, blocks::kDecoderMergedGraph}};

}  // namespace trex
