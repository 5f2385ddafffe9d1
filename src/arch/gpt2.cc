// GPT-2 (model_type gpt2): learned absolute positions, pre-LayerNorm blocks, Conv1D weights stored [in, out]
// (used as they are: x @ W), packed c_attn, gelu_new MLP, LM head tied to the token embeddings.
#include "arch/blocks.h"
#include "util/error.h"

namespace trex {
namespace {

std::vector<GraphOutput> build_gpt2(BuildContext& ctx) {
  const ModelConfig& c = ctx.config;
  const int64_t hidden = c.get_positive_int("n_embd");
  const int64_t layers = c.get_positive_int("n_layer");
  const int64_t heads = c.get_positive_int("n_head");
  if (hidden % heads != 0)
    c.fail("n_embd " + std::to_string(hidden) + " is not a multiple of n_head " + std::to_string(heads));

  BlockSpec b;
  b.hidden = hidden;
  b.norm = NormKind::kLayerNorm;
  b.placement = NormPlacement::kPre;
  b.eps = static_cast<float>(c.get_float("layer_norm_epsilon", 1e-5));
  b.mlp = MlpKind::kPlain;
  b.activation = c.get_string("activation_function", "gelu_new");
  b.intermediate = c.get_int("n_inner", 4 * hidden);
  if (b.intermediate <= 0) c.fail("'n_inner' must be positive");
  b.mlp_bias = true;
  b.conv1d = true;
  AttentionSpec& a = b.attention;
  a.num_heads = a.num_kv_heads = heads;
  a.head_dim = hidden / heads;
  a.causal = true;
  a.qkv_bias = a.o_bias = true;
  a.scaling = c.get_bool("scale_attn_weights", true) ? ScoreScaling::kDivideScores : ScoreScaling::kNone;

  blocks::DecoderSpec spec;
  spec.vocab = c.get_positive_int("vocab_size");
  spec.hidden = hidden;
  spec.final_norm = NormKind::kLayerNorm;
  spec.norm_bias = true;
  spec.learned_positions = c.get_int("n_positions", 1024);  // transformers' default
  if (spec.learned_positions <= 0) c.fail("'n_positions' must be positive");
  spec.tie_word_embeddings = c.get_bool("tie_word_embeddings", true);
  const bool inverse_layer = c.get_bool("scale_attn_by_inverse_layer_idx", false);
  for (int64_t i = 0; i < layers; ++i) {
    BlockSpec layer = b;
    if (inverse_layer) layer.attention.inverse_layer_scale = static_cast<double>(i + 1);
    spec.layers.push_back(layer);
  }

  Weights w(ctx.weights, ctx.graph, "transformer");
  blocks::DecoderNames names;
  names.embed_tokens = w.base("wte.weight");
  names.embed_positions = w.base("wpe.weight");
  names.final_norm = w.base("ln_f");
  names.lm_head = "lm_head.weight";
  LayerNames& l = names.layer;
  const std::string L = w.base("h.{i}.");
  l.attn_norm = L + "ln_1";
  l.qkv = L + "attn.c_attn";
  l.o = L + "attn.c_proj";
  l.mlp_norm = L + "ln_2";
  l.up = L + "mlp.c_fc";
  l.down = L + "mlp.c_proj";
  std::vector<GraphOutput> outs = blocks::build_decoder(ctx, w, spec, names);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kGpt2Architecture = {{"gpt2"}, {Task::kCausalLM}, build_gpt2, Capabilities::Decoder()};

}  // namespace trex
