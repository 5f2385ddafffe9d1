// ALBERT (model_type "albert"): factorized embeddings (embedding_size) mapped to hidden_size by
// `encoder.embedding_hidden_mapping_in`; num_hidden_layers applications of num_hidden_groups shared layer
// groups (layer i uses group i / (layers / groups)), each group running inner_group_num layers.
// Pooler is a plain `pooler` Linear + tanh.
#include "arch/bert.h"

namespace trex {
namespace {

std::vector<GraphOutput> build_albert(BuildContext& ctx) {
  auto& g = ctx.graph;
  const ModelConfig& c = ctx.config;
  bert::Dims d = bert::read_dims(c);
  if (!c.has("hidden_act")) d.hidden_act = "gelu_new";  // AlbertConfig's default
  if (!c.has("embedding_size")) d.embedding_size = 128;
  const int64_t e = d.embedding_size;
  const int64_t groups = c.get_int("num_hidden_groups", 1), inner = c.get_int("inner_group_num", 1);
  if (groups <= 0 || inner <= 0) c.fail("num_hidden_groups and inner_group_num must be positive");
  if (d.layers % groups != 0)
    c.fail("num_hidden_layers " + std::to_string(d.layers) + " is not a multiple of num_hidden_groups " +
           std::to_string(groups));

  Weights w(ctx.weights, g, "albert");
  const bool token_types = d.type_vocab > 1;
  layers::Inputs in = layers::declare_inputs(ctx, token_types);
  Value mask_bias = layers::prepare_attention_mask(g, in.attention_mask);

  Value x = layers::embeddings(g, w, in,
                               {w.base("embeddings.word_embeddings.weight"), w.base("embeddings.position_embeddings.weight"),
                                w.base("embeddings.token_type_embeddings.weight"), w.base("embeddings.LayerNorm")},
                               {d.vocab, d.max_positions, d.type_vocab, e, d.eps});
  {
    auto enc = g.scope("encoder");
    x = layers::linear(g, w, x, w.base("encoder.embedding_hidden_mapping_in"), e, d.hidden);
    const int64_t per_group = d.layers / groups;
    const BlockSpec spec = bert::block_spec(d);
    for (int64_t i = 0; i < d.layers; ++i) {
      // Layers share weights by group: the `{i}` of the name table is the group, the inner index is fixed.
      const int64_t group = i / per_group;
      for (int64_t j = 0; j < inner; ++j) {
        LayerNames names;
        const std::string L = w.base("encoder.albert_layer_groups.{i}.albert_layers." + std::to_string(j) + ".");
        names.q = L + "attention.query";
        names.k = L + "attention.key";
        names.v = L + "attention.value";
        names.o = L + "attention.dense";
        names.attn_norm = L + "attention.LayerNorm";
        names.up = L + "ffn";
        names.down = L + "ffn_output";
        names.mlp_norm = L + "full_layer_layer_norm";
        auto layer = g.scope("layer." + std::to_string(i) + "." + std::to_string(j));
        x = layers::encoder_block(g, w, x, mask_bias, spec, names.at(group), c.file());
      }
    }
  }
  layers::HeadSpec spec;
  spec.hidden = d.hidden;
  spec.vocab = d.vocab;
  spec.eps = d.eps;
  spec.word_embeddings = w.base("embeddings.word_embeddings.weight");
  spec.pooler = w.base("pooler");
  spec.mlm_dense = "predictions.dense";
  spec.mlm_act = d.hidden_act;
  spec.mlm_layer_norm = "predictions.LayerNorm";
  spec.mlm_decoder = "predictions.decoder.weight";
  spec.mlm_bias = "predictions.bias";
  spec.mlm_bias_fallback = "predictions.decoder.bias";
  spec.mlm_dim = e;
  std::vector<GraphOutput> outs = layers::heads(ctx, w, x, spec);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kAlbertArchitecture = {
    {"albert"},
    {Task::kFeatureExtraction, Task::kSequenceClassification, Task::kTokenClassification, Task::kQuestionAnswering,
     Task::kMaskedLM},
    build_albert};

}  // namespace trex
