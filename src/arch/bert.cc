// BERT (model_type "bert"): embeddings (word + absolute position + token type) → LayerNorm → encoder layers;
// pooler (dense + tanh on the first token); heads of BertModel / BertFor{SequenceClassification,
// TokenClassification,QuestionAnswering,MaskedLM}.
#include "arch/bert.h"

#include "util/error.h"

namespace trex {
namespace bert {

Dims read_dims(const ModelConfig& c) {
  Dims d;
  d.hidden = c.get_positive_int("hidden_size");
  d.layers = c.get_positive_int("num_hidden_layers");
  d.heads = c.get_positive_int("num_attention_heads");
  d.intermediate = c.get_positive_int("intermediate_size");
  d.vocab = c.get_positive_int("vocab_size");
  d.max_positions = c.get_positive_int("max_position_embeddings");
  d.type_vocab = c.get_int("type_vocab_size", 2);
  d.embedding_size = c.get_int("embedding_size", d.hidden);
  d.pad_token_id = c.get_int("pad_token_id", 0);
  d.hidden_act = c.get_string("hidden_act", "gelu");
  d.eps = static_cast<float>(c.get_float("layer_norm_eps", 1e-12));
  if (d.hidden % d.heads != 0)
    c.fail("hidden_size " + std::to_string(d.hidden) + " is not a multiple of num_attention_heads " +
           std::to_string(d.heads));
  const std::string pos = c.get_string("position_embedding_type", "absolute");
  if (pos != "absolute") c.fail("position_embedding_type '" + pos + "' is not supported (only 'absolute')");
  return d;
}

BlockSpec block_spec(const Dims& d) {
  BlockSpec b;
  b.hidden = d.hidden;
  b.norm = NormKind::kLayerNorm;
  b.placement = NormPlacement::kPost;
  b.eps = d.eps;
  b.attention.num_heads = b.attention.num_kv_heads = d.heads;
  b.attention.head_dim = d.hidden / d.heads;
  b.attention.qkv_bias = b.attention.o_bias = true;
  b.mlp = MlpKind::kPlain;
  b.activation = d.hidden_act;
  b.intermediate = d.intermediate;
  return b;
}

Value encoder(GraphBuilder& g, Weights& w, Value x, const Value& mask_bias, const Dims& d,
              const std::string& config_file) {
  auto enc = g.scope("encoder");
  const BlockSpec spec = block_spec(d);
  LayerNames names;
  const std::string L = w.base("encoder.layer.{i}.");
  names.q = L + "attention.self.query";
  names.k = L + "attention.self.key";
  names.v = L + "attention.self.value";
  names.o = L + "attention.output.dense";
  names.attn_norm = L + "attention.output.LayerNorm";
  names.up = L + "intermediate.dense";
  names.down = L + "output.dense";
  names.mlp_norm = L + "output.LayerNorm";
  if (w.has(names.at(d.layers).q + ".weight"))
    throw InputError(config_file, "num_hidden_layers is " + std::to_string(d.layers) +
                                      " but the checkpoint has more layers (" + names.at(d.layers).q + ".weight exists)");
  for (int64_t i = 0; i < d.layers; ++i) {
    auto layer = g.scope("layer." + std::to_string(i));
    x = layers::encoder_block(g, w, x, mask_bias, spec, names.at(i), config_file);
  }
  return x;
}

}  // namespace bert

namespace {

std::vector<GraphOutput> build_bert(BuildContext& ctx) {
  auto& g = ctx.graph;
  const bert::Dims d = bert::read_dims(ctx.config);
  Weights w(ctx.weights, g, "bert");
  const bool token_types = d.type_vocab > 1;
  layers::Inputs in = layers::declare_inputs(ctx, token_types);
  Value mask_bias = layers::prepare_attention_mask(g, in.attention_mask);

  Value x = layers::embeddings(g, w, in,
                               {w.base("embeddings.word_embeddings.weight"), w.base("embeddings.position_embeddings.weight"),
                                w.base("embeddings.token_type_embeddings.weight"), w.base("embeddings.LayerNorm")},
                               {d.vocab, d.max_positions, d.type_vocab, d.hidden, d.eps});
  x = bert::encoder(g, w, x, mask_bias, d, ctx.config.file());

  layers::HeadSpec spec;
  spec.hidden = d.hidden;
  spec.vocab = d.vocab;
  spec.eps = d.eps;
  spec.word_embeddings = w.base("embeddings.word_embeddings.weight");
  spec.pooler = w.base("pooler.dense");
  spec.mlm_dense = "cls.predictions.transform.dense";
  spec.mlm_act = d.hidden_act;
  spec.mlm_layer_norm = "cls.predictions.transform.LayerNorm";
  spec.mlm_decoder = "cls.predictions.decoder.weight";
  spec.mlm_bias = "cls.predictions.bias";
  spec.mlm_bias_fallback = "cls.predictions.decoder.bias";
  spec.mlm_dim = d.hidden;
  std::vector<GraphOutput> outs = layers::heads(ctx, w, x, spec);
  w.check();
  return outs;
}

}  // namespace

extern const Architecture kBertArchitecture = {
    {"bert"},
    {Task::kFeatureExtraction, Task::kSequenceClassification, Task::kTokenClassification, Task::kQuestionAnswering,
     Task::kMaskedLM},
    build_bert};

}  // namespace trex
