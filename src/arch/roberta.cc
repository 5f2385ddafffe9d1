// RoBERTa family (model_type "roberta", "xlm-roberta", "camembert"): BERT's encoder with position ids counted
// from the padding index (padding tokens keep position pad_token_id), a two-layer classification head
// and the lm_head fill-mask head.
#include "arch/bert.h"

namespace trex {
namespace {

// transformers' create_position_ids_from_input_ids: cumsum(ids != pad) * (ids != pad) + pad.
Value padded_positions(GraphBuilder& g, const Value& input_ids, int64_t pad) {
  auto s = g.scope("position_ids");
  Value pad_v = g.const_i64({pad}, true);
  Value not_pad = g.cast(g.op("Not", {g.op("Equal", {input_ids, pad_v})}), DType::kI64);
  Value counted = g.mul(g.op("CumSum", {not_pad, g.const_i64({1}, true)}), not_pad);
  return g.add(counted, pad_v);
}

std::vector<GraphOutput> build_roberta(BuildContext& ctx) {
  auto& g = ctx.graph;
  const bert::Dims d = bert::read_dims(ctx.config);
  Weights w(ctx.weights, g, "roberta");
  const bool token_types = d.type_vocab > 1;
  layers::Inputs in = layers::declare_inputs(ctx, token_types);
  Value mask_bias = layers::prepare_attention_mask(g, in.attention_mask);

  Value x = layers::embeddings(g, w, in,
                               {w.base("embeddings.word_embeddings.weight"), w.base("embeddings.position_embeddings.weight"),
                                w.base("embeddings.token_type_embeddings.weight"), w.base("embeddings.LayerNorm")},
                               {d.vocab, d.max_positions, d.type_vocab, d.hidden, d.eps},
                               padded_positions(g, in.input_ids, d.pad_token_id));
  x = bert::encoder(g, w, x, mask_bias, d, ctx.config.file());

  layers::HeadSpec spec;
  spec.hidden = d.hidden;
  spec.vocab = d.vocab;
  spec.eps = d.eps;
  spec.word_embeddings = w.base("embeddings.word_embeddings.weight");
  spec.pooler = w.base("pooler.dense");
  spec.classifier_dense = "classifier.dense";
  spec.classifier_act = "tanh";
  spec.classifier_out = "classifier.out_proj";
  spec.mlm_dense = "lm_head.dense";
  spec.mlm_act = "gelu";  // RobertaLMHead always uses exact GELU
  spec.mlm_layer_norm = "lm_head.layer_norm";
  spec.mlm_decoder = "lm_head.decoder.weight";
  spec.mlm_bias = "lm_head.bias";
  spec.mlm_bias_fallback = "lm_head.decoder.bias";
  spec.mlm_dim = d.hidden;
  std::vector<GraphOutput> outs = layers::heads(ctx, w, x, spec);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kRobertaArchitecture = {
    {"roberta", "xlm-roberta", "camembert"},
    {Task::kFeatureExtraction, Task::kSequenceClassification, Task::kTokenClassification, Task::kQuestionAnswering,
     Task::kMaskedLM},
    build_roberta};

}  // namespace trex
