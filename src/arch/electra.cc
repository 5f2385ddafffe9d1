// ELECTRA (model_type "electra"): BERT embeddings of size embedding_size, projected to hidden_size by
// `embeddings_project` when the sizes differ, then BERT's encoder. No pooler. Heads: classification head
// (dense + GELU + out_proj on the first token), token classification, QA, and the generator's fill-mask head.
#include "arch/bert.h"

namespace trex {
namespace {

std::vector<GraphOutput> build_electra(BuildContext& ctx) {
  auto& g = ctx.graph;
  const bert::Dims d = bert::read_dims(ctx.config);
  const int64_t e = d.embedding_size;
  Weights w(ctx.weights, g, "electra");
  const bool token_types = d.type_vocab > 1;
  layers::Inputs in = layers::declare_inputs(ctx, token_types);
  Value mask_bias = layers::prepare_attention_mask(g, in.attention_mask);

  Value x = layers::embeddings(g, w, in,
                               {w.base("embeddings.word_embeddings.weight"), w.base("embeddings.position_embeddings.weight"),
                                w.base("embeddings.token_type_embeddings.weight"), w.base("embeddings.LayerNorm")},
                               {d.vocab, d.max_positions, d.type_vocab, e, d.eps});
  if (e != d.hidden) {
    auto s = g.scope("embeddings_project");
    x = layers::linear(g, w, x, w.base("embeddings_project"), e, d.hidden);
  }
  x = bert::encoder(g, w, x, mask_bias, d, ctx.config.file());

  layers::HeadSpec spec;
  spec.hidden = d.hidden;
  spec.vocab = d.vocab;
  spec.eps = d.eps;
  spec.word_embeddings = w.base("embeddings.word_embeddings.weight");
  spec.classifier_dense = "classifier.dense";
  spec.classifier_act = "gelu";  // ElectraClassificationHead uses GELU, not tanh
  spec.classifier_out = "classifier.out_proj";
  spec.mlm_dense = "generator_predictions.dense";
  spec.mlm_act = "gelu";  // ElectraGeneratorPredictions uses GELU whatever hidden_act says
  spec.mlm_layer_norm = "generator_predictions.LayerNorm";
  spec.mlm_decoder = "generator_lm_head.weight";
  spec.mlm_bias = "generator_lm_head.bias";
  spec.mlm_dim = e;
  std::vector<GraphOutput> outs = layers::heads(ctx, w, x, spec);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kElectraArchitecture = {
    {"electra"},
    {Task::kFeatureExtraction, Task::kSequenceClassification, Task::kTokenClassification, Task::kQuestionAnswering,
     Task::kMaskedLM},
    build_electra};

}  // namespace trex
