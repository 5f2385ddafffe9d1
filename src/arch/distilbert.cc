// DistilBERT (model_type "distilbert"): word + absolute position embeddings (no token types), then
// `transformer.layer.<i>` blocks (q_lin/k_lin/v_lin/out_lin, sa_layer_norm, ffn.lin1/lin2, output_layer_norm).
// Its LayerNorms use eps 1e-12 whatever the config says, as transformers does.
#include "arch/layers.h"

namespace trex {
namespace {

constexpr float kEps = 1e-12f;

std::vector<GraphOutput> build_distilbert(BuildContext& ctx) {
  auto& g = ctx.graph;
  const ModelConfig& c = ctx.config;
  const int64_t h = c.get_positive_int("dim"), layers_n = c.get_positive_int("n_layers"),
                heads = c.get_positive_int("n_heads"), ffn = c.get_positive_int("hidden_dim"),
                vocab = c.get_positive_int("vocab_size"), max_pos = c.get_positive_int("max_position_embeddings");
  const std::string act = c.get_string("activation", "gelu");
  if (h % heads != 0) c.fail("dim " + std::to_string(h) + " is not a multiple of n_heads " + std::to_string(heads));

  Weights w(ctx.weights, g, "distilbert");
  layers::Inputs in = layers::declare_inputs(ctx, false);
  Value mask_bias = layers::prepare_attention_mask(g, in.attention_mask);

  Value x = layers::embeddings(g, w, in,
                               {w.base("embeddings.word_embeddings.weight"), w.base("embeddings.position_embeddings.weight"),
                                /*token_type=*/"", w.base("embeddings.LayerNorm")},
                               {vocab, max_pos, 0, h, kEps});
  {
    auto tr = g.scope("transformer");
    BlockSpec spec;
    spec.hidden = h;
    spec.eps = kEps;
    spec.attention.num_heads = spec.attention.num_kv_heads = heads;
    spec.attention.head_dim = h / heads;
    spec.attention.scaling = ScoreScaling::kDivideQuery;  // DistilBERT scales q before q k^T
    spec.activation = act;
    spec.intermediate = ffn;
    LayerNames names;
    const std::string L = w.base("transformer.layer.{i}.");
    names.q = L + "attention.q_lin";
    names.k = L + "attention.k_lin";
    names.v = L + "attention.v_lin";
    names.o = L + "attention.out_lin";
    names.attn_norm = L + "sa_layer_norm";
    names.up = L + "ffn.lin1";
    names.down = L + "ffn.lin2";
    names.mlp_norm = L + "output_layer_norm";
    if (w.has(names.at(layers_n).q + ".weight"))
      c.fail("n_layers is " + std::to_string(layers_n) + " but the checkpoint has more layers (" +
             names.at(layers_n).q + ".weight exists)");
    for (int64_t i = 0; i < layers_n; ++i) {
      auto layer = g.scope("layer." + std::to_string(i));
      x = layers::encoder_block(g, w, x, mask_bias, spec, names.at(i), c.file());
    }
  }

  layers::HeadSpec spec;
  spec.hidden = h;
  spec.vocab = vocab;
  spec.eps = kEps;
  spec.word_embeddings = w.base("embeddings.word_embeddings.weight");
  spec.classifier_dense = "pre_classifier";
  spec.classifier_act = "relu";
  spec.classifier_out = "classifier";
  spec.mlm_dense = "vocab_transform";
  spec.mlm_act = act;
  spec.mlm_layer_norm = "vocab_layer_norm";
  spec.mlm_decoder = "vocab_projector.weight";
  spec.mlm_bias = "vocab_projector.bias";
  spec.mlm_dim = h;
  std::vector<GraphOutput> outs = layers::heads(ctx, w, x, spec);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kDistilBertArchitecture = {
    {"distilbert"},
    {Task::kFeatureExtraction, Task::kSequenceClassification, Task::kTokenClassification, Task::kQuestionAnswering,
     Task::kMaskedLM},
    build_distilbert};

}  // namespace trex
