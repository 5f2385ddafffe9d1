// Llama-family decoders (model_type llama, mistral, qwen2, qwen3, phi3, gemma): pre-RMSNorm blocks, rotary
// positions, gated MLP, grouped-query attention. The models differ only in data — the variant table below and
// config.json — and are built by blocks::build_decoder.
#include <cmath>
#include <stdexcept>

#include "arch/blocks.h"
#include "util/error.h"

namespace trex {
namespace {

enum class Bias { kConfig, kQkvOnly, kNone };  // attention_bias from config.json | Qwen2's q/k/v bias | none
enum class Window { kNone, kAllLayers, kLayerTypes };  // sliding_window for every layer (Mistral, Phi-3) | per layer_types

struct Variant {
  const char* model_type;
  Bias bias;
  Window window;
  bool qk_norm;        // Qwen3
  bool packed;         // Phi-3: qkv_proj and gate_up_proj
  bool gemma;          // (1 + w) RMSNorm, embeddings scaled by sqrt(hidden)
  bool tied_default;   // tie_word_embeddings when config.json does not say
};

const Variant kVariants[] = {
    {"llama", Bias::kConfig, Window::kNone, false, false, false, false},
    {"mistral", Bias::kNone, Window::kAllLayers, false, false, false, false},
    {"qwen2", Bias::kQkvOnly, Window::kLayerTypes, false, false, false, false},
    {"qwen3", Bias::kConfig, Window::kLayerTypes, true, false, false, true},
    {"phi3", Bias::kNone, Window::kAllLayers, false, true, false, false},
    {"gemma", Bias::kConfig, Window::kNone, false, false, true, true},
};

const Variant& variant(const std::string& model_type) {
  for (const auto& v : kVariants)
    if (model_type == v.model_type) return v;
  throw std::logic_error("no Llama-family variant for " + model_type);
}

std::vector<GraphOutput> build_llama(BuildContext& ctx) {
  const ModelConfig& c = ctx.config;
  const Variant& var = variant(c.model_type);
  const int64_t hidden = c.get_positive_int("hidden_size");
  const int64_t layers = c.get_positive_int("num_hidden_layers");
  const int64_t heads = c.get_positive_int("num_attention_heads");
  const int64_t kv_heads = c.get_int("num_key_value_heads", heads);
  if (kv_heads <= 0 || heads % kv_heads != 0)
    c.fail("num_attention_heads " + std::to_string(heads) + " is not a multiple of num_key_value_heads " +
           std::to_string(kv_heads));
  if (!c.has("head_dim") && hidden % heads != 0)
    c.fail("hidden_size " + std::to_string(hidden) + " is not a multiple of num_attention_heads " + std::to_string(heads));
  const int64_t head_dim = c.get_int("head_dim", hidden / heads);
  if (head_dim <= 0) c.fail("'head_dim' must be positive");

  BlockSpec b;
  b.hidden = hidden;
  b.norm = var.gemma ? NormKind::kRMSNormPlusOne : NormKind::kRMSNorm;
  b.placement = NormPlacement::kPre;
  b.eps = static_cast<float>(c.get_float("rms_norm_eps", 1e-6));
  b.mlp = MlpKind::kGated;
  b.activation = c.get_string("hidden_act", "silu");
  b.intermediate = c.get_positive_int("intermediate_size");
  b.mlp_bias = c.get_bool("mlp_bias", false);
  AttentionSpec& a = b.attention;
  a.num_heads = heads;
  a.num_kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.causal = true;
  a.scaling = ScoreScaling::kMultiplyScores;
  a.qk_norm = var.qk_norm;
  const bool attention_bias = c.get_bool("attention_bias", false);
  a.qkv_bias = var.bias == Bias::kQkvOnly || (var.bias == Bias::kConfig && attention_bias);
  a.o_bias = var.bias == Bias::kConfig && attention_bias;
  a.rotary = blocks::read_rotary(c, head_dim);

  const std::optional<int64_t> window =
      c.get_int("sliding_window", 0) > 0 ? std::optional<int64_t>(c.get_int("sliding_window")) : std::nullopt;
  if (c.has("sliding_window") && !c.raw()["sliding_window"].is_null() && !window)
    c.fail("'sliding_window' must be a positive integer or null");
  std::vector<std::string> layer_types;
  if (var.window == Window::kLayerTypes && c.has("layer_types") && !c.raw()["layer_types"].is_null()) {
    const auto& lt = c.raw()["layer_types"];
    if (!lt.is_array() || lt.size() != static_cast<size_t>(layers))
      c.fail("'layer_types' must list one type per layer (" + std::to_string(layers) + ")");
    for (const auto& t : lt) {
      if (!t.is_string() || (t != "full_attention" && t != "sliding_attention"))
        c.fail("'layer_types' entries must be \"full_attention\" or \"sliding_attention\"");
      layer_types.push_back(t.get<std::string>());
    }
  }

  blocks::DecoderSpec spec;
  spec.vocab = c.get_positive_int("vocab_size");
  spec.hidden = hidden;
  spec.max_positions = c.get_positive_int("max_position_embeddings");
  spec.final_norm = b.norm;
  spec.tie_word_embeddings = c.get_bool("tie_word_embeddings", var.tied_default);
  // Gemma multiplies by sqrt(hidden) rounded to the activations' dtype (float32 here).
  if (var.gemma) spec.embedding_scale = static_cast<float>(std::sqrt(static_cast<double>(hidden)));
  for (int64_t i = 0; i < layers; ++i) {
    BlockSpec layer = b;
    if (var.window == Window::kAllLayers) layer.attention.sliding_window = window;
    if (var.window == Window::kLayerTypes && !layer_types.empty() &&
        layer_types[static_cast<size_t>(i)] == "sliding_attention")
      layer.attention.sliding_window = window;
    spec.layers.push_back(layer);
  }

  Weights w(ctx.weights, ctx.graph, "model");
  blocks::DecoderNames names;
  names.embed_tokens = w.base("embed_tokens.weight");
  names.final_norm = w.base("norm");
  names.lm_head = "lm_head.weight";
  LayerNames& l = names.layer;
  const std::string L = w.base("layers.{i}.");
  l.attn_norm = L + "input_layernorm";
  l.mlp_norm = L + "post_attention_layernorm";
  l.o = L + "self_attn.o_proj";
  l.down = L + "mlp.down_proj";
  if (var.packed) {
    l.qkv = L + "self_attn.qkv_proj";
    l.gate_up = L + "mlp.gate_up_proj";
  } else {
    l.q = L + "self_attn.q_proj";
    l.k = L + "self_attn.k_proj";
    l.v = L + "self_attn.v_proj";
    l.gate = L + "mlp.gate_proj";
    l.up = L + "mlp.up_proj";
  }
  l.q_norm = L + "self_attn.q_norm";
  l.k_norm = L + "self_attn.k_norm";
  std::vector<GraphOutput> outs = blocks::build_decoder(ctx, w, spec, names);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kLlamaArchitecture = {
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"}, {Task::kCausalLM}, build_llama, Capabilities::Decoder()};

}  // namespace trex
