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

  std::vector<GraphOutput> outs;
  switch (ctx.task) {
    case Task::kFeatureExtraction:
      outs.push_back({"last_hidden_state", x, {ctx.batch, ctx.seq, d.hidden}});
      if (w.has_base("pooler.dense.weight")) {
        auto s = g.scope("pooler");
        Value p = g.tanh(layers::linear(g, w, layers::first_token(g, x), w.base("pooler.dense"), d.hidden, d.hidden));
        outs.push_back({"pooler_output", p, {ctx.batch, d.hidden}});
      }
      break;
    case Task::kSequenceClassification: {
      auto s = g.scope("classifier");
      const int64_t labels = ctx.config.num_labels();
      Value h = g.tanh(layers::linear(g, w, layers::first_token(g, x), "classifier.dense", d.hidden, d.hidden));
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
      auto s = g.scope("lm_head");
      Value t = layers::linear(g, w, x, "lm_head.dense", d.hidden, d.hidden);
      t = layers::activation(g, t, "gelu", ctx.config.file());  // RobertaLMHead always uses exact GELU
      t = layers::layer_norm(g, w, t, "lm_head.layer_norm", d.hidden, d.eps);
      Value dec = layers::tied_decoder(g, w, t, "lm_head.decoder.weight", w.base("embeddings.word_embeddings.weight"), d.vocab, d.hidden);
      Value bias = w.get_or("lm_head.bias", "lm_head.decoder.bias", {d.vocab});
      outs.push_back({"logits", g.add(dec, bias), {ctx.batch, ctx.seq, d.vocab}});
      break;
    }
  }
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
