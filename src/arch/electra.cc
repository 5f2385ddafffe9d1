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

  std::vector<GraphOutput> outs;
  switch (ctx.task) {
    case Task::kFeatureExtraction:
      outs.push_back({"last_hidden_state", x, {ctx.batch, ctx.seq, d.hidden}});
      break;
    case Task::kSequenceClassification: {
      auto s = g.scope("classifier");
      const int64_t labels = ctx.config.num_labels();
      Value h = layers::linear(g, w, layers::first_token(g, x), "classifier.dense", d.hidden, d.hidden);
      h = layers::activation(g, h, "gelu", ctx.config.file());  // ElectraClassificationHead uses GELU, not tanh
      outs.push_back({"logits", layers::linear(g, w, h, "classifier.out_proj", d.hidden, labels), {ctx.batch, labels}});
      break;
    }
    case Task::kTokenClassification:
      outs.push_back(layers::token_classification_head(ctx, w, x, d.hidden));
      break;
    case Task::kQuestionAnswering:
      outs = layers::question_answering_head(ctx, w, x, d.hidden);
      break;
    case Task::kMaskedLM: {
      auto s = g.scope("generator");
      Value t = layers::linear(g, w, x, "generator_predictions.dense", d.hidden, e);
      t = layers::activation(g, t, "gelu", ctx.config.file());  // ElectraGeneratorPredictions uses GELU
      t = layers::layer_norm(g, w, t, "generator_predictions.LayerNorm", e, d.eps);
      Value dec = layers::tied_decoder(g, w, t, "generator_lm_head.weight", w.base("embeddings.word_embeddings.weight"), d.vocab, e);
      outs.push_back({"logits", g.add(dec, w.get("generator_lm_head.bias", {d.vocab})), {ctx.batch, ctx.seq, d.vocab}});
      break;
    }
  }
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
